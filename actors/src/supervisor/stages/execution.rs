//! Executing (K-EX-1): the workflow actor runs the analysis' workflow,
//! resuming from the recorded steps after a restart. The plan goes with the
//! write that enters Executing, and the workflow may start before that
//! write lands (see `runs_ahead` in the supervisor): a step that changes
//! the cluster acts only once its intent is acknowledged, and that happens
//! only once a write carrying the phase, the plan, the claim and the
//! intent has landed.

use kubernaut_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{ExecutionStatus, Phase, StepStatus};

use super::{Next, Stage, StageResult, Sup};
use crate::metrics::ActionLabels;
use crate::supervisor::Effect;
use crate::supervisor::transitions::Reason;
use crate::supervisor::transitions::{self, Transition};
use crate::workflow;
use crate::workflow::StepEvent;

pub struct Execution;

impl Stage for Execution {
    fn next(&self, sup: &mut Sup) -> Next {
        // What is wanted, not only what has landed: the workflow may start
        // before the write entering Executing lands.
        let Some(analysis) = sup.current().analysis.clone() else {
            return Next::Fail(Reason::NoDecision, "Executing without an analysis".into());
        };
        match sup.current().execution.clone() {
            Some(exec) if exec.result.is_some() => Next::to(Transition::new(
                Phase::Verifying,
                Reason::ActionFinished,
                String::new(),
            )),
            // Recorded by a replica from before the plan went with the
            // transition into Executing.
            None => {
                let exec = plan(sup.current(), &sup.spec.target);
                Next::CommitThenAdvance(Box::new(move |s| {
                    s.execution = exec;
                    None
                }))
            }
            Some(exec) => {
                let ctx = &sup.ctx;
                let mut objects = vec![sup.spec.target.clone(), sup.spec.signal_resource.clone()];
                objects.extend(sup.spec.owner_chain.iter().cloned());
                Next::Workflow(Box::new(workflow::Args {
                    cluster: ctx.cluster.clone(),
                    workflow: analysis.workflow.clone(),
                    owned: Some(workflow::Owned {
                        namespace: sup.namespace.clone(),
                        objects,
                    }),
                    settings: sup.exec_settings(),
                    default_timeout: ctx.settings.step_timeout,
                    recorded: Some(exec),
                    audit: Some((ctx.audit.clone(), sup.uid.clone())),
                    restart: ctx.settings.restart,
                    metrics: ctx.metrics.clone(),
                    chaos: ctx.settings.chaos.clone(),
                    // The supervisor sets its own.
                    sink: std::sync::Arc::new(|_| {}),
                }))
            }
        }
    }

    fn done(&self, sup: &mut Sup, result: StageResult) -> Next {
        let StageResult::Executed(result) = result else {
            return Next::Wait;
        };
        let report = match result {
            Ok(report) => report,
            Err(invalid) => {
                count_action(sup, "Invalid");
                return Next::Fail(Reason::InvalidWorkflow, invalid.to_string());
            }
        };
        sup.observe_stage("execution");
        let result = if report.succeeded {
            "Succeeded"
        } else {
            "Failed"
        };
        count_action(sup, result);
        sup.audit_event(
            "action",
            None,
            None,
            "WorkflowFinished",
            "",
            serde_json::json!({ "result": result, "completionOrder": report.completion_order,
                                "rollbackOrder": report.rollback_order }),
        );
        let now = Timestamp::now();
        Next::commit(move |s| Some(transitions::executed(s, &report, now)))
    }
}

/// The execution record of the analysis' workflow, every step pending
/// (`None` before an analysis).
pub(in crate::supervisor) fn plan(
    status: &kubernaut_api::RemediationRequestStatus,
    target: &kubernaut_api::ObjectRef,
) -> Option<ExecutionStatus> {
    let analysis = status.analysis.as_ref()?;
    Some(ExecutionStatus {
        action: analysis.action.clone(),
        target: target.clone(),
        target_uid: String::new(),
        started_at: Time(Timestamp::now()),
        finished_at: None,
        result: None,
        message: String::new(),
        steps: analysis
            .workflow
            .steps
            .iter()
            .map(|s| StepStatus {
                id: s.id.clone(),
                action: s.action.clone(),
                ..Default::default()
            })
            .collect(),
    })
}

/// Counts the decided action's result.
fn count_action(sup: &Sup, result: &'static str) {
    let action = sup
        .status
        .analysis
        .as_ref()
        .map(|a| a.action.clone())
        .unwrap_or_default();
    sup.ctx
        .metrics
        .actions
        .get_or_create(&ActionLabels { action, result })
        .inc();
}

impl Sup {
    /// Records a step's start (acknowledged, and audited, only once
    /// written) or its end.
    pub(in crate::supervisor) fn on_step(&mut self, event: StepEvent) {
        let now = Timestamp::now();
        match event {
            StepEvent::Starting {
                id,
                target,
                uid,
                generation,
                ack,
            } => {
                let detail = serde_json::json!({ "step": id, "target": target.as_ref().map(|t| t.to_string()),
                                                 "targetUid": uid, "targetGeneration": generation });
                let record = self.event_record("action", None, None, "StepStarted", &id, detail);
                let changes_nothing = self
                    .current()
                    .execution
                    .iter()
                    .flat_map(|e| &e.steps)
                    .find(|s| s.id == id)
                    .is_some_and(|s| !kubernaut_cluster::writes(&s.action));
                if changes_nothing {
                    // Its start need not land before it runs (a resumed
                    // supervisor has no effect to look for): it is written
                    // with its end, one status write instead of two.
                    self.started.insert(id, now);
                    self.audit(record);
                    let _ = ack.send(());
                    return;
                }
                self.edit_then(
                    |s| {
                        if let Some(step) = transitions::step_mut(s, &id) {
                            step.phase = kubernaut_api::StepPhase::Running;
                            step.target = target;
                            step.target_uid = uid;
                            step.target_generation = generation;
                            step.started_at = Some(
                                kubernaut_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                    now,
                                ),
                            );
                        }
                    },
                    Some(Effect::Ack(ack)),
                );
                self.effects
                    .push((self.seq, Effect::Audit(Box::new(record))));
            }
            StepEvent::Settled(report) => {
                let message = match (&report.error, &report.outcome) {
                    (Some(e), _) => e.clone(),
                    (None, Some(o)) => o.message.clone(),
                    (None, None) if report.state == kubernaut_api::StepPhase::AlreadyDone => {
                        "took effect before the controller restarted".into()
                    }
                    (None, None) => String::new(),
                };
                if let Some(outcome) = &report.outcome {
                    self.outcomes.insert(report.id.clone(), outcome.clone());
                }
                let detail = serde_json::to_value(&report).unwrap_or_default();
                self.audit_event("action", None, None, "StepFinished", &report.id, detail);
                let started = self.started.remove(&report.id);
                self.edit(|s| {
                    if let Some(step) = transitions::step_mut(s, &report.id) {
                        if let Some(at) = started {
                            step.started_at.get_or_insert(
                                kubernaut_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                    at,
                                ),
                            );
                        }
                        step.phase = report.state;
                        step.attempts = step.attempts.max(report.attempts);
                        step.finished_at = Some(
                            kubernaut_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                now,
                            ),
                        );
                        step.message = message;
                    }
                });
            }
        }
    }
}

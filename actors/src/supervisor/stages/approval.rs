//! AwaitingApproval (K-AI-4): the approval policy's verdict, and a human's
//! decision on the request. Rejected, the request is cancelled; approved,
//! it executes what the analysis chose or, for a storm, its rule over every
//! affected target under the storm policy.

use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::workflow::Workflow;
use kubernaut_api::{
    APPROVAL_ANNOTATION, APPROVED_BY_ANNOTATION, AnalysisStatus, ApprovalStatus, ObjectRef, Phase,
    RemediationRequest,
};

use kubernaut_cluster::FIELD_MANAGER;

use super::{Next, Stage, StageResult, Sup};
use crate::metrics::{ActorKind, ReasonLabels};
use crate::rules;
use crate::supervisor::transitions::Reason;
use crate::supervisor::transitions::{Transition, after, record_decision};

pub struct AwaitingApproval;

/// A human's decision on a request waiting for approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    pub approved: bool,
    pub by: String,
}

impl Approval {
    /// The decision recorded on the request (`kubernaut.io/approval`), if
    /// it was written after the request began waiting, and who made it.
    ///
    /// Annotations are anyone's to write who may patch the request, so
    /// their text is not taken on trust:
    /// - The decision counts only when its writer's managedFields entry is
    ///   dated at or after AwaitingApproval began, and (unless the
    ///   approval endpoint wrote it, which checks the phase before a
    ///   conditional write) after the request was created: an approval
    ///   set at creation approves nothing decided later.
    /// - Who decided is the user the approval endpoint authenticated
    ///   (its `kubernaut.io/approved-by`, written by the endpoint's field
    ///   manager), else the field manager that wrote the decision; an
    ///   `approved-by` anyone else wrote is ignored.
    pub fn of(rr: &RemediationRequest) -> Option<Approval> {
        let annotations = rr.metadata.annotations.as_ref()?;
        let approved = match annotations.get(APPROVAL_ANNOTATION)?.trim() {
            v if v.eq_ignore_ascii_case("approved") => true,
            v if v.eq_ignore_ascii_case("rejected") => false,
            _ => return None,
        };
        let waiting_since = rr
            .status
            .as_ref()?
            .phase_history
            .iter()
            .rev()
            .find(|t| t.phase == Phase::AwaitingApproval)?
            .time
            .0;
        let (manager, at) = writer_of(rr, APPROVAL_ANNOTATION)?;
        let by_endpoint = manager == FIELD_MANAGER;
        // managedFields times have whole seconds.
        let waiting_since = waiting_since
            .round(
                kubernaut_api::k8s_openapi::jiff::TimestampRound::new()
                    .smallest(kubernaut_api::k8s_openapi::jiff::Unit::Second)
                    .mode(kubernaut_api::k8s_openapi::jiff::RoundMode::Trunc),
            )
            .ok()?;
        let created = rr.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if at < waiting_since || (!by_endpoint && created.is_some_and(|c| at <= c)) {
            return None;
        }
        let endorsed = annotations.get(APPROVED_BY_ANNOTATION).filter(|_| {
            by_endpoint
                && writer_of(rr, APPROVED_BY_ANNOTATION).is_some_and(|(m, _)| m == FIELD_MANAGER)
        });
        let by = match endorsed {
            Some(user) => user.clone(),
            None => format!("field manager {manager}"),
        };
        Some(Approval { approved, by })
    }
}

/// The field manager that last wrote annotation `key`, and when.
fn writer_of(rr: &RemediationRequest, key: &str) -> Option<(String, Timestamp)> {
    let field = format!("f:{key}");
    rr.metadata.managed_fields.iter().flatten().find_map(|m| {
        let fields = &m.fields_v1.as_ref()?.0;
        fields["f:metadata"]["f:annotations"].get(&field)?;
        Some((m.manager.clone()?, m.time.as_ref()?.0))
    })
}

impl Stage for AwaitingApproval {
    fn next(&self, sup: &mut Sup) -> Next {
        self.decide(sup)
    }

    fn done(&self, sup: &mut Sup, result: StageResult) -> Next {
        let StageResult::StormTargets(targets) = result else {
            return Next::Wait;
        };
        let targets = match targets {
            Ok(t) => t,
            Err(e) => return Next::Retry(format!("reading the storm's targets: {e}")),
        };
        let Some(approval) = sup.approval.clone() else {
            return Next::Wait;
        };
        let by = approval.by.clone();
        let now = Timestamp::now();
        let policy = sup.ctx.settings.storm;
        match rules::storm_plan(&sup.ctx.rules, &sup.spec, &targets, policy) {
            Ok(d) => {
                let msg = format!(
                    "approved by {by}: rule {} over {} targets, at most {} steps at once, stopping past {:.0}% failures",
                    d.rule,
                    targets.len(),
                    policy.max_parallel,
                    policy.max_failure_ratio * 100.0
                );
                let analysis = AnalysisStatus {
                    decided_by: kubernaut_api::DecidedBy::Rules,
                    rule: d.rule.clone(),
                    action: d.summary(),
                    workflow: d.workflow,
                    ..Default::default()
                };
                Next::commit(move |s| {
                    record_decision(s, true, &by, now);
                    s.analysis = Some(analysis);
                    Some(Transition::new(Phase::Executing, Reason::Approved, msg))
                })
            }
            Err(e) => {
                let msg = format!("approved by {by}, but nothing can run: {e}");
                Next::commit(move |s| {
                    record_decision(s, true, &by, now);
                    Some(Transition::new(Phase::Failed, Reason::NoStormPlan, msg))
                })
            }
        }
    }
}

impl AwaitingApproval {
    /// Acts on the decision, if there is one.
    pub fn decide(&self, sup: &mut Sup) -> Next {
        let Some(approval) = sup.approval.clone() else {
            return Next::Wait;
        };
        let now = Timestamp::now();
        let by = approval.by.clone();
        if !approval.approved {
            return Next::commit(move |s| record_decision(s, false, &by, now));
        }
        if sup.spec.storm.is_none() {
            if sup.status.analysis.is_none() {
                return Next::Fail(Reason::NoDecision, "approved without an analysis".into());
            }
            let msg = format!("approved by {by}");
            return Next::commit(move |s| {
                record_decision(s, true, &by, now);
                Some(Transition::new(Phase::Executing, Reason::Approved, msg))
            });
        }
        // The gateway keeps counting a storm's targets: take the latest list.
        let (cluster, ns, name) = (
            sup.ctx.cluster.clone(),
            sup.namespace.clone(),
            sup.name.clone(),
        );
        Next::Run(
            ActorKind::approval,
            Sup::work(move || {
                let (cluster, ns, name) = (cluster.clone(), ns.clone(), name.clone());
                async move {
                    let targets = cluster
                        .get_request(&ns, &name)
                        .await
                        .map(|rr| storm_targets(rr.as_ref()));
                    StageResult::StormTargets(targets)
                }
            }),
        )
    }
}

fn storm_targets(rr: Option<&RemediationRequest>) -> Vec<ObjectRef> {
    rr.and_then(|rr| rr.status.as_ref())
        .and_then(|s| s.storm.as_ref())
        .map(|s| {
            s.affected_targets
                .iter()
                .map(|a| a.target.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The approval policy's verdict (K-AI-4) on running `workflow` for this
/// request, decided by `decided_by` with `confidence`.
pub fn gate(
    sup: &Sup,
    decided_by: &str,
    confidence: f64,
    workflow: &Workflow,
) -> crate::approval::Verdict {
    let catalogue = kubernaut_cluster::catalogue();
    let actions: Vec<serde_json::Value> = workflow
        .steps
        .iter()
        .map(|step| {
            // An action not in the catalogue is treated as the worst kind.
            let (risk, destructive) = catalogue
                .iter()
                .find(|a| a.name == step.action)
                .map_or((serde_json::json!("high"), true), |a| {
                    (serde_json::json!(a.risk), a.destructive)
                });
            serde_json::json!({ "name": step.action, "risk": risk, "destructive": destructive })
        })
        .collect();
    let processing = sup.current().processing.clone().unwrap_or_default();
    let t = &sup.spec.target;
    let input = serde_json::json!({
        "environment": if processing.environment.is_empty() { "unknown" } else { processing.environment.as_str() },
        "priority": processing.priority,
        "decidedBy": decided_by,
        "confidence": confidence,
        "target": { "kind": t.kind, "namespace": t.namespace, "name": t.name },
        "actions": actions,
        "storm": sup.spec.storm.is_some(),
        "signal": { "name": sup.spec.signal_name, "severity": sup.spec.severity, "source": sup.spec.source },
    });
    let mut verdict = sup.ctx.approval.evaluate(&input);
    if let Some(why) =
        sup.ctx
            .holds
            .over_budget(&sup.ctx.settings.budget, &sup.key(), Timestamp::now())
    {
        verdict.required = true;
        verdict.reasons.push(why);
    }
    let label = match (&verdict.error, verdict.required) {
        (Some(e), _) => {
            tracing::warn!(error = %e, "approval policy error: approval required");
            "policy_error"
        }
        (None, true) => "required",
        (None, false) => "not_required",
    };
    sup.ctx
        .metrics
        .approvals
        .get_or_create(&ReasonLabels { reason: label })
        .inc();
    verdict
}

/// The approval status of a request that starts waiting now.
pub fn awaiting(sup: &Sup, reasons: Vec<String>) -> ApprovalStatus {
    ApprovalStatus {
        required: true,
        reasons,
        expires_at: Some(after(
            Timestamp::now(),
            sup.ctx.settings.timeouts.approval(),
        )),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::Approval;

    fn request(metadata: serde_json::Value) -> kubernaut_api::RemediationRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
            "metadata": metadata,
            "spec": {"fingerprint": "f", "signalName": "s", "severity": "warning",
                     "source": "generic", "instanceId": "i",
                     "target": {"kind": "Deployment", "namespace": "shop", "name": "web"},
                     "signalResource": {"kind": "Deployment", "namespace": "shop", "name": "web"},
                     "firingTime": "2026-11-22T03:00:00Z", "receivedTime": "2026-11-22T03:00:00Z",
                     "originalPayload": "{}"}
        }))
        .unwrap()
    }

    /// A request waiting since 03:00:10, created at 03:00:00, whose
    /// annotations were written by `managed` (manager, time, keys).
    fn waiting(
        annotations: serde_json::Value,
        managed: &[(&str, &str, &[&str])],
    ) -> kubernaut_api::RemediationRequest {
        let managed: Vec<serde_json::Value> = managed
            .iter()
            .map(|(manager, time, keys)| {
                let fields: serde_json::Map<String, serde_json::Value> = keys
                    .iter()
                    .map(|k| (format!("f:{k}"), serde_json::json!({})))
                    .collect();
                serde_json::json!({"manager": manager, "operation": "Update", "time": time,
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations": fields}}})
            })
            .collect();
        let mut rr = request(serde_json::json!({"name": "r", "annotations": annotations,
            "creationTimestamp": "2026-11-22T03:00:00Z", "managedFields": managed}));
        rr.status = Some(serde_json::from_value(serde_json::json!({
            "phase": "AwaitingApproval",
            "phaseHistory": [
                {"phase": "Processing", "time": "2026-11-22T03:00:01Z", "reason": "Started"},
                {"phase": "AwaitingApproval", "time": "2026-11-22T03:00:10.500Z", "reason": "ApprovalRequired"}]
        })).unwrap());
        rr
    }

    const APPROVAL: &str = "kubernaut.io/approval";
    const BY: &str = "kubernaut.io/approved-by";

    #[test]
    fn only_an_approval_written_while_waiting_counts() {
        let approved = serde_json::json!({APPROVAL: " Approved "});
        let rr = waiting(
            approved.clone(),
            &[("kubectl-annotate", "2026-11-22T03:00:20Z", &[APPROVAL])],
        );
        assert_eq!(
            Approval::of(&rr),
            Some(Approval {
                approved: true,
                by: "field manager kubectl-annotate".into()
            })
        );
        // Written at creation, or before the wait began: approves nothing.
        for at in ["2026-11-22T03:00:00Z", "2026-11-22T03:00:05Z"] {
            let rr = waiting(approved.clone(), &[("kubectl-create", at, &[APPROVAL])]);
            assert_eq!(Approval::of(&rr), None, "{at}");
        }
        // Not waiting (yet): nothing to decide.
        let mut rr = waiting(
            approved,
            &[("kubectl-annotate", "2026-11-22T03:00:20Z", &[APPROVAL])],
        );
        rr.status.as_mut().unwrap().phase_history.pop();
        assert_eq!(Approval::of(&rr), None);
    }

    #[test]
    fn the_approver_is_the_endpoints_user_or_the_field_manager_never_an_annotations_text() {
        let by_alice = serde_json::json!({APPROVAL: "rejected", BY: "alice"});
        let rr = waiting(
            by_alice.clone(),
            &[("kubectl-annotate", "2026-11-22T03:00:20Z", &[APPROVAL, BY])],
        );
        assert_eq!(
            Approval::of(&rr),
            Some(Approval {
                approved: false,
                by: "field manager kubectl-annotate".into()
            }),
            "approved-by written by anyone but the endpoint is ignored"
        );
        let rr = waiting(
            by_alice,
            &[(
                "kubernaut-controller",
                "2026-11-22T03:00:10Z",
                &[APPROVAL, BY],
            )],
        );
        assert_eq!(
            Approval::of(&rr),
            Some(Approval {
                approved: false,
                by: "alice".into()
            }),
            "the endpoint's write in the second the wait began counts"
        );
        for value in ["yes", ""] {
            let rr = waiting(
                serde_json::json!({APPROVAL: value}),
                &[("kubectl-annotate", "2026-11-22T03:00:20Z", &[APPROVAL])],
            );
            assert_eq!(Approval::of(&rr), None, "{value:?} is no decision");
        }
        assert_eq!(
            Approval::of(&request(serde_json::json!({"name": "r"}))),
            None
        );
    }
}

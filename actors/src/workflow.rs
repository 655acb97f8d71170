//! Running a workflow (K-EX-1) against the cluster: steps start as soon as
//! every step they depend on has succeeded, independent steps run at the
//! same time, each attempt is bounded by its timeout, transient failures are
//! retried with backoff, and when a step fails (unless it may) no further
//! step starts, the running ones finish, and the completed steps marked
//! `rollback` are undone in reverse order of completion.
//!
//! Every step's call is parsed against the catalogue before anything runs:
//! a workflow with one bad step changes nothing. Results flow to
//! dependants: a string parameter may name `{{steps.ID.target.kind}}`
//! (`.name`, `.namespace`) or `{{steps.ID.message}}` of a step it depends
//! on, filled in when it starts (such a step is parsed then).
//!
//! With [`Hooks`], the supervisor that owns the request hears of every step
//! before it acts (with its target's UID and generation, so the intent is
//! recorded first) and when it settles, and can resume a workflow whose
//! earlier steps settled before a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use kubernaut_api::workflow::{Fill, Workflow, WorkflowError, fill_placeholders};
use kubernaut_api::{ObjectRef, StepPhase};
use kubernaut_cluster::{ActionCall, ActionError, Cluster, ExecSettings, Outcome, catalogue};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// Backoff before the second attempt; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub id: String,
    pub action: String,
    pub state: StepPhase,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What undoing it did, when it was undone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<Outcome>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowReport {
    pub succeeded: bool,
    /// In the workflow's order.
    pub steps: Vec<StepReport>,
    /// Step ids in the order they finished.
    pub completion_order: Vec<String>,
    /// Step ids in the order they were undone.
    pub rollback_order: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InvalidWorkflow {
    #[error(transparent)]
    Dag(#[from] WorkflowError),
    #[error("step {0}: {1}")]
    Parameters(String, String),
}

/// What the runner tells the request's supervisor.
#[derive(Debug)]
pub enum StepEvent {
    /// The step is about to act; it waits for `ack`, sent once the intent
    /// is recorded. A dropped `ack` (the supervisor stopped) stops the step.
    Starting {
        id: String,
        target: Option<ObjectRef>,
        uid: String,
        generation: Option<i64>,
        ack: oneshot::Sender<()>,
    },
    Settled(StepReport),
}

/// How a supervisor follows and resumes a workflow.
#[derive(Default)]
pub struct Hooks {
    /// Steps that settled before a restart: not run again.
    pub settled: BTreeMap<String, StepPhase>,
    pub events: Option<mpsc::UnboundedSender<StepEvent>>,
}

impl Hooks {
    fn tell(&self, event: StepEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }
}

/// Failures worth another attempt: the API, a conflict storm, a busy target.
fn transient(e: &ActionError) -> bool {
    matches!(
        e,
        ActionError::Api(_) | ActionError::Conflict(..) | ActionError::Busy(..)
    )
}

/// Runs `workflow`; an invalid one is refused before anything runs.
pub async fn run(
    cluster: &Cluster,
    workflow: &Workflow,
    settings: &ExecSettings,
    default_timeout: Duration,
) -> Result<WorkflowReport, InvalidWorkflow> {
    run_with(
        cluster,
        workflow,
        settings,
        default_timeout,
        &Hooks::default(),
    )
    .await
}

/// [`run`], reporting to and resuming for a supervisor.
pub async fn run_with(
    cluster: &Cluster,
    workflow: &Workflow,
    settings: &ExecSettings,
    default_timeout: Duration,
    hooks: &Hooks,
) -> Result<WorkflowReport, InvalidWorkflow> {
    let known: Vec<&str> = catalogue().iter().map(|a| a.name).collect();
    workflow.validate(&known)?;
    // Parsed now, or (when it uses its dependencies' results) at its start.
    let mut calls: Vec<Option<ActionCall>> = Vec::with_capacity(workflow.steps.len());
    for s in &workflow.steps {
        let refs = step_references(&s.parameters);
        if let Some(r) = refs.iter().find(|r| !s.depends_on.contains(r)) {
            return Err(InvalidWorkflow::Parameters(
                s.id.clone(),
                format!("uses the result of step {r:?}, which it does not depend on"),
            ));
        }
        calls.push(if refs.is_empty() {
            Some(
                ActionCall::parse(&s.action, s.parameters.clone())
                    .map_err(|e| InvalidWorkflow::Parameters(s.id.clone(), e))?,
            )
        } else {
            None
        });
    }
    let index: BTreeMap<&str, usize> = workflow
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut reports: Vec<Option<StepReport>> = vec![None; workflow.steps.len()];
    let mut completion_order = Vec::new();
    let mut failed = false;
    let mut running = FuturesUnordered::new();
    let mut started = vec![false; workflow.steps.len()];
    for (i, step) in workflow.steps.iter().enumerate() {
        if let Some(state) = hooks.settled.get(&step.id) {
            started[i] = true;
            failed |= *state == StepPhase::Failed && !step.continue_on_failure;
            reports[i] = Some(StepReport {
                id: step.id.clone(),
                action: step.action.clone(),
                state: *state,
                attempts: 0,
                outcome: None,
                error: None,
                rollback: Vec::new(),
            });
        }
    }

    loop {
        // Start or skip every step whose dependencies are settled.
        for (i, step) in workflow.steps.iter().enumerate() {
            if started[i] {
                continue;
            }
            let deps: Vec<Option<StepPhase>> = step
                .depends_on
                .iter()
                .map(|d| reports[index[d.as_str()]].as_ref().map(|r| r.state))
                .collect();
            let blocked = deps.iter().any(|d| matches!(d, Some(s) if !s.succeeded()));
            if failed || blocked {
                if failed && !running.is_empty() && !blocked {
                    // Wait: the workflow has failed, but this step is only
                    // skipped once nothing runs any more.
                    continue;
                }
                started[i] = true;
                let skipped = StepReport {
                    id: step.id.clone(),
                    action: step.action.clone(),
                    state: StepPhase::Skipped,
                    attempts: 0,
                    outcome: None,
                    error: None,
                    rollback: Vec::new(),
                };
                hooks.tell(StepEvent::Settled(skipped.clone()));
                reports[i] = Some(skipped);
                continue;
            }
            if deps.iter().all(Option::is_some) {
                started[i] = true;
                let timeout = step
                    .timeout_seconds
                    .map_or(default_timeout, Duration::from_secs);
                let retries = step.retries;
                let call = match &calls[i] {
                    Some(c) => Ok(c.clone()),
                    None => with_results(
                        step,
                        &workflow.steps,
                        &index,
                        &reports,
                        &calls,
                        &settings.holder,
                    ),
                };
                if let Ok(c) = &call {
                    calls[i] = Some(c.clone());
                }
                let id = step.id.clone();
                running.push(async move {
                    let call = match call {
                        Ok(c) => c,
                        Err(e) => return (i, Err(e), 0),
                    };
                    if let Err(e) = announce(cluster, hooks, id, &call, &settings.holder).await {
                        return (i, Err(e), 0);
                    }
                    let (result, attempts) =
                        attempt(cluster, &call, settings, timeout, retries).await;
                    (i, result, attempts)
                });
            }
        }
        let Some((i, result, attempts)) = running.next().await else {
            if started.iter().all(|s| *s) {
                break;
            }
            // Only skipped steps remain to be recorded.
            continue;
        };
        let step = &workflow.steps[i];
        completion_order.push(step.id.clone());
        let (state, outcome, error) = match result {
            Ok(o) => (StepPhase::Succeeded, Some(o), None),
            Err(e) => {
                tracing::warn!(step = %step.id, action = %step.action, error = %e, "workflow step failed");
                failed |= !step.continue_on_failure;
                (StepPhase::Failed, None, Some(e))
            }
        };
        let report = StepReport {
            id: step.id.clone(),
            action: step.action.clone(),
            state,
            attempts,
            outcome,
            error,
            rollback: Vec::new(),
        };
        hooks.tell(StepEvent::Settled(report.clone()));
        reports[i] = Some(report);
    }

    let mut rollback_order = Vec::new();
    if failed {
        for id in completion_order.iter().rev() {
            let i = index[id.as_str()];
            let Some(report) = reports[i].as_mut() else {
                continue;
            };
            if !workflow.steps[i].rollback || report.state != StepPhase::Succeeded {
                continue;
            }
            report.state = StepPhase::RolledBack;
            rollback_order.push(id.clone());
            let changes = report
                .outcome
                .as_ref()
                .map(|o| o.changes.clone())
                .unwrap_or_default();
            for change in changes.iter().rev() {
                let Some(undo) = calls[i].as_ref().and_then(|c| c.rollback(change)) else {
                    continue;
                };
                match attempt(cluster, &undo, settings, default_timeout, 2).await {
                    (Ok(o), _) => report.rollback.push(o),
                    (Err(e), _) => {
                        tracing::error!(step = %id, error = %e, "rolling back a workflow step failed");
                        report.state = StepPhase::RollbackFailed;
                        report.error = Some(format!("rollback: {e}"));
                    }
                }
            }
        }
    }
    Ok(WorkflowReport {
        succeeded: !failed,
        steps: reports.into_iter().flatten().collect(),
        completion_order,
        rollback_order,
    })
}

/// Ids of the steps whose results `parameters` use.
fn step_references(parameters: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let _ = fill_placeholders(&mut parameters.clone(), &mut |key| {
        if let Some((id, _)) = key.strip_prefix("steps.").and_then(|k| k.split_once('.'))
            && !out.iter().any(|o| o == id)
        {
            out.push(id.to_string());
        }
        Fill::Keep
    });
    out
}

/// The step's call with its dependencies' results filled in.
fn with_results(
    step: &kubernaut_api::workflow::Step,
    steps: &[kubernaut_api::workflow::Step],
    index: &BTreeMap<&str, usize>,
    reports: &[Option<StepReport>],
    calls: &[Option<ActionCall>],
    holder: &str,
) -> Result<ActionCall, String> {
    let result = |id: &str, field: &str| -> Option<String> {
        let i = *index.get(id)?;
        let outcome = reports[i].as_ref()?.outcome.as_ref();
        if field == "message" {
            return outcome.map(|o| o.message.clone());
        }
        let target = outcome
            .and_then(|o| o.changes.first().map(|c| c.object.clone()))
            .or_else(|| calls[i].as_ref()?.target_of(holder))
            .or_else(|| {
                ActionCall::parse(&steps[i].action, steps[i].parameters.clone())
                    .ok()?
                    .target_of(holder)
            })?;
        match field {
            "target.kind" => Some(target.kind),
            "target.name" => Some(target.name),
            "target.namespace" => Some(target.namespace),
            _ => None,
        }
    };
    let mut parameters = step.parameters.clone();
    fill_placeholders(&mut parameters, &mut |key| {
        key.strip_prefix("steps.")
            .and_then(|k| k.split_once('.'))
            .and_then(|(id, field)| result(id, field))
            .map_or(Fill::Missing, Fill::With)
    })
    .map_err(|u| {
        format!(
            "{} in {} has no value: unknown, or its step left no result",
            u.placeholder, u.path
        )
    })?;
    ActionCall::parse(&step.action, parameters)
}

/// Tells the supervisor the step is about to act, with its target's UID and
/// generation, and waits until the intent is recorded.
async fn announce(
    cluster: &Cluster,
    hooks: &Hooks,
    id: String,
    call: &ActionCall,
    holder: &str,
) -> Result<(), String> {
    let Some(events) = &hooks.events else {
        return Ok(());
    };
    let target = call.target_of(holder);
    let meta = match &target {
        Some(t) => cluster.metadata(t).await.ok().flatten(),
        None => None,
    };
    let (ack, recorded) = oneshot::channel();
    let event = StepEvent::Starting {
        id,
        target,
        uid: meta
            .as_ref()
            .and_then(|m| m.uid.clone())
            .unwrap_or_default(),
        generation: meta.and_then(|m| m.generation),
        ack,
    };
    if events.send(event).is_err() || recorded.await.is_err() {
        return Err("not started: the request's supervisor stopped".into());
    }
    Ok(())
}

/// One step: up to `1 + retries` attempts, each bounded by `timeout`.
async fn attempt(
    cluster: &Cluster,
    call: &ActionCall,
    settings: &ExecSettings,
    timeout: Duration,
    retries: u32,
) -> (Result<Outcome, String>, u32) {
    let mut backoff = FIRST_BACKOFF;
    let mut n = 0;
    loop {
        n += 1;
        let err = match tokio::time::timeout(timeout, cluster.run_action(call, settings)).await {
            Ok(Ok(o)) => return (Ok(o), n),
            Ok(Err(e)) if transient(&e) && n <= retries => e.to_string(),
            Ok(Err(e)) => return (Err(e.to_string()), n),
            Err(_) if n <= retries => format!("timed out after {timeout:?}"),
            Err(_) => return (Err(format!("timed out after {timeout:?}")), n),
        };
        tracing::info!(action = call.name(), attempt = n, error = %err, "retrying a workflow step");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

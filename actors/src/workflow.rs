//! Running a workflow (K-EX-1) against the cluster: steps start as soon as
//! every step they depend on has succeeded, independent steps run at the
//! same time, each attempt is bounded by its timeout, transient failures are
//! retried with backoff, and when a step fails (unless it may) no further
//! step starts, the running ones finish, and the completed steps marked
//! `rollback` are undone in reverse order of completion.
//!
//! Every step's call is parsed against the catalogue before anything runs:
//! a workflow with one bad step changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use kubernaut_api::workflow::{Workflow, WorkflowError};
use kubernaut_cluster::{ActionCall, ActionError, Cluster, ExecSettings, Outcome, catalogue};
use serde::Serialize;

/// Backoff before the second attempt; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum StepState {
    Succeeded,
    Failed,
    /// Not started: a dependency failed, or the workflow had already failed.
    Skipped,
    RolledBack,
    RollbackFailed,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub id: String,
    pub action: String,
    pub state: StepState,
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
    let known: Vec<&str> = catalogue().iter().map(|a| a.name).collect();
    workflow.validate(&known)?;
    let calls: Vec<ActionCall> = workflow
        .steps
        .iter()
        .map(|s| {
            ActionCall::parse(&s.action, s.parameters.clone())
                .map_err(|e| InvalidWorkflow::Parameters(s.id.clone(), e))
        })
        .collect::<Result<_, _>>()?;
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

    loop {
        // Start or skip every step whose dependencies are settled.
        for (i, step) in workflow.steps.iter().enumerate() {
            if started[i] {
                continue;
            }
            let deps: Vec<Option<StepState>> = step
                .depends_on
                .iter()
                .map(|d| reports[index[d.as_str()]].as_ref().map(|r| r.state))
                .collect();
            let blocked = deps
                .iter()
                .any(|d| matches!(d, Some(s) if *s != StepState::Succeeded));
            if failed || blocked {
                if failed && !running.is_empty() && !blocked {
                    // Wait: the workflow has failed, but this step is only
                    // skipped once nothing runs any more.
                    continue;
                }
                started[i] = true;
                reports[i] = Some(StepReport {
                    id: step.id.clone(),
                    action: step.action.clone(),
                    state: StepState::Skipped,
                    attempts: 0,
                    outcome: None,
                    error: None,
                    rollback: Vec::new(),
                });
                continue;
            }
            if deps.iter().all(Option::is_some) {
                started[i] = true;
                let timeout = step
                    .timeout_seconds
                    .map_or(default_timeout, Duration::from_secs);
                let (call, retries) = (&calls[i], step.retries);
                running.push(async move {
                    let (result, attempts) =
                        attempt(cluster, call, settings, timeout, retries).await;
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
            Ok(o) => (StepState::Succeeded, Some(o), None),
            Err(e) => {
                tracing::warn!(step = %step.id, action = %step.action, error = %e, "workflow step failed");
                failed |= !step.continue_on_failure;
                (StepState::Failed, None, Some(e))
            }
        };
        reports[i] = Some(StepReport {
            id: step.id.clone(),
            action: step.action.clone(),
            state,
            attempts,
            outcome,
            error,
            rollback: Vec::new(),
        });
    }

    let mut rollback_order = Vec::new();
    if failed {
        for id in completion_order.iter().rev() {
            let i = index[id.as_str()];
            let Some(report) = reports[i].as_mut() else {
                continue;
            };
            if !workflow.steps[i].rollback || report.state != StepState::Succeeded {
                continue;
            }
            report.state = StepState::RolledBack;
            rollback_order.push(id.clone());
            let changes = report
                .outcome
                .as_ref()
                .map(|o| o.changes.clone())
                .unwrap_or_default();
            for change in changes.iter().rev() {
                let Some(undo) = calls[i].rollback(change) else {
                    continue;
                };
                match attempt(cluster, &undo, settings, default_timeout, 2).await {
                    (Ok(o), _) => report.rollback.push(o),
                    (Err(e), _) => {
                        tracing::error!(step = %id, error = %e, "rolling back a workflow step failed");
                        report.state = StepState::RollbackFailed;
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

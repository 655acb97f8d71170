//! Verifying: every step this run completed must show its effect
//! ([`Cluster::verify`]) within the verification timeout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kubernaut_api::ExecutionStatus;
use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::workflow::Workflow;
use kubernaut_cluster::{ActionCall, Cluster, Outcome};

use super::{Next, Stage, StageResult, Sup};
use crate::metrics::ActorKind;
use crate::supervisor::transitions;
use crate::supervisor::transitions::Reason;

const VERIFY_POLL: Duration = Duration::from_millis(250);

/// Why a run did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The recorded step's call cannot be rebuilt.
    #[error("step {step}: {reason}")]
    Call { step: String, reason: String },
    #[error("step {step} ({action}) did not show its effect within {timeout:?}")]
    NotSeen {
        step: String,
        action: String,
        timeout: Duration,
    },
}

pub struct Verification;

impl Stage for Verification {
    fn next(&self, sup: &mut Sup) -> Next {
        let Some(exec) = sup.status.execution.clone() else {
            return Next::Fail(
                Reason::NoExecutionRecord,
                "Verifying without an execution record".into(),
            );
        };
        let (cluster, timeout) = (sup.ctx.cluster.clone(), sup.ctx.settings.verify_timeout);
        let workflow = sup
            .status
            .analysis
            .as_ref()
            .map(|a| a.workflow.clone())
            .unwrap_or_default();
        let outcomes = sup.outcomes.clone();
        Next::Run(
            ActorKind::verification,
            Sup::work(move || {
                let (cluster, workflow, exec, outcomes) = (
                    cluster.clone(),
                    workflow.clone(),
                    exec.clone(),
                    outcomes.clone(),
                );
                async move {
                    StageResult::Verified(
                        verify(&cluster, &workflow, &exec, &outcomes, timeout).await,
                    )
                }
            }),
        )
    }

    fn done(&self, sup: &mut Sup, result: StageResult) -> Next {
        let StageResult::Verified(result) = result else {
            return Next::Wait;
        };
        if result.is_ok() {
            sup.observe_stage("verification");
        }
        let now = Timestamp::now();
        let result = result.map_err(|e| e.to_string());
        Next::commit(move |s| Some(transitions::verified(s, result, now)))
    }
}

/// Waits until every step this run completed shows its effect, up to
/// `timeout` for all of them.
async fn verify(
    cluster: &Cluster,
    workflow: &Workflow,
    exec: &ExecutionStatus,
    outcomes: &BTreeMap<String, Outcome>,
    timeout: Duration,
) -> Result<String, VerifyError> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    for step in &workflow.steps {
        let Some(outcome) = outcomes.get(&step.id) else {
            // Settled before a restart, or not run: nothing of it to check.
            continue;
        };
        let call = ActionCall::parse(&step.action, step.parameters.clone()).map_err(|reason| {
            VerifyError::Call {
                step: step.id.clone(),
                reason,
            }
        })?;
        loop {
            match cluster.verify(&call, outcome).await {
                Ok(Some(what)) => {
                    seen.push(format!("{}: {what}", step.id));
                    break;
                }
                Ok(None) | Err(_) if Instant::now() >= deadline => {
                    return Err(VerifyError::NotSeen {
                        step: step.id.clone(),
                        action: step.action.clone(),
                        timeout,
                    });
                }
                _ => tokio::time::sleep(VERIFY_POLL).await,
            }
        }
    }
    let dry = exec.steps.is_empty() || outcomes.values().all(|o| o.dry_run);
    Ok(if seen.is_empty() || dry && !outcomes.is_empty() {
        if dry && !outcomes.is_empty() {
            "dry run: the server accepted every change; nothing was changed".into()
        } else {
            "nothing to verify".into()
        }
    } else {
        seen.join("; ")
    })
}

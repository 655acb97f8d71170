//! Verifying (K-AU-2): every step this run completed must show its effect
//! ([`Cluster::verify`]) within the verification timeout; then, when
//! something was changed, a stabilisation window whose end is kept in the
//! status (a replica taking the request over finishes it), and the scorers
//! of `kubernaut-verify`. Ineffective fails the request and is escalated.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kubernaut_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubernaut_api::k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubernaut_api::workflow::Workflow;
use kubernaut_api::{
    ExecutionStatus, ScoreComponent, SignalSource, StepPhase, StepStatus, VerificationBaseline,
    VerificationOutcome, VerificationStatus,
};
use kubernaut_cluster::{ActionCall, Cluster, Outcome};
use kubernaut_store::{AuditRecord, OutcomeRecord};
use kubernaut_verify as verify;

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

/// The change was seen applied.
pub struct Applied {
    pub message: String,
    /// Something was changed (not a dry run, not only reads).
    pub changed: bool,
    pub baseline: VerificationBaseline,
}

pub struct Verification;

impl Stage for Verification {
    fn next(&self, sup: &mut Sup) -> Next {
        let Some(exec) = sup.current().execution.clone() else {
            return Next::Fail(
                Reason::NoExecutionRecord,
                "Verifying without an execution record".into(),
            );
        };
        match sup.current().verification.clone() {
            None => applied(sup, exec),
            Some(v) if v.outcome.is_none() => {
                if v.window_ends.0 > Timestamp::now() {
                    sup.recheck_at(v.window_ends.0);
                    return Next::Wait;
                }
                score(sup, exec, v)
            }
            // Scored in a write whose phase change was lost: finish it.
            Some(v) => {
                let (outcome, message) = (v.outcome, summary(&v));
                let now = Timestamp::now();
                Next::commit(move |s| Some(transitions::verified(s, Ok((outcome, message)), now)))
            }
        }
    }

    fn done(&self, sup: &mut Sup, result: StageResult) -> Next {
        match result {
            StageResult::Verified(Err(e)) => {
                let now = Timestamp::now();
                let e = e.to_string();
                Next::commit(move |s| Some(transitions::verified(s, Err(e), now)))
            }
            StageResult::Verified(Ok(a)) if !a.changed => {
                sup.observe_stage("verification");
                let now = Timestamp::now();
                let message = format!("{}; nothing was changed, so nothing to score", a.message);
                sup.completed(None, &message);
                Next::commit(move |s| Some(transitions::verified(s, Ok((None, message)), now)))
            }
            StageResult::Verified(Ok(a)) => {
                sup.observe_stage("verification");
                let now = Timestamp::now();
                let window = sup.ctx.verifier.settings().window();
                let ends = now
                    .checked_add(SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX))
                    .unwrap_or(Timestamp::MAX);
                tracing::info!(window = ?window, applied = %a.message, "verification window started");
                Next::CommitThenAdvance(Box::new(move |s| {
                    s.verification = Some(VerificationStatus {
                        started_at: Time(now),
                        window_ends: Time(ends),
                        baseline: a.baseline,
                        components: Vec::new(),
                        score: None,
                        outcome: None,
                        scored_at: None,
                    });
                    s.message = Some(format!("{}; verifying until {ends}", a.message));
                    None
                }))
            }
            StageResult::Scored(components) => scored(sup, components),
            _ => Next::Wait,
        }
    }
}

/// Waits for the change to show, then reads the baseline of the window.
fn applied(sup: &mut Sup, exec: ExecutionStatus) -> Next {
    let (cluster, timeout) = (sup.ctx.cluster.clone(), sup.ctx.settings.verify_timeout);
    let workflow = sup
        .status
        .analysis
        .as_ref()
        .map(|a| a.workflow.clone())
        .unwrap_or_default();
    let changed = changed(sup, &exec);
    let outcomes = sup.outcomes.clone();
    let target = sup.spec.target.clone();
    Next::Run(
        ActorKind::verification,
        Sup::work(move || {
            let (cluster, workflow, exec, outcomes, target) = (
                cluster.clone(),
                workflow.clone(),
                exec.clone(),
                outcomes.clone(),
                target.clone(),
            );
            async move {
                let message = match verify(&cluster, &workflow, &exec, &outcomes, timeout).await {
                    Ok(m) => m,
                    Err(e) => return StageResult::Verified(Err(e)),
                };
                let mut baseline = VerificationBaseline::default();
                if changed {
                    // Unreadable now: no drift or restart baseline, and the
                    // scorers say so.
                    if let Ok(observed) = cluster.observe(&target).await {
                        baseline.spec_hash = observed.as_ref().map(|o| o.spec_hash.clone());
                        baseline.restarts = verify::restarts(observed.as_ref());
                    }
                }
                StageResult::Verified(Ok(Applied {
                    message,
                    changed,
                    baseline,
                }))
            }
        }),
    )
}

/// Whether this run changed anything: a step of an action that writes
/// succeeded, outside a dry run, and (when this replica ran it) with
/// changes.
fn changed(sup: &Sup, exec: &ExecutionStatus) -> bool {
    let ex = &sup.ctx.settings.executor;
    if ex.dry_run_only || ex.dry_run_namespaces.contains(&sup.spec.target.namespace) {
        return false;
    }
    exec.steps.iter().any(|s| {
        wrote(s)
            && sup
                .outcomes
                .get(&s.id)
                .is_none_or(|o| !o.dry_run && !o.changes.is_empty())
    })
}

/// A step of an action that writes took effect: the actions whose
/// outcomes count (K-AI-2).
fn wrote(s: &StepStatus) -> bool {
    kubernaut_cluster::writes(&s.action)
        && matches!(s.phase, StepPhase::Succeeded | StepPhase::AlreadyDone)
}

/// The end of the window: every scorer, in a stage actor.
fn score(sup: &mut Sup, exec: ExecutionStatus, v: VerificationStatus) -> Next {
    let (cluster, verifier) = (sup.ctx.cluster.clone(), sup.ctx.verifier.clone());
    let target = sup.spec.target.clone();
    let labels = if sup.spec.source == SignalSource::Alertmanager {
        sup.spec.labels.clone()
    } else {
        BTreeMap::new()
    };
    // A resolution counts when it came after the change began.
    let resolved = sup
        .status
        .signal_resolution
        .as_ref()
        .is_some_and(|r| r.resolved_at.0 >= exec.started_at.0);
    let analysis = sup.current().analysis.as_ref();
    let query = analysis
        .map(|a| a.verify_query.clone())
        .filter(|q| !q.is_empty())
        .or_else(|| {
            analysis.and_then(|a| {
                a.workflow
                    .steps
                    .iter()
                    .find_map(|s| verifier.settings().action_queries.get(&s.action).cloned())
            })
        });
    Next::Run(
        ActorKind::verification,
        Sup::work(move || {
            let (cluster, verifier, target, labels, query, baseline) = (
                cluster.clone(),
                verifier.clone(),
                target.clone(),
                labels.clone(),
                query.clone(),
                v.baseline.clone(),
            );
            async move {
                let weights = verifier.settings().weights;
                let (health, drift) = match cluster.observe(&target).await {
                    Ok(now) => (
                        verify::health(now.as_ref(), &baseline.restarts, weights.health),
                        verify::drift(baseline.spec_hash.as_deref(), now.as_ref()),
                    ),
                    Err(e) => {
                        let why = format!("the target could not be read: {e}");
                        (
                            verify::component("health", None, weights.health, &why),
                            verify::component("drift", None, 0.0, &why),
                        )
                    }
                };
                let (alert, metric) = tokio::join!(
                    verifier.alert(&labels, resolved),
                    verifier.metric(query.as_deref())
                );
                StageResult::Scored(vec![health, alert, metric, drift])
            }
        }),
    )
}

/// The scores are in: the outcome, recorded, told and written.
fn scored(sup: &mut Sup, components: Vec<ScoreComponent>) -> Next {
    let (score, outcome) = verify::combine(&components, sup.ctx.verifier.settings());
    let now = Timestamp::now();
    let mut v = sup
        .status
        .verification
        .clone()
        .unwrap_or(VerificationStatus {
            started_at: Time(now),
            window_ends: Time(now),
            baseline: VerificationBaseline::default(),
            components: Vec::new(),
            score: None,
            outcome: None,
            scored_at: None,
        });
    v.components = components;
    v.score = score;
    v.outcome = Some(outcome);
    v.scored_at = Some(Time(now));
    let message = summary(&v);
    sup.observe_stage("verification_scoring");
    sup.ctx
        .metrics
        .verifications
        .get_or_create(&crate::metrics::OutcomeLabels {
            outcome: outcome.as_str(),
        })
        .inc();
    tracing::info!(outcome = outcome.as_str(), score = ?score, "verified");
    let detail = serde_json::json!({
        "message": message, "outcome": outcome.as_str(), "score": score,
        "components": v.components, "windowEnds": v.window_ends,
    });
    sup.audit_event(
        "verification",
        None,
        None,
        outcome.as_str(),
        "",
        detail.clone(),
    );
    record_outcomes(sup, &v);
    if outcome == VerificationOutcome::Ineffective {
        sup.escalate(Reason::Ineffective, detail);
    } else {
        sup.completed(Some(&v), &message);
    }
    Next::commit(move |s| {
        s.verification = Some(v);
        Some(transitions::verified(s, Ok((Some(outcome), message)), now))
    })
}

/// One outcome row per action that changed something (K-AI-2 learns
/// from them).
fn record_outcomes(sup: &Sup, v: &VerificationStatus) {
    let Some(outcome) = v.outcome else {
        return;
    };
    let environment = sup.environment();
    let mut actions: Vec<&str> = Vec::new();
    for s in sup.current().execution.iter().flat_map(|e| &e.steps) {
        if wrote(s) && !actions.contains(&s.action.as_str()) {
            actions.push(&s.action);
        }
    }
    let components = serde_json::to_value(&v.components).unwrap_or_default();
    for action in actions {
        sup.audit(AuditRecord::Outcome(OutcomeRecord {
            request_uid: sup.uid.clone(),
            action: action.to_string(),
            signal_name: sup.spec.signal_name.clone(),
            target_kind: sup.spec.target.kind.clone(),
            environment: environment.clone(),
            outcome: outcome.as_str().to_string(),
            score: v.score,
            components: components.clone(),
        }));
    }
}

/// `Effective (score 0.92): health 1.00 (…); alert n/a (…); …`
fn summary(v: &VerificationStatus) -> String {
    let parts: Vec<String> = v
        .components
        .iter()
        .map(|c| match c.score {
            Some(s) => format!("{} {s:.2} ({})", c.name, c.evidence),
            None => format!("{} n/a ({})", c.name, c.evidence),
        })
        .collect();
    format!(
        "{} (score {}): {}",
        v.outcome.map_or("Unscored", |o| o.as_str()),
        v.score.map_or("n/a".to_string(), |s| format!("{s:.2}")),
        parts.join("; ")
    )
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

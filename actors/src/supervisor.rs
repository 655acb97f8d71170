//! One supervisor actor per `RemediationRequest`. Its state is rebuilt from
//! the request's status in `pre_start`, so a restarted controller resumes a
//! request exactly where its status says it stopped (K-RR-6). Every phase
//! change goes through the K-RR-2 table, is written to the status
//! subresource first and only then taken as the actor's state, and is
//! appended to the audit log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kubernaut_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{
    AnalysisStatus, ENVIRONMENT_LABEL, ExecutionStatus, ObjectRef, Phase, PhaseTransition,
    ProcessingStatus, RemediationRequest, RemediationRequestSpec, RemediationRequestStatus,
};
use kubernaut_cluster::{Cluster, DeleteOutcome, PodState, Scope};
use kubernaut_store::{AuditRecord, EventRecord, RequestRecord};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::Context;
use crate::metrics::{ActionLabels, StageLabels, TransitionLabels};
use crate::rules::{self, RuleError};

/// First retry delay after a failed status write; doubles up to the cap.
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(30);
const VERIFY_POLL: Duration = Duration::from_millis(250);

pub struct Supervisor;

pub struct Args {
    pub namespace: String,
    pub name: String,
    pub ctx: Arc<Context>,
}

pub struct State {
    namespace: String,
    name: String,
    uid: String,
    spec: RemediationRequestSpec,
    status: RemediationRequestStatus,
    ctx: Arc<Context>,
    /// A stage task is in flight; `Advance` waits for its result.
    busy: bool,
    stage_started: Instant,
    retry: Duration,
}

pub enum Msg {
    /// Do the next piece of work for the current phase.
    Advance,
    StageDone(StageResult),
}

pub enum StageResult {
    Processed(Result<Processed, String>),
    PodObserved(Result<Option<PodState>, String>),
    Executed(Result<DeleteOutcome, String>),
    Verified(Result<Verified, String>),
}

pub enum Processed {
    InScope(ProcessingStatus),
    OutOfScope(String),
}

pub enum Verified {
    Replaced,
    Gone,
}

impl State {
    fn phase(&self) -> Phase {
        self.status.phase
    }
    fn target_pod(&self) -> Option<ObjectRef> {
        let a = self.status.analysis.as_ref()?;
        let pod = a.parameters.get("pod")?;
        Some(ObjectRef::new("Pod", &self.spec.target.namespace, pod))
    }
}

impl Actor for Supervisor {
    type Msg = Msg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(
        &self,
        myself: ActorRef<Msg>,
        args: Args,
    ) -> Result<State, ActorProcessingErr> {
        // Always start from what the cluster says, never from a cached copy.
        let rr: RemediationRequest = args
            .ctx
            .cluster
            .get_request(&args.namespace, &args.name)
            .await?
            .ok_or_else(|| format!("request {}/{} no longer exists", args.namespace, args.name))?;
        args.ctx.metrics.live_supervisors.inc();
        myself.send_message(Msg::Advance)?;
        Ok(State {
            namespace: args.namespace,
            name: args.name,
            uid: rr.metadata.uid.clone().unwrap_or_default(),
            spec: rr.spec.clone(),
            status: rr.status.clone().unwrap_or_default(),
            ctx: args.ctx,
            busy: false,
            stage_started: Instant::now(),
            retry: RETRY_BASE,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Msg>,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.metrics.live_supervisors.dec();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Msg>,
        msg: Msg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Advance if state.busy => Ok(()),
            Msg::Advance => advance(&myself, state).await,
            Msg::StageDone(result) => {
                state.busy = false;
                on_stage_done(&myself, state, result).await
            }
        }
    }
}

async fn advance(myself: &ActorRef<Msg>, st: &mut State) -> Result<(), ActorProcessingErr> {
    match st.phase() {
        p if p.is_terminal() => {
            myself.stop(Some(format!("request reached {p}")));
            Ok(())
        }
        Phase::Pending | Phase::Blocked => {
            audit_request(st, Phase::Pending).await;
            commit(
                myself,
                st,
                Some((Phase::Processing, "Started", String::new())),
                |_| {},
            )
            .await
        }
        Phase::Processing => {
            let (cluster, spec) = (st.ctx.cluster.clone(), st.spec.clone());
            run_stage(myself, st, async move {
                StageResult::Processed(process(&cluster, &spec).await)
            });
            Ok(())
        }
        Phase::Analyzing => analyze(myself, st).await,
        Phase::Executing => execute(myself, st).await,
        Phase::Verifying => {
            let Some(exec) = st.status.execution.clone() else {
                return fail(
                    myself,
                    st,
                    "NoExecutionRecord",
                    "Verifying without an execution record".into(),
                )
                .await;
            };
            if exec.action != "restart_pod" {
                return commit(
                    myself,
                    st,
                    Some((Phase::Completed, "NothingToVerify", String::new())),
                    |_| {},
                )
                .await;
            }
            let (cluster, timeout) = (st.ctx.cluster.clone(), st.ctx.settings.verify_timeout);
            run_stage(myself, st, async move {
                StageResult::Verified(verify_pod_replaced(&cluster, &exec, timeout).await)
            });
            Ok(())
        }
        Phase::AwaitingApproval => Ok(()),
        Phase::Completed | Phase::Failed | Phase::TimedOut | Phase::Skipped | Phase::Cancelled => {
            Ok(())
        }
    }
}

async fn analyze(myself: &ActorRef<Msg>, st: &mut State) -> Result<(), ActorProcessingErr> {
    // A storm (K-GW-6) is escalated, never remediated target by target: it
    // waits for a human.
    if let Some(storm) = st.spec.storm.clone() {
        let msg = format!(
            "{:?} storm of {} in namespace {}: escalated, approval required",
            storm.kind, storm.alert_name, storm.namespace
        );
        return commit(
            myself,
            st,
            Some((Phase::AwaitingApproval, "StormEscalated", msg)),
            |s| set_condition(s, "Analyzed", "True", "Storm"),
        )
        .await;
    }
    let started = Instant::now();
    let decision = rules::decide(&st.ctx.rules, &st.spec);
    observe_stage(st, "analysis", started);
    match decision {
        Ok(d) => {
            let analysis = AnalysisStatus {
                decided_by: "rules".into(),
                rule: d.rule.clone(),
                action: d.action.clone(),
                parameters: d.parameters.clone(),
            };
            let msg = format!("rule {} chose {}", d.rule, d.action);
            let to = if st.ctx.settings.dry_run {
                (
                    Phase::Skipped,
                    "DryRun",
                    format!("{msg}; global dry-run is on, nothing was changed"),
                )
            } else {
                (Phase::Executing, "ActionChosen", msg)
            };
            commit(myself, st, Some(to), |s| {
                s.analysis = Some(analysis);
                set_condition(s, "Analyzed", "True", "RuleMatched");
            })
            .await
        }
        Err(RuleError::NoRule(name)) => {
            let msg = format!("no rule answers signal {name}; nothing to do automatically");
            commit(
                myself,
                st,
                Some((Phase::Skipped, "NoMatchingRule", msg)),
                |s| {
                    set_condition(s, "Analyzed", "False", "NoMatchingRule");
                },
            )
            .await
        }
        Err(e @ RuleError::MissingValue { .. }) => {
            fail(myself, st, "RuleIncomplete", e.to_string()).await
        }
    }
}

async fn execute(myself: &ActorRef<Msg>, st: &mut State) -> Result<(), ActorProcessingErr> {
    let Some(analysis) = st.status.analysis.clone() else {
        return fail(
            myself,
            st,
            "NoDecision",
            "Executing without an analysis".into(),
        )
        .await;
    };
    match (analysis.action.as_str(), st.status.execution.clone()) {
        (_, Some(exec)) if exec.result.is_some() => {
            commit(
                myself,
                st,
                Some((Phase::Verifying, "ActionFinished", String::new())),
                |_| {},
            )
            .await
        }
        ("notify_only", _) => {
            let now = now();
            let exec = ExecutionStatus {
                action: analysis.action.clone(),
                target: st.spec.target.clone(),
                target_uid: String::new(),
                started_at: now.clone(),
                finished_at: Some(now),
                result: Some("Succeeded".into()),
                message: "notification only; the cluster was not changed".into(),
            };
            commit(
                myself,
                st,
                Some((Phase::Verifying, "ActionFinished", String::new())),
                |s| {
                    s.execution = Some(exec);
                },
            )
            .await
        }
        ("restart_pod", None) => {
            let Some(pod) = st.target_pod() else {
                return fail(
                    myself,
                    st,
                    "RuleIncomplete",
                    "restart_pod needs a pod parameter".into(),
                )
                .await;
            };
            let cluster = st.ctx.cluster.clone();
            run_stage(myself, st, async move {
                StageResult::PodObserved(
                    cluster
                        .pod_state(&pod.namespace, &pod.name)
                        .await
                        .map_err(|e| e.to_string()),
                )
            });
            Ok(())
        }
        ("restart_pod", Some(exec)) => {
            // Resumed or freshly recorded: act only on the pod with the recorded UID.
            let cluster = st.ctx.cluster.clone();
            run_stage(myself, st, async move {
                let t = &exec.target;
                StageResult::Executed(
                    cluster
                        .delete_pod(&t.namespace, &t.name, &exec.target_uid)
                        .await
                        .map_err(|e| e.to_string()),
                )
            });
            Ok(())
        }
        (other, _) => {
            fail(
                myself,
                st,
                "UnknownAction",
                format!("no executor for action {other}"),
            )
            .await
        }
    }
}

async fn on_stage_done(
    myself: &ActorRef<Msg>,
    st: &mut State,
    result: StageResult,
) -> Result<(), ActorProcessingErr> {
    match result {
        StageResult::Processed(Ok(Processed::InScope(p))) => {
            observe_stage(st, "processing", st.stage_started);
            let msg = format!("environment {}, priority {}", p.environment, p.priority);
            commit(myself, st, Some((Phase::Analyzing, "Enriched", msg)), |s| {
                s.processing = Some(p);
                set_condition(s, "Processed", "True", "Enriched");
            })
            .await
        }
        StageResult::Processed(Ok(Processed::OutOfScope(why))) => {
            commit(myself, st, Some((Phase::Skipped, "OutOfScope", why)), |s| {
                set_condition(s, "Processed", "False", "OutOfScope");
            })
            .await
        }
        StageResult::Processed(Err(e)) | StageResult::PodObserved(Err(e)) => {
            retry_later(myself, st, e)
        }
        StageResult::PodObserved(Ok(None)) => {
            let pod = st.target_pod().map(|p| p.to_string()).unwrap_or_default();
            fail(
                myself,
                st,
                "TargetNotFound",
                format!("{pod} does not exist"),
            )
            .await
        }
        StageResult::PodObserved(Ok(Some(pod))) => {
            let Some(target) = st.target_pod() else {
                return Ok(());
            };
            let exec = ExecutionStatus {
                action: "restart_pod".into(),
                target: target.clone(),
                target_uid: pod.uid.clone(),
                started_at: now(),
                finished_at: None,
                result: None,
                message: String::new(),
            };
            audit_event(st, "action", None, None, "ActionStarted", serde_json::json!({
                "action": "restart_pod", "target": target.to_string(),
                "before": { "uid": pod.uid, "phase": pod.phase, "node": pod.node, "deleting": pod.deleting },
            }))
            .await;
            // Recorded before acting: a resumed supervisor acts on this UID only.
            commit(myself, st, None, |s| s.execution = Some(exec)).await?;
            myself.send_message(Msg::Advance)?;
            Ok(())
        }
        StageResult::Executed(Ok(outcome)) => {
            observe_stage(st, "execution", st.stage_started);
            let result = match outcome {
                DeleteOutcome::Deleted => "Succeeded",
                DeleteOutcome::AlreadyGone => "AlreadyDone",
            };
            let action = count_action(st, result);
            audit_event(
                st,
                "action",
                None,
                None,
                "ActionFinished",
                serde_json::json!({ "action": action, "result": result }),
            )
            .await;
            commit(
                myself,
                st,
                Some((Phase::Verifying, "ActionFinished", result.to_string())),
                |s| {
                    if let Some(e) = s.execution.as_mut() {
                        e.result = Some(result.into());
                        e.finished_at = Some(now());
                    }
                    set_condition(s, "Executed", "True", result);
                },
            )
            .await
        }
        StageResult::Executed(Err(e)) => {
            count_action(st, "Failed");
            fail(myself, st, "ActionFailed", e).await
        }
        StageResult::Verified(Ok(v)) => {
            observe_stage(st, "verification", st.stage_started);
            let msg = match v {
                Verified::Replaced => "the pod was replaced by its controller",
                Verified::Gone => "the pod is gone",
            };
            commit(
                myself,
                st,
                Some((Phase::Completed, "Verified", msg.into())),
                |s| {
                    set_condition(s, "Verified", "True", "Verified");
                },
            )
            .await
        }
        StageResult::Verified(Err(e)) => fail(myself, st, "VerificationFailed", e).await,
    }
}

/// Runs slow work off the handler; its result comes back as `StageDone`.
fn run_stage(
    myself: &ActorRef<Msg>,
    st: &mut State,
    work: impl Future<Output = StageResult> + Send + 'static,
) {
    st.busy = true;
    st.stage_started = Instant::now();
    let me = myself.clone();
    tokio::spawn(async move {
        let result = work.await;
        // The supervisor may have stopped (request deleted); nothing to report then.
        let _ = me.send_message(Msg::StageDone(result));
    });
}

fn retry_later(
    myself: &ActorRef<Msg>,
    st: &mut State,
    error: String,
) -> Result<(), ActorProcessingErr> {
    tracing::warn!(request = %st.name, namespace = %st.namespace, phase = %st.phase(), %error, retry_in = ?st.retry, "stage failed; retrying");
    myself.send_after(st.retry, || Msg::Advance);
    st.retry = (st.retry * 2).min(RETRY_CAP);
    Ok(())
}

async fn fail(
    myself: &ActorRef<Msg>,
    st: &mut State,
    reason: &'static str,
    message: String,
) -> Result<(), ActorProcessingErr> {
    tracing::warn!(request = %st.name, namespace = %st.namespace, reason, %message, "request failed");
    commit(myself, st, Some((Phase::Failed, reason, message)), |_| {}).await
}

/// Writes the edited status (and the phase change, if any) to the cluster,
/// then takes it as state. A failed write leaves the state as it was and
/// retries the phase's work later, which every stage tolerates.
async fn commit(
    myself: &ActorRef<Msg>,
    st: &mut State,
    to: Option<(Phase, &'static str, String)>,
    edit: impl FnOnce(&mut RemediationRequestStatus),
) -> Result<(), ActorProcessingErr> {
    let from = st.phase();
    let mut next = st.status.clone();
    edit(&mut next);
    if let Some((to, reason, message)) = &to {
        // A refused transition is a bug in this actor: fail it loudly.
        let to = from.transition(*to)?;
        next.phase = to;
        next.message = Some(if message.is_empty() {
            reason.to_string()
        } else {
            message.clone()
        });
        next.phase_history.push(PhaseTransition {
            phase: to,
            time: now(),
            reason: reason.to_string(),
            message: message.clone(),
        });
        if to.is_terminal() {
            next.completion_time = Some(now());
        }
    }
    if let Err(e) = st
        .ctx
        .cluster
        .apply_status(&st.namespace, &st.name, &next)
        .await
    {
        st.ctx.metrics.status_write_errors.inc();
        return retry_later(myself, st, format!("status write failed: {e}"));
    }
    st.status = next;
    st.retry = RETRY_BASE;
    if let Some((to, reason, message)) = to {
        st.ctx
            .metrics
            .transitions
            .get_or_create(&TransitionLabels {
                from: from.as_str(),
                to: to.as_str(),
            })
            .inc();
        tracing::info!(request = %st.name, namespace = %st.namespace, %from, %to, reason, %message, "phase transition");
        audit_request(st, to).await;
        audit_event(
            st,
            "transition",
            Some(from),
            Some(to),
            reason,
            serde_json::json!({ "message": message }),
        )
        .await;
        myself.send_message(Msg::Advance)?;
    }
    Ok(())
}

async fn audit_request(st: &State, phase: Phase) {
    let rec = AuditRecord::Request(RequestRecord {
        uid: st.uid.clone(),
        namespace: st.namespace.clone(),
        name: st.name.clone(),
        fingerprint: st.spec.fingerprint.clone(),
        signal_name: st.spec.signal_name.clone(),
        severity: st.spec.severity.clone(),
        source: st.spec.source.as_str().into(),
        target_kind: st.spec.target.kind.clone(),
        target_namespace: st.spec.target.namespace.clone(),
        target_name: st.spec.target.name.clone(),
        phase: phase.to_string(),
        firing_time: to_chrono(st.spec.firing_time.0),
    });
    if let Err(e) = st.ctx.audit.record(rec).await {
        tracing::error!(error = %e, "audit log closed; record lost");
    }
}

async fn audit_event(
    st: &State,
    kind: &'static str,
    from: Option<Phase>,
    to: Option<Phase>,
    reason: &str,
    detail: serde_json::Value,
) {
    let rec = AuditRecord::Event(EventRecord {
        request_uid: st.uid.clone(),
        at: to_chrono(Timestamp::now()),
        kind,
        from_phase: from.map(|p| p.to_string()),
        to_phase: to.map(|p| p.to_string()),
        reason: reason.to_string(),
        detail,
    });
    if let Err(e) = st.ctx.audit.record(rec).await {
        tracing::error!(error = %e, "audit log closed; record lost");
    }
}

fn observe_stage(st: &State, stage: &'static str, started: Instant) {
    st.ctx
        .metrics
        .stage_seconds
        .get_or_create(&StageLabels { stage })
        .observe(started.elapsed().as_secs_f64());
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn to_chrono(ts: Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(ts.as_second(), ts.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// Keeps the one condition of a type, moving `lastTransitionTime` only when
/// its status changes.
fn set_condition(s: &mut RemediationRequestStatus, type_: &str, status: &str, reason: &str) {
    let now = now();
    // Never empty: see the note on empty strings in the api crate.
    let message = format!("{type_}: {reason}");
    match s.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message;
        }
        None => s.conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: now,
            observed_generation: None,
        }),
    }
}

/// Processing (K-RR-3, first slice): scope re-checked (defence in depth),
/// environment from the namespace label, priority from environment × severity.
async fn process(cluster: &Cluster, spec: &RemediationRequestSpec) -> Result<Processed, String> {
    let resolved = cluster
        .resolve(&spec.target)
        .await
        .map_err(|e| e.to_string())?;
    let Some(resolved) = resolved else {
        return Ok(Processed::OutOfScope(format!(
            "{} no longer exists",
            spec.target
        )));
    };
    let scope = match cluster.scope(&resolved).await.map_err(|e| e.to_string())? {
        Scope::Managed(why) => why,
        Scope::Protected => {
            return Ok(Processed::OutOfScope(format!(
                "namespace {} is protected",
                spec.target.namespace
            )));
        }
        Scope::Unmanaged => {
            return Ok(Processed::OutOfScope(format!(
                "{} is not opted in",
                spec.target
            )));
        }
    };
    let ns_labels = if spec.target.namespace.is_empty() {
        None
    } else {
        cluster
            .namespace_labels(&spec.target.namespace)
            .await
            .map_err(|e| e.to_string())?
    };
    let environment = ns_labels
        .and_then(|l| l.get(ENVIRONMENT_LABEL).cloned())
        .unwrap_or_else(|| "unknown".into());
    let priority = priority(&environment, &spec.severity).into();
    Ok(Processed::InScope(ProcessingStatus {
        environment,
        priority,
        scope,
    }))
}

/// P0 is the most urgent. Unknown environments are treated like staging.
pub fn priority(environment: &str, severity: &str) -> &'static str {
    let env = match environment {
        "production" | "prod" => 0,
        "development" | "dev" => 2,
        _ => 1,
    };
    let sev = match severity {
        "critical" => 0,
        "warning" | "high" => 1,
        _ => 2,
    };
    match env + sev {
        0 => "P0",
        1 => "P1",
        2 => "P2",
        _ => "P3",
    }
}

async fn verify_pod_replaced(
    cluster: &Cluster,
    exec: &ExecutionStatus,
    timeout: Duration,
) -> Result<Verified, String> {
    let t = &exec.target;
    let deadline = Instant::now() + timeout;
    loop {
        match cluster.pod_state(&t.namespace, &t.name).await {
            Ok(Some(p)) if p.uid != exec.target_uid => return Ok(Verified::Replaced),
            Ok(None) => return Ok(Verified::Gone),
            Ok(Some(_)) | Err(_) if Instant::now() >= deadline => {
                return Err(format!(
                    "{t} (uid {}) still exists after {timeout:?}",
                    exec.target_uid
                ));
            }
            _ => tokio::time::sleep(VERIFY_POLL).await,
        }
    }
}

/// Counts the decided action's result; returns the action's name.
fn count_action(st: &State, result: &'static str) -> String {
    let action = st
        .status
        .analysis
        .as_ref()
        .map(|a| a.action.clone())
        .unwrap_or_default();
    st.ctx
        .metrics
        .actions
        .get_or_create(&ActionLabels {
            action: action.clone(),
            result,
        })
        .inc();
    action
}

#[cfg(test)]
mod tests {
    use super::priority;

    #[test]
    fn priority_combines_environment_and_severity() {
        assert_eq!(priority("production", "critical"), "P0");
        assert_eq!(priority("production", "warning"), "P1");
        assert_eq!(priority("staging", "critical"), "P1");
        assert_eq!(priority("unknown", "warning"), "P2");
        assert_eq!(priority("development", "info"), "P3");
    }
}

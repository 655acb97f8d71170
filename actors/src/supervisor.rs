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
use std::collections::BTreeMap;

use futures::FutureExt;
use kubernaut_api::workflow::Workflow;
use kubernaut_api::{
    APPROVAL_ANNOTATION, APPROVED_BY_ANNOTATION, AnalysisStatus, ApprovalStatus, ENVIRONMENT_LABEL,
    ExecutionStatus, ObjectRef, Phase, PhaseTransition, ProcessingStatus, RemediationRequest,
    RemediationRequestSpec, RemediationRequestStatus, StepPhase, StepStatus,
};
use kubernaut_cluster::{ActionCall, Cluster, ExecSettings, Scope};
use kubernaut_store::AuditRecord;

use crate::backfill::{event_record, request_record};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::Context;
use crate::analysis::{self, Analyzed, Path};
use crate::holds::{Asking, HoldReason};
use crate::mailbox::{Addr, Envelope, Inbox, Live};
use crate::metrics::{
    ActionLabels, ActorKind, PhaseLabels, ReasonLabels, StageLabels, TransitionLabels,
};
use crate::policy;
use crate::rules::{self, RuleError};
use crate::worker;
use crate::workflow::{self, Out, StepEvent, WorkflowActor, WorkflowReport};

/// First retry delay after a failed status write; doubles up to the cap.
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(30);
const VERIFY_POLL: Duration = Duration::from_millis(250);

pub struct Supervisor;

pub struct Args {
    pub namespace: String,
    pub name: String,
    pub ctx: Arc<Context>,
    pub inbox: Inbox,
}

/// The stage actor working for the current phase.
struct Stage {
    kind: ActorKind,
    cell: ActorCell,
    epoch: u64,
}

pub struct State {
    namespace: String,
    name: String,
    uid: String,
    created: Timestamp,
    spec: RemediationRequestSpec,
    status: RemediationRequestStatus,
    ctx: Arc<Context>,
    me: Addr<Msg>,
    inbox: Inbox,
    /// A stage actor is at work; `Advance` waits for its result.
    stage: Option<Stage>,
    /// Identifies the newest stage actor: a result of an older one (killed,
    /// or failed and restarted) is ignored.
    epoch: u64,
    /// Restarts of the current phase's stage actor.
    stage_restarts: u32,
    stage_started: Instant,
    retry: Duration,
    /// The request's resourceVersion as this supervisor last wrote or read it.
    rv: String,
    /// Step edits not yet written, what waits for them, and whether a
    /// flush is queued (see `stage_edit`).
    desired: Option<RemediationRequestStatus>,
    acks: Vec<tokio::sync::oneshot::Sender<()>>,
    pending_audit: Vec<(&'static str, String, serde_json::Value)>,
    flush_queued: bool,
    /// Handing over: writes record no owner, and no new stage starts.
    releasing: bool,
    /// What this run's workflow steps did, by step id, for Verifying. Kept
    /// in memory only: full object states go to the audit trail, not into
    /// the status.
    outcomes: BTreeMap<String, kubernaut_cluster::Outcome>,
    /// How often this supervisor found its target busy (its backoff).
    times_held: u32,
    /// The approval decision on the request, if any.
    approval: Option<Approval>,
    /// This supervisor in the supervisors-by-phase gauge, and among the live
    /// actors, until its state is dropped (however it ends).
    counted: PhaseCount,
    _live: Option<Live>,
}

pub enum Msg {
    /// Read the request and become ready (the first message).
    Load,
    /// Do the next piece of work for the current phase.
    Advance,
    StageDone(u64, StageResult),
    /// A workflow step starts or settles; its supervisor records it.
    Step(u64, StepEvent),
    /// Start the current phase's stage actor again after it failed.
    Restart(u64),
    /// A deadline may have passed (K-RR-4).
    Deadline,
    /// Write the pending step edits.
    Flush,
    /// Hand the request over (K-RR-7): let a running workflow finish, then
    /// record no owner and stop.
    Release,
    /// A routing hold may have ended (K-RR-8): its time passed, or its
    /// target freed.
    Recheck,
    /// The request carries an approval decision (from the watch).
    Approval(Approval),
}

/// A human's decision on a request waiting for approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    pub approved: bool,
    pub by: String,
}

impl Approval {
    /// The decision recorded on the request (`kubernaut.io/approval`), and
    /// who made it: the `kubernaut.io/approved-by` annotation, else the
    /// field manager that wrote the approval. Any other value is no
    /// decision.
    pub fn of(rr: &RemediationRequest) -> Option<Approval> {
        let annotations = rr.metadata.annotations.as_ref()?;
        let approved = match annotations.get(APPROVAL_ANNOTATION)?.trim() {
            v if v.eq_ignore_ascii_case("approved") => true,
            v if v.eq_ignore_ascii_case("rejected") => false,
            _ => return None,
        };
        let field = format!("f:{APPROVAL_ANNOTATION}");
        let by = annotations
            .get(APPROVED_BY_ANNOTATION)
            .cloned()
            .or_else(|| {
                rr.metadata.managed_fields.iter().flatten().find_map(|m| {
                    let fields = &m.fields_v1.as_ref()?.0;
                    let owns = fields["f:metadata"]["f:annotations"].get(&field).is_some();
                    owns.then(|| m.manager.clone()).flatten()
                })
            })
            .unwrap_or_else(|| "unknown".into());
        Some(Approval { approved, by })
    }
}

pub enum StageResult {
    Processed(Result<Processed, String>),
    Analyzed(Box<Analyzed>),
    Executed(Result<WorkflowReport, String>),
    Verified(Result<String, String>),
}

pub enum Processed {
    InScope(ProcessingStatus),
    OutOfScope(String),
}

impl State {
    fn phase(&self) -> Phase {
        self.status.phase
    }

    /// How this request's actions run: as its own lock holder.
    fn exec_settings(&self) -> ExecSettings {
        ExecSettings {
            holder: self.name.clone(),
            ..self.ctx.settings.executor.clone()
        }
    }
}

/// A supervisor loads its request in its first message, not in
/// `pre_start`: spawning is awaited by the registry, which must not wait on
/// the API server for every request it starts. What arrives before the
/// request is loaded waits, and follows it.
pub enum Slot {
    Loading(Box<Loading>),
    Ready(Box<State>),
}

pub struct Loading {
    args: Args,
    me: Addr<Msg>,
    early: Vec<Msg>,
    live: Option<Live>,
}

/// Reads the request (always from the cluster, never from a cached copy)
/// and builds the supervisor's state; `None` when it no longer exists.
async fn load(args: Args, me: Addr<Msg>) -> Result<Option<State>, ActorProcessingErr> {
    let Some(rr) = args
        .ctx
        .cluster
        .get_request(&args.namespace, &args.name)
        .await?
    else {
        return Ok(None);
    };
    me.tell(Msg::Advance);
    let status = rr.status.clone().unwrap_or_default();
    let counted = PhaseCount::new(&args.ctx, status.phase);
    arm(&me, &status);
    if let Some(until) = status
        .blocked_until
        .as_ref()
        .filter(|_| status.phase == Phase::Blocked)
    {
        me.tell_after(wait_until(until.0), Msg::Recheck);
    }
    Ok(Some(State {
        namespace: args.namespace,
        name: args.name,
        uid: rr.metadata.uid.clone().unwrap_or_default(),
        created: rr
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        spec: rr.spec.clone(),
        status,
        ctx: args.ctx,
        me,
        inbox: args.inbox,
        stage: None,
        epoch: 0,
        stage_restarts: 0,
        stage_started: Instant::now(),
        retry: RETRY_BASE,
        rv: rr.metadata.resource_version.clone().unwrap_or_default(),
        desired: None,
        acks: Vec::new(),
        pending_audit: Vec::new(),
        flush_queued: false,
        releasing: false,
        outcomes: BTreeMap::new(),
        times_held: 0,
        approval: Approval::of(&rr),
        counted,
        _live: None,
    }))
}

impl Actor for Supervisor {
    type Msg = Envelope<Msg>;
    type State = Slot;
    type Arguments = Args;

    async fn pre_start(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        args: Args,
    ) -> Result<Slot, ActorProcessingErr> {
        let live = Some(args.inbox.started());
        let me = args.inbox.addr(myself);
        me.tell(Msg::Load);
        Ok(Slot::Loading(Box::new(Loading {
            args,
            me,
            early: Vec::new(),
            live,
        })))
    }

    async fn handle(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        env: Envelope<Msg>,
        slot: &mut Slot,
    ) -> Result<(), ActorProcessingErr> {
        let st = match slot {
            Slot::Ready(st) => st,
            Slot::Loading(loading) => {
                let Loading {
                    args,
                    me,
                    early,
                    live,
                } = loading.as_mut();
                let (msg, _handling) = args.inbox.open(env);
                if !matches!(msg, Msg::Load) {
                    early.push(msg);
                    return Ok(());
                }
                let args = Args {
                    namespace: args.namespace.clone(),
                    name: args.name.clone(),
                    ctx: args.ctx.clone(),
                    inbox: args.inbox.clone(),
                };
                let Some(mut state) = load(args, me.clone()).await? else {
                    myself.stop(Some("the request no longer exists".into()));
                    return Ok(());
                };
                state._live = live.take();
                for m in std::mem::take(early) {
                    me.tell(m);
                }
                *slot = Slot::Ready(Box::new(state));
                return Ok(());
            }
        };
        on_message(&myself, env, st).await
    }

    /// A stage actor failed or panicked: restart it under the policy, or
    /// fail the request with the reason once the budget is spent.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        evt: SupervisionEvent,
        slot: &mut Slot,
    ) -> Result<(), ActorProcessingErr> {
        match slot {
            Slot::Ready(st) => on_child_failed(&myself, evt, st).await,
            Slot::Loading(_) => Ok(()),
        }
    }
}

async fn on_message(
    myself: &ActorRef<Envelope<Msg>>,
    env: Envelope<Msg>,
    st: &mut State,
) -> Result<(), ActorProcessingErr> {
    let (msg, _handling) = st.inbox.open(env);
    // Past a deadline nothing else happens: no stage starts, no step
    // is acknowledged, no late result counts.
    if expired(st).is_some() {
        return on_deadline(myself, st).await;
    }
    match msg {
        Msg::Advance if st.stage.is_some() => Ok(()),
        Msg::Advance => advance(myself, st).await,
        Msg::Recheck if st.phase() == Phase::Blocked && st.stage.is_none() => {
            advance(myself, st).await
        }
        Msg::Recheck => Ok(()),
        Msg::Approval(a) => {
            let new = st.approval.as_ref() != Some(&a);
            st.approval = Some(a);
            if new && st.phase() == Phase::AwaitingApproval && st.stage.is_none() {
                advance(myself, st).await
            } else {
                Ok(())
            }
        }
        Msg::StageDone(epoch, _) if epoch != st.epoch => Ok(()),
        Msg::Deadline => Ok(()),
        Msg::Flush => flush(st).await,
        Msg::Release => {
            st.releasing = true;
            match &st.stage {
                // In-flight steps finish; the result's write releases.
                Some(s) if s.kind == ActorKind::workflow => Ok(()),
                Some(s) => {
                    s.cell.kill();
                    st.stage = None;
                    st.epoch += 1;
                    release(myself, st).await
                }
                None => release(myself, st).await,
            }
        }
        Msg::StageDone(_, result) => {
            st.stage = None;
            st.stage_restarts = 0;
            on_stage_done(myself, st, result).await
        }
        // A stale workflow's step never acts: its dropped ack stops it.
        Msg::Step(epoch, _) if epoch != st.epoch => Ok(()),
        Msg::Step(_, event) => on_step(st, event).await,
        Msg::Restart(epoch) if epoch != st.epoch || st.stage.is_some() => Ok(()),
        Msg::Restart(_) => advance(myself, st).await,
        Msg::Load => Ok(()),
    }
}

async fn on_child_failed(
    myself: &ActorRef<Envelope<Msg>>,
    evt: SupervisionEvent,
    st: &mut State,
) -> Result<(), ActorProcessingErr> {
    let SupervisionEvent::ActorFailed(cell, error) = evt else {
        return Ok(());
    };
    let Some(stage) = st.stage.take_if(|s| s.cell.get_id() == cell.get_id()) else {
        return Ok(());
    };
    st.stage_restarts += 1;
    let n = st.stage_restarts;
    let reason = policy::reason(&error);
    match st
        .ctx
        .settings
        .restart
        .restart(n, stage.kind, &st.ctx.metrics)
    {
        Some(delay) => {
            tracing::warn!(request = %st.name, namespace = %st.namespace, stage = ?stage.kind, error = %reason, restart = n, ?delay, "stage actor failed; restarting it");
            st.me.tell_after(delay, Msg::Restart(stage.epoch));
            Ok(())
        }
        None => {
            st.stage_restarts = 0;
            let message = format!(
                "the {:?} actor failed {n} times; last: {reason}",
                stage.kind
            );
            fail(myself, st, "StageFailed", message).await
        }
    }
}

/// Sets a timer for the earliest deadline in `status`; when it fires the
/// deadlines are checked again, so an early or extra timer is harmless.
fn arm(me: &Addr<Msg>, status: &RemediationRequestStatus) {
    if status.phase.is_terminal() {
        return;
    }
    let Some(at) = [&status.deadline, &status.phase_deadline]
        .into_iter()
        .flatten()
        .map(|t| t.0)
        .min()
    else {
        return;
    };
    me.tell_after(wait_until(at), Msg::Deadline);
}

/// The deadline that has passed, if any: its reason and what to record.
fn expired(st: &State) -> Option<(&'static str, String)> {
    let now = Timestamp::now();
    let passed = |t: &Option<Time>| t.as_ref().is_some_and(|t| t.0 <= now);
    let (phase, limits) = (st.phase(), &st.ctx.settings.timeouts);
    if phase.is_terminal() {
        None
    } else if passed(&st.status.phase_deadline) {
        let limit = limits.for_phase(phase).unwrap_or_default();
        Some((
            timeout_reason(phase),
            format!("{phase} did not finish within {limit:?}; escalated"),
        ))
    } else if passed(&st.status.deadline) {
        Some((
            "RequestTimeout",
            format!(
                "the remediation did not finish within {:?} (it was {phase}); escalated",
                limits.request
            ),
        ))
    } else {
        None
    }
}

fn timeout_reason(phase: Phase) -> &'static str {
    match phase {
        Phase::Processing => "ProcessingTimeout",
        Phase::Analyzing => "AnalyzingTimeout",
        Phase::AwaitingApproval => "ApprovalTimeout",
        Phase::Executing => "ExecutingTimeout",
        Phase::Verifying => "VerifyingTimeout",
        _ => "RequestTimeout",
    }
}

/// A deadline passed: the stage actor (and its children) is stopped, a
/// running step is recorded as interrupted, the request becomes TimedOut,
/// and the escalation is recorded (its delivery is the notifier's).
async fn on_deadline(
    myself: &ActorRef<Envelope<Msg>>,
    st: &mut State,
) -> Result<(), ActorProcessingErr> {
    let phase = st.phase();
    let Some((reason, message)) = expired(st) else {
        return Ok(());
    };
    if let Some(stage) = st.stage.take() {
        stage.cell.kill();
    }
    // Whatever the stopped actors still send is stale now.
    st.epoch += 1;
    escalate(
        st,
        reason,
        serde_json::json!({ "phase": phase.as_str(), "message": message }),
    )
    .await;
    let interrupted = format!("interrupted: {message}");
    // An approval that never came fails the request (K-AI-4): nothing ran,
    // and the humans who were asked did not answer.
    let (to, reason, message) = if reason == "ApprovalTimeout" {
        let message = format!(
            "no approval within {:?}; nothing was changed",
            st.ctx.settings.timeouts.approval
        );
        (Phase::Failed, "ApprovalExpired", message)
    } else {
        (Phase::TimedOut, reason, message)
    };
    commit(myself, st, Some((to, reason, message)), |s| {
        if let Some(e) = s.execution.as_mut() {
            for step in e.steps.iter_mut().filter(|s| s.phase == StepPhase::Running) {
                step.phase = StepPhase::Failed;
                step.finished_at = Some(now());
                step.message = interrupted.clone();
            }
        }
        set_condition(s, "Escalated", "True", reason);
    })
    .await
}

/// Records an escalation (its delivery is the notifier's): counted, and a
/// row in the audit trail.
async fn escalate(st: &State, reason: &'static str, detail: serde_json::Value) {
    st.ctx
        .metrics
        .escalations
        .get_or_create(&StageLabels { stage: reason })
        .inc();
    audit_event(st, "escalation", None, None, reason, "", detail).await;
}

/// One supervisor's place in the supervisors-by-phase gauge; it leaves
/// the gauge when dropped with the supervisor's state, however the
/// supervisor ends (ractor skips `post_stop` when an actor panics or is
/// killed).
struct PhaseCount {
    metrics: crate::Metrics,
    phase: Phase,
}

impl PhaseCount {
    fn new(ctx: &Context, phase: Phase) -> Self {
        let count = Self {
            metrics: ctx.metrics.clone(),
            phase,
        };
        count.gauge().inc();
        count
    }

    fn gauge(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .supervisors_by_phase
            .get_or_create(&PhaseLabels {
                phase: self.phase.as_str(),
            })
            .clone()
    }

    fn set(&mut self, to: Phase) {
        self.gauge().dec();
        self.phase = to;
        self.gauge().inc();
    }
}

impl Drop for PhaseCount {
    fn drop(&mut self) {
        self.gauge().dec();
    }
}

async fn advance(
    myself: &ActorRef<Envelope<Msg>>,
    st: &mut State,
) -> Result<(), ActorProcessingErr> {
    match st.phase() {
        p if p.is_terminal() => {
            myself.stop(Some(format!("request reached {p}")));
            Ok(())
        }
        _ if st.releasing => release(myself, st).await,
        // First this replica claims the request (K-RR-7): from now on a
        // write by anyone else's supervisor conflicts.
        _ if st.status.owner.as_deref() != Some(st.ctx.identity.as_str()) => {
            commit(myself, st, None, |_| {}).await?;
            if st.status.owner.as_deref() == Some(st.ctx.identity.as_str()) {
                st.me.tell(Msg::Advance);
            }
            Ok(())
        }
        Phase::Pending | Phase::Blocked => start(myself, st).await,
        Phase::Processing => {
            let (cluster, spec) = (st.ctx.cluster.clone(), st.spec.clone());
            spawn_stage(myself, st, ActorKind::processing, move || {
                let (cluster, spec) = (cluster.clone(), spec.clone());
                async move { StageResult::Processed(process(&cluster, &spec).await) }.boxed()
            })
            .await
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
            let (cluster, timeout) = (st.ctx.cluster.clone(), st.ctx.settings.verify_timeout);
            let workflow = st
                .status
                .analysis
                .as_ref()
                .map(|a| a.workflow.clone())
                .unwrap_or_default();
            let outcomes = st.outcomes.clone();
            spawn_stage(myself, st, ActorKind::verification, move || {
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
                .boxed()
            })
            .await
        }
        Phase::AwaitingApproval => decided(myself, st).await,
        Phase::Completed | Phase::Failed | Phase::TimedOut | Phase::Skipped | Phase::Cancelled => {
            Ok(())
        }
    }
}

/// Starts the request, unless a routing hold (K-RR-8) keeps it Blocked.
async fn start(myself: &ActorRef<Envelope<Msg>>, st: &mut State) -> Result<(), ActorProcessingErr> {
    let pending = st.phase() == Phase::Pending;
    if pending {
        audit_request(st, Phase::Pending).await;
    }
    let now = Timestamp::now();
    // A storm waits for a human anyway; it holds no single target.
    let hold = st.spec.storm.is_none().then(|| {
        let me = Asking {
            name: &format!("{}/{}", st.namespace, st.name),
            created: st.created,
            target: &st.spec.target,
            times_held: st.times_held,
        };
        st.ctx.holds.before_start(&st.ctx.settings.holds, &me, now)
    });
    let Some(hold) = hold.flatten() else {
        let reason = if pending { "Started" } else { "HoldReleased" };
        return commit(
            myself,
            st,
            Some((Phase::Processing, reason, String::new())),
            |s| {
                if !pending {
                    s.blocked_until = None;
                    set_condition(s, "Held", "False", reason);
                }
            },
        )
        .await;
    };
    // Still held, and the recorded time to look again has not come: the
    // timer armed with it will.
    if !pending && st.status.blocked_until.as_ref().is_some_and(|t| t.0 > now) {
        return Ok(());
    }
    if hold.reason == HoldReason::TargetBusy {
        st.times_held += 1;
    }
    if pending && hold.reason == HoldReason::ConsecutiveFailures {
        let detail =
            serde_json::json!({ "message": hold.message, "blockedUntil": hold.until.to_string() });
        escalate(st, hold.reason.as_str(), detail).await;
    }
    tracing::info!(request = %st.name, namespace = %st.namespace, reason = hold.reason.as_str(), until = %hold.until, message = %hold.message, "routing hold");
    let until = Time(hold.until);
    let to = pending.then(|| (Phase::Blocked, hold.reason.as_str(), hold.message.clone()));
    let (reason, message) = (hold.reason.as_str(), hold.message);
    commit(myself, st, to, |s| {
        s.blocked_until = Some(until.clone());
        s.message = Some(message);
        set_condition(s, "Held", "True", reason);
    })
    .await?;
    if st.status.blocked_until.as_ref() == Some(&until) {
        st.me.tell_after(wait_until(until.0), Msg::Recheck);
    }
    Ok(())
}

fn wait_until(at: Timestamp) -> Duration {
    at.duration_since(Timestamp::now())
        .try_into()
        .unwrap_or(Duration::ZERO)
}

async fn analyze(
    myself: &ActorRef<Envelope<Msg>>,
    st: &mut State,
) -> Result<(), ActorProcessingErr> {
    // A storm (K-GW-6) is escalated, never remediated target by target:
    // the approval policy decides whether its fan-out waits for a human
    // (the default policy always says so).
    if let Some(storm) = st.spec.storm.clone() {
        let workflow = st
            .ctx
            .rules
            .iter()
            .find(|r| r.signal == storm.alert_name)
            .map(|r| r.workflow())
            .unwrap_or_default();
        let verdict = gate(st, "rules", 1.0, &workflow);
        if !verdict.required {
            st.approval = Some(Approval {
                approved: true,
                by: "the approval policy".into(),
            });
            return decided(myself, st).await;
        }
        let msg = format!(
            "{:?} storm of {} in namespace {}: escalated, approval required ({})",
            storm.kind,
            storm.alert_name,
            storm.namespace,
            verdict.reasons.join("; ")
        );
        let detail = serde_json::json!({ "message": msg, "alertName": storm.alert_name });
        escalate(st, "StormEscalated", detail).await;
        let approval = awaiting(st, verdict.reasons);
        return commit(
            myself,
            st,
            Some((Phase::AwaitingApproval, "StormEscalated", msg)),
            |s| {
                s.approval = Some(approval);
                set_condition(s, "Analyzed", "True", "Storm");
            },
        )
        .await;
    }
    let (ctx, spec) = (st.ctx.clone(), st.spec.clone());
    let (processing, holder) = (st.status.processing.clone(), st.name.clone());
    spawn_stage(myself, st, ActorKind::analysis, move || {
        let (ctx, spec, processing, holder) = (
            ctx.clone(),
            spec.clone(),
            processing.clone(),
            holder.clone(),
        );
        async move {
            let analyzed = analysis::analyze(&ctx, &spec, processing.as_ref(), &holder).await;
            StageResult::Analyzed(Box::new(analyzed))
        }
        .boxed()
    })
    .await
}

/// The approval policy's verdict (K-AI-4) on running `workflow` for this
/// request, decided by `decided_by` with `confidence`.
fn gate(
    st: &State,
    decided_by: &str,
    confidence: f64,
    workflow: &Workflow,
) -> crate::approval::Verdict {
    let catalogue = kubernaut_cluster::catalogue();
    let actions: Vec<serde_json::Value> = workflow
        .steps
        .iter()
        .map(|step| {
            let risk = catalogue
                .iter()
                .find(|a| a.name == step.action)
                .map(|a| serde_json::json!(a.risk))
                .unwrap_or_else(|| serde_json::json!("high"));
            serde_json::json!({ "name": step.action, "risk": risk })
        })
        .collect();
    let processing = st.status.processing.clone().unwrap_or_default();
    let t = &st.spec.target;
    let input = serde_json::json!({
        "environment": if processing.environment.is_empty() { "unknown" } else { processing.environment.as_str() },
        "priority": processing.priority,
        "decidedBy": decided_by,
        "confidence": confidence,
        "target": { "kind": t.kind, "namespace": t.namespace, "name": t.name },
        "actions": actions,
        "storm": st.spec.storm.is_some(),
        "signal": { "name": st.spec.signal_name, "severity": st.spec.severity, "source": st.spec.source },
    });
    let verdict = st.ctx.approval.evaluate(&input);
    let label = match (&verdict.error, verdict.required) {
        (Some(e), _) => {
            tracing::warn!(request = %st.name, namespace = %st.namespace, error = %e, "approval policy error: approval required");
            "policy_error"
        }
        (None, true) => "required",
        (None, false) => "not_required",
    };
    st.ctx
        .metrics
        .approvals
        .get_or_create(&ReasonLabels { reason: label })
        .inc();
    verdict
}

/// The approval status of a request that starts waiting now.
fn awaiting(st: &State, reasons: Vec<String>) -> ApprovalStatus {
    ApprovalStatus {
        required: true,
        reasons,
        expires_at: Some(after(Timestamp::now(), st.ctx.settings.timeouts.approval)),
        ..Default::default()
    }
}

/// A decision on a request waiting for approval: rejected, it is
/// cancelled; approved, it executes what the analysis chose or, for a
/// storm, its rule over every affected target under the storm policy.
async fn decided(
    myself: &ActorRef<Envelope<Msg>>,
    st: &mut State,
) -> Result<(), ActorProcessingErr> {
    let Some(approval) = st.approval.clone() else {
        return Ok(());
    };
    let by = approval.by.clone();
    let record = |s: &mut RemediationRequestStatus| {
        let a = s.approval.get_or_insert_with(Default::default);
        a.decision = Some(
            if approval.approved {
                "approved"
            } else {
                "rejected"
            }
            .into(),
        );
        a.decided_by = Some(approval.by.clone());
        a.decided_at = Some(now());
    };
    if !approval.approved {
        let msg = format!("rejected by {by}");
        return commit(myself, st, Some((Phase::Cancelled, "Rejected", msg)), |s| {
            record(s);
            set_condition(s, "Approved", "False", "Rejected");
        })
        .await;
    }
    if st.spec.storm.is_none() {
        if st.status.analysis.is_none() {
            return fail(
                myself,
                st,
                "NoDecision",
                "approved without an analysis".into(),
            )
            .await;
        }
        let msg = format!("approved by {by}");
        return commit(myself, st, Some((Phase::Executing, "Approved", msg)), |s| {
            record(s);
            set_condition(s, "Approved", "True", "Approved");
        })
        .await;
    }
    // The gateway keeps counting a storm's targets: take the latest list.
    let fresh = match st.ctx.cluster.get_request(&st.namespace, &st.name).await {
        Ok(Some(rr)) => rr,
        Ok(None) => return Ok(()),
        Err(e) => return retry_later(st, format!("reading the storm's targets: {e}")),
    };
    let targets: Vec<ObjectRef> = fresh
        .status
        .and_then(|s| s.storm)
        .map(|s| s.affected_targets.into_iter().map(|a| a.target).collect())
        .unwrap_or_default();
    let policy = st.ctx.settings.storm;
    match rules::storm_plan(&st.ctx.rules, &st.spec, &targets, policy) {
        Ok(d) => {
            let msg = format!(
                "approved by {by}: rule {} over {} targets, at most {} steps at once, stopping past {:.0}% failures",
                d.rule,
                targets.len(),
                policy.max_parallel,
                policy.max_failure_ratio * 100.0
            );
            let analysis = AnalysisStatus {
                decided_by: "rules".into(),
                rule: d.rule.clone(),
                action: d.summary(),
                workflow: d.workflow,
                ..Default::default()
            };
            commit(myself, st, Some((Phase::Executing, "Approved", msg)), |s| {
                record(s);
                s.analysis = Some(analysis);
                set_condition(s, "Approved", "True", "Approved");
            })
            .await
        }
        Err(e) => {
            let msg = format!("approved by {by}, but nothing can run: {e}");
            commit(myself, st, Some((Phase::Failed, "NoStormPlan", msg)), |s| {
                record(s);
                set_condition(s, "Approved", "True", "Approved");
            })
            .await
        }
    }
}

async fn on_analyzed(
    myself: &ActorRef<Envelope<Msg>>,
    st: &mut State,
    analyzed: Analyzed,
) -> Result<(), ActorProcessingErr> {
    observe_stage(st, "analysis", st.stage_started);
    let Analyzed {
        path,
        reason,
        decision,
        verdict,
        attempts,
        elapsed,
        ..
    } = analyzed;
    match decision {
        Ok(d) => {
            let confidence = verdict.as_ref().map(|v| v.confidence);
            let analysis = AnalysisStatus {
                decided_by: path.as_str().into(),
                reason: reason.clone(),
                rule: d.rule.clone(),
                action: d.summary(),
                workflow: d.workflow.clone(),
                root_cause: verdict
                    .as_ref()
                    .map(|v| v.root_cause.clone())
                    .unwrap_or_default(),
                confidence,
                rationale: verdict
                    .as_ref()
                    .map(|v| v.rationale.clone())
                    .unwrap_or_default(),
                attempts,
                elapsed_millis: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            };
            let decided = match path {
                Path::Llm => "LlmDecided",
                Path::Rules => "RuleMatched",
            };
            let recent = st.ctx.holds.recently_remediated(
                &st.ctx.settings.holds,
                &format!("{}/{}", st.namespace, st.name),
                &st.spec.target,
                &d.summary(),
                Timestamp::now(),
            );
            if let Some((by, ago)) = recent {
                let t = &st.spec.target;
                let msg = format!(
                    "{} on {}/{} completed {}s ago (request {by}); skipped as recently remediated",
                    d.summary(),
                    t.kind,
                    t.name,
                    ago.as_secs()
                );
                return commit(
                    myself,
                    st,
                    Some((Phase::Skipped, "RecentlyRemediated", msg)),
                    |s| {
                        s.analysis = Some(analysis);
                        set_condition(s, "Analyzed", "True", "RecentlyRemediated");
                    },
                )
                .await;
            }
            let mut msg = match (path, confidence) {
                (Path::Llm, Some(c)) => {
                    format!("the LLM chose {} (confidence {c:.1})", d.summary())
                }
                _ => format!("rule {} chose {} ({reason})", d.rule, d.summary()),
            };
            if st.ctx.settings.executor.dry_run_only {
                msg.push_str(" (global dry-run: server-side dry runs only)");
            }
            let policy = gate(st, path.as_str(), confidence.unwrap_or(1.0), &d.workflow);
            if policy.required {
                let approval = awaiting(st, policy.reasons);
                let msg = format!("{msg}; approval required: {}", approval.reasons.join("; "));
                let detail = serde_json::json!({ "reasons": approval.reasons, "expiresAt": approval.expires_at });
                audit_event(st, "approval", None, None, "ApprovalRequested", "", detail).await;
                return commit(
                    myself,
                    st,
                    Some((Phase::AwaitingApproval, "ApprovalRequired", msg)),
                    |s| {
                        s.analysis = Some(analysis);
                        s.approval = Some(approval);
                        set_condition(s, "Analyzed", "True", decided);
                        set_condition(s, "Approved", "Unknown", "ApprovalRequired");
                    },
                )
                .await;
            }
            let approval = ApprovalStatus {
                required: false,
                reasons: policy.reasons,
                ..Default::default()
            };
            commit(
                myself,
                st,
                Some((Phase::Executing, "ActionChosen", msg)),
                |s| {
                    s.analysis = Some(analysis);
                    s.approval = Some(approval);
                    set_condition(s, "Analyzed", "True", decided);
                },
            )
            .await
        }
        Err(RuleError::NoRule(name)) => {
            let msg =
                format!("no rule answers signal {name}; nothing to do automatically ({reason})");
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

async fn execute(
    myself: &ActorRef<Envelope<Msg>>,
    st: &mut State,
) -> Result<(), ActorProcessingErr> {
    let Some(analysis) = st.status.analysis.clone() else {
        return fail(
            myself,
            st,
            "NoDecision",
            "Executing without an analysis".into(),
        )
        .await;
    };
    match st.status.execution.clone() {
        Some(exec) if exec.result.is_some() => {
            commit(
                myself,
                st,
                Some((Phase::Verifying, "ActionFinished", String::new())),
                |_| {},
            )
            .await
        }
        None => {
            // The plan is recorded before any step runs.
            let exec = ExecutionStatus {
                action: analysis.action.clone(),
                target: st.spec.target.clone(),
                target_uid: String::new(),
                started_at: now(),
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
            };
            commit(myself, st, None, |s| s.execution = Some(exec)).await?;
            if st.status.execution.is_some() {
                st.me.tell(Msg::Advance);
            }
            Ok(())
        }
        Some(exec) => {
            st.epoch += 1;
            let epoch = st.epoch;
            let me = st.me.clone();
            // Step events and the end arrive in the order the workflow sent
            // them, each tagged with this run.
            let sink: workflow::Sink = Arc::new(move |out| {
                me.tell(match out {
                    Out::Step(event) => Msg::Step(epoch, event),
                    Out::Finished(r) => {
                        Msg::StageDone(epoch, StageResult::Executed(r.map_err(|e| e.to_string())))
                    }
                });
            });
            let args = workflow::Args {
                cluster: st.ctx.cluster.clone(),
                workflow: analysis.workflow.clone(),
                settings: st.exec_settings(),
                default_timeout: st.ctx.settings.step_timeout,
                recorded: Some(exec),
                audit: Some((st.ctx.audit.clone(), st.uid.clone())),
                restart: st.ctx.settings.restart,
                metrics: st.ctx.metrics.clone(),
                chaos: st.ctx.settings.chaos.clone(),
                sink,
            };
            match Actor::spawn_linked(None, WorkflowActor, args, myself.get_cell()).await {
                Ok((actor, _)) => {
                    st.stage = Some(Stage {
                        kind: ActorKind::workflow,
                        cell: actor.get_cell(),
                        epoch,
                    });
                    st.stage_started = Instant::now();
                    Ok(())
                }
                Err(e) => retry_later(st, format!("the workflow actor did not start: {e}")),
            }
        }
    }
}

/// Starts the current phase's stage actor; its result comes back as
/// `StageDone`, tagged so that only the newest one counts.
async fn spawn_stage(
    myself: &ActorRef<Envelope<Msg>>,
    st: &mut State,
    kind: ActorKind,
    work: impl Fn() -> futures::future::BoxFuture<'static, StageResult> + Send + Sync + 'static,
) -> Result<(), ActorProcessingErr> {
    st.epoch += 1;
    let epoch = st.epoch;
    let me = st.me.clone();
    let report: worker::Report<StageResult> = Box::new(move |r| {
        // The supervisor may have stopped (request deleted): nothing to report then.
        me.tell(Msg::StageDone(epoch, r));
    });
    let spawned = worker::spawn(
        kind,
        &st.ctx.metrics,
        &st.ctx.settings.chaos,
        Arc::new(work),
        report,
        myself.get_cell(),
    )
    .await;
    match spawned {
        Ok(cell) => {
            st.stage = Some(Stage { kind, cell, epoch });
            st.stage_started = Instant::now();
            Ok(())
        }
        Err(e) => retry_later(st, format!("the {kind:?} actor did not start: {e}")),
    }
}

/// Records a step's start (acknowledged only once written) or its end.
async fn on_step(st: &mut State, event: StepEvent) -> Result<(), ActorProcessingErr> {
    match event {
        StepEvent::Starting {
            id,
            target,
            uid,
            generation,
            ack,
        } => {
            let edit = |s: &mut RemediationRequestStatus| {
                if let Some(step) = step_mut(s, &id) {
                    step.phase = StepPhase::Running;
                    step.target = target.clone();
                    step.target_uid = uid.clone();
                    step.target_generation = generation;
                    step.started_at = Some(now());
                }
            };
            stage_edit(st, edit);
            // Acknowledged, and audited, once written (see `flush`).
            st.acks.push(ack);
            st.pending_audit.push((
                "StepStarted",
                id.clone(),
                serde_json::json!({ "step": id, "target": target.map(|t| t.to_string()),
                                    "targetUid": uid, "targetGeneration": generation }),
            ));
            Ok(())
        }
        StepEvent::Settled(report) => {
            let phase = report.state;
            let message = match (&report.error, &report.outcome) {
                (Some(e), _) => e.clone(),
                (None, Some(o)) => o.message.clone(),
                (None, None) if report.state == StepPhase::AlreadyDone => {
                    "took effect before the controller restarted".into()
                }
                (None, None) => String::new(),
            };
            if let Some(outcome) = &report.outcome {
                st.outcomes.insert(report.id.clone(), outcome.clone());
            }
            audit_event(
                st,
                "action",
                None,
                None,
                "StepFinished",
                &report.id,
                serde_json::to_value(&report).unwrap_or_default(),
            )
            .await;
            let attempts = report.attempts;
            stage_edit(st, |s| {
                if let Some(step) = step_mut(s, &report.id) {
                    step.phase = phase;
                    step.attempts = step.attempts.max(attempts);
                    step.finished_at = Some(now());
                    step.message = message.clone();
                }
            });
            Ok(())
        }
    }
}

fn step_mut<'a>(s: &'a mut RemediationRequestStatus, id: &str) -> Option<&'a mut StepStatus> {
    s.execution
        .as_mut()?
        .steps
        .iter_mut()
        .find(|step| step.id == id)
}

async fn on_stage_done(
    myself: &ActorRef<Envelope<Msg>>,
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
        StageResult::Processed(Err(e)) => retry_later(st, e),
        StageResult::Analyzed(analyzed) => on_analyzed(myself, st, *analyzed).await,
        StageResult::Executed(Err(invalid)) => {
            count_action(st, "Invalid");
            fail(myself, st, "InvalidWorkflow", invalid).await
        }
        StageResult::Executed(Ok(report)) => {
            observe_stage(st, "execution", st.stage_started);
            let result = if report.succeeded {
                "Succeeded"
            } else {
                "Failed"
            };
            count_action(st, result);
            let failure = report.stopped.clone().or_else(|| {
                report
                    .steps
                    .iter()
                    .find(|s| s.state == StepPhase::Failed)
                    .map(|s| {
                        format!(
                            "step {} ({}) failed: {}",
                            s.id,
                            s.action,
                            s.error.clone().unwrap_or_default()
                        )
                    })
            });
            let undone = report.rollback_order.join(", ");
            let message = match (&failure, undone.is_empty()) {
                (None, _) => format!("{} steps succeeded", report.steps.len()),
                (Some(f), true) => f.clone(),
                (Some(f), false) => format!("{f}; rolled back {undone}"),
            };
            audit_event(
                st,
                "action",
                None,
                None,
                "WorkflowFinished",
                "",
                serde_json::json!({ "result": result, "completionOrder": report.completion_order,
                                    "rollbackOrder": report.rollback_order }),
            )
            .await;
            let finish = |s: &mut RemediationRequestStatus| {
                for r in &report.steps {
                    if let Some(step) = step_mut(s, &r.id) {
                        step.phase = r.state;
                        if let Some(e) = &r.error {
                            step.message = e.clone();
                        }
                    }
                }
                if let Some(e) = s.execution.as_mut() {
                    e.result = Some(result.into());
                    e.finished_at = Some(now());
                    e.message = message.clone();
                }
                set_condition(
                    s,
                    "Executed",
                    if report.succeeded { "True" } else { "False" },
                    result,
                );
            };
            if report.succeeded {
                commit(
                    myself,
                    st,
                    Some((Phase::Verifying, "ActionFinished", message.clone())),
                    finish,
                )
                .await
            } else {
                commit(
                    myself,
                    st,
                    Some((Phase::Failed, "WorkflowFailed", message.clone())),
                    finish,
                )
                .await
            }
        }
        StageResult::Verified(Ok(msg)) => {
            observe_stage(st, "verification", st.stage_started);
            commit(myself, st, Some((Phase::Completed, "Verified", msg)), |s| {
                set_condition(s, "Verified", "True", "Verified");
            })
            .await
        }
        StageResult::Verified(Err(e)) => fail(myself, st, "VerificationFailed", e).await,
    }
}

/// Edits the status to be written by the next flush (K-RR-5): step events
/// that arrive together are written together, by one patch, latest state
/// winning; a phase change writes them at once with it.
fn stage_edit(st: &mut State, edit: impl FnOnce(&mut RemediationRequestStatus)) {
    edit(st.desired.get_or_insert_with(|| st.status.clone()));
    if !st.flush_queued {
        st.flush_queued = true;
        st.me.tell(Msg::Flush);
    }
}

async fn flush(st: &mut State) -> Result<(), ActorProcessingErr> {
    st.flush_queued = false;
    let Some(next) = st.desired.clone() else {
        return Ok(());
    };
    match apply(st, next).await {
        Ok(()) => {
            written(st).await;
            Ok(())
        }
        Err(e @ (WriteError::Api(_) | WriteError::Contended)) => {
            tracing::warn!(request = %st.name, namespace = %st.namespace, error = %e, "status write failed; retrying");
            st.flush_queued = true;
            let delay = next_retry(st);
            st.me.tell_after(delay, Msg::Flush);
            Ok(())
        }
        Err(e) => {
            relinquish(st, &e);
            Ok(())
        }
    }
}

/// What waited for the status to be written: step intents are now
/// recorded, so the steps may act, and their audit rows are due.
async fn written(st: &mut State) {
    st.desired = None;
    st.retry = RETRY_BASE;
    for ack in st.acks.drain(..) {
        let _ = ack.send(());
    }
    for (reason, subject, detail) in std::mem::take(&mut st.pending_audit) {
        audit_event(st, "action", None, None, reason, &subject, detail).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Api(kubernaut_cluster::Error),
    /// Another replica drives the request now (K-RR-7).
    #[error("replica {0} drives this request now")]
    Lost(String),
    #[error("the request was deleted")]
    Gone,
    #[error("the request kept changing under five status writes")]
    Contended,
}

/// Records that nobody drives the request now, then stops: the replica
/// that owns it next adopts it from its status.
async fn release(
    myself: &ActorRef<Envelope<Msg>>,
    st: &mut State,
) -> Result<(), ActorProcessingErr> {
    if st.status.owner.is_some() {
        commit(myself, st, None, |_| {}).await?;
        if st.status.owner.is_some() {
            // Not written; `commit` retries through Advance.
            return Ok(());
        }
    }
    tracing::info!(request = %st.name, namespace = %st.namespace, "handed over");
    myself.stop(Some("handed over".into()));
    Ok(())
}

/// This supervisor has no request left to drive: it stops, and its stage
/// actors with it, without writing anything more.
fn relinquish(st: &State, why: &WriteError) {
    tracing::info!(request = %st.name, namespace = %st.namespace, reason = %why, "supervisor stops");
    st.me.actor().stop(Some(why.to_string()));
}

/// Writes `next` to the status subresource as this replica, based on the
/// version last seen; only once written is it the actor's state. A
/// conflict is read again: when another replica has taken the request
/// since, this supervisor has lost it; otherwise (the gateway counted a
/// duplicate) the write is retried on the new version.
async fn apply(st: &mut State, mut next: RemediationRequestStatus) -> Result<(), WriteError> {
    next.owner = (!st.releasing).then(|| st.ctx.identity.clone());
    let m = &st.ctx.metrics;
    for _ in 0..5 {
        let started = Instant::now();
        let r = st
            .ctx
            .cluster
            .apply_status(&st.namespace, &st.name, &next, Some(&st.rv))
            .await;
        m.status_patch_seconds
            .observe(started.elapsed().as_secs_f64());
        match r {
            Ok(rv) => {
                st.rv = rv;
                st.status = next;
                return Ok(());
            }
            Err(e) if e.is_conflict() => {
                m.status_conflicts.inc();
                let Some(now) = st
                    .ctx
                    .cluster
                    .get_request(&st.namespace, &st.name)
                    .await
                    .map_err(WriteError::Api)?
                else {
                    return Err(WriteError::Gone);
                };
                let owner = now.status.as_ref().and_then(|s| s.owner.clone());
                if let Some(o) = owner
                    && o != st.ctx.identity
                    && st.status.owner.as_deref() != Some(o.as_str())
                {
                    return Err(WriteError::Lost(o));
                }
                st.rv = now.metadata.resource_version.unwrap_or_default();
            }
            Err(e) if e.is_not_found() => return Err(WriteError::Gone),
            Err(e) => {
                m.status_write_errors.inc();
                return Err(WriteError::Api(e));
            }
        }
    }
    m.status_write_errors.inc();
    Err(WriteError::Contended)
}

/// Transient trouble (the API, a status write): the phase's work is tried
/// again with backoff, until it succeeds or the phase's deadline passes.
fn retry_later(st: &mut State, error: String) -> Result<(), ActorProcessingErr> {
    tracing::warn!(request = %st.name, namespace = %st.namespace, phase = %st.phase(), %error, retry_in = ?st.retry, "stage failed; retrying");
    let delay = next_retry(st);
    st.me.tell_after(delay, Msg::Advance);
    Ok(())
}

/// The delay before the next retry of transient trouble; doubles each time
/// until something is written (`written` resets it).
fn next_retry(st: &mut State) -> Duration {
    let delay = st.retry;
    st.retry = (st.retry * 2).min(RETRY_CAP);
    delay
}

async fn fail(
    myself: &ActorRef<Envelope<Msg>>,
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
    myself: &ActorRef<Envelope<Msg>>,
    st: &mut State,
    to: Option<(Phase, &'static str, String)>,
    edit: impl FnOnce(&mut RemediationRequestStatus),
) -> Result<(), ActorProcessingErr> {
    let from = st.phase();
    // Pending step edits go with it.
    let mut next = st.desired.clone().unwrap_or_else(|| st.status.clone());
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
        let at = Timestamp::now();
        next.phase_deadline = st.ctx.settings.timeouts.for_phase(to).map(|d| after(at, d));
        if to == Phase::Processing && next.deadline.is_none() {
            next.deadline = Some(after(at, st.ctx.settings.timeouts.request));
        }
        if to.is_terminal() {
            next.completion_time = Some(Time(at));
            next.retention_expiry_time = Some(after(at, st.ctx.settings.retention));
        }
    }
    let phase = next.phase;
    match apply(st, next).await {
        Ok(()) => written(st).await,
        // The API server refuses this status itself: retrying cannot help,
        // and the request would stay stuck. Failing it writes only the
        // phase, which the server accepts.
        Err(WriteError::Api(e))
            if e.is_invalid() && phase != Phase::Failed && from != Phase::Failed =>
        {
            st.desired = None;
            let reason = format!("the API server refused the request's status: {e}");
            return Box::pin(fail(myself, st, "StatusRejected", reason)).await;
        }
        Err(e @ (WriteError::Api(_) | WriteError::Contended)) => {
            return retry_later(st, format!("status write failed: {e}"));
        }
        Err(e) => {
            relinquish(st, &e);
            return Ok(());
        }
    }
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
            "",
            serde_json::json!({ "message": message, "replica": st.ctx.identity }),
        )
        .await;
        st.counted.set(to);
        arm(&st.me, &st.status);
        st.me.tell(Msg::Advance);
    }
    Ok(())
}

async fn audit_request(st: &State, phase: Phase) {
    let rec = AuditRecord::Request(request_record(
        &st.uid,
        &st.namespace,
        &st.name,
        &st.spec,
        phase,
    ));
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
    subject: &str,
    detail: serde_json::Value,
) {
    let now = Timestamp::now();
    let rec = event_record(&st.uid, now, kind, from, to, reason, subject, detail);
    let rec = AuditRecord::Event(rec);
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

fn after(at: Timestamp, d: Duration) -> Time {
    let d = kubernaut_api::k8s_openapi::jiff::SignedDuration::try_from(d).unwrap_or_default();
    Time(at.checked_add(d).unwrap_or(at))
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

/// Waits until every step this run completed shows its effect
/// ([`Cluster::verify`]), up to `timeout` for all of them.
async fn verify(
    cluster: &Cluster,
    workflow: &Workflow,
    exec: &ExecutionStatus,
    outcomes: &BTreeMap<String, kubernaut_cluster::Outcome>,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    for step in &workflow.steps {
        let Some(outcome) = outcomes.get(&step.id) else {
            // Settled before a restart, or not run: nothing of it to check.
            continue;
        };
        let call = ActionCall::parse(&step.action, step.parameters.clone())?;
        loop {
            match cluster.verify(&call, outcome).await {
                Ok(Some(what)) => {
                    seen.push(format!("{}: {what}", step.id));
                    break;
                }
                Ok(None) | Err(_) if Instant::now() >= deadline => {
                    return Err(format!(
                        "step {} ({}) did not show its effect within {timeout:?}",
                        step.id, step.action
                    ));
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
    use super::{Approval, priority};

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

    #[test]
    fn an_approval_names_who_decided() {
        let managed = serde_json::json!([
            {"manager": "kube-controller", "operation": "Update", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:status": {}}},
            {"manager": "kubectl-annotate", "operation": "Update", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:annotations": {"f:kubernaut.io/approval": {}}}}}
        ]);
        let rr = request(serde_json::json!({"name": "r",
            "annotations": {"kubernaut.io/approval": " Approved "}, "managedFields": managed}));
        let by_manager = Approval {
            approved: true,
            by: "kubectl-annotate".into(),
        };
        assert_eq!(Approval::of(&rr), Some(by_manager));
        let rr = request(serde_json::json!({"name": "r", "annotations": {
            "kubernaut.io/approval": "rejected", "kubernaut.io/approved-by": "alice"}}));
        let by_alice = Approval {
            approved: false,
            by: "alice".into(),
        };
        assert_eq!(Approval::of(&rr), Some(by_alice));
        for value in ["yes", ""] {
            let rr = request(serde_json::json!({"name": "r",
                "annotations": {"kubernaut.io/approval": value}}));
            assert_eq!(Approval::of(&rr), None, "{value:?} is no decision");
        }
        assert_eq!(
            Approval::of(&request(serde_json::json!({"name": "r"}))),
            None
        );
    }

    #[test]
    fn priority_combines_environment_and_severity() {
        assert_eq!(priority("production", "critical"), "P0");
        assert_eq!(priority("production", "warning"), "P1");
        assert_eq!(priority("staging", "critical"), "P1");
        assert_eq!(priority("unknown", "warning"), "P2");
        assert_eq!(priority("development", "info"), "P3");
    }
}

//! One supervisor actor per `RemediationRequest`. Its state is rebuilt from
//! the request's status when it starts, so a restarted controller resumes a
//! request exactly where its status says it stopped (K-RR-6).
//!
//! No handler here awaits the network or the database (the mailbox stays
//! responsive to deadlines, approvals and hand-overs whatever the API
//! server or PostgreSQL do): the request is read by a task (or, nobody
//! having driven it yet, taken from the watch: [`never_driven`]), the status is
//! written by the request's [`status::Writer`], audit records are queued
//! without waiting, and each phase's work runs in a stage actor.
//!
//! What happens in each phase is one module of [`stages`] behind the
//! [`stages::Stage`] trait; the decisions themselves are the plain
//! functions of [`transitions`]. A phase change is written first and taken
//! as the actor's state only once written; then it is counted, audited,
//! its deadline armed, and the next phase's work started.

mod audit;
mod deadlines;
mod stages;
pub mod status;
pub mod transitions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{Phase, RemediationRequest, RemediationRequestSpec, RemediationRequestStatus};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::Context;
use crate::children::{self, Children, Verdict};
use crate::mailbox::{Addr, Envelope, Inbox, Live};
use crate::metrics::{ActorKind, PhaseCount, StageLabels};
use crate::supervisor::transitions::Reason;
use crate::tasks::{Task, Timers};
use crate::worker;
use crate::workflow::{self, Out, StepEvent, WorkflowActor};

use stages::Next;
pub use stages::StageResult;
pub use stages::approval::Approval;
pub use stages::processing::Processed;
use status::{WriteReport, Writer};
use transitions::{Clock, Transition};

/// First retry delay after transient trouble in a phase's work; doubles up
/// to the cap.
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(30);

pub struct Supervisor;

pub struct Args {
    pub namespace: String,
    pub name: String,
    pub ctx: Arc<Context>,
    pub inbox: Inbox,
    /// The request as the watch showed it, when nobody has driven it yet
    /// ([`never_driven`]); otherwise it is read from the API server.
    pub seen: Option<Box<RemediationRequest>>,
}

/// Whether nobody has driven `rr` yet: no phase entered, no owner. Such a
/// request is started from the watch's copy. Read again, it could only say
/// the same, or that another replica claimed it meanwhile; this replica's
/// first status write finds that out as surely (it names the version it is
/// based on, and a conflict re-reads the owner), and two replicas that
/// start it at once read it the same either way. A request someone drove
/// is read fresh: its steps' records decide what runs again (K-RR-6).
pub fn never_driven(rr: &RemediationRequest) -> bool {
    rr.status.as_ref().is_none_or(|s| {
        s.phase == kubernaut_api::Phase::Pending
            && s.owner.is_none()
            && s.phase_history.is_empty()
            && s.execution.is_none()
    })
}

pub enum Msg {
    /// The request as read when the supervisor started (`None`: deleted).
    Loaded(Result<Option<Box<RemediationRequest>>, String>),
    /// Do the next piece of work for the current phase.
    Advance,
    StageDone(u64, StageResult),
    /// A workflow step starts or settles; its supervisor records it.
    Step(u64, StepEvent),
    /// Start the current phase's stage actor again after it failed.
    Restart(u64),
    /// A deadline may have passed (K-RR-4).
    Deadline,
    /// Hand the request over (K-RR-7): let a running workflow finish, then
    /// record no owner and stop.
    Release,
    /// A routing hold may have ended (K-RR-8): its time passed, or its
    /// target freed.
    Recheck,
    /// The request carries an approval decision (from the watch).
    Approval(Approval),
    /// The status writer's answer.
    Written(WriteReport),
}

/// The stage actor working for the current phase.
struct Running {
    kind: ActorKind,
    cell: ActorCell,
    epoch: u64,
}

/// What waits for a wanted status to be written.
enum Effect {
    /// A step's intent is recorded: it may act.
    Ack(oneshot::Sender<()>),
    Audit(Box<kubernaut_store::AuditRecord>),
    /// Tell people, once what they are told about is in the status (an
    /// approval asked for before the request is AwaitingApproval could not
    /// be given).
    Notify(Box<kubernaut_notify::Notification>),
    /// The phase changed.
    Entered {
        from: Phase,
        t: Transition,
        /// Its work starts before this write lands (see [`runs_ahead`]).
        ahead: bool,
    },
    /// Look at the phase's work again.
    Advance,
    /// The request is handed over.
    Stop,
}

impl Effect {
    /// Whether something waits for the write this effect follows, so that
    /// it must go out at once: an acknowledgement, work that starts only
    /// once the status has landed (a phase that acts, a claim), a stop.
    /// Entering a phase whose work runs ahead of its write, an audit record
    /// or a message may wait for the next status (see [`status::LINGER`]).
    fn waits(&self) -> bool {
        match self {
            Effect::Ack(_) | Effect::Advance | Effect::Stop => true,
            Effect::Entered { ahead, .. } => !ahead,
            Effect::Audit(_) | Effect::Notify(_) => false,
        }
    }
}

/// A supervisor loads its request in a task: spawning is awaited by the
/// registry, which must not wait on the API server for every request it
/// starts. What arrives before the request is loaded waits, and follows it.
pub enum Slot {
    Loading(Box<Loading>),
    Ready(Box<Sup>),
}

pub struct Loading {
    args: Args,
    me: Addr<Msg>,
    early: Vec<Msg>,
    live: Option<Live>,
    /// The read of the request, unless the watch's copy was given.
    _read: Option<Task>,
}

pub struct Sup {
    namespace: String,
    name: String,
    uid: String,
    created: Timestamp,
    spec: RemediationRequestSpec,
    /// The status as last written (or read): the actor's state.
    status: RemediationRequestStatus,
    ctx: Arc<Context>,
    me: Addr<Msg>,
    inbox: Inbox,
    writer: Writer,
    /// The newest status wanted and not yet written, its number, and what
    /// waits for it (by the number it waits for).
    /// Boxed: a supervisor waits with none for most of its life, and a
    /// status inline is over a kilobyte.
    desired: Option<Box<RemediationRequestStatus>>,
    seq: u64,
    effects: Vec<(u64, Effect)>,
    stage: Option<Running>,
    /// Identifies the newest stage actor: a result of an older one (killed,
    /// or failed and restarted) is ignored.
    epoch: u64,
    children: Children<Phase>,
    stage_started: Instant,
    retry: Duration,
    /// Handing over: writes record no owner, and no new stage starts.
    releasing: bool,
    /// What this run's workflow steps did, by step id, for Verifying. Kept
    /// in memory only: full object states go to the audit trail.
    outcomes: BTreeMap<String, kubernaut_cluster::Outcome>,
    /// When steps that change nothing in the cluster started: written
    /// with their end, as nothing has to be recorded before they run.
    started: BTreeMap<String, Timestamp>,
    /// The status wanted enters Executing with a plan nothing of which has
    /// run, and carries this replica's claim, and no write has landed
    /// since: the workflow may start before it lands (see [`runs_ahead`]).
    fresh_plan: bool,
    /// How often this supervisor found its target busy (its backoff).
    times_held: u32,
    approval: Option<Approval>,
    timers: Timers,
    /// The timer for the earliest deadline, and when it fires.
    deadline: Option<(Timestamp, Task)>,
    counted: PhaseCount,
    /// Every log line of this request carries its namespace and name.
    span: tracing::Span,
    _live: Option<Live>,
}

impl Actor for Supervisor {
    type Msg = Envelope<Msg>;
    type State = Slot;
    type Arguments = Args;

    async fn pre_start(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        mut args: Args,
    ) -> Result<Slot, ActorProcessingErr> {
        let live = Some(args.inbox.started());
        let me = args.inbox.addr(myself);
        let read = match args.seen.take() {
            Some(rr) => {
                me.tell(Msg::Loaded(Ok(Some(rr))));
                None
            }
            None => {
                let (cluster, ns, name, to) = (
                    args.ctx.cluster.clone(),
                    args.namespace.clone(),
                    args.name.clone(),
                    me.clone(),
                );
                Some(Task::spawn(async move {
                    let rr = cluster.get_request(&ns, &name).await;
                    to.tell(Msg::Loaded(
                        rr.map(|r| r.map(Box::new)).map_err(|e| e.to_string()),
                    ));
                }))
            }
        };
        Ok(Slot::Loading(Box::new(Loading {
            args,
            me,
            early: Vec::new(),
            live,
            _read: read,
        })))
    }

    async fn handle(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        env: Envelope<Msg>,
        slot: &mut Slot,
    ) -> Result<(), ActorProcessingErr> {
        let loading = match slot {
            Slot::Ready(sup) => {
                let span = sup.span.clone();
                // Boxed: the actor's task holds its handler's future for
                // its whole life, and this one is kilobytes; boxed, the
                // kilobytes exist only while a message is handled.
                return Box::pin(sup.on_message(&myself, env).instrument(span)).await;
            }
            Slot::Loading(loading) => loading,
        };
        let (msg, _handling) = loading.args.inbox.open(env);
        match msg {
            // The registry restarts a failed supervisor with backoff.
            Msg::Loaded(Err(e)) => Err(format!("reading the request: {e}").into()),
            Msg::Loaded(Ok(None)) => {
                myself.stop(Some("the request no longer exists".into()));
                Ok(())
            }
            Msg::Loaded(Ok(Some(rr))) => {
                let sup = Sup::new(loading, *rr);
                *slot = Slot::Ready(Box::new(sup));
                Ok(())
            }
            other => {
                loading.early.push(other);
                Ok(())
            }
        }
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
            Slot::Ready(sup) => {
                let _in = sup.span.clone().entered();
                sup.on_child_failed(&myself, evt)
            }
            Slot::Loading(_) => Ok(()),
        }
    }
}

impl Sup {
    fn new(loading: &mut Loading, rr: RemediationRequest) -> Self {
        let args = &loading.args;
        let me = loading.me.clone();
        let status = rr.status.clone().unwrap_or_default();
        let span = tracing::info_span!("request", namespace = %args.namespace, name = %args.name);
        let writer = Writer::start(
            Arc::new(args.ctx.cluster.clone()),
            args.ctx.metrics.writes(),
            status::Target {
                key: kubernaut_api::RequestKey::new(&args.namespace, &args.name),
                identity: args.ctx.identity.clone(),
                resource_version: rr.metadata.resource_version.clone().unwrap_or_default(),
                owner: status.owner.clone(),
                loaded: status::driven_mark(rr.status.as_ref()),
                linger: args.ctx.settings.status_linger,
            },
            me.clone(),
            span.clone(),
        );
        let approval = Approval::of(&rr);
        let uid = rr.metadata.uid.unwrap_or_default();
        let created = rr
            .metadata
            .creation_timestamp
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
        let mut spec = rr.spec;
        // The alert as received stays in the request for people and the
        // audit; no stage reads it, and a live supervisor would otherwise
        // hold a copy of every alert (kilobytes each) for its whole life.
        spec.original_payload = String::new();
        let mut sup = Sup {
            namespace: args.namespace.clone(),
            name: args.name.clone(),
            uid,
            created,
            spec,
            counted: PhaseCount::new(&args.ctx.metrics, status.phase),
            status,
            ctx: args.ctx.clone(),
            me,
            inbox: args.inbox.clone(),
            writer,
            desired: None,
            seq: 0,
            effects: Vec::new(),
            stage: None,
            epoch: 0,
            children: Children::new(args.ctx.settings.restart),
            stage_started: Instant::now(),
            retry: RETRY_BASE,
            releasing: false,
            outcomes: BTreeMap::new(),
            started: BTreeMap::new(),
            fresh_plan: false,
            times_held: 0,
            approval,
            timers: Timers::default(),
            deadline: None,
            span,
            _live: loading.live.take(),
        };
        sup.arm();
        if sup.status.phase == Phase::Blocked
            && let Some(until) = sup.status.blocked_until.clone()
        {
            sup.recheck_at(until.0);
        }
        sup.me.tell(Msg::Advance);
        for m in std::mem::take(&mut loading.early) {
            sup.me.tell(m);
        }
        sup
    }

    /// The status as it will be once what is wanted is written: what new
    /// decisions build on.
    fn current(&self) -> &RemediationRequestStatus {
        self.desired.as_deref().unwrap_or(&self.status)
    }

    fn phase(&self) -> Phase {
        self.current().phase
    }

    /// A phase change (or a claim) is wanted and not yet written: the next
    /// piece of work waits for it.
    fn settling(&self) -> bool {
        self.effects
            .iter()
            .any(|(_, e)| matches!(e, Effect::Entered { .. } | Effect::Advance))
    }

    fn clock(&self) -> Clock {
        Clock {
            now: Timestamp::now(),
            timeouts: self.ctx.settings.timeouts,
            retention: self.ctx.settings.retention,
        }
    }

    fn key(&self) -> kubernaut_api::RequestKey {
        kubernaut_api::RequestKey::new(&self.namespace, &self.name)
    }

    async fn on_message(
        &mut self,
        myself: &ActorRef<Envelope<Msg>>,
        env: Envelope<Msg>,
    ) -> Result<(), ActorProcessingErr> {
        let (msg, _handling) = self.inbox.open(env);
        if let Msg::Written(report) = msg {
            return self.on_written(myself, report);
        }
        // Past a deadline nothing else happens: no stage starts, no step
        // is acknowledged, no late result counts.
        if self.expired().is_some() {
            return self.on_deadline();
        }
        match msg {
            Msg::Advance => self.advance(myself).await,
            // A hold ends, or a verification window does.
            Msg::Recheck if matches!(self.phase(), Phase::Blocked | Phase::Verifying) => {
                self.advance(myself).await
            }
            Msg::Approval(a) => {
                let new = self.approval.as_ref() != Some(&a);
                self.approval = Some(a);
                if new && self.phase() == Phase::AwaitingApproval {
                    self.advance(myself).await
                } else {
                    Ok(())
                }
            }
            Msg::StageDone(epoch, result) if epoch == self.epoch => {
                self.stage = None;
                self.children.succeeded(&self.phase());
                let Some(stage) = stages::of(self.phase()) else {
                    return Ok(());
                };
                let next = stage.done(self, result);
                self.run(myself, next).await
            }
            // A stale workflow's step never acts: its dropped ack stops it.
            Msg::Step(epoch, event) if epoch == self.epoch => {
                self.on_step(event);
                Ok(())
            }
            Msg::Restart(epoch) if epoch == self.epoch && self.stage.is_none() => {
                self.advance(myself).await
            }
            Msg::Release => self.on_release(myself),
            Msg::Recheck
            | Msg::StageDone(..)
            | Msg::Step(..)
            | Msg::Restart(_)
            | Msg::Deadline
            | Msg::Loaded(_)
            | Msg::Written(_) => Ok(()),
        }
    }

    async fn advance(
        &mut self,
        myself: &ActorRef<Envelope<Msg>>,
    ) -> Result<(), ActorProcessingErr> {
        let phase = self.phase();
        // Its claim has landed, or goes with the write entering Executing
        // with a fresh plan, which every step that acts waits for.
        let fresh = self.fresh_plan && !self.releasing;
        let mine = self.status.owner.as_deref() == Some(self.ctx.identity.as_str()) || fresh;
        let ahead = runs_ahead(phase, fresh) && (before_claim(phase) || mine);
        if self.stage.is_some() || (self.settling() && !ahead) {
            return Ok(());
        }
        if phase.is_terminal() {
            if self.desired.is_none() {
                myself.stop(Some(format!("request reached {phase}")));
            }
            return Ok(());
        }
        if self.releasing {
            return self.release(myself);
        }
        // Before it acts, this replica claims the request (K-RR-7): from
        // then on a write by anyone else's supervisor conflicts. A phase that
        // only reads and decides runs first; its own write carries the claim.
        if !before_claim(phase) && !mine {
            return self.commit(|_| None, true);
        }
        let Some(stage) = stages::of(phase) else {
            return Ok(());
        };
        let next = stage.next(self);
        self.run(myself, next).await
    }

    /// Carries out what a stage decided.
    async fn run(
        &mut self,
        myself: &ActorRef<Envelope<Msg>>,
        next: Next,
    ) -> Result<(), ActorProcessingErr> {
        let from = self.phase();
        match next {
            Next::Wait => Ok(()),
            Next::Commit(change) => {
                self.commit(change, false)?;
                self.run_ahead(from);
                Ok(())
            }
            Next::CommitThenAdvance(change) => {
                self.commit(change, true)?;
                self.run_ahead(from);
                Ok(())
            }
            Next::Fail(reason, message) => self.fail(reason, message),
            Next::Retry(error) => {
                self.retry_later(error);
                Ok(())
            }
            Next::Run(kind, work) => {
                self.spawn_stage(myself, kind, work).await;
                Ok(())
            }
            Next::Workflow(args) => {
                self.spawn_workflow(myself, *args).await;
                Ok(())
            }
        }
    }

    /// A phase just entered whose work runs ahead of its write (see
    /// [`runs_ahead`]) starts at once, before the write recording it lands:
    /// its own write and the ones before it go out together (a new request
    /// reaches its first change after one write, not four), and nothing
    /// acts on the world until a write carrying the claim has landed.
    fn run_ahead(&self, from: Phase) {
        let to = self.phase();
        if to != from && runs_ahead(to, self.fresh_plan) && !self.releasing {
            self.me.tell(Msg::Advance);
        }
    }

    fn on_release(&mut self, myself: &ActorRef<Envelope<Msg>>) -> Result<(), ActorProcessingErr> {
        self.releasing = true;
        match &self.stage {
            // In-flight steps finish; the result's write releases.
            Some(s) if s.kind == ActorKind::workflow => Ok(()),
            Some(s) => {
                s.cell.kill();
                self.stage = None;
                self.epoch += 1;
                self.release(myself)
            }
            None => self.release(myself),
        }
    }

    /// Records that nobody drives the request now, then stops: the replica
    /// that owns it next adopts it from its status.
    fn release(&mut self, myself: &ActorRef<Envelope<Msg>>) -> Result<(), ActorProcessingErr> {
        if self.settling() {
            // Its write advances, which releases.
            return Ok(());
        }
        if self.status.owner.is_some() || self.desired.is_some() {
            self.commit_then(|_| None, false, Some(Effect::Stop))?;
            return Ok(());
        }
        tracing::info!("handed over");
        myself.stop(Some("handed over".into()));
        Ok(())
    }

    /// This supervisor has no request left to drive: it stops, and its
    /// stage actors with it, without writing anything more.
    fn relinquish(&self, why: &str, myself: &ActorRef<Envelope<Msg>>) {
        tracing::info!(reason = %why, "supervisor stops");
        myself.stop(Some(why.to_string()));
    }

    /// Transient trouble (the API): the phase's work is tried again with
    /// backoff, until it succeeds or the phase's deadline passes.
    fn retry_later(&mut self, error: String) {
        let delay = self.retry;
        self.retry = (self.retry * 2).min(RETRY_CAP);
        tracing::warn!(phase = %self.phase(), %error, retry_in = ?delay, "stage failed; retrying");
        self.timers.after(&self.me, delay, Msg::Advance);
    }

    /// Starts the current phase's stage actor; its result comes back as
    /// `StageDone`, tagged so that only the newest one counts.
    async fn spawn_stage(
        &mut self,
        myself: &ActorRef<Envelope<Msg>>,
        kind: ActorKind,
        work: worker::Work<StageResult>,
    ) {
        self.epoch += 1;
        let epoch = self.epoch;
        let me = self.me.clone();
        let report: worker::Report<StageResult> = Box::new(move |r| {
            // The supervisor may have stopped (request deleted): nothing to report then.
            me.tell(Msg::StageDone(epoch, r));
        });
        let (metrics, chaos) = (&self.ctx.metrics, &self.ctx.settings.chaos);
        // Boxed: spawning's future is large, and inline it would size the
        // supervisor's message loop (held for the actor's whole life).
        match Box::pin(worker::spawn(
            kind,
            metrics,
            chaos,
            work,
            report,
            myself.get_cell(),
        ))
        .await
        {
            Ok(cell) => self.started(kind, cell, epoch),
            Err(e) => self.retry_later(format!("the {kind:?} actor did not start: {e}")),
        }
    }

    async fn spawn_workflow(&mut self, myself: &ActorRef<Envelope<Msg>>, args: workflow::Args) {
        self.epoch += 1;
        let epoch = self.epoch;
        let me = self.me.clone();
        // Step events and the end arrive in the order the workflow sent
        // them, each tagged with this run.
        let sink: workflow::Sink = Arc::new(move |out| {
            me.tell(match out {
                Out::Step(event) => Msg::Step(epoch, event),
                Out::Finished(r) => Msg::StageDone(epoch, StageResult::Executed(r)),
            });
        });
        let args = workflow::Args { sink, ..args };
        match Box::pin(Actor::spawn_linked(
            None,
            WorkflowActor,
            args,
            myself.get_cell(),
        ))
        .await
        {
            Ok((actor, _)) => self.started(ActorKind::workflow, actor.get_cell(), epoch),
            Err(e) => self.retry_later(format!("the workflow actor did not start: {e}")),
        }
    }

    fn started(&mut self, kind: ActorKind, cell: ActorCell, epoch: u64) {
        self.children.started(cell.get_id(), self.phase());
        self.stage = Some(Running { kind, cell, epoch });
        self.stage_started = Instant::now();
    }

    fn on_child_failed(
        &mut self,
        myself: &ActorRef<Envelope<Msg>>,
        evt: SupervisionEvent,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, error) = evt else {
            return Ok(());
        };
        let Some(stage) = self.stage.take_if(|s| s.cell.get_id() == cell.get_id()) else {
            return Ok(());
        };
        let reason = children::reason(&error);
        match self.children.failed(&cell.get_id()) {
            Some(Verdict::Restart { after, attempt, .. }) => {
                self.ctx.metrics.restarted(stage.kind);
                tracing::warn!(stage = ?stage.kind, error = %reason, restart = attempt, delay = ?after, "stage actor failed; restarting it");
                self.timers
                    .after(&self.me, after, Msg::Restart(stage.epoch));
                Ok(())
            }
            Some(Verdict::GiveUp { failures, .. }) => {
                let message = format!(
                    "the {:?} actor failed {failures} times; last: {reason}",
                    stage.kind
                );
                let _ = myself;
                self.fail(Reason::StageFailed, message)
            }
            None => Ok(()),
        }
    }

    fn observe_stage(&self, stage: &'static str) {
        self.ctx
            .metrics
            .stage_seconds
            .get_or_create(&StageLabels { stage })
            .observe(self.stage_started.elapsed().as_secs_f64());
    }

    /// How this request's actions run: as its own lock holder.
    fn exec_settings(&self) -> kubernaut_cluster::ExecSettings {
        kubernaut_cluster::ExecSettings {
            holder: self.name.clone(),
            ..self.ctx.settings.executor.clone()
        }
    }

    /// Work for a stage actor: `f` is called afresh for each (re)start.
    fn work<F, Fut>(f: F) -> worker::Work<StageResult>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = StageResult> + Send + 'static,
    {
        Arc::new(move || f().boxed())
    }
}

/// Phases whose work starts before the write recording the phase lands
/// (that write may linger for the next), and what it decides is written
/// with it. Most only read the cluster and decide. Executing's steps read
/// and then wait: a step that changes the cluster acts only once its
/// intent is acknowledged, which its supervisor does only once a write
/// carrying the intent (and with it the phase, the plan and the claim)
/// has landed; so the write entering Executing goes out with the first
/// step's intent, one status write and one round trip fewer before the
/// first change. A step that changes nothing may run before it lands.
/// Executing runs ahead only on a fresh plan, nothing of which has run:
/// a recorded one may have steps to resume or roll back, which do not wait
/// for a write, so its workflow starts once the phase has landed.
fn runs_ahead(phase: Phase, fresh_plan: bool) -> bool {
    match phase {
        Phase::Executing => fresh_plan,
        p => matches!(
            p,
            Phase::Pending | Phase::Processing | Phase::Analyzing | Phase::Verifying
        ),
    }
}

/// Phases whose work may run before this replica's claim (K-RR-7) has
/// landed: nothing has acted yet, and their own write carries the claim.
/// Executing and Verifying run ahead only for the replica that holds the
/// request, or whose claim goes with the write entering Executing with a
/// fresh plan (nothing of it has run: no step to resume or roll back); an
/// adopted request is claimed first.
fn before_claim(phase: Phase) -> bool {
    matches!(phase, Phase::Pending | Phase::Processing | Phase::Analyzing)
}

/// A live actor's task holds its message loop's future, sized by the
/// largest future it awaits, for its whole life; so does a status writer's
/// task, and a step waiting for its target's lock holds its action's
/// future. With ten thousand requests live, these are most of what a
/// request costs: the handlers and the writer box what they await, and
/// these sizes are kept in check.
#[cfg(test)]
mod future_sizes {
    use super::*;
    use crate::workflow::WorkflowActor;

    /// The future an actor's `handle` returns.
    type Handle<'a, A, Fut> = fn(
        &'a A,
        ActorRef<<A as Actor>::Msg>,
        <A as Actor>::Msg,
        &'a mut <A as Actor>::State,
    ) -> Fut;

    fn handler<'a, A: Actor, Fut>(_: Handle<'a, A, Fut>) -> usize {
        std::mem::size_of::<Fut>()
    }

    fn action<'a, Fut>(
        _: fn(
            &'a kubernaut_cluster::Cluster,
            &'a kubernaut_cluster::ActionCall,
            &'a kubernaut_cluster::ExecSettings,
        ) -> Fut,
    ) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn what_a_live_request_holds_stays_small() {
        let sup = handler(<Supervisor as Actor>::handle);
        let wf = handler(<WorkflowActor as Actor>::handle);
        let act = action(kubernaut_cluster::Cluster::run_action);
        let writer = status::writer_task_size();
        let slot = status::writer_slot_size();
        assert!(sup <= 512, "the supervisor's handler future: {sup} bytes");
        assert!(wf <= 512, "the workflow's handler future: {wf} bytes");
        assert!(writer <= 768, "a status writer's task: {writer} bytes");
        assert!(slot <= 64, "a status writer's slot: {slot} bytes");
        assert!(act <= 1024, "a waiting action's future: {act} bytes");
    }
}

#[cfg(test)]
mod lingering {
    use super::*;

    fn entering(to: Phase) -> Effect {
        Effect::Entered {
            from: Phase::Pending,
            t: Transition::new(to, Reason::ActionChosen, String::new()),
            ahead: runs_ahead(to, true),
        }
    }

    /// Only what nothing waits for may wait for the next status: entering
    /// a phase that reads and decides (or, Executing, whose steps wait for
    /// their intents' writes), records, messages.
    #[test]
    fn a_write_lingers_only_when_nothing_waits_for_it() {
        for to in [
            Phase::Processing,
            Phase::Analyzing,
            Phase::Executing,
            Phase::Verifying,
        ] {
            assert!(!entering(to).waits(), "{to}");
        }
        for to in [
            Phase::AwaitingApproval,
            Phase::Blocked,
            Phase::Completed,
            Phase::Failed,
            Phase::TimedOut,
        ] {
            assert!(entering(to).waits(), "{to}");
        }
        let recorded_plan = Effect::Entered {
            from: Phase::Blocked,
            t: Transition::new(Phase::Executing, Reason::ActionChosen, String::new()),
            ahead: false,
        };
        assert!(recorded_plan.waits(), "Executing on a recorded plan");
        let (ack, _rx) = oneshot::channel();
        assert!(Effect::Ack(ack).waits());
        assert!(Effect::Advance.waits());
        assert!(Effect::Stop.waits());
    }
}

#[cfg(test)]
mod starting {
    use super::*;
    use crate::ports::doubles::request;

    /// Only a request nobody has driven starts from the watch's copy: one
    /// with a phase entered, an owner (even a handed-over one's history) or
    /// a plan is read fresh, since its records decide what runs again.
    #[test]
    fn only_a_request_nobody_drove_starts_from_the_watch() {
        let mut rr = request(serde_json::json!(null));
        rr.status = None;
        assert!(never_driven(&rr), "no status at all");
        let counted = serde_json::json!({"deduplication": {"occurrenceCount": 3,
            "firstSeenAt": "2026-11-22T03:00:00Z", "lastSeenAt": "2026-11-22T03:01:00Z"}});
        assert!(
            never_driven(&request(counted)),
            "the gateway's duplicate count drives nothing"
        );
        assert!(!never_driven(&request(
            serde_json::json!({"phase": "Processing", "owner": "a"})
        )));
        assert!(!never_driven(&request(serde_json::json!({"owner": "a"}))));
        let handed_over = serde_json::json!({"phaseHistory": [
            {"phase": "Processing", "time": "2026-11-22T03:00:00Z", "reason": "Started"}]});
        assert!(!never_driven(&request(handed_over)));
    }
}

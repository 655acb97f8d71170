//! A request's status writes (K-RR-5). Each supervisor has one writer task:
//! the supervisor hands it the status it wants (numbered), never waits, and
//! goes on handling messages; the writer keeps one write in flight, and
//! when it is free takes the latest wanted status, so edits made meanwhile
//! are written together and the newest wins. It answers
//! [`Written`](WriteReport::Written) with the resourceVersion, and only
//! then does the supervisor take the status as its state and act on the
//! transition it records (see [`super::Sup::on_written`]).
//!
//! A wanted status may *linger* (see [`Writer::want`]): when nothing waits
//! for it to land (a phase that only reads and decides was entered, a step
//! that ended was recorded), the writer waits up to [`LINGER`] for the
//! status that usually follows at once, so that a notify-only request goes
//! from Pending to Completed in two writes rather than five. A status that
//! something waits for (a claim, a step's write-ahead record, a phase that
//! acts, an end) is written at once, and takes any lingering one with it.
//!
//! A write names the resourceVersion it was based on. A conflict is read
//! again: when another replica has taken the request since, this one has
//! lost it (K-RR-7); otherwise (the gateway counted a duplicate) it is
//! written again on the new version. Transient errors are retried with
//! backoff, on the newest wanted status, for as long as the supervisor
//! lives: a deadline that passes meanwhile is itself a newer status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kubernaut_api::{RemediationRequestStatus, RequestKey};
use tokio::sync::watch;
use tracing::Instrument;

use kubernaut_api::Phase;
use ractor::{ActorProcessingErr, ActorRef};

use crate::mailbox::{Addr, Envelope};
use crate::metrics::{TransitionLabels, WriteMetrics};
use crate::ports::Requests;
use crate::supervisor::transitions::Reason;
use crate::tasks::Task;

use super::transitions::{self, Transition};
use super::{Effect, Msg, RETRY_BASE, Sup};

/// First retry delay after a failed write; doubles up to the cap.
const WRITE_RETRY_BASE: Duration = Duration::from_millis(200);
const WRITE_RETRY_CAP: Duration = Duration::from_secs(30);
/// Conflicts re-read and written again before the write counts as failed.
const CONFLICT_ROUNDS: usize = 5;
/// How long a status that nothing waits for may wait for the next one,
/// unless configured otherwise (`controller.statusLingerMillis`). What it
/// costs is only how soon `kubectl get` shows an intermediate phase (an
/// LLM analysis shows Analyzing this much later).
pub const LINGER: Duration = Duration::from_millis(250);

/// What the writer tells its supervisor.
#[derive(Debug)]
pub enum WriteReport {
    /// Wanted status `seq` is the request's status now.
    Written {
        seq: u64,
        resource_version: String,
        status: Box<RemediationRequestStatus>,
    },
    /// The API server refuses status `seq` itself: retrying cannot help.
    Rejected { seq: u64, error: String },
    /// Another replica drives the request now.
    Lost(String),
    /// The request was deleted.
    Gone,
}

/// What to write: the status, and its number.
#[derive(Clone)]
struct Wanted {
    seq: u64,
    /// Boxed: the writer's channel keeps a slot of this type for the
    /// request's whole life, empty most of it, and a status inline is over
    /// a kilobyte.
    status: Box<RemediationRequestStatus>,
    linger: bool,
}

/// The supervisor's handle on its writer; the task ends with it.
pub struct Writer {
    tx: watch::Sender<Option<Wanted>>,
    _task: Task,
}

/// Empties the writer's slot if it holds status `seq` or an older one.
fn let_go(tx: &watch::Sender<Option<Wanted>>, seq: u64) {
    tx.send_if_modified(|w| {
        if w.as_ref().is_some_and(|w| w.seq <= seq) {
            *w = None;
        }
        false
    });
}

/// What the writer needs to know of the request.
pub struct Target {
    pub key: RequestKey,
    pub identity: String,
    pub resource_version: String,
    /// The owner recorded when the supervisor loaded the request.
    pub owner: Option<String>,
    /// [`driven_mark`] of the status as loaded: a request adopted from
    /// another replica is taken over only while that replica leaves it as
    /// it was.
    pub loaded: u64,
    /// How long a status that nothing waits for may wait for the next.
    pub linger: Duration,
}

/// A digest of what a request's driver writes (everything of the status
/// but the gateway's counts): it changes when some replica drives the
/// request on.
pub fn driven_mark(status: Option<&RemediationRequestStatus>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut driven = status.cloned().unwrap_or_default();
    driven.deduplication = None;
    driven.signal_resolution = None;
    driven.storm = None;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&driven)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

impl Writer {
    pub fn start(
        requests: Arc<dyn Requests>,
        metrics: WriteMetrics,
        target: Target,
        report: Addr<Msg>,
        span: tracing::Span,
    ) -> Self {
        let (tx, rx) = watch::channel(None);
        let report = move |r| {
            report.tell(Msg::Written(r));
        };
        let task = Task::spawn(run(requests, metrics, target, rx, report).instrument(span));
        Self { tx, _task: task }
    }

    /// Status `seq` is written: the writer's copy of it goes (a live
    /// request would otherwise hold its status twice, for its whole life).
    /// A newer wanted status stays; the writer is not woken.
    pub fn written(&self, seq: u64) {
        let_go(&self.tx, seq);
    }

    /// Wants `status` written as number `seq`; replaces what was wanted.
    /// With `linger`, nothing waits for it: it may wait up to its linger
    /// ([`LINGER`] by default) for a newer status to be written with. The
    /// caller never lingers a status that replaces an unwritten one
    /// something waits for.
    pub fn want(&self, seq: u64, status: RemediationRequestStatus, linger: bool) {
        self.tx.send_replace(Some(Wanted {
            seq,
            status: Box::new(status),
            linger,
        }));
    }
}

enum Failure {
    Transient(String),
    Rejected(String),
    Lost(String),
    Gone,
}

async fn run<R: Fn(WriteReport)>(
    requests: Arc<dyn Requests>,
    metrics: WriteMetrics,
    mut t: Target,
    mut rx: watch::Receiver<Option<Wanted>>,
    report: R,
) {
    let mut retry = WRITE_RETRY_BASE;
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let Some(wanted) = rx.borrow_and_update().clone() else {
            continue;
        };
        // Boxed: a writer waits for most of its request's life, and its
        // task is as large as the largest thing it awaits; boxed, what a
        // write holds (a status, the API call) exists only while it runs.
        let delivered = deliver(
            &*requests, &metrics, &mut t, &mut rx, &report, &mut retry, wanted,
        );
        if Box::pin(delivered).await.is_break() {
            return;
        }
    }
}

/// The size of the writer's slot for a wanted status, which lives as long
/// as its request.
#[cfg(test)]
pub(super) fn writer_slot_size() -> usize {
    std::mem::size_of::<Option<Wanted>>()
}

/// The size of a writer's task, which lives as long as its request.
#[cfg(test)]
pub(super) fn writer_task_size() -> usize {
    type Run<F> = fn(
        Arc<dyn Requests>,
        WriteMetrics,
        Target,
        watch::Receiver<Option<Wanted>>,
        fn(WriteReport),
    ) -> F;
    fn size<F>(_: Run<F>) -> usize {
        std::mem::size_of::<F>()
    }
    size(run::<fn(WriteReport)>)
}

/// Writes `wanted` (after its linger), or a newer one that replaces it
/// meanwhile, until it is written or refused. Breaks when the writer is
/// done: the supervisor has gone, or the request has.
async fn deliver(
    requests: &dyn Requests,
    metrics: &WriteMetrics,
    t: &mut Target,
    rx: &mut watch::Receiver<Option<Wanted>>,
    report: &impl Fn(WriteReport),
    retry: &mut Duration,
    mut wanted: Wanted,
) -> std::ops::ControlFlow<()> {
    use std::ops::ControlFlow::{Break, Continue};
    if wanted.linger {
        let until = tokio::time::Instant::now() + t.linger;
        while wanted.linger {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                changed = rx.changed() => if changed.is_err() { return Break(()) },
            }
            if let Some(newer) = rx.borrow_and_update().clone() {
                wanted = newer;
            }
        }
    }
    loop {
        match write(requests, metrics, t, &wanted.status).await {
            Ok(()) => {
                *retry = WRITE_RETRY_BASE;
                t.owner = wanted.status.owner.clone();
                report(WriteReport::Written {
                    seq: wanted.seq,
                    resource_version: t.resource_version.clone(),
                    status: wanted.status,
                });
                return Continue(());
            }
            Err(Failure::Transient(error)) => {
                tracing::warn!(%error, retry_in = ?*retry, "status write failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(*retry) => {}
                    changed = rx.changed() => if changed.is_err() { return Break(()) },
                }
                *retry = (*retry * 2).min(WRITE_RETRY_CAP);
                if let Some(newer) = rx.borrow_and_update().clone() {
                    wanted = newer;
                }
            }
            Err(Failure::Rejected(error)) => {
                report(WriteReport::Rejected {
                    seq: wanted.seq,
                    error,
                });
                return Continue(());
            }
            Err(Failure::Lost(owner)) => {
                report(WriteReport::Lost(owner));
                return Break(());
            }
            Err(Failure::Gone) => {
                report(WriteReport::Gone);
                return Break(());
            }
        }
    }
}

/// One write, with the conflicts it meets re-read and written again.
async fn write(
    requests: &dyn Requests,
    m: &WriteMetrics,
    t: &mut Target,
    status: &RemediationRequestStatus,
) -> Result<(), Failure> {
    for _ in 0..CONFLICT_ROUNDS {
        let started = Instant::now();
        let r = requests
            .apply_status(&t.key, status, &t.resource_version)
            .await;
        m.seconds.observe(started.elapsed().as_secs_f64());
        match r {
            Ok(rv) => {
                t.resource_version = rv;
                return Ok(());
            }
            Err(e) if e.is_conflict() => {
                m.conflicts.inc();
                reread(requests, t).await?;
            }
            Err(e) if e.is_not_found() => return Err(Failure::Gone),
            Err(e) if e.is_invalid() => {
                // A server-side apply is validated merged with the stored
                // object, before its resourceVersion is compared: when
                // another replica wrote since the version this write is
                // based on, the refusal can be that merge's. Then it is
                // the conflict it really is; otherwise this status itself
                // is refused.
                let moved = match requests.get(&t.key).await {
                    Ok(Some(now)) => {
                        now.metadata.resource_version.as_deref()
                            != Some(t.resource_version.as_str())
                    }
                    Ok(None) => return Err(Failure::Gone),
                    Err(_) => false,
                };
                if !moved {
                    m.errors.inc();
                    return Err(Failure::Rejected(e.to_string()));
                }
                m.conflicts.inc();
                reread(requests, t).await?;
            }
            Err(e) => {
                m.errors.inc();
                return Err(Failure::Transient(e.to_string()));
            }
        }
    }
    m.errors.inc();
    Err(Failure::Transient(
        "the request kept changing under five status writes".into(),
    ))
}

/// After a conflict: the request as it is now. Lost when another replica
/// has taken it since it was loaded, or when the replica it was adopted
/// from (believed gone) has driven it on since: that one is alive, and
/// this replica's view of the members was behind. Otherwise (the gateway
/// counted a duplicate) the next write is based on the version read.
async fn reread(requests: &dyn Requests, t: &mut Target) -> Result<(), Failure> {
    let now = match requests.get(&t.key).await {
        Ok(Some(now)) => now,
        Ok(None) => return Err(Failure::Gone),
        Err(e) => return Err(Failure::Transient(e.to_string())),
    };
    let owner = now.status.as_ref().and_then(|s| s.owner.clone());
    if let Some(o) = owner
        && o != t.identity
        && (t.owner.as_deref() != Some(o.as_str()) || driven_mark(now.status.as_ref()) != t.loaded)
    {
        return Err(Failure::Lost(o));
    }
    t.resource_version = now.metadata.resource_version.unwrap_or_default();
    Ok(())
}

impl Sup {
    /// Wants the status as `change` edits it (with the phase change it
    /// returns, if any) written; nothing is taken as state until it is. A
    /// transition outside the phase table is a bug in this actor: it fails.
    pub(super) fn commit(
        &mut self,
        change: impl FnOnce(&mut RemediationRequestStatus) -> Option<Transition>,
        advance: bool,
    ) -> Result<(), ActorProcessingErr> {
        self.commit_then(change, advance, None)
    }

    /// [`Self::commit`], with `then` happening once the status is written
    /// (an acknowledgement, a stop): whether the write may linger is
    /// decided with it.
    pub(super) fn commit_then(
        &mut self,
        change: impl FnOnce(&mut RemediationRequestStatus) -> Option<Transition>,
        advance: bool,
        then: Option<Effect>,
    ) -> Result<(), ActorProcessingErr> {
        let mut next = self.current().clone();
        let from = next.phase;
        let t = change(&mut next);
        let mut fresh = false;
        if let Some(t) = &t {
            transitions::enter(&mut next, t, &self.clock())?;
            if next.phase == Phase::Executing && next.execution.is_none() {
                // The plan goes with the phase (K-EX-1), and with them this
                // replica's claim: the workflow may start at once, its
                // steps acting only once a write carrying all of it lands.
                next.execution = super::stages::execution::plan(&next, &self.spec.target);
                self.fresh_plan = !self.releasing;
                fresh = true;
            }
        }
        next.owner = (!self.releasing).then(|| self.ctx.identity.clone());
        self.seq += 1;
        match t {
            Some(t) => {
                // Executing runs ahead only on the plan just made.
                let ahead = super::runs_ahead(t.to, fresh);
                self.effects
                    .push((self.seq, Effect::Entered { from, t, ahead }));
            }
            None if advance => self.effects.push((self.seq, Effect::Advance)),
            None => {}
        }
        if let Some(then) = then {
            self.effects.push((self.seq, then));
        }
        let linger = !self.releasing && !self.effects.iter().any(|(_, e)| e.waits());
        self.writer.want(self.seq, next.clone(), linger);
        self.desired = Some(Box::new(next));
        Ok(())
    }

    /// Edits the status without a phase change: step edits that arrive
    /// together are written together, latest state winning.
    pub(super) fn edit(&mut self, edit: impl FnOnce(&mut RemediationRequestStatus)) {
        self.edit_then(edit, None);
    }

    /// [`Self::edit`], with `then` happening once it is written.
    pub(super) fn edit_then(
        &mut self,
        edit: impl FnOnce(&mut RemediationRequestStatus),
        then: Option<Effect>,
    ) {
        // Cannot fail: no transition.
        let _ = self.commit_then(
            |s| {
                edit(s);
                None
            },
            false,
            then,
        );
    }

    pub(super) fn fail(
        &mut self,
        reason: Reason,
        message: String,
    ) -> Result<(), ActorProcessingErr> {
        tracing::warn!(reason = reason.as_str(), %message, "request failed");
        self.commit(
            |_| Some(Transition::new(Phase::Failed, reason, message)),
            false,
        )
    }

    pub(super) fn on_written(
        &mut self,
        myself: &ActorRef<Envelope<Msg>>,
        report: WriteReport,
    ) -> Result<(), ActorProcessingErr> {
        match report {
            WriteReport::Written { seq, status, .. } => {
                self.writer.written(seq);
                self.status = *status;
                // The claim is in the status now (or this replica is
                // handing the request over).
                self.fresh_plan = false;
                if seq >= self.seq {
                    self.desired = None;
                }
                self.retry = RETRY_BASE;
                let (due, later) = std::mem::take(&mut self.effects)
                    .into_iter()
                    .partition(|(s, _)| *s <= seq);
                self.effects = later;
                let (mut advance, mut stop) = (false, false);
                let mut entered = Vec::new();
                for (_, effect) in due {
                    match effect {
                        Effect::Ack(ack) => {
                            let _ = ack.send(());
                        }
                        Effect::Audit(rec) => self.audit(*rec),
                        Effect::Notify(n) => self.ctx.notifier.send(*n),
                        Effect::Entered { from, t, .. } => {
                            self.entered(from, &t);
                            entered.push((from, t));
                            advance = true;
                        }
                        Effect::Advance => advance = true,
                        Effect::Stop => stop = true,
                    }
                }
                if let Some((reason, note, warning)) = transitions_event(&entered) {
                    self.event(warning, reason, note, "Transition");
                }
                self.arm();
                if stop {
                    tracing::info!("handed over");
                    myself.stop(Some("handed over".into()));
                } else if advance {
                    self.me.tell(Msg::Advance);
                }
                Ok(())
            }
            WriteReport::Rejected { seq, error } => {
                if seq < self.seq {
                    // A newer status is on its way to the writer.
                    return Ok(());
                }
                let refused = self.desired.take().map(|s| s.phase);
                // What waited for it never happens (dropped acks stop steps).
                self.effects.clear();
                self.fresh_plan = false;
                tracing::error!(%error, "the API server refused the request's status");
                // Retrying cannot help, and the request would stay stuck.
                // Failing it writes only the phase, which the server accepts.
                if refused != Some(Phase::Failed) && !self.status.phase.is_terminal() {
                    let message = format!("the API server refused the request's status: {error}");
                    return self.fail(Reason::StatusRejected, message);
                }
                self.retry_later(error);
                Ok(())
            }
            WriteReport::Lost(owner) => {
                self.relinquish(&format!("replica {owner} drives this request now"), myself);
                Ok(())
            }
            WriteReport::Gone => {
                self.relinquish("the request was deleted", myself);
                Ok(())
            }
        }
    }

    /// A phase change is written: counted, logged, audited.
    pub(super) fn entered(&mut self, from: Phase, t: &Transition) {
        let to = t.to;
        self.ctx
            .metrics
            .transitions
            .get_or_create(&TransitionLabels {
                from: from.as_str(),
                to: to.as_str(),
            })
            .inc();
        tracing::info!(%from, %to, reason = t.reason.as_str(), message = %t.message, "phase transition");
        self.audit_request(to);
        self.audit_event(
            "transition",
            Some(from),
            Some(to),
            t.reason.as_str(),
            "",
            serde_json::json!({ "message": t.message, "replica": self.ctx.identity }),
        );
        self.counted.set(to);
        if to == Phase::Failed {
            let message = if t.message.is_empty() {
                format!("{from} -> {to}")
            } else {
                format!("{from} -> {to}: {}", t.message)
            };
            // A failure is an escalation (K-NT-1), whatever failed. Where a
            // stage already told people (an ineffective fix, an expired
            // approval), the notifier's repeat suppression keeps it to one
            // message.
            self.notify(
                kubernaut_notify::Kind::Escalation,
                message.clone(),
                serde_json::json!({"message": message, "reason": t.reason.as_str()}),
            );
        }
    }
}

/// The one Event for the transitions a status write recorded (people care
/// about where a request went and why, not about each write's steps): the
/// last transition's reason, and the path with every message.
fn transitions_event(entered: &[(Phase, Transition)]) -> Option<(&'static str, String, bool)> {
    let (first, last) = (entered.first()?, entered.last()?);
    let mut note = first.0.to_string();
    for (_, t) in entered {
        note.push_str(" -> ");
        note.push_str(t.to.as_str());
    }
    for (_, t) in entered.iter().filter(|(_, t)| !t.message.is_empty()) {
        note.push_str("; ");
        note.push_str(t.to.as_str());
        note.push_str(": ");
        note.push_str(&t.message);
    }
    let warning = entered
        .iter()
        .any(|(_, t)| matches!(t.to, Phase::Failed | Phase::TimedOut));
    Some((last.1.reason.as_str(), note, warning))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kubernaut_api::{Phase, RemediationRequest};
    use tokio::sync::mpsc;

    use super::*;
    use crate::ports::doubles::{FakeRequests, api_error, request};

    #[test]
    fn the_transitions_written_together_are_one_event() {
        let t = |to, reason, message: &str| Transition::new(to, reason, message.to_string());
        let written = [
            (Phase::Pending, t(Phase::Processing, Reason::Started, "")),
            (Phase::Processing, t(Phase::Analyzing, Reason::Enriched, "")),
            (
                Phase::Analyzing,
                t(
                    Phase::Executing,
                    Reason::ActionChosen,
                    "rule chose notify_only",
                ),
            ),
        ];
        let (reason, note, warning) = transitions_event(&written).unwrap();
        assert_eq!(reason, Reason::ActionChosen.as_str());
        assert_eq!(
            note,
            "Pending -> Processing -> Analyzing -> Executing; Executing: rule chose notify_only"
        );
        assert!(!warning);
        let failed = [(
            Phase::Executing,
            t(Phase::Failed, Reason::StatusRejected, "refused"),
        )];
        let (_, note, warning) = transitions_event(&failed).unwrap();
        assert_eq!(note, "Executing -> Failed; Failed: refused");
        assert!(warning, "a failure is a Warning");
        assert!(transitions_event(&[]).is_none(), "no transition, no Event");
    }

    fn key() -> RequestKey {
        RequestKey::new("shop", "r")
    }

    fn target(rv: &str) -> Target {
        Target {
            key: key(),
            identity: "me".into(),
            resource_version: rv.into(),
            owner: Some("me".into()),
            loaded: 0,
            linger: LINGER,
        }
    }

    fn status(phase: Phase) -> RemediationRequestStatus {
        RemediationRequestStatus {
            phase,
            owner: Some("me".into()),
            ..Default::default()
        }
    }

    /// The request as the API server has it now: `rv`, owned by `owner`.
    fn stored(rv: &str, owner: &str) -> RemediationRequest {
        let mut rr = request(serde_json::json!({"phase": "Processing", "owner": owner}));
        rr.metadata.resource_version = Some(rv.into());
        rr
    }

    /// A writer over `requests`, its reports in a channel.
    fn writer(
        requests: Arc<FakeRequests>,
        t: Target,
    ) -> (
        watch::Sender<Option<Wanted>>,
        mpsc::UnboundedReceiver<WriteReport>,
        Task,
    ) {
        let metrics = crate::Metrics::register(&mut Default::default()).writes();
        let (tx, rx) = watch::channel(None);
        let (out, reports) = mpsc::unbounded_channel();
        let task = Task::spawn(run(requests, metrics, t, rx, move |r| {
            let _ = out.send(r);
        }));
        (tx, reports, task)
    }

    fn want(tx: &watch::Sender<Option<Wanted>>, seq: u64, status: RemediationRequestStatus) {
        tx.send_replace(Some(Wanted {
            seq,
            status: Box::new(status),
            linger: false,
        }));
    }

    fn linger(tx: &watch::Sender<Option<Wanted>>, seq: u64, status: RemediationRequestStatus) {
        tx.send_replace(Some(Wanted {
            seq,
            status: Box::new(status),
            linger: true,
        }));
    }

    /// Processing and Analyzing, wanted one after the other with nothing
    /// waiting for them, then Executing: one write, of Executing.
    #[tokio::test(start_paused = true)]
    async fn lingering_statuses_go_out_with_the_one_that_follows() {
        let fake = Arc::new(FakeRequests::default());
        let (tx, mut reports, _task) = writer(fake.clone(), target("rv0"));
        linger(&tx, 1, status(Phase::Processing));
        tokio::time::sleep(Duration::from_millis(20)).await;
        linger(&tx, 2, status(Phase::Analyzing));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(fake.applied.lock().unwrap().is_empty(), "still lingering");
        want(&tx, 3, status(Phase::Executing));
        let Some(WriteReport::Written { seq, .. }) = reports.recv().await else {
            panic!("not written")
        };
        assert_eq!(seq, 3);
        let phases: Vec<Phase> = fake
            .applied
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| s.phase)
            .collect();
        assert_eq!(phases, [Phase::Executing]);
    }

    /// A lingering status with nothing after it is written once the linger
    /// is over, not held back for ever.
    #[tokio::test(start_paused = true)]
    async fn a_lingering_status_alone_is_written_after_the_linger() {
        let fake = Arc::new(FakeRequests::default());
        let (tx, mut reports, _task) = writer(fake.clone(), target("rv0"));
        let asked = tokio::time::Instant::now();
        linger(&tx, 1, status(Phase::Analyzing));
        let Some(WriteReport::Written { seq, .. }) = reports.recv().await else {
            panic!("not written")
        };
        assert_eq!(seq, 1);
        assert!(asked.elapsed() >= LINGER, "{:?}", asked.elapsed());
        assert!(asked.elapsed() < LINGER * 2, "{:?}", asked.elapsed());
    }

    /// Once written, the writer holds no copy of the status; a newer one
    /// still to be written stays.
    #[tokio::test(start_paused = true)]
    async fn a_written_status_is_not_kept_twice() {
        let fake = Arc::new(FakeRequests::default());
        let (tx, mut reports, _task) = writer(fake.clone(), target("rv0"));
        want(&tx, 1, status(Phase::Processing));
        let Some(WriteReport::Written { seq: 1, .. }) = reports.recv().await else {
            panic!("not written")
        };
        linger(&tx, 2, status(Phase::Analyzing));
        let_go(&tx, 1);
        assert_eq!(tx.borrow().as_ref().map(|w| w.seq), Some(2), "newer stays");
        let Some(WriteReport::Written { seq: 2, .. }) = reports.recv().await else {
            panic!("not written")
        };
        let_go(&tx, 2);
        assert!(tx.borrow().is_none());
        want(&tx, 3, status(Phase::Executing));
        assert!(matches!(
            reports.recv().await,
            Some(WriteReport::Written { seq: 3, .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_answers_with_the_new_resource_version_and_bases_the_next_on_it() {
        let fake = Arc::new(FakeRequests::default());
        let (tx, mut reports, _task) = writer(fake.clone(), target("rv0"));
        want(&tx, 1, status(Phase::Processing));
        let Some(WriteReport::Written {
            seq,
            resource_version,
            ..
        }) = reports.recv().await
        else {
            panic!("not written")
        };
        assert_eq!((seq, resource_version.as_str()), (1, "rv1"));
        want(&tx, 2, status(Phase::Analyzing));
        assert!(matches!(
            reports.recv().await,
            Some(WriteReport::Written { seq: 2, .. })
        ));
        let bases: Vec<String> = fake
            .applied
            .lock()
            .unwrap()
            .iter()
            .map(|(_, rv)| rv.clone())
            .collect();
        assert_eq!(bases, ["rv0", "rv1"], "each write names the version it saw");
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_with_no_new_owner_is_written_again_on_the_version_read() {
        let fake = Arc::new(FakeRequests::default());
        fake.objects
            .lock()
            .unwrap()
            .insert(key(), stored("rv7", "me"));
        fake.apply_answers
            .lock()
            .unwrap()
            .push_back(Err(api_error(409)));
        let (tx, mut reports, _task) = writer(fake.clone(), target("rv0"));
        want(&tx, 1, status(Phase::Processing));
        assert!(matches!(
            reports.recv().await,
            Some(WriteReport::Written { seq: 1, .. })
        ));
        let applied = fake.applied.lock().unwrap();
        assert_eq!(applied.len(), 2);
        assert_eq!(applied[1].1, "rv7");
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_with_another_replica_as_owner_loses_the_request() {
        let fake = Arc::new(FakeRequests::default());
        fake.objects
            .lock()
            .unwrap()
            .insert(key(), stored("rv7", "other"));
        fake.apply_answers
            .lock()
            .unwrap()
            .push_back(Err(api_error(409)));
        let (tx, mut reports, task) = writer(fake.clone(), target("rv0"));
        want(&tx, 1, status(Phase::Processing));
        assert!(matches!(reports.recv().await, Some(WriteReport::Lost(o)) if o == "other"));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(task.is_finished(), "a writer that lost its request stops");
        assert_eq!(fake.applied.lock().unwrap().len(), 1, "not written again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_status_is_reported_and_the_next_one_still_written() {
        let fake = Arc::new(FakeRequests::default());
        fake.objects
            .lock()
            .unwrap()
            .insert(key(), stored("rv0", "me"));
        fake.apply_answers
            .lock()
            .unwrap()
            .push_back(Err(api_error(422)));
        let (tx, mut reports, _task) = writer(fake.clone(), target("rv0"));
        want(&tx, 1, status(Phase::Processing));
        assert!(matches!(
            reports.recv().await,
            Some(WriteReport::Rejected { seq: 1, .. })
        ));
        want(&tx, 2, status(Phase::Failed));
        assert!(matches!(
            reports.recv().await,
            Some(WriteReport::Written { seq: 2, .. })
        ));
    }

    /// Two replicas that both believed they owned a request (one had not
    /// yet seen the other join): the API server refused the late one's
    /// apply as invalid, merged with the other's newer status. That is a
    /// conflict lost, not a status to fail the request over.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_of_a_write_based_on_an_old_version_is_a_conflict() {
        let fake = Arc::new(FakeRequests::default());
        fake.objects
            .lock()
            .unwrap()
            .insert(key(), stored("rv7", "other"));
        fake.apply_answers
            .lock()
            .unwrap()
            .push_back(Err(api_error(422)));
        let mut t = target("rv0");
        t.owner = None;
        let (tx, mut reports, _task) = writer(fake.clone(), t);
        want(&tx, 1, status(Phase::Executing));
        assert!(matches!(reports.recv().await, Some(WriteReport::Lost(o)) if o == "other"));
        assert_eq!(fake.applied.lock().unwrap().len(), 1, "not written again");
    }

    /// Adopted from "old", believed gone: the gateway's counts do not stop
    /// the takeover, but "old" driving the request on does.
    #[tokio::test(start_paused = true)]
    async fn an_adopted_request_is_lost_when_its_old_owner_drives_it_on() {
        let loaded = stored("rv3", "old");
        for (now, lost) in [("Processing", false), ("Analyzing", true)] {
            let fake = Arc::new(FakeRequests::default());
            let mut counted = request(serde_json::json!({"phase": now, "owner": "old",
                    "deduplication": {"occurrenceCount": 3, "firstSeenAt": "2026-12-01T00:00:00Z",
                                      "lastSeenAt": "2026-12-01T00:00:01Z"}}));
            counted.metadata.resource_version = Some("rv4".into());
            fake.objects.lock().unwrap().insert(key(), counted);
            fake.apply_answers
                .lock()
                .unwrap()
                .push_back(Err(api_error(409)));
            let mut t = target("rv3");
            t.owner = Some("old".into());
            t.loaded = driven_mark(loaded.status.as_ref());
            let (tx, mut reports, _task) = writer(fake.clone(), t);
            want(&tx, 1, status(Phase::Analyzing));
            let report = reports.recv().await;
            if lost {
                assert!(
                    matches!(report, Some(WriteReport::Lost(ref o)) if o == "old"),
                    "{report:?}"
                );
            } else {
                assert!(
                    matches!(report, Some(WriteReport::Written { .. })),
                    "{report:?}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_request_is_gone() {
        let fake = Arc::new(FakeRequests::default());
        fake.apply_answers
            .lock()
            .unwrap()
            .push_back(Err(api_error(404)));
        let (tx, mut reports, _task) = writer(fake, target("rv0"));
        want(&tx, 1, status(Phase::Processing));
        assert!(matches!(reports.recv().await, Some(WriteReport::Gone)));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_transient_failure_the_newest_wanted_status_is_written_not_the_old() {
        let fake = Arc::new(FakeRequests::default());
        {
            let mut answers = fake.apply_answers.lock().unwrap();
            answers.push_back(Err(api_error(503)));
            answers.push_back(Err(api_error(503)));
        }
        let (tx, mut reports, _task) = writer(fake.clone(), target("rv0"));
        want(&tx, 1, status(Phase::Processing));
        while fake.applied.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        want(&tx, 2, status(Phase::Analyzing));
        let Some(WriteReport::Written { seq, status, .. }) = reports.recv().await else {
            panic!("not written")
        };
        assert_eq!((seq, status.phase), (2, Phase::Analyzing));
        assert!(
            reports.try_recv().is_err(),
            "status 1 is never reported written"
        );
        let last = fake.applied.lock().unwrap().last().unwrap().0.phase;
        assert_eq!(last, Phase::Analyzing);
    }
}

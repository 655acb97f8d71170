//! The janitor (K-RR-9): it deletes terminal requests once their
//! `retentionExpiryTime` has passed, and only after the audit trail in
//! PostgreSQL holds the request in its final phase: the cluster's copy is
//! never the last one. While PostgreSQL cannot answer, nothing is deleted;
//! the request waits for the next sweep (counted as deferred).
//!
//! It also makes sure the audit trail has every terminal request it owns:
//! `audit_grace` after a request ended, a final record that is not in
//! PostgreSQL (the replica that drove it died with records still queued)
//! is rebuilt from the status ([`crate::backfill`]). It first waits for its
//! own replica's writer to settle what was queued by then: a rebuilt record
//! names no replica and takes the place of the real one (the trail keeps
//! one record per transition), so rebuilding what this replica's slow
//! writer still holds would lose who drove the request.
//!
//! The registry tells it of every terminal request the watch shows, of
//! deletions, and of the live replicas. Each replica sweeps only the
//! requests rendezvous hashing gives it, so replicas never race to delete
//! one request; a request of a dead replica moves with the membership.
//! Deletes name the uid and resourceVersion the decision was made on.
//! A sweep runs as a task that reports back, so the janitor takes the
//! registry's messages while PostgreSQL or the API server is slow.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kubernaut_api::k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubernaut_api::{Phase, RemediationRequest, RequestKey, StepPhase};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::Context;
use crate::mailbox::{Addr, Envelope, Inbox};
use crate::metrics::{ActorKind, ReasonLabels};
use crate::ports::{AuditTrail, Requests};
use crate::tasks::{Task, Timers};

/// At most this many deletions per sweep, so a backlog (after an outage of
/// PostgreSQL, or a first start) does not flood the API server; the next
/// sweep follows at once.
const SWEEP_BATCH: usize = 200;
const BACKLOG_PAUSE: Duration = Duration::from_secs(1);

/// A terminal request and when it may go.
#[derive(Clone, Debug)]
pub struct Ended {
    uid: String,
    resource_version: String,
    phase: Phase,
    completed: Timestamp,
    expires: Timestamp,
    /// Steps the status records as settled: each has its end in the audit
    /// trail once the request is fully audited.
    steps: usize,
    /// The audit trail was found to hold it (or was backfilled).
    audited: bool,
    /// This replica's audit queue mark when the grace ran out: the trail
    /// is checked once the writer has settled up to it.
    audit_mark: Option<u64>,
}

impl Ended {
    /// The retention of a terminal request: its recorded expiry, else its
    /// completion plus `retention`. `None` for a live request.
    pub fn of(rr: &RemediationRequest, retention: Duration) -> Option<(RequestKey, Ended)> {
        let status = rr.status.as_ref()?;
        if !status.phase.is_terminal() || rr.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let retention = SignedDuration::try_from(retention).ok()?;
        let (completed, expires) = match (&status.completion_time, &status.retention_expiry_time) {
            (Some(done), Some(t)) => (done.0, t.0),
            (Some(done), None) => (done.0, done.0.checked_add(retention).ok()?),
            (None, Some(t)) => (t.0.checked_sub(retention).ok()?, t.0),
            (None, None) => return None,
        };
        let key = RequestKey::new(
            rr.metadata.namespace.clone().unwrap_or_default(),
            rr.metadata.name.clone().unwrap_or_default(),
        );
        Some((
            key,
            Ended {
                uid: rr.metadata.uid.clone().unwrap_or_default(),
                resource_version: rr.metadata.resource_version.clone().unwrap_or_default(),
                phase: status.phase,
                completed,
                expires,
                steps: status.execution.as_ref().map_or(0, |e| {
                    e.steps
                        .iter()
                        .filter(|s| !matches!(s.phase, StepPhase::Pending | StepPhase::Running))
                        .count()
                }),
                audited: false,
                audit_mark: None,
            },
        ))
    }

    /// Notes the audit queue's mark `queued` once the grace after the
    /// request's end has run out.
    fn mark_after_grace(&mut self, now: Timestamp, grace: SignedDuration, queued: u64) {
        if !self.audited && self.completed.checked_add(grace).is_ok_and(|t| t <= now) {
            self.audit_mark.get_or_insert(queued);
        }
    }

    /// Due for the audit check: not found audited yet, and this replica's
    /// writer has `settled` every record queued before the mark.
    fn audit_due(&self, settled: u64) -> bool {
        !self.audited && self.audit_mark.is_some_and(|mark| mark <= settled)
    }
}

pub enum Msg {
    Ended(RequestKey, Ended),
    Gone(RequestKey),
    Members(Vec<String>),
    Sweep,
    /// A sweep's task finished.
    Swept(Swept),
}

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Found in the audit trail, or backfilled.
    audited: Vec<RequestKey>,
    deleted: Vec<RequestKey>,
    /// More was due than one batch took.
    more: bool,
}

pub struct Janitor;

pub struct State {
    ctx: Arc<Context>,
    inbox: Inbox,
    _live: crate::mailbox::Live,
    me: Addr<Msg>,
    ended: HashMap<RequestKey, Ended>,
    members: Option<Vec<String>>,
    timers: Timers,
    /// The sweep under way: the janitor goes on taking messages meanwhile.
    sweeping: Option<Task>,
}

pub async fn start(
    ctx: Arc<Context>,
    parent: Option<ractor::ActorCell>,
) -> Result<(Addr<Msg>, ractor::ActorCell), ractor::SpawnErr> {
    let inbox = Inbox::new(&ctx.metrics, ActorKind::janitor);
    let (actor, _) = match parent {
        Some(p) => Actor::spawn_linked(None, Janitor, (ctx, inbox.clone()), p).await?,
        None => Actor::spawn(None, Janitor, (ctx, inbox.clone())).await?,
    };
    let cell = actor.get_cell();
    Ok((inbox.addr(actor), cell))
}

impl Actor for Janitor {
    type Msg = Envelope<Msg>;
    type State = State;
    type Arguments = (Arc<Context>, Inbox);

    async fn pre_start(
        &self,
        myself: ActorRef<Envelope<Msg>>,
        (ctx, inbox): (Arc<Context>, Inbox),
    ) -> Result<State, ActorProcessingErr> {
        let live = inbox.started();
        let me = inbox.addr(myself);
        let mut timers = Timers::default();
        timers.after(&me, ctx.settings.janitor_interval, Msg::Sweep);
        Ok(State {
            ctx,
            me,
            inbox,
            _live: live,
            ended: HashMap::new(),
            members: None,
            timers,
            sweeping: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Envelope<Msg>>,
        env: Envelope<Msg>,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        let (msg, _handling) = st.inbox.open(env);
        match msg {
            Msg::Ended(key, mut ended) => {
                if let Some(known) = st.ended.get(&key)
                    && known.uid == ended.uid
                {
                    ended.audited = known.audited;
                    ended.audit_mark = known.audit_mark;
                }
                st.ended.insert(key, ended);
            }
            Msg::Gone(key) => {
                st.ended.remove(&key);
            }
            Msg::Members(m) => st.members = Some(m),
            Msg::Sweep => {
                if st.sweeping.as_ref().is_some_and(|t| !t.is_finished()) {
                    return Ok(());
                }
                let now = Timestamp::now();
                if let Ok(grace) = SignedDuration::try_from(st.ctx.settings.audit_grace) {
                    let queued = st.ctx.audit.queued();
                    for e in st.ended.values_mut() {
                        e.mark_after_grace(now, grace, queued);
                    }
                }
                let settled = st.ctx.audit.settled();
                let unchecked = mine(st, |e| e.audit_due(settled));
                let due = mine(st, |e| e.expires <= now);
                let (ctx, me) = (st.ctx.clone(), st.me.clone());
                st.sweeping = Some(Task::spawn(async move {
                    let ports = Ports {
                        requests: &ctx.cluster,
                        audit: &ctx.audit,
                        metrics: &ctx.metrics,
                    };
                    let swept = sweep(&ports, unchecked, due).await;
                    me.tell(Msg::Swept(swept));
                }));
            }
            Msg::Swept(swept) => {
                st.sweeping = None;
                for key in &swept.audited {
                    if let Some(known) = st.ended.get_mut(key) {
                        known.audited = true;
                    }
                }
                for key in &swept.deleted {
                    st.ended.remove(key);
                }
                let next = if swept.more {
                    BACKLOG_PAUSE
                } else {
                    st.ctx.settings.janitor_interval
                };
                st.timers.after(&st.me, next, Msg::Sweep);
            }
        }
        Ok(())
    }
}

/// The requests rendezvous gives this replica that `select` picks, oldest
/// first.
fn mine(st: &State, select: impl Fn(&Ended) -> bool) -> Vec<(RequestKey, Ended)> {
    let Some(members) = &st.members else {
        return Vec::new();
    };
    let mut picked: Vec<(RequestKey, Ended)> = st
        .ended
        .iter()
        .filter(|(_, e)| select(e))
        .filter(|(k, _)| {
            crate::shard::owner_of(&k.to_string(), members) == Some(st.ctx.identity.as_str())
        })
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect();
    picked.sort_by_key(|(_, e)| e.completed);
    picked
}

/// What a sweep works on: the requests, the audit trail, and the metrics
/// it counts in.
struct Ports<'a> {
    requests: &'a dyn Requests,
    audit: &'a dyn AuditTrail,
    metrics: &'a crate::Metrics,
}

/// Rebuilds the audit records of requests that ended `audit_grace` ago
/// and whose final record is not in PostgreSQL; the keys found or
/// rebuilt. `Err` when PostgreSQL cannot answer.
async fn backfill(
    ctx: &Ports<'_>,
    unchecked: Vec<(RequestKey, Ended)>,
) -> Result<Vec<RequestKey>, kubernaut_store::Error> {
    let mut audited = Vec::new();
    for (key, e) in unchecked.into_iter().take(SWEEP_BATCH) {
        // A replica killed with records queued loses them; if another
        // finished the request, its final phase is there but a step's end
        // may not be.
        if !ctx
            .audit
            .complete(&e.uid, e.phase.as_str(), e.steps)
            .await?
        {
            match ctx.requests.get(&key).await {
                Ok(Some(rr)) if rr.metadata.uid.as_deref() == Some(e.uid.as_str()) => {
                    tracing::warn!(namespace = %key.namespace, name = %key.name, "the audit trail lacks the request's final record; rebuilding it from the status");
                    for record in crate::backfill::records(&rr) {
                        if ctx.audit.record(record).await.is_err() {
                            return Ok(audited);
                        }
                    }
                    ctx.metrics.audit_backfilled.inc();
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(namespace = %key.namespace, name = %key.name, error = %err, "could not read a request to rebuild its audit records");
                    continue;
                }
            }
        }
        audited.push(key);
    }
    Ok(audited)
}

/// Backfills the audit trail, then deletes what is due and confirmed.
async fn sweep(
    ctx: &Ports<'_>,
    unchecked: Vec<(RequestKey, Ended)>,
    due: Vec<(RequestKey, Ended)>,
) -> Swept {
    let deferred = |reason| {
        ctx.metrics
            .retention_deferred
            .get_or_create(&ReasonLabels { reason })
            .inc();
    };
    let mut swept = Swept::default();
    match backfill(ctx, unchecked).await {
        Ok(audited) => swept.audited = audited,
        Err(err) => {
            tracing::warn!(error = %err, "the audit trail cannot be read; the janitor deletes nothing until it can");
            deferred("audit_unavailable");
            return swept;
        }
    }
    swept.more = due.len() > SWEEP_BATCH;
    for (key, e) in due.into_iter().take(SWEEP_BATCH) {
        match ctx.audit.confirmed(&e.uid, e.phase.as_str()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(namespace = %key.namespace, name = %key.name, phase = %e.phase, "retention expired, but the audit trail does not hold the request's final record yet; keeping it");
                deferred("unconfirmed");
                continue;
            }
            Err(err) => {
                // PostgreSQL is down: nothing can be confirmed this sweep.
                tracing::warn!(error = %err, "the audit trail cannot be read; the janitor deletes nothing until it can");
                deferred("audit_unavailable");
                swept.more = false;
                return swept;
            }
        }
        match ctx.requests.delete(&key, &e.uid, &e.resource_version).await {
            Ok(_) => {
                tracing::info!(namespace = %key.namespace, name = %key.name, phase = %e.phase, "retention expired and audit confirmed; request deleted");
                ctx.metrics.retention_deleted.inc();
                swept.deleted.push(key);
            }
            Err(err) => {
                // Changed since (a newer version follows from the watch),
                // or the API server is unavailable: the next sweep decides.
                tracing::warn!(namespace = %key.namespace, name = %key.name, error = %err, "could not delete an expired request");
                deferred("delete_failed");
            }
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ports::doubles::request;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn only_a_terminal_request_with_a_completion_time_has_a_retention() {
        assert!(Ended::of(&request(serde_json::json!({"phase": "Executing"})), DAY).is_none());
        assert!(
            Ended::of(&request(serde_json::json!({"phase": "Completed"})), DAY).is_none(),
            "no time to count from"
        );
        let rr = request(
            serde_json::json!({"phase": "Failed", "completionTime": "2026-11-22T04:00:00Z"}),
        );
        let (key, e) = Ended::of(&rr, DAY).unwrap();
        assert_eq!(key, RequestKey::new("shop", "r"));
        assert_eq!(
            (e.uid.as_str(), e.resource_version.as_str(), e.phase),
            ("u1", "7", Phase::Failed)
        );
        assert_eq!(e.expires.to_string(), "2026-11-23T04:00:00Z");
    }

    #[test]
    fn a_recorded_expiry_wins_and_settled_steps_are_counted_for_the_audit_check() {
        let rr = request(serde_json::json!({
            "phase": "Completed", "completionTime": "2026-11-22T04:00:00Z",
            "retentionExpiryTime": "2026-11-22T05:00:00Z",
            "execution": {"action": "a", "target": {"kind": "Deployment", "namespace": "shop", "name": "web"},
                          "targetUid": "x", "startedAt": "2026-11-22T03:30:00Z", "message": "",
                          "steps": [{"id": "one", "action": "a", "phase": "Succeeded"},
                                    {"id": "two", "action": "a", "phase": "Skipped"},
                                    {"id": "three", "action": "a", "phase": "Running"}]}
        }));
        let (_, e) = Ended::of(&rr, DAY).unwrap();
        assert_eq!(e.expires.to_string(), "2026-11-22T05:00:00Z");
        assert_eq!(e.steps, 2, "a running step has no end to look for");
    }

    #[test]
    fn the_audit_check_waits_for_the_grace_and_for_this_replicas_queue() {
        let rr = request(
            serde_json::json!({"phase": "Completed", "completionTime": "2026-11-22T04:00:00Z"}),
        );
        let (_, mut e) = Ended::of(&rr, DAY).unwrap();
        let grace = SignedDuration::from_secs(60);
        let within: Timestamp = "2026-11-22T04:00:59Z".parse().unwrap();
        e.mark_after_grace(within, grace, 10);
        assert!(!e.audit_due(u64::MAX), "within the grace: not checked");
        let after: Timestamp = "2026-11-22T04:01:00Z".parse().unwrap();
        e.mark_after_grace(after, grace, 10);
        assert!(
            !e.audit_due(9),
            "the writer still holds records queued before the grace ran out"
        );
        // A later sweep sees more queued; the mark stays where it was.
        e.mark_after_grace(after, grace, 500);
        assert!(e.audit_due(10));
        e.audited = true;
        assert!(!e.audit_due(10), "found once, never checked again");
    }

    mod sweeps {
        use std::sync::atomic::Ordering;

        use super::*;
        use crate::ports::doubles::{FakeAudit, FakeRequests};

        fn ended(uid: &str, phase: Phase, steps: usize) -> Ended {
            Ended {
                uid: uid.into(),
                resource_version: "7".into(),
                phase,
                completed: "2026-11-22T04:00:00Z".parse().unwrap(),
                expires: "2026-11-23T04:00:00Z".parse().unwrap(),
                steps,
                audited: false,
                audit_mark: None,
            }
        }

        /// `n` terminal requests `r0…`, stored in the fake API server.
        fn world(n: usize) -> (FakeRequests, Vec<(RequestKey, Ended)>) {
            let fake = FakeRequests::default();
            let mut due = Vec::new();
            for i in 0..n {
                let key = RequestKey::new("shop", format!("r{i}"));
                let mut rr = request(serde_json::json!({
                    "phase": "Completed", "completionTime": "2026-11-22T04:00:00Z"
                }));
                rr.metadata.name = Some(key.name.clone());
                rr.metadata.uid = Some(format!("u{i}"));
                fake.objects.lock().unwrap().insert(key.clone(), rr);
                due.push((key, ended(&format!("u{i}"), Phase::Completed, 0)));
            }
            (fake, due)
        }

        fn metrics() -> crate::Metrics {
            crate::Metrics::register(&mut Default::default())
        }

        /// One sweep over the doubles; what it did, and its metrics.
        async fn swept(
            requests: &FakeRequests,
            audit: &FakeAudit,
            unchecked: Vec<(RequestKey, Ended)>,
            due: Vec<(RequestKey, Ended)>,
        ) -> (Swept, crate::Metrics) {
            let metrics = metrics();
            let ports = Ports {
                requests,
                audit,
                metrics: &metrics,
            };
            (sweep(&ports, unchecked, due).await, metrics)
        }

        fn deferred(m: &crate::Metrics, reason: &'static str) -> u64 {
            m.retention_deferred
                .get_or_create(&ReasonLabels { reason })
                .get()
        }

        #[tokio::test]
        async fn an_expired_request_is_deleted_only_once_its_final_record_is_stored() {
            let (requests, due) = world(2);
            let audit = FakeAudit::default();
            audit
                .stored
                .lock()
                .unwrap()
                .insert("u0".into(), ("Completed".into(), 0));
            let (swept, m) = swept(&requests, &audit, Vec::new(), due).await;
            assert_eq!(swept.deleted, [RequestKey::new("shop", "r0")]);
            assert_eq!(
                *requests.deleted.lock().unwrap(),
                [RequestKey::new("shop", "r0")]
            );
            assert!(
                requests
                    .objects
                    .lock()
                    .unwrap()
                    .contains_key(&RequestKey::new("shop", "r1"))
            );
            assert_eq!(m.retention_deleted.get(), 1);
            assert_eq!(deferred(&m, "unconfirmed"), 1);
        }

        #[tokio::test]
        async fn while_the_audit_trail_cannot_answer_nothing_is_deleted() {
            let (requests, due) = world(3);
            let audit = FakeAudit::default();
            audit.down.store(true, Ordering::Relaxed);
            let (swept, m) = swept(&requests, &audit, Vec::new(), due).await;
            assert!(swept.deleted.is_empty() && !swept.more);
            assert!(requests.deleted.lock().unwrap().is_empty());
            assert_eq!(
                deferred(&m, "audit_unavailable"),
                1,
                "one sweep, deferred once"
            );
        }

        #[tokio::test]
        async fn one_sweep_deletes_at_most_a_batch_and_asks_for_the_next_at_once() {
            let (requests, due) = world(SWEEP_BATCH + 3);
            let audit = FakeAudit::default();
            for (_, e) in &due {
                audit
                    .stored
                    .lock()
                    .unwrap()
                    .insert(e.uid.clone(), ("Completed".into(), 0));
            }
            let (swept, _) = swept(&requests, &audit, Vec::new(), due).await;
            assert_eq!(swept.deleted.len(), SWEEP_BATCH);
            assert!(swept.more);
        }

        #[tokio::test]
        async fn a_missing_final_record_is_rebuilt_from_the_status_of_the_same_request_only() {
            let (requests, mut unchecked) = world(2);
            // r1 was deleted and created again: another object by that name.
            unchecked[1].1.uid = "an-older-uid".into();
            let audit = FakeAudit::default();
            let (swept, m) = swept(&requests, &audit, unchecked, Vec::new()).await;
            assert_eq!(swept.audited.len(), 2, "both need no further check");
            assert_eq!(m.audit_backfilled.get(), 1, "only r0 was rebuilt");
            let records = audit.records.lock().unwrap();
            assert!(!records.is_empty());
            assert!(records.iter().all(|r| format!("{r:?}").contains("u0")));
        }

        #[tokio::test]
        async fn a_request_whose_step_ends_are_missing_is_rebuilt_too() {
            let (requests, mut unchecked) = world(1);
            unchecked[0].1.steps = 2;
            let audit = FakeAudit::default();
            audit
                .stored
                .lock()
                .unwrap()
                .insert("u0".into(), ("Completed".into(), 1));
            let (_, m) = swept(&requests, &audit, unchecked, Vec::new()).await;
            assert_eq!(m.audit_backfilled.get(), 1);
        }
    }
}

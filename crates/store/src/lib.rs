//! Storage. [`index`] is the Redis signal index shared by gateway replicas.
//! This module is the audit trail in PostgreSQL (K-AU-1): one row per request and an
//! append-only event per transition or action. Writers hand records to an
//! [`AuditLog`], a bounded queue drained by one task, a transaction per
//! batch of what has queued up. The task retries a
//! write only while PostgreSQL is unavailable; a record it refuses for its
//! content goes to the `audit_dead_letters` table (counted), so that one
//! bad record never holds up the ones behind it. NUL characters, which
//! PostgreSQL's text and jsonb cannot hold, are replaced before writing. Actors hand records over with
//! [`AuditLog::try_record`], which never waits: when the queue is full the
//! record is dropped and counted ([`AuditLog::dropped`]), and the janitor's
//! backfill rebuilds a request's records from its status.

pub mod chain;
pub mod index;

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::mpsc;

/// Queue capacity: about a minute of a heavy storm's transitions. When full,
/// [`AuditLog::record`] waits and [`AuditLog::try_record`] drops.
const QUEUE_CAPACITY: usize = 10_000;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Records per transaction at most: a batch holds the chain's lock for a
/// few milliseconds, not long enough to hold up another replica's writer.
const BATCH: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the audit writer has stopped")]
    Closed,
    #[error("the audit queue is full")]
    Full,
}

impl Error {
    /// Whether the same write may succeed later: the database is
    /// unreachable, restarting, short of resources, or the transaction
    /// lost a race. Anything else (the record's own content, a constraint)
    /// fails again however often it is retried.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Db(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // SQLSTATE classes: 08 connection, 40 transaction
                // rollback, 53 insufficient resources, 55 object not in
                // prerequisite state (lock not available), 57 operator
                // intervention (shutdown), 58 system error.
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    matches!(c.get(..2), Some("08" | "40" | "53" | "55" | "57" | "58"))
                }),
                _ => false,
            },
            Error::Migrate(_) | Error::Full => false,
            Error::Closed => true,
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Db(_) => "db",
            Error::Migrate(_) => "migrate",
            Error::Closed => "closed",
            Error::Full => "full",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RequestRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub fingerprint: String,
    pub signal_name: String,
    pub severity: String,
    pub source: String,
    pub target_kind: String,
    pub target_namespace: String,
    pub target_name: String,
    pub phase: String,
    pub firing_time: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EventRecord {
    pub request_uid: String,
    pub at: DateTime<Utc>,
    /// `transition`, `action`, `decision`, `approval` or `escalation`.
    pub kind: &'static str,
    pub from_phase: Option<String>,
    pub to_phase: Option<String>,
    pub reason: String,
    /// What the event is about within the request (a workflow step's id);
    /// empty for the request itself.
    pub subject: String,
    pub detail: serde_json::Value,
}

impl AuditRecord {
    /// The request the record is about.
    pub fn request_uid(&self) -> &str {
        match self {
            AuditRecord::Request(r) => &r.uid,
            AuditRecord::Event(e) => &e.request_uid,
            AuditRecord::Outcome(o) => &o.request_uid,
        }
    }
}

/// A batch's events as columns, the arrays `audit_append_events` takes.
#[derive(Default)]
struct Events {
    uids: Vec<String>,
    ats: Vec<DateTime<Utc>>,
    kinds: Vec<&'static str>,
    froms: Vec<Option<String>>,
    tos: Vec<Option<String>>,
    reasons: Vec<String>,
    details: Vec<serde_json::Value>,
    keys: Vec<String>,
}

impl Events {
    fn push(&mut self, e: EventRecord) {
        self.keys.push(e.dedup_key());
        self.uids.push(e.request_uid);
        self.ats.push(e.at);
        self.kinds.push(e.kind);
        self.froms.push(e.from_phase);
        self.tos.push(e.to_phase);
        self.reasons.push(e.reason);
        self.details.push(e.detail);
    }
}

impl EventRecord {
    /// Re-recording an event (after a restart) never duplicates it; events
    /// about different subjects (steps) are different events.
    fn dedup_key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}{}{}",
            self.request_uid,
            self.kind,
            self.from_phase.as_deref().unwrap_or(""),
            self.to_phase.as_deref().unwrap_or(""),
            self.reason,
            if self.subject.is_empty() { "" } else { "|" },
            self.subject
        )
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum AuditRecord {
    /// Upserts the request row (its phase moves with it).
    Request(RequestRecord),
    Event(EventRecord),
    /// A verification's outcome, one per action that changed something.
    Outcome(OutcomeRecord),
}

/// What verification concluded of one action of a request (K-AU-2).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OutcomeRecord {
    pub request_uid: String,
    pub action: String,
    pub signal_name: String,
    pub target_kind: String,
    pub environment: String,
    /// `Effective`, `Ineffective` or `Inconclusive`.
    pub outcome: String,
    pub score: Option<f64>,
    pub components: serde_json::Value,
}

/// One action's record for an alert and target kind (K-AI-2).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PastOutcome {
    pub action: String,
    /// Recent finished requests that ran it whose outcome is known: failed,
    /// or verified Effective or Ineffective (Inconclusive ones say nothing).
    pub requests: i64,
    /// Of those, the ones verified Effective.
    pub effective: i64,
}

impl PastOutcome {
    /// The share of requests that worked, 0 to 1.
    pub fn effectiveness(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.effective as f64 / self.requests as f64
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    /// Applies the migrations this release has and the database lacks.
    /// Migrations newer than this release are left alone rather than
    /// refused: they only add, and during a rolling update an old replica
    /// that restarts meets the database the new ones have migrated.
    pub async fn migrate(&self) -> Result<()> {
        // Embedded from the workspace's `migrations/`.
        let mut migrator = sqlx::migrate!("../../migrations");
        migrator.set_ignore_missing(true);
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Writes one record, its text made storable first ([`storable`]).
    pub async fn write(&self, record: &AuditRecord) -> Result<()> {
        self.write_batch(std::slice::from_ref(record)).await
    }

    /// Writes `records` in one transaction: all of them or none, in three
    /// statements at most, whatever their number: the requests' rows
    /// (each request's last record: its newest phase), then the events in
    /// their order, then the outcomes. A batch with events takes the
    /// chain's lock once, for all of them, so the writers of other
    /// replicas wait for the lock once per batch rather than once per
    /// event; a round trip per statement rather than per record is what
    /// lets one writer keep up with a storm's transitions.
    pub async fn write_batch(&self, records: &[AuditRecord]) -> Result<()> {
        let mut requests: Vec<RequestRecord> = Vec::new();
        let mut events = Events::default();
        let mut outcomes: Vec<OutcomeRecord> = Vec::new();
        for record in records {
            match storable(record.clone()) {
                AuditRecord::Request(r) => match requests.iter_mut().find(|q| q.uid == r.uid) {
                    Some(q) => *q = r,
                    None => requests.push(r),
                },
                AuditRecord::Event(e) => events.push(e),
                AuditRecord::Outcome(o) => outcomes.push(o),
            }
        }
        let mut tx = self.pool.begin().await?;
        // One chain for all writers (replicas): the link to the last event
        // is taken under a lock held to the commit, so ids and links are in
        // the same order. Taken before any row lock, so that two writers
        // never wait for each other's locks in opposite orders.
        if !events.uids.is_empty() {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(chain::LOCK)
                .execute(&mut *tx)
                .await?;
        }
        if !requests.is_empty() {
            let column = |f: fn(&RequestRecord) -> &String| -> Vec<&str> {
                requests.iter().map(|r| f(r).as_str()).collect()
            };
            sqlx::query(
                "INSERT INTO remediation_requests (uid, namespace, name, fingerprint, signal_name, severity, source,
                   target_kind, target_namespace, target_name, phase, firing_time)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                   $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[])
                 ON CONFLICT (uid) DO UPDATE SET phase = EXCLUDED.phase, updated_at = now()",
            )
            .bind(column(|r| &r.uid))
            .bind(column(|r| &r.namespace))
            .bind(column(|r| &r.name))
            .bind(column(|r| &r.fingerprint))
            .bind(column(|r| &r.signal_name))
            .bind(column(|r| &r.severity))
            .bind(column(|r| &r.source))
            .bind(column(|r| &r.target_kind))
            .bind(column(|r| &r.target_namespace))
            .bind(column(|r| &r.target_name))
            .bind(column(|r| &r.phase))
            .bind(requests.iter().map(|r| r.firing_time).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        if !events.uids.is_empty() {
            sqlx::query("SELECT audit_append_events($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&events.uids)
                .bind(&events.ats)
                .bind(&events.kinds)
                .bind(&events.froms)
                .bind(&events.tos)
                .bind(&events.reasons)
                .bind(&events.details)
                .bind(&events.keys)
                .execute(&mut *tx)
                .await?;
        }
        for o in &outcomes {
            sqlx::query(
                "INSERT INTO remediation_outcomes
                   (request_uid, action, signal_name, target_kind, environment, outcome, score, components)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8)
                 ON CONFLICT (request_uid, action) DO UPDATE SET outcome = EXCLUDED.outcome,
                   score = EXCLUDED.score, components = EXCLUDED.components, recorded_at = now()",
            )
            .bind(&o.request_uid)
            .bind(&o.action)
            .bind(&o.signal_name)
            .bind(&o.target_kind)
            .bind(&o.environment)
            .bind(&o.outcome)
            .bind(o.score)
            .bind(&o.components)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Keeps a record PostgreSQL refused, with why.
    async fn dead_letter(&self, record: &AuditRecord, error: &str) -> Result<()> {
        let bytes = serde_json::to_vec(record).unwrap_or_default();
        sqlx::query(
            "INSERT INTO audit_dead_letters (request_uid, record, error) VALUES ($1, $2, $3)",
        )
        .bind(without_nul(record.request_uid().to_string()))
        .bind(bytes)
        .bind(without_nul(error.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Starts the writer task and returns the handle callers log through.
    pub fn audit_log(self) -> (AuditLog, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counts = Counts::default();
        let task = tokio::spawn(drain(self.clone(), rx, counts.clone()));
        (
            AuditLog {
                tx,
                store: self,
                counts,
            },
            task,
        )
    }
}

/// Cloneable handle to the audit writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditRecord>,
    store: Store,
    counts: Counts,
}

/// What the writer was given and what it did with it, since start.
#[derive(Clone, Default)]
struct Counts {
    /// Queued for the writer.
    queued: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Taken off the queue and settled: written, or kept as dead letters.
    settled: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Dropped because the queue was full.
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Refused by PostgreSQL for their content, kept as dead letters.
    dead_letters: prometheus_client::metrics::counter::Counter,
}

impl AuditLog {
    /// Queues `record`, waiting while the queue is full: for tools and
    /// tasks, never for an actor's handler (see [`AuditLog::try_record`]).
    pub async fn record(&self, record: AuditRecord) -> Result<()> {
        self.tx.send(record).await.map_err(|_| Error::Closed)?;
        self.counts.queued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Queues `record` without waiting. A full queue drops it and counts
    /// the drop: an actor must never stall behind PostgreSQL, and the
    /// janitor rebuilds a request's missing final records from its status.
    pub fn try_record(&self, record: AuditRecord) -> Result<()> {
        self.tx.try_send(record).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                Error::Full
            }
            mpsc::error::TrySendError::Closed(_) => Error::Closed,
        })?;
        self.counts.queued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Records dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// Records queued since start: a mark that [`AuditLog::settled`]
    /// passes once everything queued before it is written (the queue is
    /// first in, first out).
    pub fn queued(&self) -> u64 {
        self.counts.queued.load(Ordering::Relaxed)
    }

    /// Records the writer has settled since start: written to PostgreSQL,
    /// or kept as dead letters.
    pub fn settled(&self) -> u64 {
        self.counts.settled.load(Ordering::Relaxed)
    }

    /// Records PostgreSQL refused for their content, since start (each is
    /// a row of `audit_dead_letters`, or a log line when even that failed).
    pub fn dead_letters(&self) -> u64 {
        self.counts.dead_letters.get()
    }

    /// Registers the writer's metrics (`audit_dead_letters_total`, and
    /// `audit_backlog`, read at each scrape).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "audit_dead_letters",
            "Audit records PostgreSQL refused for their content, kept in the audit_dead_letters table",
            self.counts.dead_letters.clone(),
        );
        registry.register_collector(Box::new(Backlog(self.tx.clone())));
    }

    /// Whether the audit trail holds the request `uid` in `phase`: its
    /// final record is safely in PostgreSQL (K-RR-9). An error when
    /// PostgreSQL cannot say.
    pub async fn confirmed(&self, uid: &str, phase: &str) -> Result<bool> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT phase FROM remediation_requests WHERE uid = $1")
                .bind(uid)
                .fetch_optional(&self.store.pool)
                .await?;
        Ok(found.as_deref() == Some(phase))
    }

    /// Whether the audit trail holds the request `uid` in `phase` and the
    /// end of each of its `steps` settled steps: everything its status
    /// tells. An error when PostgreSQL cannot say.
    pub async fn complete(&self, uid: &str, phase: &str, steps: usize) -> Result<bool> {
        if !self.confirmed(uid, phase).await? {
            return Ok(false);
        }
        if steps == 0 {
            return Ok(true);
        }
        let ended: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT detail->>'id') FROM remediation_events
             WHERE request_uid = $1 AND kind = 'action' AND reason = 'StepFinished'",
        )
        .bind(uid)
        .fetch_one(&self.store.pool)
        .await?;
        Ok(ended >= steps as i64)
    }

    /// The recorded end of step `step` of request `uid` (its StepFinished
    /// detail: the step report, with the objects before and after).
    pub async fn step_finished(&self, uid: &str, step: &str) -> Result<Option<serde_json::Value>> {
        Ok(sqlx::query_scalar(
            "SELECT detail FROM remediation_events
             WHERE request_uid = $1 AND kind = 'action' AND reason = 'StepFinished' AND detail->>'id' = $2
             ORDER BY id LIMIT 1",
        )
        .bind(uid)
        .bind(step)
        .fetch_optional(&self.store.pool)
        .await?)
    }

    /// What remediations of `signal` on targets of `target_kind` did in
    /// the last `window_days` (K-AI-2): per action, how many finished requests ran it with a known outcome (failed, or
    /// verified Effective or Ineffective) and how many were Effective,
    /// most used first (callers keep the actions that change something).
    /// Reaching Completed is not success: only a verified
    /// outcome is; Inconclusive ones are left out.
    pub async fn history(
        &self,
        signal: &str,
        target_kind: &str,
        window_days: u32,
        limit: i64,
    ) -> Result<Vec<PastOutcome>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "WITH runs AS (
               SELECT DISTINCT r.uid, r.phase, e.detail->>'action' AS action
               FROM remediation_requests r
               JOIN remediation_events e ON e.request_uid = r.uid
               WHERE r.signal_name = $1 AND r.target_kind = $2
                 AND r.phase IN ('Completed', 'Failed', 'TimedOut')
                 AND r.updated_at > now() - make_interval(days => $3)
                 AND e.kind = 'action' AND e.reason = 'StepFinished'
                 AND e.detail->>'action' IS NOT NULL
             )
             SELECT action, requests, effective FROM (
               SELECT runs.action,
                      count(*) FILTER (WHERE o.outcome IN ('Effective', 'Ineffective')
                                          OR (o.outcome IS NULL AND runs.phase <> 'Completed')) AS requests,
                      count(*) FILTER (WHERE o.outcome = 'Effective') AS effective
               FROM runs
               LEFT JOIN remediation_outcomes o ON o.request_uid = runs.uid AND o.action = runs.action
               GROUP BY 1
             ) known
             WHERE requests > 0
             ORDER BY 2 DESC, 1 LIMIT $4",
        )
        .bind(signal)
        .bind(target_kind)
        .bind(i32::try_from(window_days).unwrap_or(i32::MAX))
        .bind(limit)
        .fetch_all(&self.store.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(action, requests, effective)| PastOutcome {
                action,
                requests,
                effective,
            })
            .collect())
    }

    /// Records waiting to be written (the audit backlog, K-OP-1).
    pub fn backlog(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// The audit queue's length, as a gauge read at scrape time.
#[derive(Debug)]
struct Backlog(mpsc::Sender<AuditRecord>);

impl prometheus_client::collector::Collector for Backlog {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::result::Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let waiting = self.0.max_capacity() - self.0.capacity();
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(waiting as i64);
        let metric = encoder.encode_descriptor(
            "audit_backlog",
            "Audit records queued and not yet written to PostgreSQL",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// Drains the queue a batch at a time: what queued up while the last
/// batch was written goes out in the next transaction.
async fn drain(store: Store, mut rx: mpsc::Receiver<AuditRecord>, counts: Counts) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        write_batch(&store, &batch, &counts).await;
        counts
            .settled
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
    }
}

/// Writes `batch`. A batch refused for its content is written again one
/// record at a time, in order (an event must follow its request row), so
/// that only the record at fault ends in `audit_dead_letters`.
async fn write_batch(store: &Store, batch: &[AuditRecord], counts: &Counts) {
    match write_retrying(store, batch).await {
        Ok(()) => {}
        Err(e) if batch.len() == 1 => dead_letter(store, &batch[0], &e, counts).await,
        Err(_) => {
            for record in batch {
                if let Err(e) = write_retrying(store, std::slice::from_ref(record)).await {
                    dead_letter(store, record, &e, counts).await;
                }
            }
        }
    }
}

/// Writes `records` in one transaction, waiting out an unavailable
/// database; the error is one that writing again would not mend.
async fn write_retrying(store: &Store, records: &[AuditRecord]) -> Result<()> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.write_batch(records).await {
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, records = records.len(), retry_in = ?backoff, "audit write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            done => return done,
        }
    }
}

async fn dead_letter(store: &Store, record: &AuditRecord, e: &Error, counts: &Counts) {
    counts.dead_letters.inc();
    let error = e.to_string();
    tracing::error!(%error, request = record.request_uid(), "PostgreSQL refused an audit record; keeping it in audit_dead_letters");
    if let Err(e) = store.dead_letter(record, &error).await {
        tracing::error!(error = %e, record = ?record, "could not keep a refused audit record either; it is in this log line only");
    }
}

/// The record with every NUL character in its text replaced by U+FFFD:
/// PostgreSQL's text and jsonb cannot hold NUL, and alert text is the
/// sender's to choose.
pub fn storable(record: AuditRecord) -> AuditRecord {
    match record {
        AuditRecord::Request(mut r) => {
            for field in [
                &mut r.uid,
                &mut r.namespace,
                &mut r.name,
                &mut r.fingerprint,
                &mut r.signal_name,
                &mut r.severity,
                &mut r.source,
                &mut r.target_kind,
                &mut r.target_namespace,
                &mut r.target_name,
                &mut r.phase,
            ] {
                *field = without_nul(std::mem::take(field));
            }
            AuditRecord::Request(r)
        }
        AuditRecord::Event(mut e) => {
            e.request_uid = without_nul(e.request_uid);
            e.from_phase = e.from_phase.map(without_nul);
            e.to_phase = e.to_phase.map(without_nul);
            e.reason = without_nul(e.reason);
            e.subject = without_nul(e.subject);
            e.detail = json_without_nul(e.detail);
            AuditRecord::Event(e)
        }
        AuditRecord::Outcome(mut o) => {
            for field in [
                &mut o.request_uid,
                &mut o.action,
                &mut o.signal_name,
                &mut o.target_kind,
                &mut o.environment,
                &mut o.outcome,
            ] {
                *field = without_nul(std::mem::take(field));
            }
            o.components = json_without_nul(o.components);
            AuditRecord::Outcome(o)
        }
    }
}

fn without_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

fn json_without_nul(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(without_nul(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(json_without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (without_nul(k), json_without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

//! Storage. [`index`] is the Redis signal index shared by gateway replicas.
//! This module is the audit trail in PostgreSQL (K-AU-1): one row per request and an
//! append-only event per transition or action. Writers hand records to an
//! [`AuditLog`], a bounded queue drained by one task that retries with
//! backoff while PostgreSQL is down. Actors hand records over with
//! [`AuditLog::try_record`], which never waits: when the queue is full the
//! record is dropped and counted ([`AuditLog::dropped`]), and the janitor's
//! backfill rebuilds a request's records from its status.

pub mod index;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::mpsc;

/// Migrations embedded from the workspace's `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Queue capacity: about a minute of a heavy storm's transitions. When full,
/// [`AuditLog::record`] waits and [`AuditLog::try_record`] drops.
const QUEUE_CAPACITY: usize = 10_000;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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

#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    pub request_uid: String,
    pub at: DateTime<Utc>,
    /// `transition` or `action`.
    pub kind: &'static str,
    pub from_phase: Option<String>,
    pub to_phase: Option<String>,
    pub reason: String,
    /// What the event is about within the request (a workflow step's id);
    /// empty for the request itself.
    pub subject: String,
    pub detail: serde_json::Value,
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

#[derive(Clone, Debug, PartialEq)]
pub enum AuditRecord {
    /// Upserts the request row (its phase moves with it).
    Request(RequestRecord),
    Event(EventRecord),
}

/// One action's record for an alert and target kind (K-AI-2).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PastOutcome {
    pub action: String,
    /// Finished requests that ran it.
    pub requests: i64,
    /// Of those, the ones verified to have worked.
    pub completed: i64,
}

impl PastOutcome {
    /// The share of requests that worked, 0 to 1.
    pub fn effectiveness(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.completed as f64 / self.requests as f64
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

    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn write(&self, record: &AuditRecord) -> Result<()> {
        match record {
            AuditRecord::Request(r) => {
                sqlx::query(
                    "INSERT INTO remediation_requests (uid, namespace, name, fingerprint, signal_name, severity, source,
                       target_kind, target_namespace, target_name, phase, firing_time)
                     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)
                     ON CONFLICT (uid) DO UPDATE SET phase = EXCLUDED.phase, updated_at = now()",
                )
                .bind(&r.uid)
                .bind(&r.namespace)
                .bind(&r.name)
                .bind(&r.fingerprint)
                .bind(&r.signal_name)
                .bind(&r.severity)
                .bind(&r.source)
                .bind(&r.target_kind)
                .bind(&r.target_namespace)
                .bind(&r.target_name)
                .bind(&r.phase)
                .bind(r.firing_time)
                .execute(&self.pool)
                .await?;
            }
            AuditRecord::Event(e) => {
                sqlx::query(
                    "INSERT INTO remediation_events (request_uid, at, kind, from_phase, to_phase, reason, detail, dedup_key)
                     VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (dedup_key) DO NOTHING",
                )
                .bind(&e.request_uid)
                .bind(e.at)
                .bind(e.kind)
                .bind(&e.from_phase)
                .bind(&e.to_phase)
                .bind(&e.reason)
                .bind(&e.detail)
                .bind(e.dedup_key())
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Starts the writer task and returns the handle callers log through.
    pub fn audit_log(self) -> (AuditLog, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let task = tokio::spawn(drain(self.clone(), rx));
        let dropped = std::sync::Arc::default();
        (
            AuditLog {
                tx,
                store: self,
                dropped,
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
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl AuditLog {
    /// Queues `record`, waiting while the queue is full: for tools and
    /// tasks, never for an actor's handler (see [`AuditLog::try_record`]).
    pub async fn record(&self, record: AuditRecord) -> Result<()> {
        self.tx.send(record).await.map_err(|_| Error::Closed)
    }

    /// Queues `record` without waiting. A full queue drops it and counts
    /// the drop: an actor must never stall behind PostgreSQL, and the
    /// janitor rebuilds a request's missing final records from its status.
    pub fn try_record(&self, record: AuditRecord) -> Result<()> {
        self.tx.try_send(record).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Error::Full
            }
            mpsc::error::TrySendError::Closed(_) => Error::Closed,
        })
    }

    /// Records dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
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

    /// What remediations of `signal` on targets of `target_kind` did
    /// before (K-AI-2): per action, how many finished requests ran it and
    /// how many of those were verified (Completed), most used first.
    pub async fn history(
        &self,
        signal: &str,
        target_kind: &str,
        limit: i64,
    ) -> Result<Vec<PastOutcome>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT e.detail->>'action' AS action,
                    count(DISTINCT r.uid) AS requests,
                    count(DISTINCT r.uid) FILTER (WHERE r.phase = 'Completed') AS completed
             FROM remediation_requests r
             JOIN remediation_events e ON e.request_uid = r.uid
             WHERE r.signal_name = $1 AND r.target_kind = $2
               AND r.phase IN ('Completed', 'Failed', 'TimedOut')
               AND e.kind = 'action' AND e.reason = 'StepFinished'
               AND e.detail->>'action' IS NOT NULL
             GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $3",
        )
        .bind(signal)
        .bind(target_kind)
        .bind(limit)
        .fetch_all(&self.store.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(action, requests, completed)| PastOutcome {
                action,
                requests,
                completed,
            })
            .collect())
    }

    /// Records waiting to be written (the audit backlog, K-OP-1).
    pub fn backlog(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

async fn drain(store: Store, mut rx: mpsc::Receiver<AuditRecord>) {
    while let Some(record) = rx.recv().await {
        let mut backoff = Duration::from_millis(100);
        // Records are written in order: an event must follow its request row.
        while let Err(e) = store.write(&record).await {
            tracing::warn!(error = %e, retry_in = ?backoff, "audit write failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

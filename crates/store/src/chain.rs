//! Tamper evidence for the audit trail (K-AU-1). Each event stores the hash
//! of the event before it and its own hash over that and its canonical
//! content (`audit_event_hash` in the migrations, so writer and verifier
//! use one definition); a trigger refuses UPDATE and DELETE. Whoever edits
//! or removes an event past the trigger (a database superuser) breaks the
//! chain there, and [`Store::verify_chain`] names the first broken link.
//! It cannot tell a chain rewritten from its start: anchor the latest hash
//! elsewhere (it is in every export) for that.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Result, Store};

/// The advisory lock that orders the chain's writers.
pub(crate) const LOCK: i64 = 0x6b75_626e_6175_7401;

/// Events read per query while walking the chain.
const PAGE: i64 = 5_000;

/// What a walk of the chain found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    /// Events checked.
    pub checked: u64,
    /// The last good hash: the chain's head when intact.
    pub head: String,
    pub broken: Option<BrokenLink>,
}

/// The first event whose link does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenLink {
    pub id: i64,
    pub request_uid: String,
    pub reason: String,
    /// `content`: the event is not what was hashed; `link`: it does not
    /// follow the event before it (one was removed or reordered).
    pub why: &'static str,
}

/// One event as exported.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ExportedEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub namespace: String,
    pub name: String,
    pub request_uid: String,
    pub kind: String,
    pub from_phase: Option<String>,
    pub to_phase: Option<String>,
    pub reason: String,
    pub detail: serde_json::Value,
    pub hash: String,
}

impl Store {
    /// Walks the whole chain in id order.
    pub async fn verify_chain(&self) -> Result<ChainReport> {
        let mut report = ChainReport {
            checked: 0,
            head: String::new(),
            broken: None,
        };
        let mut after = 0i64;
        loop {
            let rows: Vec<(i64, String, String, String, String, String)> = sqlx::query_as(
                "SELECT id, request_uid, reason, prev_hash, hash,
                        audit_event_hash(prev_hash, request_uid, at, kind, from_phase, to_phase,
                                         reason, detail, dedup_key)
                 FROM remediation_events WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(PAGE)
            .fetch_all(self.pool())
            .await?;
            let Some(last) = rows.last() else {
                return Ok(report);
            };
            after = last.0;
            for (id, request_uid, reason, prev, hash, computed) in rows {
                let why = if prev != report.head {
                    Some("link")
                } else if hash != computed {
                    Some("content")
                } else {
                    None
                };
                if let Some(why) = why {
                    report.broken = Some(BrokenLink {
                        id,
                        request_uid,
                        reason,
                        why,
                    });
                    return Ok(report);
                }
                report.checked += 1;
                report.head = hash;
            }
        }
    }

    /// Events at or after `since`, of requests in `namespace` (all when
    /// `None`), in chain order, `PAGE` at a time through `out`.
    pub async fn export(
        &self,
        since: DateTime<Utc>,
        namespace: Option<&str>,
        mut out: impl FnMut(ExportedEvent) -> std::io::Result<()>,
    ) -> Result<u64> {
        let mut after = 0i64;
        let mut n = 0;
        loop {
            let rows: Vec<ExportedEvent> = sqlx::query_as(
                "SELECT e.id, e.at, r.namespace, r.name, e.request_uid, e.kind, e.from_phase,
                        e.to_phase, e.reason, e.detail, e.hash
                 FROM remediation_events e JOIN remediation_requests r ON r.uid = e.request_uid
                 WHERE e.id > $1 AND e.at >= $2 AND ($3::text IS NULL OR r.namespace = $3)
                 ORDER BY e.id LIMIT $4",
            )
            .bind(after)
            .bind(since)
            .bind(namespace)
            .bind(PAGE)
            .fetch_all(self.pool())
            .await?;
            let Some(last) = rows.last() else {
                return Ok(n);
            };
            after = last.id;
            for row in rows {
                out(row).map_err(|e| crate::Error::Db(sqlx::Error::Io(e)))?;
                n += 1;
            }
        }
    }
}

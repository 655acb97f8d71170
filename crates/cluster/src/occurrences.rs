//! The occurrence counter of duplicates (K-GW-5), written to
//! `status.deduplication` with group commit.
//!
//! A storm of duplicates for one request must not become a storm of
//! conflicting writes to one object: callers queue their occurrence, one
//! writer per request and process turns everything queued into a single
//! read-modify-write (optimistic concurrency on resourceVersion), and each
//! caller is answered only once the write that includes it has landed. Under
//! load that is one write per API round trip however many signals arrive,
//! and conflicts happen only between replicas.
//!
//! Where a count already has its place elsewhere (the intake's Redis
//! journal answers a duplicate at once and settles it here later),
//! [`Occurrences::settle`] writes it through the same writer: the status
//! records how many of its count the journal numbered (`journaled`) and
//! grows only by what the journal numbered beyond that, so settling is
//! idempotent, any replica may settle another's journal, and occurrences
//! counted here meanwhile are kept.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kubernaut_api::{Deduplication, ObjectRef, RemediationRequest, RequestKey};
use serde_json::json;
use tokio::sync::oneshot;

use crate::{Cluster, Error, Result, bounded};

/// Conflicts only come from other replicas' writers, so a few retries suffice.
const MAX_WRITE_ATTEMPTS: u32 = 10;

/// Which requests an occurrence may be counted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Require {
    /// Any state: a re-delivery of a signal instance is always a duplicate.
    Any,
    /// Only a request that has not ended: a new signal for a fingerprint
    /// whose request ended opens a new one.
    Open,
}

/// One occurrence, counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    pub count: i64,
    pub fingerprint: String,
}

struct Waiter {
    at: Timestamp,
    /// The instances this waiter brings, oldest first (one for a count).
    instances: Vec<String>,
    kind: Kind,
    reply: oneshot::Sender<Result<Option<Counted>, String>>,
}

enum Kind {
    /// One more occurrence, numbered by the write that includes it.
    Count {
        require: Require,
        /// On a storm request: the target this signal is about.
        storm_target: Option<ObjectRef>,
    },
    /// Occurrences numbered by the Redis journal: `journaled` of them in
    /// all (the count's share the status records as `journaled`).
    Settle { journaled: i64 },
}

impl Waiter {
    fn counts(&self) -> bool {
        matches!(self.kind, Kind::Count { .. })
    }
}

/// A key is present while its writer task runs; arrivals join its queue.
type Pending = Arc<Mutex<HashMap<RequestKey, Vec<Waiter>>>>;

#[derive(Clone)]
pub struct Occurrences {
    cluster: Cluster,
    pending: Pending,
    /// Set once the API server dropped `status.deduplication.journaled`
    /// from a write: the installed CRD predates it, and settling a journal
    /// would add its figure again on every write.
    journal_pruned: Arc<AtomicBool>,
}

impl Occurrences {
    pub fn new(cluster: Cluster) -> Self {
        Self {
            cluster,
            pending: Arc::default(),
            journal_pruned: Arc::default(),
        }
    }

    /// Whether the installed CRD keeps what settling a journal needs.
    pub fn journal_supported(&self) -> bool {
        !self.journal_pruned.load(Ordering::Relaxed)
    }

    /// Counts one occurrence of `instance` on `request`. `Ok(None)` when the
    /// request does not exist, or has ended and `require` is [`Require::Open`].
    pub async fn record(
        &self,
        request: &RequestKey,
        at: Timestamp,
        instance: &str,
        require: Require,
    ) -> Result<Option<Counted>> {
        self.record_on(request, at, instance, require, None).await
    }

    /// As [`Occurrences::record`]; on a storm request, also counts the signal
    /// against its target in `status.storm`.
    pub async fn record_on(
        &self,
        request: &RequestKey,
        at: Timestamp,
        instance: &str,
        require: Require,
        storm_target: Option<ObjectRef>,
    ) -> Result<Option<Counted>> {
        self.queue(
            request,
            at,
            vec![instance.to_string()],
            Kind::Count {
                require,
                storm_target,
            },
        )
        .await
    }

    /// Writes occurrences that the Redis journal numbered, `journaled` of
    /// them in all: the status's count grows by however many of them it
    /// does not hold yet (`journaled` records how many it holds), its last
    /// occurrence becomes at least `last_seen`, and `instances` (oldest
    /// first) are remembered. Returns the journal's figure as the status
    /// now holds it, `None` when the request does not exist. Applies to
    /// ended requests too: what was accepted is recorded.
    pub async fn settle(
        &self,
        request: &RequestKey,
        journaled: i64,
        last_seen: Timestamp,
        instances: Vec<String>,
    ) -> Result<Option<i64>> {
        Ok(self
            .queue(request, last_seen, instances, Kind::Settle { journaled })
            .await?
            .map(|c| c.count))
    }

    async fn queue(
        &self,
        request: &RequestKey,
        at: Timestamp,
        instances: Vec<String>,
        kind: Kind,
    ) -> Result<Option<Counted>> {
        let (reply, rx) = oneshot::channel();
        let waiter = Waiter {
            at,
            instances,
            kind,
            reply,
        };
        let start_writer = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            match pending.entry(request.clone()) {
                Entry::Occupied(mut e) => {
                    e.get_mut().push(waiter);
                    false
                }
                Entry::Vacant(e) => {
                    e.insert(vec![waiter]);
                    true
                }
            }
        };
        if start_writer {
            // A task of its own: the write completes even if this caller goes away.
            tokio::spawn(writer(
                self.cluster.clone(),
                self.pending.clone(),
                self.journal_pruned.clone(),
                request.clone(),
            ));
        }
        match rx.await {
            Ok(r) => r.map_err(Error::Occurrence),
            Err(_) => Err(Error::Occurrence("the counter's writer stopped".into())),
        }
    }
}

async fn writer(
    cluster: Cluster,
    pending: Pending,
    journal_pruned: Arc<AtomicBool>,
    request: RequestKey,
) {
    let api: Api<RemediationRequest> =
        Api::namespaced(cluster.client().clone(), &request.namespace);
    // What the last write returned: while arrivals keep this writer busy,
    // each batch is one PATCH on it rather than a GET and a PATCH (a
    // conflict, another replica's write, reads again).
    let mut last = None;
    loop {
        let batch = {
            let mut map = pending.lock().unwrap_or_else(PoisonError::into_inner);
            match map.get_mut(&request) {
                Some(w) if !w.is_empty() => std::mem::take(w),
                _ => {
                    map.remove(&request);
                    return;
                }
            }
        };
        let wrote_journal = batch.iter().any(|w| !w.counts());
        last = write_batch(&api, &request.name, batch, last.take()).await;
        let pruned = last.as_ref().is_some_and(|rr| {
            rr.status
                .as_ref()
                .and_then(|s| s.deduplication.as_ref())
                .is_some_and(|d| d.journaled.is_none() && d.occurrence_count > 1)
        }) && wrote_journal;
        if pruned && !journal_pruned.swap(true, Ordering::Relaxed) {
            tracing::error!(request = %request, "the installed RemediationRequest CRD drops status.deduplication.journaled: duplicates are now counted through the API server only; apply the CRD of this version (kubernaut crds)");
        }
    }
}

/// Writes one batch; returns the request as written, for the next batch.
async fn write_batch(
    api: &Api<RemediationRequest>,
    name: &str,
    batch: Vec<Waiter>,
    mut known: Option<RemediationRequest>,
) -> Option<RemediationRequest> {
    let mut last_err = String::new();
    for attempt in 0..MAX_WRITE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(jitter(attempt)).await;
        }
        let rr = match known.take() {
            Some(rr) => rr,
            None => match bounded(api.get_status(name)).await {
                Ok(rr) => rr,
                Err(e) if e.is_not_found() => return answer_all(batch, Ok(None)),
                Err(e) => return answer_all(batch, Err(e.to_string())),
            },
        };
        let ended = rr.phase().is_terminal();
        let countable = |w: &Waiter| match &w.kind {
            Kind::Count { require, .. } => !(ended && *require == Require::Open),
            Kind::Settle { .. } => true,
        };
        let n = batch.iter().filter(|w| countable(w) && w.counts()).count();
        let settled = batch
            .iter()
            .filter_map(|w| match w.kind {
                Kind::Settle { journaled } => Some(journaled),
                Kind::Count { .. } => None,
            })
            .max();
        if n == 0 && settled.is_none() {
            return answer_all(batch, Ok(None));
        }
        let prev = rr.status.as_ref().and_then(|s| s.deduplication.clone());
        // What the journal numbered beyond what the status holds of it: a
        // journal's figure written twice adds nothing the second time.
        let journaled_before = prev.as_ref().and_then(|d| d.journaled).unwrap_or(0);
        let journaled = settled.map(|j| j.max(journaled_before));
        let newly_journaled = journaled.map_or(0, |j| j - journaled_before);
        // A request whose first occurrence was never written has been seen
        // once.
        let base = prev.as_ref().map_or(1, |d| d.occurrence_count) + newly_journaled;
        let mut dedup = prev.unwrap_or_else(|| Deduplication {
            occurrence_count: 1,
            first_seen_at: rr.spec.received_time.clone(),
            last_seen_at: rr.spec.received_time.clone(),
            recent_instances: vec![rr.spec.instance_id.clone()],
            journaled: None,
        });
        if journaled.is_some() {
            dedup.journaled = journaled;
        }
        for w in batch.iter().filter(|w| countable(w)) {
            for i in &w.instances {
                dedup.remember(i);
            }
            if w.at > dedup.last_seen_at.0 {
                dedup.last_seen_at = Time(w.at);
            }
        }
        dedup.occurrence_count = base + n as i64;
        let unchanged = n == 0 && prev_equal(&rr, &dedup);
        if unchanged {
            // Settled already (by another replica): nothing to write.
            let counted = Counted {
                count: dedup.journaled.unwrap_or(0),
                fingerprint: rr.spec.fingerprint.clone(),
            };
            answer_all(batch, Ok(Some(counted)));
            return Some(rr);
        }
        let mut status = json!({ "deduplication": dedup });
        let storm_targets: Vec<&ObjectRef> = batch
            .iter()
            .filter(|w| countable(w))
            .filter_map(|w| match &w.kind {
                Kind::Count { storm_target, .. } => storm_target.as_ref(),
                Kind::Settle { .. } => None,
            })
            .collect();
        if !storm_targets.is_empty() {
            let mut storm = rr
                .status
                .as_ref()
                .and_then(|s| s.storm.clone())
                .unwrap_or_default();
            for t in storm_targets {
                storm.add(t);
            }
            status["storm"] = json!(storm);
        }
        let patch = json!({
            "metadata": { "resourceVersion": rr.metadata.resource_version },
            "status": status,
        });
        match bounded(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))).await
        {
            Ok(written) => {
                let fingerprint = rr.spec.fingerprint;
                let written_journaled = dedup.journaled.unwrap_or(0);
                let mut next = base;
                for w in batch {
                    let r = if !w.counts() {
                        Some(Counted {
                            count: written_journaled,
                            fingerprint: fingerprint.clone(),
                        })
                    } else if countable(&w) {
                        next += 1;
                        Some(Counted {
                            count: next,
                            fingerprint: fingerprint.clone(),
                        })
                    } else {
                        None
                    };
                    let _ = w.reply.send(Ok(r));
                }
                return Some(written);
            }
            Err(e) if e.is_conflict() => last_err = e.to_string(),
            Err(e) if e.is_not_found() => return answer_all(batch, Ok(None)),
            Err(e) => return answer_all(batch, Err(e.to_string())),
        }
    }
    answer_all(batch, Err(format!("write conflicts persisted: {last_err}")))
}

/// Whether the request's status already says what `dedup` would.
fn prev_equal(rr: &RemediationRequest, dedup: &Deduplication) -> bool {
    rr.status
        .as_ref()
        .and_then(|s| s.deduplication.as_ref())
        .is_some_and(|d| d == dedup)
}

/// Answers every waiter alike; nothing is known of the request afterwards.
fn answer_all(
    batch: Vec<Waiter>,
    r: Result<Option<Counted>, String>,
) -> Option<RemediationRequest> {
    for w in batch {
        let _ = w.reply.send(r.clone());
    }
    None
}

/// 5–25 ms, growing with the attempt: replicas that conflicted drift apart.
fn jitter(attempt: u32) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(u64::from(attempt.min(4) * 5 + nanos % 10))
}

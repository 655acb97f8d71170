//! Duplicates answered from the Redis journal (K-GW-5): with Redis
//! configured, a duplicate is numbered by a Redis script and answered at
//! once; its status write follows within [`SETTLE_EVERY`], one write per
//! request however many duplicates arrived meanwhile. Duplicates of one
//! request that arrive while a script call is in flight are numbered
//! together by the next one, so a stream of them costs Redis one call per
//! round trip rather than one per duplicate.
//!
//! A duplicate answered 2xx must end up counted on its request. It is held
//! in two places until its status write lands: in Redis (the journal's
//! count and the set of unsettled requests) and in this replica's memory.
//! So a replica that dies leaves its unsettled requests to any replica's
//! sweep of the set, and a Redis that loses its data leaves them to the
//! replica that numbered them. The status records how many of its
//! occurrences the journal numbered (`journaled`), and settling adds only
//! what the journal numbered beyond that: writing one twice, or from two
//! replicas, changes nothing, and occurrences counted meanwhile through
//! the API server (a replica without Redis) are not lost.
//!
//! Only duplicates of a request the intake's view knows, and that no storm
//! aggregates, take this path; the rest (and every duplicate while Redis
//! fails) wait for their status write as before.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use hashlink::LruCache;
use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{MAX_RECENT_INSTANCES, RequestKey};
use kubernaut_cluster::{Countable, Occurrences};
use kubernaut_store::index::{IndexError, IndexResult, Numbered, SignalIndex};
use tokio::sync::oneshot;

/// How long an answered duplicate may wait for its status write: the
/// lag `kubectl get` shows, and the most one write per request per
/// interval costs the API server.
pub const SETTLE_EVERY: Duration = Duration::from_millis(100);
/// How often each replica looks for requests other replicas left unsettled.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// How long a request stays unsettled before any replica settles it: well
/// past its own replica's next write, retries included.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// Requests settled at once (each is one status write).
const CONCURRENT_SETTLES: usize = 16;
/// Requests this replica tracks in memory. Beyond it, a request's
/// occurrences are still in Redis and the sweep settles them.
const MAX_TRACKED: usize = 100_000;

/// Instances remembered for resolutions that overtake their status write:
/// far more than arrive in a settle interval.
const RECENT_INSTANCES: usize = 10_000;

/// What this replica numbered on one request and has not written yet.
#[derive(Debug)]
struct Unsettled {
    /// Occurrences the journal numbered in all (as of this replica's last).
    numbered: i64,
    last: Timestamp,
    /// The newest instances, oldest first.
    instances: VecDeque<String>,
}

impl Unsettled {
    fn merge(&mut self, other: Unsettled) {
        self.numbered = self.numbered.max(other.numbered);
        self.last = self.last.max(other.last);
        for i in other.instances {
            self.remember(i);
        }
    }

    fn remember(&mut self, instance: String) {
        if !self.instances.contains(&instance) {
            self.instances.push_back(instance);
        }
        while self.instances.len() > MAX_RECENT_INSTANCES {
            self.instances.pop_front();
        }
    }
}

/// A duplicate waiting for its number.
struct Waiting {
    at: Timestamp,
    instance: String,
    reply: oneshot::Sender<IndexResult<i64>>,
}

#[derive(Clone)]
pub(crate) struct Journal {
    index: SignalIndex,
    occurrences: Occurrences,
    /// A key is present while its numbering task runs; arrivals queue.
    numbering: Arc<Mutex<HashMap<RequestKey, Vec<Waiting>>>>,
    /// The request of each instance numbered lately, for a resolution that
    /// arrives before the instance reaches its request's status (and so the
    /// intake's view). The mapping never changes, so entries need no
    /// removal; the bound keeps the newest.
    instances: Arc<Mutex<LruCache<String, RequestKey>>>,
    unsettled: Arc<Mutex<HashMap<RequestKey, Unsettled>>>,
}

/// The request's id in the journal.
fn id(key: &RequestKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

fn key_of(id: &str) -> Option<RequestKey> {
    let (ns, name) = id.split_once('/')?;
    Some(RequestKey::new(ns.to_string(), name.to_string()))
}

impl Journal {
    /// Starts the settling task (within a Tokio runtime); it runs as long as
    /// the runtime does.
    pub(crate) fn start(index: SignalIndex, occurrences: Occurrences) -> Self {
        let journal = Self {
            index,
            occurrences,
            numbering: Arc::default(),
            instances: Arc::new(Mutex::new(LruCache::new(RECENT_INSTANCES))),
            unsettled: Arc::default(),
        };
        let settler = journal.clone();
        tokio::spawn(async move {
            let mut settle = tokio::time::interval(SETTLE_EVERY);
            settle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = settle.tick() => settler.settle_now().await,
                    _ = sweep.tick() => settler.sweep().await,
                }
            }
        });
        journal
    }

    /// Numbers one occurrence of `key` and returns the duplicate's count;
    /// `known` is what the view last saw of the request. The error is
    /// Redis's: the caller counts through the API server instead.
    ///
    /// Duplicates of one request that arrive while a numbering is in flight
    /// wait for the next, which numbers them all with one script call.
    pub(crate) async fn count(
        &self,
        key: &RequestKey,
        known: &Countable,
        at: Timestamp,
        instance: &str,
    ) -> IndexResult<i64> {
        let (reply, rx) = oneshot::channel();
        let waiting = Waiting {
            at,
            instance: instance.to_string(),
            reply,
        };
        let lead = {
            let mut map = self
                .numbering
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match map.entry(key.clone()) {
                Entry::Occupied(mut e) => {
                    e.get_mut().push(waiting);
                    false
                }
                Entry::Vacant(e) => {
                    e.insert(vec![waiting]);
                    true
                }
            }
        };
        if lead {
            // A task of its own: the numbering completes even if this
            // caller goes away, and answers everyone queued behind it.
            tokio::spawn(self.clone().number(key.clone(), known.clone()));
        }
        rx.await
            .unwrap_or_else(|_| Err(IndexError::canceled("the journal's numbering stopped")))
    }

    /// Numbers what has queued up for `key`, batch after batch, until
    /// nothing waits.
    async fn number(self, key: RequestKey, known: Countable) {
        let rid = id(&key);
        loop {
            let batch = {
                let mut map = self
                    .numbering
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match map.get_mut(&key) {
                    Some(w) if !w.is_empty() => std::mem::take(w),
                    _ => {
                        map.remove(&key);
                        return;
                    }
                }
            };
            let n = batch.len();
            let last = batch
                .iter()
                .map(|w| w.at)
                .max()
                .unwrap_or_else(Timestamp::now);
            match self
                .index
                .count_occurrences(
                    &rid,
                    known.occurrences,
                    known.journaled,
                    n,
                    last.as_millisecond(),
                )
                .await
            {
                Ok(Numbered { count, numbered }) => {
                    {
                        let mut recent = self
                            .instances
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        for w in &batch {
                            recent.insert(w.instance.clone(), key.clone());
                        }
                    }
                    self.track(
                        &key,
                        numbered,
                        last,
                        batch.iter().map(|w| w.instance.clone()),
                    );
                    let first = count - n as i64 + 1;
                    for (i, w) in batch.into_iter().enumerate() {
                        let _ = w.reply.send(Ok(first + i as i64));
                    }
                }
                Err(e) => {
                    for w in batch {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// The request an instance this replica numbered lately was counted on.
    pub(crate) fn request_of(&self, instance: &str) -> Option<RequestKey> {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(instance)
            .cloned()
    }

    /// Remembers what was numbered on `key` until it is written.
    fn track(
        &self,
        key: &RequestKey,
        numbered: i64,
        last: Timestamp,
        instances: impl Iterator<Item = String>,
    ) {
        let mut u = Unsettled {
            numbered,
            last,
            instances: VecDeque::new(),
        };
        for i in instances {
            u.remember(i);
        }
        let mut map = self
            .unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tracked = map.len();
        match map.get_mut(key) {
            Some(known) => known.merge(u),
            None if tracked < MAX_TRACKED => {
                map.insert(key.clone(), u);
            }
            // Redis holds it; the sweep settles it.
            None => {}
        }
    }

    /// Writes everything this replica has numbered to the requests' status.
    /// Also called on shutdown, so that a clean stop leaves nothing for the
    /// sweep.
    pub(crate) async fn settle_now(&self) {
        let batch = std::mem::take(
            &mut *self
                .unsettled
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if batch.is_empty() {
            return;
        }
        futures::stream::iter(batch)
            .for_each_concurrent(CONCURRENT_SETTLES, |(key, u)| async move {
                if let Err(u) = self.settle_one(&key, u).await {
                    // Kept for the next round (the sweep has it too).
                    let mut map = self
                        .unsettled
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    match map.entry(key) {
                        Entry::Occupied(mut e) => e.get_mut().merge(u),
                        Entry::Vacant(e) => {
                            e.insert(u);
                        }
                    }
                }
            })
            .await;
    }

    /// Writes `u` to the request's status and tells the journal; gives `u`
    /// back when the API server could not take it.
    async fn settle_one(&self, key: &RequestKey, u: Unsettled) -> Result<(), Unsettled> {
        let instances: Vec<String> = u.instances.iter().cloned().collect();
        match self
            .occurrences
            .settle(key, u.numbered, u.last, instances)
            .await
        {
            Ok(Some(written)) => {
                // A failure here leaves the request in the unsettled set: a
                // sweep writes it again, which changes nothing.
                let _ = self.index.settled(&id(key), written).await;
                Ok(())
            }
            Ok(None) => {
                let _ = self.index.forget(&id(key)).await;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(request = %key, error = %e, "counted duplicates could not be written to the request's status yet; retrying");
                Err(u)
            }
        }
    }

    /// Settles requests that other replicas (or this one, before a restart)
    /// numbered occurrences on and never wrote.
    async fn sweep(&self) {
        let stale = match self.index.stale_unsettled(STALE_AFTER, 256).await {
            Ok(ids) => ids,
            // Redis is down: nothing is reachable in it to settle.
            Err(_) => return,
        };
        futures::stream::iter(stale)
            .for_each_concurrent(CONCURRENT_SETTLES, |rid| async move {
                let Some(key) = key_of(&rid) else {
                    let _ = self.index.forget(&rid).await;
                    return;
                };
                match self.index.journal(&rid).await {
                    Ok(Some(j)) => {
                        let last = Timestamp::from_millisecond(j.last_ms).unwrap_or_else(|_| Timestamp::now());
                        let u = Unsettled {
                            numbered: j.numbered,
                            last,
                            instances: VecDeque::new(),
                        };
                        tracing::info!(request = %key, numbered = j.numbered, "settling duplicates another replica counted and did not write");
                        let _ = self.settle_one(&key, u).await;
                    }
                    // Expired: nothing left to write.
                    Ok(None) => {
                        let _ = self.index.forget(&rid).await;
                    }
                    Err(_) => {}
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsettled(numbered: i64, secs: i64, instances: &[&str]) -> Unsettled {
        Unsettled {
            numbered,
            last: Timestamp::from_second(secs).unwrap(),
            instances: instances.iter().map(|i| i.to_string()).collect(),
        }
    }

    #[test]
    fn merging_keeps_the_latest_figures_whatever_the_order() {
        let mut a = unsettled(9, 20, &["x"]);
        a.merge(unsettled(4, 10, &["y"]));
        assert_eq!((a.numbered, a.last.as_second()), (9, 20));
        let mut b = unsettled(4, 10, &["y"]);
        b.merge(unsettled(9, 20, &["x"]));
        assert_eq!((b.numbered, b.last.as_second()), (9, 20));
        assert_eq!(b.instances, ["y", "x"]);
    }

    #[test]
    fn remembered_instances_are_distinct_and_bounded_newest_kept() {
        let mut u = unsettled(1, 0, &[]);
        for i in 0..100 {
            u.remember(format!("i{i}"));
            u.remember(format!("i{i}"));
        }
        assert_eq!(u.instances.len(), MAX_RECENT_INSTANCES);
        assert_eq!(u.instances.back().map(String::as_str), Some("i99"));
        assert_eq!(
            u.instances.front().map(String::as_str),
            Some(format!("i{}", 100 - MAX_RECENT_INSTANCES).as_str())
        );
    }

    #[test]
    fn journal_ids_name_their_request_and_nothing_else() {
        let key = RequestKey::new("ns-a".to_string(), "req-1".to_string());
        assert_eq!(key_of(&id(&key)), Some(key));
        assert_eq!(key_of("no-slash"), None);
    }
}

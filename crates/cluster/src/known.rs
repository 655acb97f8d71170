//! The intake's watch-fed knowledge of requests (K-GW-5): which request a
//! signal instance created or was counted on, the open request of a
//! fingerprint, and the next place in a fingerprint's sequence. Lookups are
//! in memory, so no signal lists requests; the API server stays the judge of
//! creation (a name taken is a name taken), and this view only has to be
//! recent, not exact.
//!
//! Sequence numbers must never be reused while a later request of the
//! fingerprint may still be created from an older view, so a deleted
//! request leaves a tombstone of its number for [`TOMBSTONE_TTL`]: long
//! past any watch lag, short enough that deletions cannot grow it without
//! bound ([`MAX_TOMBSTONES`] caps it regardless).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use kubernaut_api::{RemediationRequest, RequestKey, SEQUENCE_LABEL};
use tokio::sync::{mpsc, watch};

use crate::Cluster;
use crate::watch::{Guarded, RequestEvent, request_event};

pub const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
pub const MAX_TOMBSTONES: usize = 100_000;

/// What the index keeps of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    fingerprint: String,
    seq: u64,
    open: bool,
    signal_name: String,
    instances: Vec<String>,
    /// The occurrence count its status holds, and how many of them the
    /// Redis journal numbered.
    occurrences: i64,
    journaled: i64,
    storm: bool,
}

/// What the intake needs to count a duplicate on a request without the
/// API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Countable {
    pub fingerprint: String,
    pub open: bool,
    /// A storm request: its occurrences also count targets.
    pub storm: bool,
    /// The occurrence count its status held when the view last saw it,
    /// and how many of them the Redis journal numbered.
    pub occurrences: i64,
    pub journaled: i64,
}

impl Entry {
    fn of(rr: &RemediationRequest) -> Self {
        let mut instances = vec![rr.spec.instance_id.clone()];
        if let Some(d) = rr.status.as_ref().and_then(|s| s.deduplication.as_ref()) {
            instances.extend(
                d.recent_instances
                    .iter()
                    .filter(|i| **i != rr.spec.instance_id)
                    .cloned(),
            );
        }
        Self {
            fingerprint: rr.spec.fingerprint.clone(),
            seq: sequence_of(rr),
            open: !rr.phase().is_terminal() && rr.metadata.deletion_timestamp.is_none(),
            signal_name: rr.spec.signal_name.clone(),
            instances,
            occurrences: rr.occurrence_count(),
            journaled: rr
                .status
                .as_ref()
                .and_then(|s| s.deduplication.as_ref())
                .and_then(|d| d.journaled)
                .unwrap_or(0),
            storm: rr.spec.storm.is_some(),
        }
    }
}

impl From<&Entry> for Countable {
    fn from(e: &Entry) -> Self {
        Self {
            fingerprint: e.fingerprint.clone(),
            open: e.open,
            storm: e.storm,
            occurrences: e.occurrences,
            journaled: e.journaled,
        }
    }
}

impl Countable {
    /// What a request read from the API server says (one the view has
    /// not seen yet).
    pub fn of(rr: &RemediationRequest) -> Self {
        Self::from(&Entry::of(rr))
    }
}

/// A request's place in its fingerprint's sequence; 0 for one created
/// before sequences (or by someone else without the label).
pub fn sequence_of(rr: &RemediationRequest) -> u64 {
    rr.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SEQUENCE_LABEL))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Fingerprints are scoped by the namespace the requests live in, so that a
/// request someone else wrote in another namespace is never taken for ours.
type FpKey = (String, String);

/// The index proper: pure, fed by [`KnownRequests`]' watch.
#[derive(Debug, Default)]
pub struct Index {
    entries: HashMap<RequestKey, Entry>,
    by_fp: HashMap<FpKey, Vec<RequestKey>>,
    by_instance: HashMap<String, RequestKey>,
    tombstones: HashMap<FpKey, (u64, Instant)>,
    /// A list (or re-list) in progress is built here and swapped in whole.
    listing: Option<Box<Index>>,
}

impl Index {
    pub fn apply(&mut self, rr: &RemediationRequest) {
        let key = rr.key();
        match &mut self.listing {
            Some(next) => next.insert(key, Entry::of(rr)),
            None => self.insert(key, Entry::of(rr)),
        }
    }

    pub fn delete(&mut self, key: &RequestKey, now: Instant) {
        if let Some(e) = self.remove(key) {
            self.tombstone((key.namespace.clone(), e.fingerprint), e.seq, now);
        }
    }

    /// A list begins: what it brings replaces everything.
    pub fn begin_list(&mut self) {
        self.listing = Some(Box::default());
    }

    /// The list is complete; requests it no longer holds were deleted.
    pub fn end_list(&mut self, now: Instant) {
        let Some(next) = self.listing.take() else {
            return;
        };
        let old = std::mem::replace(self, *next);
        for (key, e) in old.entries {
            if !self.entries.contains_key(&key) {
                self.tombstone((key.namespace, e.fingerprint), e.seq, now);
            }
        }
        for (fp, (seq, at)) in old.tombstones {
            self.tombstone(fp, seq, at);
        }
    }

    fn insert(&mut self, key: RequestKey, entry: Entry) {
        self.remove(&key);
        let fp = (key.namespace.clone(), entry.fingerprint.clone());
        self.by_fp.entry(fp).or_default().push(key.clone());
        for i in &entry.instances {
            self.by_instance.insert(i.clone(), key.clone());
        }
        self.entries.insert(key, entry);
    }

    fn remove(&mut self, key: &RequestKey) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        let fp = (key.namespace.clone(), e.fingerprint.clone());
        if let Some(keys) = self.by_fp.get_mut(&fp) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_fp.remove(&fp);
            }
        }
        for i in &e.instances {
            if self.by_instance.get(i) == Some(key) {
                self.by_instance.remove(i);
            }
        }
        Some(e)
    }

    fn tombstone(&mut self, fp: FpKey, seq: u64, at: Instant) {
        if at.elapsed() >= TOMBSTONE_TTL {
            return;
        }
        if self.tombstones.len() >= MAX_TOMBSTONES {
            self.tombstones
                .retain(|_, (_, t)| t.elapsed() < TOMBSTONE_TTL);
        }
        if self.tombstones.len() >= MAX_TOMBSTONES {
            // Deletions faster than the TTL can age them: the oldest half
            // goes (their watch lag is long past).
            let mut ages: Vec<Instant> = self.tombstones.values().map(|(_, t)| *t).collect();
            ages.sort();
            let cut = ages[ages.len() / 2];
            self.tombstones.retain(|_, (_, t)| *t > cut);
        }
        let slot = self.tombstones.entry(fp).or_insert((seq, at));
        if seq >= slot.0 {
            *slot = (seq, at.max(slot.1));
        }
    }

    /// The request in `namespace` that this signal instance created or was
    /// counted on.
    pub fn instance(&self, namespace: &str, instance: &str) -> Option<RequestKey> {
        self.by_instance
            .get(instance)
            .filter(|k| k.namespace == namespace)
            .cloned()
    }

    /// What the view knows of a request for counting on it.
    pub fn countable(&self, key: &RequestKey) -> Option<Countable> {
        self.entries.get(key).map(Countable::from)
    }

    fn requests(&self, namespace: &str, fp: &str) -> impl Iterator<Item = (&RequestKey, &Entry)> {
        self.by_fp
            .get(&(namespace.to_string(), fp.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|k| Some((k, self.entries.get(k)?)))
    }

    /// The fingerprint's open request in `namespace`: the latest, should an
    /// older version of Kubernaut have left two.
    pub fn open(&self, namespace: &str, fp: &str) -> Option<RequestKey> {
        self.requests(namespace, fp)
            .filter(|(_, e)| e.open)
            .max_by_key(|(_, e)| e.seq)
            .map(|(k, _)| k.clone())
    }

    /// The open request of the fingerprint that a signal of that name opened.
    pub fn open_of_signal(&self, namespace: &str, fp: &str, signal: &str) -> Option<RequestKey> {
        self.requests(namespace, fp)
            .filter(|(_, e)| e.open && e.signal_name == signal)
            .max_by_key(|(_, e)| e.seq)
            .map(|(k, _)| k.clone())
    }

    /// The place of the fingerprint's next request: after every request
    /// known, or deleted within [`TOMBSTONE_TTL`].
    pub fn next_sequence(&self, namespace: &str, fp: &str) -> u64 {
        let known = self.requests(namespace, fp).map(|(_, e)| e.seq).max();
        let buried = self
            .tombstones
            .get(&(namespace.to_string(), fp.to_string()))
            .filter(|(_, at)| at.elapsed() < TOMBSTONE_TTL)
            .map(|(seq, _)| *seq);
        known.max(buried).unwrap_or(0).saturating_add(1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The shared, watch-fed [`Index`]. Cheap to clone.
///
/// Its watch also feeds one subscriber, the controller
/// ([`Cluster::request_events`]): a request write reaches the process once.
/// A subscriber is fed through a bounded channel and the watch waits for
/// room, as a watch of its own would wait for it to read.
#[derive(Clone)]
pub struct KnownRequests {
    index: Arc<RwLock<Index>>,
    synced: watch::Receiver<bool>,
    /// The latest subscriber, sent to the watch's task, which restarts the
    /// watch for it (a full list first) and drops the one before.
    subscriber: Arc<watch::Sender<Option<mpsc::Sender<RequestEvent>>>>,
}

/// Events waiting for the subscriber before the watch waits for it: the
/// controller only hands each to an actor's mailbox.
const SUBSCRIBER_BUFFER: usize = 1024;

impl KnownRequests {
    /// Watches every request the client may see, for as long as the runtime
    /// runs (the watcher backs off and re-lists on its own). One per
    /// [`Cluster`] handle: see [`Cluster::known_requests`].
    pub(crate) fn start(cluster: &Cluster) -> Self {
        let index = Arc::new(RwLock::new(Index::default()));
        let (tx, synced) = watch::channel(false);
        let (subscriber, mut subscribed) = watch::channel(None);
        let api: Api<Guarded> = Api::all(cluster.client().clone());
        let feed = index.clone();
        tokio::spawn(async move {
            let new_watch = || {
                Box::pin(
                    watcher::watcher(api.clone(), watcher::Config::default()).default_backoff(),
                )
            };
            let mut events = new_watch();
            let mut to: Option<mpsc::Sender<RequestEvent>> = None;
            loop {
                let ev = tokio::select! {
                    changed = subscribed.changed() => {
                        if changed.is_err() {
                            // Every handle is gone: nobody reads the index.
                            return;
                        }
                        to = subscribed.borrow_and_update().clone();
                        // The subscriber starts from a full list.
                        events = new_watch();
                        continue;
                    }
                    ev = events.next() => match ev {
                        Some(ev) => ev,
                        None => return,
                    },
                };
                let listed = matches!(ev, Ok(Event::InitDone));
                index_event(&feed, &ev);
                if listed {
                    let _ = tx.send(true);
                }
                // Errors were logged with the index; the watcher retries.
                if let Some(sub) = &to
                    && let Ok(ev) = ev
                    && let Some(ev) = request_event(ev)
                    && sub.send(ev).await.is_err()
                {
                    // The subscriber has stopped reading (a controller
                    // shutting down); the index goes on.
                    to = None;
                }
            }
        });
        Self {
            index,
            synced,
            subscriber: Arc::new(subscriber),
        }
    }

    /// The watch's events from a full list on, for one reader at a time: a
    /// new subscription ends the previous one's stream.
    pub(crate) fn subscribe(&self) -> impl Stream<Item = RequestEvent> + Send + use<> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        self.subscriber.send_replace(Some(tx));
        futures::stream::unfold(rx, |mut rx| async move {
            let ev = rx.recv().await?;
            Some((ev, rx))
        })
    }

    /// Waits until the first list is in, at most `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut rx = self.synced.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn read<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        f(&self
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// What a watch event changes in the index.
fn index_event(index: &RwLock<Index>, ev: &Result<Event<Guarded>, watcher::Error>) {
    let mut ix = index
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match ev {
        Ok(Event::Init) => ix.begin_list(),
        Ok(Event::InitApply(g) | Event::Apply(g)) => {
            // A request these types reject is not one the intake could
            // count on; it is skipped (the controller reports it).
            if let Ok(rr) = &g.0 {
                ix.apply(rr);
            }
        }
        Ok(Event::Delete(g)) => {
            let meta = g.meta();
            let key = RequestKey::new(
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            );
            ix.delete(&key, Instant::now());
        }
        Ok(Event::InitDone) => ix.end_list(Instant::now()),
        Err(e) => {
            tracing::warn!(error = %e, "the request watch failed; it backs off and retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kubernaut_api::{Deduplication, Phase, RemediationRequestStatus};

    use super::*;

    fn rr(ns: &str, name: &str, fp: &str, seq: u64, phase: Phase) -> RemediationRequest {
        let spec = serde_json::from_value(serde_json::json!({
            "fingerprint": fp, "signalName": "Down", "severity": "warning",
            "source": "generic", "instanceId": format!("inst-{name}"),
            "target": {"kind": "Deployment", "namespace": ns, "name": "web"},
            "signalResource": {"kind": "Deployment", "namespace": ns, "name": "web"},
            "firingTime": "2026-11-22T03:00:00Z", "receivedTime": "2026-11-22T03:00:00Z",
            "originalPayload": "{}"
        }))
        .expect("a valid spec");
        RemediationRequest {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([(SEQUENCE_LABEL.into(), seq.to_string())])),
                ..Default::default()
            },
            spec,
            status: Some(RemediationRequestStatus {
                phase,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_open_request_and_the_next_place_follow_the_watch() {
        let mut ix = Index::default();
        assert_eq!(ix.next_sequence("a", "fp"), 1);
        ix.apply(&rr("a", "r1", "fp", 1, Phase::Completed));
        assert_eq!(ix.open("a", "fp"), None);
        assert_eq!(ix.next_sequence("a", "fp"), 2);
        ix.apply(&rr("a", "r2", "fp", 2, Phase::Pending));
        assert_eq!(ix.open("a", "fp"), Some(RequestKey::new("a", "r2")));
        assert_eq!(ix.open_of_signal("a", "fp", "Down"), ix.open("a", "fp"));
        assert_eq!(ix.open_of_signal("a", "fp", "Other"), None);
        // Another namespace's request of that fingerprint is not ours.
        assert_eq!(ix.open("b", "fp"), None);
        assert_eq!(ix.next_sequence("b", "fp"), 1);
        ix.apply(&rr("a", "r2", "fp", 2, Phase::Failed));
        assert_eq!(ix.open("a", "fp"), None);
        assert_eq!(ix.next_sequence("a", "fp"), 3);
    }

    #[test]
    fn a_deleted_request_keeps_its_place_taken() {
        let mut ix = Index::default();
        ix.apply(&rr("a", "r1", "fp", 1, Phase::Completed));
        ix.apply(&rr("a", "r2", "fp", 2, Phase::Completed));
        ix.delete(&RequestKey::new("a", "r2"), Instant::now());
        ix.delete(&RequestKey::new("a", "r1"), Instant::now());
        assert!(ix.is_empty());
        assert_eq!(ix.next_sequence("a", "fp"), 3, "2 may not be created again");
        // A tombstone older than the TTL no longer holds the place.
        let mut old = Index::default();
        if let Some(long_ago) = Instant::now().checked_sub(TOMBSTONE_TTL) {
            old.apply(&rr("a", "r1", "fp", 1, Phase::Completed));
            old.delete(&RequestKey::new("a", "r1"), long_ago);
            assert_eq!(old.next_sequence("a", "fp"), 1);
        }
    }

    #[test]
    fn instances_counted_on_a_request_lead_to_it_until_it_goes() {
        let mut ix = Index::default();
        let mut r = rr("a", "r1", "fp", 1, Phase::Pending);
        let at = r.spec.received_time.clone();
        r.status.as_mut().unwrap().deduplication = Some(Deduplication {
            occurrence_count: 2,
            first_seen_at: at.clone(),
            last_seen_at: at,
            recent_instances: vec!["inst-r1".into(), "later".into()],
            journaled: None,
        });
        ix.apply(&r);
        let key = Some(RequestKey::new("a", "r1"));
        assert_eq!(ix.instance("a", "inst-r1"), key);
        assert_eq!(ix.instance("a", "later"), key);
        assert_eq!(ix.instance("b", "later"), None, "only in its own namespace");
        ix.delete(&RequestKey::new("a", "r1"), Instant::now());
        assert_eq!(ix.instance("a", "later"), None);
    }

    #[test]
    fn a_relist_drops_what_was_deleted_meanwhile_and_remembers_its_place() {
        let mut ix = Index::default();
        ix.apply(&rr("a", "r1", "fp", 1, Phase::Completed));
        ix.apply(&rr("a", "r5", "other", 5, Phase::Pending));
        ix.begin_list();
        ix.apply(&rr("a", "r5", "other", 5, Phase::Pending));
        // Until the list is complete, lookups answer from the old view.
        assert_eq!(ix.len(), 2);
        ix.end_list(Instant::now());
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.instance("a", "inst-r1"), None);
        assert_eq!(ix.next_sequence("a", "fp"), 2);
        assert_eq!(ix.open("a", "other"), Some(RequestKey::new("a", "r5")));
    }
}

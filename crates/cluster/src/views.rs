//! Watch-fed metadata of the objects every signal's resolution reads
//! (K-GW-4, K-GW-8): Pods, their controllers, Nodes and Namespaces, kept by
//! kube-runtime reflectors, so that resolving an owner chain and checking
//! scope costs no API round trip. The workloads an action changes
//! (Deployments, StatefulSets, DaemonSets) are watched whole and keep what
//! verification reads of them too (their status's observed generation,
//! replicas, pod selector and the hash of their spec), so that verifying an
//! action reads memory instead of the API server.
//!
//! Only labels and owner references are kept (managed fields and
//! annotations are dropped as they arrive, and the workloads' pod template
//! and the rest of their status), which is what resolution needs and keeps
//! a large cluster's Pods cheap to hold. A cache is never the last word on absence:
//! an object it does not hold (yet) is asked for, so a Pod created a moment
//! ago still resolves; and while a watch fails, every lookup of its kind is
//! asked for, since what it holds may be stale.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetStatus, Deployment, DeploymentSpec, DeploymentStatus,
    ReplicaSet, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use crate::health::{Shape, canonical_hash, selector_string};

/// What a view keeps of each object it watches.
trait Kept:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// Drops what lookups never read, as the object arrives.
    fn strip(&mut self);
}

impl<K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static> Kept
    for PartialObjectMeta<K>
{
    fn strip(&mut self) {
        strip_meta(&mut self.metadata);
    }
}

/// What no lookup reads of any object's metadata.
fn strip_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
}

/// A workload whose controller reports the generation it has observed.
trait Workload: Kept {
    fn observed_generation(&self) -> Option<i64>;
    /// The pods it should have, from what its strip kept.
    fn desired(&self) -> Option<i32>;
    fn selector(&self) -> Option<&LabelSelector>;
}

/// Where a stripped workload keeps the hash of the spec it arrived with:
/// the spec itself is dropped (its pod template is most of the object),
/// and the view's copies are never written back, so the key is seen by
/// nothing but [`Views::workload`].
const SPEC_HASH: &str = "view.kubernaut.io/spec-sha256";

/// Strips a workload's metadata and notes the hash of its spec, computed
/// exactly as [`crate::health`] computes it of an object read by GET, so
/// that a baseline from one and a reading from the other compare equal.
fn strip_workload<S: serde::Serialize>(meta: &mut ObjectMeta, spec: &Option<S>) {
    let spec = serde_json::to_value(spec).unwrap_or(serde_json::Value::Null);
    strip_meta(meta);
    meta.annotations = Some([(SPEC_HASH.to_string(), canonical_hash(&spec))].into());
}

/// A workload kind's [`Kept`] and [`Workload`]: the fields of its spec and
/// of its status that its strip keeps, and how it says how many pods it
/// should have.
macro_rules! workload {
    (
        $kind:ty,
        $spec:ident { $($spec_kept:ident),* },
        $status:ident { $($status_kept:ident),* },
        desired: |$w:ident| $desired:expr
    ) => {
        impl Kept for $kind {
            fn strip(&mut self) {
                strip_workload(&mut self.metadata, &self.spec);
                self.spec = self.spec.take().map(|s| $spec {
                    $($spec_kept: s.$spec_kept,)*
                    ..Default::default()
                });
                self.status = self.status.take().map(|s| $status {
                    $($status_kept: s.$status_kept,)*
                    ..Default::default()
                });
            }
        }
        impl Workload for $kind {
            fn observed_generation(&self) -> Option<i64> {
                self.status.as_ref()?.observed_generation
            }
            fn desired(&self) -> Option<i32> {
                let $w = self;
                $desired
            }
            fn selector(&self) -> Option<&LabelSelector> {
                Some(&self.spec.as_ref()?.selector)
            }
        }
    };
}
workload!(
    Deployment,
    DeploymentSpec { replicas, selector },
    DeploymentStatus { observed_generation },
    desired: |w| Some(w.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))
);
workload!(
    StatefulSet,
    StatefulSetSpec { replicas, selector },
    StatefulSetStatus { observed_generation },
    desired: |w| Some(w.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))
);
// A DaemonSet's desired count is what its controller scheduled.
workload!(
    DaemonSet,
    DaemonSetSpec { selector },
    DaemonSetStatus { observed_generation, desired_number_scheduled },
    desired: |w| Some(w.status.as_ref()?.desired_number_scheduled)
);

/// One kind's objects, whether its first list is in, and whether its watch
/// works now.
struct View<W: Kept> {
    store: Store<W>,
    synced: Arc<AtomicBool>,
    failing: Arc<AtomicBool>,
}

impl<W: Kept> View<W> {
    /// Metadata-only requests for `PartialObjectMeta` kinds; whole objects
    /// (stripped as they arrive) for workloads.
    fn start(client: &Client) -> Self {
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let failing = Arc::new(AtomicBool::new(false));
        let api: Api<W> = Api::all(client.clone());
        let stream = reflector::reflector(
            writer,
            watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(W::strip),
        );
        let ready = store.clone();
        let flag = synced.clone();
        tokio::spawn(async move {
            if ready.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Release);
            }
        });
        let down = failing.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) => down.store(false, Ordering::Release),
                    // Until it works again, lookups go to the API server.
                    Err(e) => {
                        if !down.swap(true, Ordering::AcqRel) {
                            tracing::warn!(kind = W::kind(&()).as_ref(), error = %e, "a watch failed; looking objects up through API calls until it recovers");
                        }
                    }
                }
            }
        });
        Self {
            store,
            synced,
            failing,
        }
    }

    /// `Some(object)` when the cache holds it; `None` when it cannot say.
    fn object(&self, namespace: &str, name: &str) -> Option<Arc<W>> {
        if !self.synced() || self.failing.load(Ordering::Acquire) {
            return None;
        }
        let mut key = ObjectRef::new(name);
        if !namespace.is_empty() {
            key = key.within(namespace);
        }
        self.store.get(&key)
    }

    fn get(&self, namespace: &str, name: &str) -> Option<ObjectMeta> {
        self.object(namespace, name).map(|o| o.meta().clone())
    }

    fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

/// The reflectors. Cheap to share behind an `Arc`.
pub struct Views {
    pods: View<PartialObjectMeta<Pod>>,
    replica_sets: View<PartialObjectMeta<ReplicaSet>>,
    deployments: View<Deployment>,
    stateful_sets: View<StatefulSet>,
    daemon_sets: View<DaemonSet>,
    jobs: View<PartialObjectMeta<Job>>,
    nodes: View<PartialObjectMeta<Node>>,
    namespaces: View<PartialObjectMeta<Namespace>>,
}

impl Views {
    pub fn start(client: &Client) -> Self {
        Self {
            pods: View::start(client),
            replica_sets: View::start(client),
            deployments: View::start(client),
            stateful_sets: View::start(client),
            daemon_sets: View::start(client),
            jobs: View::start(client),
            nodes: View::start(client),
            namespaces: View::start(client),
        }
    }

    /// The cached metadata of an object of `kind`; `None` when the kind is
    /// not watched, its list is not in yet, or the object is not (yet) known.
    pub fn metadata(&self, kind: &str, namespace: &str, name: &str) -> Option<ObjectMeta> {
        match kind {
            "Pod" => self.pods.get(namespace, name),
            "ReplicaSet" => self.replica_sets.get(namespace, name),
            "Deployment" => self.deployments.get(namespace, name),
            "StatefulSet" => self.stateful_sets.get(namespace, name),
            "DaemonSet" => self.daemon_sets.get(namespace, name),
            "Job" => self.jobs.get(namespace, name),
            "Node" => self.nodes.get("", name),
            "Namespace" => self.namespaces.get("", name),
            _ => None,
        }
    }

    /// The generation a workload's controller has observed, as the watch
    /// last saw it: `Some(None)` while its status has none, `None` when the
    /// cache cannot say (not a workload kind, list not in, watch failing,
    /// or the object known is not the one with `uid`). A watch is late,
    /// never ahead, and an object's observed generation only grows, so a
    /// cached one that reached a generation is the truth; the UID keeps a
    /// stale copy of a deleted object from answering for its successor.
    pub fn observed_generation(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Option<Option<i64>> {
        fn of<W: Workload>(view: &View<W>, ns: &str, name: &str, uid: &str) -> Option<Option<i64>> {
            let w = view.object(ns, name)?;
            (w.meta().uid.as_deref() == Some(uid)).then(|| w.observed_generation())
        }
        match kind {
            "Deployment" => of(&self.deployments, namespace, name, uid),
            "StatefulSet" => of(&self.stateful_sets, namespace, name, uid),
            "DaemonSet" => of(&self.daemon_sets, namespace, name, uid),
            _ => None,
        }
    }

    /// What verification reads of a workload (its spec's hash, the pods it
    /// should have and their selector), as the watch last saw it; `None`
    /// when the cache cannot say. A health reading is a sample taken after
    /// the change was observed, so a watch's lag of milliseconds does not
    /// matter to it, and a spec's hash seen through the watch equals the
    /// one a GET would give.
    pub fn workload(&self, kind: &str, namespace: &str, name: &str) -> Option<Shape> {
        fn of<W: Workload>(view: &View<W>, ns: &str, name: &str) -> Option<Shape> {
            let w = view.object(ns, name)?;
            Some(Shape {
                spec_hash: w.meta().annotations.as_ref()?.get(SPEC_HASH)?.clone(),
                desired: w.desired(),
                selector: w.selector().and_then(selector_string),
            })
        }
        match kind {
            "Deployment" => of(&self.deployments, namespace, name),
            "StatefulSet" => of(&self.stateful_sets, namespace, name),
            "DaemonSet" => of(&self.daemon_sets, namespace, name),
            _ => None,
        }
    }

    /// Waits until every view has its first list, at most `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let all = || {
            self.pods.synced()
                && self.replica_sets.synced()
                && self.deployments.synced()
                && self.stateful_sets.synced()
                && self.daemon_sets.synced()
                && self.jobs.synced()
                && self.nodes.synced()
                && self.namespaces.synced()
        };
        let deadline = tokio::time::Instant::now() + timeout;
        while !all() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: Option<i32>) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1",
                         "annotations": {"note": "x"}, "managedFields": [{"manager": "m"}]},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web", "tier": "a"}},
                     "template": {"metadata": {"labels": {"app": "web", "tier": "a"}},
                                  "spec": {"containers": [{"name": "c", "image": "web:1"}]}}},
            "status": {"observedGeneration": 4, "replicas": 3, "readyReplicas": 2}
        }))
        .expect("a valid Deployment")
    }

    #[test]
    fn a_stripped_workload_keeps_what_verification_reads_and_hashes_as_a_get_would() {
        let whole = deployment(Some(3));
        let mut kept = whole.clone();
        kept.strip();
        let meta = &kept.metadata;
        assert!(meta.managed_fields.is_none());
        let annotations = meta.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.len(), 1, "only the hash: {annotations:?}");
        assert!(
            kept.spec
                .as_ref()
                .is_some_and(|s| s.template.spec.is_none())
        );
        assert_eq!(kept.observed_generation(), Some(4));
        assert_eq!(kept.desired(), Some(3));
        let read = Shape::of("Deployment", &serde_json::to_value(&whole).unwrap());
        assert_eq!(annotations.get(SPEC_HASH), Some(&read.spec_hash));
        assert_eq!(read.selector.as_deref(), Some("app=web,tier=a"));
        assert_eq!(kept.selector().and_then(selector_string), read.selector);
        assert_eq!(kept.desired(), read.desired);

        // A spec without replicas means one, read either way.
        let mut one = deployment(None);
        one.strip();
        assert_eq!(one.desired(), Some(1));

        // Another spec, another hash.
        let mut other = deployment(Some(4));
        other.strip();
        assert_ne!(
            other
                .metadata
                .annotations
                .unwrap_or_default()
                .get(SPEC_HASH),
            annotations.get(SPEC_HASH)
        );
    }
}

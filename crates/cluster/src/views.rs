//! Watch-fed metadata of the objects every signal's resolution reads
//! (K-GW-4, K-GW-8): Pods, their controllers, Nodes and Namespaces, kept by
//! kube-runtime reflectors over metadata-only watches, so that resolving an
//! owner chain and checking scope costs no API round trip.
//!
//! Only labels and owner references are kept (managed fields and
//! annotations are dropped as they arrive), which is what resolution needs
//! and keeps a large cluster's Pods cheap to hold. A cache is never the
//! last word on absence: an object it does not hold (yet) is asked for, so
//! a Pod created a moment ago still resolves.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

/// One kind's metadata, and whether its first list is in.
struct View<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<PartialObjectMeta<K>>,
    synced: Arc<AtomicBool>,
}

impl<K> View<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn start(client: &Client) -> Self {
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        // An Api of PartialObjectMeta makes metadata-only requests.
        let api: Api<PartialObjectMeta<K>> = Api::all(client.clone());
        let stream = reflector::reflector(
            writer,
            watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(|m| {
                    m.metadata.managed_fields = None;
                    m.metadata.annotations = None;
                }),
        );
        let ready = store.clone();
        let flag = synced.clone();
        tokio::spawn(async move {
            if ready.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Release);
            }
        });
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut warned = false;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) => warned = false,
                    // Until it works again, lookups go to the API server.
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "a metadata watch failed; resolving through API calls until it recovers");
                    }
                    Err(_) => {}
                }
            }
        });
        Self { store, synced }
    }

    /// `Some(meta)` when the cache holds it; `None` when it cannot say.
    fn get(&self, namespace: &str, name: &str) -> Option<ObjectMeta> {
        if !self.synced.load(Ordering::Acquire) {
            return None;
        }
        let mut key = ObjectRef::new(name);
        if !namespace.is_empty() {
            key = key.within(namespace);
        }
        self.store.get(&key).map(|m| m.metadata.clone())
    }

    fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

/// The reflectors. Cheap to share behind an `Arc`.
pub struct Views {
    pods: View<Pod>,
    replica_sets: View<ReplicaSet>,
    deployments: View<Deployment>,
    stateful_sets: View<StatefulSet>,
    daemon_sets: View<DaemonSet>,
    jobs: View<Job>,
    nodes: View<Node>,
    namespaces: View<Namespace>,
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

//! What verification reads of a target (K-AU-2): the hash of its spec (for
//! drift) and its pods' health, summarised here so that no other crate
//! needs to know the shape of a pod's status.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::ListParams;
use kubernaut_api::ObjectRef;
use serde_json::Value;

use crate::{Cluster, Result, bounded};

/// At most this many pods are read for a target's health.
pub const MAX_HEALTH_PODS: u32 = 64;

/// A target as verification sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// SHA-256 of the canonical JSON of its `spec`.
    pub spec_hash: String,
    /// The pods it should have running and Ready (`None`: it has no pods
    /// of its own to count, such as a Node).
    pub desired: Option<i32>,
    /// Its pods that are not being deleted.
    pub pods: Vec<PodHealth>,
}

/// One pod's health, as a kubelet reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodHealth {
    pub name: String,
    pub ready: bool,
    /// All its containers' restarts.
    pub restarts: i32,
    /// A container waits in CrashLoopBackOff.
    pub crash_looping: bool,
    /// A container was last killed for memory.
    pub oom_killed: bool,
}

impl PodHealth {
    pub fn of(pod: &Pod) -> PodHealth {
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let containers = status
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        PodHealth {
            name: pod.metadata.name.clone().unwrap_or_default(),
            ready,
            restarts: containers.iter().map(|c| c.restart_count).sum(),
            crash_looping: containers.iter().any(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.as_deref())
                    == Some("CrashLoopBackOff")
            }),
            oom_killed: containers.iter().any(|c| {
                c.last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .and_then(|t| t.reason.as_deref())
                    == Some("OOMKilled")
            }),
        }
    }
}

/// A workload spec's `selector.matchLabels` as a label selector.
pub(crate) fn pod_selector(spec: &Value) -> Option<String> {
    let selector: LabelSelector = serde_json::from_value(spec["selector"].clone()).ok()?;
    selector_string(&selector)
}

/// A selector's `matchLabels` as the `labelSelector` of a list.
pub(crate) fn selector_string(selector: &LabelSelector) -> Option<String> {
    let labels = selector.match_labels.as_ref()?;
    Some(
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// What verification needs of a workload besides its pods.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Shape {
    pub spec_hash: String,
    pub desired: Option<i32>,
    pub selector: Option<String>,
}

impl Shape {
    /// Of a workload read whole (by GET).
    pub(crate) fn of(kind: &str, object: &Value) -> Shape {
        let spec = &object["spec"];
        let desired = if kind == "DaemonSet" {
            object["status"]["desiredNumberScheduled"].as_i64()
        } else {
            Some(spec["replicas"].as_i64().unwrap_or(1))
        }
        .map(|d| i32::try_from(d).unwrap_or(i32::MAX));
        Shape {
            spec_hash: canonical_hash(spec),
            desired,
            selector: pod_selector(spec),
        }
    }
}

/// SHA-256 of `value`'s canonical JSON: serde_json's map is ordered by key
/// (the crate is built without `preserve_order`), so equal specs hash alike
/// whatever order the server sent their fields in.
pub fn canonical_hash(value: &Value) -> String {
    kubernaut_api::sha256_hex(&value.to_string())
}

impl Cluster {
    /// The target's spec hash and pods, or `None` when it does not exist.
    /// A Deployment, StatefulSet or DaemonSet is read from its watch (a
    /// GET only while the watch cannot say); its pods come from one
    /// label-selected list served by the API server's watch cache, which
    /// costs the server a scan of its memory instead of a read of every
    /// pod of the namespace from etcd.
    pub async fn observe(&self, target: &ObjectRef) -> Result<Option<Observed>> {
        let client = self.client().clone();
        let ns = &target.namespace;
        let kind = target.kind.as_str();
        let cached = self
            .views
            .as_ref()
            .and_then(|v| v.workload(kind, ns, &target.name));
        macro_rules! get {
            ($k:ty) => {{
                let api: Api<$k> = Api::namespaced(client.clone(), ns);
                bounded(api.get_opt(&target.name))
                    .await?
                    .map(|o| Shape::of(kind, &serde_json::to_value(o).unwrap_or(Value::Null)))
            }};
        }
        let shape = match (cached, kind) {
            (Some(shape), _) => Some(shape),
            (None, "Pod") => {
                let api: Api<Pod> = Api::namespaced(client.clone(), ns);
                return Ok(bounded(api.get_opt(&target.name)).await?.map(|p| {
                    let spec = serde_json::to_value(&p.spec).unwrap_or(Value::Null);
                    Observed {
                        spec_hash: canonical_hash(&spec),
                        desired: Some(1),
                        pods: (p.metadata.deletion_timestamp.is_none())
                            .then(|| PodHealth::of(&p))
                            .into_iter()
                            .collect(),
                    }
                }));
            }
            (None, "Deployment") => get!(Deployment),
            (None, "ReplicaSet") => get!(ReplicaSet),
            (None, "StatefulSet") => get!(StatefulSet),
            (None, "DaemonSet") => get!(DaemonSet),
            (None, "Node") => {
                let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
                return Ok(bounded(api.get_opt(&target.name)).await?.map(|n| {
                    let spec = serde_json::to_value(&n.spec).unwrap_or(Value::Null);
                    Observed {
                        spec_hash: canonical_hash(&spec),
                        desired: None,
                        pods: Vec::new(),
                    }
                }));
            }
            _ => None,
        };
        let Some(shape) = shape else {
            return Ok(None);
        };
        let mut pods = Vec::new();
        if let Some(selector) = &shape.selector {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            // The watch cache ignores the limit; the cut below keeps it.
            let list = ListParams::default()
                .labels(selector)
                .limit(MAX_HEALTH_PODS)
                .match_any();
            pods = bounded(api.list(&list))
                .await?
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .take(MAX_HEALTH_PODS as usize)
                .map(PodHealth::of)
                .collect();
        }
        Ok(Some(Observed {
            spec_hash: shape.spec_hash,
            desired: shape.desired,
            pods,
        }))
    }
}

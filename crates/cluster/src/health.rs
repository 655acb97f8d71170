//! What verification reads of a target (K-AU-2): the hash of its spec (for
//! drift) and its pods' health, summarised here so that no other crate
//! needs to know the shape of a pod's status.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
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
    let labels = spec["selector"]["matchLabels"].as_object()?;
    Some(
        labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// SHA-256 of `value`'s canonical JSON: serde_json's map is ordered by key
/// (the crate is built without `preserve_order`), so equal specs hash alike
/// whatever order the server sent their fields in.
pub fn canonical_hash(value: &Value) -> String {
    kubernaut_api::sha256_hex(&value.to_string())
}

impl Cluster {
    /// The target's spec hash and pods, or `None` when it does not exist.
    /// Pods come from one label-selected list of the target's namespace,
    /// read once per verification, not on a hot path.
    pub async fn observe(&self, target: &ObjectRef) -> Result<Option<Observed>> {
        let client = self.client().clone();
        let ns = &target.namespace;
        macro_rules! get {
            ($k:ty) => {{
                let api: Api<$k> = Api::namespaced(client.clone(), ns);
                bounded(api.get_opt(&target.name))
                    .await?
                    .map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
            }};
        }
        let object = match target.kind.as_str() {
            "Pod" => {
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
            "Deployment" => get!(Deployment),
            "ReplicaSet" => get!(ReplicaSet),
            "StatefulSet" => get!(StatefulSet),
            "DaemonSet" => get!(DaemonSet),
            "Node" => {
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
        let Some(object) = object else {
            return Ok(None);
        };
        let spec = &object["spec"];
        let desired = if target.kind == "DaemonSet" {
            object["status"]["desiredNumberScheduled"].as_i64()
        } else {
            Some(spec["replicas"].as_i64().unwrap_or(1))
        }
        .map(|d| i32::try_from(d).unwrap_or(i32::MAX));
        let mut pods = Vec::new();
        if let Some(selector) = pod_selector(spec) {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let list = ListParams::default()
                .labels(&selector)
                .limit(MAX_HEALTH_PODS);
            pods = bounded(api.list(&list))
                .await?
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(PodHealth::of)
                .collect();
        }
        Ok(Some(Observed {
            spec_hash: canonical_hash(spec),
            desired,
            pods,
        }))
    }
}

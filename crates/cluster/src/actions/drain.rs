//! drain_node: cordon the node, then evict its pods through the Eviction API
//! so that PodDisruptionBudgets are honoured, as `kubectl drain
//! --ignore-daemonsets` does.
//!
//! Left alone: mirror pods (the kubelet owns them), DaemonSet pods (their
//! controller would put them straight back), finished and already
//! terminating pods, and pods in protected namespaces (Kubernaut never
//! changes those; the message lists them). A pod no controller would
//! replace refuses the whole drain before anything changes, since evicting
//! it loses it. An eviction a budget forbids is retried until the drain's
//! timeout, then the drain fails and says which pod and why; the node stays
//! cordoned, as kubectl leaves it, because it was being drained for a reason.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{EvictParams, ListParams};
use kube::{Api, Resource};
use kubernaut_api::ObjectRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use futures::future::BoxFuture;

use super::{
    Action, ActionCall, ActionError, Bounds, Catalogued, Change, Kind, NodeTarget, Ran, Risk,
    RunCx, UncordonNode, WriteMode, dry_run_refused, to_value,
};
use crate::{Cluster, Error, bounded};

/// The kubelet's annotation on the API copy of a static pod.
const MIRROR: &str = "kubernetes.io/config.mirror";
const DEFAULT_TIMEOUT: u64 = 120;
const MAX_TIMEOUT: u64 = 1800;
/// Between attempts at an eviction a budget forbids for now.
const EVICTION_RETRY: Duration = Duration::from_secs(2);

/// Parameters of drain_node.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainNode {
    pub name: String,
    /// How long evictions may wait for disruption budgets and pods may take
    /// to go; 120 by default, at most 1800.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

impl DrainNode {
    pub(super) fn check(&self) -> Result<(), String> {
        match self.timeout_seconds {
            Some(t) if !(1..=MAX_TIMEOUT).contains(&t) => {
                Err(format!("timeoutSeconds {t} is outside 1..={MAX_TIMEOUT}"))
            }
            _ => Ok(()),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT))
    }
}

/// Which of a node's pods a drain evicts.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub evict: Vec<Pod>,
    /// `namespace/name: why`, for the message.
    pub skipped: Vec<String>,
    /// Pods no controller would replace: the drain is refused.
    pub unreplaceable: Vec<String>,
}

pub(super) fn plan(pods: Vec<Pod>, protected: impl Fn(&str) -> bool) -> Plan {
    let mut plan = Plan::default();
    for pod in pods {
        let meta = &pod.metadata;
        let ns = meta.namespace.clone().unwrap_or_default();
        let id = format!("{ns}/{}", meta.name.clone().unwrap_or_default());
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let skip = if meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(MIRROR))
        {
            Some("mirror pod")
        } else if controller.is_some_and(|o| o.kind == "DaemonSet") {
            Some("DaemonSet pod")
        } else if matches!(phase, Some("Succeeded" | "Failed")) {
            Some("finished")
        } else if meta.deletion_timestamp.is_some() {
            Some("already terminating")
        } else if protected(&ns) {
            Some("protected namespace")
        } else {
            None
        };
        match (skip, controller) {
            (Some(why), _) => plan.skipped.push(format!("{id}: {why}")),
            (None, None) => plan.unreplaceable.push(id),
            (None, Some(_)) => plan.evict.push(pod),
        }
    }
    plan
}

/// What one eviction attempt found.
enum Eviction {
    Done,
    /// Already gone, or replaced by a pod of the same name.
    Gone,
    /// A disruption budget forbids it for now (429).
    Forbidden(String),
}

impl Cluster {
    pub(super) async fn drain_node(
        &self,
        d: &DrainNode,
        dry_run: bool,
    ) -> Result<(Vec<Change>, String), ActionError> {
        let deadline = Instant::now() + d.timeout();
        let all: Api<Pod> = Api::all(self.client().clone());
        let on_node = ListParams::default().fields(&format!("spec.nodeName={}", d.name));
        let pods = bounded(all.list(&on_node)).await?.items;
        let plan = plan(pods, |ns| self.config().is_protected(ns));
        if !plan.unreplaceable.is_empty() {
            return Err(ActionError::Refused(format!(
                "node {} runs pods no controller would replace ({}); move them first",
                d.name,
                plan.unreplaceable.join(", ")
            )));
        }
        let mut changes: Vec<Change> = self
            .set_unschedulable(&d.name, true, WriteMode::fresh(dry_run))
            .await?
            .into_iter()
            .collect();
        let total = plan.evict.len();
        for pod in plan.evict {
            let object = ObjectRef::new(
                "Pod",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
            );
            loop {
                let mut answer = self.evict(&pod, true).await?;
                // A budget can change between the dry run and the real
                // eviction: the real answer decides.
                if matches!(answer, Eviction::Done) && !dry_run {
                    answer = self.evict(&pod, false).await?;
                }
                match answer {
                    Eviction::Gone => break,
                    Eviction::Done => {
                        changes.push(Change {
                            object: object.clone(),
                            before: to_value(&pod)?,
                            after: Value::Null,
                        });
                        break;
                    }
                    Eviction::Forbidden(why) if dry_run => {
                        return Err(ActionError::DryRunFailed(format!(
                            "evicting {object}: {why}"
                        )));
                    }
                    Eviction::Forbidden(why) => {
                        if Instant::now() + EVICTION_RETRY > deadline {
                            let evicted = changes.iter().filter(|c| c.object.kind == "Pod").count();
                            return Err(ActionError::Timeout(format!(
                                "draining node {} for {}s: evicting {object}: {why} \
                                 ({evicted} of {total} pods evicted; the node stays cordoned)",
                                d.name,
                                d.timeout().as_secs()
                            )));
                        }
                        tokio::time::sleep(EVICTION_RETRY).await;
                    }
                }
            }
        }
        if !dry_run {
            for change in changes.iter().filter(|c| c.object.kind == "Pod") {
                self.wait_gone(change, deadline).await?;
            }
        }
        let evicted = changes.iter().filter(|c| c.object.kind == "Pod").count();
        let mut message = format!(
            "{} node {}: {evicted} pods evicted",
            if dry_run {
                "dry run: would drain"
            } else {
                "drained"
            },
            d.name
        );
        if !plan.skipped.is_empty() {
            message.push_str(&format!("; left {}", plan.skipped.join(", ")));
        }
        Ok((changes, message))
    }

    /// Posts an Eviction for this very pod (its UID is a precondition).
    async fn evict(&self, pod: &Pod, dry_run: bool) -> Result<Eviction, ActionError> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let mut params = EvictParams::default();
        params.post_options.dry_run = dry_run;
        let mut request = kube::core::Request::new(Pod::url_path(&(), Some(ns)))
            .evict(name, &params)
            .map_err(|e| ActionError::Api(Error::Kube(kube::Error::BuildRequest(e))))?;
        // kube's body spells deleteOptions in snake case, which the API
        // server ignores: write the preconditions and dry run ourselves.
        let mut options = json!({"preconditions": {"uid": pod.metadata.uid}});
        if dry_run {
            options["dryRun"] = json!(["All"]);
        }
        *request.body_mut() = serde_json::to_vec(&json!({
            "metadata": {"name": name, "namespace": ns},
            "deleteOptions": options,
        }))
        .map_err(|e| ActionError::Api(Error::Serialize("eviction", e)))?;
        match bounded(
            self.no_retry
                .request::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>(request),
        )
        .await
        {
            Ok(_) => Ok(Eviction::Done),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(Eviction::Gone),
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 429 => {
                Ok(Eviction::Forbidden(s.message))
            }
            Err(e) if dry_run => Err(dry_run_refused(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until the evicted pod (by UID) no longer exists.
    async fn wait_gone(&self, change: &Change, deadline: Instant) -> Result<(), ActionError> {
        let api: Api<Pod> = Api::namespaced(self.client().clone(), &change.object.namespace);
        let uid = change.before["metadata"]["uid"]
            .as_str()
            .unwrap_or_default();
        loop {
            let gone = match bounded(api.get_opt(&change.object.name)).await? {
                None => true,
                Some(p) => p.metadata.uid.as_deref() != Some(uid),
            };
            if gone {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ActionError::Timeout(format!(
                    "{} was evicted but is still terminating",
                    change.object
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Catalogued for DrainNode {
    const KIND: Kind = Kind::new::<Self>(
        "drain_node",
        Risk::High,
        "Cordon a Node and evict its pods through the Eviction API, honouring PodDisruptionBudgets; DaemonSet, mirror and protected-namespace pods stay; refused when a pod has no controller.",
        &["Node"],
    )
    .reversible()
    .destructive();
}

impl Action for DrainNode {
    fn target(&self, _holder: &str) -> Option<ObjectRef> {
        Some(ObjectRef::new("Node", "", &self.name))
    }

    fn check(&self, _bounds: &Bounds) -> Result<(), String> {
        DrainNode::check(self)
    }

    fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
        Box::pin(async move {
            let (changes, message) = cx.cluster.drain_node(self, cx.dry_run).await?;
            Ok(Ran::Many(changes, message))
        })
    }

    /// Evicted pods are replaced by their controllers; only the cordon can
    /// be undone.
    fn undo(&self, change: &Change) -> Option<ActionCall> {
        (change.object.kind == "Node" && !super::node::was_unschedulable(&change.before)).then(
            || {
                ActionCall::of(UncordonNode(NodeTarget {
                    name: self.name.clone(),
                }))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, extra: Value) -> Pod {
        let mut v = json!({"metadata": {"namespace": ns, "name": name}});
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            for (k, e) in extra {
                match (v.get_mut(k), e) {
                    (Some(Value::Object(a)), Value::Object(b)) => a.extend(b.clone()),
                    _ => {
                        v.insert(k.clone(), e.clone());
                    }
                }
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn owned_by(kind: &str) -> Value {
        json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": kind,
            "name": "o", "uid": "u", "controller": true}]}})
    }

    #[test]
    fn the_plan_evicts_controlled_pods_and_leaves_the_rest() {
        let pods = vec![
            pod("shop", "web-1", owned_by("ReplicaSet")),
            pod("shop", "agent-1", owned_by("DaemonSet")),
            pod(
                "shop",
                "static-n1",
                json!({"metadata": {"annotations": {MIRROR: "x"}}}),
            ),
            pod("kube-system", "dns-1", owned_by("ReplicaSet")),
            pod("shop", "done", {
                let mut v = owned_by("Job");
                v["status"] = json!({"phase": "Succeeded"});
                v
            }),
        ];
        let p = plan(pods, |ns| ns == "kube-system");
        let names: Vec<_> = p
            .evict
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["web-1"]);
        assert_eq!(
            p.skipped,
            [
                "shop/agent-1: DaemonSet pod",
                "shop/static-n1: mirror pod",
                "kube-system/dns-1: protected namespace",
                "shop/done: finished"
            ]
        );
        assert!(p.unreplaceable.is_empty());
    }

    #[test]
    fn a_bare_pod_is_reported_so_the_drain_can_refuse() {
        let p = plan(vec![pod("shop", "debug", json!({}))], |_| false);
        assert_eq!(p.unreplaceable, ["shop/debug"]);
        assert!(p.evict.is_empty());
    }

    #[test]
    fn timeouts_are_bounded() {
        let d = |t| DrainNode {
            name: "n".into(),
            timeout_seconds: t,
        };
        assert!(d(None).check().is_ok());
        assert_eq!(d(None).timeout(), Duration::from_secs(120));
        assert!(d(Some(0)).check().is_err());
        assert!(d(Some(1801)).check().is_err());
    }
}

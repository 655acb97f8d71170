//! Owner resolution (K-GW-4): a Pod resolves through its ReplicaSet to its
//! Deployment, or to its StatefulSet, DaemonSet or Job; the top-level owner
//! is what a fingerprint names.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kubernaut_api::ObjectRef;

use crate::{Cluster, Error, Result, bounded};

/// Owner chains are short (Pod → ReplicaSet → Deployment); a longer one is a
/// loop or something we do not understand.
const MAX_OWNER_DEPTH: usize = 4;

#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// The top-level owner.
    pub target: ObjectRef,
    /// From the signal's resource up to the target, inclusive.
    pub chain: Vec<ObjectRef>,
    /// Labels of every object on the chain, resource first.
    pub labels: Vec<BTreeMap<String, String>>,
}

impl Cluster {
    /// Metadata of a supported object, or `None` when it does not exist.
    pub async fn metadata(&self, obj: &ObjectRef) -> Result<Option<ObjectMeta>> {
        if let Some(meta) = self
            .views
            .as_ref()
            .and_then(|v| v.metadata(&obj.kind, &obj.namespace, &obj.name))
        {
            return Ok(Some(meta));
        }
        macro_rules! get {
            ($t:ty, namespaced) => {{
                let api: Api<$t> = Api::namespaced(self.client.clone(), &obj.namespace);
                bounded(api.get_metadata_opt(&obj.name))
                    .await?
                    .map(|m| m.metadata)
            }};
            ($t:ty, cluster) => {{
                let api: Api<$t> = Api::all(self.client.clone());
                bounded(api.get_metadata_opt(&obj.name))
                    .await?
                    .map(|m| m.metadata)
            }};
        }
        Ok(match obj.kind.as_str() {
            "Pod" => get!(Pod, namespaced),
            "ReplicaSet" => get!(ReplicaSet, namespaced),
            "Deployment" => get!(Deployment, namespaced),
            "StatefulSet" => get!(StatefulSet, namespaced),
            "DaemonSet" => get!(DaemonSet, namespaced),
            "Job" => get!(Job, namespaced),
            "Node" => get!(Node, cluster),
            "HorizontalPodAutoscaler" => get!(
                k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler,
                namespaced
            ),
            "PersistentVolumeClaim" => get!(
                k8s_openapi::api::core::v1::PersistentVolumeClaim,
                namespaced
            ),
            other => return Err(Error::UnsupportedKind(other.to_string())),
        })
    }

    /// Follows controller owner references from `resource` to its top-level
    /// owner. `None` when `resource` does not exist. An owner that is gone
    /// (an orphan being collected) ends the chain where it is.
    pub async fn resolve(&self, resource: &ObjectRef) -> Result<Option<Resolved>> {
        let Some(meta) = self.metadata(resource).await? else {
            return Ok(None);
        };
        let mut chain = vec![resource.clone()];
        let mut labels = vec![meta.labels.clone().unwrap_or_default()];
        let mut meta = meta;
        while chain.len() <= MAX_OWNER_DEPTH {
            let current = chain.last().cloned().unwrap_or_default();
            // SPEC K-GW-4: a Job is a top-level owner (its CronJob is not followed).
            if current.kind == "Job" {
                break;
            }
            let Some(owner) = controller_owner(&meta, &current.namespace) else {
                break;
            };
            match self.metadata(&owner).await {
                Ok(Some(m)) => {
                    labels.push(m.labels.clone().unwrap_or_default());
                    chain.push(owner);
                    meta = m;
                }
                Ok(None) | Err(Error::UnsupportedKind(_)) => break,
                Err(e) => return Err(e),
            }
        }
        let target = chain.last().cloned().unwrap_or_default();
        Ok(Some(Resolved {
            target,
            chain,
            labels,
        }))
    }

    pub async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<Option<BTreeMap<String, String>>> {
        if let Some(meta) = self
            .views
            .as_ref()
            .and_then(|v| v.metadata("Namespace", "", namespace))
        {
            return Ok(Some(meta.labels.unwrap_or_default()));
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        Ok(bounded(api.get_metadata_opt(namespace))
            .await?
            .map(|m| m.metadata.labels.unwrap_or_default()))
    }
}

fn controller_owner(meta: &ObjectMeta, namespace: &str) -> Option<ObjectRef> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| ObjectRef::new(&o.kind, namespace, &o.name))
}

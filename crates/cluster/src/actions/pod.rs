//! Pod deletion as the supervisor's restart_pod uses it: guarded by the UID
//! observed before the action, so that a resumed or repeated step never
//! touches a replacement, and made as a server-side dry run first.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Preconditions};

use crate::{Cluster, Result, bounded};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    pub uid: String,
    pub phase: String,
    pub node: Option<String>,
    pub deleting: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// The pod with that UID no longer exists: the action already took effect.
    AlreadyGone,
}

impl Cluster {
    pub async fn pod_state(&self, namespace: &str, name: &str) -> Result<Option<PodState>> {
        let api: Api<Pod> = Api::namespaced(self.client().clone(), namespace);
        Ok(bounded(api.get_opt(name)).await?.map(|p| PodState {
            uid: p.metadata.uid.unwrap_or_default(),
            phase: p.status.and_then(|s| s.phase).unwrap_or_default(),
            node: p.spec.and_then(|s| s.node_name),
            deleting: p.metadata.deletion_timestamp.is_some(),
        }))
    }

    /// Deletes the pod `name` only if it is still the one with `uid`.
    pub async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<DeleteOutcome> {
        let api: Api<Pod> = Api::namespaced(self.client().clone(), namespace);
        let preconditions = Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        };
        let dry = DeleteParams {
            dry_run: true,
            preconditions: Some(preconditions.clone()),
            ..Default::default()
        };
        let real = DeleteParams {
            preconditions: Some(preconditions),
            ..Default::default()
        };
        for params in [dry, real] {
            match bounded(api.delete(name, &params)).await {
                Ok(_) => {}
                // 404: gone; 409: the name now belongs to a replacement. Either
                // way the pod we meant is no longer there.
                Err(e) if e.is_not_found() || e.is_conflict() => {
                    return Ok(DeleteOutcome::AlreadyGone);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(DeleteOutcome::Deleted)
    }
}

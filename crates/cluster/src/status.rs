//! The controller's writes to `RemediationRequest` status. The controller
//! restates all of its own fields with server-side apply under one field
//! manager; `deduplication`, `signalResolution` and `storm` belong to the
//! gateway and are never sent here. A write names the resourceVersion it
//! was based on, so a replica that lost the request to another (K-RR-7)
//! gets a conflict instead of overwriting the new owner's state.

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kubernaut_api::{RemediationRequest, RemediationRequestStatus};
use serde_json::json;

use crate::{Cluster, Error, Result, bounded};

pub const FIELD_MANAGER: &str = "kubernaut-controller";

impl Cluster {
    /// Returns the request's new resourceVersion; a 409 when the request
    /// is no longer at `resource_version`.
    pub async fn apply_status(
        &self,
        namespace: &str,
        name: &str,
        status: &RemediationRequestStatus,
        resource_version: Option<&str>,
    ) -> Result<String> {
        let mut status = status.clone();
        status.deduplication = None;
        status.signal_resolution = None;
        status.storm = None;
        let mut body = json!({
            "apiVersion": "kubernaut.io/v1alpha1",
            "kind": "RemediationRequest",
            "metadata": {"name": name},
            "status": serde_json::to_value(&status).map_err(|e| Error::Serialize("status", e))?,
        });
        if let Some(rv) = resource_version {
            body["metadata"]["resourceVersion"] = json!(rv);
        }
        let api: Api<RemediationRequest> = Api::namespaced(self.client().clone(), namespace);
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let written = bounded(api.patch_status(name, &pp, &Patch::Apply(&body))).await?;
        Ok(written.metadata.resource_version.unwrap_or_default())
    }

    /// Deletes the request if it is still the object (uid) at the version
    /// the caller decided on; `false` if it is gone already. A conflict
    /// (it changed since) is an error: decide again on the new version.
    pub async fn delete_request(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        resource_version: &str,
    ) -> Result<bool> {
        let api: Api<RemediationRequest> = Api::namespaced(self.client().clone(), namespace);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: Some(resource_version.to_string()),
            }),
            ..Default::default()
        };
        match bounded(api.delete(name, &dp)).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn get_request(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<RemediationRequest>> {
        let api: Api<RemediationRequest> = Api::namespaced(self.client().clone(), namespace);
        bounded(api.get_opt(name)).await
    }
}

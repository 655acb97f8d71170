//! The controller's writes to `RemediationRequest` status. The controller
//! restates all of its own fields with server-side apply under one field
//! manager; `deduplication`, `signalResolution` and `storm` belong to the
//! gateway and are never sent here.

use kube::Api;
use kube::api::{Patch, PatchParams};
use kubernaut_api::{RemediationRequest, RemediationRequestStatus};
use serde_json::json;

use crate::{Cluster, Error, Result, bounded};

pub const FIELD_MANAGER: &str = "kubernaut-controller";

impl Cluster {
    pub async fn apply_status(
        &self,
        namespace: &str,
        name: &str,
        status: &RemediationRequestStatus,
    ) -> Result<()> {
        let mut status = status.clone();
        status.deduplication = None;
        status.signal_resolution = None;
        status.storm = None;
        let body = json!({
            "apiVersion": "kubernaut.io/v1alpha1",
            "kind": "RemediationRequest",
            "status": serde_json::to_value(&status).map_err(|e| Error::Serialize("status", e))?,
        });
        let api: Api<RemediationRequest> = Api::namespaced(self.client().clone(), namespace);
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        bounded(api.patch_status(name, &pp, &Patch::Apply(&body))).await?;
        Ok(())
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

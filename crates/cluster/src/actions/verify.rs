//! Did an action take effect? Checked after the action, by the Verifying
//! stage, and before re-running a step a restart interrupted.
//!
//! - Deletions (restart_pod, delete_job): the object with the UID deleted is
//!   gone (its controller's replacement has another UID).
//! - Pod-template and replica changes (scale_*, rollout_restart,
//!   increase_resources, rollback_deployment): the workload's controller has
//!   observed the generation the change produced.
//! - Everything else is a plain update the API server answered with the
//!   new object, or waits for its effect itself (drain_node).

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::Api;
use kubernaut_api::ObjectRef;

use super::{ActionCall, ActionError, Outcome, Verify};
use crate::{Cluster, bounded};

impl Cluster {
    /// `Ok(Some(what was seen))` once `outcome` of `call` shows in the
    /// cluster, `Ok(None)` while it does not yet.
    pub async fn verify(
        &self,
        call: &ActionCall,
        outcome: &Outcome,
    ) -> Result<Option<String>, ActionError> {
        if outcome.dry_run {
            return Ok(Some("dry run: nothing to verify".into()));
        }
        if outcome.changes.is_empty() {
            return Ok(Some(outcome.message.clone()));
        }
        match call.kind().verify {
            Verify::Answered => Ok(Some(outcome.message.clone())),
            Verify::Gone => self.verify_gone(outcome).await,
            Verify::Observed => self.verify_observed(outcome).await,
        }
    }

    /// Deletions: every object with the UID deleted is gone (its
    /// controller's replacement has another UID).
    async fn verify_gone(&self, outcome: &Outcome) -> Result<Option<String>, ActionError> {
        for change in &outcome.changes {
            let uid = change.before["metadata"]["uid"]
                .as_str()
                .unwrap_or_default();
            let now = self.metadata(&change.object).await?;
            if now.and_then(|m| m.uid).as_deref() == Some(uid) {
                return Ok(None);
            }
        }
        Ok(Some("the deleted object is gone".into()))
    }

    /// Pod-template and replica changes: the workload's controller has
    /// observed the generation each change produced.
    async fn verify_observed(&self, outcome: &Outcome) -> Result<Option<String>, ActionError> {
        for change in &outcome.changes {
            let Some(wanted) = change.after["metadata"]["generation"].as_i64() else {
                continue;
            };
            let uid = change.after["metadata"]["uid"].as_str().unwrap_or_default();
            let observed = self.observed_generation(&change.object, uid).await?;
            if observed.is_none_or(|o| o < wanted) {
                return Ok(None);
            }
        }
        Ok(Some("the workload's controller observed the change".into()))
    }

    /// From the workloads' watch while it holds the object: a verification
    /// polls for as long as a rollout takes (up to the verifying timeout),
    /// and four GETs a second per request waiting on a rollout was API
    /// server time the rollouts themselves needed.
    async fn observed_generation(
        &self,
        object: &ObjectRef,
        uid: &str,
    ) -> Result<Option<i64>, ActionError> {
        if let Some(observed) = self
            .views
            .as_ref()
            .and_then(|v| v.observed_generation(&object.kind, &object.namespace, &object.name, uid))
        {
            return Ok(observed);
        }
        let client = self.client().clone();
        macro_rules! observed {
            ($k:ty) => {
                bounded(Api::<$k>::namespaced(client, &object.namespace).get_opt(&object.name))
                    .await?
                    .and_then(|w| w.status?.observed_generation)
            };
        }
        Ok(match object.kind.as_str() {
            "Deployment" => observed!(Deployment),
            "StatefulSet" => observed!(StatefulSet),
            "DaemonSet" => observed!(DaemonSet),
            _ => None,
        })
    }
}

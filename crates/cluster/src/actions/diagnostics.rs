//! collect_diagnostics: a read-only action whose result is the evidence
//! (the object, its recent events, its pods' container states) recorded
//! in the audit trail. Values of environment variables are redacted and
//! `managedFields` dropped: evidence is read by people and, later, by the
//! analysis prompt, and must never carry credentials.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::ListParams;
use kubernaut_api::ObjectRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use futures::future::BoxFuture;

use super::{Action, ActionError, Catalogued, Kind, Ran, Risk, RunCx};
use crate::{Cluster, bounded};

/// The most events and pods kept.
const MAX_EVENTS: usize = 20;
const MAX_PODS: usize = 10;

/// Parameters of collect_diagnostics.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectDiagnostics {
    /// Pod, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job or Node.
    pub kind: String,
    /// Empty for Nodes.
    #[serde(default)]
    pub namespace: String,
    pub name: String,
}

impl Cluster {
    /// What collect_diagnostics records, read for the analysis prompt.
    pub async fn diagnostics(&self, target: &ObjectRef) -> Result<Value, ActionError> {
        self.collect_diagnostics(&CollectDiagnostics {
            kind: target.kind.clone(),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        })
        .await
    }

    pub(super) async fn collect_diagnostics(
        &self,
        d: &CollectDiagnostics,
    ) -> Result<Value, ActionError> {
        let target = ObjectRef::new(&d.kind, &d.namespace, &d.name);
        let client = self.client().clone();
        if !CollectDiagnostics::KIND.acts_on.contains(&d.kind.as_str()) {
            return Err(ActionError::Refused(format!(
                "collect_diagnostics does not know kind {}",
                d.kind
            )));
        }
        let object = self.read_object(&target).await?;
        let Some(mut object) = object else {
            return Err(ActionError::NotFound(target));
        };
        crate::redact::redact(&mut object);

        let events_api: Api<Event> = if d.namespace.is_empty() {
            Api::all(client.clone())
        } else {
            Api::namespaced(client.clone(), &d.namespace)
        };
        let selector = format!(
            "involvedObject.kind={},involvedObject.name={}",
            d.kind, d.name
        );
        let mut events = bounded(events_api.list(&ListParams::default().fields(&selector)))
            .await?
            .items;
        events.sort_by(|a, b| b.last_timestamp.cmp(&a.last_timestamp));
        let events: Vec<Value> = events
            .into_iter()
            .take(MAX_EVENTS)
            .map(|e| {
                json!({
                    "type": e.type_, "reason": e.reason, "message": e.message,
                    "count": e.count, "lastTimestamp": e.last_timestamp,
                })
            })
            .collect();

        let pods = if d.kind == "Pod" {
            vec![object.clone()]
        } else if let Some(selector) = crate::health::pod_selector(&object["spec"]) {
            let api: Api<Pod> = Api::namespaced(client.clone(), &d.namespace);
            bounded(
                api.list(
                    &ListParams::default()
                        .labels(&selector)
                        .limit(MAX_PODS as u32),
                ),
            )
            .await?
            .items
            .into_iter()
            .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
            .collect()
        } else {
            Vec::new()
        };
        let pods: Vec<Value> = pods
            .iter()
            .take(MAX_PODS)
            .map(|p| {
                json!({
                    "name": p["metadata"]["name"],
                    "phase": p["status"]["phase"],
                    "node": p["spec"]["nodeName"],
                    "containerStatuses": p["status"]["containerStatuses"],
                })
            })
            .collect();
        Ok(json!({ "object": object, "events": events, "pods": pods }))
    }
}

impl Catalogued for CollectDiagnostics {
    const KIND: Kind = Kind::new::<Self>(
        "collect_diagnostics",
        Risk::None,
        "Record the object (env values redacted), its recent events and its pods' container states in the audit trail.",
        &[
            "Pod",
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "Node",
        ],
    )
    .read_only();
}

impl Action for CollectDiagnostics {
    fn target(&self, _holder: &str) -> Option<ObjectRef> {
        Some(ObjectRef::new(&self.kind, &self.namespace, &self.name))
    }

    fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
        Box::pin(async move {
            let evidence = cx.cluster.collect_diagnostics(self).await?;
            Ok(Ran::Read(
                evidence,
                format!("collected diagnostics of {}", cx.target),
            ))
        })
    }
}

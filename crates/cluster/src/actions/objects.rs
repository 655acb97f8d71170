//! Object actions: restart_pod (delete it; its controller replaces it),
//! quarantine_pod, delete_job, and update_hpa.

use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, Preconditions, PropagationPolicy};
use kube::{Api, Resource};
use kubernaut_api::ObjectRef;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::Debug;

use futures::future::BoxFuture;

use super::{
    Action, ActionCall, ActionError, Bounds, Catalogued, Change, Kind, Ran, Risk, RunCx, Verify,
    WriteMode, dry_run_refused, to_value,
};
use crate::{Cluster, bounded};

/// Label of a quarantined pod.
pub const QUARANTINED: &str = "kubernaut.io/quarantined";
/// Annotation keeping the labels quarantine_pod removed (JSON object).
pub const QUARANTINED_LABELS: &str = "kubernaut.io/quarantined-labels";

/// Parameters of actions on one namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Named {
    pub namespace: String,
    pub name: String,
}

/// Parameters of update_hpa (autoscaling/v1, which every supported API
/// server serves). At least one bound; both within the executor's bounds.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateHpa {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i32>,
}

impl UpdateHpa {
    pub(super) fn check(&self, bounds: &Bounds) -> Result<(), String> {
        if self.min_replicas.is_none() && self.max_replicas.is_none() {
            return Err("update_hpa needs minReplicas or maxReplicas".into());
        }
        for (field, v) in [
            ("minReplicas", self.min_replicas),
            ("maxReplicas", self.max_replicas),
        ] {
            if let Some(v) = v
                && !(1..=bounds.max_replicas).contains(&v)
            {
                return Err(format!(
                    "{field} {v} is outside 1..={} (executor bounds)",
                    bounds.max_replicas
                ));
            }
        }
        if let (Some(min), Some(max)) = (self.min_replicas, self.max_replicas)
            && min > max
        {
            return Err(format!("minReplicas {min} exceeds maxReplicas {max}"));
        }
        Ok(())
    }

    /// The same update, back to the bounds of `before`.
    pub(super) fn restored(&self, before: &Value) -> Option<UpdateHpa> {
        let spec = &before["spec"];
        Some(UpdateHpa {
            min_replicas: Some(i32::try_from(spec["minReplicas"].as_i64().unwrap_or(1)).ok()?),
            max_replicas: Some(i32::try_from(spec["maxReplicas"].as_i64()?).ok()?),
            ..self.clone()
        })
    }
}

impl Cluster {
    /// Deletes the object `name` as it is now (its UID is a precondition,
    /// so a replacement of the same name is never touched), dry run first.
    /// `None` when it is already gone.
    pub(super) async fn delete_object<K>(
        &self,
        api: &Api<K>,
        object: &ObjectRef,
        dry_run: bool,
        propagation: Option<PropagationPolicy>,
    ) -> Result<Option<Change>, ActionError>
    where
        K: Resource + Clone + Debug + Serialize + DeserializeOwned,
    {
        let Some(before) = bounded(api.get_opt(&object.name)).await? else {
            return Err(ActionError::NotFound(object.clone()));
        };
        if before.meta().deletion_timestamp.is_some() {
            return Ok(None);
        }
        let params = |dry_run| DeleteParams {
            dry_run,
            propagation_policy: propagation.clone(),
            preconditions: Some(Preconditions {
                uid: before.meta().uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match bounded(api.delete(&object.name, &params(true))).await {
            Ok(_) => {}
            // Gone, or the name now belongs to a replacement: done already.
            Err(e) if e.is_not_found() || e.is_conflict() => return Ok(None),
            Err(e) => return Err(dry_run_refused(e)),
        }
        if !dry_run {
            match bounded(api.delete(&object.name, &params(false))).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(Change {
            object: object.clone(),
            before: to_value(&before)?,
            after: Value::Null,
        }))
    }

    pub(super) async fn restart_pod(
        &self,
        p: &Named,
        dry_run: bool,
    ) -> Result<Option<Change>, ActionError> {
        let api: Api<Pod> = Api::namespaced(self.client().clone(), &p.namespace);
        self.delete_object(
            &api,
            &ObjectRef::new("Pod", &p.namespace, &p.name),
            dry_run,
            None,
        )
        .await
    }

    /// Takes a pod out of its Services (and so out of its ReplicaSet, which
    /// replaces it) by moving the labels their selectors match into the
    /// annotation [`QUARANTINED_LABELS`], and marks it
    /// `kubernaut.io/quarantined=true`. The pod keeps running for inspection.
    pub(super) async fn quarantine_pod(
        &self,
        p: &Named,
        writes: WriteMode,
    ) -> Result<Option<Change>, ActionError> {
        let services: Api<Service> = Api::namespaced(self.client().clone(), &p.namespace);
        let selectors: Vec<std::collections::BTreeMap<String, String>> =
            bounded(services.list(&Default::default()))
                .await?
                .items
                .into_iter()
                .filter_map(|s| s.spec?.selector)
                .filter(|sel| !sel.is_empty())
                .collect();
        let api: Api<Pod> = Api::namespaced(self.client().clone(), &p.namespace);
        let object = ObjectRef::new("Pod", &p.namespace, &p.name);
        self.update_object(&api, &object, writes, |pod: &mut Pod| {
            let labels = pod.metadata.labels.get_or_insert_with(Default::default);
            let selected: std::collections::BTreeSet<String> = selectors
                .iter()
                .filter(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
                .flat_map(|sel| sel.keys().cloned())
                .collect();
            if selected.is_empty() {
                return Ok(false);
            }
            let moved: std::collections::BTreeMap<String, String> = selected
                .iter()
                .filter_map(|k| Some((k.clone(), labels.remove(k)?)))
                .collect();
            labels.insert(QUARANTINED.into(), "true".into());
            pod.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(
                    QUARANTINED_LABELS.into(),
                    serde_json::to_string(&moved).unwrap_or_default(),
                );
            Ok(true)
        })
        .await
    }

    /// Deletes a Job and, in the background, its pods.
    pub(super) async fn delete_job(
        &self,
        j: &Named,
        dry_run: bool,
    ) -> Result<Option<Change>, ActionError> {
        let api: Api<Job> = Api::namespaced(self.client().clone(), &j.namespace);
        let object = ObjectRef::new("Job", &j.namespace, &j.name);
        self.delete_object(&api, &object, dry_run, Some(PropagationPolicy::Background))
            .await
    }

    pub(super) async fn update_hpa(
        &self,
        h: &UpdateHpa,
        writes: WriteMode,
    ) -> Result<Option<Change>, ActionError> {
        let api: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.client().clone(), &h.namespace);
        let object = ObjectRef::new("HorizontalPodAutoscaler", &h.namespace, &h.name);
        self.update_object(
            &api,
            &object,
            writes,
            |hpa: &mut HorizontalPodAutoscaler| {
                let spec = hpa.spec.get_or_insert_with(Default::default);
                let (min, max) = (
                    h.min_replicas.or(spec.min_replicas).unwrap_or(1),
                    h.max_replicas.unwrap_or(spec.max_replicas),
                );
                if min > max {
                    return Err(ActionError::Refused(format!(
                        "minReplicas {min} would exceed maxReplicas {max}"
                    )));
                }
                let changed = spec.min_replicas.unwrap_or(1) != min || spec.max_replicas != max;
                spec.min_replicas = Some(min);
                spec.max_replicas = max;
                Ok(changed)
            },
        )
        .await
    }
}

/// restart_pod.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct RestartPod(pub Named);

/// quarantine_pod.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct QuarantinePod(pub Named);

/// delete_job.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct DeleteJob(pub Named);

impl Catalogued for RestartPod {
    const KIND: Kind = Kind::new::<Self>(
        "restart_pod",
        Risk::Low,
        "Delete a pod (the one that exists now, by UID) so that its controller replaces it.",
        &["Pod"],
    )
    .not_repeatable()
    .verified(Verify::Gone);
}

impl Catalogued for QuarantinePod {
    const KIND: Kind = Kind::new::<Self>(
        "quarantine_pod",
        Risk::Medium,
        "Take a pod out of its Services (and its ReplicaSet, which replaces it) by moving the selected labels into an annotation; the pod keeps running for inspection.",
        &["Pod"],
    )
    .destructive()
    .updates_target();
}

impl Catalogued for DeleteJob {
    const KIND: Kind = Kind::new::<Self>(
        "delete_job",
        Risk::Medium,
        "Delete a Job and, in the background, its pods.",
        &["Job"],
    )
    .not_repeatable()
    .verified(Verify::Gone)
    .destructive();
}

impl Catalogued for UpdateHpa {
    const KIND: Kind = Kind::new::<Self>(
        "update_hpa",
        Risk::Medium,
        "Set a HorizontalPodAutoscaler's minReplicas and/or maxReplicas (within bounds.maxReplicas).",
        &["HorizontalPodAutoscaler"],
    )
    .reversible()
    .updates_target();
}

impl Action for RestartPod {
    fn target(&self, _holder: &str) -> Option<ObjectRef> {
        Some(ObjectRef::new("Pod", &self.0.namespace, &self.0.name))
    }

    fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
        Box::pin(async move {
            let change = cx.cluster.restart_pod(&self.0, cx.dry_run).await?;
            Ok(Ran::Changed(change))
        })
    }
}

impl Action for QuarantinePod {
    fn target(&self, _holder: &str) -> Option<ObjectRef> {
        Some(ObjectRef::new("Pod", &self.0.namespace, &self.0.name))
    }

    fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
        Box::pin(async move {
            let change = cx.cluster.quarantine_pod(&self.0, cx.write_mode()).await?;
            Ok(Ran::Changed(change))
        })
    }
}

impl Action for DeleteJob {
    fn target(&self, _holder: &str) -> Option<ObjectRef> {
        Some(ObjectRef::new("Job", &self.0.namespace, &self.0.name))
    }

    fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
        Box::pin(async move {
            let change = cx.cluster.delete_job(&self.0, cx.dry_run).await?;
            Ok(Ran::Changed(change))
        })
    }
}

impl Action for UpdateHpa {
    fn target(&self, _holder: &str) -> Option<ObjectRef> {
        Some(ObjectRef::new(
            "HorizontalPodAutoscaler",
            &self.namespace,
            &self.name,
        ))
    }

    fn check(&self, bounds: &Bounds) -> Result<(), String> {
        UpdateHpa::check(self, bounds)
    }

    fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
        Box::pin(async move {
            let change = cx.cluster.update_hpa(self, cx.write_mode()).await?;
            Ok(Ran::Changed(change))
        })
    }

    fn undo(&self, change: &Change) -> Option<ActionCall> {
        Some(ActionCall::of(self.restored(&change.before)?))
    }
}

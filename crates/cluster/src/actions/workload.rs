//! Workload actions: scale_deployment, scale_statefulset and
//! rollout_restart.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kubernaut_api::ObjectRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use futures::future::BoxFuture;

use super::objects::Named;
use super::{
    Action, ActionCall, ActionError, Bounds, Catalogued, Change, Kind, Ran, Risk, RunCx, Verify,
    WriteMode,
};
use crate::{Cluster, bounded};

/// The revision a Deployment and its ReplicaSets carry.
const REVISION: &str = "deployment.kubernetes.io/revision";

fn revision(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<u64> {
    meta.annotations.as_ref()?.get(REVISION)?.parse().ok()
}

/// The annotation `kubectl rollout restart` sets on the pod template.
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Parameters of scale_deployment and scale_statefulset.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub namespace: String,
    pub name: String,
    /// The wanted replicas, 0 up to the configured maximum.
    pub replicas: i32,
}

impl Scale {
    pub(super) fn check(&self, bounds: &Bounds) -> Result<(), String> {
        if !(0..=bounds.max_replicas).contains(&self.replicas) {
            return Err(format!(
                "replicas {} is outside 0..={} (executor bounds)",
                self.replicas, bounds.max_replicas
            ));
        }
        Ok(())
    }

    /// The same scale, back to the replicas of `before` (1 when unset, as
    /// the API server defaults it).
    pub(super) fn restored(&self, before: &Value) -> Option<Scale> {
        let replicas = match &before["spec"]["replicas"] {
            Value::Null => 1,
            v => i32::try_from(v.as_i64()?).ok()?,
        };
        Some(Scale {
            replicas,
            ..self.clone()
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

/// Parameters of rollout_restart.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRestart {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

impl Cluster {
    /// Sets the replicas of the Deployment or StatefulSet `s` names.
    pub(super) async fn scale(
        &self,
        kind: WorkloadKind,
        s: &Scale,
        writes: WriteMode,
    ) -> Result<Option<Change>, ActionError> {
        let object = ObjectRef::new(kind.as_str(), &s.namespace, &s.name);
        let client = self.client().clone();
        macro_rules! scale {
            ($k:ty) => {{
                let api: Api<$k> = Api::namespaced(client, &s.namespace);
                self.update_object(&api, &object, writes, |w: &mut $k| {
                    let spec = w.spec.get_or_insert_with(Default::default);
                    let changed = spec.replicas != Some(s.replicas);
                    spec.replicas = Some(s.replicas);
                    Ok(changed)
                })
                .await
            }};
        }
        match kind {
            WorkloadKind::Deployment => scale!(Deployment),
            WorkloadKind::StatefulSet => scale!(StatefulSet),
            WorkloadKind::DaemonSet => Err(ActionError::Refused(
                "a DaemonSet runs one pod per node and has no replicas".into(),
            )),
        }
    }

    /// Puts the pod template of the Deployment's previous revision back, as
    /// `kubectl rollout undo` does: the ReplicaSet it owns with the highest
    /// revision below the current one.
    pub(super) async fn rollback_deployment(
        &self,
        d: &Named,
        writes: WriteMode,
    ) -> Result<Option<Change>, ActionError> {
        let object = ObjectRef::new("Deployment", &d.namespace, &d.name);
        let api: Api<Deployment> = Api::namespaced(self.client().clone(), &d.namespace);
        let Some(current) = bounded(api.get_opt(&d.name)).await? else {
            return Err(ActionError::NotFound(object));
        };
        let uid = current.metadata.uid.clone();
        let now = revision(&current.metadata).unwrap_or(0);
        let sets: Api<ReplicaSet> = Api::namespaced(self.client().clone(), &d.namespace);
        let previous = bounded(sets.list(&Default::default()))
            .await?
            .items
            .into_iter()
            .filter(|rs| {
                rs.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
            })
            .filter_map(|rs| Some((revision(&rs.metadata)?, rs)))
            .filter(|(r, _)| *r < now)
            .max_by_key(|(r, _)| *r);
        let Some((rev, rs)) = previous else {
            return Err(ActionError::Refused(format!(
                "{object} has no revision before {now} to roll back to"
            )));
        };
        let Some(mut template) = rs.spec.and_then(|s| s.template) else {
            return Err(ActionError::Refused(format!(
                "the ReplicaSet of revision {rev} has no pod template"
            )));
        };
        // The ReplicaSet controller adds this label; the Deployment's
        // template never carries it.
        if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove("pod-template-hash");
        }
        self.update_object(&api, &object, writes, |dep: &mut Deployment| {
            if dep.metadata.uid != uid {
                return Err(ActionError::Refused(format!(
                    "{object} was replaced while rolling it back"
                )));
            }
            let spec = dep.spec.get_or_insert_with(Default::default);
            let changed = spec.template != template;
            spec.template = template.clone();
            Ok(changed)
        })
        .await
    }

    /// Stamps the pod template, as `kubectl rollout restart` does, so that
    /// the workload's controller replaces its pods by its own strategy.
    pub(super) async fn rollout_restart(
        &self,
        r: &RolloutRestart,
        writes: WriteMode,
    ) -> Result<Option<Change>, ActionError> {
        let object = ObjectRef::new(r.kind.as_str(), &r.namespace, &r.name);
        let stamp = Timestamp::now().to_string();
        let client = self.client().clone();
        macro_rules! restart {
            ($k:ty) => {{
                let api: Api<$k> = Api::namespaced(client, &r.namespace);
                self.update_object(&api, &object, writes, |w: &mut $k| {
                    let template = &mut w.spec.get_or_insert_with(Default::default).template;
                    template
                        .metadata
                        .get_or_insert_with(Default::default)
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert(RESTARTED_AT.to_string(), stamp.clone());
                    Ok(true)
                })
                .await
            }};
        }
        match r.kind {
            WorkloadKind::Deployment => restart!(Deployment),
            WorkloadKind::StatefulSet => restart!(StatefulSet),
            WorkloadKind::DaemonSet => restart!(DaemonSet),
        }
    }
}

/// The kinds rollout_restart and increase_resources act on.
pub(super) const WORKLOADS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet"];

/// scale_deployment.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct ScaleDeployment(pub Scale);

/// scale_statefulset.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct ScaleStatefulset(pub Scale);

/// rollback_deployment.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct RollbackDeployment(pub Named);

impl Catalogued for ScaleDeployment {
    const KIND: Kind = Kind::new::<Self>(
        "scale_deployment",
        Risk::Medium,
        "Set a Deployment's replicas (bounded by bounds.maxReplicas).",
        &["Deployment"],
    )
    .reversible()
    .verified(Verify::Observed)
    .destructive()
    .updates_target();
}

impl Catalogued for ScaleStatefulset {
    const KIND: Kind = Kind::new::<Self>(
        "scale_statefulset",
        Risk::Medium,
        "Set a StatefulSet's replicas (bounded by bounds.maxReplicas).",
        &["StatefulSet"],
    )
    .reversible()
    .verified(Verify::Observed)
    .destructive()
    .updates_target();
}

impl Catalogued for RolloutRestart {
    const KIND: Kind = Kind::new::<Self>(
        "rollout_restart",
        Risk::Low,
        "Restart a Deployment's, StatefulSet's or DaemonSet's pods through a rollout, as kubectl rollout restart does.",
        WORKLOADS,
    )
    .not_repeatable()
    .verified(Verify::Observed)
    .updates_target();
}

impl Catalogued for RollbackDeployment {
    const KIND: Kind = Kind::new::<Self>(
        "rollback_deployment",
        Risk::High,
        "Put back the pod template of a Deployment's previous revision (its ReplicaSet), as kubectl rollout undo does.",
        &["Deployment"],
    )
    .not_repeatable()
    .verified(Verify::Observed)
    .updates_target();
}

macro_rules! scale_action {
    ($t:ident, $kind:expr, $k8s:literal) => {
        impl Action for $t {
            fn target(&self, _holder: &str) -> Option<ObjectRef> {
                Some(ObjectRef::new($k8s, &self.0.namespace, &self.0.name))
            }

            fn check(&self, bounds: &Bounds) -> Result<(), String> {
                self.0.check(bounds)
            }

            fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
                Box::pin(async move {
                    let change = cx.cluster.scale($kind, &self.0, cx.write_mode()).await?;
                    Ok(Ran::Changed(change))
                })
            }

            fn undo(&self, change: &Change) -> Option<ActionCall> {
                Some(ActionCall::of($t(self.0.restored(&change.before)?)))
            }
        }
    };
}

scale_action!(ScaleDeployment, WorkloadKind::Deployment, "Deployment");
scale_action!(ScaleStatefulset, WorkloadKind::StatefulSet, "StatefulSet");

impl Action for RolloutRestart {
    fn target(&self, _holder: &str) -> Option<ObjectRef> {
        Some(ObjectRef::new(
            self.kind.as_str(),
            &self.namespace,
            &self.name,
        ))
    }

    fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
        Box::pin(async move {
            let change = cx.cluster.rollout_restart(self, cx.write_mode()).await?;
            Ok(Ran::Changed(change))
        })
    }
}

impl Action for RollbackDeployment {
    fn target(&self, _holder: &str) -> Option<ObjectRef> {
        Some(ObjectRef::new(
            "Deployment",
            &self.0.namespace,
            &self.0.name,
        ))
    }

    fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
        Box::pin(async move {
            let change = cx
                .cluster
                .rollback_deployment(&self.0, cx.write_mode())
                .await?;
            Ok(Ran::Changed(change))
        })
    }
}

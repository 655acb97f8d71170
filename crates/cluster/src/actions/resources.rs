//! Actions that grow a quantity: increase_resources (a container's requests
//! and limits) and expand_pvc (a claim's storage). Both are bounded by a
//! factor of the current value and by an absolute cap.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodSpec, ResourceRequirements};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use kube::Api;
use kubernaut_api::ObjectRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::quantity::{Quantity, Resource};
use futures::future::BoxFuture;

use super::{
    Action, ActionCall, ActionError, Bounds, Catalogued, Change, Kind, Ran, Risk, RunCx, Verify,
    WorkloadKind, WriteMode,
};
use crate::{Cluster, bounded};

/// Parameters of increase_resources: multiply the requests and limits of
/// one resource of one container of a workload's pod template.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncreaseResources {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
    /// The container's name in the pod template.
    pub container: String,
    pub resource: Resource,
    /// Greater than 1, at most `bounds.maxIncreaseFactor`.
    pub factor: f64,
    /// Set only by a rollback: the container's resources to put back.
    #[serde(skip)]
    #[schemars(skip)]
    pub restore: Option<ResourceRequirements>,
}

/// Parameters of expand_pvc.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpandPvc {
    pub namespace: String,
    pub name: String,
    /// The new storage request, e.g. "20Gi"; larger than the current one.
    pub size: String,
}

fn check_factor(factor: f64, bounds: &Bounds) -> Result<(), String> {
    if !(factor.is_finite() && factor > 1.0 && factor <= bounds.max_increase_factor) {
        return Err(format!(
            "factor {factor} is outside (1, {}] (executor bounds)",
            bounds.max_increase_factor
        ));
    }
    Ok(())
}

impl IncreaseResources {
    pub(super) fn check(&self, bounds: &Bounds) -> Result<(), String> {
        if self.restore.is_some() {
            return Ok(());
        }
        check_factor(self.factor, bounds)
    }

    /// The rollback: the container's resources as they were in `before`.
    pub(super) fn restored(&self, before: &Value) -> Option<IncreaseResources> {
        let containers = before["spec"]["template"]["spec"]["containers"].as_array()?;
        let container = containers
            .iter()
            .find(|c| c["name"] == self.container.as_str())?;
        let resources: ResourceRequirements =
            serde_json::from_value(container["resources"].clone()).unwrap_or_default();
        Some(IncreaseResources {
            restore: Some(resources),
            ..self.clone()
        })
    }
}

/// Multiplies `resource` in the requests and limits of `container`;
/// `Ok(false)` never happens (a factor above 1 always changes something).
fn grow(spec: &mut PodSpec, r: &IncreaseResources, bounds: &Bounds) -> Result<bool, ActionError> {
    let Some(container) = spec.containers.iter_mut().find(|c| c.name == r.container) else {
        return Err(ActionError::Refused(format!(
            "the pod template has no container {:?}",
            r.container
        )));
    };
    let resources = container.resources.get_or_insert_with(Default::default);
    if let Some(restore) = &r.restore {
        let changed = resources != restore;
        *resources = restore.clone();
        return Ok(changed);
    }
    let cap = match r.resource {
        Resource::Cpu => bounds.max_cpu,
        _ => bounds.max_memory,
    };
    let key = r.resource.as_str();
    let mut grown = 0;
    for (what, values) in [
        ("request", resources.requests.as_mut()),
        ("limit", resources.limits.as_mut()),
    ] {
        let Some(value) = values.and_then(|v: &mut BTreeMap<String, K8sQuantity>| v.get_mut(key))
        else {
            continue;
        };
        let now: Quantity = value
            .0
            .parse()
            .map_err(|e| ActionError::Refused(format!("{key} {what}: {e}")))?;
        let Some(next) = now.scaled(r.factor, r.resource) else {
            return Err(ActionError::Refused(format!(
                "factor {} is invalid",
                r.factor
            )));
        };
        if next > cap {
            return Err(ActionError::Refused(format!(
                "{key} {what} {} × {} = {} exceeds the cap {} (executor bounds)",
                value.0,
                r.factor,
                next.render(r.resource),
                cap.render(r.resource)
            )));
        }
        value.0 = next.render(r.resource);
        grown += 1;
    }
    if grown == 0 {
        return Err(ActionError::Refused(format!(
            "container {:?} has no {key} request or limit to increase",
            r.container
        )));
    }
    Ok(true)
}

impl Cluster {
    pub(super) async fn increase_resources(
        &self,
        r: &IncreaseResources,
        bounds: &Bounds,
        writes: WriteMode,
    ) -> Result<Option<Change>, ActionError> {
        let object = ObjectRef::new(r.kind.as_str(), &r.namespace, &r.name);
        let client = self.client().clone();
        macro_rules! grow {
            ($k:ty) => {{
                let api: Api<$k> = Api::namespaced(client, &r.namespace);
                self.update_object(&api, &object, writes, |w: &mut $k| {
                    let template = &mut w.spec.get_or_insert_with(Default::default).template;
                    grow(
                        template.spec.get_or_insert_with(Default::default),
                        r,
                        bounds,
                    )
                })
                .await
            }};
        }
        match r.kind {
            WorkloadKind::Deployment => grow!(Deployment),
            WorkloadKind::StatefulSet => grow!(StatefulSet),
            WorkloadKind::DaemonSet => grow!(DaemonSet),
        }
    }

    /// Raises a bound claim's storage request, only when its StorageClass
    /// allows expansion (the API server's admission checks it again).
    pub(super) async fn expand_pvc(
        &self,
        p: &ExpandPvc,
        bounds: &Bounds,
        writes: WriteMode,
    ) -> Result<Option<Change>, ActionError> {
        let object = ObjectRef::new("PersistentVolumeClaim", &p.namespace, &p.name);
        let size: Quantity = p
            .size
            .parse()
            .map_err(|e| ActionError::Refused(format!("size: {e}")))?;
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client().clone(), &p.namespace);
        let Some(claim) = bounded(api.get_opt(&p.name)).await? else {
            return Err(ActionError::NotFound(object));
        };
        let Some(class) = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone())
        else {
            return Err(ActionError::Refused(format!(
                "{object} names no StorageClass, so it cannot be expanded"
            )));
        };
        let classes: Api<StorageClass> = Api::all(self.client().clone());
        let allowed = bounded(classes.get_opt(&class))
            .await?
            .and_then(|c| c.allow_volume_expansion)
            .unwrap_or(false);
        if !allowed {
            return Err(ActionError::Refused(format!(
                "StorageClass {class} does not allow volume expansion"
            )));
        }
        self.update_object(&api, &object, writes, |pvc: &mut PersistentVolumeClaim| {
            let requests = pvc
                .spec
                .get_or_insert_with(Default::default)
                .resources
                .get_or_insert_with(Default::default)
                .requests
                .get_or_insert_with(Default::default);
            let now: Quantity = match requests.get("storage") {
                Some(q) => {
                    q.0.parse()
                        .map_err(|e| ActionError::Refused(format!("current size: {e}")))?
                }
                None => Quantity::from_units(0),
            };
            if size == now {
                return Ok(false);
            }
            if size < now {
                return Err(ActionError::Refused(format!(
                    "{} is smaller than the current request; a claim can only grow",
                    p.size
                )));
            }
            let limit = now
                .scaled(bounds.max_increase_factor, Resource::Storage)
                .unwrap_or(now)
                .min(bounds.max_storage);
            if size > limit {
                return Err(ActionError::Refused(format!(
                    "{} exceeds {} ({}× the current request, capped at {}; executor bounds)",
                    p.size,
                    limit.render(Resource::Storage),
                    bounds.max_increase_factor,
                    bounds.max_storage.render(Resource::Storage)
                )));
            }
            requests.insert(
                "storage".into(),
                K8sQuantity(size.render(Resource::Storage)),
            );
            Ok(true)
        })
        .await
    }
}

impl Catalogued for IncreaseResources {
    const KIND: Kind = Kind::new::<Self>(
        "increase_resources",
        Risk::Medium,
        "Multiply the cpu or memory requests and limits of one container of a Deployment, StatefulSet or DaemonSet (at most bounds.maxIncreaseFactor, capped at bounds.maxCpu/maxMemory); the workload rolls out.",
        super::workload::WORKLOADS,
    )
    .reversible()
    .not_repeatable()
    .verified(Verify::Observed)
    .updates_target();
}

impl Catalogued for ExpandPvc {
    const KIND: Kind = Kind::new::<Self>(
        "expand_pvc",
        Risk::Medium,
        "Raise a PersistentVolumeClaim's storage request, only when its StorageClass allows expansion (at most bounds.maxIncreaseFactor times, capped at bounds.maxStorage); claims never shrink.",
        &["PersistentVolumeClaim"],
    )
    .updates_target();
}

impl Action for IncreaseResources {
    fn target(&self, _holder: &str) -> Option<ObjectRef> {
        Some(ObjectRef::new(
            self.kind.as_str(),
            &self.namespace,
            &self.name,
        ))
    }

    fn check(&self, bounds: &Bounds) -> Result<(), String> {
        IncreaseResources::check(self, bounds)
    }

    fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
        Box::pin(async move {
            let bounds = &cx.settings.bounds;
            let change = cx
                .cluster
                .increase_resources(self, bounds, cx.write_mode())
                .await?;
            Ok(Ran::Changed(change))
        })
    }

    fn undo(&self, change: &Change) -> Option<ActionCall> {
        Some(ActionCall::of(self.restored(&change.before)?))
    }
}

impl Action for ExpandPvc {
    fn target(&self, _holder: &str) -> Option<ObjectRef> {
        Some(ObjectRef::new(
            "PersistentVolumeClaim",
            &self.namespace,
            &self.name,
        ))
    }

    fn check(&self, _bounds: &Bounds) -> Result<(), String> {
        self.size
            .parse::<Quantity>()
            .map(drop)
            .map_err(|e| format!("size: {e}"))
    }

    fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
        Box::pin(async move {
            let bounds = &cx.settings.bounds;
            let change = cx.cluster.expand_pvc(self, bounds, cx.write_mode()).await?;
            Ok(Ran::Changed(change))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(resources: Value) -> PodSpec {
        serde_json::from_value(json!({"containers": [
            {"name": "app", "image": "x", "resources": resources},
            {"name": "sidecar", "image": "y"}
        ]}))
        .unwrap()
    }

    /// The first container's memory limit, as serialised.
    fn memory_limit(s: &PodSpec) -> Value {
        serde_json::to_value(&s.containers[0].resources).unwrap()["limits"]["memory"].clone()
    }

    fn call(container: &str, resource: &str, factor: f64) -> IncreaseResources {
        serde_json::from_value(json!({"kind": "Deployment", "namespace": "a", "name": "b",
            "container": container, "resource": resource, "factor": factor}))
        .unwrap()
    }

    #[test]
    fn requests_and_limits_grow_by_the_factor_within_the_cap() {
        let bounds = Bounds::default();
        let mut s = spec(json!({"requests": {"memory": "128Mi", "cpu": "100m"},
                                "limits": {"memory": "256Mi"}}));
        assert!(grow(&mut s, &call("app", "memory", 1.5), &bounds).unwrap());
        let r = s.containers[0].resources.clone().unwrap();
        assert_eq!(r.requests.as_ref().unwrap()["memory"].0, "192Mi");
        assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "384Mi");
        assert_eq!(
            r.requests.as_ref().unwrap()["cpu"].0,
            "100m",
            "cpu untouched"
        );
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let bounds = Bounds::default();
        let mut s = spec(json!({"limits": {"memory": "30Gi"}}));
        let e = grow(&mut s, &call("app", "memory", 2.0), &bounds).unwrap_err();
        assert!(e.to_string().contains("exceeds the cap 32Gi"), "{e}");
        let e = grow(&mut s, &call("app", "cpu", 1.5), &bounds).unwrap_err();
        assert!(e.to_string().contains("no cpu request or limit"), "{e}");
        let e = grow(&mut s, &call("db", "memory", 1.5), &bounds).unwrap_err();
        assert!(e.to_string().contains("no container \"db\""), "{e}");
        assert_eq!(memory_limit(&s), "30Gi", "a refusal changes nothing");
        for f in [1.0, 0.5, 2.5, f64::INFINITY, f64::NAN] {
            let c = IncreaseResources {
                factor: f,
                ..call("app", "cpu", 1.5)
            };
            assert!(c.check(&bounds).is_err(), "{f}");
        }
        assert!(call("app", "cpu", 2.0).check(&bounds).is_ok());
    }

    #[test]
    fn the_rollback_puts_the_old_resources_back_and_cannot_be_sent_from_outside() {
        let before = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "resources": {"limits": {"memory": "256Mi"}}}]}}}});
        let undo = call("app", "memory", 2.0).restored(&before).unwrap();
        let mut s = spec(json!({"limits": {"memory": "512Mi"}}));
        assert!(grow(&mut s, &undo, &Bounds::default()).unwrap());
        assert_eq!(memory_limit(&s), "256Mi");
        let e = serde_json::from_value::<IncreaseResources>(json!({"kind": "Deployment",
            "namespace": "a", "name": "b", "container": "app", "resource": "memory",
            "factor": 2.0, "restore": {}}))
        .unwrap_err();
        assert!(e.to_string().contains("restore"), "{e}");
    }
}

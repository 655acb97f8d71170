//! The action catalogue (K-EX-2) and the safety every action goes through
//! (K-EX-3).
//!
//! An action is an [`ActionCall`]: a name and typed parameters (each with a
//! JSON Schema, shared with the Analysis stage through [`catalogue`]).
//! [`Cluster::run_action`] runs one with, in this order: its bounds, the
//! scope of its target (label `kubernaut.io/managed=true`, protected
//! namespaces) checked again here, a per-target lock (Lease
//! `kubernaut-target-<hash>`) so that two requests never change one object at
//! once, and for each mutation a read-modify-write with the
//! `resourceVersion` read (conflicts are re-read and retried) made first as a
//! server-side dry run. In dry-run-only mode (global or per namespace) only
//! the dry runs are made. Every changed object's state before and after is
//! returned for the audit trail and for rollback, which is itself an action
//! ([`ActionCall::rollback`]).

mod diagnostics;
mod drain;
mod job;
mod node;
mod objects;
mod pod;
pub mod quantity;
mod resources;
mod verify;
mod workload;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::api::batch::v1::JobSpec;

use kube::api::PostParams;
use kube::{Api, Resource};
use kubernaut_api::ObjectRef;
use kubernaut_api::signal::sha256_hex;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use diagnostics::CollectDiagnostics;
pub use drain::DrainNode;
pub use job::RunJob;
pub use node::NodeTarget;
pub use objects::{Named, UpdateHpa};
pub use pod::{DeleteOutcome, PodState};
pub use quantity::Quantity;
pub use resources::{ExpandPvc, IncreaseResources};
pub use verify::repeatable;
pub use workload::{RolloutRestart, Scale, WorkloadKind};

use crate::{Cluster, Error, FIELD_MANAGER, Scope, bounded};

/// How much harm an action can do if it is the wrong one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Changes nothing.
    None,
    /// Replaces pods the way a rollout would.
    Low,
    /// Changes capacity or scheduling.
    Medium,
    /// Can take a workload or a node's pods down.
    High,
}

/// One entry of the catalogue, as `kubernaut actions` prints it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionInfo {
    pub name: &'static str,
    pub risk: Risk,
    pub summary: &'static str,
    /// JSON Schema of the parameters.
    pub parameters: Value,
    /// Whether a failed workflow can undo it.
    pub reversible: bool,
    /// The kinds of object it acts on; empty when it acts on none
    /// (notify_only) or on one it creates (run_job). The analysis offers
    /// the LLM only actions on objects the request is about.
    pub acts_on: &'static [&'static str],
}

/// Nothing is changed; the request's record carries the message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyOnly {
    #[serde(default)]
    pub message: String,
}

/// An action with its parameters. Parsed from the analysis' or workflow's
/// `{ "action": name, "parameters": {...} }`; unknown actions and unknown
/// or missing parameters are errors.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "action", content = "parameters", rename_all = "snake_case")]
pub enum ActionCall {
    ScaleDeployment(Scale),
    ScaleStatefulset(Scale),
    RolloutRestart(RolloutRestart),
    RollbackDeployment(Named),
    RestartPod(Named),
    QuarantinePod(Named),
    DeleteJob(Named),
    RunJob(RunJob),
    IncreaseResources(IncreaseResources),
    UpdateHpa(UpdateHpa),
    ExpandPvc(ExpandPvc),
    CordonNode(NodeTarget),
    UncordonNode(NodeTarget),
    DrainNode(DrainNode),
    CollectDiagnostics(CollectDiagnostics),
    NotifyOnly(NotifyOnly),
}

fn schema_of<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

const WORKLOADS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet"];

fn acts_on(action: &str) -> &'static [&'static str] {
    match action {
        "scale_deployment" | "rollback_deployment" => &["Deployment"],
        "scale_statefulset" => &["StatefulSet"],
        "rollout_restart" | "increase_resources" => WORKLOADS,
        "restart_pod" | "quarantine_pod" => &["Pod"],
        "delete_job" => &["Job"],
        "update_hpa" => &["HorizontalPodAutoscaler"],
        "expand_pvc" => &["PersistentVolumeClaim"],
        "cordon_node" | "uncordon_node" | "drain_node" => &["Node"],
        "collect_diagnostics" => &[
            "Pod",
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "Node",
        ],
        _ => &[],
    }
}

/// Every action Kubernaut can run, with its parameter schema.
pub fn catalogue() -> Vec<ActionInfo> {
    let info = |name, risk, summary, parameters, reversible| ActionInfo {
        name,
        risk,
        summary,
        parameters,
        reversible,
        acts_on: acts_on(name),
    };
    vec![
        info(
            "scale_deployment",
            Risk::Medium,
            "Set a Deployment's replicas (bounded by bounds.maxReplicas).",
            schema_of::<Scale>(),
            true,
        ),
        info(
            "scale_statefulset",
            Risk::Medium,
            "Set a StatefulSet's replicas (bounded by bounds.maxReplicas).",
            schema_of::<Scale>(),
            true,
        ),
        info(
            "rollout_restart",
            Risk::Low,
            "Restart a Deployment's, StatefulSet's or DaemonSet's pods through a rollout, as kubectl rollout restart does.",
            schema_of::<RolloutRestart>(),
            false,
        ),
        info(
            "rollback_deployment",
            Risk::High,
            "Put back the pod template of a Deployment's previous revision (its ReplicaSet), as kubectl rollout undo does.",
            schema_of::<Named>(),
            false,
        ),
        info(
            "restart_pod",
            Risk::Low,
            "Delete a pod (the one that exists now, by UID) so that its controller replaces it.",
            schema_of::<Named>(),
            false,
        ),
        info(
            "quarantine_pod",
            Risk::Medium,
            "Take a pod out of its Services (and its ReplicaSet, which replaces it) by moving the selected labels into an annotation; the pod keeps running for inspection.",
            schema_of::<Named>(),
            false,
        ),
        info(
            "delete_job",
            Risk::Medium,
            "Delete a Job and, in the background, its pods.",
            schema_of::<Named>(),
            false,
        ),
        info(
            "run_job",
            Risk::Medium,
            "Create a Job from a template in executor.jobTemplates (one per request and template, removed after its TTL).",
            schema_of::<RunJob>(),
            false,
        ),
        info(
            "increase_resources",
            Risk::Medium,
            "Multiply the cpu or memory requests and limits of one container of a Deployment, StatefulSet or DaemonSet (at most bounds.maxIncreaseFactor, capped at bounds.maxCpu/maxMemory); the workload rolls out.",
            schema_of::<IncreaseResources>(),
            true,
        ),
        info(
            "update_hpa",
            Risk::Medium,
            "Set a HorizontalPodAutoscaler's minReplicas and/or maxReplicas (within bounds.maxReplicas).",
            schema_of::<UpdateHpa>(),
            true,
        ),
        info(
            "expand_pvc",
            Risk::Medium,
            "Raise a PersistentVolumeClaim's storage request, only when its StorageClass allows expansion (at most bounds.maxIncreaseFactor times, capped at bounds.maxStorage); claims never shrink.",
            schema_of::<ExpandPvc>(),
            false,
        ),
        info(
            "cordon_node",
            Risk::Medium,
            "Mark a Node unschedulable; its pods keep running.",
            schema_of::<NodeTarget>(),
            true,
        ),
        info(
            "uncordon_node",
            Risk::Medium,
            "Mark a Node schedulable again.",
            schema_of::<NodeTarget>(),
            true,
        ),
        info(
            "drain_node",
            Risk::High,
            "Cordon a Node and evict its pods through the Eviction API, honouring PodDisruptionBudgets; DaemonSet, mirror and protected-namespace pods stay; refused when a pod has no controller.",
            schema_of::<DrainNode>(),
            true,
        ),
        info(
            "collect_diagnostics",
            Risk::None,
            "Record the object (env values redacted), its recent events and its pods' container states in the audit trail.",
            schema_of::<CollectDiagnostics>(),
            false,
        ),
        info(
            "notify_only",
            Risk::None,
            "Change nothing; record the decision for a human.",
            schema_of::<NotifyOnly>(),
            false,
        ),
    ]
}

/// Per-action limits (`executor.bounds` in the configuration).
#[derive(Clone, Debug)]
pub struct Bounds {
    pub max_replicas: i32,
    /// increase_resources and expand_pvc multiply by at most this.
    pub max_increase_factor: f64,
    /// No container request or limit is raised above these.
    pub max_cpu: Quantity,
    pub max_memory: Quantity,
    /// No claim is expanded above this.
    pub max_storage: Quantity,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_replicas: 50,
            max_increase_factor: 2.0,
            max_cpu: Quantity::from_units(8),
            max_memory: Quantity::from_units(32 << 30),
            max_storage: Quantity::from_units(1 << 40),
        }
    }
}

/// How actions are run.
#[derive(Clone, Debug)]
pub struct ExecSettings {
    /// Who holds target locks (the request's name).
    pub holder: String,
    /// Make only the server-side dry runs, everywhere.
    pub dry_run_only: bool,
    /// Make only the dry runs in these namespaces.
    pub dry_run_namespaces: Vec<String>,
    pub bounds: Bounds,
    /// A lock outlives a holder that died by this much at most.
    pub lock_ttl: Duration,
    /// What run_job may create, by name.
    pub job_templates: BTreeMap<String, JobSpec>,
    /// `ttlSecondsAfterFinished` of run_job's Jobs whose template has none.
    pub job_ttl_seconds: i32,
}

impl Default for ExecSettings {
    fn default() -> Self {
        Self {
            holder: String::new(),
            dry_run_only: false,
            dry_run_namespaces: Vec::new(),
            bounds: Bounds::default(),
            lock_ttl: Duration::from_secs(900),
            job_templates: BTreeMap::new(),
            job_ttl_seconds: 3600,
        }
    }
}

/// One object an action changed (or, in a dry run, would change).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub object: ObjectRef,
    pub before: Value,
    pub after: Value,
}

/// What an action did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Only server-side dry runs were made: nothing changed.
    pub dry_run: bool,
    /// Empty when the target was already as the action wants it.
    pub changes: Vec<Change>,
    /// What a read-only action found (collect_diagnostics).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub evidence: Value,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// Bounds, scope or parameters forbid it; retrying will not help.
    #[error("refused: {0}")]
    Refused(String),
    /// Another request holds the target's lock.
    #[error("{0} is being changed by {1}")]
    Busy(ObjectRef, String),
    #[error("{0} does not exist")]
    NotFound(ObjectRef),
    /// The API server's dry run refused the change; its message says why.
    #[error("the server-side dry run failed: {0}")]
    DryRunFailed(String),
    /// The action did not finish in time; the message says how far it got.
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0} kept changing under us: gave up after {1} conflicts")]
    Conflict(ObjectRef, usize),
    #[error(transparent)]
    Api(#[from] Error),
}

/// Read-modify-write attempts before a conflict is reported.
const CONFLICT_RETRIES: usize = 5;

impl ActionCall {
    /// Parses `{"action": name, "parameters": {...}}` parts; absent
    /// parameters (`null`) are an empty object.
    pub fn parse(action: &str, parameters: Value) -> Result<Self, String> {
        let parameters = match parameters {
            Value::Null => Value::Object(Default::default()),
            p => p,
        };
        serde_json::from_value(serde_json::json!({ "action": action, "parameters": parameters }))
            .map_err(|e| format!("action {action}: {e}"))
    }

    pub fn name(&self) -> &'static str {
        match self {
            ActionCall::ScaleDeployment(_) => "scale_deployment",
            ActionCall::ScaleStatefulset(_) => "scale_statefulset",
            ActionCall::RolloutRestart(_) => "rollout_restart",
            ActionCall::RollbackDeployment(_) => "rollback_deployment",
            ActionCall::RestartPod(_) => "restart_pod",
            ActionCall::QuarantinePod(_) => "quarantine_pod",
            ActionCall::DeleteJob(_) => "delete_job",
            ActionCall::RunJob(_) => "run_job",
            ActionCall::IncreaseResources(_) => "increase_resources",
            ActionCall::UpdateHpa(_) => "update_hpa",
            ActionCall::ExpandPvc(_) => "expand_pvc",
            ActionCall::CordonNode(_) => "cordon_node",
            ActionCall::UncordonNode(_) => "uncordon_node",
            ActionCall::DrainNode(_) => "drain_node",
            ActionCall::CollectDiagnostics(_) => "collect_diagnostics",
            ActionCall::NotifyOnly(_) => "notify_only",
        }
    }

    /// The object the action changes when the request `holder` runs it
    /// (run_job's Job is named after the request); `None` when it changes
    /// nothing.
    pub fn target_of(&self, holder: &str) -> Option<ObjectRef> {
        match self {
            ActionCall::ScaleDeployment(s) => {
                Some(ObjectRef::new("Deployment", &s.namespace, &s.name))
            }
            ActionCall::ScaleStatefulset(s) => {
                Some(ObjectRef::new("StatefulSet", &s.namespace, &s.name))
            }
            ActionCall::RolloutRestart(r) => {
                Some(ObjectRef::new(r.kind.as_str(), &r.namespace, &r.name))
            }
            ActionCall::CordonNode(n) | ActionCall::UncordonNode(n) => {
                Some(ObjectRef::new("Node", "", &n.name))
            }
            ActionCall::DrainNode(d) => Some(ObjectRef::new("Node", "", &d.name)),
            ActionCall::RunJob(r) => Some(ObjectRef::new("Job", &r.namespace, &r.job_name(holder))),
            ActionCall::IncreaseResources(r) => {
                Some(ObjectRef::new(r.kind.as_str(), &r.namespace, &r.name))
            }
            ActionCall::ExpandPvc(p) => Some(ObjectRef::new(
                "PersistentVolumeClaim",
                &p.namespace,
                &p.name,
            )),
            ActionCall::RollbackDeployment(d) => {
                Some(ObjectRef::new("Deployment", &d.namespace, &d.name))
            }
            ActionCall::RestartPod(p) | ActionCall::QuarantinePod(p) => {
                Some(ObjectRef::new("Pod", &p.namespace, &p.name))
            }
            ActionCall::DeleteJob(j) => Some(ObjectRef::new("Job", &j.namespace, &j.name)),
            ActionCall::UpdateHpa(h) => Some(ObjectRef::new(
                "HorizontalPodAutoscaler",
                &h.namespace,
                &h.name,
            )),
            ActionCall::CollectDiagnostics(d) => {
                Some(ObjectRef::new(&d.kind, &d.namespace, &d.name))
            }
            ActionCall::NotifyOnly(_) => None,
        }
    }

    /// Bounds and parameter sanity, before anything is read.
    pub fn check(&self, bounds: &Bounds) -> Result<(), ActionError> {
        match self {
            ActionCall::ScaleDeployment(s) | ActionCall::ScaleStatefulset(s) => s.check(bounds),
            ActionCall::UpdateHpa(h) => h.check(bounds),
            ActionCall::IncreaseResources(r) => r.check(bounds),
            ActionCall::DrainNode(d) => d.check(),
            ActionCall::ExpandPvc(p) => p
                .size
                .parse::<Quantity>()
                .map(drop)
                .map_err(|e| format!("size: {e}")),
            _ => Ok(()),
        }
        .map_err(ActionError::Refused)
    }

    /// The action that undoes `change` made by this one, if it can be undone.
    pub fn rollback(&self, change: &Change) -> Option<ActionCall> {
        match self {
            ActionCall::ScaleDeployment(s) => {
                Some(ActionCall::ScaleDeployment(s.restored(&change.before)?))
            }
            ActionCall::ScaleStatefulset(s) => {
                Some(ActionCall::ScaleStatefulset(s.restored(&change.before)?))
            }
            ActionCall::UpdateHpa(h) => Some(ActionCall::UpdateHpa(h.restored(&change.before)?)),
            ActionCall::CordonNode(n) if !node::was_unschedulable(&change.before) => {
                Some(ActionCall::UncordonNode(n.clone()))
            }
            ActionCall::UncordonNode(n) if node::was_unschedulable(&change.before) => {
                Some(ActionCall::CordonNode(n.clone()))
            }
            // Evicted pods are replaced by their controllers; only the
            // cordon can be undone.
            ActionCall::DrainNode(d)
                if change.object.kind == "Node" && !node::was_unschedulable(&change.before) =>
            {
                Some(ActionCall::UncordonNode(NodeTarget {
                    name: d.name.clone(),
                }))
            }
            ActionCall::IncreaseResources(r) => {
                Some(ActionCall::IncreaseResources(r.restored(&change.before)?))
            }
            _ => None,
        }
    }
}

/// The Lease that serialises changes to one object.
pub fn lock_name(target: &ObjectRef) -> String {
    format!(
        "kubernaut-target-{}",
        &sha256_hex(&target.to_string())[..16]
    )
}

impl Cluster {
    /// Runs `call` with every safety of the module documentation.
    pub async fn run_action(
        &self,
        call: &ActionCall,
        settings: &ExecSettings,
    ) -> Result<Outcome, ActionError> {
        call.check(&settings.bounds)?;
        let Some(target) = call.target_of(&settings.holder) else {
            return Ok(Outcome {
                dry_run: false,
                changes: Vec::new(),
                evidence: Value::Null,
                message: "nothing to change".into(),
            });
        };
        self.check_scope(call, &target).await?;
        if let ActionCall::CollectDiagnostics(d) = call {
            // Read-only: no lock, and the same in dry-run mode.
            return Ok(Outcome {
                dry_run: false,
                changes: Vec::new(),
                evidence: self.collect_diagnostics(d).await?,
                message: format!("collected diagnostics of {target}"),
            });
        }
        let dry_run = settings.dry_run_only
            || (!target.namespace.is_empty()
                && settings.dry_run_namespaces.contains(&target.namespace));
        let Some(lock) = self
            .claim_lease(&lock_name(&target), &settings.holder, settings.lock_ttl)
            .await?
        else {
            let holder = self.lock_holder(&target).await.unwrap_or_default();
            return Err(ActionError::Busy(target, holder));
        };
        let result = self.run_locked(call, &target, settings, dry_run).await;
        lock.release().await;
        result
    }

    async fn run_locked(
        &self,
        call: &ActionCall,
        target: &ObjectRef,
        settings: &ExecSettings,
        dry_run: bool,
    ) -> Result<Outcome, ActionError> {
        if let ActionCall::DrainNode(d) = call {
            let (changes, message) = self.drain_node(d, dry_run).await?;
            return Ok(Outcome {
                dry_run,
                changes,
                evidence: Value::Null,
                message,
            });
        }
        let bounds = &settings.bounds;
        let change = match call {
            ActionCall::ScaleDeployment(s) => {
                self.scale(WorkloadKind::Deployment, s, dry_run).await?
            }
            ActionCall::ScaleStatefulset(s) => {
                self.scale(WorkloadKind::StatefulSet, s, dry_run).await?
            }
            ActionCall::RolloutRestart(r) => self.rollout_restart(r, dry_run).await?,
            ActionCall::RollbackDeployment(d) => self.rollback_deployment(d, dry_run).await?,
            ActionCall::RestartPod(p) => self.restart_pod(p, dry_run).await?,
            ActionCall::QuarantinePod(p) => self.quarantine_pod(p, dry_run).await?,
            ActionCall::DeleteJob(j) => self.delete_job(j, dry_run).await?,
            ActionCall::RunJob(r) => self.run_job(r, settings, dry_run).await?,
            ActionCall::IncreaseResources(r) => self.increase_resources(r, bounds, dry_run).await?,
            ActionCall::UpdateHpa(h) => self.update_hpa(h, dry_run).await?,
            ActionCall::ExpandPvc(p) => self.expand_pvc(p, bounds, dry_run).await?,
            ActionCall::CordonNode(n) => self.set_unschedulable(&n.name, true, dry_run).await?,
            ActionCall::UncordonNode(n) => self.set_unschedulable(&n.name, false, dry_run).await?,
            ActionCall::CollectDiagnostics(_)
            | ActionCall::NotifyOnly(_)
            | ActionCall::DrainNode(_) => None,
        };
        let message = match (&change, dry_run) {
            (None, _) => format!("{target} already as {} wants it", call.name()),
            (Some(_), true) => format!("dry run: {} would change {target}", call.name()),
            (Some(_), false) => format!("{} changed {target}", call.name()),
        };
        Ok(Outcome {
            dry_run,
            changes: change.into_iter().collect(),
            evidence: Value::Null,
            message,
        })
    }

    async fn lock_holder(&self, target: &ObjectRef) -> Option<String> {
        let api: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client().clone(), &self.config().lease_namespace);
        bounded(api.get_opt(&lock_name(target)))
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    }

    /// Defence in depth (K-EX-3): the target is in scope now, whatever it
    /// was when the signal came in.
    async fn check_scope(&self, call: &ActionCall, target: &ObjectRef) -> Result<(), ActionError> {
        let resolved = if let ActionCall::RunJob(_) = call {
            // The Job does not exist yet: its namespace decides.
            crate::Resolved {
                target: target.clone(),
                chain: vec![target.clone()],
                labels: vec![Default::default()],
            }
        } else {
            let Some(resolved) = self.resolve(target).await? else {
                return Err(ActionError::NotFound(target.clone()));
            };
            // The action changes `target` itself, not its top-level owner.
            crate::Resolved {
                target: target.clone(),
                ..resolved
            }
        };
        match self.scope(&resolved).await? {
            Scope::Managed(_) => Ok(()),
            Scope::Protected => Err(ActionError::Refused(format!(
                "namespace {} is protected",
                target.namespace
            ))),
            Scope::Unmanaged => Err(ActionError::Refused(format!(
                "{target} and its namespace are not labelled kubernaut.io/managed=true"
            ))),
        }
    }

    /// Read-modify-write of one object: `change` edits a fresh copy and
    /// says whether anything needs changing; the replace carries the
    /// `resourceVersion` read, goes first as a server-side dry run, and on a
    /// conflict everything is read and decided again. Returns the object
    /// before and after (as the dry run would leave it, in a dry run), or
    /// `None` when it was already as wanted.
    pub async fn update_object<K>(
        &self,
        api: &Api<K>,
        object: &ObjectRef,
        dry_run: bool,
        mut change: impl FnMut(&mut K) -> Result<bool, ActionError>,
    ) -> Result<Option<Change>, ActionError>
    where
        K: Resource + Clone + Debug + Serialize + DeserializeOwned,
    {
        let dry = PostParams {
            dry_run: true,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        let real = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        for _ in 0..CONFLICT_RETRIES {
            let Some(before) = bounded(api.get_opt(&object.name)).await? else {
                return Err(ActionError::NotFound(object.clone()));
            };
            let mut wanted = before.clone();
            if !change(&mut wanted)? {
                return Ok(None);
            }
            let preview = match bounded(api.replace(&object.name, &dry, &wanted)).await {
                Ok(p) => p,
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(dry_run_refused(e)),
            };
            let after = if dry_run {
                preview
            } else {
                match bounded(api.replace(&object.name, &real, &wanted)).await {
                    Ok(done) => done,
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            return Ok(Some(Change {
                object: object.clone(),
                before: to_value(&before)?,
                after: to_value(&after)?,
            }));
        }
        Err(ActionError::Conflict(object.clone(), CONFLICT_RETRIES))
    }
}

/// A server-side dry run's refusal carries the API server's reason; other
/// errors (timeouts, transport) stay what they are.
pub(super) fn dry_run_refused(e: Error) -> ActionError {
    match e {
        Error::Kube(kube::Error::Api(s)) => ActionError::DryRunFailed(s.message),
        e => e.into(),
    }
}

pub(super) fn to_value<K: Serialize>(k: &K) -> Result<Value, ActionError> {
    serde_json::to_value(k).map_err(|e| ActionError::Api(Error::Serialize("object", e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_parse_strictly_from_name_and_parameters() {
        let c = ActionCall::parse(
            "scale_deployment",
            json!({"namespace": "shop", "name": "cart", "replicas": 3}),
        )
        .unwrap();
        assert_eq!(c.name(), "scale_deployment");
        assert_eq!(
            c.target_of("rr"),
            Some(ObjectRef::new("Deployment", "shop", "cart"))
        );
        let e = ActionCall::parse("reboot_cluster", json!({})).unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
        let e = ActionCall::parse(
            "scale_deployment",
            json!({"namespace": "shop", "name": "cart", "replica": 3}),
        )
        .unwrap_err();
        assert!(e.contains("replica"), "{e}");
        let e = ActionCall::parse(
            "rollout_restart",
            json!({"kind": "Pod", "namespace": "a", "name": "b"}),
        )
        .unwrap_err();
        assert!(e.contains("Pod"), "{e}");
        assert_eq!(
            ActionCall::parse("notify_only", json!({})).unwrap(),
            ActionCall::NotifyOnly(NotifyOnly::default())
        );
        assert_eq!(
            ActionCall::parse("notify_only", Value::Null).unwrap(),
            ActionCall::NotifyOnly(NotifyOnly::default())
        );
    }

    #[test]
    fn the_catalogue_names_every_call_and_publishes_its_schema() {
        let names: Vec<&str> = catalogue().iter().map(|a| a.name).collect();
        for call in [
            ActionCall::parse(
                "scale_deployment",
                json!({"namespace":"a","name":"b","replicas":1}),
            ),
            ActionCall::parse(
                "scale_statefulset",
                json!({"namespace":"a","name":"b","replicas":1}),
            ),
            ActionCall::parse(
                "rollout_restart",
                json!({"kind":"DaemonSet","namespace":"a","name":"b"}),
            ),
            ActionCall::parse("cordon_node", json!({"name":"n"})),
            ActionCall::parse("rollback_deployment", json!({"namespace":"a","name":"b"})),
            ActionCall::parse("restart_pod", json!({"namespace":"a","name":"b"})),
            ActionCall::parse("quarantine_pod", json!({"namespace":"a","name":"b"})),
            ActionCall::parse("delete_job", json!({"namespace":"a","name":"b"})),
            ActionCall::parse(
                "update_hpa",
                json!({"namespace":"a","name":"b","maxReplicas":4}),
            ),
            ActionCall::parse("uncordon_node", json!({"name":"n"})),
            ActionCall::parse("notify_only", json!({"message":"m"})),
            ActionCall::parse(
                "collect_diagnostics",
                json!({"kind":"Pod","namespace":"a","name":"b"}),
            ),
            ActionCall::parse(
                "increase_resources",
                json!({"kind":"Deployment","namespace":"a","name":"b","container":"c",
                       "resource":"memory","factor":1.5}),
            ),
            ActionCall::parse(
                "expand_pvc",
                json!({"namespace":"a","name":"b","size":"2Gi"}),
            ),
            ActionCall::parse("run_job", json!({"namespace":"a","template":"t"})),
            ActionCall::parse("drain_node", json!({"name":"n","timeoutSeconds":60})),
        ] {
            let call = call.unwrap();
            assert!(names.contains(&call.name()), "{}", call.name());
        }
        let scale = catalogue()
            .into_iter()
            .find(|a| a.name == "scale_deployment")
            .unwrap();
        assert_eq!(
            scale.parameters["properties"]["replicas"]["type"],
            "integer"
        );
        assert_eq!(scale.parameters["additionalProperties"], false);
        assert_eq!(
            names.len(),
            16,
            "every action is in the catalogue once: {names:?}"
        );
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn replica_bounds_are_enforced_before_anything_is_read() {
        let bounds = Bounds {
            max_replicas: 10,
            ..Bounds::default()
        };
        for (replicas, ok) in [(0, true), (10, true), (11, false), (-1, false)] {
            let c = ActionCall::parse(
                "scale_statefulset",
                json!({"namespace": "a", "name": "b", "replicas": replicas}),
            )
            .unwrap();
            assert_eq!(c.check(&bounds).is_ok(), ok, "{replicas}");
        }
    }

    #[test]
    fn hpa_updates_are_bounded_and_consistent() {
        let bounds = Bounds {
            max_replicas: 10,
            ..Bounds::default()
        };
        let hpa = |p: Value| {
            let mut p = p;
            p["namespace"] = json!("a");
            p["name"] = json!("b");
            ActionCall::parse("update_hpa", p).unwrap().check(&bounds)
        };
        assert!(hpa(json!({"minReplicas": 2, "maxReplicas": 10})).is_ok());
        assert!(hpa(json!({"maxReplicas": 4})).is_ok());
        assert!(hpa(json!({})).is_err(), "nothing to change");
        assert!(hpa(json!({"minReplicas": 5, "maxReplicas": 4})).is_err());
        assert!(hpa(json!({"maxReplicas": 11})).is_err());
        assert!(hpa(json!({"minReplicas": 0})).is_err());
    }

    #[test]
    fn rollbacks_restore_the_state_before() {
        let scale = ActionCall::parse(
            "scale_deployment",
            json!({"namespace":"a","name":"b","replicas":5}),
        )
        .unwrap();
        let change = Change {
            object: ObjectRef::new("Deployment", "a", "b"),
            before: json!({"spec": {"replicas": 2}}),
            after: json!({"spec": {"replicas": 5}}),
        };
        assert_eq!(
            scale.rollback(&change),
            Some(
                ActionCall::parse(
                    "scale_deployment",
                    json!({"namespace":"a","name":"b","replicas":2})
                )
                .unwrap()
            )
        );
        let cordon = ActionCall::parse("cordon_node", json!({"name": "n"})).unwrap();
        let was_schedulable = Change {
            object: ObjectRef::new("Node", "", "n"),
            before: json!({"spec": {}}),
            after: json!({"spec": {"unschedulable": true}}),
        };
        assert_eq!(
            cordon.rollback(&was_schedulable),
            Some(ActionCall::parse("uncordon_node", json!({"name": "n"})).unwrap())
        );
        let restart = ActionCall::parse(
            "rollout_restart",
            json!({"kind":"Deployment","namespace":"a","name":"b"}),
        )
        .unwrap();
        assert_eq!(restart.rollback(&change), None);
    }

    #[test]
    fn lock_names_are_stable_and_valid_object_names() {
        let t = ObjectRef::new("Deployment", "shop", "cart");
        assert_eq!(lock_name(&t), lock_name(&t.clone()));
        assert_ne!(
            lock_name(&t),
            lock_name(&ObjectRef::new("Deployment", "shop", "carts"))
        );
        assert!(lock_name(&t).len() <= 63);
    }
}

//! The action catalogue (K-EX-2) and the safety every action goes through
//! (K-EX-3).
//!
//! Each action is a parameter type implementing [`Action`] and
//! [`Catalogued`], listed once in [`KINDS`]; an [`ActionCall`] is one parsed
//! call of any of them (its JSON Schema is shared with the Analysis stage
//! through [`catalogue`]).
//! [`Cluster::run_action`] runs one with, in this order: its bounds, the
//! scope of its target (label `kubernaut.io/managed=true`, protected
//! namespaces) checked again here, a per-target lock (Lease
//! `kubernaut-target-<hash>`) so that two requests never change one object at
//! once, and for each mutation a read-modify-write with the
//! `resourceVersion` read (conflicts are re-read and retried) made first as a
//! server-side dry run (the first read and dry run may be made ahead, while
//! a step's intent is written: [`Cluster::claim_lock`]; the write then
//! waits until the intent is recorded, [`Recorded`]). In dry-run-only mode
//! (global or per namespace) only the dry runs are made. Every changed object's state before and after is
//! returned for the audit trail and for rollback, which is itself an action
//! ([`ActionCall::rollback`]).

mod action;
mod diagnostics;
mod drain;
mod job;
mod node;
mod notify;
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

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use kubernaut_api::ObjectRef;
use kubernaut_api::signal::sha256_hex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use action::{Action, ActionCall, Catalogued, Kind, Ran, RunCx, Verify};
pub use node::{NodeTarget, UncordonNode};
pub use pod::{DeleteOutcome, PodState};
pub use quantity::Quantity;
pub use workload::WorkloadKind;

use crate::{Cluster, Error, FIELD_MANAGER, LeaseClaim, Scope, bounded};

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
    /// It can take capacity, an object or a pod away ([`Kind::destructive`]).
    pub destructive: bool,
}

/// Every action, one line each: its parameter type implements
/// [`Action`] and names its [`Kind`]. Adding an action is a file with its
/// type, its line here, its RBAC and a test.
pub static KINDS: &[Kind] = &[
    workload::ScaleDeployment::KIND,
    workload::ScaleStatefulset::KIND,
    workload::RolloutRestart::KIND,
    workload::RollbackDeployment::KIND,
    objects::RestartPod::KIND,
    objects::QuarantinePod::KIND,
    objects::DeleteJob::KIND,
    job::RunJob::KIND,
    resources::IncreaseResources::KIND,
    objects::UpdateHpa::KIND,
    resources::ExpandPvc::KIND,
    node::CordonNode::KIND,
    node::UncordonNode::KIND,
    drain::DrainNode::KIND,
    diagnostics::CollectDiagnostics::KIND,
    notify::NotifyOnly::KIND,
];

/// The kind of the action named `name`.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Actions that leave the same state however often they run, so a step a
/// restart interrupted can simply run again (unknown ones: yes).
pub fn repeatable(action: &str) -> bool {
    kind(action).is_none_or(|k| k.repeatable)
}

/// Whether `action` changes the cluster: only such actions can fix
/// anything, so only they count in effectiveness (K-AI-2).
pub fn writes(action: &str) -> bool {
    kind(action).is_some_and(|k| k.writes)
}

/// Every action Kubernaut can run, with its parameter schema. Built once:
/// deciding a request reads it several times, and its sixteen schemas
/// cost more to generate than the rest of a decision.
pub fn catalogue() -> &'static [ActionInfo] {
    static CATALOGUE: std::sync::LazyLock<Vec<ActionInfo>> = std::sync::LazyLock::new(|| {
        KINDS
            .iter()
            .map(|k| ActionInfo {
                name: k.name,
                risk: k.risk,
                summary: k.summary,
                parameters: k.schema(),
                reversible: k.reversible,
                acts_on: k.acts_on,
                destructive: k.destructive,
            })
            .collect()
    });
    &CATALOGUE
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
    /// The step's write-ahead record (K-RR-6) was not stored, so its
    /// write was not made ([`Recorded`]).
    #[error("not started: {0}")]
    NotRecorded(String),
    #[error(transparent)]
    Api(#[from] Error),
}

/// Read-modify-write attempts before a conflict is reported.
const CONFLICT_RETRIES: usize = 5;
/// How long a refused claim waits for the Lease watch to show the Lease
/// that refused it; past that the watch is taken to be behind or down,
/// and the step gets Busy (and retries with its backoff) rather than
/// waiting on a picture it cannot trust.
const WATCH_CATCH_UP: Duration = Duration::from_secs(2);

/// What a run did, as the record says it.
fn outcome(call: &ActionCall, target: &ObjectRef, dry_run: bool, ran: Ran) -> Outcome {
    let (mut changes, evidence, message) = match ran {
        Ran::Changed(change) => {
            let message = match (&change, dry_run) {
                (None, _) => format!("{target} already as {} wants it", call.name()),
                (Some(_), true) => format!("dry run: {} would change {target}", call.name()),
                (Some(_), false) => format!("{} changed {target}", call.name()),
            };
            (change.into_iter().collect(), Value::Null, message)
        }
        Ran::Many(changes, message) => (changes, Value::Null, message),
        Ran::Read(evidence, message) => (Vec::new(), evidence, message),
    };
    // What an outcome holds goes to the audit trail and the status. A read
    // action's evidence is redacted where it is read (collect_diagnostics,
    // which the analysis prompt also uses), so only changes are here.
    for c in &mut changes {
        crate::redact::redact(&mut c.before);
        crate::redact::redact(&mut c.after);
    }
    Outcome {
        dry_run,
        changes,
        evidence,
        message,
    }
}

/// The Lease that serialises changes to one object.
pub fn lock_name(target: &ObjectRef) -> String {
    format!(
        "kubernaut-target-{}",
        &sha256_hex(&target.to_string())[..16]
    )
}

/// A target's lock claimed ahead of its action ([`Cluster::claim_lock`]),
/// for [`Cluster::run_action_holding`] to act under. Release it if it is
/// not used: dropped, it holds the target until its Lease expires.
#[derive(Debug)]
pub struct HeldLock {
    claim: LeaseClaim,
    claimed: std::time::Instant,
    read_ahead: Option<ReadAhead>,
    recorded: Option<Recorded>,
}

/// Whether a step's write-ahead record (K-RR-6) is stored yet, for an
/// action run while it is being written ([`HeldLock::until_recorded`]):
/// everything up to the action's write (its reads, its server-side dry
/// run) changes nothing and may go ahead; the write waits here, and is
/// never made if the record was not stored. Made by [`write_ahead`].
#[derive(Clone, Debug)]
pub struct Recorded(tokio::sync::watch::Receiver<Option<Result<(), String>>>);

/// The step's side of a [`Recorded`]: says once whether the record was
/// stored. Dropped without saying, the record counts as not stored.
#[derive(Debug)]
pub struct Record(tokio::sync::watch::Sender<Option<Result<(), String>>>);

/// A [`Record`] and the [`Recorded`] it opens.
pub fn write_ahead() -> (Record, Recorded) {
    let (tx, rx) = tokio::sync::watch::channel(None);
    (Record(tx), Recorded(rx))
}

impl Record {
    /// The record is stored: writes waiting on it go.
    pub fn stored(self) {
        self.0.send_replace(Some(Ok(())));
    }

    /// It was not (or the write must not go ahead): writes waiting on it
    /// fail with `why`.
    pub fn refused(self, why: impl Into<String>) {
        self.0.send_replace(Some(Err(why.into())));
    }
}

impl Recorded {
    /// Waits until the record is stored; `Err` with why it is not.
    pub async fn wait(&mut self) -> Result<(), ActionError> {
        let said = match self.0.wait_for(Option::is_some).await {
            Ok(said) => said.clone(),
            Err(_) => None,
        };
        match said {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => Err(ActionError::NotRecorded(why)),
            None => Err(ActionError::NotRecorded(
                "the step's write-ahead record was not stored".into(),
            )),
        }
    }
}

/// The target of an action that [updates it](Kind::updates_target), read
/// once its lock was claimed ahead of the action: the action's
/// read-modify-write starts from it instead of reading again after the
/// step's intent is written, so the read is off the path to the change.
/// The write names the copy's `resourceVersion`, so a copy that fell
/// behind costs a conflict and a fresh read, never a lost change. Used
/// once (it is moved into the first round): a conflict's retry reads
/// afresh.
#[derive(Debug)]
pub(crate) struct ReadAhead {
    object: ObjectRef,
    read: Value,
}

impl ReadAhead {
    /// The copy as a `K`, if it is a copy of `object`.
    fn of<K: DeserializeOwned>(self, object: &ObjectRef) -> Option<K> {
        if self.object != *object {
            return None;
        }
        serde_json::from_value(self.read).ok()
    }
}

/// How an action's read-modify-writes go: as server-side dry runs only or
/// for real, and from which [`ReadAhead`] the first one starts.
pub struct WriteMode {
    pub dry_run: bool,
    read_ahead: Option<ReadAhead>,
    /// What a real write waits for first, if the action runs while its
    /// step's record is written.
    recorded: Option<Recorded>,
}

impl WriteMode {
    /// Reads the object afresh (a drain's cordon, which no step read
    /// ahead).
    pub fn fresh(dry_run: bool) -> Self {
        WriteMode {
            dry_run,
            read_ahead: None,
            recorded: None,
        }
    }
}

impl HeldLock {
    /// How long ago it was claimed: the Lease expires `lock_ttl` after.
    pub fn age(&self) -> Duration {
        self.claimed.elapsed()
    }

    pub async fn release(self) {
        self.claim.release().await;
    }

    /// The target was read ahead: the action's one write is its
    /// read-modify-write of that target ([`Kind::updates_target`]), so it
    /// can run [`until_recorded`](Self::until_recorded).
    pub fn read_ahead(&self) -> bool {
        self.read_ahead.is_some()
    }

    /// Lets the action run before its step's write-ahead record is stored:
    /// its write waits for `recorded`. An action that does not update its
    /// target whole waits for `recorded` before it starts.
    pub fn until_recorded(self, recorded: Recorded) -> Self {
        HeldLock {
            recorded: Some(recorded),
            ..self
        }
    }
}

impl Cluster {
    /// Runs `call` with every safety of the module documentation. When
    /// another request holds the target's lock, it first waits for the
    /// lock Leases' watch to see it go: a small future while it waits, the
    /// action's own (boxed) only once it runs.
    pub async fn run_action(
        &self,
        call: &ActionCall,
        settings: &ExecSettings,
    ) -> Result<Outcome, ActionError> {
        // What stays live across these awaits is kept small and the bigger
        // futures (an action, a Lease delete) boxed: every step waiting on
        // a locked target holds this future.
        let watched = match (&self.leases, call.target_of(&settings.holder)) {
            (Some(leases), Some(target)) if call.kind().writes => {
                Some((leases, lock_name(&target)))
            }
            _ => None,
        };
        loop {
            if let Some((leases, name)) = &watched {
                // Held by another request: wait for the watch to see it go,
                // not the API server to be asked again.
                leases.wait_free(name, &settings.holder).await;
            }
            let busy = match Box::pin(self.run_action_once(call, settings, None)).await {
                Err(ActionError::Busy(target, holder)) => (target, holder),
                done => return done,
            };
            if let Some((leases, name)) = &watched
                && Box::pin(leases.wait_seen_held(name, &settings.holder, WATCH_CATCH_UP)).await
            {
                // The watch had not yet seen the Lease that refused us; now
                // it has, so waiting on it is waiting for the holder.
                continue;
            }
            return Err(ActionError::Busy(busy.0, busy.1));
        }
    }

    /// Claims the lock `call` would take, ahead of running it, so that a
    /// step can claim while its write-ahead record is written. `None` when
    /// the action takes no lock, another request holds it, or the claim
    /// failed: the action then claims (and waits, and reports) as usual.
    pub async fn claim_lock(&self, call: &ActionCall, settings: &ExecSettings) -> Option<HeldLock> {
        let target = call.target_of(&settings.holder)?;
        if !call.kind().writes {
            return None;
        }
        let claimed = std::time::Instant::now();
        let claim = self
            .claim_lease(&lock_name(&target), &settings.holder, settings.lock_ttl)
            .await
            .ok()??;
        // Read only once the target is ours: a target another request holds
        // may change before this one's turn.
        let read_ahead = if call.kind().updates_target {
            // Unreadable: the action reads again and reports why.
            let read = self.read_object(&target).await.ok().flatten();
            read.map(|read| ReadAhead {
                object: target,
                read,
            })
        } else {
            None
        };
        Some(HeldLock {
            claim,
            claimed,
            read_ahead,
            recorded: None,
        })
    }

    /// An object whole, as JSON; `None` when it does not exist.
    pub(super) async fn read_object(&self, obj: &ObjectRef) -> Result<Option<Value>, ActionError> {
        use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
        use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler;
        use k8s_openapi::api::batch::v1::Job;
        use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
        macro_rules! read {
            ($k:ty, $api:expr) => {{
                let api: Api<$k> = $api;
                match bounded(api.get_opt(&obj.name)).await? {
                    Some(o) => Some(to_value(&o)?),
                    None => None,
                }
            }};
        }
        let (client, ns) = (self.client().clone(), obj.namespace.as_str());
        Ok(match obj.kind.as_str() {
            "Pod" => read!(Pod, Api::namespaced(client, ns)),
            "Deployment" => read!(Deployment, Api::namespaced(client, ns)),
            "ReplicaSet" => read!(ReplicaSet, Api::namespaced(client, ns)),
            "StatefulSet" => read!(StatefulSet, Api::namespaced(client, ns)),
            "DaemonSet" => read!(DaemonSet, Api::namespaced(client, ns)),
            "Job" => read!(Job, Api::namespaced(client, ns)),
            "PersistentVolumeClaim" => read!(PersistentVolumeClaim, Api::namespaced(client, ns)),
            "HorizontalPodAutoscaler" => {
                read!(HorizontalPodAutoscaler, Api::namespaced(client, ns))
            }
            "Node" => read!(Node, Api::all(client)),
            other => {
                return Err(ActionError::Refused(format!(
                    "no action reads objects of kind {other}"
                )));
            }
        })
    }

    /// [`run_action`](Self::run_action), under `held` when it is the lock
    /// the action takes; a lock it does not use is released.
    pub async fn run_action_holding(
        &self,
        call: &ActionCall,
        settings: &ExecSettings,
        held: Option<HeldLock>,
    ) -> Result<Outcome, ActionError> {
        let Some(held) = held else {
            return self.run_action(call, settings).await;
        };
        let ours = call.kind().writes
            && call
                .target_of(&settings.holder)
                .is_some_and(|t| lock_name(&t) == held.claim.name());
        if ours {
            // Our own claim: nothing to wait for, and it cannot be Busy.
            return Box::pin(self.run_action_once(call, settings, Some(held))).await;
        }
        let recorded = held.recorded.clone();
        Box::pin(held.release()).await;
        if let Some(mut recorded) = recorded {
            recorded.wait().await?;
        }
        Box::pin(self.run_action(call, settings)).await
    }

    /// One try: under `held` if given; a claim it did not use is released.
    async fn run_action_once(
        &self,
        call: &ActionCall,
        settings: &ExecSettings,
        mut held: Option<HeldLock>,
    ) -> Result<Outcome, ActionError> {
        let result = self.run_action_now(call, settings, &mut held).await;
        // An action that ended before it took its lock gives it back.
        if let Some(h) = held {
            h.release().await;
        }
        result
    }

    async fn run_action_now(
        &self,
        call: &ActionCall,
        settings: &ExecSettings,
        held: &mut Option<HeldLock>,
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
        let kind = call.kind();
        self.check_scope(kind, &target).await?;
        let cx = |dry_run, read_ahead, recorded| RunCx {
            cluster: self,
            settings,
            target: &target,
            dry_run,
            read_ahead,
            recorded,
        };
        if !kind.writes {
            // Read-only: no lock, and the same in dry-run mode.
            let ran = call.action().run(cx(false, None, None)).await?;
            return Ok(outcome(call, &target, false, ran));
        }
        let dry_run = settings.dry_run_only
            || (!target.namespace.is_empty()
                && settings.dry_run_namespaces.contains(&target.namespace));
        let (lock, read_ahead, mut recorded) = match held.take() {
            Some(h) => (Some(h.claim), h.read_ahead, h.recorded),
            None => (
                self.claim_lease(&lock_name(&target), &settings.holder, settings.lock_ttl)
                    .await?,
                None,
                None,
            ),
        };
        let Some(lock) = lock else {
            let holder = self.lock_holder(&target).await.unwrap_or_default();
            return Err(ActionError::Busy(target, holder));
        };
        // Only a read-modify-write of the target makes its one write
        // through `update_object`, which waits for the record itself;
        // any other action waits before it starts.
        if !kind.updates_target
            && let Some(mut r) = recorded.take()
            && let Err(e) = r.wait().await
        {
            lock.release().await;
            return Err(e);
        }
        let result = call.action().run(cx(dry_run, read_ahead, recorded)).await;
        lock.release().await;
        Ok(outcome(call, &target, dry_run, result?))
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
    async fn check_scope(&self, kind: &Kind, target: &ObjectRef) -> Result<(), ActionError> {
        let resolved = if kind.creates {
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

    /// Read-modify-write of one object: `change` edits a copy (the
    /// [`ReadAhead`]'s first, if it holds this object; else a fresh read)
    /// and says whether anything needs changing. What changed is sent as a JSON
    /// merge patch (RBAC `patch`, not `update`: nothing else of the object
    /// is written back) carrying the `resourceVersion` read, so a change
    /// made meanwhile is a conflict; it goes first as a server-side dry
    /// run, and on a conflict everything is read and decided again. Returns
    /// the object before and after (as the dry run would leave it, in a dry
    /// run), or `None` when it was already as wanted.
    pub async fn update_object<K>(
        &self,
        api: &Api<K>,
        object: &ObjectRef,
        writes: WriteMode,
        mut change: impl FnMut(&mut K) -> Result<bool, ActionError>,
    ) -> Result<Option<Change>, ActionError>
    where
        K: Resource + Clone + Debug + Serialize + DeserializeOwned,
    {
        let params = |dry_run| PatchParams {
            dry_run,
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let dry_run = writes.dry_run;
        let mut recorded = writes.recorded;
        let mut read_ahead = writes.read_ahead.and_then(|r| r.of::<K>(object));
        for _ in 0..CONFLICT_RETRIES {
            let before = match read_ahead.take() {
                Some(before) => before,
                None => match bounded(api.get_opt(&object.name)).await? {
                    Some(before) => before,
                    None => return Err(ActionError::NotFound(object.clone())),
                },
            };
            let mut wanted = before.clone();
            if !change(&mut wanted)? {
                return Ok(None);
            }
            let mut patch = merge_patch(&to_value(&before)?, &to_value(&wanted)?);
            patch["metadata"]["resourceVersion"] = before.meta().resource_version.clone().into();
            let patch = Patch::Merge(&patch);
            let preview = match bounded(api.patch(&object.name, &params(true), &patch)).await {
                Ok(p) => p,
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(dry_run_refused(e)),
            };
            let after = if dry_run {
                preview
            } else {
                // The dry run may have gone while the step's record was
                // written; the change itself waits for it (K-RR-6).
                if let Some(r) = recorded.as_mut() {
                    r.wait().await?;
                }
                match bounded(api.patch(&object.name, &params(false), &patch)).await {
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

/// The JSON merge patch (RFC 7386) that turns `before` into `after`:
/// changed and new members, removed ones as null, arrays whole.
pub(crate) fn merge_patch(before: &Value, after: &Value) -> Value {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut patch = serde_json::Map::new();
            for (k, av) in a {
                match b.get(k) {
                    Some(bv) if bv == av => {}
                    Some(bv @ Value::Object(_)) if av.is_object() => {
                        patch.insert(k.clone(), merge_patch(bv, av));
                    }
                    _ => {
                        patch.insert(k.clone(), av.clone());
                    }
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => after.clone(),
    }
}

pub(super) fn to_value<K: Serialize>(k: &K) -> Result<Value, ActionError> {
    serde_json::to_value(k).map_err(|e| ActionError::Api(Error::Serialize("object", e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_patch_carries_only_what_changed() {
        let before = json!({"metadata": {"labels": {"app": "web", "tier": "a"}, "name": "p"},
            "spec": {"replicas": 3, "containers": [{"name": "c", "image": "x:1"}]},
            "status": {"ready": 3}});
        let after = json!({"metadata": {"labels": {"app": "web"}, "name": "p",
                "annotations": {"moved": "tier=a"}},
            "spec": {"replicas": 0, "containers": [{"name": "c", "image": "x:1"}]},
            "status": {"ready": 3}});
        assert_eq!(
            merge_patch(&before, &after),
            json!({"metadata": {"labels": {"tier": null}, "annotations": {"moved": "tier=a"}},
                   "spec": {"replicas": 0}})
        );
    }
    use serde_json::json;

    #[test]
    fn a_read_ahead_serves_only_its_own_object() {
        use k8s_openapi::api::apps::v1::Deployment;
        let api = ObjectRef::new("Deployment", "shop", "api");
        let ahead = || ReadAhead {
            object: api.clone(),
            read: json!({"metadata": {"name": "api", "namespace": "shop", "resourceVersion": "7"}}),
        };
        let other = ObjectRef::new("Deployment", "shop", "web");
        assert!(ahead().of::<Deployment>(&other).is_none(), "not its object");
        let copy = ahead().of::<Deployment>(&api).expect("its object");
        assert_eq!(copy.metadata.resource_version.as_deref(), Some("7"));
    }

    #[test]
    fn only_read_modify_writes_read_their_target_ahead() {
        let ahead: Vec<&str> = KINDS
            .iter()
            .filter(|k| k.updates_target)
            .map(|k| k.name)
            .collect();
        for name in [
            "rollout_restart",
            "scale_deployment",
            "cordon_node",
            "update_hpa",
        ] {
            assert!(ahead.contains(&name), "{name} is a read-modify-write");
        }
        // A deletion or an eviction reads nothing whole: a read ahead
        // would be a wasted call.
        for name in [
            "restart_pod",
            "delete_job",
            "drain_node",
            "notify_only",
            "run_job",
        ] {
            assert!(!ahead.contains(&name), "{name} does not update its target");
        }
    }

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
            ActionCall::of(notify::NotifyOnly::default())
        );
        assert_eq!(
            ActionCall::parse("notify_only", Value::Null).unwrap(),
            ActionCall::of(notify::NotifyOnly::default())
        );
    }

    #[test]
    fn every_kind_is_listed_once_and_its_flags_are_what_the_executor_relies_on() {
        let mut names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KINDS.len(), "a name is listed twice");
        let of = |n: &str| kind(n).unwrap_or_else(|| panic!("{n} is not listed"));
        assert!(!of("collect_diagnostics").writes && !of("notify_only").writes);
        assert!(of("run_job").creates && !of("restart_pod").creates);
        for n in [
            "restart_pod",
            "delete_job",
            "rollout_restart",
            "rollback_deployment",
            "increase_resources",
        ] {
            assert!(!repeatable(n), "{n} must not run twice after a restart");
        }
        assert!(repeatable("scale_deployment") && repeatable("cordon_node"));
        assert!(of("drain_node").reversible && !of("restart_pod").reversible);
        for (n, v) in [
            ("restart_pod", Verify::Gone),
            ("delete_job", Verify::Gone),
            ("scale_deployment", Verify::Observed),
            ("scale_statefulset", Verify::Observed),
            ("rollout_restart", Verify::Observed),
            ("rollback_deployment", Verify::Observed),
            ("increase_resources", Verify::Observed),
            ("cordon_node", Verify::Answered),
            ("drain_node", Verify::Answered),
        ] {
            assert_eq!(of(n).verify, v, "{n}");
        }
    }

    #[test]
    fn an_undo_is_a_call_of_the_undoing_action() {
        let change = |before: Value| Change {
            object: ObjectRef::new("Node", "", "n1"),
            before,
            after: Value::Null,
        };
        let cordon = ActionCall::parse("cordon_node", json!({"name": "n1"})).unwrap();
        let undo = cordon.rollback(&change(json!({"spec": {}}))).unwrap();
        assert_eq!(
            undo,
            ActionCall::parse("uncordon_node", json!({"name": "n1"})).unwrap()
        );
        assert_eq!(
            cordon.rollback(&change(json!({"spec": {"unschedulable": true}}))),
            None,
            "a node that was cordoned already stays cordoned"
        );
        let scale = ActionCall::parse(
            "scale_deployment",
            json!({"namespace": "a", "name": "b", "replicas": 0}),
        )
        .unwrap();
        let back = scale
            .rollback(&change(json!({"spec": {"replicas": 3}})))
            .unwrap();
        assert_eq!(back.parameters()["replicas"], 3);
        assert_eq!(back.name(), "scale_deployment");
        let restart =
            ActionCall::parse("restart_pod", json!({"namespace": "a", "name": "p"})).unwrap();
        assert_eq!(restart.rollback(&change(json!({}))), None);
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
            .iter()
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

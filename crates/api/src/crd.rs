//! The `RemediationRequest` custom resource (K-RR-1).
//!
//! The spec is the signal as the gateway received and resolved it; it is
//! written once at creation and never updated. The status is owned by two
//! writers with disjoint fields: the controller (phase, conditions, stage
//! results) and the gateway (`deduplication`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::object::ObjectRef;
use crate::phase::Phase;
use crate::signal::SignalSource;

#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubernaut.io",
    version = "v1alpha1",
    kind = "RemediationRequest",
    plural = "remediationrequests",
    singular = "remediationrequest",
    shortname = "rr",
    namespaced,
    status = "RemediationRequestStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Signal","type":"string","jsonPath":".spec.signalName"}"#,
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.target.kind"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target.name"}"#,
    printcolumn = r#"{"name":"Seen","type":"integer","jsonPath":".status.deduplication.occurrenceCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRequestSpec {
    /// Lowercase hex SHA-256 of `[cluster:]namespace:kind:name` of `target` (K-GW-4).
    pub fingerprint: String,
    /// The signal's name (Alertmanager `alertname`, CloudWatch alarm name, event reason).
    pub signal_name: String,
    pub severity: String,
    pub source: SignalSource,
    /// Digest of the source's own identity of this signal instance
    /// (Alertmanager fingerprint + startsAt, SNS MessageId, Event uid + count).
    pub instance_id: String,
    /// The top-level owner the fingerprint is computed from.
    pub target: ObjectRef,
    /// The resource the signal itself named (for example the crash-looping Pod).
    pub signal_resource: ObjectRef,
    /// Owner chain from `signal_resource` up to `target`, for the record.
    #[serde(default)]
    pub owner_chain: Vec<ObjectRef>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub firing_time: Time,
    pub received_time: Time,
    /// The signal exactly as received (JSON text of the single alert).
    #[serde(default)]
    #[schemars(transform = no_schema_default)]
    pub original_payload: String,
    /// Set on a storm request (K-GW-6), which aggregates the signals of one
    /// alert name in one namespace instead of remediating each target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormSpec {
    pub kind: StormKind,
    pub alert_name: String,
    pub namespace: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StormKind {
    /// Too many signals of one alert name per minute.
    Rate,
    /// Too many distinct targets with one alert name within the window.
    Pattern,
}

/// What a storm request aggregated; written by the gateway only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormStatus {
    pub total_signals: i64,
    /// The first [`MAX_STORM_TARGETS`] distinct targets, with their counts.
    #[serde(default)]
    pub affected_targets: Vec<AffectedTarget>,
    /// Signals for targets beyond the listed ones.
    #[serde(default)]
    pub unlisted_signals: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AffectedTarget {
    pub target: ObjectRef,
    pub signals: i64,
}

/// Bound on [`StormStatus::affected_targets`].
pub const MAX_STORM_TARGETS: usize = 50;

impl StormStatus {
    pub fn add(&mut self, target: &ObjectRef) {
        self.total_signals += 1;
        if let Some(t) = self
            .affected_targets
            .iter_mut()
            .find(|t| &t.target == target)
        {
            t.signals += 1;
        } else if self.affected_targets.len() < MAX_STORM_TARGETS {
            self.affected_targets.push(AffectedTarget {
                target: target.clone(),
                signals: 1,
            });
        } else {
            self.unlisted_signals += 1;
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRequestStatus {
    /// Absent until the controller first writes, which reads as Pending.
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Every phase change, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_history: Vec<PhaseTransition>,
    /// Written by the gateway only, from the first duplicate on: absent
    /// means the signal was seen once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication: Option<Deduplication>,
    /// The source reported a signal of this request resolved (K-GW-2);
    /// written by the gateway only, read by the effectiveness check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_resolution: Option<SignalResolution>,
    /// Storm requests only; written by the gateway only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing: Option<ProcessingStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
    /// What the approval policy said, and the decision (K-AI-4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<ExecutionStatus>,
    /// Did the fix work (K-AU-2): the stabilisation window and its scores.
    /// Kept here, not in memory, so a replica that takes the request over
    /// finishes a window another one started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The whole remediation times out at this instant (K-RR-4); set when
    /// processing starts, so that time spent Blocked does not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// The current phase times out at this instant (K-RR-4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_deadline: Option<Time>,
    /// A routing hold (K-RR-8) ends at this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_until: Option<Time>,
    /// The controller replica driving this request (K-RR-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A terminal request is deleted after this instant, once its audit
    /// record is confirmed (K-RR-9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_expiry_time: Option<Time>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTransition {
    pub phase: Phase,
    pub time: Time,
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deduplication {
    pub occurrence_count: i64,
    pub first_seen_at: Time,
    pub last_seen_at: Time,
    /// Signal instances counted on this request (newest last, at most
    /// [`MAX_RECENT_INSTANCES`]), so that a re-delivery is recognised from
    /// Kubernetes alone when the Redis index is empty or down (K-GW-5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_instances: Vec<String>,
    /// How many of `occurrenceCount` the gateway's Redis journal numbered
    /// (answered before they were written here). Writing a journal's
    /// figure again adds nothing, so replicas may settle it in any order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journaled: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalResolution {
    pub resolved_at: Time,
    /// The signal instance that resolved (the latest, if several did).
    pub instance_id: String,
}

/// Bound on [`Deduplication::recent_instances`]: an incident rarely has more
/// distinct alerts than this, and a storm must not grow the object unboundedly.
pub const MAX_RECENT_INSTANCES: usize = 32;

impl Deduplication {
    pub fn has_seen(&self, instance: &str) -> bool {
        self.recent_instances.iter().any(|i| i == instance)
    }

    /// Remembers an instance, dropping the oldest beyond the bound.
    pub fn remember(&mut self, instance: &str) {
        if !self.has_seen(instance) {
            self.recent_instances.push(instance.to_string());
        }
        let excess = self
            .recent_instances
            .len()
            .saturating_sub(MAX_RECENT_INSTANCES);
        self.recent_instances.drain(..excess);
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessingStatus {
    pub environment: String,
    /// P0 (most urgent) to P3, from environment and severity.
    pub priority: String,
    /// Why the target is in scope (which label opted it in).
    pub scope: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// Which path decided: `llm` or `rules` (the deterministic table).
    pub decided_by: DecidedBy,
    /// Why that path decided: the LLM's valid attempt, or why the rules
    /// did (no LLM configured, unreachable, timed out, circuit open,
    /// invalid output after the last attempt).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = no_schema_default)]
    pub reason: String,
    /// The rule that matched, by its signal name; empty when the LLM decided.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = no_schema_default)]
    pub rule: String,
    /// The LLM's diagnosis (K-AI-3).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = no_schema_default)]
    pub root_cause: String,
    /// The LLM's confidence, 0 to 1; rule decisions carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = no_schema_default)]
    pub rationale: String,
    /// LLM answers asked for (invalid ones are asked again, up to 3).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(transform = no_schema_default)]
    pub attempts: u32,
    /// How long the analysis took, context gathering and every attempt
    /// included.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    #[schemars(transform = no_schema_default)]
    pub elapsed_millis: u64,
    /// The workflow's actions in order, e.g. `collect_diagnostics, rollout_restart`.
    pub action: String,
    /// What the Execution stage runs (K-EX-1).
    #[serde(default)]
    pub workflow: crate::workflow::Workflow,
    /// Better-ranked choices of the rule that were passed over, and why
    /// (their recent effectiveness, K-AI-2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passed_over: Vec<String>,
    /// The PromQL the metric scorer evaluates after the window (K-AU-2).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = no_schema_default)]
    pub verify_query: String,
}

macro_rules! closed_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_set! {
    /// Which path decided a request's workflow.
    #[derive(Default)]
    DecidedBy { Llm = "llm", #[default] Rules = "rules" }
}

closed_set! {
    /// A human's decision on a request waiting for approval.
    Decision { Approved = "approved", Rejected = "rejected" }
}

closed_set! {
    /// How a request's workflow ended.
    ExecutionResult { Succeeded = "Succeeded", AlreadyDone = "AlreadyDone", Failed = "Failed" }
}

/// The approval gate's verdict on a decided request (K-AI-4).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalStatus {
    pub required: bool,
    /// Why the policy asks for approval (or why it could not answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Without a decision by then, the request fails (`ApprovalExpired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// `approved` or `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// Whether a remediation made the incident go away (K-AU-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VerificationOutcome {
    Effective,
    Ineffective,
    /// The scorers could not tell (nothing applicable, a middling score,
    /// or someone else changed the target during the window).
    Inconclusive,
}

impl VerificationOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationOutcome::Effective => "Effective",
            VerificationOutcome::Ineffective => "Ineffective",
            VerificationOutcome::Inconclusive => "Inconclusive",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationStatus {
    /// The window began when the change was seen applied.
    pub started_at: Time,
    /// Scoring happens at this instant.
    pub window_ends: Time,
    /// The target as the action left it, for the drift and restart scores.
    #[serde(default)]
    pub baseline: VerificationBaseline,
    /// One entry per scorer, once scored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ScoreComponent>,
    /// The weighted score of the applicable components, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<VerificationOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_at: Option<Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationBaseline {
    /// SHA-256 of the target's canonical spec just after the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// Each of the target's pods' container restarts just after the action
    /// (at most 64 pods).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restarts: BTreeMap<String, i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScoreComponent {
    /// `health`, `alert`, `metric` or `drift`.
    pub name: String,
    /// 0 to 1; absent when the scorer does not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub weight: f64,
    /// What the scorer saw.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub evidence: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStatus {
    pub action: String,
    pub target: ObjectRef,
    /// UID of the object the action changed, recorded before the change so
    /// that a resumed supervisor never acts on a replacement (K-RR-6).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = no_schema_default)]
    pub target_uid: String,
    pub started_at: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// `Succeeded`, `AlreadyDone` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ExecutionResult>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Every step of the workflow, in the workflow's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepStatus>,
}

/// One workflow step as the Execution stage last recorded it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    pub id: String,
    pub action: String,
    pub phase: StepPhase,
    /// The object the step changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<ObjectRef>,
    /// The target's UID and generation when the step started, recorded
    /// before it acts: a resumed supervisor compares them with the cluster
    /// to tell whether an interrupted step took effect (K-RR-6).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = no_schema_default)]
    pub target_uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_generation: Option<i64>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = no_schema_default)]
    pub message: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StepPhase {
    #[default]
    Pending,
    /// Recorded before the action runs.
    Running,
    Succeeded,
    /// Interrupted by a restart after it had taken effect.
    AlreadyDone,
    Failed,
    /// Not run: a dependency failed, or the workflow had already failed.
    Skipped,
    RolledBack,
    RollbackFailed,
}

impl StepPhase {
    /// Done, so its dependants may start.
    pub fn succeeded(self) -> bool {
        matches!(self, StepPhase::Succeeded | StepPhase::AlreadyDone)
    }
}

/// The v1.20 API server reads an empty string as null, both in a schema
/// default and in a server-side apply body, and then refuses it as not a
/// string. So empty strings are omitted when serialised, and carry no schema
/// default; serde's default still fills them in when absent.
fn no_schema_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}

impl RemediationRequest {
    pub fn phase(&self) -> Phase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }

    /// Its namespace and name.
    pub fn key(&self) -> crate::RequestKey {
        crate::RequestKey::new(
            self.metadata.namespace.clone().unwrap_or_default(),
            self.metadata.name.clone().unwrap_or_default(),
        )
    }

    /// How many times its signal was seen. The creating signal is not
    /// written into the status (a second write for every new request):
    /// `deduplication` is absent until the first duplicate, and absent
    /// means once.
    pub fn occurrence_count(&self) -> i64 {
        self.status
            .as_ref()
            .and_then(|s| s.deduplication.as_ref())
            .map_or(1, |d| d.occurrence_count)
    }

    /// Whether this signal instance created the request or was counted on it.
    pub fn has_seen(&self, instance: &str) -> bool {
        self.spec.instance_id == instance
            || self
                .status
                .as_ref()
                .and_then(|s| s.deduplication.as_ref())
                .is_some_and(|d| d.has_seen(instance))
    }

    /// The CRD as YAML, exactly as `deploy/crds/` holds it.
    pub fn crd_yaml() -> Result<String, serde_norway::Error> {
        use kube::CustomResourceExt;
        let mut crd = serde_json::to_value(Self::crd())
            .map_err(<serde_norway::Error as serde::ser::Error>::custom)?;
        drop_null_enum_values(&mut crd);
        serde_norway::to_string(&crd)
    }
}

/// An optional closed set is `nullable` with its values as `enum`; the
/// schema generator also lists `null` among them, which Kubernetes'
/// validation of a CRD refuses ("unknown object type nil").
fn drop_null_enum_values(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                values.retain(|e| !e.is_null());
            }
            map.values_mut().for_each(drop_null_enum_values);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_null_enum_values),
        _ => {}
    }
}

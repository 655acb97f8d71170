//! Normalised signals, their fingerprint (K-GW-4), and the intake trait the
//! gateway calls. Source adapters (Alertmanager, SNS, ...) turn their payloads
//! into [`Signal`]s; the intake resolves, deduplicates and creates requests.

use std::collections::BTreeMap;

use async_trait::async_trait;
use jiff_ts::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::object::{ObjectRef, RequestKey};

// k8s-openapi re-exports the jiff it was built with; using it keeps one version.
use k8s_openapi::jiff as jiff_ts;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SignalSource {
    Alertmanager,
    Cloudwatch,
    KubernetesEvent,
    Generic,
}

impl SignalSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalSource::Alertmanager => "alertmanager",
            SignalSource::Cloudwatch => "cloudwatch",
            SignalSource::KubernetesEvent => "kubernetes-event",
            SignalSource::Generic => "generic",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalStatus {
    Firing,
    Resolved,
}

/// One signal after parsing, before target resolution.
#[derive(Clone, Debug, PartialEq)]
pub struct Signal {
    pub source: SignalSource,
    pub status: SignalStatus,
    pub name: String,
    pub severity: String,
    /// The source's own identity of this instance, already combined
    /// (for Alertmanager: `fingerprint@startsAt`).
    pub instance_key: String,
    /// The resource the signal names (not yet resolved to its owner).
    pub resource: ObjectRef,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub firing_time: Timestamp,
    /// When the source says the condition ended (resolved signals).
    pub ended_time: Option<Timestamp>,
    pub received_time: Timestamp,
    pub raw: String,
}

impl Signal {
    /// Digest of `instance_key` scoped by source and resource, used as the
    /// request's instance id and label. The resource is part of it so that a
    /// sender that reuses its ids can never have one resource's signal
    /// counted on another resource's request.
    pub fn instance_id(&self) -> String {
        sha256_hex(&format!(
            "{}:{}:{}",
            self.source.as_str(),
            self.resource,
            self.instance_key
        ))
    }
}

/// K-GW-4: lowercase hex SHA-256 of `[cluster:]namespace:kind:name` of the
/// resolved top-level owner. The signal name is deliberately not part of it.
pub fn fingerprint(cluster: Option<&str>, target: &ObjectRef) -> String {
    let body = format!("{}:{}:{}", target.namespace, target.kind, target.name);
    match cluster.filter(|c| !c.is_empty()) {
        Some(c) => sha256_hex(&format!("{c}:{body}")),
        None => sha256_hex(&body),
    }
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// What became of one accepted signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngestOutcome {
    /// A new request was created.
    Created {
        request: String,
        namespace: String,
        fingerprint: String,
    },
    /// Counted on an existing request (K-GW-5).
    Duplicate {
        request: String,
        namespace: String,
        fingerprint: String,
        occurrence_count: i64,
    },
    /// Accepted but not acted on: out of scope, unknown target.
    Rejected {
        reason: RejectReason,
        detail: String,
    },
    /// Aggregated into the storm request of its alert name and namespace
    /// (K-GW-6); `created` when this signal opened the storm request.
    Storm {
        request: String,
        namespace: String,
        created: bool,
        total_signals: i64,
    },
    /// A resolution, recorded on the request its signal belongs to, if any.
    Resolved { request: Option<RequestKey> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    OutOfScope,
    ProtectedNamespace,
    TargetNotFound,
    /// The signal names no Kubernetes resource that can be resolved.
    NoTarget,
    /// A Kubernetes event that is not a Warning.
    NotWarning,
    /// A CloudWatch state change that is neither ALARM nor OK
    /// (INSUFFICIENT_DATA).
    NotAlarm,
    /// A CloudWatch alarm whose ClusterName dimension names another cluster.
    OtherCluster,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::OutOfScope => "out_of_scope",
            RejectReason::ProtectedNamespace => "protected_namespace",
            RejectReason::TargetNotFound => "target_not_found",
            RejectReason::NoTarget => "no_target",
            RejectReason::NotWarning => "not_warning",
            RejectReason::NotAlarm => "not_alarm",
            RejectReason::OtherCluster => "other_cluster",
        }
    }
}

/// Why the intake could not handle a signal. All but [`IntakeError::Invalid`]
/// are answered 503 so that the source re-sends.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the Kubernetes API is unavailable: {0}")]
    Unavailable(String),
    #[error("gave up after repeated write conflicts on {0}")]
    Conflict(String),
    /// The API server refused the request built from the signal; sending
    /// it again would not help (answered 400 for that signal).
    #[error("the request could not be stored: {0}")]
    Invalid(String),
}

impl IntakeError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            IntakeError::Unavailable(_) => "unavailable",
            IntakeError::Conflict(_) => "conflict",
            IntakeError::Invalid(_) => "invalid",
        }
    }
}

/// Resolves a signal to its target, deduplicates it and creates or counts
/// the request. Implemented over Redis and the Kubernetes API by the intake
/// crate.
#[async_trait]
pub trait SignalIntake: Send + Sync {
    /// A firing signal: a new request or a counted duplicate (K-GW-5).
    async fn ingest(&self, signal: Signal) -> Result<IngestOutcome, IntakeError>;

    /// A resolved signal never starts a remediation; it is recorded on the
    /// request it belongs to, which closes the loop for verification (K-GW-2).
    async fn resolve(&self, signal: Signal) -> Result<IngestOutcome, IntakeError>;
}

/// Who a bearer token belongs to, as the API server's TokenReview says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewedUser {
    pub username: String,
    pub groups: Vec<String>,
}

/// Asks the cluster who a bearer token belongs to (K-GW-7). Implemented
/// with the TokenReview API by the cluster crate.
#[async_trait]
pub trait TokenReviewer: Send + Sync {
    /// `Ok(None)`: the token is not valid. `Err`: the review could not be made.
    async fn review(&self, token: &str) -> Result<Option<ReviewedUser>, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256_of_namespace_kind_name() {
        let t = ObjectRef::new("Deployment", "shop", "cart");
        // printf 'shop:Deployment:cart' | sha256sum
        assert_eq!(
            fingerprint(None, &t),
            "3e1358e2c5121b674e7543f385ca3ff7d99cac5b91409d4af44a88248b4f3082"
        );
        assert_eq!(fingerprint(None, &t).len(), 64);
        assert!(
            fingerprint(None, &t)
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    fn signal(resource: ObjectRef, key: &str) -> Signal {
        Signal {
            source: SignalSource::Alertmanager,
            status: SignalStatus::Firing,
            name: "KubePodCrashLooping".into(),
            severity: "critical".into(),
            instance_key: key.into(),
            resource,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            firing_time: Timestamp::UNIX_EPOCH,
            ended_time: None,
            received_time: Timestamp::UNIX_EPOCH,
            raw: String::new(),
        }
    }

    #[test]
    fn instance_ids_are_scoped_by_source_and_resource() {
        let pod = ObjectRef::new("Pod", "shop", "cart-1");
        let a = signal(pod.clone(), "f00d@2026-11-22T03:00:00Z");
        assert_eq!(
            a.instance_id(),
            signal(pod.clone(), &a.instance_key).instance_id()
        );
        let other_ns = signal(ObjectRef::new("Pod", "bank", "cart-1"), &a.instance_key);
        assert_ne!(a.instance_id(), other_ns.instance_id());
        let generic = Signal {
            source: SignalSource::Generic,
            ..a.clone()
        };
        assert_ne!(a.instance_id(), generic.instance_id());
        assert_eq!(a.instance_id().len(), 64);
    }

    #[test]
    fn cluster_prefix_changes_the_fingerprint_and_empty_cluster_does_not() {
        let t = ObjectRef::new("Deployment", "shop", "cart");
        assert_ne!(fingerprint(Some("prod-eu"), &t), fingerprint(None, &t));
        assert_eq!(fingerprint(Some(""), &t), fingerprint(None, &t));
        assert_eq!(
            fingerprint(Some("prod-eu"), &t),
            sha256_hex("prod-eu:shop:Deployment:cart")
        );
    }

    #[test]
    fn fingerprint_distinguishes_kind_namespace_and_name() {
        let base = fingerprint(None, &ObjectRef::new("Deployment", "a", "b"));
        assert_ne!(
            base,
            fingerprint(None, &ObjectRef::new("StatefulSet", "a", "b"))
        );
        assert_ne!(
            base,
            fingerprint(None, &ObjectRef::new("Deployment", "x", "b"))
        );
        assert_ne!(
            base,
            fingerprint(None, &ObjectRef::new("Deployment", "a", "c"))
        );
    }
}

//! The Kubernaut domain: the `RemediationRequest` custom resource, its phase
//! machine, normalised signals and their fingerprints, and the traits through
//! which the transports (the gateway) reach the cluster side.
//!
//! This crate performs no I/O. It re-exports the `kube` and `k8s-openapi`
//! names the workspace uses so that a version bump touches one place.

pub mod crd;
pub mod object;
pub mod phase;
pub mod signal;
pub mod workflow;

pub use crd::{
    AffectedTarget, AnalysisStatus, ApprovalStatus, DecidedBy, Decision, Deduplication,
    ExecutionResult, ExecutionStatus, MAX_RECENT_INSTANCES, MAX_STORM_TARGETS, ObjectRef,
    PhaseTransition, ProcessingStatus, RemediationRequest, RemediationRequestSpec,
    RemediationRequestStatus, ScoreComponent, SignalResolution, StepPhase, StepStatus, StormKind,
    StormSpec, StormStatus, VerificationBaseline, VerificationOutcome, VerificationStatus,
};
pub use k8s_openapi;
pub use kube;
pub use object::RequestKey;
pub use phase::{Phase, TransitionError};
pub use signal::{
    IngestOutcome, IntakeError, RejectReason, ReviewedUser, Signal, SignalIntake, SignalSource,
    SignalStatus, TokenReviewer, fingerprint, sha256_hex,
};

/// Label on a namespace or resource that opts it in to remediation (K-GW-8).
pub const MANAGED_LABEL: &str = "kubernaut.io/managed";
/// Namespace label that names the environment (K-RR-3).
pub const ENVIRONMENT_LABEL: &str = "kubernaut.io/environment";
/// Label on a request holding a prefix of its fingerprint, for list selectors.
/// Label values are limited to 63 characters; the full fingerprint is in the spec.
pub const FINGERPRINT_LABEL: &str = "kubernaut.io/fingerprint";
/// Annotation on a request waiting for approval: `approved` or `rejected`
/// (K-AI-4).
pub const APPROVAL_ANNOTATION: &str = "kubernaut.io/approval";
/// Who decided, when the approver says so; otherwise the field manager
/// that set the approval is recorded.
pub const APPROVED_BY_ANNOTATION: &str = "kubernaut.io/approved-by";

/// Why an approval through the HTTP endpoint was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("a valid bearer token is required")]
    Unauthenticated,
    #[error(
        "{0} may not approve remediation requests in this namespace (RBAC verb approve on remediationrequests.kubernaut.io)"
    )]
    Forbidden(String),
    #[error("no remediation request {0}")]
    NotFound(String),
    #[error("the request is {0}, not AwaitingApproval")]
    NotAwaiting(String),
    #[error("the API server could not be asked: {0}")]
    Unavailable(String),
}

/// Records a human's approval or rejection of a request waiting for one
/// (K-AI-4), as the annotation a `kubectl annotate` would set, after the
/// API server has said who the caller is and that RBAC lets them approve.
/// Implemented by the cluster crate; served by the gateway.
#[async_trait::async_trait]
pub trait ApprovalDesk: Send + Sync {
    /// Returns who decided.
    async fn decide(
        &self,
        token: &str,
        namespace: &str,
        name: &str,
        approved: bool,
    ) -> Result<String, ApprovalError>;

    /// The same, for a user another channel has already authenticated (a
    /// Slack user, verified by Slack's signature and mapped to a Kubernetes
    /// user name): RBAC still says whether they may approve.
    async fn decide_as(
        &self,
        user: &str,
        namespace: &str,
        name: &str,
        approved: bool,
    ) -> Result<String, ApprovalError>;
}

/// Label on a request naming the source's own identity of the signal instance.
pub const INSTANCE_LABEL: &str = "kubernaut.io/signal-instance";

/// Label on a request holding its place in its fingerprint's sequence of
/// requests (1, 2, …), which is also the end of its name: the intake creates
/// the next request of a fingerprint under the name its successor must
/// have, so that concurrent creators collide on the API server (K-GW-5).
pub const SEQUENCE_LABEL: &str = "kubernaut.io/sequence";

/// Prefix length of a hex digest used as a label value (< 63 characters).
pub const LABEL_DIGEST_LEN: usize = 40;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_keys_round_trip_and_reject_malformed_text() {
        let k = RequestKey::new("shop", "oom-1234");
        assert_eq!(k.to_string(), "shop/oom-1234");
        assert_eq!(RequestKey::parse("shop/oom-1234"), Some(k));
        for bad in ["", "shop", "/x", "shop/", "a/b/c"] {
            assert_eq!(RequestKey::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn storm_targets_are_counted_and_the_list_is_bounded() {
        let mut s = StormStatus::default();
        let a = ObjectRef::new("Deployment", "shop", "a");
        s.add(&a);
        s.add(&a);
        for i in 0..MAX_STORM_TARGETS + 5 {
            s.add(&ObjectRef::new("Deployment", "shop", &format!("t{i}")));
        }
        assert_eq!(s.total_signals, 2 + MAX_STORM_TARGETS as i64 + 5);
        assert_eq!(s.affected_targets.len(), MAX_STORM_TARGETS);
        assert_eq!(s.affected_targets[0].signals, 2);
        assert_eq!(s.unlisted_signals, 6);
    }

    #[test]
    fn recent_instances_are_distinct_and_bounded() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let t = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let mut d = Deduplication {
            occurrence_count: 1,
            first_seen_at: t.clone(),
            last_seen_at: t,
            recent_instances: vec![],
            journaled: None,
        };
        d.remember("a");
        d.remember("a");
        assert_eq!(d.recent_instances, vec!["a"]);
        for i in 0..100 {
            d.remember(&i.to_string());
        }
        assert_eq!(d.recent_instances.len(), MAX_RECENT_INSTANCES);
        assert!(!d.has_seen("a"), "the oldest is dropped first");
        assert!(d.has_seen("99"));
    }
}

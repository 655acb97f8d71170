//! The Kubernaut domain: the `RemediationRequest` custom resource, its phase
//! machine, normalised signals and their fingerprints, and the traits through
//! which the transports (the gateway) reach the cluster side.
//!
//! This crate performs no I/O. It re-exports the `kube` and `k8s-openapi`
//! names the workspace uses so that a version bump touches one place.

pub mod crd;
pub mod phase;
pub mod signal;

pub use crd::{
    AnalysisStatus, Deduplication, ExecutionStatus, ObjectRef, PhaseTransition, ProcessingStatus,
    RemediationRequest, RemediationRequestSpec, RemediationRequestStatus,
};
pub use k8s_openapi;
pub use kube;
pub use phase::{Phase, TransitionError};
pub use signal::{
    IngestOutcome, IntakeError, RejectReason, Signal, SignalIntake, SignalSource, SignalStatus,
    fingerprint,
};

/// Label on a namespace or resource that opts it in to remediation (K-GW-8).
pub const MANAGED_LABEL: &str = "kubernaut.io/managed";
/// Namespace label that names the environment (K-RR-3).
pub const ENVIRONMENT_LABEL: &str = "kubernaut.io/environment";
/// Label on a request holding a prefix of its fingerprint, for list selectors.
/// Label values are limited to 63 characters; the full fingerprint is in the spec.
pub const FINGERPRINT_LABEL: &str = "kubernaut.io/fingerprint";
/// Label on a request naming the source's own identity of the signal instance.
pub const INSTANCE_LABEL: &str = "kubernaut.io/signal-instance";

/// Prefix length of a hex digest used as a label value (< 63 characters).
pub const LABEL_DIGEST_LEN: usize = 40;

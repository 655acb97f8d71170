//! The one crate that talks to the Kubernetes API on behalf of the control
//! plane: resolving a signal's resource to its top-level owner, scope checks,
//! finding, creating and counting `RemediationRequest`s and claiming
//! fingerprints (primitives of the gateway's intake), writing the
//! controller's status, and executing actions.

mod actions;
mod approvals;
mod claims;
mod events;
mod health;
mod known;
mod leases;
mod members;
mod occurrences;
mod owners;
mod recorder;
pub mod redact;
mod requests;
mod status;
mod tokens;
mod views;
mod watch;

use std::sync::Arc;
use std::time::Duration;

pub use actions::{
    Action, ActionCall, ActionError, ActionInfo, Bounds, Catalogued, Change, ExecSettings,
    HeldLock, KINDS, Kind, Outcome, Quantity, Ran, Record, Recorded, Risk, RunCx, WriteMode,
    catalogue, kind, lock_name, repeatable, write_ahead, writes,
};
pub use actions::{DeleteOutcome, PodState};
pub use approvals::KubeApprovals;
pub use claims::LeaseClaim;
pub use health::{MAX_HEALTH_PODS, Observed, PodHealth, canonical_hash};
pub use known::{Countable, Index as KnownIndex, KnownRequests, sequence_of};
pub use kube::Client;
pub use members::member_lease_name;
pub use occurrences::{Counted, Occurrences, Require};
pub use owners::Resolved;
pub use recorder::{EventSink, Note};
pub use requests::{Created, Scope, request_name};
pub use status::FIELD_MANAGER;
pub use tokens::KubeTokenReviewer;
pub use watch::{Guarded, Rejected, RequestEvent};

/// Every API call is bounded; a hung connection must not hang a request.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("Kubernetes API call timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot resolve {0}: unsupported kind")]
    UnsupportedKind(String),
    #[error("could not serialise {0}: {1}")]
    Serialize(&'static str, serde_json::Error),
    #[error("counting an occurrence failed: {0}")]
    Occurrence(String),
}

impl Error {
    /// A fixed label per variant, for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Timeout(_) => "timeout",
            Error::UnsupportedKind(_) => "unsupported_kind",
            Error::Serialize(..) => "serialize",
            Error::Occurrence(_) => "occurrence",
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 404)
    }

    /// 422: the API server refused the object itself.
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 422)
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 409)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Bounds one API call by [`API_TIMEOUT`].
pub(crate) async fn bounded<T>(fut: impl Future<Output = kube::Result<T>>) -> Result<T> {
    match tokio::time::timeout(API_TIMEOUT, fut).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::Timeout(API_TIMEOUT)),
    }
}

/// Cluster-facing settings shared by intake and controller.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Prefixed to fingerprints when set, so that one Kubernaut per cluster
    /// reporting into shared storage never mixes incidents.
    pub cluster_name: Option<String>,
    /// Never remediated (kube-system always is one).
    pub protected_namespaces: Vec<String>,
    /// Where requests for cluster-scoped targets (Nodes) live.
    pub cluster_scoped_namespace: String,
    /// Where the controller's own Leases (creation claims) live.
    pub lease_namespace: String,
}

impl ClusterConfig {
    pub fn is_protected(&self, namespace: &str) -> bool {
        namespace == "kube-system" || self.protected_namespaces.iter().any(|n| n == namespace)
    }
}

/// Handle to the cluster: kube clients plus settings. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    /// Without kube's transparent retry of 429: for an eviction a 429 is
    /// the answer (a disruption budget forbids it), not congestion, and
    /// drain_node decides itself when to ask again.
    no_retry: Client,
    config: ClusterConfig,
    /// Watch-fed metadata for owner resolution and scope, when started.
    views: Option<Arc<views::Views>>,
    /// Watch-fed target locks, when started with the views.
    leases: Option<Arc<leases::Leases>>,
    /// The requests' watch that this handle and its clones share, started
    /// by the first reader ([`Cluster::known_requests`]).
    requests: Arc<std::sync::OnceLock<known::KnownRequests>>,
}

impl Cluster {
    pub fn connect(kube: kube::Config, config: ClusterConfig) -> Result<Self> {
        let mut once = kube.clone();
        once.default_retry = false;
        let no_retry = Client::try_from(once)?;
        Ok(Self {
            client: Client::try_from(kube)?,
            no_retry,
            config,
            views: None,
            leases: None,
            requests: Arc::default(),
        })
    }

    /// The watch-fed index of every request, shared by every clone of this
    /// handle, and the watch behind it (which [`Cluster::request_events`]
    /// shares too). Started on the first call, which must be within a
    /// Tokio runtime.
    pub fn known_requests(&self) -> KnownRequests {
        self.requests
            .get_or_init(|| KnownRequests::start(self))
            .clone()
    }

    /// This handle, resolving owners and scope from reflectors it starts
    /// now (the gateway's hot path) instead of an API call per object.
    pub fn with_views(mut self) -> Self {
        self.views = Some(Arc::new(views::Views::start(&self.client)));
        self.leases = Some(Arc::new(leases::Leases::start(
            &self.client,
            &self.config.lease_namespace,
        )));
        self
    }

    /// Waits until the reflectors have their first lists (at once without
    /// them); lookups work before that, through API calls.
    pub async fn views_synced(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let views = match &self.views {
            Some(v) => v.wait_synced(timeout).await,
            None => true,
        };
        match &self.leases {
            Some(l) => views && l.wait_synced(deadline).await,
            None => views,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }
}

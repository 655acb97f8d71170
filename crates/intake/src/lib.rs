//! The signal intake (K-GW-4, K-GW-5, K-GW-8): turns an accepted signal into
//! a new request or a counted duplicate, exactly once across replicas.
//!
//! Kubernetes is the source of truth; Redis is the shared fast path in front
//! of it. For each signal:
//!
//! 1. A known signal instance (Redis; when Redis cannot answer, the request
//!    it created) is a duplicate whatever the state of its request.
//! 2. The resource is resolved to its top-level owner and scope-checked.
//! 3. An open request for the fingerprint named by Redis, once the API
//!    server confirms it is open, takes the signal as a duplicate; when
//!    Redis is down, the fingerprint's requests are listed instead.
//! 4. Otherwise the creator claims the fingerprint, first in Redis (`SET NX`,
//!    so that contenders wait on Redis rather than on the API server), then
//!    with a Lease, which holds even when Redis is down or lost its data.
//!    Under both claims it looks for an open request in Kubernetes and counts
//!    on it or creates one, then records it in Redis for the contenders.
//!
//! Any Redis failure is counted and that step falls back to the API server.

mod metrics;
mod storm;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{
    ENVIRONMENT_LABEL, IngestOutcome, IntakeError, MANAGED_LABEL, ObjectRef, RejectReason,
    RemediationRequest, RequestKey, Signal, SignalIntake, StormSpec, fingerprint,
};
use kubernaut_cluster::{Cluster, Counted, Created, Occurrences, Require, Resolved, Scope};
use kubernaut_store::index::{IndexResult, SignalIndex};

pub use metrics::IntakeMetrics;
pub use storm::StormSettings;
use storm::{LocalWindows, storm_outcome};

type Result<T, E = kubernaut_cluster::Error> = std::result::Result<T, E>;

/// Tunables of the claim protocol and storm detection.
#[derive(Clone, Debug)]
pub struct IntakeSettings {
    /// Identity written into claims: the replica's pod name and a nonce.
    pub holder: String,
    /// How long a claim lives if its holder dies; also how long a contender
    /// waits for the holder before asking the sender to retry (503).
    pub claim_ttl: Duration,
    pub storm: StormSettings,
}

/// Where a signal is counted or opened: its own fingerprint, or its storm's.
pub(crate) struct Plan {
    fp: String,
    /// The namespace the request lives in.
    ns: String,
    resolved: Resolved,
    storm: Option<StormSpec>,
    /// On a storm plan, the signal's own target, counted in the storm status.
    storm_target: Option<ObjectRef>,
}

/// How long a namespace's environment label is trusted.
const ENVIRONMENT_TTL: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Intake {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Cluster,
    index: Option<SignalIndex>,
    occurrences: Occurrences,
    settings: IntakeSettings,
    metrics: IntakeMetrics,
    /// Seconds since the epoch of the last "Redis unavailable" warning.
    last_redis_warning: AtomicU64,
    /// The last Redis call failed.
    redis_down: AtomicBool,
    local_windows: Mutex<LocalWindows>,
    environments: Mutex<HashMap<String, (Instant, String)>>,
}

impl Intake {
    /// `index` is `None` when no Redis is configured: every step then goes
    /// to the API server.
    pub fn new(
        cluster: Cluster,
        index: Option<SignalIndex>,
        settings: IntakeSettings,
        metrics: IntakeMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                occurrences: Occurrences::new(cluster.clone()),
                cluster,
                index,
                settings,
                metrics,
                last_redis_warning: AtomicU64::new(0),
                redis_down: AtomicBool::new(false),
                local_windows: Mutex::default(),
                environments: Mutex::default(),
            }),
        }
    }
}

fn key_of(rr: &RemediationRequest) -> RequestKey {
    RequestKey::new(
        rr.metadata.namespace.clone().unwrap_or_default(),
        rr.metadata.name.clone().unwrap_or_default(),
    )
}

fn duplicate(key: RequestKey, counted: Counted) -> IngestOutcome {
    IngestOutcome::Duplicate {
        request: key.name,
        namespace: key.namespace,
        fingerprint: counted.fingerprint,
        occurrence_count: counted.count,
    }
}

/// 10–40 ms, growing a little with each round, jittered so that contenders
/// polling for one holder do not move in lockstep.
fn poll_pause(round: u32) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(10 + u64::from(round.min(10)) * 2 + u64::from(nanos % 10))
}

impl Inner {
    /// Runs one Redis operation; a failure is counted, logged (at most every
    /// 10 s) and turned into `None` so that the caller falls back.
    async fn redis<T>(
        &self,
        op: &'static str,
        call: impl AsyncFnOnce(&SignalIndex) -> IndexResult<T>,
    ) -> Option<T> {
        let index = self.index.as_ref()?;
        match call(index).await {
            Ok(v) => {
                self.redis_down.store(false, Ordering::Relaxed);
                Some(v)
            }
            Err(e) => {
                self.redis_down.store(true, Ordering::Relaxed);
                self.metrics.redis_fallback(op);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let last = self.last_redis_warning.load(Ordering::Relaxed);
                if now >= last + 10
                    && self
                        .last_redis_warning
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(error = %e, op, "Redis unavailable; falling back to the Kubernetes API");
                }
                None
            }
        }
    }

    /// The namespace's `kubernaut.io/environment` label, cached briefly.
    async fn environment(&self, ns: &str) -> Result<String, IntakeError> {
        if let Some((at, env)) = self
            .environments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ns)
            && at.elapsed() < ENVIRONMENT_TTL
        {
            return Ok(env.clone());
        }
        let env = self
            .cluster
            .namespace_labels(ns)
            .await
            .map_err(unavailable)?
            .and_then(|l| l.get(ENVIRONMENT_LABEL).cloned())
            .unwrap_or_default();
        self.environments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ns.to_string(), (Instant::now(), env.clone()));
        Ok(env)
    }

    /// Whether the last Redis call worked (false without Redis).
    fn redis_available(&self) -> bool {
        self.index.is_some() && !self.redis_down.load(Ordering::Relaxed)
    }

    async fn remember(&self, instance: &str, open: Option<&str>, key: &RequestKey) {
        self.redis("remember_instance", async |i| {
            i.remember_instance(instance, key).await
        })
        .await;
        if let Some(fp) = open {
            self.redis("remember_open", async |i| i.remember_open(fp, key).await)
                .await;
        }
    }

    async fn ingest(&self, signal: Signal) -> Result<IngestOutcome, IntakeError> {
        let instance = signal.instance_id();
        let at = signal.received_time;

        // 1. A re-delivery is a duplicate whatever happened since, even if
        // the remediation removed its pod, so it is looked up before the
        // resource is resolved. Kubernetes is only asked (a list, whose cost
        // grows with the namespace's requests) when Redis cannot answer; a
        // re-delivery Redis forgot is still found through its fingerprint.
        let indexed = self
            .redis("instance_get", async |i| i.instance(&instance).await)
            .await;
        if let Some(Some(key)) = &indexed
            && let Some(c) = self.count(key, at, &instance, Require::Any).await?
        {
            return Ok(duplicate(key.clone(), c));
        }
        let home = self.cluster.request_namespace(&signal.resource);
        if indexed.is_none()
            && let Some(rr) = self
                .cluster
                .find_instance(&home, &instance)
                .await
                .map_err(unavailable)?
        {
            let key = key_of(&rr);
            if let Some(c) = self.count(&key, at, &instance, Require::Any).await? {
                self.remember(&instance, None, &key).await;
                return Ok(duplicate(key, c));
            }
        }

        // 2. Resolution and scope.
        let resolved = match self.resolve_target(&signal).await? {
            Ok(r) => r,
            Err(rejected) => return Ok(rejected),
        };
        let fp = fingerprint(
            self.cluster.config().cluster_name.as_deref(),
            &resolved.target,
        );

        // 3. A storm (K-GW-6) takes the signal into its storm request.
        if let Some(storm) = self.storm_of(&signal, &resolved, &fp, &instance).await? {
            let plan = self.storm_plan(storm, &resolved);
            let outcome = self.count_or_open(&signal, &plan, &instance).await?;
            return Ok(storm_outcome(outcome));
        }
        let plan = Plan {
            ns: self.cluster.request_namespace(&resolved.target),
            fp,
            resolved,
            storm: None,
            storm_target: None,
        };
        self.count_or_open(&signal, &plan, &instance).await
    }

    /// Counts the signal on the plan's open request, or opens one:
    /// 4. the open request as Redis knows it, or, when Redis cannot say, as
    ///    Kubernetes does (no claim is needed to count);
    /// 5. otherwise claim the fingerprint, then count or create.
    async fn count_or_open(
        &self,
        signal: &Signal,
        plan: &Plan,
        instance: &str,
    ) -> Result<IngestOutcome, IntakeError> {
        let at = signal.received_time;
        let fp = plan.fp.as_str();
        if self.redis_available() {
            if let Some(out) = self.count_on_indexed_open(plan, instance, at).await? {
                return Ok(out);
            }
        } else if let Some(rr) = self
            .cluster
            .find_open_or_same(&plan.ns, fp, instance)
            .await
            .map_err(unavailable)?
        {
            let key = key_of(&rr);
            if let Some(c) = self
                .count_in(plan, &key, at, instance, Require::Any)
                .await?
            {
                return Ok(duplicate(key, c));
            }
        }

        let deadline = Instant::now() + self.settings.claim_ttl;
        let mut round = 0;
        loop {
            let ttl = self.settings.claim_ttl;
            let holder = self.settings.holder.as_str();
            let redis_claim = self
                .redis("claim", async |i| i.claim(fp, holder, ttl).await)
                .await;
            if redis_claim == Some(false) {
                self.metrics.claim("redis_contended");
                if Instant::now() >= deadline {
                    return Err(IntakeError::Conflict(format!(
                        "fingerprint {fp} stayed claimed for {ttl:?}"
                    )));
                }
                tokio::time::sleep(poll_pause(round)).await;
                round += 1;
                if let Some(out) = self.count_on_indexed_open(plan, instance, at).await? {
                    return Ok(out);
                }
                continue;
            }
            let lease = match self.cluster.claim_fingerprint(fp, holder, ttl).await {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    self.metrics.claim("lease_contended");
                    if redis_claim == Some(true) {
                        self.redis("release", async |i| i.release(fp, holder).await)
                            .await;
                    }
                    if Instant::now() >= deadline {
                        return Err(IntakeError::Conflict(format!(
                            "the creation Lease of fingerprint {fp} stayed held for {ttl:?}"
                        )));
                    }
                    tokio::time::sleep(poll_pause(round)).await;
                    round += 1;
                    continue;
                }
                Err(e) => {
                    if redis_claim == Some(true) {
                        self.redis("release", async |i| i.release(fp, holder).await)
                            .await;
                    }
                    return Err(unavailable(e));
                }
            };
            self.metrics.claim("acquired");
            let result = self.count_or_create(signal, plan, instance).await;
            lease.release().await;
            if redis_claim == Some(true) {
                self.redis("release", async |i| i.release(fp, holder).await)
                    .await;
            }
            return result;
        }
    }

    async fn record_resolution(&self, signal: Signal) -> Result<IngestOutcome, IntakeError> {
        let instance = signal.instance_id();
        let at = signal.ended_time.unwrap_or(signal.received_time);
        let Some(key) = self.request_of(&signal, &instance).await? else {
            return Ok(IngestOutcome::Resolved { request: None });
        };
        let recorded = self
            .cluster
            .record_resolution(&key, at, &instance)
            .await
            .map_err(unavailable)?;
        Ok(IngestOutcome::Resolved {
            request: recorded.then_some(key),
        })
    }

    /// The request a resolution belongs to: the one its signal instance
    /// created or was counted on (Redis, the creator label, then the
    /// requests of its target's fingerprint), else the open request of that
    /// fingerprint that a signal of the same name opened.
    async fn request_of(
        &self,
        signal: &Signal,
        instance: &str,
    ) -> Result<Option<RequestKey>, IntakeError> {
        if let Some(Some(key)) = self
            .redis("instance_get", async |i| i.instance(instance).await)
            .await
        {
            return Ok(Some(key));
        }
        let home = self.cluster.request_namespace(&signal.resource);
        if let Some(rr) = self
            .cluster
            .find_instance(&home, instance)
            .await
            .map_err(unavailable)?
        {
            return Ok(Some(key_of(&rr)));
        }
        let Some(resolved) = self
            .cluster
            .resolve(&signal.resource)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let fp = fingerprint(
            self.cluster.config().cluster_name.as_deref(),
            &resolved.target,
        );
        let ns = self.cluster.request_namespace(&resolved.target);
        Ok(self
            .cluster
            .find_resolvable(&ns, &fp, instance, &signal.name)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(key_of))
    }

    /// Counts an occurrence on a request.
    async fn count(
        &self,
        key: &RequestKey,
        at: Timestamp,
        instance: &str,
        require: Require,
    ) -> Result<Option<Counted>, IntakeError> {
        self.occurrences
            .record(key, at, instance, require)
            .await
            .map_err(unavailable)
    }

    /// Counts an occurrence on the plan's request; on a storm plan, also
    /// against the signal's target.
    async fn count_in(
        &self,
        plan: &Plan,
        key: &RequestKey,
        at: Timestamp,
        instance: &str,
        require: Require,
    ) -> Result<Option<Counted>, IntakeError> {
        self.occurrences
            .record_on(key, at, instance, require, plan.storm_target.clone())
            .await
            .map_err(unavailable)
    }

    /// The resolved target, or the rejection to answer.
    async fn resolve_target(
        &self,
        signal: &Signal,
    ) -> Result<Result<Resolved, IngestOutcome>, IntakeError> {
        let rejected = |reason, detail| Err(IngestOutcome::Rejected { reason, detail });
        let Some(resolved) = self
            .cluster
            .resolve(&signal.resource)
            .await
            .map_err(unavailable)?
        else {
            return Ok(rejected(
                RejectReason::TargetNotFound,
                format!("{} does not exist", signal.resource),
            ));
        };
        Ok(
            match self.cluster.scope(&resolved).await.map_err(unavailable)? {
                Scope::Managed(_) => Ok(resolved),
                Scope::Protected => rejected(
                    RejectReason::ProtectedNamespace,
                    format!("namespace {} is protected", resolved.target.namespace),
                ),
                Scope::Unmanaged => rejected(
                    RejectReason::OutOfScope,
                    format!(
                        "{} and its namespace are not labelled {MANAGED_LABEL}=true",
                        resolved.target
                    ),
                ),
            },
        )
    }

    /// Counts on the open request Redis names for `fp`, if the API server
    /// confirms it is open; a stale entry is dropped.
    async fn count_on_indexed_open(
        &self,
        plan: &Plan,
        instance: &str,
        at: Timestamp,
    ) -> Result<Option<IngestOutcome>, IntakeError> {
        let fp = plan.fp.as_str();
        let Some(Some(key)) = self
            .redis("open_get", async |i| i.open_request(fp).await)
            .await
        else {
            return Ok(None);
        };
        match self
            .count_in(plan, &key, at, instance, Require::Open)
            .await?
        {
            Some(c) => {
                self.remember(instance, None, &key).await;
                Ok(Some(duplicate(key, c)))
            }
            None => {
                self.redis("forget_open", async |i| i.forget_open(fp, &key).await)
                    .await;
                Ok(None)
            }
        }
    }

    /// Under the claims: count on the request Kubernetes knows, or create one.
    async fn count_or_create(
        &self,
        signal: &Signal,
        plan: &Plan,
        instance: &str,
    ) -> Result<IngestOutcome, IntakeError> {
        let at = signal.received_time;
        let fp = plan.fp.as_str();
        if let Some(rr) = self
            .cluster
            .find_open_or_same(&plan.ns, fp, instance)
            .await
            .map_err(unavailable)?
        {
            let key = key_of(&rr);
            let open = (!rr.phase().is_terminal()).then_some(fp);
            if let Some(c) = self
                .count_in(plan, &key, at, instance, Require::Any)
                .await?
            {
                self.remember(instance, open, &key).await;
                return Ok(duplicate(key, c));
            }
            // Deleted between the list and the count: create a new one.
        }
        let key = match self
            .cluster
            .create_request(signal, &plan.resolved, fp, plan.storm.as_ref())
            .await
            .map_err(unavailable)?
        {
            Created::Created(key) => key,
            // Only a creator without our claims (an older version, or one
            // whose claim expired) gets here: count on its request.
            Created::AlreadyExists(key) => {
                return match self
                    .count_in(plan, &key, at, instance, Require::Any)
                    .await?
                {
                    Some(c) => {
                        self.remember(instance, Some(fp), &key).await;
                        Ok(duplicate(key, c))
                    }
                    None => Err(IntakeError::Conflict(format!(
                        "request {key} was created and deleted concurrently"
                    ))),
                };
            }
        };
        self.remember(instance, Some(fp), &key).await;
        Ok(IngestOutcome::Created {
            request: key.name,
            namespace: key.namespace,
            fingerprint: fp.to_string(),
        })
    }
}

fn unavailable(e: kubernaut_cluster::Error) -> IntakeError {
    if e.is_invalid() {
        IntakeError::Invalid(e.to_string())
    } else if e.is_conflict() {
        IntakeError::Conflict(e.to_string())
    } else {
        IntakeError::Unavailable(e.to_string())
    }
}

#[async_trait]
impl SignalIntake for Intake {
    async fn ingest(&self, signal: Signal) -> Result<IngestOutcome, IntakeError> {
        self.inner.ingest(signal).await
    }

    async fn resolve(&self, signal: Signal) -> Result<IngestOutcome, IntakeError> {
        self.inner.record_resolution(signal).await
    }
}

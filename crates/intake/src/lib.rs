//! The signal intake (K-GW-4, K-GW-5, K-GW-8): turns an accepted signal into
//! a new request or a counted duplicate, exactly once across replicas.
//!
//! Kubernetes is the source of truth, and every read on the way comes from
//! watches: owner chains and namespaces from the cluster crate's
//! reflectors, requests from [`KnownRequests`]. For each signal:
//!
//! 1. A known signal instance is a duplicate whatever the state of its
//!    request.
//! 2. The resource is resolved to its top-level owner and scope-checked.
//! 3. A storm takes the signal into its storm request.
//! 4. The fingerprint's open request, once its counter confirms it is still
//!    open, takes the signal as a duplicate.
//! 5. Otherwise the signal creates the fingerprint's next request, under the
//!    name its place in the fingerprint's sequence determines. The API
//!    server's "already exists" is the claim: every replica that saw the
//!    same history tries the same name, one wins, and the others are told
//!    what won and count on it (or, if it has ended, try the place after).
//!
//! Redis is the replicas' shared storm window and, for duplicates, the
//! journal that numbers them so that they are answered before their status
//! write ([`journal`]); when it cannot answer, each replica counts its own
//! window, duplicates wait for their status write, and the failure is
//! counted.

mod journal;
mod metrics;
mod storm;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{
    ENVIRONMENT_LABEL, IngestOutcome, IntakeError, MANAGED_LABEL, ObjectRef, RejectReason,
    RemediationRequest, RequestKey, Signal, SignalIntake, StormSpec, fingerprint,
};
use kubernaut_cluster::{
    Cluster, Countable, Counted, Created, KnownRequests, Occurrences, Require, Resolved, Scope,
    sequence_of,
};
use kubernaut_store::index::{IndexResult, SignalIndex};

pub use metrics::IntakeMetrics;
pub use storm::StormSettings;
use storm::{LocalWindows, storm_outcome};

/// Tunables of the intake and storm detection.
#[derive(Clone, Debug)]
pub struct IntakeSettings {
    /// How long a signal waits for the intake's first lists (after a start)
    /// before the sender is asked to retry (503).
    pub sync_timeout: Duration,
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

/// Creation attempts for one signal before the sender is asked to retry:
/// each failed attempt means the fingerprint moved on meanwhile (a request
/// was created and ended, or deleted), which takes seconds, not rounds.
const MAX_CREATE_ROUNDS: u32 = 8;

#[derive(Clone)]
pub struct Intake {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Cluster,
    known: KnownRequests,
    index: Option<SignalIndex>,
    occurrences: Occurrences,
    settings: IntakeSettings,
    metrics: IntakeMetrics,
    /// Seconds since the epoch of the last "Redis unavailable" warning.
    last_redis_warning: AtomicU64,
    /// Set once the watches' first lists are in.
    synced: AtomicBool,
    local_windows: Mutex<LocalWindows>,
    /// With Redis: duplicates numbered there, written to status shortly after.
    journal: Option<journal::Journal>,
}

impl Intake {
    /// Starts the intake's watch of requests (it must be called within a
    /// Tokio runtime). `cluster` should have its views
    /// ([`Cluster::with_views`]), or every resolution costs API calls.
    /// `index` is `None` when no Redis is configured: storm windows are
    /// then counted per replica.
    pub fn new(
        cluster: Cluster,
        index: Option<SignalIndex>,
        settings: IntakeSettings,
        metrics: IntakeMetrics,
    ) -> Self {
        let occurrences = Occurrences::new(cluster.clone());
        let journal = index
            .clone()
            .map(|ix| journal::Journal::start(ix, occurrences.clone()));
        Self {
            inner: Arc::new(Inner {
                journal,
                occurrences,
                known: cluster.known_requests(),
                cluster,
                index,
                settings,
                metrics,
                last_redis_warning: AtomicU64::new(0),
                synced: AtomicBool::new(false),
                local_windows: Mutex::default(),
            }),
        }
    }

    /// Writes every duplicate this replica has answered to its request's
    /// status (on shutdown: a clean stop leaves nothing for other replicas
    /// to settle).
    pub async fn settle(&self) {
        if let Some(j) = &self.inner.journal {
            j.settle_now().await;
        }
    }

    /// Waits until the intake's watches have their first lists.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        self.inner.wait_synced(timeout).await
    }
}

fn duplicate(key: RequestKey, counted: Counted) -> IngestOutcome {
    IngestOutcome::Duplicate {
        request: key.name,
        namespace: key.namespace,
        fingerprint: counted.fingerprint,
        occurrence_count: counted.count,
    }
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
            Ok(v) => Some(v),
            Err(e) => {
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
                    tracing::warn!(error = %e, op, "Redis unavailable; counting storm windows per replica");
                }
                None
            }
        }
    }

    async fn wait_synced(&self, timeout: Duration) -> bool {
        if self.synced.load(Ordering::Acquire) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let ok = self.known.wait_synced(timeout).await
            && self
                .cluster
                .views_synced(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await;
        if ok {
            self.synced.store(true, Ordering::Release);
        }
        ok
    }

    /// Nothing is decided from a view that has not listed yet.
    async fn ready(&self) -> Result<(), IntakeError> {
        if self.wait_synced(self.settings.sync_timeout).await {
            Ok(())
        } else {
            Err(IntakeError::Unavailable(
                "the intake's watches of requests and owners have not listed yet".into(),
            ))
        }
    }

    /// The namespace's `kubernaut.io/environment` label.
    async fn environment(&self, ns: &str) -> Result<String, IntakeError> {
        Ok(self
            .cluster
            .namespace_labels(ns)
            .await
            .map_err(unavailable)?
            .and_then(|l| l.get(ENVIRONMENT_LABEL).cloned())
            .unwrap_or_default())
    }

    async fn ingest(&self, signal: Signal) -> Result<IngestOutcome, IntakeError> {
        self.ready().await?;
        let instance = signal.instance_id();
        let at = signal.received_time;

        // 1. A re-delivery is a duplicate whatever happened since, even if
        // the remediation removed its pod, so it is looked up before the
        // resource is resolved. One the view has not seen yet is found on
        // creation (step 5).
        let home = self.cluster.request_namespace(&signal.resource);
        if let Some(key) = self.known.read(|ix| ix.instance(&home, &instance))
            && let Some(c) = self.count(&key, None, at, &instance, Require::Any).await?
        {
            return Ok(duplicate(key, c));
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

    /// Counts the signal on the plan's open request (step 4), or opens the
    /// fingerprint's next one (step 5).
    async fn count_or_open(
        &self,
        signal: &Signal,
        plan: &Plan,
        instance: &str,
    ) -> Result<IngestOutcome, IntakeError> {
        let at = signal.received_time;
        let fp = plan.fp.as_str();
        // Places below this are known to be taken by requests that ended.
        let mut floor = 0;
        let mut tried_open = None;
        for _ in 0..MAX_CREATE_ROUNDS {
            let (open, next) = self
                .known
                .read(|ix| (ix.open(&plan.ns, fp), ix.next_sequence(&plan.ns, fp)));
            if let Some(key) = open
                && tried_open.as_ref() != Some(&key)
            {
                if let Some(c) = self
                    .count_in(plan, &key, None, at, instance, Require::Open)
                    .await?
                {
                    return Ok(duplicate(key, c));
                }
                // It ended (or went) since the view saw it open.
                tried_open = Some(key);
            }
            let seq = next.max(floor);
            let created = self
                .cluster
                .create_request(signal, &plan.resolved, fp, plan.storm.as_ref(), seq)
                .await
                .map_err(unavailable)?;
            let taken = match created {
                Created::Created(key) => {
                    self.metrics.creation("created");
                    return Ok(IngestOutcome::Created {
                        request: key.name,
                        namespace: key.namespace,
                        fingerprint: fp.to_string(),
                    });
                }
                Created::Vanished => {
                    self.metrics.creation("vanished");
                    continue;
                }
                Created::Taken(rr) => rr,
            };
            self.metrics.creation("taken");
            let key = taken.key();
            if taken.spec.fingerprint != fp {
                // Someone else's object squats the name: every creator
                // skips it alike, so they still collide on the next one.
                tracing::warn!(request = %key, fingerprint = fp, seq, "a request of another fingerprint holds this place's name; skipping the place");
                floor = seq + 1;
                continue;
            }
            // A re-delivery counts whatever the state; a new signal only on
            // a request still open.
            let require = if taken.has_seen(instance) {
                Require::Any
            } else if !taken.phase().is_terminal() {
                Require::Open
            } else {
                floor = seq.max(sequence_of(&taken)) + 1;
                continue;
            };
            if let Some(c) = self
                .count_in(plan, &key, Some(&taken), at, instance, require)
                .await?
            {
                return Ok(duplicate(key, c));
            }
            floor = seq + 1;
        }
        Err(IntakeError::Conflict(format!(
            "fingerprint {fp} kept moving on while a request was being created; retry"
        )))
    }

    async fn record_resolution(&self, signal: Signal) -> Result<IngestOutcome, IntakeError> {
        self.ready().await?;
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
    /// created or was counted on, else the open request of its target's
    /// fingerprint that a signal of the same name opened. The second case
    /// serves sources whose resolution is a new message with its own
    /// identity (a CloudWatch OK has a new MessageId).
    async fn request_of(
        &self,
        signal: &Signal,
        instance: &str,
    ) -> Result<Option<RequestKey>, IntakeError> {
        let home = self.cluster.request_namespace(&signal.resource);
        if let Some(key) = self.known.read(|ix| ix.instance(&home, instance)) {
            return Ok(Some(key));
        }
        // Counted from the journal moments ago: not in the status yet.
        if let Some(key) = self.journal.as_ref().and_then(|j| j.request_of(instance))
            && key.namespace == home
        {
            return Ok(Some(key));
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
            .known
            .read(|ix| ix.open_of_signal(&ns, &fp, &signal.name)))
    }

    /// Counts an occurrence on a request: numbered by the Redis journal and
    /// answered at once when it can be, else through the status write.
    /// `taken` is the request as a create that collided with it read it.
    async fn count(
        &self,
        key: &RequestKey,
        taken: Option<&RemediationRequest>,
        at: Timestamp,
        instance: &str,
        require: Require,
    ) -> Result<Option<Counted>, IntakeError> {
        let known = self
            .known
            .read(|ix| ix.countable(key))
            .or_else(|| taken.map(Countable::of));
        if let Some(c) = self
            .count_journaled(key, known, at, instance, require)
            .await
        {
            return Ok(Some(c));
        }
        self.occurrences
            .record(key, at, instance, require)
            .await
            .map_err(unavailable)
    }

    /// The journal's count of a duplicate of a request known from the view
    /// or a read (open, unless any state will do) that no storm aggregates;
    /// `None` sends it through the status write.
    async fn count_journaled(
        &self,
        key: &RequestKey,
        known: Option<Countable>,
        at: Timestamp,
        instance: &str,
        require: Require,
    ) -> Option<Counted> {
        let journal = self.journal.as_ref()?;
        if !self.occurrences.journal_supported() {
            return None;
        }
        let known = known?;
        if known.storm || (require == Require::Open && !known.open) {
            return None;
        }
        let count = self
            .redis("count_duplicate", async |_| {
                journal.count(key, &known, at, instance).await
            })
            .await?;
        Some(Counted {
            count,
            fingerprint: known.fingerprint,
        })
    }

    /// Counts an occurrence on the plan's request; on a storm plan, also
    /// against the signal's target (through the status write: the journal
    /// counts no targets).
    async fn count_in(
        &self,
        plan: &Plan,
        key: &RequestKey,
        taken: Option<&RemediationRequest>,
        at: Timestamp,
        instance: &str,
        require: Require,
    ) -> Result<Option<Counted>, IntakeError> {
        let Some(target) = &plan.storm_target else {
            return self.count(key, taken, at, instance, require).await;
        };
        self.occurrences
            .record_on(key, at, instance, require, Some(target.clone()))
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

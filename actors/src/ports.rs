//! The outside world as the actors' work sees it: three narrow traits over
//! the Kubernetes API and the audit trail, implemented by [`Cluster`] and
//! [`AuditLog`]. The logic written against them (a status writer, a
//! janitor sweep, a workflow step's attempts) is unit-tested with
//! in-process doubles; the real-stack tests cover the implementations.
//!
//! Methods return boxed futures so that the traits are object-safe: a
//! `&Cluster` is a `&dyn Steps` where a function asks for one.

use futures::FutureExt;
use futures::future::BoxFuture;
use kubernaut_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubernaut_api::{ObjectRef, RemediationRequest, RemediationRequestStatus, RequestKey};
use kubernaut_cluster::{ActionCall, ActionError, Cluster, ExecSettings, HeldLock, Outcome};
use kubernaut_store::{AuditLog, AuditRecord};

type KubeResult<T> = Result<T, kubernaut_cluster::Error>;
type StoreResult<T> = Result<T, kubernaut_store::Error>;

/// RemediationRequest objects: the status writer's and the janitor's view.
pub trait Requests: Send + Sync {
    fn get<'a>(
        &'a self,
        key: &'a RequestKey,
    ) -> BoxFuture<'a, KubeResult<Option<RemediationRequest>>>;

    /// Writes the status on `resource_version`; the new resourceVersion.
    fn apply_status<'a>(
        &'a self,
        key: &'a RequestKey,
        status: &'a RemediationRequestStatus,
        resource_version: &'a str,
    ) -> BoxFuture<'a, KubeResult<String>>;

    /// Deletes the request if it still has `uid` and `resource_version`.
    fn delete<'a>(
        &'a self,
        key: &'a RequestKey,
        uid: &'a str,
        resource_version: &'a str,
    ) -> BoxFuture<'a, KubeResult<bool>>;
}

/// What a workflow step reads of and does to the cluster.
pub trait Steps: Send + Sync {
    fn metadata<'a>(&'a self, obj: &'a ObjectRef) -> BoxFuture<'a, KubeResult<Option<ObjectMeta>>>;

    /// The lock `call` takes, claimed ahead of running it
    /// ([`Cluster::claim_lock`]).
    fn claim_lock<'a>(
        &'a self,
        call: &'a ActionCall,
        settings: &'a ExecSettings,
    ) -> BoxFuture<'a, Option<HeldLock>>;

    /// Runs `call`, under `held` when it is the lock `call` takes.
    fn run_action<'a>(
        &'a self,
        call: &'a ActionCall,
        settings: &'a ExecSettings,
        held: Option<HeldLock>,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>>;
}

/// The audit trail as the janitor checks and repairs it.
pub trait AuditTrail: Send + Sync {
    /// The request's final record with `phase` is stored.
    fn confirmed<'a>(&'a self, uid: &'a str, phase: &'a str) -> BoxFuture<'a, StoreResult<bool>>;

    /// Confirmed, and `steps` step ends are stored too.
    fn complete<'a>(
        &'a self,
        uid: &'a str,
        phase: &'a str,
        steps: usize,
    ) -> BoxFuture<'a, StoreResult<bool>>;

    /// Queues a record, waiting for room (tasks only, never a handler).
    fn record(&self, record: AuditRecord) -> BoxFuture<'_, StoreResult<()>>;
}

impl Requests for Cluster {
    fn get<'a>(
        &'a self,
        key: &'a RequestKey,
    ) -> BoxFuture<'a, KubeResult<Option<RemediationRequest>>> {
        self.get_request(&key.namespace, &key.name).boxed()
    }

    fn apply_status<'a>(
        &'a self,
        key: &'a RequestKey,
        status: &'a RemediationRequestStatus,
        resource_version: &'a str,
    ) -> BoxFuture<'a, KubeResult<String>> {
        Cluster::apply_status(
            self,
            &key.namespace,
            &key.name,
            status,
            Some(resource_version),
        )
        .boxed()
    }

    fn delete<'a>(
        &'a self,
        key: &'a RequestKey,
        uid: &'a str,
        resource_version: &'a str,
    ) -> BoxFuture<'a, KubeResult<bool>> {
        self.delete_request(&key.namespace, &key.name, uid, resource_version)
            .boxed()
    }
}

impl Steps for Cluster {
    fn metadata<'a>(&'a self, obj: &'a ObjectRef) -> BoxFuture<'a, KubeResult<Option<ObjectMeta>>> {
        Cluster::metadata(self, obj).boxed()
    }

    fn claim_lock<'a>(
        &'a self,
        call: &'a ActionCall,
        settings: &'a ExecSettings,
    ) -> BoxFuture<'a, Option<HeldLock>> {
        Cluster::claim_lock(self, call, settings).boxed()
    }

    fn run_action<'a>(
        &'a self,
        call: &'a ActionCall,
        settings: &'a ExecSettings,
        held: Option<HeldLock>,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Cluster::run_action_holding(self, call, settings, held).boxed()
    }
}

impl AuditTrail for AuditLog {
    fn confirmed<'a>(&'a self, uid: &'a str, phase: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        AuditLog::confirmed(self, uid, phase).boxed()
    }

    fn complete<'a>(
        &'a self,
        uid: &'a str,
        phase: &'a str,
        steps: usize,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        AuditLog::complete(self, uid, phase, steps).boxed()
    }

    fn record(&self, record: AuditRecord) -> BoxFuture<'_, StoreResult<()>> {
        AuditLog::record(self, record).boxed()
    }
}

/// In-process doubles of the ports, for unit tests of the logic written
/// against them: scripted answers first, then a plain in-memory behaviour.
#[cfg(test)]
pub(crate) mod doubles {
    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    use super::*;

    /// An API error with an HTTP status, as the API server answers.
    pub fn api_error(code: u16) -> kubernaut_cluster::Error {
        kubernaut_cluster::Error::Kube(kube_api_error(code))
    }

    pub fn kube_api_error(code: u16) -> kubernaut_api::kube::Error {
        kubernaut_api::kube::Error::Api(Box::new(kubernaut_api::kube::core::Status {
            code,
            message: format!("answered {code}"),
            ..Default::default()
        }))
    }

    /// Request `shop/r` (uid `u1`, resourceVersion `7`) on Deployment
    /// `shop/web`, with `status`.
    pub fn request(status: serde_json::Value) -> RemediationRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
            "metadata": {"name": "r", "namespace": "shop", "uid": "u1", "resourceVersion": "7"},
            "spec": {"fingerprint": "f", "signalName": "s", "severity": "warning",
                     "source": "generic", "instanceId": "i",
                     "target": {"kind": "Deployment", "namespace": "shop", "name": "web"},
                     "signalResource": {"kind": "Deployment", "namespace": "shop", "name": "web"},
                     "firingTime": "2026-11-22T03:00:00Z", "receivedTime": "2026-11-22T03:00:00Z",
                     "originalPayload": "{}"},
            "status": status
        }))
        .expect("the fixture is a valid request")
    }

    /// A 503 while `fails` is set, else what `ok` reads.
    fn unless_failing<T>(
        fails: &std::sync::atomic::AtomicBool,
        ok: impl FnOnce() -> T,
    ) -> KubeResult<T> {
        if fails.load(std::sync::atomic::Ordering::Relaxed) {
            Err(api_error(503))
        } else {
            Ok(ok())
        }
    }

    fn take<T>(script: &Mutex<VecDeque<T>>) -> Option<T> {
        script.lock().unwrap().pop_front()
    }

    #[derive(Default)]
    pub struct FakeRequests {
        pub objects: Mutex<HashMap<RequestKey, RemediationRequest>>,
        /// Answers of `apply_status` before it starts to succeed.
        pub apply_answers: Mutex<VecDeque<KubeResult<String>>>,
        /// Every status `apply_status` was asked to write, with its base.
        pub applied: Mutex<Vec<(RemediationRequestStatus, String)>>,
        pub get_fails: std::sync::atomic::AtomicBool,
        pub deleted: Mutex<Vec<RequestKey>>,
    }

    impl Requests for FakeRequests {
        fn get<'a>(
            &'a self,
            key: &'a RequestKey,
        ) -> BoxFuture<'a, KubeResult<Option<RemediationRequest>>> {
            let r = unless_failing(&self.get_fails, || {
                self.objects.lock().unwrap().get(key).cloned()
            });
            async move { r }.boxed()
        }

        fn apply_status<'a>(
            &'a self,
            _key: &'a RequestKey,
            status: &'a RemediationRequestStatus,
            resource_version: &'a str,
        ) -> BoxFuture<'a, KubeResult<String>> {
            let mut applied = self.applied.lock().unwrap();
            applied.push((status.clone(), resource_version.to_string()));
            let n = applied.len();
            drop(applied);
            let r = take(&self.apply_answers).unwrap_or_else(|| Ok(format!("rv{n}")));
            async move { r }.boxed()
        }

        fn delete<'a>(
            &'a self,
            key: &'a RequestKey,
            uid: &'a str,
            _resource_version: &'a str,
        ) -> BoxFuture<'a, KubeResult<bool>> {
            let mut objects = self.objects.lock().unwrap();
            let r = match objects.get(key) {
                Some(rr) if rr.metadata.uid.as_deref() == Some(uid) => {
                    objects.remove(key);
                    self.deleted.lock().unwrap().push(key.clone());
                    Ok(true)
                }
                Some(_) => Err(api_error(409)),
                None => Ok(false),
            };
            async move { r }.boxed()
        }
    }

    /// The audit trail as sets of stored final records and step ends.
    #[derive(Default)]
    pub struct FakeAudit {
        /// uid → (final phase, step ends stored).
        pub stored: Mutex<HashMap<String, (String, usize)>>,
        pub down: std::sync::atomic::AtomicBool,
        pub records: Mutex<Vec<AuditRecord>>,
    }

    impl FakeAudit {
        /// Closed while `down`, else what `found` says.
        fn answer(&self, found: impl FnOnce() -> bool) -> StoreResult<bool> {
            if self.down.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(kubernaut_store::Error::Closed);
            }
            Ok(found())
        }
    }

    impl AuditTrail for FakeAudit {
        fn confirmed<'a>(
            &'a self,
            uid: &'a str,
            phase: &'a str,
        ) -> BoxFuture<'a, StoreResult<bool>> {
            let r = self.answer(|| {
                self.stored
                    .lock()
                    .unwrap()
                    .get(uid)
                    .is_some_and(|(p, _)| p == phase)
            });
            async move { r }.boxed()
        }

        fn complete<'a>(
            &'a self,
            uid: &'a str,
            phase: &'a str,
            steps: usize,
        ) -> BoxFuture<'a, StoreResult<bool>> {
            let r = self.answer(|| {
                self.stored
                    .lock()
                    .unwrap()
                    .get(uid)
                    .is_some_and(|(p, n)| p == phase && *n >= steps)
            });
            async move { r }.boxed()
        }

        fn record(&self, record: AuditRecord) -> BoxFuture<'_, StoreResult<()>> {
            self.records.lock().unwrap().push(record);
            async { Ok(()) }.boxed()
        }
    }

    /// A cluster for workflow steps: objects' metadata, and the answers of
    /// `run_action` in order (success once they run out).
    #[derive(Default)]
    pub struct FakeSteps {
        pub metadata: Mutex<HashMap<ObjectRef, ObjectMeta>>,
        pub metadata_fails: std::sync::atomic::AtomicBool,
        pub answers: Mutex<VecDeque<Result<Outcome, ActionError>>>,
        pub runs: std::sync::atomic::AtomicUsize,
    }

    impl Steps for FakeSteps {
        fn metadata<'a>(
            &'a self,
            obj: &'a ObjectRef,
        ) -> BoxFuture<'a, KubeResult<Option<ObjectMeta>>> {
            let r = unless_failing(&self.metadata_fails, || {
                self.metadata.lock().unwrap().get(obj).cloned()
            });
            async move { r }.boxed()
        }

        /// No Leases here: steps claim with their action, as they do
        /// when another request holds the lock.
        fn claim_lock<'a>(
            &'a self,
            _call: &'a ActionCall,
            _settings: &'a ExecSettings,
        ) -> BoxFuture<'a, Option<HeldLock>> {
            async { None }.boxed()
        }

        fn run_action<'a>(
            &'a self,
            call: &'a ActionCall,
            _settings: &'a ExecSettings,
            _held: Option<HeldLock>,
        ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
            self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let r = take(&self.answers).unwrap_or_else(|| {
                Ok(Outcome {
                    dry_run: false,
                    changes: Vec::new(),
                    evidence: serde_json::Value::Null,
                    message: format!("{} ran", call.name()),
                })
            });
            async move { r }.boxed()
        }
    }
}

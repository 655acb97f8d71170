//! The gateway's intake over the Kubernetes API: resolve, scope-check,
//! deduplicate against existing requests (K-GW-5; Kubernetes is the source of
//! truth) and create or count.
//!
//! Request names are derived from the fingerprint and the signal instance, so
//! two concurrent deliveries of one signal collide on create and the loser is
//! counted as a duplicate instead of opening a second request.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kubernaut_api::{
    Deduplication, FINGERPRINT_LABEL, INSTANCE_LABEL, IngestOutcome, IntakeError, LABEL_DIGEST_LEN,
    MANAGED_LABEL, RejectReason, RemediationRequest, RemediationRequestSpec, Signal, SignalIntake,
    fingerprint,
};
use serde_json::json;

use crate::{Cluster, Error, Resolved, Result, bounded};

/// Optimistic-concurrency retries for the occurrence counter; each conflict
/// means someone else wrote in between, so progress is guaranteed overall.
/// A burst of re-deliveries contends on one object: a short jittered pause
/// between attempts spreads the writers out.
const MAX_COUNT_RETRIES: u32 = 30;

/// Whether a resolved target may be remediated (K-GW-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Opted in; says by which label.
    Managed(String),
    Protected,
    Unmanaged,
}

impl Cluster {
    pub async fn scope(&self, resolved: &Resolved) -> Result<Scope> {
        let ns = &resolved.target.namespace;
        if !ns.is_empty() && self.config().is_protected(ns) {
            return Ok(Scope::Protected);
        }
        let managed = |labels: &BTreeMap<String, String>| {
            labels.get(MANAGED_LABEL).is_some_and(|v| v == "true")
        };
        if let Some(i) = resolved.labels.iter().position(managed) {
            return Ok(Scope::Managed(format!("label on {}", resolved.chain[i])));
        }
        if !ns.is_empty()
            && self
                .namespace_labels(ns)
                .await?
                .as_ref()
                .is_some_and(managed)
        {
            return Ok(Scope::Managed(format!("label on Namespace/{ns}")));
        }
        Ok(Scope::Unmanaged)
    }
}

#[derive(Clone)]
pub struct KubeIntake {
    cluster: Cluster,
}

impl KubeIntake {
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }

    fn request_namespace(&self, resolved: &Resolved) -> String {
        if resolved.target.namespace.is_empty() {
            self.cluster.config().cluster_scoped_namespace.clone()
        } else {
            resolved.target.namespace.clone()
        }
    }

    async fn ingest_inner(&self, signal: Signal) -> Result<IngestOutcome> {
        let instance = signal.instance_id();
        // A re-delivery of a signal instance is a duplicate whatever happened
        // since (K-GW-5), even if the remediation already removed its pod, so
        // it is looked up before the resource is resolved. Requests live in
        // their target's namespace, which is the signal's for namespaced kinds.
        let home = if signal.resource.namespace.is_empty() {
            self.cluster.config().cluster_scoped_namespace.clone()
        } else {
            signal.resource.namespace.clone()
        };
        let home_api: Api<RemediationRequest> =
            Api::namespaced(self.cluster.client().clone(), &home);
        if let Some(existing) = find_instance(&home_api, &instance).await? {
            let name = existing.metadata.name.clone().unwrap_or_default();
            let count = count_occurrence(&home_api, &name, signal.received_time).await?;
            return Ok(IngestOutcome::Duplicate {
                request: name,
                namespace: home,
                fingerprint: existing.spec.fingerprint,
                occurrence_count: count,
            });
        }
        let Some(resolved) = self.cluster.resolve(&signal.resource).await? else {
            return Ok(IngestOutcome::Rejected {
                reason: RejectReason::TargetNotFound,
                detail: format!("{} does not exist", signal.resource),
            });
        };
        match self.cluster.scope(&resolved).await? {
            Scope::Managed(_) => {}
            Scope::Protected => {
                return Ok(IngestOutcome::Rejected {
                    reason: RejectReason::ProtectedNamespace,
                    detail: format!("namespace {} is protected", resolved.target.namespace),
                });
            }
            Scope::Unmanaged => {
                return Ok(IngestOutcome::Rejected {
                    reason: RejectReason::OutOfScope,
                    detail: format!(
                        "{} and its namespace are not labelled {MANAGED_LABEL}=true",
                        resolved.target
                    ),
                });
            }
        }
        let fp = fingerprint(
            self.cluster.config().cluster_name.as_deref(),
            &resolved.target,
        );
        let ns = self.request_namespace(&resolved);
        let api: Api<RemediationRequest> = Api::namespaced(self.cluster.client().clone(), &ns);

        // Two rounds: a lost create race sends us back to find the winner.
        for _ in 0..2 {
            if let Some(existing) = find_open_or_same(&api, &fp, &instance).await? {
                let name = existing.metadata.name.clone().unwrap_or_default();
                let count = count_occurrence(&api, &name, signal.received_time).await?;
                return Ok(IngestOutcome::Duplicate {
                    request: name,
                    namespace: ns,
                    fingerprint: fp,
                    occurrence_count: count,
                });
            }
            let rr = build_request(&signal, &resolved, &fp, &instance, &ns);
            let name = rr.metadata.name.clone().unwrap_or_default();
            match bounded(api.create(&PostParams::default(), &rr)).await {
                Ok(_) => {
                    set_first_occurrence(&api, &name, signal.received_time).await?;
                    tracing::info!(request = %name, namespace = %ns, target = %resolved.target, signal = %signal.name, "request created");
                    return Ok(IngestOutcome::Created {
                        request: name,
                        namespace: ns,
                        fingerprint: fp,
                    });
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Timeout(crate::API_TIMEOUT))
    }
}

#[async_trait]
impl SignalIntake for KubeIntake {
    async fn ingest(&self, signal: Signal) -> Result<IngestOutcome, IntakeError> {
        self.ingest_inner(signal).await.map_err(|e| match e {
            e if e.is_conflict() => IntakeError::Conflict(e.to_string()),
            e => IntakeError::Unavailable(e.to_string()),
        })
    }
}

async fn find_instance(
    api: &Api<RemediationRequest>,
    instance: &str,
) -> Result<Option<RemediationRequest>> {
    let lp = ListParams::default().labels(&format!(
        "{INSTANCE_LABEL}={}",
        &instance[..LABEL_DIGEST_LEN]
    ));
    Ok(bounded(api.list(&lp))
        .await?
        .items
        .into_iter()
        .find(|r| r.spec.instance_id == instance))
}

/// A request for this fingerprint that is either still open or was opened by
/// this very signal instance (K-GW-5); the same instance wins.
async fn find_open_or_same(
    api: &Api<RemediationRequest>,
    fp: &str,
    instance: &str,
) -> Result<Option<RemediationRequest>> {
    let lp =
        ListParams::default().labels(&format!("{FINGERPRINT_LABEL}={}", &fp[..LABEL_DIGEST_LEN]));
    let list = bounded(api.list(&lp)).await?;
    let mine: Vec<_> = list
        .items
        .into_iter()
        .filter(|r| r.spec.fingerprint == fp)
        .collect();
    if let Some(same) = mine.iter().find(|r| r.spec.instance_id == instance) {
        return Ok(Some(same.clone()));
    }
    Ok(mine.into_iter().find(|r| !r.phase().is_terminal()))
}

fn build_request(
    signal: &Signal,
    resolved: &Resolved,
    fp: &str,
    instance: &str,
    ns: &str,
) -> RemediationRequest {
    let mut labels = BTreeMap::new();
    labels.insert(
        FINGERPRINT_LABEL.to_string(),
        fp[..LABEL_DIGEST_LEN].to_string(),
    );
    labels.insert(
        INSTANCE_LABEL.to_string(),
        instance[..LABEL_DIGEST_LEN].to_string(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        "kubernaut".to_string(),
    );
    let spec = RemediationRequestSpec {
        fingerprint: fp.to_string(),
        signal_name: signal.name.clone(),
        severity: signal.severity.clone(),
        source: signal.source,
        instance_id: instance.to_string(),
        target: resolved.target.clone(),
        signal_resource: signal.resource.clone(),
        owner_chain: resolved.chain.clone(),
        labels: signal.labels.clone(),
        annotations: signal.annotations.clone(),
        firing_time: Time(signal.firing_time),
        received_time: Time(signal.received_time),
        original_payload: signal.raw.clone(),
    };
    RemediationRequest {
        metadata: ObjectMeta {
            name: Some(request_name(&signal.name, fp, instance)),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// `<signal>-<fp8>-<instance8>`: readable, unique per incident instance, and
/// deterministic so that concurrent creates of one instance collide.
pub fn request_name(signal: &str, fp: &str, instance: &str) -> String {
    let mut prefix: String = signal
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    prefix.truncate(40);
    let prefix = prefix.trim_matches('-');
    let prefix = if prefix.is_empty() { "signal" } else { prefix };
    format!("{prefix}-{}-{}", &fp[..8], &instance[..8])
}

async fn set_first_occurrence(
    api: &Api<RemediationRequest>,
    name: &str,
    at: Timestamp,
) -> Result<()> {
    let dedup = Deduplication {
        occurrence_count: 1,
        first_seen_at: Time(at),
        last_seen_at: Time(at),
    };
    let patch = json!({ "status": { "deduplication": dedup } });
    bounded(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))).await?;
    Ok(())
}

/// Increments `status.deduplication.occurrenceCount` with optimistic
/// concurrency (the patch carries the resourceVersion it was computed from).
async fn count_occurrence(api: &Api<RemediationRequest>, name: &str, at: Timestamp) -> Result<i64> {
    let mut last_err = None;
    for attempt in 0..MAX_COUNT_RETRIES {
        if attempt > 0 {
            let jitter = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() % 20);
            tokio::time::sleep(std::time::Duration::from_millis(u64::from(
                attempt.min(10) * 5 + jitter,
            )))
            .await;
        }
        let rr = bounded(api.get_status(name)).await?;
        let prev = rr.status.as_ref().and_then(|s| s.deduplication.clone());
        let first = prev
            .as_ref()
            .map(|d| d.first_seen_at.clone())
            .unwrap_or_else(|| rr.spec.received_time.clone());
        // A request whose first count was never written has been seen once.
        let count = prev.as_ref().map_or(1, |d| d.occurrence_count) + 1;
        let dedup = Deduplication {
            occurrence_count: count,
            first_seen_at: first,
            last_seen_at: Time(at),
        };
        let patch = json!({
            "metadata": { "resourceVersion": rr.metadata.resource_version },
            "status": { "deduplication": dedup },
        });
        match bounded(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))).await
        {
            Ok(_) => return Ok(count),
            Err(e) if e.is_conflict() => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or(Error::Timeout(crate::API_TIMEOUT)))
}

#[cfg(test)]
mod tests {
    use super::request_name;

    #[test]
    fn request_names_are_dns_safe_and_bounded() {
        let fp = "3e1358e2c5121b674e7543f385ca3ff7d99cac5b91409d4af44a88248b4f3082";
        let inst = "a1b2c3d4e5f6";
        assert_eq!(
            request_name("KubePodCrashLooping", fp, inst),
            "kubepodcrashlooping-3e1358e2-a1b2c3d4"
        );
        assert_eq!(
            request_name("CPU > 90%", fp, inst),
            "cpu---90-3e1358e2-a1b2c3d4"
        );
        assert_eq!(request_name("!!!", fp, inst), "signal-3e1358e2-a1b2c3d4");
        assert!(request_name(&"X".repeat(300), fp, inst).len() <= 58);
    }
}

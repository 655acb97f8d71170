//! Requests as the gateway's intake sees them: scope checks (K-GW-8),
//! lookups by signal instance and fingerprint (K-GW-5; Kubernetes is the
//! source of truth), and creation.
//!
//! Request names are derived from the fingerprint and the signal instance, so
//! two concurrent deliveries of one signal collide on create and the loser
//! finds the winner instead of opening a second request.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kubernaut_api::{
    Deduplication, FINGERPRINT_LABEL, INSTANCE_LABEL, LABEL_DIGEST_LEN, MANAGED_LABEL, ObjectRef,
    RemediationRequest, RemediationRequestSpec, RequestKey, Signal, SignalResolution, StormSpec,
};
use serde_json::json;

use crate::{Cluster, Resolved, Result, bounded};

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

/// What [`Cluster::create_request`] did.
#[derive(Debug)]
pub enum Created {
    Created(RequestKey),
    /// A request of that name exists already: a concurrent creator won.
    AlreadyExists(RequestKey),
}

impl Cluster {
    /// Where requests for a resource live: its namespace, or the configured
    /// one for cluster-scoped kinds.
    pub fn request_namespace(&self, resource: &ObjectRef) -> String {
        if resource.namespace.is_empty() {
            self.config().cluster_scoped_namespace.clone()
        } else {
            resource.namespace.clone()
        }
    }

    fn requests(&self, namespace: &str) -> Api<RemediationRequest> {
        Api::namespaced(self.client().clone(), namespace)
    }

    /// The request created by this signal instance, if any.
    pub async fn find_instance(
        &self,
        namespace: &str,
        instance: &str,
    ) -> Result<Option<RemediationRequest>> {
        find_instance(&self.requests(namespace), instance).await
    }

    /// The request this signal counts on (K-GW-5): one that this very
    /// instance created or was counted on, else an open one of the fingerprint.
    pub async fn find_open_or_same(
        &self,
        namespace: &str,
        fingerprint: &str,
        instance: &str,
    ) -> Result<Option<RemediationRequest>> {
        find_open_or_same(&self.requests(namespace), fingerprint, instance).await
    }

    /// The request a resolution of `signal_name` belongs to: the one of the
    /// fingerprint that this signal instance created or was counted on,
    /// whatever its state; else the open one that a signal of that name
    /// opened. The second case serves sources whose resolution is a new
    /// message with its own identity (a CloudWatch OK has a new MessageId).
    pub async fn find_resolvable(
        &self,
        namespace: &str,
        fingerprint: &str,
        instance: &str,
        signal_name: &str,
    ) -> Result<Option<RemediationRequest>> {
        let all = by_fingerprint(&self.requests(namespace), fingerprint).await?;
        if let Some(seen) = all.iter().find(|r| has_seen(r, instance)) {
            return Ok(Some(seen.clone()));
        }
        Ok(all
            .into_iter()
            .find(|r| !r.phase().is_terminal() && r.spec.signal_name == signal_name))
    }

    /// Records that the source resolved a signal of the request (K-GW-2).
    /// `false` when the request no longer exists.
    pub async fn record_resolution(
        &self,
        request: &RequestKey,
        at: Timestamp,
        instance: &str,
    ) -> Result<bool> {
        let resolution = SignalResolution {
            resolved_at: Time(at),
            instance_id: instance.to_string(),
        };
        let patch = json!({ "status": { "signalResolution": resolution } });
        let api = self.requests(&request.namespace);
        match bounded(api.patch_status(
            &request.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ))
        .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates the request for a resolved, in-scope signal and records its
    /// first occurrence. A storm request lives in the storm's namespace and
    /// starts its storm status with the signal's target (the first of
    /// `resolved.chain`).
    pub async fn create_request(
        &self,
        signal: &Signal,
        resolved: &Resolved,
        fingerprint: &str,
        storm: Option<&StormSpec>,
    ) -> Result<Created> {
        let ns = match storm {
            Some(s) => s.namespace.clone(),
            None => self.request_namespace(&resolved.target),
        };
        let api = self.requests(&ns);
        let mut rr = build_request(signal, resolved, fingerprint, &signal.instance_id(), &ns);
        if let Some(s) = storm {
            rr.spec.storm = Some(s.clone());
            rr.metadata.name = Some(request_name(
                &format!("storm-{}", signal.name),
                fingerprint,
                &signal.instance_id(),
            ));
        }
        let name = rr.metadata.name.clone().unwrap_or_default();
        let created = match bounded(api.create(&PostParams::default(), &rr)).await {
            Ok(created) => created,
            Err(e) if e.is_conflict() => {
                return Ok(Created::AlreadyExists(RequestKey::new(ns, name)));
            }
            Err(e) => return Err(e),
        };
        let first_target = storm.and(resolved.chain.first());
        set_first_occurrence(
            &api,
            created,
            signal.received_time,
            &signal.instance_id(),
            first_target,
        )
        .await?;
        tracing::info!(request = %name, namespace = %ns, target = %resolved.target, signal = %signal.name, "request created");
        Ok(Created::Created(RequestKey::new(ns, name)))
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

/// Every request of a fingerprint (the label holds a prefix; the spec decides).
async fn by_fingerprint(
    api: &Api<RemediationRequest>,
    fp: &str,
) -> Result<Vec<RemediationRequest>> {
    let lp =
        ListParams::default().labels(&format!("{FINGERPRINT_LABEL}={}", &fp[..LABEL_DIGEST_LEN]));
    let list = bounded(api.list(&lp)).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|r| r.spec.fingerprint == fp)
        .collect())
}

/// Whether this signal instance created or was counted on the request.
fn has_seen(r: &RemediationRequest, instance: &str) -> bool {
    r.spec.instance_id == instance
        || r.status
            .as_ref()
            .and_then(|s| s.deduplication.as_ref())
            .is_some_and(|d| d.has_seen(instance))
}

/// A request for this fingerprint that is either still open or was opened by
/// (or counted) this very signal instance (K-GW-5); the same instance wins.
async fn find_open_or_same(
    api: &Api<RemediationRequest>,
    fp: &str,
    instance: &str,
) -> Result<Option<RemediationRequest>> {
    let mine = by_fingerprint(api, fp).await?;
    if let Some(same) = mine.iter().find(|r| has_seen(r, instance)) {
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
        // The 1.20 API server stores "" in a CRD's string map as null and then
        // rejects it; an empty label says nothing anyway.
        labels: non_empty(&signal.labels),
        annotations: non_empty(&signal.annotations),
        firing_time: Time(signal.firing_time),
        received_time: Time(signal.received_time),
        original_payload: signal.raw.clone(),
        storm: None,
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

fn non_empty(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
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

/// Records the creating signal in a new request's status. Duplicates may
/// already have been counted on it (without Redis, a replica finds the
/// request as soon as it exists): their writers count a missing
/// `deduplication` as this first occurrence, so it is only written when
/// still missing, and the write carries the `resourceVersion` read so that
/// it never overwrites their counts.
async fn set_first_occurrence(
    api: &Api<RemediationRequest>,
    created: RemediationRequest,
    at: Timestamp,
    instance: &str,
    storm_target: Option<&ObjectRef>,
) -> Result<()> {
    let name = created.metadata.name.clone().unwrap_or_default();
    let mut current = created;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let status = current.status.clone().unwrap_or_default();
        let mut patch = json!({
            "metadata": { "resourceVersion": current.metadata.resource_version },
            "status": {},
        });
        if status.deduplication.is_none() {
            let mut dedup = Deduplication {
                occurrence_count: 1,
                first_seen_at: Time(at),
                last_seen_at: Time(at),
                recent_instances: Vec::new(),
            };
            dedup.remember(instance);
            patch["status"]["deduplication"] = json!(dedup);
        }
        if let Some(t) = storm_target {
            let mut storm = status.storm.unwrap_or_default();
            storm.add(t);
            patch["status"]["storm"] = json!(storm);
        }
        if patch["status"].as_object().is_some_and(|s| s.is_empty()) {
            return Ok(());
        }
        match bounded(api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))).await
        {
            Ok(_) => return Ok(()),
            // Counters keep writing; each conflict means one of them won.
            Err(e) if e.is_conflict() && attempts < 10 => {
                current = bounded(api.get_status(&name)).await?;
            }
            Err(e) => return Err(e),
        }
    }
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

//! Requests as the gateway's intake writes them: scope checks (K-GW-8),
//! creation and resolutions. Lookups are the watch-fed
//! [`KnownRequests`](crate::KnownRequests)'.
//!
//! Request names are derived from the fingerprint and the request's place
//! in the fingerprint's sequence, so concurrent creators of one place
//! collide on create and the losers are told what won (K-GW-5).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kubernaut_api::{
    FINGERPRINT_LABEL, INSTANCE_LABEL, LABEL_DIGEST_LEN, MANAGED_LABEL, ObjectRef,
    RemediationRequest, RemediationRequestSpec, RequestKey, SEQUENCE_LABEL, Signal,
    SignalResolution, StormSpec,
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
    /// The name was taken: by a concurrent creator of the same place in the
    /// fingerprint's sequence, or by an earlier request the caller's view
    /// had not seen yet. This is what holds it now.
    Taken(Box<RemediationRequest>),
    /// The name was taken, and freed again before it could be read.
    Vanished,
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

    /// Creates the request for a resolved, in-scope signal as place `seq` of
    /// its fingerprint's sequence, under the name that place determines, so
    /// that every creator of the same place collides and exactly one wins
    /// (K-GW-5). One API call: the first occurrence is the spec's own
    /// (`status.deduplication` starts with the first duplicate). A storm
    /// request lives in the storm's namespace and starts its storm status
    /// with the signal's target (the first of `resolved.chain`).
    pub async fn create_request(
        &self,
        signal: &Signal,
        resolved: &Resolved,
        fingerprint: &str,
        storm: Option<&StormSpec>,
        seq: u64,
    ) -> Result<Created> {
        let ns = match storm {
            Some(s) => s.namespace.clone(),
            None => self.request_namespace(&resolved.target),
        };
        let api = self.requests(&ns);
        let prefix = match storm {
            Some(_) => format!("storm-{}", signal.name),
            None => format!("{}-{}", resolved.target.kind, resolved.target.name),
        };
        let mut rr = build_request(signal, resolved, fingerprint, &ns);
        rr.metadata.name = Some(request_name(&prefix, fingerprint, seq));
        rr.metadata
            .labels
            .get_or_insert_default()
            .insert(SEQUENCE_LABEL.to_string(), seq.to_string());
        rr.spec.storm = storm.cloned();
        let name = rr.metadata.name.clone().unwrap_or_default();
        let created = match bounded(api.create(&PostParams::default(), &rr)).await {
            Ok(created) => created,
            Err(e) if e.is_conflict() => {
                return match bounded(api.get(&name)).await {
                    Ok(taken) => Ok(Created::Taken(Box::new(taken))),
                    Err(e) if e.is_not_found() => Ok(Created::Vanished),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        if let Some(first) = storm.and(resolved.chain.first()) {
            set_storm_target(&api, created, first).await?;
        }
        tracing::info!(request = %name, namespace = %ns, target = %resolved.target, signal = %signal.name, "request created");
        Ok(Created::Created(RequestKey::new(ns, name)))
    }
}

fn build_request(signal: &Signal, resolved: &Resolved, fp: &str, ns: &str) -> RemediationRequest {
    let instance = signal.instance_id();
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
        instance_id: instance.clone(),
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

/// `<prefix>-<fp10>-<seq>`: readable (the prefix names the target, or the
/// storm), and determined by the fingerprint and the place in its sequence,
/// so that concurrent creators of one place collide. At most 63 characters.
pub fn request_name(prefix: &str, fp: &str, seq: u64) -> String {
    let mut prefix: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    prefix.truncate(30);
    let prefix = prefix.trim_matches('-');
    let prefix = if prefix.is_empty() { "signal" } else { prefix };
    format!("{prefix}-{}-{seq}", &fp[..10])
}

/// Starts a new storm request's status with the target of the signal that
/// opened it. Counters may already have written (they find the request as
/// soon as it exists), so the write carries the `resourceVersion` read and
/// is retried on a conflict rather than overwriting theirs.
async fn set_storm_target(
    api: &Api<RemediationRequest>,
    created: RemediationRequest,
    target: &ObjectRef,
) -> Result<()> {
    let name = created.metadata.name.clone().unwrap_or_default();
    let mut current = created;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut storm = current
            .status
            .as_ref()
            .and_then(|s| s.storm.clone())
            .unwrap_or_default();
        storm.add(target);
        let patch = json!({
            "metadata": { "resourceVersion": current.metadata.resource_version },
            "status": { "storm": storm },
        });
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
        assert_eq!(
            request_name("Deployment-web", fp, 1),
            "deployment-web-3e1358e2c5-1"
        );
        assert_eq!(
            request_name("storm-CPU > 90%", fp, 12),
            "storm-cpu---90-3e1358e2c5-12"
        );
        assert_eq!(request_name("!!!", fp, 3), "signal-3e1358e2c5-3");
        assert!(request_name(&"X".repeat(300), fp, u64::MAX).len() <= 63);
    }
}

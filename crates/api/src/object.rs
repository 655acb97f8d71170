//! How objects are named across the workspace: a Kubernetes object
//! ([`ObjectRef`]) and a RemediationRequest ([`RequestKey`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub kind: String,
    /// Empty for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(transform = no_schema_default)]
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Where one request lives; the Redis index maps fingerprints and signal
/// instances to these.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    pub namespace: String,
    pub name: String,
}

impl RequestKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses the `namespace/name` form written by [`Display`](std::fmt::Display).
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self::new(ns, name))
    }
}

impl std::fmt::Display for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Namespace is optional: the generated schema must not give it a default.
fn no_schema_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}

/// Whether a request living in namespace `home` may be about `spec`'s
/// target and signal resource: a namespaced object only from its own
/// namespace, a Namespace (a storm's target) only from itself, a
/// cluster-scoped object only from the configured `cluster_home`.
pub fn owned_by(
    home: &str,
    spec: &crate::RemediationRequestSpec,
    cluster_home: &str,
) -> Result<(), String> {
    let home_of = |o: &ObjectRef| -> String {
        if o.kind == "Namespace" {
            o.name.clone()
        } else if o.namespace.is_empty() {
            cluster_home.to_string()
        } else {
            o.namespace.clone()
        }
    };
    for o in [&spec.target, &spec.signal_resource] {
        let want = home_of(o);
        if want != home {
            return Err(format!(
                "{o} may only be remediated by a request in namespace {want:?}, not {home:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod ownership_tests {
    use super::*;
    use crate::RemediationRequestSpec;

    fn spec(target: ObjectRef, signal: ObjectRef) -> RemediationRequestSpec {
        let mut s: RemediationRequestSpec = serde_json::from_value(serde_json::json!({
            "fingerprint": "f", "signalName": "s", "severity": "warning",
            "source": "generic", "instanceId": "i",
            "target": {"kind": "Deployment", "namespace": "a", "name": "web"},
            "signalResource": {"kind": "Deployment", "namespace": "a", "name": "web"},
            "firingTime": "2026-11-22T03:00:00Z", "receivedTime": "2026-11-22T03:00:00Z",
            "originalPayload": "{}"
        }))
        .unwrap();
        s.target = target;
        s.signal_resource = signal;
        s
    }

    #[test]
    fn a_request_owns_only_the_objects_of_its_own_namespace() {
        let web = |ns: &str| ObjectRef::new("Deployment", ns, "web");
        let pod = |ns: &str| ObjectRef::new("Pod", ns, "web-1");
        let node = ObjectRef::new("Node", "", "n1");
        let storm = ObjectRef::new("Namespace", "", "a");
        assert!(owned_by("a", &spec(web("a"), pod("a")), "kubernaut").is_ok());
        let e = owned_by("a", &spec(web("b"), web("b")), "kubernaut").unwrap_err();
        assert!(e.contains("namespace \"b\", not \"a\""), "{e}");
        assert!(
            owned_by("a", &spec(web("a"), pod("b")), "kubernaut").is_err(),
            "the signal's resource too"
        );
        assert!(owned_by("kubernaut", &spec(node.clone(), node.clone()), "kubernaut").is_ok());
        assert!(owned_by("a", &spec(node.clone(), node), "kubernaut").is_err());
        assert!(owned_by("a", &spec(storm.clone(), pod("a")), "kubernaut").is_ok());
        assert!(owned_by("b", &spec(storm, pod("a")), "kubernaut").is_err());
    }
}

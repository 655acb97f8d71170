//! Processing (K-RR-3): the request's ownership of its target checked
//! (anyone allowed to create requests in a namespace could otherwise have
//! Kubernaut act elsewhere with its own rights), the target's scope
//! re-checked (defence in depth), the environment from the namespace
//! label, and the priority from environment × severity.

use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{
    ENVIRONMENT_LABEL, ObjectRef, Phase, ProcessingStatus, RemediationRequestSpec,
};
use kubernaut_cluster::{Cluster, Scope};

use super::{Next, Stage, StageResult, Sup};
use crate::metrics::ActorKind;
use crate::supervisor::transitions::Reason;
use crate::supervisor::transitions::{Cond, Transition, Truth, priority, set_condition};

pub struct Processing;

pub enum Processed {
    InScope(ProcessingStatus),
    OutOfScope(String),
}

impl Stage for Processing {
    fn next(&self, sup: &mut Sup) -> Next {
        let (cluster, spec) = (sup.ctx.cluster.clone(), sup.spec.clone());
        let home = sup.namespace.clone();
        Next::Run(
            ActorKind::processing,
            Sup::work(move || {
                let (cluster, spec, home) = (cluster.clone(), spec.clone(), home.clone());
                async move { StageResult::Processed(process(&cluster, &home, &spec).await) }
            }),
        )
    }

    fn done(&self, sup: &mut Sup, result: StageResult) -> Next {
        let StageResult::Processed(result) = result else {
            return Next::Wait;
        };
        let now = Timestamp::now();
        match result {
            Ok(Processed::InScope(p)) => {
                sup.observe_stage("processing");
                let msg = format!("environment {}, priority {}", p.environment, p.priority);
                Next::commit(move |s| {
                    s.processing = Some(p);
                    set_condition(s, Cond::Processed, Truth::True, "Enriched", now);
                    Some(Transition::new(Phase::Analyzing, Reason::Enriched, msg))
                })
            }
            Ok(Processed::OutOfScope(why)) => Next::commit(move |s| {
                set_condition(s, Cond::Processed, Truth::False, "OutOfScope", now);
                Some(Transition::new(Phase::Skipped, Reason::OutOfScope, why))
            }),
            Err(e) => Next::Retry(e.to_string()),
        }
    }
}

/// Whether a request living in namespace `home` may be about `spec`'s
/// target and signal resource: a namespaced object only from its own
/// namespace, a Namespace (a storm's target) only from itself, a
/// cluster-scoped object only from the configured `cluster_home`.
pub fn owned_by(
    home: &str,
    spec: &RemediationRequestSpec,
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

async fn process(
    cluster: &Cluster,
    home: &str,
    spec: &RemediationRequestSpec,
) -> Result<Processed, kubernaut_cluster::Error> {
    if let Err(why) = owned_by(home, spec, &cluster.config().cluster_scoped_namespace) {
        return Ok(Processed::OutOfScope(why));
    }
    let resolved = cluster.resolve(&spec.target).await?;
    let Some(resolved) = resolved else {
        return Ok(Processed::OutOfScope(format!(
            "{} no longer exists",
            spec.target
        )));
    };
    let scope = match cluster.scope(&resolved).await? {
        Scope::Managed(why) => why,
        Scope::Protected => {
            return Ok(Processed::OutOfScope(format!(
                "namespace {} is protected",
                spec.target.namespace
            )));
        }
        Scope::Unmanaged => {
            return Ok(Processed::OutOfScope(format!(
                "{} is not opted in",
                spec.target
            )));
        }
    };
    let ns_labels = if spec.target.namespace.is_empty() {
        None
    } else {
        cluster.namespace_labels(&spec.target.namespace).await?
    };
    let environment = ns_labels
        .and_then(|l| l.get(ENVIRONMENT_LABEL).cloned())
        .unwrap_or_else(|| "unknown".into());
    let priority = priority(&environment, &spec.severity).into();
    Ok(Processed::InScope(ProcessingStatus {
        environment,
        priority,
        scope,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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

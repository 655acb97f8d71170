//! Processing (K-RR-3): the request's ownership of its target checked
//! (anyone allowed to create requests in a namespace could otherwise have
//! Kubernaut act elsewhere with its own rights), the target's scope
//! re-checked (defence in depth), the environment from the namespace
//! label, and the priority from environment × severity.

use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{ENVIRONMENT_LABEL, Phase, ProcessingStatus, RemediationRequestSpec};
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

async fn process(
    cluster: &Cluster,
    home: &str,
    spec: &RemediationRequestSpec,
) -> Result<Processed, kubernaut_cluster::Error> {
    if let Err(why) =
        kubernaut_api::object::owned_by(home, spec, &cluster.config().cluster_scoped_namespace)
    {
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

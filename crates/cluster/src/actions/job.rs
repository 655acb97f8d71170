//! run_job: a Job made from a template in the configuration
//! (`executor.jobTemplates`), never from parameters, so that an analysis
//! can pick a vetted Job but never write one.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use kube::Api;
use kube::api::PostParams;
use kubernaut_api::ObjectRef;
use kubernaut_api::signal::sha256_hex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use futures::future::BoxFuture;

use super::{
    Action, ActionError, Catalogued, Change, ExecSettings, Kind, Ran, Risk, RunCx, dry_run_refused,
    to_value,
};
use crate::{Cluster, FIELD_MANAGER, bounded};

/// Label naming the template a Job was made from.
const JOB_TEMPLATE: &str = "kubernaut.io/job-template";
/// Label naming the request (lock holder) that made a Job.
const MADE_BY: &str = "kubernaut.io/request";

/// Parameters of run_job.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunJob {
    pub namespace: String,
    /// The name of a template in `executor.jobTemplates`.
    pub template: String,
}

impl RunJob {
    /// One Job per request and template: running the step again finds the
    /// Job it made instead of making a second one.
    pub fn job_name(&self, holder: &str) -> String {
        let template: String = self
            .template
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(40)
            .collect::<String>()
            .to_ascii_lowercase();
        let hash = &sha256_hex(&format!("{holder}\n{}", self.template))[..8];
        format!("kubernaut-{template}-{hash}")
    }
}

/// The Job run_job creates (before defaults the API server adds).
pub(super) fn job(
    r: &RunJob,
    templates: &BTreeMap<String, JobSpec>,
    ttl_seconds: i32,
    holder: &str,
) -> Result<Job, ActionError> {
    let Some(spec) = templates.get(&r.template) else {
        let known: Vec<&str> = templates.keys().map(String::as_str).collect();
        return Err(ActionError::Refused(format!(
            "no job template {:?} (configured: {})",
            r.template,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    };
    let mut spec = spec.clone();
    // Finished Jobs of remediations clean themselves up.
    spec.ttl_seconds_after_finished.get_or_insert(ttl_seconds);
    let mut labels = BTreeMap::from([(JOB_TEMPLATE.to_string(), r.template.clone())]);
    if holder.len() <= 63 {
        labels.insert(MADE_BY.into(), holder.into());
    }
    Ok(Job {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(r.job_name(holder)),
            namespace: Some(r.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}

impl Cluster {
    pub(super) async fn run_job(
        &self,
        r: &RunJob,
        settings: &ExecSettings,
        dry_run: bool,
    ) -> Result<Option<Change>, ActionError> {
        let job = job(
            r,
            &settings.job_templates,
            settings.job_ttl_seconds,
            &settings.holder,
        )?;
        let name = job.metadata.name.clone().unwrap_or_default();
        let object = ObjectRef::new("Job", &r.namespace, &name);
        let api: Api<Job> = Api::namespaced(self.client().clone(), &r.namespace);
        let params = |dry_run| PostParams {
            dry_run,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        let created = match bounded(api.create(&params(true), &job)).await {
            Ok(preview) => preview,
            // Made by an earlier run of this request's step.
            Err(e) if e.is_conflict() => return Ok(None),
            Err(e) => return Err(dry_run_refused(e)),
        };
        let after = if dry_run {
            created
        } else {
            match bounded(api.create(&params(false), &job)).await {
                Ok(made) => made,
                Err(e) if e.is_conflict() => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Some(Change {
            object,
            before: Value::Null,
            after: to_value(&after)?,
        }))
    }
}

impl Catalogued for RunJob {
    const KIND: Kind = Kind::new::<Self>(
        "run_job",
        Risk::Medium,
        "Create a Job from a template in executor.jobTemplates (one per request and template, removed after its TTL).",
        &[],
    )
    .creates();
}

impl Action for RunJob {
    fn target(&self, holder: &str) -> Option<ObjectRef> {
        Some(ObjectRef::new(
            "Job",
            &self.namespace,
            &self.job_name(holder),
        ))
    }

    fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
        Box::pin(async move {
            let change = cx.cluster.run_job(self, cx.settings, cx.dry_run).await?;
            Ok(Ran::Changed(change))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn templates() -> BTreeMap<String, JobSpec> {
        serde_json::from_value(json!({"flush-cache": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "flush", "image": "redis:7", "args": ["FLUSHALL"]}]}}}}))
        .unwrap()
    }

    #[test]
    fn jobs_come_from_configured_templates_with_a_ttl_and_a_stable_name() {
        let r = RunJob {
            namespace: "shop".into(),
            template: "flush-cache".into(),
        };
        let j = job(&r, &templates(), 3600, "rr-1").unwrap();
        let name = j.metadata.name.clone().unwrap();
        assert!(name.starts_with("kubernaut-flush-cache-"), "{name}");
        assert_eq!(
            name,
            r.job_name("rr-1"),
            "the same request makes the same Job"
        );
        assert_ne!(name, r.job_name("rr-2"));
        assert_eq!(
            j.spec.as_ref().unwrap().ttl_seconds_after_finished,
            Some(3600)
        );
        assert_eq!(
            j.metadata.labels.as_ref().unwrap()[JOB_TEMPLATE],
            "flush-cache"
        );
        assert_eq!(j.metadata.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn an_unknown_template_is_refused_naming_the_known_ones() {
        let r = RunJob {
            namespace: "shop".into(),
            template: "rm-rf".into(),
        };
        let e = job(&r, &templates(), 3600, "rr-1").unwrap_err();
        assert!(e.to_string().contains("configured: flush-cache"), "{e}");
    }
}

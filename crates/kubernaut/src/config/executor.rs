//! `executor:`: action bounds, dry-run modes, locks and Job templates.

use super::*;

/// How actions run (K-EX-3). `controller.dryRun` is the global dry-run.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Executor {
    /// Only server-side dry runs in these namespaces.
    #[serde(default)]
    pub dry_run_namespaces: Vec<String>,
    /// A workflow step's attempt timeout when the step gives none.
    pub step_timeout_seconds: u64,
    /// A per-target lock outlives a controller that died by this much.
    pub lock_ttl_seconds: u64,
    pub bounds: ExecutorBounds,
    /// What run_job may create: name → Job spec.
    #[serde(default)]
    pub job_templates: std::collections::BTreeMap<String, serde_json::Value>,
    /// For run_job's Jobs whose template sets none.
    pub job_ttl_seconds_after_finished: i32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutorBounds {
    pub max_replicas: i32,
    pub max_increase_factor: f64,
    pub max_cpu: String,
    pub max_memory: String,
    pub max_storage: String,
}

impl Executor {
    /// The executor's settings (the lock holder is set per request).
    pub fn settings(&self, dry_run: bool) -> anyhow::Result<kubernaut_cluster::ExecSettings> {
        let quantity = |key: &str, v: &str| {
            v.parse::<kubernaut_cluster::Quantity>()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("executor.bounds.{key}"))
        };
        let mut job_templates = std::collections::BTreeMap::new();
        for (name, spec) in &self.job_templates {
            let spec = serde_json::from_value(spec.clone())
                .with_context(|| format!("executor.jobTemplates.{name} is not a Job spec"))?;
            job_templates.insert(name.clone(), spec);
        }
        Ok(kubernaut_cluster::ExecSettings {
            holder: String::new(),
            dry_run_only: dry_run,
            dry_run_namespaces: self.dry_run_namespaces.clone(),
            bounds: kubernaut_cluster::Bounds {
                max_replicas: self.bounds.max_replicas,
                max_increase_factor: self.bounds.max_increase_factor,
                max_cpu: quantity("maxCpu", &self.bounds.max_cpu)?,
                max_memory: quantity("maxMemory", &self.bounds.max_memory)?,
                max_storage: quantity("maxStorage", &self.bounds.max_storage)?,
            },
            lock_ttl: Duration::from_secs(self.lock_ttl_seconds),
            job_templates,
            job_ttl_seconds: self.job_ttl_seconds_after_finished,
        })
    }
}

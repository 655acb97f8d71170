//! Storm detection (K-GW-6): a burst of one alert name in one namespace
//! (rate) or over many targets (pattern) is aggregated into one request
//! for the namespace. The windows live in Redis, shared by the replicas;
//! while Redis cannot answer, in memory per replica.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use kubernaut_api::signal::sha256_hex;
use kubernaut_api::{IngestOutcome, IntakeError, ObjectRef, Signal, StormKind, StormSpec};
use kubernaut_cluster::Resolved;
use kubernaut_store::index::WindowCounts;

use crate::{Inner, Plan};

/// Storm detection (K-GW-6), per namespace and alert name.
#[derive(Clone, Debug)]
pub struct StormSettings {
    pub enabled: bool,
    pub rate_window: Duration,
    /// More distinct signals than this in the rate window is a rate storm.
    pub rate_threshold: u64,
    pub pattern_window: Duration,
    /// More distinct targets than this in the pattern window is a pattern
    /// storm, per environment (namespace label `kubernaut.io/environment`).
    pub pattern_thresholds: HashMap<String, u64>,
    pub default_pattern_threshold: u64,
}

impl Default for StormSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            rate_window: Duration::from_secs(60),
            rate_threshold: 10,
            pattern_window: Duration::from_secs(120),
            pattern_thresholds: [("production", 5), ("staging", 8), ("development", 10)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            default_pattern_threshold: 5,
        }
    }
}

/// Storm windows kept in memory while Redis is unavailable: per replica,
/// so a storm split over replicas is seen later, but it is still seen.
#[derive(Default)]
pub(crate) struct LocalWindow {
    signals: HashMap<String, Instant>,
    targets: HashMap<String, Instant>,
}

pub(crate) fn storm_outcome(outcome: IngestOutcome) -> IngestOutcome {
    match outcome {
        IngestOutcome::Created {
            request, namespace, ..
        } => IngestOutcome::Storm {
            request,
            namespace,
            created: true,
            total_signals: 1,
        },
        IngestOutcome::Duplicate {
            request,
            namespace,
            occurrence_count,
            ..
        } => IngestOutcome::Storm {
            request,
            namespace,
            created: false,
            total_signals: occurrence_count,
        },
        other => other,
    }
}

impl Inner {
    /// The storm this signal belongs to, if its alert name is storming in
    /// its namespace (K-GW-6). Cluster-scoped targets are never aggregated.
    pub(crate) async fn storm_of(
        &self,
        signal: &Signal,
        resolved: &Resolved,
        fp: &str,
        instance: &str,
    ) -> Result<Option<StormSpec>, IntakeError> {
        let s = &self.settings.storm;
        let ns = &resolved.target.namespace;
        if !s.enabled || ns.is_empty() {
            return Ok(None);
        }
        let scope = format!("{ns}/{}", signal.name);
        let (rate, pattern) = (s.rate_window, s.pattern_window);
        let counts = match self
            .redis("storm_windows", async |i| {
                i.storm_windows(&scope, instance, fp, rate, pattern).await
            })
            .await
        {
            Some(c) => c,
            None => self.local_windows(&scope, instance, fp),
        };
        let env = self.environment(ns).await?;
        let pattern_threshold = s
            .pattern_thresholds
            .get(&env)
            .copied()
            .unwrap_or(s.default_pattern_threshold);
        let kind = if counts.targets > pattern_threshold {
            StormKind::Pattern
        } else if counts.signals > s.rate_threshold {
            StormKind::Rate
        } else {
            return Ok(None);
        };
        Ok(Some(StormSpec {
            kind,
            alert_name: signal.name.clone(),
            namespace: ns.clone(),
        }))
    }

    pub(crate) fn storm_plan(&self, storm: StormSpec, resolved: &Resolved) -> Plan {
        let cluster = self.cluster.config().cluster_name.as_deref().unwrap_or("");
        let fp = sha256_hex(&format!(
            "storm:{cluster}:{}:{}",
            storm.namespace, storm.alert_name
        ));
        Plan {
            fp,
            ns: storm.namespace.clone(),
            resolved: Resolved {
                target: ObjectRef::new("Namespace", "", &storm.namespace),
                chain: vec![resolved.target.clone()],
                labels: Vec::new(),
            },
            storm: Some(storm),
            storm_target: Some(resolved.target.clone()),
        }
    }

    fn local_windows(&self, scope: &str, instance: &str, target: &str) -> WindowCounts {
        let s = &self.settings.storm;
        let now = Instant::now();
        let mut all = self
            .local_windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let w = all.entry(scope.to_string()).or_default();
        w.signals.insert(instance.to_string(), now);
        w.signals
            .retain(|_, t| now.duration_since(*t) <= s.rate_window);
        w.targets.insert(target.to_string(), now);
        w.targets
            .retain(|_, t| now.duration_since(*t) <= s.pattern_window);
        WindowCounts {
            signals: w.signals.len() as u64,
            targets: w.targets.len() as u64,
        }
    }
}

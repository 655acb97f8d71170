//! Storm detection (K-GW-6): a burst of one alert name in one namespace
//! (rate) or over many targets (pattern) is aggregated into one request
//! for the namespace. The windows live in Redis, shared by the replicas;
//! while Redis cannot answer, in memory per replica.

use std::collections::HashMap;

use hashlink::LruCache;
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

/// Scopes (namespace and alert name) of the in-memory windows; past it the
/// least recently used goes.
const MAX_SCOPES: usize = 4096;
/// Signals or targets remembered per window; past it the oldest go. Far
/// above any storm threshold, so counts that hit it still say "storm".
const MAX_KEYS: usize = 1024;

/// Storm windows kept in memory while Redis is unavailable: per replica,
/// so a storm split over replicas is seen later, but it is still seen.
/// Every key is outside input (alert names, signal ids), so each level is
/// an LRU with a hard bound, and entries leave with their window.
pub(crate) struct LocalWindows {
    scopes: LruCache<String, LocalWindow>,
}

struct LocalWindow {
    signals: LruCache<String, Instant>,
    targets: LruCache<String, Instant>,
}

impl Default for LocalWindows {
    fn default() -> Self {
        Self {
            scopes: LruCache::new(MAX_SCOPES),
        }
    }
}

/// Notes `key` seen at `now` and drops what left the window; the count.
fn seen(w: &mut LruCache<String, Instant>, key: &str, now: Instant, window: Duration) -> u64 {
    w.insert(key.to_string(), now);
    while w
        .iter()
        .next()
        .is_some_and(|(_, t)| now.duration_since(*t) > window)
    {
        w.remove_lru();
    }
    w.len() as u64
}

impl LocalWindows {
    /// Counts a signal of `scope` (its instance and target) at `now`.
    pub(crate) fn count(
        &mut self,
        scope: &str,
        instance: &str,
        target: &str,
        now: Instant,
        s: &StormSettings,
    ) -> WindowCounts {
        if !self.scopes.contains_key(scope) {
            self.scopes.insert(
                scope.to_string(),
                LocalWindow {
                    signals: LruCache::new(MAX_KEYS),
                    targets: LruCache::new(MAX_KEYS),
                },
            );
        }
        let Some(w) = self.scopes.get_mut(scope) else {
            return WindowCounts {
                signals: 0,
                targets: 0,
            };
        };
        WindowCounts {
            signals: seen(&mut w.signals, instance, now, s.rate_window),
            targets: seen(&mut w.targets, target, now, s.pattern_window),
        }
    }

    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let keys = self
            .scopes
            .iter()
            .map(|(_, w)| w.signals.len().max(w.targets.len()))
            .max()
            .unwrap_or(0);
        (self.scopes.len(), keys)
    }
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
        self.local_windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count(
                scope,
                instance,
                target,
                Instant::now(),
                &self.settings.storm,
            )
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_window_counts_what_is_in_it_and_forgets_what_left() {
        let s = StormSettings::default();
        let mut w = LocalWindows::default();
        let t0 = Instant::now();
        w.count("shop/A", "i1", "web", t0, &s);
        let c = w.count("shop/A", "i2", "api", t0 + Duration::from_secs(30), &s);
        assert_eq!((c.signals, c.targets), (2, 2));
        // 61 s later i1 and i2 left the 60 s rate window; both targets are
        // still in the 120 s pattern window.
        let c = w.count("shop/A", "i3", "web", t0 + Duration::from_secs(91), &s);
        assert_eq!((c.signals, c.targets), (1, 2));
        let c = w.count("shop/B", "i1", "web", t0 + Duration::from_secs(91), &s);
        assert_eq!((c.signals, c.targets), (1, 1), "scopes are apart");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        /// A sender inventing alert names, namespaces and signal ids never
        /// grows the windows past their bounds.
        #[test]
        fn the_windows_stay_within_their_bounds(
            signals in proptest::collection::vec(("[a-z]{1,12}", "[a-z0-9]{1,16}"), 4000..6000),
            scopes in 1usize..8000,
        ) {
            let s = StormSettings::default();
            let mut w = LocalWindows::default();
            let now = Instant::now();
            for (i, (name, id)) in signals.iter().enumerate() {
                let scope = format!("ns{}/{name}", i % scopes);
                w.count(&scope, id, id, now, &s);
                w.count("hot/one", &format!("{id}{i}"), &format!("{name}{i}"), now, &s);
            }
            let (n, keys) = w.sizes();
            prop_assert!(n <= MAX_SCOPES);
            prop_assert!(keys <= MAX_KEYS);
        }
    }
}

//! One parent's children, for every parent of the tree (root, registry,
//! supervisor, workflow): which running child is which, and, when one
//! fails or panics, whether it is started again after an exponential
//! backoff or given up on once its budget is spent (K-RR-3). ractor has no
//! restart policy of its own; this is ours, pure and unit-tested, so that
//! the bookkeeping is written once.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use ractor::ActorId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed after the first failure; 0 never restarts.
    pub max_restarts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RestartPolicy {
    /// The delay before restart `n` (1 for the first), or `None` once the
    /// budget is spent.
    pub fn backoff(&self, n: u32) -> Option<Duration> {
        if n == 0 || n > self.max_restarts {
            return None;
        }
        let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
        Some(
            self.first_backoff
                .checked_mul(factor)
                .unwrap_or(self.max_backoff)
                .min(self.max_backoff),
        )
    }
}

/// What to do about a child that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<K> {
    /// Start it again after `after`; this is its `attempt`th restart.
    Restart {
        key: K,
        after: Duration,
        attempt: u32,
    },
    /// Its budget is spent: the parent fails the work, or escalates.
    GiveUp { key: K, failures: u32 },
}

/// A parent's running children by actor id, and the failures of each key
/// since it last succeeded.
#[derive(Debug)]
pub struct Children<K> {
    policy: RestartPolicy,
    running: HashMap<ActorId, K>,
    failures: HashMap<K, u32>,
    restarts: Option<Counter>,
}

impl<K: Clone + Eq + Hash> Children<K> {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            running: HashMap::new(),
            failures: HashMap::new(),
            restarts: None,
        }
    }

    /// Counts every restart in `counter` (the actor kind's restart series).
    pub fn counting(mut self, counter: Counter) -> Self {
        self.restarts = Some(counter);
        self
    }

    /// `id` now runs the work of `key`; an older child of `key` is forgotten.
    pub fn started(&mut self, id: ActorId, key: K) {
        self.running.retain(|_, k| *k != key);
        self.running.insert(id, key);
    }

    pub fn key(&self, id: &ActorId) -> Option<&K> {
        self.running.get(id)
    }

    pub fn is_running(&self, key: &K) -> bool {
        self.running.values().any(|k| k == key)
    }

    pub fn running(&self) -> impl Iterator<Item = &K> {
        self.running.values()
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// A child stopped on its own: it is no longer running. Its failures
    /// are kept until [`Children::succeeded`] or [`Children::forget`].
    pub fn terminated(&mut self, id: &ActorId) -> Option<K> {
        self.running.remove(id)
    }

    /// The work of `key` reported success: it no longer counts as running
    /// (its actor is only stopping, and a late failure of it is ignored),
    /// and its budget is whole again.
    pub fn succeeded(&mut self, key: &K) {
        self.running.retain(|_, k| k != key);
        self.failures.remove(key);
    }

    /// `key` is gone for good: no running child, no failures.
    pub fn forget(&mut self, key: &K) {
        self.running.retain(|_, k| k != key);
        self.failures.remove(key);
    }

    /// Whether `key` failed and has not succeeded since.
    pub fn failing(&self, key: &K) -> bool {
        self.failures.contains_key(key)
    }

    /// Child `id` failed: restart it after a backoff, or give up once the
    /// budget is spent (its failures are then forgotten, so a later start
    /// has a whole budget). `None` for an id that is not a running child.
    pub fn failed(&mut self, id: &ActorId) -> Option<Verdict<K>> {
        let key = self.running.remove(id)?;
        let n = self.failures.entry(key.clone()).or_insert(0);
        *n += 1;
        let n = *n;
        match self.policy.backoff(n) {
            Some(after) => {
                if let Some(c) = &self.restarts {
                    c.inc();
                }
                Some(Verdict::Restart {
                    key,
                    after,
                    attempt: n,
                })
            }
            None => {
                self.failures.remove(&key);
                Some(Verdict::GiveUp { key, failures: n })
            }
        }
    }
}

/// The message a panic or error carried, for the record.
pub fn reason(error: &ractor::ActorProcessingErr) -> String {
    let s = error.to_string();
    if s.is_empty() {
        "the actor failed without a reason".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_then_the_budget_ends() {
        let p = RestartPolicy {
            max_restarts: 5,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        };
        let got: Vec<_> = (1..=6).map(|n| p.backoff(n)).collect();
        let s = Duration::from_secs;
        assert_eq!(
            got,
            vec![
                Some(s(1)),
                Some(s(2)),
                Some(s(4)),
                Some(s(5)),
                Some(s(5)),
                None
            ]
        );
        assert_eq!(p.backoff(0), None);
    }

    #[test]
    fn huge_restart_counts_do_not_overflow() {
        let p = RestartPolicy {
            max_restarts: u32::MAX,
            ..RestartPolicy::default()
        };
        assert_eq!(p.backoff(64), Some(p.max_backoff));
        assert_eq!(p.backoff(u32::MAX), Some(p.max_backoff));
    }

    fn id(n: u64) -> ActorId {
        ActorId::Local(n)
    }

    fn fast(max_restarts: u32) -> RestartPolicy {
        RestartPolicy {
            max_restarts,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_failed_child_is_restarted_with_backoff_until_its_budget_is_spent() {
        let counter = Counter::default();
        let mut c = Children::new(fast(2)).counting(counter.clone());
        c.started(id(1), "a");
        let first = c.failed(&id(1));
        assert_eq!(
            first,
            Some(Verdict::Restart {
                key: "a",
                after: Duration::from_millis(100),
                attempt: 1
            })
        );
        assert!(c.failing(&"a") && !c.is_running(&"a"));
        c.started(id(2), "a");
        let second = c.failed(&id(2));
        assert!(
            matches!(second, Some(Verdict::Restart { attempt: 2, after, .. }) if after == Duration::from_millis(200))
        );
        c.started(id(3), "a");
        assert_eq!(
            c.failed(&id(3)),
            Some(Verdict::GiveUp {
                key: "a",
                failures: 3
            })
        );
        assert_eq!(counter.get(), 2, "two restarts counted, not the give-up");
        assert!(!c.failing(&"a"), "a later start has a whole budget");
    }

    #[test]
    fn success_restores_the_budget_and_strangers_are_ignored() {
        let mut c = Children::new(fast(1));
        c.started(id(1), 7);
        assert!(matches!(c.failed(&id(1)), Some(Verdict::Restart { .. })));
        c.started(id(2), 7);
        c.succeeded(&7);
        assert!(c.is_empty(), "a child that reported success no longer runs");
        assert_eq!(c.failed(&id(2)), None, "its late failure is ignored");
        c.started(id(3), 7);
        assert!(matches!(
            c.failed(&id(3)),
            Some(Verdict::Restart { attempt: 1, .. })
        ));
        assert_eq!(c.failed(&id(99)), None, "not a child of this parent");
        assert_eq!(c.terminated(&id(3)), None, "already removed by its failure");
    }

    #[test]
    fn a_new_child_of_a_key_replaces_the_old_one() {
        let mut c = Children::new(fast(3));
        c.started(id(1), "k");
        c.started(id(2), "k");
        assert_eq!(c.len(), 1);
        assert_eq!(c.key(&id(1)), None);
        assert_eq!(c.terminated(&id(2)), Some("k"));
        assert!(c.is_empty());
        c.started(id(3), "k");
        c.forget(&"k");
        assert!(c.is_empty() && !c.failing(&"k"));
    }

    #[test]
    fn a_zero_budget_never_restarts() {
        let p = RestartPolicy {
            max_restarts: 0,
            ..RestartPolicy::default()
        };
        assert_eq!(p.backoff(1), None);
        let mut c = Children::new(p);
        c.started(id(1), ());
        assert_eq!(
            c.failed(&id(1)),
            Some(Verdict::GiveUp {
                key: (),
                failures: 1
            })
        );
    }
}

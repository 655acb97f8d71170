//! The one restart policy of the tree (K-RR-3), used at every level: the
//! registry for supervisors, a supervisor for its stage actors, a workflow
//! for its step actors. A failed or panicked child is started again after
//! an exponential backoff, up to a budget; past it the parent fails the
//! work with the reason.

use std::time::Duration;

use crate::metrics::{ActorKind, Metrics};

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
    /// After failure `n` of an actor of `kind`: the delay before it is
    /// started again, counted as a restart; `None` once the budget is spent.
    pub fn restart(&self, n: u32, kind: ActorKind, metrics: &Metrics) -> Option<Duration> {
        let delay = self.backoff(n)?;
        metrics.restarts.get_or_create(&metrics.actor(kind)).inc();
        Some(delay)
    }

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

    #[test]
    fn a_zero_budget_never_restarts() {
        let p = RestartPolicy {
            max_restarts: 0,
            ..RestartPolicy::default()
        };
        assert_eq!(p.backoff(1), None);
    }
}

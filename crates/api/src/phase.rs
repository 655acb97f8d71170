//! The request phase machine of K-RR-2. Every phase change in the system goes
//! through [`Phase::transition`], so a transition outside the table is
//! refused by code rather than by convention.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
pub enum Phase {
    #[default]
    Pending,
    Processing,
    Analyzing,
    AwaitingApproval,
    Executing,
    Verifying,
    Completed,
    Failed,
    TimedOut,
    Skipped,
    Cancelled,
    Blocked,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal phase transition {from} -> {to}")]
pub struct TransitionError {
    pub from: Phase,
    pub to: Phase,
}

impl Phase {
    pub const ALL: [Phase; 12] = [
        Phase::Pending,
        Phase::Processing,
        Phase::Analyzing,
        Phase::AwaitingApproval,
        Phase::Executing,
        Phase::Verifying,
        Phase::Completed,
        Phase::Failed,
        Phase::TimedOut,
        Phase::Skipped,
        Phase::Cancelled,
        Phase::Blocked,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Completed | Phase::Failed | Phase::TimedOut | Phase::Skipped | Phase::Cancelled
        )
    }

    /// The transition table. Failure, timeout and cancellation can end any
    /// live phase; skipping is only possible before anything was executed.
    pub fn can_transition_to(self, to: Phase) -> bool {
        use Phase::*;
        if self.is_terminal() || self == to {
            return false;
        }
        match to {
            Failed | TimedOut | Cancelled => true,
            Skipped => matches!(self, Pending | Blocked | Processing | Analyzing),
            Blocked => matches!(self, Pending),
            Processing => matches!(self, Pending | Blocked),
            Analyzing => matches!(self, Processing),
            AwaitingApproval => matches!(self, Analyzing),
            Executing => matches!(self, Analyzing | AwaitingApproval),
            Verifying => matches!(self, Executing),
            Completed => matches!(self, Verifying),
            Pending => false,
        }
    }

    pub fn transition(self, to: Phase) -> Result<Phase, TransitionError> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Processing => "Processing",
            Phase::Analyzing => "Analyzing",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::Executing => "Executing",
            Phase::Verifying => "Verifying",
            Phase::Completed => "Completed",
            Phase::Failed => "Failed",
            Phase::TimedOut => "TimedOut",
            Phase::Skipped => "Skipped",
            Phase::Cancelled => "Cancelled",
            Phase::Blocked => "Blocked",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Phase::{self, *};

    #[test]
    fn the_happy_path_is_allowed_step_by_step() {
        let path = [
            Pending, Processing, Analyzing, Executing, Verifying, Completed,
        ];
        for w in path.windows(2) {
            assert_eq!(w[0].transition(w[1]), Ok(w[1]), "{} -> {}", w[0], w[1]);
        }
        assert!(Analyzing.can_transition_to(AwaitingApproval));
        assert!(AwaitingApproval.can_transition_to(Executing));
    }

    #[test]
    fn terminal_phases_never_move() {
        for from in Phase::ALL.into_iter().filter(|p| p.is_terminal()) {
            for to in Phase::ALL {
                assert!(
                    from.transition(to).is_err(),
                    "{from} -> {to} must be refused"
                );
            }
        }
    }

    #[test]
    fn skipping_stages_is_refused() {
        for (from, to) in [
            (Pending, Executing),
            (Pending, Completed),
            (Processing, Executing),
            (Analyzing, Verifying),
            (Executing, Completed),
            (Executing, Skipped),
            (Verifying, Executing),
            (Processing, Pending),
            (Blocked, Analyzing),
        ] {
            let err = from.transition(to).unwrap_err();
            assert_eq!((err.from, err.to), (from, to));
        }
    }

    #[test]
    fn every_live_phase_can_fail_time_out_or_be_cancelled() {
        for from in Phase::ALL.into_iter().filter(|p| !p.is_terminal()) {
            for to in [Failed, TimedOut, Cancelled] {
                assert!(from.can_transition_to(to), "{from} -> {to}");
            }
        }
    }

    /// K-RR-2 written out pair by pair: every transition not listed here
    /// must be refused, and every listed one allowed.
    #[test]
    fn the_table_is_exactly_k_rr_2() {
        let end = [Failed, TimedOut, Cancelled];
        let legal: Vec<(Phase, Phase)> = [
            (Pending, &[Processing, Blocked, Skipped][..]),
            (Blocked, &[Processing, Skipped][..]),
            (Processing, &[Analyzing, Skipped][..]),
            (Analyzing, &[AwaitingApproval, Executing, Skipped][..]),
            (AwaitingApproval, &[Executing][..]),
            (Executing, &[Verifying][..]),
            (Verifying, &[Completed][..]),
        ]
        .into_iter()
        .flat_map(|(from, tos)| tos.iter().chain(&end).map(move |to| (from, *to)))
        .collect();
        let mut refused = 0;
        for from in Phase::ALL {
            for to in Phase::ALL {
                let allowed = legal.contains(&(from, to));
                assert_eq!(
                    from.transition(to).is_ok(),
                    allowed,
                    "{from} -> {to} should be {}",
                    if allowed { "allowed" } else { "refused" }
                );
                refused += usize::from(!allowed);
            }
        }
        assert_eq!(refused, 144 - legal.len());
        assert_eq!(legal.len(), 34);
    }

    #[test]
    fn no_phase_transitions_to_itself() {
        for p in Phase::ALL {
            assert!(!p.can_transition_to(p));
        }
    }
}

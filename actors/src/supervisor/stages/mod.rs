//! One module per phase's work, behind [`Stage`]. A stage decides; the
//! supervisor carries the decision out ([`Next`]): it writes the status,
//! starts the stage actor, or waits. Adding a phase is the phase table
//! (`kubernaut_api::Phase`), one module here with its line in [`of`], and
//! its timeout's config key.

pub mod analysis;
pub mod approval;
pub mod execution;
pub mod holding;
pub mod processing;
pub mod verification;

use kubernaut_api::{Phase, RemediationRequestStatus};

use super::Sup;
use super::transitions::Transition;
use crate::metrics::ActorKind;
use crate::supervisor::transitions::Reason;
use crate::worker::Work;
use crate::workflow::{self, WorkflowReport};

/// A status change, with the phase change it makes, if any.
pub type Change = Box<dyn FnOnce(&mut RemediationRequestStatus) -> Option<Transition> + Send>;

/// What the supervisor does next for a phase.
pub enum Next {
    /// Nothing until a message comes (an approval, a timer).
    Wait,
    /// Write this change.
    Commit(Change),
    /// Write this change, then look at the phase's work again.
    CommitThenAdvance(Change),
    /// Fail the request with this reason.
    Fail(Reason, String),
    /// Transient trouble: try the phase's work again later.
    Retry(String),
    /// Run the work in a stage actor of this kind; its result comes back
    /// to [`Stage::done`].
    Run(ActorKind, Work<StageResult>),
    /// Run the workflow actor (its sink is the supervisor's).
    Workflow(Box<workflow::Args>),
}

impl Next {
    pub fn commit(
        change: impl FnOnce(&mut RemediationRequestStatus) -> Option<Transition> + Send + 'static,
    ) -> Self {
        Next::Commit(Box::new(change))
    }

    pub fn to(t: Transition) -> Self {
        Next::commit(move |_| Some(t))
    }
}

/// What a stage actor found.
pub enum StageResult {
    /// Transient trouble (the API) is tried again.
    Processed(Result<processing::Processed, kubernaut_cluster::Error>),
    Analyzed(Box<crate::analysis::Analyzed>),
    /// The current targets of an approved storm.
    StormTargets(Result<Vec<kubernaut_api::ObjectRef>, kubernaut_cluster::Error>),
    Executed(Result<WorkflowReport, workflow::InvalidWorkflow>),
    /// The change was seen applied (or not).
    Verified(Result<verification::Applied, verification::VerifyError>),
    /// The scorers' components at the end of the window.
    Scored(Vec<kubernaut_api::ScoreComponent>),
}

/// One phase's work.
pub trait Stage: Sync {
    /// The phase's next piece of work (called when the phase begins, and
    /// again after a restart, a retry or an awaited message).
    fn next(&self, sup: &mut Sup) -> Next;

    /// What its stage actor's result means.
    fn done(&self, sup: &mut Sup, result: StageResult) -> Next {
        let _ = (sup, result);
        Next::Wait
    }
}

/// The stage of each live phase.
pub fn of(phase: Phase) -> Option<&'static dyn Stage> {
    Some(match phase {
        Phase::Pending | Phase::Blocked => &holding::Holding,
        Phase::Processing => &processing::Processing,
        Phase::Analyzing => &analysis::Analysis,
        Phase::AwaitingApproval => &approval::AwaitingApproval,
        Phase::Executing => &execution::Execution,
        Phase::Verifying => &verification::Verification,
        Phase::Completed | Phase::Failed | Phase::TimedOut | Phase::Skipped | Phase::Cancelled => {
            return None;
        }
    })
}

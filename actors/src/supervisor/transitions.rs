//! The supervisor's decisions as plain functions: from a request's status
//! and what happened (a stage's result, a decision, a deadline) to the
//! transition and the status edit that record it. No actor, no I/O and no
//! clock of their own, so each row of the phase table the supervisor uses
//! has a unit test below.

use std::time::Duration;

use kubernaut_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kubernaut_api::k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubernaut_api::{
    Decision, ExecutionResult, Phase, PhaseTransition, RemediationRequestStatus, StepPhase,
    TransitionError, VerificationOutcome,
};

use crate::Timeouts;
use crate::workflow::WorkflowReport;

/// Why a request changed phase (`phaseHistory[].reason`), or what was
/// escalated: one closed set, so a misspelt reason does not compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Started,
    HoldReleased,
    TargetBusy,
    Backoff,
    ConsecutiveFailures,
    Enriched,
    OutOfScope,
    ActionChosen,
    ApprovalRequired,
    StormEscalated,
    NoMatchingRule,
    RecentlyRemediated,
    RuleIncomplete,
    Approved,
    Rejected,
    ApprovalExpired,
    NoStormPlan,
    NoDecision,
    ActionFinished,
    WorkflowFailed,
    InvalidWorkflow,
    Verified,
    VerificationFailed,
    /// Scored, and the incident did not go away (K-AU-2).
    Ineffective,
    /// Scored, and the scorers could not tell.
    Inconclusive,
    /// The workflow changed nothing, so there is nothing to score.
    NothingChanged,
    NoExecutionRecord,
    StageFailed,
    StatusRejected,
    ProcessingTimeout,
    AnalyzingTimeout,
    ApprovalTimeout,
    ExecutingTimeout,
    VerifyingTimeout,
    RequestTimeout,
}

impl Reason {
    /// The causes an escalation is recorded for (`Sup::escalate`): their
    /// counters exist from the start, so an alert's increase() sees the
    /// first one.
    pub const ESCALATIONS: [Reason; 9] = [
        Reason::ConsecutiveFailures,
        Reason::StormEscalated,
        Reason::Ineffective,
        Reason::ProcessingTimeout,
        Reason::AnalyzingTimeout,
        Reason::ApprovalTimeout,
        Reason::ExecutingTimeout,
        Reason::VerifyingTimeout,
        Reason::RequestTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Started => "Started",
            Reason::HoldReleased => "HoldReleased",
            Reason::TargetBusy => "TargetBusy",
            Reason::Backoff => "Backoff",
            Reason::ConsecutiveFailures => "ConsecutiveFailures",
            Reason::Enriched => "Enriched",
            Reason::OutOfScope => "OutOfScope",
            Reason::ActionChosen => "ActionChosen",
            Reason::ApprovalRequired => "ApprovalRequired",
            Reason::StormEscalated => "StormEscalated",
            Reason::NoMatchingRule => "NoMatchingRule",
            Reason::RecentlyRemediated => "RecentlyRemediated",
            Reason::RuleIncomplete => "RuleIncomplete",
            Reason::Approved => "Approved",
            Reason::Rejected => "Rejected",
            Reason::ApprovalExpired => "ApprovalExpired",
            Reason::NoStormPlan => "NoStormPlan",
            Reason::NoDecision => "NoDecision",
            Reason::ActionFinished => "ActionFinished",
            Reason::WorkflowFailed => "WorkflowFailed",
            Reason::InvalidWorkflow => "InvalidWorkflow",
            Reason::Verified => "Verified",
            Reason::VerificationFailed => "VerificationFailed",
            Reason::Ineffective => "Ineffective",
            Reason::Inconclusive => "Inconclusive",
            Reason::NothingChanged => "NothingChanged",
            Reason::NoExecutionRecord => "NoExecutionRecord",
            Reason::StageFailed => "StageFailed",
            Reason::StatusRejected => "StatusRejected",
            Reason::ProcessingTimeout => "ProcessingTimeout",
            Reason::AnalyzingTimeout => "AnalyzingTimeout",
            Reason::ApprovalTimeout => "ApprovalTimeout",
            Reason::ExecutingTimeout => "ExecutingTimeout",
            Reason::VerifyingTimeout => "VerifyingTimeout",
            Reason::RequestTimeout => "RequestTimeout",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<crate::holds::HoldReason> for Reason {
    fn from(h: crate::holds::HoldReason) -> Self {
        match h {
            crate::holds::HoldReason::ConsecutiveFailures => Reason::ConsecutiveFailures,
            crate::holds::HoldReason::Backoff => Reason::Backoff,
            crate::holds::HoldReason::TargetBusy => Reason::TargetBusy,
        }
    }
}

/// A phase change and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub to: Phase,
    pub reason: Reason,
    pub message: String,
}

impl Transition {
    pub fn new(to: Phase, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            to,
            reason,
            message: message.into(),
        }
    }
}

/// How long things last, as configured.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Timestamp,
    pub timeouts: Timeouts,
    pub retention: Duration,
}

/// Records `t` in `status`: the phase, its message and history entry, the
/// new phase's deadline, the request's deadline when it starts, and the
/// retention of a terminal request. A transition outside the K-RR-2 table
/// is refused.
pub fn enter(
    status: &mut RemediationRequestStatus,
    t: &Transition,
    clock: &Clock,
) -> Result<(), TransitionError> {
    let to = status.phase.transition(t.to)?;
    let at = clock.now;
    status.phase = to;
    status.message = Some(if t.message.is_empty() {
        t.reason.as_str().to_string()
    } else {
        t.message.clone()
    });
    status.phase_history.push(PhaseTransition {
        phase: to,
        time: Time(at),
        reason: t.reason.to_string(),
        message: t.message.clone(),
    });
    status.phase_deadline = clock.timeouts.for_phase(to).map(|d| after(at, d));
    if to == Phase::Processing && status.deadline.is_none() {
        status.deadline = Some(after(at, clock.timeouts.request));
    }
    if to.is_terminal() {
        status.completion_time = Some(Time(at));
        status.retention_expiry_time = Some(after(at, clock.retention));
    }
    Ok(())
}

pub fn after(at: Timestamp, d: Duration) -> Time {
    let d = SignedDuration::try_from(d).unwrap_or_default();
    Time(at.checked_add(d).unwrap_or(at))
}

/// The conditions the controller keeps on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    Processed,
    Analyzed,
    Approved,
    Executed,
    Verified,
    Held,
    Escalated,
}

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Cond {
    pub fn as_str(self) -> &'static str {
        match self {
            Cond::Processed => "Processed",
            Cond::Analyzed => "Analyzed",
            Cond::Approved => "Approved",
            Cond::Executed => "Executed",
            Cond::Verified => "Verified",
            Cond::Held => "Held",
            Cond::Escalated => "Escalated",
        }
    }
}

impl Truth {
    pub fn as_str(self) -> &'static str {
        match self {
            Truth::True => "True",
            Truth::False => "False",
            Truth::Unknown => "Unknown",
        }
    }

    pub fn of(yes: bool) -> Self {
        if yes { Truth::True } else { Truth::False }
    }
}

/// Keeps the one condition of a type, moving `lastTransitionTime` only when
/// its status changes.
pub fn set_condition(
    s: &mut RemediationRequestStatus,
    type_: Cond,
    status: Truth,
    reason: &str,
    now: Timestamp,
) {
    let (type_, status) = (type_.as_str(), status.as_str());
    // Never empty: see the note on empty strings in the api crate.
    let message = format!("{type_}: {reason}");
    match s.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message;
        }
        None => s.conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: Time(now),
            observed_generation: None,
        }),
    }
}

/// The deadline that has passed, if any: the timeout's reason and what to
/// record (K-RR-4).
pub fn expired(
    status: &RemediationRequestStatus,
    timeouts: &Timeouts,
    now: Timestamp,
) -> Option<(Reason, String)> {
    let passed = |t: &Option<Time>| t.as_ref().is_some_and(|t| t.0 <= now);
    let phase = status.phase;
    if phase.is_terminal() {
        None
    } else if passed(&status.phase_deadline) {
        let limit = timeouts.for_phase(phase).unwrap_or_default();
        Some((
            timeout_reason(phase),
            format!("{phase} did not finish within {limit:?}; escalated"),
        ))
    } else if passed(&status.deadline) {
        Some((
            Reason::RequestTimeout,
            format!(
                "the remediation did not finish within {:?} (it was {phase}); escalated",
                timeouts.request
            ),
        ))
    } else {
        None
    }
}

pub fn timeout_reason(phase: Phase) -> Reason {
    match phase {
        Phase::Processing => Reason::ProcessingTimeout,
        Phase::Analyzing => Reason::AnalyzingTimeout,
        Phase::AwaitingApproval => Reason::ApprovalTimeout,
        Phase::Executing => Reason::ExecutingTimeout,
        Phase::Verifying => Reason::VerifyingTimeout,
        _ => Reason::RequestTimeout,
    }
}

/// The earliest deadline of a live request: when to look again.
pub fn next_deadline(status: &RemediationRequestStatus) -> Option<Timestamp> {
    if status.phase.is_terminal() {
        return None;
    }
    [&status.deadline, &status.phase_deadline]
        .into_iter()
        .flatten()
        .map(|t| t.0)
        .min()
}

/// A deadline passed: the request times out, except that an approval that
/// never came fails it (K-AI-4: nothing ran, and the humans asked did not
/// answer). A step still running is recorded as interrupted.
pub fn timed_out(
    status: &mut RemediationRequestStatus,
    reason: Reason,
    message: &str,
    approval_limit: Duration,
    now: Timestamp,
) -> Transition {
    let interrupted = format!("interrupted: {message}");
    if let Some(e) = status.execution.as_mut() {
        for step in e.steps.iter_mut().filter(|s| s.phase == StepPhase::Running) {
            step.phase = StepPhase::Failed;
            step.finished_at = Some(Time(now));
            step.message = interrupted.clone();
        }
    }
    let t = if reason == Reason::ApprovalTimeout {
        let message = format!("no approval within {approval_limit:?}; nothing was changed");
        Transition::new(Phase::Failed, Reason::ApprovalExpired, message)
    } else {
        Transition::new(Phase::TimedOut, reason, message)
    };
    set_condition(status, Cond::Escalated, Truth::True, t.reason.as_str(), now);
    t
}

/// The workflow ran: Verifying when every step that had to succeed did,
/// else Failed with the first failure and what was rolled back.
pub fn executed(
    status: &mut RemediationRequestStatus,
    report: &WorkflowReport,
    now: Timestamp,
) -> Transition {
    let result = if report.succeeded {
        ExecutionResult::Succeeded
    } else {
        ExecutionResult::Failed
    };
    let failure = report.stopped.clone().or_else(|| {
        report
            .steps
            .iter()
            .find(|s| s.state == StepPhase::Failed)
            .map(|s| {
                format!(
                    "step {} ({}) failed: {}",
                    s.id,
                    s.action,
                    s.error.clone().unwrap_or_default()
                )
            })
    });
    let undone = report.rollback_order.join(", ");
    let message = match (&failure, undone.is_empty()) {
        (None, _) => format!("{} steps succeeded", report.steps.len()),
        (Some(f), true) => f.clone(),
        (Some(f), false) => format!("{f}; rolled back {undone}"),
    };
    for r in &report.steps {
        if let Some(step) = step_mut(status, &r.id) {
            step.phase = r.state;
            if let Some(e) = &r.error {
                step.message = e.clone();
            }
        }
    }
    if let Some(e) = status.execution.as_mut() {
        e.result = Some(result);
        e.finished_at = Some(Time(now));
        e.message = message.clone();
    }
    let condition = Truth::of(report.succeeded);
    set_condition(status, Cond::Executed, condition, result.as_str(), now);
    if report.succeeded {
        Transition::new(Phase::Verifying, Reason::ActionFinished, message)
    } else {
        Transition::new(Phase::Failed, Reason::WorkflowFailed, message)
    }
}

/// Verification's verdict: Completed, or Failed with why.
/// The end of Verifying: the outcome of the scores (none when nothing
/// was changed, so nothing was scored), or why the change was never seen.
/// Ineffective fails the request: the incident is still there, and
/// routing holds count it as the failure it is.
pub fn verified(
    status: &mut RemediationRequestStatus,
    result: Result<(Option<VerificationOutcome>, String), String>,
    now: Timestamp,
) -> Transition {
    use VerificationOutcome::*;
    match result {
        Ok((Some(Effective), msg)) => {
            set_condition(status, Cond::Verified, Truth::True, "Effective", now);
            Transition::new(Phase::Completed, Reason::Verified, msg)
        }
        Ok((None, msg)) => {
            set_condition(status, Cond::Verified, Truth::True, "NothingChanged", now);
            Transition::new(Phase::Completed, Reason::NothingChanged, msg)
        }
        Ok((Some(Inconclusive), msg)) => {
            set_condition(status, Cond::Verified, Truth::Unknown, "Inconclusive", now);
            Transition::new(Phase::Completed, Reason::Inconclusive, msg)
        }
        Ok((Some(Ineffective), msg)) => {
            set_condition(status, Cond::Verified, Truth::False, "Ineffective", now);
            Transition::new(Phase::Failed, Reason::Ineffective, msg)
        }
        Err(e) => Transition::new(Phase::Failed, Reason::VerificationFailed, e),
    }
}

/// A human's decision on a request waiting for approval, recorded; the
/// transition for a rejection. An approval's transition depends on what
/// is approved (see the approval stage).
pub fn record_decision(
    status: &mut RemediationRequestStatus,
    approved: bool,
    by: &str,
    now: Timestamp,
) -> Option<Transition> {
    let a = status.approval.get_or_insert_with(Default::default);
    a.decision = Some(if approved {
        Decision::Approved
    } else {
        Decision::Rejected
    });
    a.decided_by = Some(by.to_string());
    a.decided_at = Some(Time(now));
    if approved {
        set_condition(status, Cond::Approved, Truth::True, "Approved", now);
        None
    } else {
        set_condition(status, Cond::Approved, Truth::False, "Rejected", now);
        Some(Transition::new(
            Phase::Cancelled,
            Reason::Rejected,
            format!("rejected by {by}"),
        ))
    }
}

pub fn step_mut<'a>(
    s: &'a mut RemediationRequestStatus,
    id: &str,
) -> Option<&'a mut kubernaut_api::StepStatus> {
    s.execution
        .as_mut()?
        .steps
        .iter_mut()
        .find(|step| step.id == id)
}

/// P0 is the most urgent. Unknown environments are treated like staging.
pub fn priority(environment: &str, severity: &str) -> &'static str {
    let env = match environment {
        "production" | "prod" => 0,
        "development" | "dev" => 2,
        _ => 1,
    };
    let sev = match severity {
        "critical" => 0,
        "warning" | "high" => 1,
        _ => 2,
    };
    match env + sev {
        0 => "P0",
        1 => "P1",
        2 => "P2",
        _ => "P3",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::StepReport;
    use kubernaut_api::{ExecutionStatus, StepStatus};

    fn clock() -> Clock {
        Clock {
            now: Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH),
            timeouts: Timeouts::default(),
            retention: Duration::from_secs(3600),
        }
    }

    fn in_phase(phase: Phase) -> RemediationRequestStatus {
        RemediationRequestStatus {
            phase,
            ..Default::default()
        }
    }

    fn step(id: &str, state: StepPhase, error: Option<&str>) -> StepReport {
        let mut r = StepReport::new(id, "restart_pod", state);
        r.error = error.map(str::to_string);
        r
    }

    fn executing(ids: &[&str]) -> RemediationRequestStatus {
        let mut s = in_phase(Phase::Executing);
        s.execution = Some(ExecutionStatus {
            action: "restart_pod".into(),
            target: kubernaut_api::ObjectRef::new("Deployment", "shop", "web"),
            target_uid: String::new(),
            started_at: Time(Timestamp::UNIX_EPOCH),
            finished_at: None,
            result: None,
            message: String::new(),
            steps: ids
                .iter()
                .map(|id| StepStatus {
                    id: id.to_string(),
                    phase: StepPhase::Running,
                    ..Default::default()
                })
                .collect(),
        });
        s
    }

    #[test]
    fn entering_processing_sets_both_deadlines_and_records_the_history() {
        let c = clock();
        let mut s = in_phase(Phase::Pending);
        enter(
            &mut s,
            &Transition::new(Phase::Processing, Reason::Started, ""),
            &c,
        )
        .unwrap();
        assert_eq!(s.phase, Phase::Processing);
        assert_eq!(
            s.message.as_deref(),
            Some("Started"),
            "an empty message names the reason"
        );
        assert_eq!(s.phase_history.len(), 1);
        assert_eq!(s.phase_history[0].reason, "Started");
        assert_eq!(
            s.phase_deadline,
            Some(after(
                c.now,
                c.timeouts.for_phase(Phase::Processing).unwrap()
            ))
        );
        assert_eq!(s.deadline, Some(after(c.now, c.timeouts.request)));
        assert_eq!(s.completion_time, None);
    }

    #[test]
    fn every_row_the_supervisor_uses_is_in_the_phase_table() {
        use Phase::*;
        let rows = [
            (Pending, Processing, Reason::Started),
            (Pending, Blocked, Reason::TargetBusy),
            (Blocked, Processing, Reason::HoldReleased),
            (Processing, Analyzing, Reason::Enriched),
            (Processing, Skipped, Reason::OutOfScope),
            (Analyzing, Executing, Reason::ActionChosen),
            (Analyzing, AwaitingApproval, Reason::ApprovalRequired),
            (Analyzing, Skipped, Reason::NoMatchingRule),
            (Analyzing, Skipped, Reason::RecentlyRemediated),
            (Analyzing, Failed, Reason::RuleIncomplete),
            (AwaitingApproval, Executing, Reason::Approved),
            (AwaitingApproval, Cancelled, Reason::Rejected),
            (AwaitingApproval, Failed, Reason::ApprovalExpired),
            (AwaitingApproval, Failed, Reason::NoStormPlan),
            (Executing, Verifying, Reason::ActionFinished),
            (Executing, Failed, Reason::WorkflowFailed),
            (Verifying, Completed, Reason::Verified),
            (Verifying, Failed, Reason::VerificationFailed),
            (Processing, TimedOut, Reason::ProcessingTimeout),
            (Executing, TimedOut, Reason::ExecutingTimeout),
            (Blocked, TimedOut, Reason::RequestTimeout),
            (Executing, Failed, Reason::StageFailed),
        ];
        let c = clock();
        for (from, to, reason) in rows {
            let mut s = in_phase(from);
            enter(&mut s, &Transition::new(to, reason, "m"), &c)
                .unwrap_or_else(|e| panic!("{from} -> {to} ({reason}): {e}"));
            assert_eq!(s.phase, to);
            assert_eq!(
                s.phase_deadline.is_some(),
                c.timeouts.for_phase(to).is_some()
            );
            assert_eq!(s.retention_expiry_time.is_some(), to.is_terminal(), "{to}");
        }
    }

    #[test]
    fn a_transition_outside_the_table_is_refused_and_changes_nothing() {
        let c = clock();
        for (from, to) in [
            (Phase::Completed, Phase::Failed),
            (Phase::Executing, Phase::Skipped),
            (Phase::Processing, Phase::Executing),
            (Phase::Verifying, Phase::Executing),
        ] {
            let mut s = in_phase(from);
            assert!(enter(&mut s, &Transition::new(to, Reason::Started, ""), &c).is_err());
            assert_eq!(s, in_phase(from));
        }
    }

    #[test]
    fn deadlines_expire_phase_first_and_never_for_terminal_requests() {
        let c = clock();
        let past = Some(Time(Timestamp::UNIX_EPOCH));
        let mut s = in_phase(Phase::Executing);
        assert_eq!(expired(&s, &c.timeouts, c.now), None);
        s.deadline = past.clone();
        assert_eq!(
            expired(&s, &c.timeouts, c.now).map(|e| e.0),
            Some(Reason::RequestTimeout)
        );
        s.phase_deadline = past.clone();
        assert_eq!(
            expired(&s, &c.timeouts, c.now).map(|e| e.0),
            Some(Reason::ExecutingTimeout)
        );
        s.phase = Phase::Completed;
        assert_eq!(expired(&s, &c.timeouts, c.now), None);
        assert_eq!(next_deadline(&s), None);
    }

    #[test]
    fn a_timeout_interrupts_running_steps_and_an_unanswered_approval_fails() {
        let c = clock();
        let mut s = executing(&["a"]);
        let t = timed_out(
            &mut s,
            Reason::ExecutingTimeout,
            "too slow",
            c.timeouts.approval(),
            c.now,
        );
        assert_eq!(
            (t.to, t.reason),
            (Phase::TimedOut, Reason::ExecutingTimeout)
        );
        let step = &s.execution.as_ref().unwrap().steps[0];
        assert_eq!(step.phase, StepPhase::Failed);
        assert_eq!(step.message, "interrupted: too slow");
        assert!(
            s.conditions
                .iter()
                .any(|c| c.type_ == "Escalated" && c.status == "True")
        );

        let mut s = in_phase(Phase::AwaitingApproval);
        let t = timed_out(
            &mut s,
            Reason::ApprovalTimeout,
            "x",
            Duration::from_secs(900),
            c.now,
        );
        assert_eq!((t.to, t.reason), (Phase::Failed, Reason::ApprovalExpired));
        assert_eq!(t.message, "no approval within 900s; nothing was changed");
    }

    #[test]
    fn a_workflow_report_becomes_verifying_or_failed_with_the_rollback() {
        let c = clock();
        let mut s = executing(&["a", "b"]);
        let ok = WorkflowReport {
            succeeded: true,
            steps: vec![
                step("a", StepPhase::Succeeded, None),
                step("b", StepPhase::Succeeded, None),
            ],
            completion_order: vec!["a".into(), "b".into()],
            rollback_order: vec![],
            stopped: None,
        };
        let t = executed(&mut s, &ok, c.now);
        assert_eq!(
            (t.to, t.reason, t.message.as_str()),
            (
                Phase::Verifying,
                Reason::ActionFinished,
                "2 steps succeeded"
            )
        );
        assert_eq!(
            s.execution.as_ref().unwrap().result.map(|r| r.as_str()),
            Some("Succeeded")
        );

        let mut s = executing(&["a", "b"]);
        let failed = WorkflowReport {
            succeeded: false,
            steps: vec![
                step("a", StepPhase::RolledBack, None),
                step("b", StepPhase::Failed, Some("boom")),
            ],
            completion_order: vec!["a".into(), "b".into()],
            rollback_order: vec!["a".into()],
            stopped: None,
        };
        let t = executed(&mut s, &failed, c.now);
        assert_eq!(t.to, Phase::Failed);
        assert_eq!(
            t.message,
            "step b (restart_pod) failed: boom; rolled back a"
        );
        let steps = &s.execution.as_ref().unwrap().steps;
        assert_eq!(steps[0].phase, StepPhase::RolledBack);
        assert_eq!(steps[1].message, "boom");
        assert!(
            s.conditions
                .iter()
                .any(|c| c.type_ == "Executed" && c.status == "False")
        );
    }

    #[test]
    fn verification_completes_or_fails() {
        let c = clock();
        let mut s = in_phase(Phase::Verifying);
        use VerificationOutcome::*;
        let cases = [
            (Some(Effective), Phase::Completed, Reason::Verified, "True"),
            (None, Phase::Completed, Reason::NothingChanged, "True"),
            (
                Some(Inconclusive),
                Phase::Completed,
                Reason::Inconclusive,
                "Unknown",
            ),
            (
                Some(Ineffective),
                Phase::Failed,
                Reason::Ineffective,
                "False",
            ),
        ];
        for (outcome, phase, reason, truth) in cases {
            let t = verified(&mut s, Ok((outcome, "scored".into())), c.now);
            assert_eq!((t.to, t.reason), (phase, reason), "{outcome:?}");
            let cond = s.conditions.iter().find(|c| c.type_ == "Verified").unwrap();
            assert_eq!(cond.status, truth, "{outcome:?}");
        }
        assert_eq!(
            verified(&mut s, Err("not seen".into()), c.now).reason,
            Reason::VerificationFailed
        );
    }

    #[test]
    fn a_rejection_cancels_and_names_who_rejected() {
        let c = clock();
        let mut s = in_phase(Phase::AwaitingApproval);
        let t = record_decision(&mut s, false, "alice", c.now);
        assert_eq!(
            t,
            Some(Transition::new(
                Phase::Cancelled,
                Reason::Rejected,
                "rejected by alice"
            ))
        );
        let a = s.approval.as_ref().unwrap();
        assert_eq!(
            (a.decision.map(|d| d.as_str()), a.decided_by.as_deref()),
            (Some("rejected"), Some("alice"))
        );
        let mut s = in_phase(Phase::AwaitingApproval);
        assert_eq!(record_decision(&mut s, true, "bob", c.now), None);
        assert!(
            s.conditions
                .iter()
                .any(|c| c.type_ == "Approved" && c.status == "True")
        );
    }

    #[test]
    fn conditions_move_their_transition_time_only_when_their_status_changes() {
        let c = clock();
        let later = Timestamp::from_second(1_800_000_100).unwrap_or(c.now);
        let mut s = RemediationRequestStatus::default();
        set_condition(&mut s, Cond::Held, Truth::True, "TargetBusy", c.now);
        set_condition(
            &mut s,
            Cond::Held,
            Truth::True,
            "ConsecutiveFailures",
            later,
        );
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.conditions[0].last_transition_time, Time(c.now));
        assert_eq!(s.conditions[0].reason, "ConsecutiveFailures");
        set_condition(&mut s, Cond::Held, Truth::False, "HoldReleased", later);
        assert_eq!(s.conditions[0].last_transition_time, Time(later));
    }

    #[test]
    fn priority_combines_environment_and_severity() {
        assert_eq!(priority("production", "critical"), "P0");
        assert_eq!(priority("production", "warning"), "P1");
        assert_eq!(priority("staging", "critical"), "P1");
        assert_eq!(priority("unknown", "warning"), "P2");
        assert_eq!(priority("development", "info"), "P3");
    }
}

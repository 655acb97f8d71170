//! The controller's supervision tree (K-RR-3). A [`root::Root`] links the
//! [`registry::Registry`], the [`janitor::Janitor`] and the
//! [`membership::Membership`] actor, and restarts them under one restart
//! policy ([`children`]). The registry, fed by the request watch, spawns one
//! [`supervisor::Supervisor`] per non-terminal `RemediationRequest` this
//! replica owns; a supervisor drives its request through Processing →
//! Analyzing → Executing → Verifying → Completed, each phase's work in a
//! stage actor, Executing's in the [`workflow`] actor over the action
//! catalogue. Decisions (rules, prompt and answer handling, the approval
//! policy) are the `kubernaut-decide` crate's.
//!
//! No handler awaits the network or the database: API calls, status
//! writes and audit queries run in tasks or stage actors that report back
//! as messages, and audit records are queued without waiting, so a slow
//! or dead dependency never blocks a mailbox.

pub mod analysis;
pub use kubernaut_decide::approval;
pub mod backfill;
pub mod children;
pub mod controller;
pub mod holds;
pub mod janitor;
pub mod mailbox;
pub mod membership;
pub mod metrics;
pub mod ports;
pub mod registry;
pub mod root;
pub use kubernaut_decide::rules;
pub mod shard;
pub mod supervisor;
pub mod tasks;
pub mod worker;
pub mod workflow;

use std::time::Duration;

use kubernaut_api::Phase;
use kubernaut_cluster::{Cluster, ExecSettings};
use kubernaut_store::AuditLog;

pub use children::RestartPolicy;
pub use metrics::{ActorKind, Metrics};
pub use rules::Rule;
pub use worker::Chaos;

/// What every actor of the tree shares: read-only handles.
pub struct Context {
    /// This replica's name: the owner it writes into the requests it drives.
    pub identity: String,
    pub cluster: Cluster,
    pub audit: AuditLog,
    pub rules: Vec<Rule>,
    pub metrics: Metrics,
    pub settings: Settings,
    /// The cluster's requests by target, for routing holds (K-RR-8); kept
    /// by the registry from the watch.
    pub holds: holds::Holds,
    /// The LLM path of the Analysis stage (K-AI-1), when configured.
    pub analyst: analysis::Analyst,
    /// The approval gate (K-AI-4).
    pub approval: approval::ApprovalPolicy,
    /// Kubernetes Events on requests (transitions, escalations).
    pub events: kubernaut_cluster::EventSink,
    /// Approvals waiting and escalations, to the configured receivers.
    pub notifier: kubernaut_notify::Notifier,
    /// The scorers of Verifying (K-AU-2) and their window.
    pub verifier: kubernaut_verify::Verifier,
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// How long Verifying waits for the action to show its effect.
    pub verify_timeout: Duration,
    /// How failed actors are restarted, at every level of the tree.
    pub restart: RestartPolicy,
    /// Fault injection (tests, game days); off by default.
    pub chaos: Chaos,
    /// How actions run (bounds, dry-run modes, locks, Job templates); the
    /// holder is set per request.
    pub executor: ExecSettings,
    /// A workflow step's attempt timeout when the step gives none.
    pub step_timeout: Duration,
    /// How long a request's status that nothing waits for may wait for
    /// the next one, to be written with it (see `supervisor::status`).
    pub status_linger: Duration,
    /// Supervise only the requests of this namespace; `None` for all.
    pub watch_namespace: Option<String>,
    pub timeouts: Timeouts,
    /// How long a terminal request is kept (K-RR-9).
    pub retention: Duration,
    pub membership: membership::MembershipSettings,
    /// On shutdown, how long in-flight workflows may run to their end.
    pub shutdown_grace: Duration,
    pub holds: holds::HoldSettings,
    /// How often the janitor sweeps (K-RR-9).
    pub janitor_interval: Duration,
    /// How long after a request ended the janitor expects its final audit
    /// record in PostgreSQL before rebuilding it from the status.
    pub audit_grace: Duration,
    /// How an approved storm fans out over its targets.
    pub storm: rules::StormPolicy,
    /// How much may change at once before a human is asked.
    pub budget: holds::Budget,
    /// When a rule's choice is passed over for its recent outcomes.
    pub learning: rules::Learning,
}

/// K-RR-4: how long a whole remediation and each phase may take. Keyed by
/// phase, so that a new phase is its row in the phase table, its stage and
/// its configured limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Duration,
    /// By `Phase as usize`; `None` for phases that wait for nothing
    /// (Pending, Blocked, which ends at `blockedUntil`) and terminal ones.
    phases: [Option<Duration>; Phase::ALL.len()],
}

impl Default for Timeouts {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        Self {
            request: m(60),
            phases: [None; Phase::ALL.len()],
        }
        .with(Phase::Processing, m(5))
        .with(Phase::Analyzing, m(10))
        .with(Phase::AwaitingApproval, m(15))
        .with(Phase::Executing, m(30))
        .with(Phase::Verifying, m(30))
    }
}

impl Timeouts {
    /// The same, with `phase` limited to `limit`.
    pub fn with(mut self, phase: Phase, limit: Duration) -> Self {
        self.phases[phase as usize] = Some(limit);
        self
    }

    /// The phase's own limit, if it has one.
    pub fn for_phase(&self, phase: Phase) -> Option<Duration> {
        self.phases[phase as usize]
    }

    /// How long a human has to approve (AwaitingApproval's limit).
    pub fn approval(&self) -> Duration {
        self.for_phase(Phase::AwaitingApproval).unwrap_or_default()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            verify_timeout: Duration::from_secs(60),
            restart: RestartPolicy::default(),
            chaos: Chaos::default(),
            executor: ExecSettings::default(),
            step_timeout: Duration::from_secs(120),
            status_linger: supervisor::status::LINGER,
            watch_namespace: None,
            timeouts: Timeouts::default(),
            retention: Duration::from_secs(24 * 3600),
            membership: membership::MembershipSettings::default(),
            shutdown_grace: Duration::from_secs(30),
            holds: holds::HoldSettings::default(),
            janitor_interval: Duration::from_secs(60),
            audit_grace: Duration::from_secs(60),
            storm: rules::StormPolicy::default(),
            budget: holds::Budget::default(),
            learning: rules::Learning::default(),
        }
    }
}

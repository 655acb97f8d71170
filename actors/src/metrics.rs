//! Controller metrics (K-OP-1): for every actor kind its mailbox depth, the
//! time messages wait in the mailbox, messages handled, handling time,
//! restarts and live actors; supervisors by phase; phase transitions; actions
//! by type and result; stage durations; status-patch latency and conflicts;
//! escalations; verification outcomes; what the janitor deleted and deferred; LLM calls, their
//! latency and tokens, the circuit breaker, analysis paths and fallbacks,
//! and approval-policy verdicts.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use kubernaut_api::Phase;

/// The kinds of actor in the tree, one label value each.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ActorKind {
    registry,
    supervisor,
    processing,
    analysis,
    workflow,
    step,
    verification,
    /// Reads the targets of an approved storm.
    approval,
    /// Checks, after a restart, whether interrupted steps took effect.
    resume,
    /// Undoes a failed workflow's completed steps.
    rollback,
    janitor,
    membership,
    /// The root of the tree.
    root,
}

impl ActorKind {
    pub const ALL: [ActorKind; 13] = [
        ActorKind::registry,
        ActorKind::supervisor,
        ActorKind::processing,
        ActorKind::analysis,
        ActorKind::workflow,
        ActorKind::step,
        ActorKind::verification,
        ActorKind::approval,
        ActorKind::resume,
        ActorKind::rollback,
        ActorKind::janitor,
        ActorKind::membership,
        ActorKind::root,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabels {
    pub actor: ActorKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub mailbox_depth: Family<ActorLabels, Gauge>,
    pub mailbox_wait: Family<ActorLabels, Histogram>,
    pub handling: Family<ActorLabels, Histogram>,
    pub handled: Family<ActorLabels, Counter>,
    pub restarts: Family<ActorLabels, Counter>,
    pub live: Family<ActorLabels, Gauge>,
    pub supervisors_by_phase: Family<PhaseLabels, Gauge>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub actions: Family<ActionLabels, Counter>,
    pub stage_seconds: Family<StageLabels, Histogram>,
    pub status_patch_seconds: Histogram,
    pub status_conflicts: Counter,
    pub status_write_errors: Counter,
    pub escalations: Family<StageLabels, Counter>,
    /// Verification outcomes (K-AU-2).
    pub verifications: Family<OutcomeLabels, Counter>,
    pub retention_deleted: Counter,
    pub retention_deferred: Family<ReasonLabels, Counter>,
    pub audit_backfilled: Counter,
    pub audit_dropped: Counter,
    pub requests_malformed: Counter,
    pub events_dropped: Counter,
    pub llm_calls: Family<LlmLabels, Counter>,
    pub llm_seconds: Family<ProviderLabels, Histogram>,
    pub llm_tokens: Family<TokenLabels, Counter>,
    pub llm_breaker: Family<ProviderLabels, Gauge>,
    pub analyses: Family<PathLabels, Counter>,
    pub fallbacks: Family<ReasonLabels, Counter>,
    pub approvals: Family<ReasonLabels, Counter>,
    /// This replica's membership Lease renewals, by result (ok, failed).
    pub renewals: Family<ResultLabels, Counter>,
    /// The live replicas this replica's last look found.
    pub members: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LlmLabels {
    pub provider: &'static str,
    /// `ok`, `invalid` (answered, but not valid against the catalogue), or
    /// the error's reason.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub provider: &'static str,
    /// `prompt` or `completion`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// `llm` or `rules`.
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

fn seconds() -> Histogram {
    // 50 µs … ~27 min: mailbox waits are sub-millisecond, stages take minutes.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 25))
}

impl Default for Metrics {
    /// Unregistered: for runs that nobody scrapes (tools, benchmarks).
    fn default() -> Self {
        Self {
            mailbox_depth: Family::default(),
            mailbox_wait: Family::new_with_constructor(seconds),
            handling: Family::new_with_constructor(seconds),
            handled: Family::default(),
            restarts: Family::default(),
            live: Family::default(),
            supervisors_by_phase: Family::default(),
            transitions: Family::default(),
            actions: Family::default(),
            stage_seconds: Family::new_with_constructor(seconds),
            status_patch_seconds: seconds(),
            status_conflicts: Counter::default(),
            status_write_errors: Counter::default(),
            escalations: Family::default(),
            verifications: Family::default(),
            retention_deleted: Counter::default(),
            retention_deferred: Family::default(),
            audit_backfilled: Counter::default(),
            audit_dropped: Counter::default(),
            requests_malformed: Counter::default(),
            events_dropped: Counter::default(),
            llm_calls: Family::default(),
            llm_seconds: Family::new_with_constructor(seconds),
            llm_tokens: Family::default(),
            llm_breaker: Family::default(),
            analyses: Family::default(),
            fallbacks: Family::default(),
            approvals: Family::default(),
            renewals: Family::default(),
            members: Gauge::default(),
        }
    }
}

/// What a status writer counts. Every live request has a writer, so it
/// holds these three rather than a copy of all of [`Metrics`].
#[derive(Clone)]
pub struct WriteMetrics {
    pub seconds: Histogram,
    pub conflicts: Counter,
    pub errors: Counter,
}

impl Metrics {
    pub fn writes(&self) -> WriteMetrics {
        WriteMetrics {
            seconds: self.status_patch_seconds.clone(),
            conflicts: self.status_conflicts.clone(),
            errors: self.status_write_errors.clone(),
        }
    }

    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        // Every kind has its restart series from the start, at 0: a
        // dashboard shows 0, not "no data", and rate() sees the first one.
        for actor in ActorKind::ALL {
            let _series = m.restarts.get_or_create(&ActorLabels { actor });
        }
        // Likewise both renewal results, so that an alert on failures has
        // a series to compare against before the first one.
        for result in ["ok", "failed"] {
            let _series = m.renewals.get_or_create(&ResultLabels { result });
        }
        // Verification outcomes too: a storm of notify-only requests
        // scores nothing, and "no Ineffective" should read 0.
        for outcome in [
            kubernaut_api::VerificationOutcome::Effective,
            kubernaut_api::VerificationOutcome::Ineffective,
            kubernaut_api::VerificationOutcome::Inconclusive,
        ] {
            let outcome = outcome.as_str();
            let _series = m.verifications.get_or_create(&OutcomeLabels { outcome });
        }
        for reason in crate::supervisor::transitions::Reason::ESCALATIONS {
            let stage = reason.as_str();
            let _series = m.escalations.get_or_create(&StageLabels { stage });
        }
        let r = registry;
        r.register(
            "actor_mailbox_depth",
            "Messages waiting in actor mailboxes",
            m.mailbox_depth.clone(),
        );
        r.register(
            "actor_mailbox_wait_seconds",
            "Time a message waits in an actor's mailbox",
            m.mailbox_wait.clone(),
        );
        r.register(
            "actor_handling_seconds",
            "Time an actor takes to handle a message",
            m.handling.clone(),
        );
        r.register(
            "actor_messages_handled",
            "Messages handled by actors",
            m.handled.clone(),
        );
        r.register(
            "actor_restarts",
            "Actors restarted after a failure or panic",
            m.restarts.clone(),
        );
        r.register("actors_live", "Live actors", m.live.clone());
        r.register(
            "supervisors",
            "Live request supervisors by phase",
            m.supervisors_by_phase.clone(),
        );
        r.register(
            "phase_transitions",
            "Request phase transitions",
            m.transitions.clone(),
        );
        r.register("actions", "Actions by type and result", m.actions.clone());
        r.register(
            "stage_duration_seconds",
            "Time spent per stage",
            m.stage_seconds.clone(),
        );
        r.register(
            "status_patch_seconds",
            "Latency of request status writes",
            m.status_patch_seconds.clone(),
        );
        r.register(
            "status_patch_conflicts",
            "Status writes refused because the request changed (retried)",
            m.status_conflicts.clone(),
        );
        r.register(
            "status_write_errors",
            "Failed status writes (retried)",
            m.status_write_errors.clone(),
        );
        r.register(
            "escalations",
            "Escalations recorded, by cause",
            m.escalations.clone(),
        );
        r.register(
            "verifications",
            "Verified remediations, by outcome (Effective, Ineffective, Inconclusive)",
            m.verifications.clone(),
        );
        r.register(
            "retention_deleted",
            "Terminal requests deleted by the janitor after their retention",
            m.retention_deleted.clone(),
        );
        r.register(
            "retention_deferred",
            "Expired requests the janitor kept, by reason (audit record not confirmed or PostgreSQL unavailable, delete failed)",
            m.retention_deferred.clone(),
        );
        r.register(
            "audit_backfilled",
            "Terminal requests whose audit records were rebuilt from their status (their replica died before writing them)",
            m.audit_backfilled.clone(),
        );
        r.register(
            "audit_dropped",
            "Audit records dropped because the audit queue was full (the janitor rebuilds a terminal request's records from its status)",
            m.audit_dropped.clone(),
        );
        r.register(
            "events_dropped",
            "Kubernetes Events on requests dropped because their queue was full",
            m.events_dropped.clone(),
        );
        r.register(
            "requests_malformed",
            "RemediationRequests the watch saw that do not parse (skipped)",
            m.requests_malformed.clone(),
        );
        r.register(
            "llm_calls",
            "LLM calls by provider and outcome (ok, invalid output, or the error)",
            m.llm_calls.clone(),
        );
        r.register(
            "llm_call_seconds",
            "Latency of LLM calls",
            m.llm_seconds.clone(),
        );
        r.register(
            "llm_tokens",
            "Tokens the LLM reported, by kind (prompt, completion)",
            m.llm_tokens.clone(),
        );
        r.register(
            "llm_circuit_breaker_state",
            "The LLM provider's circuit breaker: 0 closed, 1 open, 2 half-open",
            m.llm_breaker.clone(),
        );
        r.register(
            "analyses",
            "Analyses by the path that decided (llm, rules)",
            m.analyses.clone(),
        );
        r.register(
            "analysis_fallbacks",
            "Analyses the rules decided although an LLM is configured, by reason",
            m.fallbacks.clone(),
        );
        r.register(
            "approval_decisions",
            "Approval-policy verdicts (required, not_required, policy_error)",
            m.approvals.clone(),
        );
        r.register(
            "membership_renewals",
            "Renewals of this replica's membership Lease, by result (ok, failed)",
            m.renewals.clone(),
        );
        r.register(
            "members_live",
            "Live replicas, as this replica's last membership check found them",
            m.members.clone(),
        );
        m
    }

    pub fn actor(&self, actor: ActorKind) -> ActorLabels {
        ActorLabels { actor }
    }

    /// Counts one restart of an actor of `kind`.
    pub fn restarted(&self, kind: ActorKind) {
        self.restarts.get_or_create(&self.actor(kind)).inc();
    }
}

/// One supervisor's place in the supervisors-by-phase gauge; it leaves
/// the gauge when dropped with the supervisor's state, however the
/// supervisor ends (ractor skips `post_stop` when an actor panics or is
/// killed).
pub struct PhaseCount {
    /// The one family, not all of [`Metrics`]: every live supervisor holds
    /// one of these.
    by_phase: Family<PhaseLabels, Gauge>,
    phase: Phase,
}

impl PhaseCount {
    pub fn new(metrics: &Metrics, phase: Phase) -> Self {
        let count = Self {
            by_phase: metrics.supervisors_by_phase.clone(),
            phase,
        };
        count.gauge().inc();
        count
    }

    fn gauge(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.by_phase
            .get_or_create(&PhaseLabels {
                phase: self.phase.as_str(),
            })
            .clone()
    }

    pub fn set(&mut self, to: Phase) {
        self.gauge().dec();
        self.phase = to;
        self.gauge().inc();
    }
}

impl Drop for PhaseCount {
    fn drop(&mut self) {
        self.gauge().dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_actor_kind_has_a_restart_series_at_zero() {
        let mut registry = Registry::default();
        let _m = Metrics::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for kind in ActorKind::ALL {
            let line = format!("actor_restarts_total{{actor=\"{kind:?}\"}} 0");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        for outcome in ["Effective", "Ineffective", "Inconclusive"] {
            let line = format!("verifications_total{{outcome=\"{outcome}\"}} 0");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }
}

//! Controller metrics (K-OP-1): for every actor kind its mailbox depth, the
//! time messages wait in the mailbox, messages handled, handling time,
//! restarts and live actors; supervisors by phase; phase transitions; actions
//! by type and result; stage durations; status-patch latency and conflicts;
//! escalations; what the janitor deleted and deferred.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    janitor,
    membership,
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
    pub retention_deleted: Counter,
    pub retention_deferred: Family<ReasonLabels, Counter>,
    pub audit_backfilled: Counter,
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
            retention_deleted: Counter::default(),
            retention_deferred: Family::default(),
            audit_backfilled: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
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
        m
    }

    pub fn actor(&self, actor: ActorKind) -> ActorLabels {
        ActorLabels { actor }
    }
}

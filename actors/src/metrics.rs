//! Controller metrics (K-OP-1): live supervisors, phase transitions, actions
//! by type and result, stage durations, supervisor restarts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub from: &'static str,
    pub to: &'static str,
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
    pub live_supervisors: Gauge,
    pub transitions: Family<TransitionLabels, Counter>,
    pub actions: Family<ActionLabels, Counter>,
    pub stage_seconds: Family<StageLabels, Histogram>,
    pub supervisor_restarts: Counter,
    pub status_write_errors: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            live_supervisors: Gauge::default(),
            transitions: Family::default(),
            actions: Family::default(),
            stage_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            supervisor_restarts: Counter::default(),
            status_write_errors: Counter::default(),
        };
        registry.register(
            "supervisors_live",
            "Live request supervisors",
            m.live_supervisors.clone(),
        );
        registry.register(
            "phase_transitions",
            "Request phase transitions",
            m.transitions.clone(),
        );
        registry.register("actions", "Actions by type and result", m.actions.clone());
        registry.register(
            "stage_duration_seconds",
            "Time spent per stage",
            m.stage_seconds.clone(),
        );
        registry.register(
            "supervisor_restarts",
            "Supervisor restarts after failure",
            m.supervisor_restarts.clone(),
        );
        registry.register(
            "status_write_errors",
            "Failed status writes (retried)",
            m.status_write_errors.clone(),
        );
        m
    }
}

//! Intake metrics (K-OP-1): Redis fallbacks per operation and the outcome of
//! creation attempts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CreateLabels {
    /// created; taken (another creator, or a request the view had not seen
    /// yet, holds the name); vanished (taken and deleted again)
    result: &'static str,
}

#[derive(Clone, Default)]
pub struct IntakeMetrics {
    redis_fallbacks: Family<OpLabels, Counter>,
    creations: Family<CreateLabels, Counter>,
    /// All operations together, for tests and logs (not exported).
    fallbacks_total: Counter,
}

impl IntakeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "intake_redis_fallbacks",
            "Redis operations that failed and fell back to the Kubernetes API",
            m.redis_fallbacks.clone(),
        );
        registry.register(
            "intake_creations",
            "Attempts to create a fingerprint's next request, by result",
            m.creations.clone(),
        );
        m
    }

    pub(crate) fn redis_fallback(&self, op: &'static str) {
        self.redis_fallbacks.get_or_create(&OpLabels { op }).inc();
        self.fallbacks_total.inc();
    }

    pub(crate) fn creation(&self, result: &'static str) {
        self.creations.get_or_create(&CreateLabels { result }).inc();
    }

    /// Fallbacks so far, all operations together (for tests and logs).
    pub fn redis_fallbacks_total(&self) -> u64 {
        self.fallbacks_total.get()
    }
}

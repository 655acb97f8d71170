//! Gateway metrics (K-OP-1): signals by source and outcome, intake errors,
//! and request latency per endpoint.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub source: &'static str,
    /// received, created, duplicate, storm_aggregated, rejected, resolved,
    /// invalid, unauthorized, forbidden, rate_limited, error
    pub outcome: &'static str,
    /// The reject or error reason; empty otherwise.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
    /// The HTTP status answered.
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    /// confirmed, confirm_failed, unconfirmed, unsubscribed
    pub result: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub signals: Family<SignalLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram>,
    /// Alerts Alertmanager left out of a notification (`truncatedAlerts`).
    pub truncated: Counter,
    /// SNS subscription confirmations and unsubscriptions.
    pub sns_subscriptions: Family<SubscriptionLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let signals = Family::<SignalLabels, Counter>::default();
        registry.register("signals", "Signals by source and outcome", signals.clone());
        // 0.5 ms .. ~4 s: a request that creates a resource takes a few API calls.
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register(
            "request_duration_seconds",
            "Gateway request handling time",
            latency.clone(),
        );
        let truncated = Counter::default();
        registry.register(
            "alertmanager_truncated_alerts",
            "Alerts Alertmanager truncated from notifications (raise max_alerts on its receiver)",
            truncated.clone(),
        );
        let sns_subscriptions = Family::<SubscriptionLabels, Counter>::default();
        registry.register(
            "sns_subscriptions",
            "SNS subscription confirmations and unsubscriptions by result",
            sns_subscriptions.clone(),
        );
        Self {
            signals,
            latency,
            truncated,
            sns_subscriptions,
        }
    }

    pub fn sns_subscription(&self, result: &'static str) {
        self.sns_subscriptions
            .get_or_create(&SubscriptionLabels { result })
            .inc();
    }

    pub fn count(&self, source: &'static str, outcome: &'static str, reason: &'static str) {
        self.signals
            .get_or_create(&SignalLabels {
                source,
                outcome,
                reason,
            })
            .inc();
    }
}

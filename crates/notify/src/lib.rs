//! Notifications (K-NT-1): who is told about approvals waiting and
//! escalations. Actors hand a [`Notification`] to the [`Notifier`] without
//! waiting (a bounded queue; when it is full the notification is dropped
//! and counted), so a dead channel never blocks a mailbox. One task routes
//! each notification to its receivers like Alertmanager does (the first
//! matching route, or every matching one with `continue`), suppresses
//! repeats (one message per request, event kind and receiver within the
//! repeat interval) and delivers with retries, backoff and jitter, a few
//! deliveries at a time. Every delivery and failure is counted and handed
//! back through [`Delivered`] for the audit trail.
//!
//! Channels ([`channels`]): a generic webhook (JSON, signed with
//! HMAC-SHA256; the schema is [`Payload`]; the signature is
//! `X-Kubernaut-Signature: sha256=<hex>` over
//! `<X-Kubernaut-Timestamp>.<body>`), Slack incoming webhooks (Block Kit,
//! optionally with Approve and Reject buttons), Microsoft Teams incoming
//! webhooks (an Adaptive Card), PagerDuty's Events API v2 (`dedup_key` from
//! the fingerprint) and email over SMTP. Secrets (keys, webhook URLs,
//! routing keys, SMTP credentials) are read from files.

pub mod channels;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashlink::LruCache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

use channels::{Channel, deliver};
pub use channels::{
    Email, EmailTls, PagerDuty, Receiver, Slack, Teams, Webhook, email_text, pagerduty_event,
    signature, slack_message, teams_card,
};

/// What happened, in the words routes match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ApprovalRequired,
    Escalation,
    Completed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ApprovalRequired => "approval_required",
            Kind::Escalation => "escalation",
            Kind::Completed => "completed",
        }
    }
}

/// One thing to tell people about a request.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub severity: String,
    pub environment: String,
    /// One line for a human.
    pub summary: String,
    /// The signal's fingerprint: one incident, one PagerDuty alert.
    pub fingerprint: String,
    /// The reasons, the policy's verdict, how to approve: per kind.
    pub detail: serde_json::Value,
}

/// The generic webhook's body (documented schema, version 1).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload<'a> {
    pub version: &'static str,
    pub receiver: &'a str,
    #[serde(flatten)]
    pub notification: &'a Notification,
    /// Seconds since the epoch.
    pub sent_at: u64,
}

/// A route: matchers on `kind`, `severity`, `environment`, `namespace`
/// (all must equal), and the receiver.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    pub receiver: String,
    /// Go on to the next routes after a match.
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
}

impl Route {
    fn matches(&self, n: &Notification) -> bool {
        self.matchers.iter().all(|(k, v)| {
            let have = match k.as_str() {
                "kind" => n.kind.as_str(),
                "severity" => &n.severity,
                "environment" => &n.environment,
                "namespace" => &n.namespace,
                _ => return false,
            };
            have == v
        })
    }
}

/// `notifications` in the configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    pub receivers: Vec<Receiver>,
    pub routes: Vec<Route>,
    /// One message per request, kind and receiver within this.
    pub repeat_interval_seconds: u64,
    pub queue: usize,
    /// Attempts after the first.
    pub retries: u32,
    pub timeout_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            receivers: Vec::new(),
            routes: Vec::new(),
            repeat_interval_seconds: 3600,
            queue: 1024,
            retries: 4,
            timeout_seconds: 10,
        }
    }
}

/// The receivers a notification goes to, in route order.
pub fn route<'a>(routes: &'a [Route], n: &Notification) -> Vec<&'a str> {
    let mut out = Vec::new();
    for r in routes {
        if r.matches(n) {
            if !out.contains(&r.receiver.as_str()) {
                out.push(r.receiver.as_str());
            }
            if !r.continue_matching {
                break;
            }
        }
    }
    out
}

/// How a delivery ended, for the audit trail.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivered {
    pub notification: Notification,
    pub receiver: String,
    pub attempts: u32,
    /// `None` when it was delivered.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    receiver: String,
    outcome: &'static str,
}

#[derive(Clone, Default)]
pub struct Metrics {
    sent: Family<Labels, Counter>,
    dropped: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "notifications",
            "Notifications by receiver and outcome (delivered, failed, suppressed)",
            m.sent.clone(),
        );
        registry.register(
            "notifications_dropped",
            "Notifications dropped because the notifier's queue was full",
            m.dropped.clone(),
        );
        m
    }

    fn count(&self, receiver: &str, outcome: &'static str) {
        self.sent
            .get_or_create(&Labels {
                receiver: receiver.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn sent(&self, receiver: &str, outcome: &'static str) -> u64 {
        self.sent
            .get_or_create(&Labels {
                receiver: receiver.to_string(),
                outcome,
            })
            .get()
    }
}

/// The actors' handle: [`Notifier::send`] never waits.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Notification>>,
    metrics: Metrics,
}

impl Notifier {
    /// A notifier that tells no one (no receivers configured).
    pub fn off() -> Self {
        Self {
            tx: None,
            metrics: Metrics::default(),
        }
    }

    pub fn send(&self, n: Notification) {
        if let Some(tx) = &self.tx
            && tx.try_send(n).is_err()
        {
            self.metrics.dropped.inc();
        }
    }
}

/// Deliveries in flight at once, over all receivers.
const IN_FLIGHT: usize = 8;
/// (request uid, kind, receiver) remembered for repeat suppression.
const REMEMBERED: usize = 10_000;

/// Starts the notifier; `audit` is told of every delivery's end. An
/// error names what is wrong in the settings (an unknown receiver, an
/// unreadable secret file).
pub fn start(
    settings: &Settings,
    metrics: Metrics,
    audit: impl Fn(Delivered) + Send + Sync + 'static,
) -> Result<(Notifier, tokio::task::JoinHandle<()>), String> {
    let channels = settings
        .receivers
        .iter()
        .map(|r| Channel::of(r, Duration::from_secs(settings.timeout_seconds.max(1))))
        .collect::<Result<Vec<_>, _>>()?;
    for route in &settings.routes {
        if !channels.iter().any(|c| c.name == route.receiver) {
            return Err(format!(
                "notifications.routes: unknown receiver {:?}",
                route.receiver
            ));
        }
    }
    // Each receiver's series exist from the start, at 0: dashboards show
    // 0 rather than no data, and an alert's increase() sees the first
    // failure.
    for c in &channels {
        for outcome in ["delivered", "failed"] {
            let _series = metrics.sent.get_or_create(&Labels {
                receiver: c.name.clone(),
                outcome,
            });
        }
    }
    // reqwest is built without a default TLS provider (see the workspace's
    // Cargo.toml); an error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(settings.timeout_seconds.max(1)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let (tx, rx) = mpsc::channel(settings.queue.max(1));
    let worker = Worker {
        channels: channels
            .into_iter()
            .map(|c| (c.name.clone(), Arc::new(c)))
            .collect(),
        routes: settings.routes.clone(),
        repeat: Duration::from_secs(settings.repeat_interval_seconds),
        retries: settings.retries,
        recent: LruCache::new(REMEMBERED),
        http,
        metrics: metrics.clone(),
        audit: Arc::new(audit),
        slots: Arc::new(Semaphore::new(IN_FLIGHT)),
    };
    let task = tokio::spawn(worker.run(rx));
    Ok((
        Notifier {
            tx: Some(tx),
            metrics,
        },
        task,
    ))
}

struct Worker {
    channels: BTreeMap<String, Arc<Channel>>,
    routes: Vec<Route>,
    repeat: Duration,
    retries: u32,
    recent: LruCache<(String, Kind, String), Instant>,
    http: reqwest::Client,
    metrics: Metrics,
    audit: Arc<dyn Fn(Delivered) + Send + Sync>,
    slots: Arc<Semaphore>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Notification>) {
        while let Some(n) = rx.recv().await {
            for receiver in route(&self.routes, &n) {
                let key = (n.uid.clone(), n.kind, receiver.to_string());
                let now = Instant::now();
                if self
                    .recent
                    .get(&key)
                    .is_some_and(|at| now.duration_since(*at) < self.repeat)
                {
                    self.metrics.count(receiver, "suppressed");
                    continue;
                }
                self.recent.insert(key, now);
                let Some(channel) = self.channels.get(receiver).cloned() else {
                    continue;
                };
                let Ok(slot) = self.slots.clone().acquire_owned().await else {
                    return;
                };
                let (http, metrics, audit, n) = (
                    self.http.clone(),
                    self.metrics.clone(),
                    self.audit.clone(),
                    n.clone(),
                );
                let retries = self.retries;
                tokio::spawn(async move {
                    let _slot = slot;
                    let (attempts, error) = deliver(&http, &channel, &n, retries).await;
                    metrics.count(
                        &channel.name,
                        if error.is_none() {
                            "delivered"
                        } else {
                            "failed"
                        },
                    );
                    if let Some(e) = &error {
                        tracing::warn!(receiver = %channel.name, request = %n.name, error = %e, "a notification could not be delivered");
                    }
                    audit(Delivered {
                        notification: n,
                        receiver: channel.name.clone(),
                        attempts,
                        error,
                    });
                });
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A notification about `shop/r` (the channels' tests use it too).
    pub(crate) fn n(kind: Kind, env: &str) -> Notification {
        Notification {
            kind,
            namespace: "shop".into(),
            name: "r".into(),
            uid: "u".into(),
            severity: "critical".into(),
            environment: env.into(),
            summary: "s".into(),
            fingerprint: "f1".into(),
            detail: serde_json::json!({"approve": {"kubectl": "kubectl annotate"}}),
        }
    }

    fn r(matchers: &[(&str, &str)], receiver: &str, cont: bool) -> Route {
        Route {
            matchers: matchers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            receiver: receiver.into(),
            continue_matching: cont,
        }
    }

    #[test]
    fn routes_match_like_alertmanagers_first_match_unless_continue() {
        let routes = [
            r(
                &[("kind", "approval_required"), ("environment", "production")],
                "pager",
                true,
            ),
            r(&[("kind", "approval_required")], "chat", false),
            r(&[], "everything", false),
        ];
        assert_eq!(
            route(&routes, &n(Kind::ApprovalRequired, "production")),
            ["pager", "chat"]
        );
        assert_eq!(
            route(&routes, &n(Kind::ApprovalRequired, "staging")),
            ["chat"]
        );
        assert_eq!(
            route(&routes, &n(Kind::Escalation, "production")),
            ["everything"]
        );
        assert!(
            route(
                &[r(&[("team", "x")], "a", false)],
                &n(Kind::Escalation, "p")
            )
            .is_empty()
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_and_body() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let sig = signature(&key, 1_700_000_000, b"{}");
        let expected = ring::hmac::sign(&key, b"1700000000.{}");
        assert_eq!(sig, format!("sha256={}", hex::encode(expected.as_ref())));
    }
}

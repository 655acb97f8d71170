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
//! Channels: a generic webhook (JSON, signed with HMAC-SHA256; the schema
//! is [`Payload`]). The signature is `X-Kubernaut-Signature: sha256=<hex>`
//! over `<X-Kubernaut-Timestamp>.<body>`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hashlink::LruCache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

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

/// Where notifications go.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Receiver {
    pub name: String,
    pub webhook: Option<Webhook>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    /// A file holding the HMAC key (a mounted Secret), never the key itself.
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
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

/// A receiver ready to deliver.
struct Channel {
    name: String,
    url: String,
    key: Option<ring::hmac::Key>,
}

/// Deliveries in flight at once, over all receivers.
const IN_FLIGHT: usize = 8;
/// (request uid, kind, receiver) remembered for repeat suppression.
const REMEMBERED: usize = 10_000;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Starts the notifier; `audit` is told of every delivery's end. An
/// error names what is wrong in the settings (an unknown receiver, an
/// unreadable secret file).
pub fn start(
    settings: &Settings,
    metrics: Metrics,
    audit: impl Fn(Delivered) + Send + Sync + 'static,
) -> Result<(Notifier, tokio::task::JoinHandle<()>), String> {
    let mut channels = Vec::new();
    for r in &settings.receivers {
        let Some(w) = &r.webhook else {
            return Err(format!("notifications.receivers[{}]: no channel", r.name));
        };
        let key = match &w.secret_file {
            Some(f) => {
                let secret = std::fs::read(f).map_err(|e| {
                    format!(
                        "notifications.receivers[{}].webhook.secretFile: {}: {e}",
                        r.name,
                        f.display()
                    )
                })?;
                let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
                Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret))
            }
            None => None,
        };
        channels.push(Channel {
            name: r.name.clone(),
            url: w.url.clone(),
            key,
        });
    }
    for route in &settings.routes {
        if !channels.iter().any(|c| c.name == route.receiver) {
            return Err(format!(
                "notifications.routes: unknown receiver {:?}",
                route.receiver
            ));
        }
    }
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

/// The signature header's value for `body` sent at `timestamp`.
pub fn signature(key: &ring::hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// Up to `1 + retries` attempts; the attempts made and the last error.
async fn deliver(
    http: &reqwest::Client,
    channel: &Channel,
    n: &Notification,
    retries: u32,
) -> (u32, Option<String>) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let body = serde_json::to_vec(&Payload {
            version: "1",
            receiver: &channel.name,
            notification: n,
            sent_at,
        })
        .unwrap_or_default();
        let mut req = http
            .post(&channel.url)
            .header("content-type", "application/json")
            .header("x-kubernaut-timestamp", sent_at.to_string());
        if let Some(key) = &channel.key {
            req = req.header("x-kubernaut-signature", signature(key, sent_at, &body));
        }
        let error = match req.body(body).send().await {
            Ok(r) if r.status().is_success() => return (attempt, None),
            // A 4xx other than 429 will not be accepted however often.
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                return (
                    attempt,
                    Some(format!("{} answered {}", channel.name, r.status())),
                );
            }
            Ok(r) => format!("{} answered {}", channel.name, r.status()),
            Err(e) => format!("{}: {e}", channel.name),
        };
        if attempt > retries {
            return (attempt, Some(error));
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(kind: Kind, env: &str) -> Notification {
        Notification {
            kind,
            namespace: "shop".into(),
            name: "r".into(),
            uid: "u".into(),
            severity: "critical".into(),
            environment: env.into(),
            summary: "s".into(),
            detail: serde_json::Value::Null,
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

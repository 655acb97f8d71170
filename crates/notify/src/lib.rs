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
//! is [`Payload`]; the signature is `X-Kubernaut-Signature: sha256=<hex>`
//! over `<X-Kubernaut-Timestamp>.<body>`), Slack incoming webhooks (Block
//! Kit) and PagerDuty's Events API v2 (`dedup_key` from the fingerprint).
//! Secrets (keys, webhook URLs, routing keys) are read from files.

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

/// Where notifications go.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Receiver {
    pub name: String,
    #[serde(default)]
    pub webhook: Option<Webhook>,
    #[serde(default)]
    pub slack: Option<Slack>,
    #[serde(default)]
    pub pagerduty: Option<PagerDuty>,
}

/// A Slack incoming webhook; its URL is a secret, so it is read from a file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Slack {
    pub url_file: std::path::PathBuf,
}

/// PagerDuty's Events API v2.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PagerDuty {
    pub routing_key_file: std::path::PathBuf,
    #[serde(default = "PagerDuty::default_url")]
    pub url: String,
}

impl PagerDuty {
    fn default_url() -> String {
        "https://events.pagerduty.com/v2/enqueue".into()
    }
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
    kind: ChannelKind,
}

enum ChannelKind {
    Webhook(Option<ring::hmac::Key>),
    Slack,
    PagerDuty { routing_key: String },
}

/// A secret read from a file, trimmed.
fn secret(receiver: &str, key: &str, path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            format!(
                "notifications.receivers[{receiver}].{key}: {}: {e}",
                path.display()
            )
        })
}

impl Channel {
    fn of(r: &Receiver) -> Result<Channel, String> {
        let (url, kind) = match (&r.webhook, &r.slack, &r.pagerduty) {
            (Some(w), None, None) => {
                let key = match &w.secret_file {
                    Some(f) => Some(ring::hmac::Key::new(
                        ring::hmac::HMAC_SHA256,
                        secret(&r.name, "webhook.secretFile", f)?.as_bytes(),
                    )),
                    None => None,
                };
                (w.url.clone(), ChannelKind::Webhook(key))
            }
            (None, Some(s), None) => (
                secret(&r.name, "slack.urlFile", &s.url_file)?,
                ChannelKind::Slack,
            ),
            (None, None, Some(p)) => (
                p.url.clone(),
                ChannelKind::PagerDuty {
                    routing_key: secret(&r.name, "pagerduty.routingKeyFile", &p.routing_key_file)?,
                },
            ),
            _ => {
                return Err(format!(
                    "notifications.receivers[{}]: exactly one of webhook, slack, pagerduty",
                    r.name
                ));
            }
        };
        Ok(Channel {
            name: r.name.clone(),
            url,
            kind,
        })
    }

    /// The request body and extra headers for `n`, sent at `sent_at`.
    fn body(&self, n: &Notification, sent_at: u64) -> (Vec<u8>, Vec<(&'static str, String)>) {
        match &self.kind {
            ChannelKind::Webhook(key) => {
                let body = serde_json::to_vec(&Payload {
                    version: "1",
                    receiver: &self.name,
                    notification: n,
                    sent_at,
                })
                .unwrap_or_default();
                let mut headers = vec![("x-kubernaut-timestamp", sent_at.to_string())];
                if let Some(key) = key {
                    headers.push(("x-kubernaut-signature", signature(key, sent_at, &body)));
                }
                (body, headers)
            }
            ChannelKind::Slack => (
                serde_json::to_vec(&slack_message(n)).unwrap_or_default(),
                vec![],
            ),
            ChannelKind::PagerDuty { routing_key } => (
                serde_json::to_vec(&pagerduty_event(n, routing_key)).unwrap_or_default(),
                vec![],
            ),
        }
    }
}

fn title(n: &Notification) -> String {
    let what = match n.kind {
        Kind::ApprovalRequired => "Approval required",
        Kind::Escalation => "Escalation",
        Kind::Completed => "Remediation completed",
    };
    format!("{what}: {}/{}", n.namespace, n.name)
}

/// A Slack message in Block Kit: a header, the summary, how to approve.
pub fn slack_message(n: &Notification) -> serde_json::Value {
    let mut blocks = vec![
        serde_json::json!({"type": "header", "text": {"type": "plain_text", "text": title(n)}}),
        serde_json::json!({"type": "section", "text": {"type": "mrkdwn", "text": n.summary}}),
    ];
    if let Some(cmd) = n.detail["approve"]["kubectl"].as_str() {
        blocks.push(
            serde_json::json!({"type": "section", "text": {"type": "mrkdwn",
            "text": format!("Approve with `{cmd}`")}}),
        );
    }
    blocks.push(
        serde_json::json!({"type": "context", "elements": [{"type": "mrkdwn",
        "text": format!("{} · {} · {}", n.environment, n.severity, n.kind.as_str())}]}),
    );
    serde_json::json!({"text": format!("{}: {}", title(n), n.summary), "blocks": blocks})
}

/// A PagerDuty Events API v2 event: triggered by approvals and
/// escalations, resolved by a completion; one alert per fingerprint.
pub fn pagerduty_event(n: &Notification, routing_key: &str) -> serde_json::Value {
    let severity = match n.severity.as_str() {
        s @ ("critical" | "error" | "warning" | "info") => s,
        _ => "warning",
    };
    let action = if n.kind == Kind::Completed {
        "resolve"
    } else {
        "trigger"
    };
    let summary: String = format!("{}: {}", title(n), n.summary)
        .chars()
        .take(1024)
        .collect();
    serde_json::json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": format!("kubernaut-{}", n.fingerprint),
        "payload": {
            "summary": summary,
            "source": format!("{}/{}", n.namespace, n.name),
            "severity": severity,
            "component": n.namespace,
            "group": n.environment,
            "class": n.kind.as_str(),
            "custom_details": n.detail,
        },
    })
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
    let channels = settings
        .receivers
        .iter()
        .map(Channel::of)
        .collect::<Result<Vec<_>, _>>()?;
    for route in &settings.routes {
        if !channels.iter().any(|c| c.name == route.receiver) {
            return Err(format!(
                "notifications.routes: unknown receiver {:?}",
                route.receiver
            ));
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
        let (body, headers) = channel.body(n, sent_at);
        let mut req = http
            .post(&channel.url)
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(k, v);
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
            fingerprint: "f1".into(),
            detail: serde_json::json!({"approve": {"kubectl": "kubectl annotate"}}),
        }
    }

    #[test]
    fn slack_and_pagerduty_get_their_documented_shapes() {
        let m = slack_message(&n(Kind::ApprovalRequired, "production"));
        assert_eq!(m["blocks"][0]["type"], "header");
        assert_eq!(m["blocks"][0]["text"]["type"], "plain_text");
        assert!(
            m["text"]
                .as_str()
                .unwrap()
                .contains("Approval required: shop/r")
        );
        assert!(
            m["blocks"][2]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("kubectl annotate")
        );
        let e = pagerduty_event(&n(Kind::Escalation, "production"), "rk");
        assert_eq!(e["routing_key"], "rk");
        assert_eq!(e["event_action"], "trigger");
        assert_eq!(e["dedup_key"], "kubernaut-f1");
        assert_eq!(e["payload"]["severity"], "critical");
        let e = pagerduty_event(&n(Kind::Completed, "production"), "rk");
        assert_eq!(e["event_action"], "resolve");
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

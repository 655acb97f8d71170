//! The receivers' channels: what each service is sent, in the shape its
//! documentation gives, and how it is delivered (HTTP or SMTP) with
//! retries. Secrets (keys, webhook URLs, routing keys, SMTP credentials)
//! are read from files, never from the configuration itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::{Kind, Notification, Payload};

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where notifications go: exactly one channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Receiver {
    pub name: String,
    #[serde(default)]
    pub webhook: Option<Webhook>,
    #[serde(default)]
    pub slack: Option<Slack>,
    #[serde(default)]
    pub teams: Option<Teams>,
    #[serde(default)]
    pub pagerduty: Option<PagerDuty>,
    #[serde(default)]
    pub email: Option<Email>,
}

/// A Slack incoming webhook; its URL is a secret, so it is read from a file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Slack {
    pub url_file: std::path::PathBuf,
    /// Approve and Reject buttons on approval requests; they call the
    /// gateway's `/api/v1/slack/interactions` (the Slack app's request URL,
    /// with `gateway.slack` configured).
    #[serde(default)]
    pub approve_buttons: bool,
}

/// A Microsoft Teams incoming webhook (Adaptive Card); the URL from a file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Teams {
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

/// Email over SMTP.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Email {
    pub host: String,
    #[serde(default = "Email::default_port")]
    pub port: u16,
    /// `starttls` (the default), `tls` (SMTPS), or `none` (a relay on
    /// loopback or a trusted network only).
    #[serde(default)]
    pub tls: EmailTls,
    #[serde(default)]
    pub username_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    pub from: String,
    pub to: Vec<String>,
}

impl Email {
    fn default_port() -> u16 {
        587
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTls {
    #[default]
    Starttls,
    Tls,
    None,
}

/// A receiver ready to deliver.
pub(crate) struct Channel {
    pub(crate) name: String,
    url: String,
    kind: ChannelKind,
}

enum ChannelKind {
    Webhook(Option<ring::hmac::Key>),
    Slack { buttons: bool },
    Teams,
    PagerDuty { routing_key: String },
    Email(Box<Smtp>),
}

struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
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
    pub(crate) fn of(r: &Receiver, timeout: Duration) -> Result<Channel, String> {
        let (url, kind) = match (&r.webhook, &r.slack, &r.teams, &r.pagerduty, &r.email) {
            (Some(w), None, None, None, None) => {
                let key = match &w.secret_file {
                    Some(f) => Some(ring::hmac::Key::new(
                        ring::hmac::HMAC_SHA256,
                        secret(&r.name, "webhook.secretFile", f)?.as_bytes(),
                    )),
                    None => None,
                };
                (w.url.clone(), ChannelKind::Webhook(key))
            }
            (None, Some(s), None, None, None) => (
                secret(&r.name, "slack.urlFile", &s.url_file)?,
                ChannelKind::Slack {
                    buttons: s.approve_buttons,
                },
            ),
            (None, None, Some(t), None, None) => (
                secret(&r.name, "teams.urlFile", &t.url_file)?,
                ChannelKind::Teams,
            ),
            (None, None, None, Some(p), None) => (
                p.url.clone(),
                ChannelKind::PagerDuty {
                    routing_key: secret(&r.name, "pagerduty.routingKeyFile", &p.routing_key_file)?,
                },
            ),
            (None, None, None, None, Some(e)) => (
                String::new(),
                ChannelKind::Email(Box::new(smtp(&r.name, e, timeout)?)),
            ),
            _ => {
                return Err(format!(
                    "notifications.receivers[{}]: exactly one of webhook, slack, teams, pagerduty, email",
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
        let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap_or_default();
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
            ChannelKind::Slack { buttons } => (json(slack_message(n, *buttons)), vec![]),
            ChannelKind::Teams => (json(teams_card(n)), vec![]),
            ChannelKind::PagerDuty { routing_key } => {
                (json(pagerduty_event(n, routing_key)), vec![])
            }
            ChannelKind::Email(_) => (Vec::new(), vec![]),
        }
    }
}

fn smtp(receiver: &str, e: &Email, timeout: Duration) -> Result<Smtp, String> {
    let bad = |what: &str, err: String| {
        format!("notifications.receivers[{receiver}].email.{what}: {err}")
    };
    let mut builder = match e.tls {
        EmailTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&e.host)
            .map_err(|x| bad("host", x.to_string()))?,
        EmailTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&e.host)
            .map_err(|x| bad("host", x.to_string()))?,
        EmailTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&e.host),
    }
    .port(e.port)
    .timeout(Some(timeout));
    match (&e.username_file, &e.password_file) {
        (Some(u), Some(p)) => {
            builder = builder.credentials(Credentials::new(
                secret(receiver, "email.usernameFile", u)?,
                secret(receiver, "email.passwordFile", p)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(bad(
                "usernameFile",
                "give both usernameFile and passwordFile, or neither".into(),
            ));
        }
    }
    let from: Mailbox = e
        .from
        .parse()
        .map_err(|x: lettre::address::AddressError| bad("from", x.to_string()))?;
    let to =
        e.to.iter()
            .map(|t| t.parse::<Mailbox>().map_err(|x| bad("to", x.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
    if to.is_empty() {
        return Err(bad("to", "no recipient".into()));
    }
    Ok(Smtp {
        transport: builder.build(),
        from,
        to,
    })
}

pub(crate) fn title(n: &Notification) -> String {
    let what = match n.kind {
        Kind::ApprovalRequired => "Approval required",
        Kind::Escalation => "Escalation",
        Kind::Completed => "Remediation completed",
    };
    format!("{what}: {}/{}", n.namespace, n.name)
}

/// The verification's outcome and score, when the detail has them.
fn verification_line(n: &Notification) -> Option<String> {
    let outcome = n.detail["outcome"].as_str()?;
    Some(match n.detail["score"].as_f64() {
        Some(s) => format!("Verification: {outcome} (score {s:.2})"),
        None => format!("Verification: {outcome}"),
    })
}

/// A Slack message in Block Kit: a header, the summary, how to approve
/// (with Approve and Reject buttons when the app is interactive).
pub fn slack_message(n: &Notification, buttons: bool) -> serde_json::Value {
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
    if buttons && n.kind == Kind::ApprovalRequired {
        let value = format!("{}/{}", n.namespace, n.name);
        blocks.push(
            serde_json::json!({"type": "actions", "block_id": "kubernaut-approval",
            "elements": [
                {"type": "button", "action_id": "approve", "style": "primary", "value": value,
                 "text": {"type": "plain_text", "text": "Approve"}},
                {"type": "button", "action_id": "reject", "style": "danger", "value": value,
                 "text": {"type": "plain_text", "text": "Reject"}}]}),
        );
    }
    if let Some(line) = verification_line(n) {
        blocks
            .push(serde_json::json!({"type": "section", "text": {"type": "mrkdwn", "text": line}}));
    }
    blocks.push(
        serde_json::json!({"type": "context", "elements": [{"type": "mrkdwn",
        "text": format!("{} · {} · {}", n.environment, n.severity, n.kind.as_str())}]}),
    );
    serde_json::json!({"text": format!("{}: {}", title(n), n.summary), "blocks": blocks})
}

/// A Microsoft Teams incoming-webhook message carrying an Adaptive Card.
pub fn teams_card(n: &Notification) -> serde_json::Value {
    let mut body = vec![
        serde_json::json!({"type": "TextBlock", "size": "Medium", "weight": "Bolder",
                           "text": title(n), "wrap": true}),
        serde_json::json!({"type": "TextBlock", "text": n.summary, "wrap": true}),
    ];
    if let Some(line) = verification_line(n) {
        body.push(serde_json::json!({"type": "TextBlock", "text": line, "wrap": true}));
    }
    if let Some(cmd) = n.detail["approve"]["kubectl"].as_str() {
        body.push(
            serde_json::json!({"type": "TextBlock", "text": format!("Approve with: {cmd}"),
                                     "wrap": true, "fontType": "Monospace"}),
        );
    }
    body.push(serde_json::json!({"type": "FactSet", "facts": [
        {"title": "Environment", "value": n.environment},
        {"title": "Severity", "value": n.severity},
        {"title": "Kind", "value": n.kind.as_str()}]}));
    serde_json::json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            },
        }],
    })
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

/// The email's subject and plain-text body.
pub fn email_text(n: &Notification) -> (String, String) {
    let mut body = format!("{}\n\n{}\n", title(n), n.summary);
    if let Some(line) = verification_line(n) {
        body.push_str(&format!("\n{line}\n"));
    }
    if let Some(cmd) = n.detail["approve"]["kubectl"].as_str() {
        body.push_str(&format!("\nApprove with:\n  {cmd}\n"));
    }
    if let Some(http) = n.detail["approve"]["http"].as_str() {
        body.push_str(&format!("or: {http}\n"));
    }
    body.push_str(&format!(
        "\nEnvironment: {}\nSeverity: {}\nKind: {}\n\nDetail:\n{}\n",
        n.environment,
        n.severity,
        n.kind.as_str(),
        serde_json::to_string_pretty(&n.detail).unwrap_or_default()
    ));
    (title(n), body)
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

/// One attempt's end: delivered, or an error and whether trying again
/// can help.
enum Attempt {
    Delivered,
    Failed { error: String, retry: bool },
}

async fn attempt(http: &reqwest::Client, channel: &Channel, n: &Notification) -> Attempt {
    if let ChannelKind::Email(smtp) = &channel.kind {
        let (subject, text) = email_text(n);
        let mut message = Message::builder().from(smtp.from.clone()).subject(subject);
        for to in &smtp.to {
            message = message.to(to.clone());
        }
        let message = match message.body(text) {
            Ok(m) => m,
            Err(e) => {
                return Attempt::Failed {
                    error: format!("{}: {e}", channel.name),
                    retry: false,
                };
            }
        };
        return match smtp.transport.send(message).await {
            Ok(_) => Attempt::Delivered,
            Err(e) => Attempt::Failed {
                retry: !e.is_permanent(),
                error: format!("{}: {e}", channel.name),
            },
        };
    }
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
    match req.body(body).send().await {
        Ok(r) if r.status().is_success() => Attempt::Delivered,
        // A 4xx other than 429 will not be accepted however often.
        Ok(r) => Attempt::Failed {
            error: format!("{} answered {}", channel.name, r.status()),
            retry: !(r.status().is_client_error() && r.status().as_u16() != 429),
        },
        Err(e) => Attempt::Failed {
            error: format!("{}: {}", channel.name, e.without_url()),
            retry: true,
        },
    }
}

/// Up to `1 + retries` attempts; the attempts made and the last error.
pub(crate) async fn deliver(
    http: &reqwest::Client,
    channel: &Channel,
    n: &Notification,
    retries: u32,
) -> (u32, Option<String>) {
    let mut backoff = FIRST_BACKOFF;
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt(http, channel, n).await {
            Attempt::Delivered => return (tries, None),
            Attempt::Failed { error, retry } if !retry || tries > retries => {
                return (tries, Some(error));
            }
            Attempt::Failed { .. } => {}
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(kind: Kind, detail: serde_json::Value) -> Notification {
        Notification {
            detail,
            ..crate::tests::n(kind, "production")
        }
    }

    #[test]
    fn slack_buttons_only_on_approvals_and_only_when_asked() {
        let approval = n(Kind::ApprovalRequired, serde_json::json!({}));
        let actions = |m: &serde_json::Value| {
            m["blocks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["type"] == "actions")
                .count()
        };
        assert_eq!(actions(&slack_message(&approval, true)), 1);
        assert_eq!(actions(&slack_message(&approval, false)), 0);
        let done = n(
            Kind::Completed,
            serde_json::json!({"outcome": "Effective", "score": 0.9}),
        );
        let m = slack_message(&done, true);
        assert_eq!(actions(&m), 0);
        assert!(
            m.to_string()
                .contains("Verification: Effective (score 0.90)")
        );
    }

    #[test]
    fn teams_gets_an_adaptive_card_and_email_says_how_to_approve() {
        let approval = n(
            Kind::ApprovalRequired,
            serde_json::json!({"approve": {"kubectl": "kubectl annotate rr r x=y", "http": "POST /a"}}),
        );
        let card = teams_card(&approval);
        assert_eq!(card["type"], "message");
        let content = &card["attachments"][0]["content"];
        assert_eq!(content["type"], "AdaptiveCard");
        assert_eq!(content["version"], "1.4");
        assert_eq!(content["body"][0]["text"], "Approval required: shop/r");
        let (subject, body) = email_text(&approval);
        assert_eq!(subject, "Approval required: shop/r");
        assert!(body.contains("kubectl annotate rr r x=y"), "{body}");
        assert!(body.contains("POST /a"), "{body}");
    }

    #[test]
    fn a_receiver_has_exactly_one_channel_and_readable_secrets() {
        let none = Receiver {
            name: "x".into(),
            ..Default::default()
        };
        assert!(Channel::of(&none, Duration::from_secs(1)).is_err());
        let missing = Receiver {
            name: "x".into(),
            teams: Some(Teams {
                url_file: "/nonexistent/teams".into(),
            }),
            ..Default::default()
        };
        let e = Channel::of(&missing, Duration::from_secs(1)).err().unwrap();
        assert!(e.contains("teams.urlFile"), "{e}");
        let bad_mail = Receiver {
            name: "m".into(),
            email: Some(Email {
                host: "127.0.0.1".into(),
                port: 25,
                tls: EmailTls::None,
                username_file: None,
                password_file: None,
                from: "not an address".into(),
                to: vec!["a@example.com".into()],
            }),
            ..Default::default()
        };
        let e = Channel::of(&bad_mail, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(e.contains("email.from"), "{e}");
    }
    #[test]
    fn slack_and_pagerduty_get_their_documented_shapes() {
        let m = slack_message(
            &n(
                Kind::ApprovalRequired,
                serde_json::json!({"approve": {"kubectl": "kubectl annotate"}}),
            ),
            false,
        );
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
        let e = pagerduty_event(&n(Kind::Escalation, serde_json::json!({})), "rk");
        assert_eq!(e["routing_key"], "rk");
        assert_eq!(e["event_action"], "trigger");
        assert_eq!(e["dedup_key"], "kubernaut-f1");
        assert_eq!(e["payload"]["severity"], "critical");
        let e = pagerduty_event(&n(Kind::Completed, serde_json::json!({})), "rk");
        assert_eq!(e["event_action"], "resolve");
    }
}

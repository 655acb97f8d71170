//! K-NT-1 on the real stack: a request that needs approval is announced
//! to a webhook receiver (a local server that checks the HMAC signature as
//! a receiver would), with the policy's reasons and how to approve; the
//! same approval reaches Slack (Block Kit, with Approve and Reject
//! buttons), Microsoft Teams (an Adaptive Card) and PagerDuty (Events API
//! v2) in their documented shapes, and an inbox through a real SMTP server;
//! every delivery is in the audit trail; a dead receiver is retried,
//! counted as failed, and holds up nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use kube::Api;
use kubernaut_api::{Phase, RemediationRequest};
use kubernaut_e2e::{
    SmtpServer, Stack, control_plane, create_request, eventually, metric, production_statefulset,
    unique,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
const SECRET: &str = "webhook-s3cret";

type Received = Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>;

/// One local server standing in for the webhook receiver, Slack and
/// PagerDuty (by path); its base URL and what it received.
async fn receiver() -> anyhow::Result<(String, Received)> {
    let got: Received = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/{channel}",
        axum::routing::post(
            move |axum::extract::Path(channel): axum::extract::Path<String>,
                  headers: HeaderMap,
                  body: Bytes| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push((channel.clone(), headers, body));
                    // Each service's documented success answer.
                    if channel == "pd" {
                        (axum::http::StatusCode::ACCEPTED, r#"{"status":"success"}"#)
                    } else {
                        (axum::http::StatusCode::OK, "ok")
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, got))
}

fn body_of(received: &Received, channel: &str) -> Option<(HeaderMap, Bytes)> {
    received
        .lock()
        .unwrap()
        .iter()
        .find(|(c, _, _)| c == channel)
        .map(|(_, h, b)| (h.clone(), b.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_waiting_is_announced_signed_and_audited() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = production_statefulset(&admin, "notify").await?;
    let ns = t.namespace.clone();
    let (base, received) = receiver().await?;
    let dir = std::env::temp_dir().join(unique("kubernaut-notify"));
    std::fs::create_dir_all(&dir)?;
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n"))?;
    let slack_url = dir.join("slack-url");
    std::fs::write(&slack_url, format!("{base}/slack"))?;
    let teams_url = dir.join("teams-url");
    std::fs::write(&teams_url, format!("{base}/teams"))?;
    let smtp = SmtpServer::start().await?;
    let routing_key = dir.join("routing-key");
    std::fs::write(&routing_key, "R0UTINGKEY")?;
    let receivers = json!([
        {"name": "oncall", "webhook": {"url": format!("{base}/hook"), "secretFile": secret_file}},
        {"name": "chat", "slack": {"urlFile": slack_url, "approveButtons": true}},
        {"name": "teams", "teams": {"urlFile": teams_url}},
        {"name": "mail", "email": {"host": "127.0.0.1", "port": smtp.port, "tls": "none",
                                   "from": "Kubernaut <kubernaut@example.com>",
                                   "to": ["oncall@example.com"]}},
        {"name": "pager", "pagerduty": {"routingKeyFile": routing_key, "url": format!("{base}/pd")}},
        {"name": "dead", "webhook": {"url": "http://127.0.0.1:9/hook"}},
    ])
    .to_string();
    let routes = json!([
        {"matchers": {"kind": "approval_required"}, "receiver": "oncall", "continue": true},
        {"matchers": {"kind": "approval_required", "environment": "production"}, "receiver": "chat", "continue": true},
        {"matchers": {"kind": "approval_required"}, "receiver": "teams", "continue": true},
        {"matchers": {"kind": "approval_required"}, "receiver": "mail", "continue": true},
        {"matchers": {"kind": "approval_required", "severity": "warning"}, "receiver": "pager", "continue": true},
        {"matchers": {"kind": "approval_required"}, "receiver": "dead"},
    ])
    .to_string();
    let rules = json!([{ "signal": "DbLagging", "action": "scale_statefulset",
        "parameters": {"namespace": "{{target.namespace}}", "name": "{{target.name}}", "replicas": 2} }]);
    let running = control_plane(
        stack,
        &ns,
        &[
            ("NOTIFICATIONS__RECEIVERS", &receivers),
            ("NOTIFICATIONS__ROUTES", &routes),
            ("NOTIFICATIONS__RETRIES", "1"),
        ],
        rules,
    )
    .await?;
    let name = create_request(&admin, "DbLagging", &t, false).await?;

    let (headers, body) = eventually("the approval announced", TIMEOUT, || async {
        Ok(body_of(&received, "hook"))
    })
    .await?;
    let sent: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(sent["version"], "1");
    assert_eq!(sent["kind"], "approval_required", "{sent}");
    assert_eq!(
        (sent["namespace"].as_str(), sent["name"].as_str()),
        (Some(ns.as_str()), Some(name.as_str()))
    );
    assert_eq!(sent["environment"], "production");
    assert_eq!(
        sent["detail"]["reasons"],
        json!(["StatefulSet target"]),
        "{sent}"
    );
    assert!(
        sent["detail"]["approve"]["kubectl"]
            .as_str()
            .is_some_and(|k| k.contains(&format!(
                "annotate rr {name} kubernaut.io/approval=approved"
            ))),
        "{sent}"
    );
    // The signature, checked as a receiver checks it.
    let timestamp = headers["x-kubernaut-timestamp"].to_str()?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let expected = ring::hmac::sign(
        &key,
        format!("{timestamp}.")
            .as_bytes()
            .iter()
            .chain(body.iter())
            .copied()
            .collect::<Vec<u8>>()
            .as_slice(),
    );
    assert_eq!(
        headers["x-kubernaut-signature"].to_str()?,
        format!("sha256={}", hex::encode(expected.as_ref()))
    );

    // The request waits regardless of the dead receiver, which is tried
    // again and counted as failed.
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    assert_eq!(api.get(&name).await?.phase(), Phase::AwaitingApproval);
    let failed = "kubernaut_controller_notifications_total{receiver=\"dead\",outcome=\"failed\"}";
    eventually("the dead receiver given up", TIMEOUT, || async {
        Ok((metric(&running, failed).await? >= 1.0).then_some(()))
    })
    .await?;
    // Slack: Block Kit, as its incoming webhooks take it.
    let (_, slack) = eventually("the Slack message", TIMEOUT, || async {
        Ok(body_of(&received, "slack"))
    })
    .await?;
    let slack: serde_json::Value = serde_json::from_slice(&slack)?;
    assert_eq!(slack["blocks"][0]["type"], "header", "{slack}");
    assert!(
        slack["text"].as_str().is_some_and(|t| t.contains(&name)),
        "{slack}"
    );
    let buttons = slack["blocks"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["type"] == "actions"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(buttons["elements"][0]["action_id"], "approve", "{slack}");
    assert_eq!(buttons["elements"][1]["action_id"], "reject", "{slack}");
    assert_eq!(buttons["elements"][0]["value"], format!("{ns}/{name}"));
    // Teams: an Adaptive Card in an incoming-webhook message.
    let (_, teams) = eventually("the Teams card", TIMEOUT, || async {
        Ok(body_of(&received, "teams"))
    })
    .await?;
    let teams: serde_json::Value = serde_json::from_slice(&teams)?;
    assert_eq!(teams["type"], "message", "{teams}");
    let card = &teams["attachments"][0];
    assert_eq!(
        card["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(card["content"]["type"], "AdaptiveCard");
    assert!(
        card["content"]["body"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains(&name)),
        "{teams}"
    );
    // Email: through a real SMTP server, with how to approve.
    let mail = eventually("the email", TIMEOUT, || async {
        Ok(smtp.messages().into_iter().next())
    })
    .await?;
    assert!(mail.contains("To: oncall@example.com"), "{mail}");
    assert!(
        mail.contains(&format!("Subject: Approval required: {ns}/{name}")),
        "{mail}"
    );
    // The body is quoted-printable: soft line breaks, `=` as `=3D`.
    let text = mail
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    assert!(text.contains("kubernaut.io/approval=approved"), "{mail}");
    // PagerDuty: an Events API v2 trigger, one alert per fingerprint.
    let (_, pd) = eventually("the PagerDuty event", TIMEOUT, || async {
        Ok(body_of(&received, "pd"))
    })
    .await?;
    let pd: serde_json::Value = serde_json::from_slice(&pd)?;
    assert_eq!(pd["routing_key"], "R0UTINGKEY");
    assert_eq!(pd["event_action"], "trigger");
    assert!(
        pd["dedup_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("kubernaut-")),
        "{pd}"
    );
    assert_eq!(pd["payload"]["severity"], "warning");
    assert_eq!(
        received.lock().unwrap().len(),
        4,
        "one message per request, kind and receiver"
    );

    // Every delivery is in the audit trail.
    let uid = api.get(&name).await?.metadata.uid.unwrap_or_default();
    let db = sqlx::PgPool::connect(&stack.database_url).await?;
    let reasons: Vec<String> = eventually("the deliveries audited", TIMEOUT, || async {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT reason FROM remediation_events WHERE request_uid = $1 AND kind = 'notification' ORDER BY reason",
        )
        .bind(&uid)
        .fetch_all(&db)
        .await?;
        Ok((rows.len() == 6).then_some(rows))
    })
    .await?;
    assert_eq!(
        reasons,
        [
            "Delivered",
            "Delivered",
            "Delivered",
            "Delivered",
            "Delivered",
            "DeliveryFailed"
        ]
    );
    running.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_fails_is_announced_as_an_escalation() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = kubernaut_e2e::managed_namespace(&admin, "notify-fail", "development").await?;
    kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), &ns)
        .create(&Default::default(), &kubernaut_e2e::deployment("api", 1))
        .await?;
    let (base, received) = receiver().await?;
    let receivers =
        json!([{"name": "oncall", "webhook": {"url": format!("{base}/hook")}}]).to_string();
    let routes = json!([{"matchers": {"kind": "escalation"}, "receiver": "oncall"}]).to_string();
    // Past executor.bounds.maxReplicas (20): the executor refuses it.
    let rules = json!([{ "signal": "TooBig", "action": "scale_deployment",
        "parameters": {"namespace": "{{target.namespace}}", "name": "{{target.name}}", "replicas": 500} }]);
    let running = control_plane(
        stack,
        &ns,
        &[
            ("NOTIFICATIONS__RECEIVERS", &receivers),
            ("NOTIFICATIONS__ROUTES", &routes),
        ],
        rules,
    )
    .await?;
    let target = kubernaut_api::ObjectRef::new("Deployment", &ns, "api");
    let name = create_request(&admin, "TooBig", &target, false).await?;
    let rr = kubernaut_e2e::terminal_request(&admin, &ns, &name, TIMEOUT).await?;
    assert_eq!(rr.phase(), Phase::Failed, "{:?}", rr.status);
    let (_, body) = eventually("the failure announced", TIMEOUT, || async {
        Ok(body_of(&received, "hook"))
    })
    .await?;
    let sent: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(sent["kind"], "escalation", "{sent}");
    assert_eq!(sent["name"], name.as_str(), "{sent}");
    assert!(
        sent["summary"]
            .as_str()
            .is_some_and(|s| s.contains("Failed")),
        "{sent}"
    );
    running.shutdown().await
}

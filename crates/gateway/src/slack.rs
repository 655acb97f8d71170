//! Approve from Slack (K-NT-1): the Approve and Reject buttons of an
//! approval message call back to `POST /api/v1/slack/interactions`.
//! A callback is taken only when Slack's request signature verifies
//! (`v0=` HMAC-SHA256 with the app's signing secret over
//! `v0:<X-Slack-Request-Timestamp>:<body>`, within five minutes, so a
//! captured callback cannot be replayed later), and only from a Slack user
//! mapped to a Kubernetes user name in `gateway.slack.approvers`; RBAC then
//! says whether that user may approve, as for the HTTP endpoint.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

/// Callbacks older (or newer) than this are refused.
pub const WINDOW_SECONDS: i64 = 300;

/// `gateway.slack` in the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SlackConfig {
    /// The Slack app's signing secret, from a file (a mounted Secret);
    /// unset: the endpoint answers 503.
    pub signing_secret_file: Option<PathBuf>,
    /// Slack user ID → the Kubernetes user name RBAC knows them by.
    pub approvers: BTreeMap<String, String>,
}

/// What the endpoint needs: the signing key and who may act.
pub struct SlackApprovals {
    key: ring::hmac::Key,
    approvers: BTreeMap<String, String>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    #[error("missing or malformed Slack signature headers")]
    Unsigned,
    #[error("the request's timestamp is outside the five-minute window")]
    Stale,
    #[error("the Slack signature does not match")]
    BadSignature,
    #[error("the body is not a Slack interaction: {0}")]
    Malformed(String),
    #[error("Slack user {0} is not an approver")]
    NotAnApprover(String),
}

/// The decision a button asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Click {
    pub slack_user: String,
    pub user: String,
    pub namespace: String,
    pub name: String,
    pub approved: bool,
}

impl SlackApprovals {
    pub fn load(config: &SlackConfig) -> Result<Option<SlackApprovals>, String> {
        let Some(path) = &config.signing_secret_file else {
            return Ok(None);
        };
        let secret = std::fs::read_to_string(path)
            .map_err(|e| format!("gateway.slack.signingSecretFile: {}: {e}", path.display()))?;
        Ok(Some(SlackApprovals {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.trim().as_bytes()),
            approvers: config.approvers.clone(),
        }))
    }

    /// Checks the signature at `now` (seconds since the epoch) and reads
    /// the click.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<Click, SlackError> {
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        let (Some(ts), Some(sig)) = (
            header("x-slack-request-timestamp"),
            header("x-slack-signature"),
        ) else {
            return Err(SlackError::Unsigned);
        };
        let at: i64 = ts.parse().map_err(|_| SlackError::Unsigned)?;
        if (now - at).abs() > WINDOW_SECONDS {
            return Err(SlackError::Stale);
        }
        let sig = sig
            .strip_prefix("v0=")
            .and_then(|h| hex::decode(h).ok())
            .ok_or(SlackError::BadSignature)?;
        let mut signed = format!("v0:{ts}:").into_bytes();
        signed.extend_from_slice(body);
        ring::hmac::verify(&self.key, &signed, &sig).map_err(|_| SlackError::BadSignature)?;
        let click = click(body)?;
        let user = self
            .approvers
            .get(&click.0)
            .cloned()
            .ok_or_else(|| SlackError::NotAnApprover(click.0.clone()))?;
        Ok(Click {
            slack_user: click.0,
            user,
            namespace: click.1,
            name: click.2,
            approved: click.3,
        })
    }
}

/// The Slack user, namespace, name and decision of a `block_actions`
/// payload (`payload=<JSON>`, form-encoded).
fn click(body: &[u8]) -> Result<(String, String, String, bool), SlackError> {
    let bad = |m: &str| SlackError::Malformed(m.to_string());
    let payload = form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| bad("no payload field"))?;
    let p: serde_json::Value =
        serde_json::from_str(&payload).map_err(|e| SlackError::Malformed(e.to_string()))?;
    if p["type"] != "block_actions" {
        return Err(bad("not a block_actions payload"));
    }
    let user = p["user"]["id"].as_str().ok_or_else(|| bad("no user.id"))?;
    let action = &p["actions"][0];
    let approved = match action["action_id"].as_str() {
        Some("approve") => true,
        Some("reject") => false,
        _ => return Err(bad("the action is neither approve nor reject")),
    };
    let (namespace, name) = action["value"]
        .as_str()
        .and_then(|v| v.split_once('/'))
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| bad("the action's value is not namespace/name"))?;
    Ok((
        user.to_string(),
        namespace.to_string(),
        name.to_string(),
        approved,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desk() -> SlackApprovals {
        SlackApprovals {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"8f742231b10e8888abcd99yyyzzz85a5"),
            approvers: [("U1".to_string(), "alice@example.com".to_string())].into(),
        }
    }

    fn body(user: &str, action: &str, value: &str) -> Vec<u8> {
        let payload = serde_json::json!({"type": "block_actions", "user": {"id": user},
            "actions": [{"action_id": action, "value": value}]});
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish()
            .into_bytes()
    }

    fn signed(body: &[u8], ts: i64, secret: &[u8]) -> HeaderMap {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let mut msg = format!("v0:{ts}:").into_bytes();
        msg.extend_from_slice(body);
        let sig = hex::encode(ring::hmac::sign(&key, &msg).as_ref());
        let mut h = HeaderMap::new();
        h.insert("x-slack-request-timestamp", ts.to_string().parse().unwrap());
        h.insert("x-slack-signature", format!("v0={sig}").parse().unwrap());
        h
    }

    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_click_signed_as_slack_signs_is_read() {
        let b = body("U1", "approve", "shop/db-lag-1");
        let click = desk()
            .verify(&signed(&b, NOW - 10, SECRET), &b, NOW)
            .unwrap();
        assert_eq!(
            click,
            Click {
                slack_user: "U1".into(),
                user: "alice@example.com".into(),
                namespace: "shop".into(),
                name: "db-lag-1".into(),
                approved: true,
            }
        );
        let b = body("U1", "reject", "shop/x");
        assert!(
            !desk()
                .verify(&signed(&b, NOW, SECRET), &b, NOW)
                .unwrap()
                .approved
        );
    }

    #[test]
    fn forged_replayed_or_foreign_clicks_are_refused() {
        let b = body("U1", "approve", "shop/x");
        let d = desk();
        assert_eq!(
            d.verify(&signed(&b, NOW, b"another secret"), &b, NOW),
            Err(SlackError::BadSignature)
        );
        assert_eq!(
            d.verify(&signed(&b, NOW - 301, SECRET), &b, NOW),
            Err(SlackError::Stale)
        );
        assert_eq!(
            d.verify(&HeaderMap::new(), &b, NOW),
            Err(SlackError::Unsigned)
        );
        // The body changed after signing.
        let other = body("U1", "approve", "shop/y");
        assert_eq!(
            d.verify(&signed(&b, NOW, SECRET), &other, NOW),
            Err(SlackError::BadSignature)
        );
        let b = body("U2", "approve", "shop/x");
        assert_eq!(
            d.verify(&signed(&b, NOW, SECRET), &b, NOW),
            Err(SlackError::NotAnApprover("U2".into()))
        );
        for (action, value) in [("approve", "x"), ("delete", "shop/x"), ("approve", "a/b/c")] {
            let b = body("U1", action, value);
            assert!(matches!(
                d.verify(&signed(&b, NOW, SECRET), &b, NOW),
                Err(SlackError::Malformed(_))
            ));
        }
    }
}

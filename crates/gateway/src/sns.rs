//! The SNS delivery format (K-GW-3), the parts that need no network or
//! cryptography: the SNS message, the exact string SNS signs, the rules for
//! the URLs SNS hands us, and the topic allow-list. Signature verification
//! (`sns_trust`) and the CloudWatch endpoint (`cloudwatch`) build on these.

use serde::Deserialize;

/// An SNS HTTP(S) delivery. The body is JSON even when SNS sends it as
/// `text/plain`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct SnsMessage {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "MessageId")]
    pub message_id: String,
    #[serde(rename = "Token", default)]
    pub token: Option<String>,
    #[serde(rename = "TopicArn")]
    pub topic_arn: String,
    #[serde(rename = "Subject", default)]
    pub subject: Option<String>,
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "Timestamp")]
    pub timestamp: String,
    #[serde(rename = "SignatureVersion")]
    pub signature_version: String,
    #[serde(rename = "Signature")]
    pub signature: String,
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
    #[serde(rename = "UnsubscribeURL", default)]
    pub unsubscribe_url: Option<String>,
}

pub fn parse(body: &[u8]) -> Result<SnsMessage, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid SNS message: {e}"))
}

impl SnsMessage {
    /// The string SNS signs: `Key\nValue\n` for each key present, in the
    /// order Message, MessageId, Subject, SubscribeURL, Timestamp, Token,
    /// TopicArn, Type.
    pub fn string_to_sign(&self) -> String {
        let fields: [(&str, Option<&str>); 8] = [
            ("Message", Some(&self.message)),
            ("MessageId", Some(&self.message_id)),
            ("Subject", self.subject.as_deref()),
            ("SubscribeURL", self.subscribe_url.as_deref()),
            ("Timestamp", Some(&self.timestamp)),
            ("Token", self.token.as_deref()),
            ("TopicArn", Some(&self.topic_arn)),
            ("Type", Some(&self.kind)),
        ];
        let mut out = String::new();
        for (key, value) in fields {
            if let Some(v) = value {
                out.push_str(key);
                out.push('\n');
                out.push_str(v);
                out.push('\n');
            }
        }
        out
    }
}

/// The signing certificate must come from SNS itself: `https`, a host
/// matching `^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$` (no port, no
/// user info) and the path SNS uses,
/// `/SimpleNotificationService-[0-9a-f]{32}.pem` (no query or fragment):
/// nothing else on an SNS host is fetched before a signature checks out.
pub fn check_cert_url(url: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("SigningCertURL {url:?} refused: {why}"));
    let path = match sns_path(url) {
        Ok(p) => p,
        Err(why) => return refuse(why),
    };
    if path.contains(['?', '#']) {
        return refuse("has a query or fragment");
    }
    let digest = path
        .strip_prefix("/SimpleNotificationService-")
        .and_then(|p| p.strip_suffix(".pem"));
    match digest {
        Some(d) if d.len() == 32 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(())
        }
        _ => refuse("is not /SimpleNotificationService-<32 hex digits>.pem"),
    }
}

/// A SubscribeURL is only ever fetched on an SNS host (the same host rule as
/// the certificate); its query carries the subscription's token.
pub fn check_subscribe_url(url: &str) -> Result<(), String> {
    sns_path(url)
        .map(|_| ())
        .map_err(|why| format!("SubscribeURL {url:?} refused: {why}"))
}

/// The path (with query) of an `https` URL on an SNS host.
fn sns_path(url: &str) -> Result<&str, &'static str> {
    let rest = url.strip_prefix("https://").ok_or("not https")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, path) = rest.split_at(end);
    if host.contains(['@', ':']) {
        return Err("user info or a port in the host");
    }
    let host = host.strip_suffix(".cn").unwrap_or(host);
    let region = host
        .strip_prefix("sns.")
        .and_then(|h| h.strip_suffix(".amazonaws.com"));
    match region {
        Some(r) if r.len() >= 3 && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            Ok(path)
        }
        _ => Err("not an SNS host (sns.<region>.amazonaws.com)"),
    }
}

/// Whether a topic is allowed: an entry matches exactly, or as a prefix when
/// it ends in `*` (`arn:aws:sns:eu-west-1:123456789012:*`).
pub fn topic_allowed(topic_arn: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => topic_arn.starts_with(prefix),
        None => a == topic_arn,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const NOTIFICATION: &str = r#"{
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:cloudwatch-alarms",
        "Subject": "ALARM: \"cart-cpu\" in EU (Ireland)",
        "Message": "{\"AlarmName\":\"cart-cpu\",\"NewStateValue\":\"ALARM\"}",
        "Timestamp": "2026-11-22T03:00:00.000Z",
        "SignatureVersion": "2",
        "Signature": "c2ln",
        "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe"
    }"#;

    #[test]
    fn the_signed_string_lists_present_keys_in_sns_order() {
        let m = parse(NOTIFICATION.as_bytes()).unwrap();
        assert_eq!(
            m.string_to_sign(),
            "Message\n{\"AlarmName\":\"cart-cpu\",\"NewStateValue\":\"ALARM\"}\n\
             MessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\n\
             Subject\nALARM: \"cart-cpu\" in EU (Ireland)\n\
             Timestamp\n2026-11-22T03:00:00.000Z\n\
             TopicArn\narn:aws:sns:eu-west-1:123456789012:cloudwatch-alarms\n\
             Type\nNotification\n"
        );
        // UnsubscribeURL is delivered but never signed.
        assert!(!m.string_to_sign().contains("Unsubscribe"));
    }

    #[test]
    fn a_subscription_confirmation_signs_its_token_and_subscribe_url() {
        let body = NOTIFICATION
            .replace("\"Notification\"", "\"SubscriptionConfirmation\"")
            .replace(
                "\"Subject\": \"ALARM: \\\"cart-cpu\\\" in EU (Ireland)\",",
                "\"Token\": \"tok\", \"SubscribeURL\": \"https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription\",",
            );
        let m = parse(body.as_bytes()).unwrap();
        let s = m.string_to_sign();
        assert!(!s.contains("Subject"));
        let order: Vec<&str> = s.lines().step_by(2).collect();
        assert_eq!(
            order,
            [
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type"
            ]
        );
    }

    #[test]
    fn only_sns_certificate_urls_are_accepted() {
        for ok in [
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
        ] {
            assert_eq!(check_cert_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://sns.eu-west-1.amazonaws.com/cert.pem",
            "https://sns.eu-west-1.amazonaws.com/cert.crt",
            "https://sns.eu-west-1.amazonaws.com.evil.com/cert.pem",
            "https://evilsns.eu-west-1.amazonaws.com/cert.pem",
            "https://sns.ab.amazonaws.com/cert.pem",
            "https://sns.eu_west.amazonaws.com/cert.pem",
            "https://sns.eu-west-1.amazonaws.com@evil.com/cert.pem",
            "https://sns.eu-west-1.amazonaws.com:8443/cert.pem",
            "https://sns.eu-west-1.amazonaws.com/cert.pem?x=.pem",
            "https://amazonaws.com/cert.pem",
            "https://sns.us-gov-west-1.amazonaws.com/a/b.pem",
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789ABCDEF0123456789ABCDEF.pem",
            "https://sns.eu-west-1.amazonaws.com/x/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
            "",
        ] {
            assert!(check_cert_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subscribe_urls_must_be_on_an_sns_host() {
        assert_eq!(
            check_subscribe_url(
                "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=a&Token=t"
            ),
            Ok(())
        );
        for bad in [
            "http://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription",
            "https://sns.eu-west-1.amazonaws.com.evil.com/?Action=ConfirmSubscription",
            "https://evil.com/?u=https://sns.eu-west-1.amazonaws.com/",
            "https://sns.eu-west-1.amazonaws.com:444/",
            "https://127.0.0.1/",
        ] {
            assert!(check_subscribe_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topics_match_exactly_or_by_wildcard_prefix() {
        let allowed = vec![
            "arn:aws:sns:eu-west-1:123456789012:alarms".to_string(),
            "arn:aws:sns:us-east-1:123456789012:*".to_string(),
        ];
        assert!(topic_allowed(
            "arn:aws:sns:eu-west-1:123456789012:alarms",
            &allowed
        ));
        assert!(topic_allowed(
            "arn:aws:sns:us-east-1:123456789012:any",
            &allowed
        ));
        assert!(!topic_allowed(
            "arn:aws:sns:eu-west-1:123456789012:alarms2",
            &allowed
        ));
        assert!(!topic_allowed(
            "arn:aws:sns:eu-west-1:999999999999:alarms",
            &allowed
        ));
        assert!(!topic_allowed("anything", &[]));
    }

    #[test]
    fn messages_missing_signed_fields_are_refused() {
        let no_sig = NOTIFICATION.replace("\"Signature\": \"c2ln\",", "");
        assert!(parse(no_sig.as_bytes()).is_err());
        assert!(parse(b"not json").is_err());
    }
}

//! CloudWatch alarms delivered by SNS (K-GW-3):
//! `POST /api/v1/signals/cloudwatch`, subscribed to an SNS topic as an
//! HTTPS endpoint.
//!
//! SNS cannot send a bearer token, so this endpoint is authenticated by the
//! message itself: its topic must be allowed, its signing certificate must
//! come from SNS (or be trusted from a PEM file), its signature must verify,
//! and its `Timestamp` must be inside the replay window. Only then is a
//! subscription confirmed or an alarm turned into a signal: `ALARM` fires,
//! `OK` resolves, `INSUFFICIENT_DATA` is rejected. The alarm's metric
//! dimensions name the Kubernetes target through an ordered list of
//! [`TargetRule`]s (the default fits Container Insights).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{ObjectRef, RejectReason, Signal, SignalSource, SignalStatus};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;
use crate::sns::{self, SnsMessage};
use crate::sns_trust::{Fetch, HttpsFetch, SigningKey, Trust, TrustError};
use crate::{ConfigError, GatewayState, SignalError};

/// Deadline of one outbound GET (certificate or subscription confirmation).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const SOURCE: &str = "cloudwatch";

/// One way to read a Kubernetes target from an alarm's dimensions: a rule
/// applies when the alarm has every dimension it names.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRule {
    /// Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or Node.
    pub kind: String,
    /// The dimension holding the namespace (namespaced kinds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The dimension holding the object's name.
    pub name: String,
}

/// `gateway.cloudwatch` in the configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudWatchConfig {
    /// Topic ARNs accepted; a trailing `*` matches a prefix. Empty: every
    /// SNS message is refused.
    #[serde(default)]
    pub topics: Vec<String>,
    /// PEM files of signing certificates accepted without fetching.
    #[serde(default)]
    pub trusted_certificate_files: Vec<PathBuf>,
    /// Fetch (and cache) the certificate at `SigningCertURL` when no trusted
    /// certificate verifies a message. Off where AWS is not reachable.
    pub fetch_certificates: bool,
    /// GET the `SubscribeURL` of a SubscriptionConfirmation from an allowed
    /// topic; when off, it is logged for an operator to open.
    pub confirm_subscriptions: bool,
    /// Messages whose `Timestamp` is further from now are refused; it must
    /// exceed the topic's delivery-retry span.
    pub replay_window_seconds: u64,
    /// Tried in order; the first rule whose dimensions are present wins.
    pub targets: Vec<TargetRule>,
}

/// The endpoint's settings, loaded and checked.
pub struct CloudWatch {
    topics: Vec<String>,
    trust: Trust,
    /// For subscription confirmations; `None` when they are not performed.
    confirmer: Option<Arc<dyn Fetch>>,
    replay_window: Duration,
    targets: Vec<TargetRule>,
    /// This cluster's name: alarms whose `ClusterName` names another are
    /// rejected. `None` accepts any.
    cluster_name: Option<String>,
}

impl CloudWatch {
    /// Refuses every message: no topic is allowed.
    pub fn disabled() -> Self {
        Self {
            topics: Vec::new(),
            trust: Trust::new(Vec::new(), None),
            confirmer: None,
            replay_window: Duration::ZERO,
            targets: Vec::new(),
            cluster_name: None,
        }
    }

    /// Reads the trusted certificates and checks the target rules; errors
    /// name the offending file or rule.
    pub fn new(
        config: &CloudWatchConfig,
        cluster_name: Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut trusted = Vec::new();
        for f in &config.trusted_certificate_files {
            let pem = std::fs::read(f).map_err(|source| ConfigError::CertificateFile {
                path: f.clone(),
                source,
            })?;
            let keys = SigningKey::from_pem(&pem).map_err(|reason| ConfigError::Certificate {
                path: f.clone(),
                reason,
            })?;
            trusted.extend(keys);
        }
        config.check()?;
        let needs_http = config.fetch_certificates || config.confirm_subscriptions;
        let http: Option<Arc<dyn Fetch>> = if needs_http {
            Some(Arc::new(HttpsFetch::new(FETCH_TIMEOUT)?))
        } else {
            None
        };
        Ok(Self {
            topics: config.topics.clone(),
            trust: Trust::new(trusted, http.clone().filter(|_| config.fetch_certificates)),
            confirmer: http.filter(|_| config.confirm_subscriptions),
            replay_window: Duration::from_secs(config.replay_window_seconds),
            targets: config.targets.clone(),
            cluster_name: cluster_name.filter(|c| !c.is_empty()),
        })
    }

    /// The signal of a verified Notification.
    pub fn signal(&self, m: &SnsMessage, received: Timestamp) -> Result<Signal, SignalError> {
        let alarm: Alarm = serde_json::from_str(&m.message).map_err(|e| {
            SignalError::Invalid(format!(
                "the Notification's Message is not a CloudWatch alarm: {e}"
            ))
        })?;
        let status = match alarm.new_state_value.as_str() {
            "ALARM" => SignalStatus::Firing,
            "OK" => SignalStatus::Resolved,
            other => {
                return Err(SignalError::Ignored(
                    RejectReason::NotAlarm,
                    format!("alarm state {other}: only ALARM and OK are signals"),
                ));
            }
        };
        let dims: HashMap<&str, &str> = alarm
            .trigger
            .iter()
            .flat_map(|t| &t.dimensions)
            .map(|d| (d.name.as_str(), d.value.as_str()))
            .collect();
        if let (Some(ours), Some(theirs)) = (&self.cluster_name, dims.get("ClusterName"))
            && ours != theirs
        {
            return Err(SignalError::Ignored(
                RejectReason::OtherCluster,
                format!("the alarm is about cluster {theirs}; this is {ours}"),
            ));
        }
        let resource = self.target(&dims).ok_or_else(|| {
            let mut names: Vec<&str> = dims.keys().copied().collect();
            names.sort_unstable();
            SignalError::NoTarget(format!(
                "no gateway.cloudwatch.targets rule matches the alarm's dimensions {names:?}"
            ))
        })?;
        let changed = alarm.state_change_time.as_deref().and_then(parse_time);
        let mut labels = BTreeMap::from([("alertname".to_string(), alarm.alarm_name.clone())]);
        if !resource.namespace.is_empty() {
            labels.insert("namespace".into(), resource.namespace.clone());
        }
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                labels.insert(k.to_string(), v.clone());
            }
        };
        put("aws_region", &alarm.region);
        put("aws_account_id", &alarm.aws_account_id);
        if let Some(t) = &alarm.trigger {
            put("metric_name", &t.metric_name);
            put("metric_namespace", &t.namespace);
        }
        for (name, value) in &dims {
            labels
                .entry(format!("dimension_{name}"))
                .or_insert_with(|| value.to_string());
        }
        let mut annotations = BTreeMap::new();
        for (k, v) in [
            ("description", &alarm.alarm_description),
            ("reason", &alarm.new_state_reason),
            ("alarm_arn", &alarm.alarm_arn),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                annotations.insert(k.to_string(), v.clone());
            }
        }
        annotations.insert("sns_topic_arn".into(), m.topic_arn.clone());
        Ok(Signal {
            source: SignalSource::Cloudwatch,
            status,
            name: alarm.alarm_name,
            // CloudWatch alarms carry no severity.
            severity: "warning".into(),
            instance_key: m.message_id.clone(),
            resource,
            labels,
            annotations,
            firing_time: changed.unwrap_or(received),
            ended_time: (status == SignalStatus::Resolved).then(|| changed.unwrap_or(received)),
            received_time: received,
            raw: m.message.clone(),
        })
    }

    fn target(&self, dims: &HashMap<&str, &str>) -> Option<ObjectRef> {
        self.targets.iter().find_map(|rule| {
            let name = dims.get(rule.name.as_str()).filter(|v| !v.is_empty())?;
            let namespace = match &rule.namespace {
                Some(d) => *dims.get(d.as_str()).filter(|v| !v.is_empty())?,
                None => "",
            };
            let (kind, _) = crate::target_kind(&rule.kind)?;
            Some(ObjectRef::new(kind, namespace, name))
        })
    }
}

impl CloudWatchConfig {
    /// What can be checked without files or network; errors name the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.replay_window_seconds == 0 {
            return Err(ConfigError::ReplayWindow);
        }
        for (index, rule) in self.targets.iter().enumerate() {
            check_rule(rule).map_err(|reason| ConfigError::TargetRule { index, reason })?;
        }
        Ok(())
    }
}

fn check_rule(rule: &TargetRule) -> Result<(), String> {
    let Some((_, namespaced)) = crate::target_kind(&rule.kind) else {
        return Err(format!(
            "kind {:?} is not one of Pod, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, Node",
            rule.kind
        ));
    };
    match (namespaced, &rule.namespace) {
        (true, None) => Err(format!(
            "{} is namespaced: name a namespace dimension",
            rule.kind
        )),
        (false, Some(_)) => Err(format!(
            "{} is cluster-scoped: drop the namespace",
            rule.kind
        )),
        _ => Ok(()),
    }
}

/// CloudWatch writes `2026-11-22T03:00:00.000+0000`, RFC 3339 without the
/// colon in the offset.
pub(crate) fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok().or_else(|| {
        let (head, offset) = s.split_at_checked(s.len().checked_sub(5)?)?;
        let hhmm = offset.strip_prefix(['+', '-'])?;
        if !hhmm.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        format!("{head}{}{}:{}", &offset[..1], &hhmm[..2], &hhmm[2..])
            .parse()
            .ok()
    })
}

/// The alarm in a Notification's `Message`; fields not needed are ignored
/// (CloudWatch adds some over time).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Alarm {
    alarm_name: String,
    #[serde(default)]
    alarm_description: Option<String>,
    #[serde(rename = "AWSAccountId", default)]
    aws_account_id: Option<String>,
    new_state_value: String,
    #[serde(default)]
    new_state_reason: Option<String>,
    #[serde(default)]
    state_change_time: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    alarm_arn: Option<String>,
    #[serde(default)]
    trigger: Option<Trigger>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Trigger {
    #[serde(default)]
    metric_name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    dimensions: Vec<Dimension>,
}

/// Alarm dimensions are spelled in lower case, unlike the rest.
#[derive(Debug, Deserialize)]
struct Dimension {
    name: String,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SnsAnswer<'a> {
    result: &'static str,
    topic_arn: &'a str,
}

fn forbidden(st: &GatewayState, reason: &'static str, detail: String) -> Response {
    st.metrics.count(SOURCE, "forbidden", reason);
    tracing::warn!(reason, %detail, "refused an SNS message");
    Problem::new(StatusCode::FORBIDDEN, "Forbidden", detail).into_response()
}

fn invalid(st: &GatewayState, detail: String) -> Response {
    st.metrics.count(SOURCE, "invalid", "");
    Problem::bad_request(detail).into_response()
}

/// The whole of `POST /api/v1/signals/cloudwatch`.
pub(crate) async fn handle(
    st: &GatewayState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // SNS sends `text/plain; charset=UTF-8`.
    if let Err(p) = crate::check_content_type(headers, &["text/plain", "application/json"]) {
        st.metrics.count(SOURCE, "invalid", "");
        return p.into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            st.metrics.count(SOURCE, "invalid", "");
            return crate::body_problem(rejection).into_response();
        }
    };
    let Some(kind) = headers
        .get("x-amz-sns-message-type")
        .and_then(|v| v.to_str().ok())
    else {
        return invalid(st, "the x-amz-sns-message-type header is missing".into());
    };
    let m = match sns::parse(&body) {
        Ok(m) => m,
        Err(e) => return invalid(st, e),
    };
    if m.kind != kind {
        return invalid(
            st,
            format!(
                "x-amz-sns-message-type {kind:?} differs from the body's Type {:?}",
                m.kind
            ),
        );
    }
    let cw = &st.cloudwatch;
    // Cheap checks first: a message from a topic we do not serve never
    // makes us fetch anything.
    if !sns::topic_allowed(&m.topic_arn, &cw.topics) {
        return forbidden(
            st,
            "topic_not_allowed",
            format!("topic {} is not in gateway.cloudwatch.topics", m.topic_arn),
        );
    }
    if let Err(e) = sns::check_cert_url(&m.signing_cert_url) {
        return forbidden(st, "certificate_url", e);
    }
    let now = Timestamp::now();
    let sent: Timestamp = match m.timestamp.parse() {
        Ok(t) => t,
        Err(e) => {
            return invalid(
                st,
                format!("Timestamp {:?} is not RFC 3339: {e}", m.timestamp),
            );
        }
    };
    let skew = now.duration_since(sent).unsigned_abs();
    if skew > cw.replay_window {
        return forbidden(
            st,
            "replay_window",
            format!(
                "Timestamp {} is {}s from now, outside the {}s replay window",
                m.timestamp,
                skew.as_secs(),
                cw.replay_window.as_secs()
            ),
        );
    }
    match cw.trust.verify(&m, SystemTime::now()).await {
        Ok(()) => {}
        Err(TrustError::Malformed(e)) => return invalid(st, e),
        Err(TrustError::Refused(e)) => return forbidden(st, "signature", e),
        Err(TrustError::Unavailable(e)) => {
            st.metrics.count(SOURCE, "error", "certificate_unavailable");
            tracing::warn!(error = %e, "cannot fetch the SNS signing certificate; asking SNS to retry");
            return Problem::unavailable(crate::RETRY_AFTER_SECS).into_response();
        }
    }
    if let Err(refusal) = st
        .protection
        .limit_identity(&format!("sns:{}", m.topic_arn))
    {
        return refusal.respond(&st.metrics, SOURCE);
    }
    match m.kind.as_str() {
        "Notification" => {
            let signal = cw.signal(&m, now);
            crate::handle_signals(st, SOURCE, vec![signal]).await
        }
        "SubscriptionConfirmation" => confirm(st, &m).await,
        "UnsubscribeConfirmation" => {
            st.metrics.sns_subscription("unsubscribed");
            tracing::warn!(topic = %m.topic_arn, "SNS confirmed an unsubscription: this topic's alarms stop arriving");
            answer(StatusCode::OK, "unsubscribed", &m)
        }
        other => invalid(st, format!("SNS message type {other:?} is not known")),
    }
}

fn answer(code: StatusCode, result: &'static str, m: &SnsMessage) -> Response {
    (
        code,
        Json(SnsAnswer {
            result,
            topic_arn: &m.topic_arn,
        }),
    )
        .into_response()
}

async fn confirm(st: &GatewayState, m: &SnsMessage) -> Response {
    let Some(url) = m.subscribe_url.as_deref() else {
        return invalid(st, "a SubscriptionConfirmation needs a SubscribeURL".into());
    };
    if let Err(e) = sns::check_subscribe_url(url) {
        return forbidden(st, "subscribe_url", e);
    }
    let Some(confirmer) = &st.cloudwatch.confirmer else {
        st.metrics.sns_subscription("unconfirmed");
        tracing::warn!(topic = %m.topic_arn, subscribe_url = url, "SNS subscription awaits confirmation: open the SubscribeURL to confirm it");
        return answer(StatusCode::OK, "unconfirmed", m);
    };
    match confirmer.get(url).await {
        Ok(_) => {
            st.metrics.sns_subscription("confirmed");
            tracing::info!(topic = %m.topic_arn, "confirmed the SNS subscription");
            answer(StatusCode::OK, "confirmed", m)
        }
        Err(e) => {
            st.metrics.sns_subscription("confirm_failed");
            tracing::warn!(topic = %m.topic_arn, error = %e, "could not confirm the SNS subscription; SNS will re-send it");
            Problem::unavailable(crate::RETRY_AFTER_SECS).into_response()
        }
    }
}

/// The documented default: Container Insights' dimensions.
pub fn container_insights_targets() -> Vec<TargetRule> {
    let rule = |kind: &str, namespace: Option<&str>, name: &str| TargetRule {
        kind: kind.into(),
        namespace: namespace.map(Into::into),
        name: name.into(),
    };
    vec![
        rule("Pod", Some("Namespace"), "FullPodName"),
        rule("Deployment", Some("Namespace"), "PodName"),
        rule("Deployment", Some("Namespace"), "Service"),
        rule("Node", None, "NodeName"),
    ]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn cw(cluster: Option<&str>) -> CloudWatch {
        CloudWatch {
            targets: container_insights_targets(),
            cluster_name: cluster.map(Into::into),
            ..CloudWatch::disabled()
        }
    }

    pub(crate) fn notification(alarm: &str) -> SnsMessage {
        SnsMessage {
            kind: "Notification".into(),
            message_id: "m-1".into(),
            token: None,
            topic_arn: "arn:aws:sns:eu-west-1:123456789012:alarms".into(),
            subject: None,
            message: alarm.into(),
            timestamp: "2026-11-22T03:00:01.000Z".into(),
            signature_version: "2".into(),
            signature: String::new(),
            signing_cert_url: String::new(),
            subscribe_url: None,
            unsubscribe_url: None,
        }
    }

    fn alarm(state: &str, dims: &str) -> String {
        format!(
            r#"{{"AlarmName":"cart-cpu-high","AlarmDescription":"CPU above 90%",
            "AWSAccountId":"123456789012","NewStateValue":"{state}",
            "NewStateReason":"Threshold Crossed","StateChangeTime":"2026-11-22T03:00:00.000+0000",
            "Region":"EU (Ireland)","AlarmArn":"arn:aws:cloudwatch:eu-west-1:123456789012:alarm:cart-cpu-high",
            "OldStateValue":"OK","Trigger":{{"MetricName":"pod_cpu_utilization",
            "Namespace":"ContainerInsights","Statistic":"AVERAGE","Dimensions":[{dims}],
            "Period":60,"EvaluationPeriods":1,"ComparisonOperator":"GreaterThanThreshold","Threshold":90.0}}}}"#
        )
    }

    const POD_DIMS: &str = r#"{"value":"prod","name":"ClusterName"},{"value":"shop","name":"Namespace"},{"value":"cart","name":"PodName"}"#;

    fn now() -> Timestamp {
        "2026-11-22T03:00:02Z".parse().unwrap()
    }

    #[test]
    fn an_alarm_fires_on_the_deployment_its_pod_name_dimension_names() {
        let s = cw(None)
            .signal(&notification(&alarm("ALARM", POD_DIMS)), now())
            .unwrap();
        assert_eq!(s.source, SignalSource::Cloudwatch);
        assert_eq!(s.status, SignalStatus::Firing);
        assert_eq!(s.name, "cart-cpu-high");
        assert_eq!(s.resource, ObjectRef::new("Deployment", "shop", "cart"));
        assert_eq!(s.instance_key, "m-1");
        assert_eq!(s.firing_time.to_string(), "2026-11-22T03:00:00Z");
        assert_eq!(s.labels["alertname"], "cart-cpu-high");
        assert_eq!(s.labels["metric_name"], "pod_cpu_utilization");
        assert_eq!(s.labels["dimension_ClusterName"], "prod");
        assert_eq!(s.annotations["reason"], "Threshold Crossed");
        assert!(s.ended_time.is_none());
    }

    #[test]
    fn ok_resolves_and_insufficient_data_is_rejected() {
        let ok = cw(None)
            .signal(&notification(&alarm("OK", POD_DIMS)), now())
            .unwrap();
        assert_eq!(ok.status, SignalStatus::Resolved);
        assert_eq!(ok.ended_time.unwrap().to_string(), "2026-11-22T03:00:00Z");
        let r = cw(None).signal(&notification(&alarm("INSUFFICIENT_DATA", POD_DIMS)), now());
        assert!(matches!(
            r,
            Err(SignalError::Ignored(RejectReason::NotAlarm, _))
        ));
    }

    #[test]
    fn rules_are_tried_in_order_and_the_first_complete_one_wins() {
        let full = r#"{"value":"shop","name":"Namespace"},{"value":"cart","name":"PodName"},{"value":"cart-7d9f-x2x9z","name":"FullPodName"}"#;
        let s = cw(None)
            .signal(&notification(&alarm("ALARM", full)), now())
            .unwrap();
        assert_eq!(s.resource, ObjectRef::new("Pod", "shop", "cart-7d9f-x2x9z"));
        let node =
            r#"{"value":"ip-10-0-0-1","name":"NodeName"},{"value":"prod","name":"ClusterName"}"#;
        let s = cw(None)
            .signal(&notification(&alarm("ALARM", node)), now())
            .unwrap();
        assert_eq!(s.resource, ObjectRef::new("Node", "", "ip-10-0-0-1"));
        // A name without its namespace dimension does not match.
        let no_ns = r#"{"value":"cart","name":"PodName"}"#;
        let r = cw(None).signal(&notification(&alarm("ALARM", no_ns)), now());
        assert!(matches!(r, Err(SignalError::NoTarget(m)) if m.contains("PodName")));
    }

    #[test]
    fn alarms_of_another_cluster_are_rejected() {
        let r = cw(Some("staging")).signal(&notification(&alarm("ALARM", POD_DIMS)), now());
        assert!(matches!(
            r,
            Err(SignalError::Ignored(RejectReason::OtherCluster, _))
        ));
        assert!(
            cw(Some("prod"))
                .signal(&notification(&alarm("ALARM", POD_DIMS)), now())
                .is_ok()
        );
    }

    #[test]
    fn a_message_that_is_not_an_alarm_is_invalid() {
        for body in ["hello", r#"{"AlarmName":"x"}"#, "[]"] {
            let r = cw(None).signal(&notification(body), now());
            assert!(matches!(r, Err(SignalError::Invalid(_))), "{body}");
        }
    }

    #[test]
    fn target_rules_are_checked_at_start_up() {
        let rule = |kind: &str, ns: Option<&str>| TargetRule {
            kind: kind.into(),
            namespace: ns.map(Into::into),
            name: "N".into(),
        };
        assert!(check_rule(&rule("Pod", Some("Namespace"))).is_ok());
        assert!(check_rule(&rule("Node", None)).is_ok());
        assert!(
            check_rule(&rule("Pod", None))
                .unwrap_err()
                .contains("namespaced")
        );
        assert!(check_rule(&rule("Node", Some("Namespace"))).is_err());
        assert!(check_rule(&rule("Service", Some("Namespace"))).is_err());
    }

    #[test]
    fn cloudwatch_times_parse_with_or_without_the_offset_colon() {
        for s in [
            "2026-11-22T03:00:00.000+0000",
            "2026-11-22T03:00:00.000Z",
            "2026-11-22T04:00:00.000+0100",
            "2026-11-22T03:00:00+00:00",
        ] {
            assert_eq!(
                parse_time(s).map(|t| t.to_string()).as_deref(),
                Some("2026-11-22T03:00:00Z"),
                "{s}"
            );
        }
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("x+ab"), None);
        // Found by the fuzzer: a multi-byte character where the offset goes.
        assert_eq!(parse_time("2026-11-22T03:00:00.000é0000"), None);
        assert_eq!(parse_time("ab\u{10000}1"), None);
    }
}

//! Property-based fuzzing of every parser and of the router (K-GW-7: no
//! panic may escape a handler). Inputs are raw bytes, arbitrary JSON, and
//! JSON shaped like each source's payload with arbitrary values in its
//! fields, which reaches much deeper than random bytes. The number of cases
//! is bounded (`PROPTEST_CASES` overrides it), so CI time is bounded.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use kubernaut_api::k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::cloudwatch::tests::{cw, notification};
use crate::sns_trust::SigningKey;
use crate::tests::{Recorder, app};
use crate::{alertmanager, cloudwatch, generic, kubernetes_event, sns};

fn now() -> Timestamp {
    Timestamp::UNIX_EPOCH
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Strings that matter to the parsers: times, statuses, kinds, empties.
fn field() -> impl Strategy<Value = Value> {
    prop_oneof![
        any_json(),
        Just(json!("")),
        Just(json!("4")),
        Just(json!("firing")),
        Just(json!("resolved")),
        Just(json!("Warning")),
        Just(json!("Pod")),
        Just(json!("Node")),
        Just(json!("2026-11-22T03:00:00Z")),
        Just(json!("0001-01-01T00:00:00Z")),
        Just(json!("not a time")),
        ".{0,300}".prop_map(Value::String),
    ]
}

fn labels() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop_oneof![
            Just("alertname".to_string()),
            Just("namespace".to_string()),
            Just("pod".to_string()),
            Just("node".to_string()),
            Just("deployment".to_string()),
            ".{0,6}"
        ],
        prop_oneof![".{0,20}", Just(String::new())],
        0..6,
    )
    .prop_map(|m| json!(m))
}

fn alertmanager_like() -> impl Strategy<Value = Value> {
    let alert = (field(), labels(), labels(), field(), field(), field()).prop_map(
        |(status, labels, annotations, starts, ends, fp)| {
            json!({"status": status, "labels": labels, "annotations": annotations,
                   "startsAt": starts, "endsAt": ends, "fingerprint": fp})
        },
    );
    (
        field(),
        field(),
        labels(),
        prop::collection::vec(alert, 0..4),
        any::<u64>(),
    )
        .prop_map(|(version, status, common, alerts, truncated)| {
            json!({"version": version, "status": status, "commonLabels": common,
                   "alerts": alerts, "truncatedAlerts": truncated, "groupKey": "g"})
        })
}

fn event_like() -> impl Strategy<Value = Value> {
    (
        field(),
        field(),
        field(),
        field(),
        field(),
        field(),
        any::<i32>(),
    )
        .prop_map(|(kind, ns, name, reason, type_, last, count)| {
            json!({"metadata": {"name": "e", "namespace": ns, "uid": name},
                   "involvedObject": {"kind": kind, "namespace": ns, "name": name},
                   "reason": reason, "type": type_, "lastTimestamp": last, "count": count})
        })
}

fn generic_like() -> impl Strategy<Value = Value> {
    prop_oneof![
        generic_one(),
        prop::collection::vec(generic_one(), 0..4).prop_map(Value::Array)
    ]
}

fn generic_one() -> impl Strategy<Value = Value> {
    (
        field(),
        field(),
        field(),
        field(),
        field(),
        labels(),
        field(),
    )
        .prop_map(|(name, id, status, kind, ns, labels, starts)| {
            json!({"name": name, "id": id, "status": status,
                   "target": {"kind": kind, "namespace": ns, "name": "x"},
                   "labels": labels, "startsAt": starts})
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn alertmanager_parsing_never_panics(v in prop_oneof![alertmanager_like(), any_json()]) {
        let body = serde_json::to_vec(&v).unwrap_or_default();
        if let Ok(p) = alertmanager::parse(&body) {
            let _ = p.validate();
            let _ = p.signals(now());
        }
    }

    #[test]
    fn event_parsing_never_panics(v in prop_oneof![event_like(), any_json()]) {
        let body = serde_json::to_vec(&v).unwrap_or_default();
        if let Ok(e) = kubernetes_event::parse(&body) {
            let _ = kubernetes_event::signal(&e, now());
        }
    }

    #[test]
    fn generic_parsing_never_panics(v in prop_oneof![generic_like(), any_json()]) {
        let body = serde_json::to_vec(&v).unwrap_or_default();
        let _ = generic::parse(&body, now());
    }

    #[test]
    fn sns_parsing_and_url_rules_never_panic(v in any_json(), url in ".{0,80}") {
        let body = serde_json::to_vec(&v).unwrap_or_default();
        if let Ok(m) = sns::parse(&body) {
            let _ = m.string_to_sign();
            let _ = sns::check_cert_url(&m.signing_cert_url);
        }
        let _ = sns::check_cert_url(&url);
        let _ = sns::check_cert_url(&format!("https://sns.{url}.amazonaws.com/{url}.pem"));
    }

    #[test]
    fn cloudwatch_alarms_never_panic(v in prop_oneof![alarm_like(), any_json()], s in ".{0,40}") {
        let message = serde_json::to_string(&v).unwrap_or_default();
        for cluster in [None, Some("prod")] {
            let _ = cw(cluster).signal(&notification(&message), now());
        }
        let _ = cloudwatch::parse_time(&s);
        let _ = sns::check_subscribe_url(&s);
        let _ = sns::check_subscribe_url(&format!("https://sns.{s}"));
    }

    #[test]
    fn certificate_pem_never_panics(b64 in "[A-Za-z0-9+/=\n]{0,600}") {
        let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
        let _ = SigningKey::from_pem(pem.as_bytes());
    }

    #[test]
    fn raw_bytes_never_panic_a_parser(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = SigningKey::from_pem(&bytes);
        let _ = sns::parse(&bytes);
        let _ = alertmanager::parse(&bytes);
        let _ = kubernetes_event::parse(&bytes);
        let _ = generic::parse(&bytes, now());
    }
}

/// Shaped like a CloudWatch alarm, with arbitrary values.
fn alarm_like() -> impl Strategy<Value = Value> {
    let dims = prop::collection::vec(
        (
            prop_oneof![
                Just("Namespace"),
                Just("PodName"),
                Just("FullPodName"),
                Just("Service"),
                Just("NodeName"),
                Just("ClusterName")
            ],
            ".{0,10}",
        )
            .prop_map(|(n, v)| json!({"name": n, "value": v})),
        0..5,
    );
    (
        prop_oneof![
            Just("ALARM".to_string()),
            Just("OK".to_string()),
            Just("INSUFFICIENT_DATA".to_string()),
            ".{0,8}"
        ],
        ".{0,30}",
        dims,
        any_json(),
    )
        .prop_map(|(state, time, dims, extra)| {
            json!({"AlarmName": "a", "NewStateValue": state, "StateChangeTime": time,
                   "Trigger": {"MetricName": "m", "Dimensions": dims}, "Extra": extra})
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Through the whole router: every answer is a defined status code.
    #[test]
    fn the_router_answers_every_body_with_a_defined_code(
        path in prop_oneof![Just("alertmanager"), Just("kubernetes-event"), Just("generic"), Just("cloudwatch")],
        v in prop_oneof![alertmanager_like(), event_like(), generic_like(), any_json()],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let status = rt.block_on(async {
            let req = Request::post(format!("/api/v1/signals/{path}"))
                .header("content-type", "application/json")
                .header("x-amz-sns-message-type", "Notification")
                .body(Body::from(serde_json::to_vec(&v).unwrap_or_default()))
                .unwrap();
            app(Arc::new(Recorder::default())).oneshot(req).await.unwrap().status().as_u16()
        });
        prop_assert!(matches!(status, 200 | 201 | 202 | 207 | 400 | 403), "{status}");
    }
}

//! Router tests with an in-process intake double: pure request handling, no
//! cluster. The real intake is exercised by the end-to-end tests.

use std::sync::Mutex;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use kubernaut_api::{IntakeError, Signal};
use prometheus_client::registry::Registry;
use tower::ServiceExt;

use super::*;

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Signal>>,
    fail: bool,
}

#[async_trait]
impl SignalIntake for Recorder {
    async fn ingest(&self, signal: Signal) -> Result<IngestOutcome, IntakeError> {
        if self.fail {
            return Err(IntakeError::Unavailable("down".into()));
        }
        let mut seen = self.seen.lock().unwrap();
        let dup = seen.iter().any(|s| s.instance_id() == signal.instance_id());
        let name = format!("rr-{}", &signal.instance_id()[..8]);
        seen.push(signal);
        Ok(if dup {
            IngestOutcome::Duplicate {
                request: name,
                namespace: "shop".into(),
                fingerprint: "f".into(),
                occurrence_count: 2,
            }
        } else {
            IngestOutcome::Created {
                request: name,
                namespace: "shop".into(),
                fingerprint: "f".into(),
            }
        })
    }
}

fn app(intake: Arc<Recorder>) -> Router {
    let mut reg = Registry::default();
    router(GatewayState {
        intake,
        metrics: Metrics::register(&mut reg),
    })
}

fn alert(pod: &str, status: &str) -> String {
    format!(
        r#"{{"status":"{status}","labels":{{"alertname":"KubePodCrashLooping","namespace":"shop","pod":"{pod}"}},
        "annotations":{{}},"startsAt":"2026-11-22T03:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"fp-{pod}"}}"#
    )
}

fn payload(alerts: &[String]) -> String {
    format!(
        r#"{{"version":"4","groupKey":"g","truncatedAlerts":0,"status":"firing","receiver":"k","groupLabels":{{}},
        "commonLabels":{{}},"commonAnnotations":{{}},"externalURL":"","alerts":[{}]}}"#,
        alerts.join(",")
    )
}

async fn post(app: Router, ct: &str, body: impl Into<Body>) -> (StatusCode, String, String) {
    let req = Request::post("/api/v1/signals/alertmanager")
        .header("content-type", ct)
        .body(body.into())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn first_alert_creates_and_a_redelivery_is_a_duplicate() {
    let intake = Arc::new(Recorder::default());
    let body = payload(&[alert("cart-1", "firing")]);
    let (s, _, b) = post(app(intake.clone()), "application/json", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert!(b.contains(r#""result":"created""#));
    let (s, _, b) = post(app(intake.clone()), "application/json; charset=utf-8", body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert!(b.contains(r#""occurrenceCount":2"#));
    assert_eq!(intake.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn malformed_json_is_a_400_problem() {
    let (s, ct, b) = post(
        app(Arc::default()),
        "application/json",
        "{\"version\": \"4\", ",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(ct, "application/problem+json");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["status"], 400);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("invalid Alertmanager payload"),
        "{b}"
    );
}

#[tokio::test]
async fn wrong_content_type_is_415_and_oversized_body_is_413() {
    let (s, ct, _) = post(
        app(Arc::default()),
        "text/plain",
        payload(&[alert("a", "firing")]),
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(ct, "application/problem+json");
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_BODY_BYTES + 1));
    let (s, ct, _) = post(app(Arc::default()), "application/json", big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(ct, "application/problem+json");
}

#[tokio::test]
async fn get_is_405() {
    let req = Request::get("/api/v1/signals/alertmanager")
        .body(Body::empty())
        .unwrap();
    let resp = app(Arc::default()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_batch_answers_207_with_a_result_per_alert() {
    let intake = Arc::new(Recorder::default());
    let no_target = alert("x", "firing").replace(r#""pod":"x""#, r#""instance":"x""#);
    let body = payload(&[
        alert("a", "firing"),
        alert("b", "resolved"),
        no_target,
        alert("a", "firing"),
    ]);
    let (s, _, b) = post(app(intake.clone()), "application/json", body).await;
    assert_eq!(s, StatusCode::MULTI_STATUS, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    let codes: Vec<u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [201, 200, 200, 202]);
    assert_eq!(v["results"][1]["reason"], "resolved");
    assert_eq!(v["results"][2]["reason"], "no_target");
    // The resolved alert and the one without a target never reach the intake.
    assert_eq!(intake.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn an_unavailable_intake_answers_503_with_retry_after() {
    let intake = Arc::new(Recorder {
        fail: true,
        ..Default::default()
    });
    let req = Request::post("/api/v1/signals/alertmanager")
        .header("content-type", "application/json")
        .body(Body::from(payload(&[alert("a", "firing")])))
        .unwrap();
    let resp = app(intake).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "5");
}

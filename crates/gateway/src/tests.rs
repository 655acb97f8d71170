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
pub(crate) struct Recorder {
    seen: Mutex<Vec<Signal>>,
    fail: bool,
    delay: Option<std::time::Duration>,
}

#[async_trait]
impl SignalIntake for Recorder {
    async fn resolve(&self, signal: Signal) -> Result<IngestOutcome, IntakeError> {
        let known = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.instance_id() == signal.instance_id());
        Ok(IngestOutcome::Resolved {
            request: known.then(|| {
                kubernaut_api::RequestKey::new("shop", format!("rr-{}", &signal.instance_id()[..8]))
            }),
        })
    }

    async fn ingest(&self, signal: Signal) -> Result<IngestOutcome, IntakeError> {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
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

pub(crate) fn app(intake: Arc<Recorder>) -> Router {
    app_with(intake, ProtectionConfig::open())
}

fn app_with(intake: Arc<Recorder>, protection: ProtectionConfig) -> Router {
    let mut reg = Registry::default();
    router(GatewayState {
        intake,
        metrics: Metrics::register(&mut reg),
        protection: Arc::new(Protection::new(protection)),
        cloudwatch: Arc::new(crate::CloudWatch::disabled()),
        approvals: None,
        limits: Limits::default(),
        slack: None,
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
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn unknown_paths_are_404_problems() {
    let req = Request::post("/api/v1/signals/pagerduty")
        .body(Body::empty())
        .unwrap();
    let resp = app(Arc::default()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
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
    assert_eq!(v["results"][1]["result"], "resolved");
    assert!(v["results"][1].get("request").is_none(), "b never fired");
    assert_eq!(v["results"][2]["reason"], "no_target");
    // The resolved alert goes to resolve(); the one without a target nowhere.
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

mod protection {
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use kubernaut_api::{ReviewedUser, TokenReviewer};

    use super::*;

    /// A reviewer double: knows two tokens, counts how often it is asked.
    #[derive(Default)]
    struct Reviewer {
        asked: AtomicUsize,
        down: bool,
    }

    #[async_trait]
    impl TokenReviewer for Reviewer {
        async fn review(&self, token: &str) -> Result<Option<ReviewedUser>, String> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if self.down {
                return Err("connection refused".into());
            }
            Ok(match token {
                "am-token" => Some(ReviewedUser {
                    username: "system:serviceaccount:monitoring:alertmanager".into(),
                    groups: vec!["system:serviceaccounts".into()],
                }),
                "other-token" => Some(ReviewedUser {
                    username: "system:serviceaccount:shop:app".into(),
                    groups: vec!["system:serviceaccounts".into()],
                }),
                _ => None,
            })
        }
    }

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn guarded(reviewer: Option<Arc<Reviewer>>) -> ProtectionConfig {
        ProtectionConfig {
            auth_enabled: true,
            static_tokens: vec!["s3cret".into()],
            review: reviewer.map(|r| ReviewPolicy {
                reviewer: r,
                allowed_users: vec!["system:serviceaccount:monitoring:alertmanager".into()],
                allowed_groups: vec![],
            }),
            ..ProtectionConfig::open()
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3))]
        /// Senders cycling through made-up tokens: each costs at most one
        /// review, and the cache of answers stays within its bound.
        #[test]
        fn the_review_cache_stays_within_its_bound(extra in 1usize..300, seed in "[a-z]{8}") {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let reviewer = Arc::new(Reviewer::default());
            let p = Protection::new(guarded(Some(reviewer.clone())));
            let n = 10_000 + extra;
            rt.block_on(async {
                for i in 0..n {
                    let mut headers = axum::http::HeaderMap::new();
                    headers.insert(
                        "authorization",
                        format!("Bearer {seed}-{i}").parse().unwrap(),
                    );
                    proptest::prop_assert!(p.authenticate(&headers).await.is_err());
                }
                Ok(())
            })?;
            proptest::prop_assert!(p.cached_reviews() <= 10_000);
            proptest::prop_assert_eq!(reviewer.asked.load(Ordering::SeqCst), n);
        }
    }

    async fn send(app: Router, token: Option<&str>) -> axum::response::Response {
        let mut req = Request::post("/api/v1/signals/alertmanager")
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Body::from(payload(&[alert("a", "firing")])))
            .unwrap();
        app.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn missing_and_wrong_tokens_are_401_with_www_authenticate() {
        let intake = Arc::new(Recorder::default());
        let app = app_with(intake.clone(), guarded(None));
        for token in [None, Some("guess"), Some("")] {
            let resp = send(app.clone(), token).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{token:?}");
            assert_eq!(
                resp.headers()["www-authenticate"],
                "Bearer realm=\"kubernaut\""
            );
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
        }
        assert!(
            intake.seen.lock().unwrap().is_empty(),
            "nothing reached the intake"
        );
        let resp = send(app, Some("s3cret")).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }

    #[tokio::test]
    async fn reviewed_tokens_pass_only_for_allowed_identities_and_are_cached() {
        let reviewer = Arc::new(Reviewer::default());
        let app = app_with(Arc::default(), guarded(Some(reviewer.clone())));
        assert_eq!(
            send(app.clone(), Some("am-token")).await.status(),
            StatusCode::CREATED
        );
        assert_eq!(
            send(app.clone(), Some("am-token")).await.status(),
            StatusCode::ACCEPTED
        );
        assert_eq!(
            reviewer.asked.load(Ordering::SeqCst),
            1,
            "the answer is cached"
        );
        let resp = send(app.clone(), Some("other-token")).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            send(app.clone(), Some("nobody")).await.status(),
            StatusCode::UNAUTHORIZED
        );
        // Static tokens never go to the API server.
        assert_eq!(
            send(app, Some("s3cret")).await.status(),
            StatusCode::ACCEPTED
        );
        assert_eq!(reviewer.asked.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_unreachable_token_review_is_503_and_not_cached() {
        let reviewer = Arc::new(Reviewer {
            down: true,
            ..Default::default()
        });
        let app = app_with(Arc::default(), guarded(Some(reviewer.clone())));
        for _ in 0..2 {
            let resp = send(app.clone(), Some("am-token")).await;
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(resp.headers().contains_key("retry-after"));
        }
        assert_eq!(reviewer.asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_caller_over_its_rate_gets_429_with_retry_after() {
        let app = app_with(
            Arc::default(),
            ProtectionConfig {
                per_identity: rate(1, 3),
                ..guarded(None)
            },
        );
        let mut codes = Vec::new();
        for _ in 0..5 {
            let resp = send(app.clone(), Some("s3cret")).await;
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(resp.headers()["retry-after"], "1");
                assert_eq!(resp.headers()["content-type"], "application/problem+json");
            }
            codes.push(resp.status().as_u16());
        }
        assert_eq!(codes, [201, 202, 202, 429, 429]);
    }

    #[tokio::test]
    async fn the_source_ip_limit_applies_before_authentication() {
        let protection = Protection::new(ProtectionConfig {
            per_source_ip: rate(1, 2),
            ..guarded(None)
        });
        let ip = Some("10.0.0.7".parse().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert_eq!(
            protection.admit(ip, &headers).await,
            Err(protect::Refusal::InvalidToken)
        );
        assert_eq!(
            protection.admit(ip, &headers).await,
            Err(protect::Refusal::InvalidToken)
        );
        assert!(matches!(
            protection.admit(ip, &headers).await,
            Err(protect::Refusal::RateLimited(_))
        ));
        // Another address is not affected.
        let other = Some("10.0.0.8".parse().unwrap());
        assert_eq!(
            protection.admit(other, &headers).await,
            Err(protect::Refusal::InvalidToken)
        );
    }

    #[test]
    fn only_a_trusted_proxy_may_name_the_client() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
        let forwarded = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", v.parse().unwrap());
            h
        };
        // From the proxy: the nearest address that is not a proxy.
        assert_eq!(
            protect::client_ip(
                ip("10.0.0.1"),
                &forwarded("198.51.100.7, 10.0.0.9"),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // A client prepending a made-up address does not escape its own.
        assert_eq!(
            protect::client_ip(ip("10.0.0.1"), &forwarded("1.2.3.4, 203.0.113.5"), &trusted),
            ip("203.0.113.5")
        );
        // From anyone else the header is ignored.
        assert_eq!(
            protect::client_ip(ip("203.0.113.5"), &forwarded("1.2.3.4"), &trusted),
            ip("203.0.113.5")
        );
        // Garbage or nothing: the proxy itself.
        assert_eq!(
            protect::client_ip(ip("10.0.0.1"), &forwarded("not-an-ip"), &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            protect::client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[tokio::test]
    async fn a_request_over_its_deadline_is_503() {
        let slow = Arc::new(Recorder {
            delay: Some(Duration::from_millis(300)),
            ..Default::default()
        });
        let app = app_with(
            slow,
            ProtectionConfig {
                request_timeout: Duration::from_millis(50),
                ..ProtectionConfig::open()
            },
        );
        let resp = send(app, None).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "5");
    }
}

/// An approval desk whose cluster side is down, with an internal reason.
struct DownDesk;

#[async_trait]
impl kubernaut_api::ApprovalDesk for DownDesk {
    async fn decide(
        &self,
        _token: &str,
        _namespace: &str,
        _name: &str,
        _approved: bool,
    ) -> Result<String, kubernaut_api::ApprovalError> {
        Err(kubernaut_api::ApprovalError::Unavailable(
            "dial tcp 10.0.0.1:6443: connection refused (internal)".into(),
        ))
    }

    async fn decide_as(
        &self,
        _user: &str,
        _namespace: &str,
        _name: &str,
        _approved: bool,
    ) -> Result<String, kubernaut_api::ApprovalError> {
        Err(kubernaut_api::ApprovalError::Unavailable(
            "dial tcp 10.0.0.1:6443: connection refused (internal)".into(),
        ))
    }
}

#[tokio::test]
async fn a_5xx_body_names_no_internal_error() {
    let mut reg = Registry::default();
    let app = router(GatewayState {
        intake: Arc::<Recorder>::default(),
        metrics: Metrics::register(&mut reg),
        protection: Arc::new(Protection::new(ProtectionConfig::open())),
        cloudwatch: Arc::new(crate::CloudWatch::disabled()),
        approvals: Some(Arc::new(DownDesk)),
        limits: Limits::default(),
        slack: None,
    });
    let req = Request::post("/api/v1/remediations/shop/rr-1/approval")
        .header("content-type", "application/json")
        .header("authorization", "Bearer someone")
        .body(Body::from(r#"{"decision":"approved"}"#))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("try again"), "{body}");
    assert!(
        !body.contains("10.0.0.1") && !body.contains("internal"),
        "{body}"
    );
}

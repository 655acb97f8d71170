//! The HolmesGPT client against recorded `/api/chat` exchanges that follow
//! HolmesGPT's documented request and response schema (its server is not
//! on PyPI, so there is no real one to run here). A loopback server checks
//! what the client sends against the recorded request and answers with the
//! recorded response.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kubernaut_llm::{HolmesAuth, HolmesClient, HolmesConfig, LlmError, Usage};
use serde_json::Value;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/holmes/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// Serves `/api/chat` with `status` and `body`; returns its URL and what it saw.
async fn holmes(status: StatusCode, body: String) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        "/api/chat",
        post(move |headers: HeaderMap, body_in: String| {
            let record = record.clone();
            let body = body.clone();
            async move {
                let json: Value = serde_json::from_str(&body_in).unwrap();
                record.lock().unwrap().push((headers, json));
                (status, body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn client(url: &str, auth: HolmesAuth) -> HolmesClient {
    HolmesClient::new(HolmesConfig {
        base_url: url.into(),
        model: Some("gpt-4.1".into()),
        api_key: Some("s3cret".into()),
        auth,
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

#[tokio::test]
async fn the_request_matches_the_recorded_one_and_the_answer_is_parsed() {
    let recorded: Value = serde_json::from_str(&fixture("chat_request.json")).unwrap();
    let (url, seen) = holmes(StatusCode::OK, fixture("chat_response.json")).await;
    let schema = &recorded["response_format"]["json_schema"]["schema"];
    let system = recorded["conversation_history"][0]["content"]
        .as_str()
        .unwrap();
    let ask = recorded["ask"].as_str().unwrap();
    let answer = client(&url, HolmesAuth::Bearer)
        .structured(system, ask, "remediation", schema)
        .await
        .unwrap();

    let seen = seen.lock().unwrap();
    let (headers, body) = &seen[0];
    assert_eq!(
        body, &recorded,
        "the request body is HolmesGPT's ChatRequest"
    );
    assert_eq!(headers["authorization"], "Bearer s3cret");
    assert_eq!(answer.output["confidence"], 0.85);
    assert_eq!(answer.output["actions"][0]["action"], "rollback_deployment");
    assert_eq!(
        answer.usage,
        Some(Usage {
            prompt_tokens: 2113,
            completion_tokens: 61
        })
    );
}

#[tokio::test]
async fn an_api_key_goes_in_its_header_and_a_fenced_answer_is_unwrapped() {
    let (url, seen) = holmes(StatusCode::OK, fixture("chat_response_fenced.json")).await;
    let answer = client(&url, HolmesAuth::ApiKey)
        .structured("sys", "ask", "remediation", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(answer.output["rootCause"], "OOMKilled");
    assert_eq!(answer.usage, None);
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0["x-api-key"], "s3cret");
    assert!(seen[0].0.get("authorization").is_none());
}

#[tokio::test]
async fn errors_say_what_went_wrong() {
    let (url, _) = holmes(
        StatusCode::UNPROCESSABLE_ENTITY,
        r#"{"detail":[{"msg":"The first item in conversation_history must contain 'role': 'system'"}]}"#.into(),
    )
    .await;
    let err = client(&url, HolmesAuth::Bearer)
        .structured("sys", "ask", "r", &serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Status { status: 422, body } if body.contains("role")),
        "{err}"
    );
    assert!(!err.is_provider_failure(), "a 4xx is our request's fault");

    let (url, _) = holmes(
        StatusCode::OK,
        r#"{"analysis": "I would restart it."}"#.into(),
    )
    .await;
    let err = client(&url, HolmesAuth::Bearer)
        .structured("sys", "ask", "r", &serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::NotJson(_)), "{err}");
}

//! The OpenAI-compatible client against a real local LLM server
//! (llama.cpp's, `scripts/llm.sh`): the contract, never the model's
//! judgement. Schema-constrained output comes back as JSON of the schema's
//! shape; the `json_schema` response format, which this server refuses, is
//! a clear HTTP error; an unreachable or silent server fails within the
//! timeout.

use std::time::{Duration, Instant};

use kubernaut_e2e::llm_server;
use kubernaut_llm::{LlmError, OpenAiClient, OpenAiConfig, SchemaMode};
use serde_json::json;

fn config(url: &str, model: &str, mode: SchemaMode, timeout: Duration) -> OpenAiConfig {
    OpenAiConfig {
        base_url: url.to_string(),
        model: model.to_string(),
        api_key: None,
        timeout,
        schema_mode: mode,
        max_tokens: 80,
        // The packaged base model has no chat template for system turns.
        fold_system_prompt: true,
    }
}

fn decision_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": ["restart_pod", "rollout_restart", "notify_only"]},
            "confidence": {"type": "number"}
        },
        "required": ["action", "confidence"]
    })
}

const SYSTEM: &str = "You choose one remediation action for a Kubernetes alert.";
const USER: &str = "Alert KubePodCrashLooping on pod shop/cart-1. Which action?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_constrained_output_has_the_schemas_shape() -> anyhow::Result<()> {
    let (url, model) = llm_server()?;
    let timeout = Duration::from_secs(60);
    let client = OpenAiClient::new(config(&url, &model, SchemaMode::JsonObjectSchema, timeout))?;
    let answer = client
        .structured(SYSTEM, USER, "decision", &decision_schema())
        .await?;
    let action = answer.output["action"].as_str().unwrap_or_default();
    assert!(
        ["restart_pod", "rollout_restart", "notify_only"].contains(&action),
        "{}",
        answer.output
    );
    assert!(answer.output["confidence"].is_number(), "{}", answer.output);
    let usage = answer.usage.expect("llama.cpp reports usage");
    assert!(
        usage.prompt_tokens > 0 && usage.completion_tokens > 0,
        "{usage:?}"
    );
    eprintln!(
        "structured answer in {:?}: {}",
        answer.latency, answer.output
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_schema_format_this_server_refuses_is_a_clear_error() -> anyhow::Result<()> {
    let (url, model) = llm_server()?;
    let client = OpenAiClient::new(config(
        &url,
        &model,
        SchemaMode::JsonSchema,
        Duration::from_secs(60),
    ))?;
    let err = client
        .structured(SYSTEM, USER, "decision", &decision_schema())
        .await
        .expect_err("llama.cpp's server does not take json_schema");
    assert!(
        matches!(&err, LlmError::Status { status, .. } if *status >= 400),
        "{err}"
    );
    assert_eq!(err.reason(), "http_error");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_silent_server_fails_within_the_timeout() -> anyhow::Result<()> {
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let timeout = Duration::from_secs(2);
    let client = OpenAiClient::new(config(&url, "m", SchemaMode::JsonObjectSchema, timeout))?;
    let err = client
        .structured(SYSTEM, USER, "decision", &decision_schema())
        .await
        .expect_err("nothing listens");
    assert_eq!(err.reason(), "unreachable", "{err}");

    // A server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", silent.local_addr()?);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let client = OpenAiClient::new(config(&url, "m", SchemaMode::JsonObjectSchema, timeout))?;
    let started = Instant::now();
    let err = client
        .structured(SYSTEM, USER, "decision", &decision_schema())
        .await
        .expect_err("the server never answers");
    assert_eq!(err.reason(), "timeout", "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

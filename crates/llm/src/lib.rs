//! The LLM providers of the Analysis stage (K-AI-1), behind one
//! [`Provider`]: an OpenAI-compatible chat-completions client
//! ([`openai`]: llama.cpp's server, vLLM, Ollama, OpenAI, LiteLLM) and
//! HolmesGPT's `POST /api/chat` ([`holmes`]), both asking for output
//! constrained by a JSON schema. [`guard`] wraps a provider in what every
//! call needs (K-AI-5): a circuit breaker, a concurrency limit and a rate
//! limit, on top of each client's own timeout.
//!
//! A provider returns the model's JSON; checking it against the action
//! catalogue, retrying, and falling back to the rules belong to the
//! Analysis stage.

pub mod guard;
pub mod holmes;
pub mod openai;

pub use guard::{Breaker, BreakerState, Guarded, Limits};
pub use holmes::{HolmesAuth, HolmesClient, HolmesConfig};
pub use openai::{OpenAiClient, OpenAiConfig, parse_completion, request_body};

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How the server is asked for schema-shaped output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SchemaMode {
    /// `response_format: {type: json_schema, json_schema: {name, schema, strict}}`
    /// (OpenAI, vLLM).
    #[default]
    JsonSchema,
    /// `response_format: {type: json_object, schema}` (llama.cpp's server).
    JsonObjectSchema,
    /// `response_format: {type: json_object}`, the schema in the prompt only.
    JsonObject,
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("the LLM did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the LLM is unreachable: {0}")]
    Unreachable(String),
    #[error("the LLM answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the LLM's answer is not a chat completion: {0}")]
    Malformed(String),
    #[error("the LLM's output is not JSON: {0}")]
    NotJson(String),
    #[error("the LLM's circuit breaker is open after repeated failures; retrying after {0:?}")]
    CircuitOpen(Duration),
    #[error("the LLM's {0} concurrent calls are all busy")]
    Busy(usize),
    #[error("the LLM's rate limit leaves no call within {0:?}")]
    RateLimited(Duration),
}

impl LlmError {
    /// For metrics and the status: why the LLM path was left.
    pub fn reason(&self) -> &'static str {
        match self {
            LlmError::Timeout(_) => "timeout",
            LlmError::Unreachable(_) => "unreachable",
            LlmError::Status { .. } => "http_error",
            LlmError::Malformed(_) => "malformed",
            LlmError::NotJson(_) => "not_json",
            LlmError::CircuitOpen(_) => "circuit_open",
            LlmError::Busy(_) => "busy",
            LlmError::RateLimited(_) => "rate_limited",
        }
    }

    /// Whether the failure says the provider is unwell (it feeds the
    /// circuit breaker). An answer that is not JSON came from a working
    /// server; it is the model that was wrong.
    pub fn is_provider_failure(&self) -> bool {
        match self {
            LlmError::Timeout(_) | LlmError::Unreachable(_) | LlmError::Malformed(_) => true,
            LlmError::Status { status, .. } => *status >= 500 || *status == 429,
            LlmError::NotJson(_)
            | LlmError::CircuitOpen(_)
            | LlmError::Busy(_)
            | LlmError::RateLimited(_) => false,
        }
    }
}

/// Token counts, when the server reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// One structured answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub output: Value,
    pub usage: Option<Usage>,
    pub latency: Duration,
}

/// A configured provider.
pub enum Provider {
    OpenAi(OpenAiClient),
    Holmes(HolmesClient),
}

impl Provider {
    /// For metrics and the status.
    pub fn name(&self) -> &'static str {
        match self {
            Provider::OpenAi(_) => "openai",
            Provider::Holmes(_) => "holmesgpt",
        }
    }

    /// Asks for an answer shaped by `schema`, named `name`.
    pub async fn structured(
        &self,
        system: &str,
        user: &str,
        name: &str,
        schema: &Value,
    ) -> Result<Answer, LlmError> {
        match self {
            Provider::OpenAi(c) => c.structured(system, user, name, schema).await,
            Provider::Holmes(c) => c.structured(system, user, name, schema).await,
        }
    }
}

/// reqwest is built without a default TLS provider (ring is installed
/// here); an error means one is installed already.
fn http_client(timeout: Duration) -> Result<reqwest::Client, LlmError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| LlmError::Unreachable(format!("cannot build the HTTP client: {e}")))
}

/// Sends `req` and reads the answer's body: the text of a 2xx answer and
/// how long it took, or the error. A client's timeout covers the whole
/// call, so `timeout` names it in a timeout error.
async fn send(
    req: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<(String, Duration), LlmError> {
    let started = std::time::Instant::now();
    let resp = req.send().await.map_err(|e| transport(e, timeout))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| transport(e, timeout))?;
    if !status.is_success() {
        return Err(LlmError::Status {
            status: status.as_u16(),
            body: truncate(&text, 500),
        });
    }
    Ok((text, started.elapsed()))
}

/// What a failed send or read means.
fn transport(e: reqwest::Error, timeout: Duration) -> LlmError {
    if e.is_timeout() {
        LlmError::Timeout(timeout)
    } else {
        LlmError::Unreachable(e.to_string())
    }
}

/// The model's output, which may come wrapped in a Markdown code fence.
fn json_output(content: &str) -> Result<Value, LlmError> {
    let trimmed = content.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|s| s.strip_suffix("```"))
        .unwrap_or(trimmed);
    serde_json::from_str(unfenced.trim()).map_err(|_| LlmError::NotJson(truncate(content, 200)))
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

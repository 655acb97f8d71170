//! HolmesGPT's `POST /api/chat` (HolmesGPT removed `/api/investigate`).
//! The request carries the question as `ask`, the system prompt as the
//! first item of `conversation_history` (HolmesGPT requires that item's
//! role to be `system`), the `model` when one is named, and
//! `response_format` with the JSON schema; the answer's `analysis` is the
//! model's text, here the JSON. HolmesGPT authenticates with a Bearer token
//! or an `X-API-Key` header, depending on how it is deployed.
//!
//! HolmesGPT's server is not on PyPI, so this client is tested against
//! recorded request/response fixtures that follow its documented schema
//! (`tests/fixtures/holmes/`), not against a running HolmesGPT.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Answer, LlmError, Usage, http_client, json_output, send, truncate};

/// How the API key is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HolmesAuth {
    #[default]
    Bearer,
    /// `X-API-Key: <key>`.
    ApiKey,
}

#[derive(Clone, Debug)]
pub struct HolmesConfig {
    /// HolmesGPT's root, e.g. `http://holmesgpt.monitoring:5050`.
    pub base_url: String,
    /// One of HolmesGPT's configured models; `None` uses its default.
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub auth: HolmesAuth,
    /// For the whole call: HolmesGPT may run tools before it answers.
    pub timeout: Duration,
}

pub struct HolmesClient {
    config: HolmesConfig,
    http: reqwest::Client,
}

impl HolmesClient {
    pub fn new(config: HolmesConfig) -> Result<Self, LlmError> {
        let http = http_client(config.timeout)?;
        Ok(Self { config, http })
    }

    pub async fn structured(
        &self,
        system: &str,
        user: &str,
        name: &str,
        schema: &Value,
    ) -> Result<Answer, LlmError> {
        let body = chat_body(&self.config, system, user, name, schema);
        let url = format!("{}/api/chat", self.config.base_url.trim_end_matches('/'));
        let mut req = self.http.post(&url).json(&body);
        if let Some(key) = &self.config.api_key {
            req = match self.config.auth {
                HolmesAuth::Bearer => req.bearer_auth(key),
                HolmesAuth::ApiKey => req.header("X-API-Key", key),
            };
        }
        let (text, latency) = send(req, self.config.timeout).await?;
        let (output, usage) = parse_chat(&text)?;
        Ok(Answer {
            output,
            usage,
            latency,
        })
    }
}

/// The `/api/chat` request body.
pub fn chat_body(c: &HolmesConfig, system: &str, user: &str, name: &str, schema: &Value) -> Value {
    let mut body = json!({
        "ask": user,
        "conversation_history": [{"role": "system", "content": system}],
        "stream": false,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": true},
        },
    });
    if let Some(model) = &c.model {
        body["model"] = json!(model);
    }
    body
}

/// The JSON in a `/api/chat` answer's `analysis`, and the token usage when
/// its `metadata` reports one.
pub fn parse_chat(text: &str) -> Result<(Value, Option<Usage>), LlmError> {
    #[derive(Deserialize)]
    struct ChatResponse {
        analysis: Option<String>,
        #[serde(default)]
        metadata: Option<Value>,
    }
    let resp: ChatResponse = serde_json::from_str(text)
        .map_err(|e| LlmError::Malformed(format!("{e}: {}", truncate(text, 200))))?;
    let analysis = resp
        .analysis
        .ok_or_else(|| LlmError::Malformed("no analysis in the answer".into()))?;
    let usage = resp
        .metadata
        .and_then(|m| m.get("usage").cloned())
        .and_then(|u| serde_json::from_value(u).ok());
    Ok((json_output(&analysis)?, usage))
}

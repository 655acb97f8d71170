//! OpenAI-compatible chat completions. Servers differ in how they take
//! the schema, so the client has a [`SchemaMode`]: OpenAI's `json_schema`
//! response format, llama.cpp's `json_object` with a `schema` (its server
//! answers 500 to `json_schema`), or plain `json_object` with the schema in
//! the prompt, validated afterwards.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Answer, LlmError, SchemaMode, Usage, http_client, json_output, send, truncate};

#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// Up to and including `/v1`, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    pub model: String,
    /// Sent as a Bearer token when set (from a Secret).
    pub api_key: Option<String>,
    /// For the whole call, connection included.
    pub timeout: Duration,
    pub schema_mode: SchemaMode,
    pub max_tokens: u32,
    /// Servers whose chat template drops system messages (the packaged
    /// Gemma base model's) get the system prompt as the start of the first
    /// user turn instead.
    pub fold_system_prompt: bool,
}

pub struct OpenAiClient {
    config: OpenAiConfig,
    http: reqwest::Client,
}

impl OpenAiClient {
    pub fn new(config: OpenAiConfig) -> Result<Self, LlmError> {
        let http = http_client(config.timeout)?;
        Ok(Self { config, http })
    }

    /// Asks for an answer shaped by `schema`, named `name` (OpenAI wants a
    /// name for the schema).
    pub async fn structured(
        &self,
        system: &str,
        user: &str,
        name: &str,
        schema: &Value,
    ) -> Result<Answer, LlmError> {
        let body = request_body(&self.config, system, user, name, schema);
        let url = format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let mut req = self.http.post(&url).json(&body);
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key);
        }
        let (text, latency) = send(req, self.config.timeout).await?;
        let (output, usage) = parse_completion(&text)?;
        Ok(Answer {
            output,
            usage,
            latency,
        })
    }
}

/// The chat-completions request for `schema` in the configured mode.
pub fn request_body(
    c: &OpenAiConfig,
    system: &str,
    user: &str,
    name: &str,
    schema: &Value,
) -> Value {
    let schema_text = if c.schema_mode == SchemaMode::JsonObject {
        format!("\n\nAnswer with one JSON object valid against this JSON schema:\n{schema}")
    } else {
        String::new()
    };
    let messages = if c.fold_system_prompt {
        json!([{"role": "user", "content": format!("{system}{schema_text}\n\n{user}")}])
    } else {
        json!([
            {"role": "system", "content": format!("{system}{schema_text}")},
            {"role": "user", "content": user},
        ])
    };
    let response_format = match c.schema_mode {
        SchemaMode::JsonSchema => json!({
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": true},
        }),
        SchemaMode::JsonObjectSchema => json!({"type": "json_object", "schema": schema}),
        SchemaMode::JsonObject => json!({"type": "json_object"}),
    };
    json!({
        "model": c.model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": c.max_tokens,
        "response_format": response_format,
    })
}

/// The JSON output and usage of a chat completion's first choice.
pub fn parse_completion(text: &str) -> Result<(Value, Option<Usage>), LlmError> {
    #[derive(Deserialize)]
    struct Completion {
        choices: Vec<Choice>,
        usage: Option<Usage>,
    }
    #[derive(Deserialize)]
    struct Choice {
        message: Message,
    }
    #[derive(Deserialize)]
    struct Message {
        content: Option<String>,
    }
    let completion: Completion = serde_json::from_str(text)
        .map_err(|e| LlmError::Malformed(format!("{e}: {}", truncate(text, 200))))?;
    let content = completion
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content)
        .ok_or_else(|| LlmError::Malformed("no choice with content".into()))?;
    Ok((json_output(&content)?, completion.usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: SchemaMode, fold: bool) -> OpenAiConfig {
        OpenAiConfig {
            base_url: "http://127.0.0.1:1/v1".into(),
            model: "m".into(),
            api_key: None,
            timeout: Duration::from_secs(1),
            schema_mode: mode,
            max_tokens: 100,
            fold_system_prompt: fold,
        }
    }

    #[test]
    fn each_schema_mode_asks_its_own_way() {
        let schema = json!({"type": "object"});
        let b = request_body(
            &config(SchemaMode::JsonSchema, false),
            "sys",
            "usr",
            "decision",
            &schema,
        );
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["response_format"]["json_schema"]["schema"], schema);
        assert_eq!(b["messages"][0]["role"], "system");
        let b = request_body(
            &config(SchemaMode::JsonObjectSchema, false),
            "sys",
            "usr",
            "d",
            &schema,
        );
        assert_eq!(
            b["response_format"],
            json!({"type": "json_object", "schema": schema})
        );
        let b = request_body(
            &config(SchemaMode::JsonObject, false),
            "sys",
            "usr",
            "d",
            &schema,
        );
        assert_eq!(b["response_format"], json!({"type": "json_object"}));
        let system = b["messages"][0]["content"].as_str().unwrap();
        assert!(
            system.contains("\"type\":\"object\""),
            "the schema goes in the prompt: {system}"
        );
    }

    #[test]
    fn a_folded_system_prompt_opens_the_only_user_turn() {
        let b = request_body(
            &config(SchemaMode::JsonObjectSchema, true),
            "sys",
            "usr",
            "d",
            &json!({}),
        );
        let messages = b["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0]["role"], "user");
        assert_eq!(messages[0]["content"], "sys\n\nusr");
    }

    #[test]
    fn completions_are_parsed_and_bad_ones_named() {
        let ok = r#"{"choices":[{"message":{"role":"assistant","content":" {\"action\": \"restart_pod\"} "}}],
                    "usage":{"prompt_tokens":24,"completion_tokens":22,"total_tokens":46}}"#;
        let (output, usage) = parse_completion(ok).unwrap();
        assert_eq!(output, json!({"action": "restart_pod"}));
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 24,
                completion_tokens: 22
            })
        );
        let prose = r#"{"choices":[{"message":{"content":"I think you should restart it"}}]}"#;
        assert!(matches!(parse_completion(prose), Err(LlmError::NotJson(_))));
        assert!(matches!(
            parse_completion("<html>"),
            Err(LlmError::Malformed(_))
        ));
        assert!(matches!(
            parse_completion(r#"{"choices":[]}"#),
            Err(LlmError::Malformed(_))
        ));
    }
}

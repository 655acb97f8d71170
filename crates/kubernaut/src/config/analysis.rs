//! `analysis:`: the LLM provider and the approval policy (K-AI-1, K-AI-4).

use super::*;

/// The Analysis stage (K-AI): the LLM, its limits, and the approval gate.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Analysis {
    /// LLM answers asked for before the rules decide.
    pub max_attempts: u32,
    pub prompt_max_chars: usize,
    pub max_actions: usize,
    pub llm: Llm,
    pub approval: ApprovalConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Llm {
    pub enabled: bool,
    /// The signals the LLM analyses; empty: all.
    #[serde(default)]
    pub signals: Vec<String>,
    /// `openai` (any OpenAI-compatible server) or `holmesgpt`.
    pub provider: String,
    pub base_url: String,
    pub model: String,
    /// A file holding the API key (a mounted Secret); else the
    /// KUBERNAUT_LLM_API_KEY environment variable, if set.
    #[serde(default)]
    pub api_key_file: String,
    pub timeout_seconds: u64,
    pub schema_mode: kubernaut_llm::SchemaMode,
    pub max_tokens: u32,
    pub fold_system_prompt: bool,
    pub holmes_auth: kubernaut_llm::HolmesAuth,
    pub concurrency: usize,
    pub rate_per_minute: u32,
    pub rate_burst: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown_seconds: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalConfig {
    /// A Rego file replacing the built-in policy; empty: built-in.
    #[serde(default)]
    pub policy_file: String,
}

impl Analysis {
    /// The analyst; the LLM's client is built here, so a bad URL or key
    /// file stops the start with its error.
    pub fn analyst(&self) -> anyhow::Result<kubernaut_actors::analysis::Analyst> {
        use kubernaut_llm::{
            Guarded, HolmesClient, HolmesConfig, Limits, OpenAiClient, OpenAiConfig, Provider,
        };
        let settings = kubernaut_actors::analysis::AnalysisSettings {
            max_attempts: self.max_attempts,
            prompt_max_chars: self.prompt_max_chars,
            max_actions: self.max_actions,
            llm_signals: self.llm.signals.clone(),
            ..Default::default()
        };
        let l = &self.llm;
        if !l.enabled {
            return Ok(kubernaut_actors::analysis::Analyst {
                llm: None,
                model: String::new(),
                settings,
            });
        }
        let api_key = if l.api_key_file.is_empty() {
            std::env::var("KUBERNAUT_LLM_API_KEY").ok()
        } else {
            Some(
                std::fs::read_to_string(&l.api_key_file)
                    .with_context(|| format!("analysis.llm.apiKeyFile {}", l.api_key_file))?
                    .trim()
                    .to_string(),
            )
        }
        .filter(|k| !k.is_empty());
        let timeout = Duration::from_secs(l.timeout_seconds);
        let provider = match l.provider.as_str() {
            "openai" => Provider::OpenAi(
                OpenAiClient::new(OpenAiConfig {
                    base_url: l.base_url.clone(),
                    model: l.model.clone(),
                    api_key,
                    timeout,
                    schema_mode: l.schema_mode,
                    max_tokens: l.max_tokens,
                    fold_system_prompt: l.fold_system_prompt,
                })
                .map_err(anyhow::Error::msg)?,
            ),
            "holmesgpt" => Provider::Holmes(
                HolmesClient::new(HolmesConfig {
                    base_url: l.base_url.clone(),
                    model: Some(l.model.clone()).filter(|m| !m.is_empty()),
                    api_key,
                    auth: l.holmes_auth,
                    timeout,
                })
                .map_err(anyhow::Error::msg)?,
            ),
            other => bail!("analysis.llm.provider must be openai or holmesgpt, not {other:?}"),
        };
        let limits = Limits {
            concurrency: l.concurrency,
            per_minute: l.rate_per_minute,
            burst: l.rate_burst,
            breaker_failures: l.breaker_failures,
            breaker_cooldown: Duration::from_secs(l.breaker_cooldown_seconds),
            max_wait: timeout,
        };
        Ok(kubernaut_actors::analysis::Analyst {
            llm: Some(std::sync::Arc::new(Guarded::new(provider, limits))),
            model: l.model.clone(),
            settings,
        })
    }

    /// The approval policy: the file's, else the built-in one.
    pub fn approval_policy(&self) -> anyhow::Result<kubernaut_actors::approval::ApprovalPolicy> {
        use kubernaut_actors::approval::{ApprovalPolicy, DEFAULT_POLICY};
        let file = &self.approval.policy_file;
        if file.is_empty() {
            return ApprovalPolicy::new("approval.rego", DEFAULT_POLICY)
                .map_err(anyhow::Error::msg);
        }
        let rego = std::fs::read_to_string(file)
            .with_context(|| format!("analysis.approval.policyFile {file}"))?;
        ApprovalPolicy::new(file, &rego).map_err(anyhow::Error::msg)
    }
}

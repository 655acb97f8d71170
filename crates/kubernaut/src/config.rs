//! Configuration: one YAML file, then environment overrides, validated at
//! start-up with errors that name the offending key.
//!
//! An override is `KUBERNAUT__<SECTION>__<KEY>=value`, keys in
//! SCREAMING_SNAKE_CASE mapped to the file's camelCase (for example
//! `KUBERNAUT__GATEWAY__LISTEN=0.0.0.0:8080`). The value is read as YAML, so
//! numbers and booleans keep their types. `DATABASE_URL` also sets
//! `store.databaseUrl` and `REDIS_URL` sets `redis.url`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kubernaut_actors::{ActorKind, Chaos, RestartPolicy, Rule, Timeouts};
use kubernaut_api::Phase;
use serde::{Deserialize, Serialize};
use serde_norway::Value;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub gateway: Gateway,
    pub admin: Admin,
    pub cluster: Cluster,
    pub store: Store,
    pub redis: Redis,
    pub controller: Controller,
    pub executor: Executor,
    pub analysis: Analysis,
    pub logging: Logging,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

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

/// How actions run (K-EX-3). `controller.dryRun` is the global dry-run.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Executor {
    /// Only server-side dry runs in these namespaces.
    #[serde(default)]
    pub dry_run_namespaces: Vec<String>,
    /// A workflow step's attempt timeout when the step gives none.
    pub step_timeout_seconds: u64,
    /// A per-target lock outlives a controller that died by this much.
    pub lock_ttl_seconds: u64,
    pub bounds: ExecutorBounds,
    /// What run_job may create: name → Job spec.
    #[serde(default)]
    pub job_templates: std::collections::BTreeMap<String, serde_json::Value>,
    /// For run_job's Jobs whose template sets none.
    pub job_ttl_seconds_after_finished: i32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutorBounds {
    pub max_replicas: i32,
    pub max_increase_factor: f64,
    pub max_cpu: String,
    pub max_memory: String,
    pub max_storage: String,
}

impl Executor {
    /// The executor's settings (the lock holder is set per request).
    pub fn settings(&self, dry_run: bool) -> anyhow::Result<kubernaut_cluster::ExecSettings> {
        let quantity = |key: &str, v: &str| {
            v.parse::<kubernaut_cluster::Quantity>()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("executor.bounds.{key}"))
        };
        let mut job_templates = std::collections::BTreeMap::new();
        for (name, spec) in &self.job_templates {
            let spec = serde_json::from_value(spec.clone())
                .with_context(|| format!("executor.jobTemplates.{name} is not a Job spec"))?;
            job_templates.insert(name.clone(), spec);
        }
        Ok(kubernaut_cluster::ExecSettings {
            holder: String::new(),
            dry_run_only: dry_run,
            dry_run_namespaces: self.dry_run_namespaces.clone(),
            bounds: kubernaut_cluster::Bounds {
                max_replicas: self.bounds.max_replicas,
                max_increase_factor: self.bounds.max_increase_factor,
                max_cpu: quantity("maxCpu", &self.bounds.max_cpu)?,
                max_memory: quantity("maxMemory", &self.bounds.max_memory)?,
                max_storage: quantity("maxStorage", &self.bounds.max_storage)?,
            },
            lock_ttl: Duration::from_secs(self.lock_ttl_seconds),
            job_templates,
            job_ttl_seconds: self.job_ttl_seconds_after_finished,
        })
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    pub listen: SocketAddr,
    /// How long a creation claim on a fingerprint lives if its holder dies,
    /// and how long a contender waits for it before answering 503.
    pub claim_ttl_seconds: u64,
    /// Deadline of one signal request; past it the sender is told to retry.
    pub request_timeout_seconds: u64,
    pub auth: Auth,
    pub rate_limit: RateLimits,
    pub kubernetes_events: KubernetesEvents,
    pub storm: Storm,
    /// CloudWatch alarms through SNS (K-GW-3).
    pub cloudwatch: kubernaut_gateway::CloudWatchConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Storm {
    pub enabled: bool,
    pub rate_window_seconds: u64,
    pub rate_threshold: u64,
    pub pattern_window_seconds: u64,
    /// Environment (namespace label) → distinct-target threshold.
    pub pattern_thresholds: std::collections::HashMap<String, u64>,
    pub default_pattern_threshold: u64,
}

impl Storm {
    pub fn settings(&self) -> kubernaut_intake::StormSettings {
        kubernaut_intake::StormSettings {
            enabled: self.enabled,
            rate_window: Duration::from_secs(self.rate_window_seconds),
            rate_threshold: self.rate_threshold,
            pattern_window: Duration::from_secs(self.pattern_window_seconds),
            pattern_thresholds: self.pattern_thresholds.clone(),
            default_pattern_threshold: self.default_pattern_threshold,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesEvents {
    /// Watch the API server's Warning events as signals (opt-in).
    pub watch: bool,
    /// Older events (a re-list replays all that exist) are not signals.
    pub max_age_seconds: u64,
    /// One signal per involved object and reason within this window.
    pub suppress_seconds: u64,
}

impl Gateway {
    pub fn claim_ttl(&self) -> Duration {
        Duration::from_secs(self.claim_ttl_seconds)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Auth {
    pub enabled: bool,
    /// Files with one bearer token per line (`#` comments), e.g. a mounted Secret.
    #[serde(default)]
    pub token_files: Vec<String>,
    /// Inline tokens; `${VAR:-default}` is expanded from the environment.
    #[serde(default)]
    pub tokens: Vec<String>,
    pub token_review: TokenReview,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenReview {
    pub enabled: bool,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub allowed_users: Vec<String>,
    #[serde(default)]
    pub allowed_groups: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimits {
    pub per_source_ip: RateLimit,
    pub per_identity: RateLimit,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl Auth {
    /// Every static token: the inline ones, expanded, and those in the files.
    pub fn static_tokens(
        &self,
        env: impl Fn(&str) -> Option<String> + Copy,
    ) -> anyhow::Result<Vec<String>> {
        let mut out: Vec<String> = self.tokens.iter().map(|t| expand(t, env)).collect();
        for f in &self.token_files {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading gateway.auth.tokenFiles entry {f}"))?;
            out.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        out.retain(|t| !t.is_empty());
        Ok(out)
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in `s`; anything else is literal.
fn expand(s: &str, env: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &rest[start + 2..start + end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, d),
            None => (inner, ""),
        };
        match env(name).filter(|v| !v.is_empty()) {
            Some(v) => out.push_str(&v),
            None => out.push_str(default),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redis {
    /// `redis://host:port/db`; empty runs without Redis (every lookup goes to
    /// the API server). `REDIS_URL` also sets it.
    #[serde(default)]
    pub url: String,
    /// Prefix of every key, so installations can share one Redis.
    pub key_prefix: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Admin {
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// Prefixed to fingerprints; empty for a single cluster.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub protected_namespaces: Vec<String>,
    pub cluster_scoped_namespace: String,
    pub lease_namespace: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Store {
    #[serde(default)]
    pub database_url: String,
    pub max_connections: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Controller {
    pub verify_timeout_seconds: u64,
    pub restart: Restart,
    pub dry_run: bool,
    /// Supervise the requests of this namespace only; empty for all.
    #[serde(default)]
    pub watch_namespace: String,
    pub timeouts: TimeoutsConfig,
    /// K-RR-7: a replica whose membership Lease is older than this is dead.
    pub lease_duration_seconds: u64,
    pub lease_renew_seconds: u64,
    /// On shutdown, running workflows may finish within this.
    pub shutdown_grace_seconds: u64,
    /// A terminal request is deleted this long after it ended (K-RR-9).
    pub retention_seconds: u64,
    /// How often the janitor looks for expired requests.
    pub janitor_interval_seconds: u64,
    /// After this, a terminal request's missing audit records are rebuilt
    /// from its status.
    pub audit_grace_seconds: u64,
    pub holds: HoldsConfig,
    pub storm: StormPolicyConfig,
    /// Off unless set: the next `times` actors of one kind panic.
    #[serde(default)]
    pub fault_injection: Option<FaultInjection>,
}

/// K-RR-4, in seconds.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsConfig {
    pub request_seconds: u64,
    pub processing_seconds: u64,
    pub analyzing_seconds: u64,
    pub approval_seconds: u64,
    pub executing_seconds: u64,
    pub verifying_seconds: u64,
}

impl TimeoutsConfig {
    pub fn timeouts(&self) -> Timeouts {
        let s = Duration::from_secs;
        let mut t = Timeouts::default();
        t.request = s(self.request_seconds);
        t.with(Phase::Processing, s(self.processing_seconds))
            .with(Phase::Analyzing, s(self.analyzing_seconds))
            .with(Phase::AwaitingApproval, s(self.approval_seconds))
            .with(Phase::Executing, s(self.executing_seconds))
            .with(Phase::Verifying, s(self.verifying_seconds))
    }
}

/// How an approved storm runs over its targets.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StormPolicyConfig {
    pub max_parallel: u32,
    pub max_failure_ratio: f64,
}

/// Routing holds (K-RR-8), in seconds.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HoldsConfig {
    pub recently_remediated_seconds: u64,
    pub consecutive_failures: u32,
    pub failure_block_seconds: u64,
    pub backoff_base_seconds: u64,
    pub backoff_max_seconds: u64,
}

impl HoldsConfig {
    pub fn settings(&self) -> kubernaut_actors::holds::HoldSettings {
        let s = Duration::from_secs;
        kubernaut_actors::holds::HoldSettings {
            recently_remediated: s(self.recently_remediated_seconds),
            consecutive_failures: self.consecutive_failures.max(1),
            failure_block: s(self.failure_block_seconds),
            backoff_base: s(self.backoff_base_seconds),
            backoff_max: s(self.backoff_max_seconds),
        }
    }
}

/// The restart policy of every level of the supervision tree.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Restart {
    pub max_restarts: u32,
    pub first_backoff_millis: u64,
    pub max_backoff_seconds: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjection {
    /// An actor kind: processing, analysis, workflow, step, verification,
    /// membership.
    pub panic_in: String,
    pub times: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Logging {
    /// `text` or `json`.
    pub format: String,
    pub level: String,
}

impl Controller {
    pub fn verify_timeout(&self) -> Duration {
        Duration::from_secs(self.verify_timeout_seconds)
    }

    pub fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy {
            max_restarts: self.restart.max_restarts,
            first_backoff: Duration::from_millis(self.restart.first_backoff_millis),
            max_backoff: Duration::from_secs(self.restart.max_backoff_seconds),
        }
    }

    pub fn chaos(&self) -> anyhow::Result<Chaos> {
        let Some(f) = &self.fault_injection else {
            return Ok(Chaos::default());
        };
        let kind = match f.panic_in.as_str() {
            "processing" => ActorKind::processing,
            "analysis" => ActorKind::analysis,
            "workflow" => ActorKind::workflow,
            "step" => ActorKind::step,
            "verification" => ActorKind::verification,
            "membership" => ActorKind::membership,
            other => anyhow::bail!(
                "controller.faultInjection.panicIn: {other:?} is not one of processing, analysis, workflow, step, verification, membership"
            ),
        };
        Ok(Chaos::panics(kind, f.times))
    }
}

const ENV_PREFIX: &str = "KUBERNAUT__";

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::from_yaml(&text, std::env::vars())
            .with_context(|| format!("in config file {}", path.display()))
    }

    pub fn from_yaml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut doc: Value = serde_norway::from_str(text).context("the file is not valid YAML")?;
        for (k, v) in env {
            if k == "DATABASE_URL" {
                set_path(&mut doc, &["store", "databaseUrl"], Value::String(v))?;
            } else if k == "REDIS_URL" {
                set_path(&mut doc, &["redis", "url"], Value::String(v))?;
            } else if let Some(rest) = k.strip_prefix(ENV_PREFIX) {
                let keys: Vec<String> = rest.split("__").map(camel_case).collect();
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                let value: Value = serde_norway::from_str(&v).unwrap_or(Value::String(v.clone()));
                set_path(&mut doc, &keys, value).with_context(|| format!("applying {k}"))?;
            }
        }
        let cfg: Config = serde_norway::from_value(doc).context("invalid configuration")?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let a = &self.analysis;
        if a.max_attempts == 0 || a.max_actions == 0 || a.prompt_max_chars < 500 {
            bail!(
                "analysis: maxAttempts and maxActions must be at least 1, promptMaxChars at least 500"
            );
        }
        if a.llm.enabled {
            if a.llm.base_url.is_empty() {
                bail!("analysis.llm.baseUrl is empty but analysis.llm.enabled is true");
            }
            if a.llm.timeout_seconds == 0 || a.llm.concurrency == 0 || a.llm.rate_per_minute == 0 {
                bail!(
                    "analysis.llm: timeoutSeconds, concurrency and ratePerMinute must be at least 1"
                );
            }
        }
        a.approval_policy().context("analysis.approval")?;
        kubernaut_actors::rules::validate(&self.rules)
            .map_err(anyhow::Error::msg)
            .context("rules")?;
        self.executor.settings(false)?;
        let storm = &self.controller.storm;
        if storm.max_parallel < 1 || !(0.0..1.0).contains(&storm.max_failure_ratio) {
            bail!("controller.storm: maxParallel must be at least 1 and maxFailureRatio in [0, 1)");
        }
        let b = &self.executor.bounds;
        if b.max_replicas < 1 {
            bail!("executor.bounds.maxReplicas must be at least 1");
        }
        if !(b.max_increase_factor.is_finite() && b.max_increase_factor > 1.0) {
            bail!("executor.bounds.maxIncreaseFactor must be a number above 1");
        }
        if self.executor.step_timeout_seconds == 0 || self.executor.lock_ttl_seconds == 0 {
            bail!("executor.stepTimeoutSeconds and executor.lockTtlSeconds must be at least 1");
        }
        if !matches!(self.logging.format.as_str(), "text" | "json") {
            bail!(
                "logging.format must be \"text\" or \"json\", not {:?}",
                self.logging.format
            );
        }
        if self.store.database_url.is_empty() {
            bail!("store.databaseUrl is empty: set it in the file or with DATABASE_URL");
        }
        if self.store.max_connections == 0 {
            bail!("store.maxConnections must be at least 1");
        }
        if self.cluster.cluster_scoped_namespace.is_empty() {
            bail!("cluster.clusterScopedNamespace must name a namespace");
        }
        if self.cluster.lease_namespace.is_empty() {
            bail!("cluster.leaseNamespace must name a namespace");
        }
        if self.gateway.claim_ttl_seconds == 0 {
            bail!("gateway.claimTtlSeconds must be at least 1");
        }
        let storm = &self.gateway.storm;
        if storm.rate_window_seconds == 0 || storm.pattern_window_seconds == 0 {
            bail!("gateway.storm windows must be at least 1 second");
        }
        if self.gateway.request_timeout_seconds == 0 {
            bail!("gateway.requestTimeoutSeconds must be at least 1");
        }
        self.gateway
            .cloudwatch
            .check()
            .map_err(anyhow::Error::msg)?;
        let auth = &self.gateway.auth;
        if auth.enabled
            && auth.tokens.is_empty()
            && auth.token_files.is_empty()
            && !auth.token_review.enabled
        {
            bail!(
                "gateway.auth is enabled but accepts nothing: give tokens, tokenFiles or enable tokenReview"
            );
        }
        if auth.token_review.enabled
            && auth.token_review.allowed_users.is_empty()
            && auth.token_review.allowed_groups.is_empty()
        {
            bail!("gateway.auth.tokenReview needs allowedUsers or allowedGroups");
        }
        for (key, r) in [
            ("perSourceIp", self.gateway.rate_limit.per_source_ip),
            ("perIdentity", self.gateway.rate_limit.per_identity),
        ] {
            if r.per_second == 0 || r.burst == 0 {
                bail!("gateway.rateLimit.{key}: perSecond and burst must be at least 1");
            }
        }
        let url = &self.redis.url;
        let redis_scheme = url.starts_with("redis://") || url.starts_with("rediss://");
        if !url.is_empty() && !redis_scheme {
            bail!("redis.url must start with redis:// or rediss://");
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(char::is_whitespace) {
            bail!("redis.keyPrefix must be a non-empty word");
        }
        Ok(())
    }
}

fn camel_case(s: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn set_path(doc: &mut Value, keys: &[&str], value: Value) -> anyhow::Result<()> {
    let Some((last, parents)) = keys.split_last() else {
        bail!("empty key")
    };
    let mut cur = doc;
    for k in parents {
        let map = cur
            .as_mapping_mut()
            .with_context(|| format!("{k} is not a section"))?;
        cur = map
            .entry(Value::String(k.to_string()))
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
    let map = cur.as_mapping_mut().context("not a section")?;
    map.insert(Value::String(last.to_string()), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: &str = include_str!("../../../config/default.yaml");
    const DEV: &str = include_str!("../../../config/dev.yaml");

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn shipped_configs_load() {
        let c = Config::from_yaml(DEFAULTS, env(&[("DATABASE_URL", "postgres://x/y")])).unwrap();
        assert_eq!(c.gateway.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin.listen.to_string(), "0.0.0.0:9090");
        assert!(c.rules.iter().any(
            |r| r.signal == "KubePodCrashLooping" && r.action.as_deref() == Some("restart_pod")
        ));
        let d = Config::from_yaml(DEV, env(&[("DATABASE_URL", "postgres://x/y")])).unwrap();
        assert_eq!(d.gateway.listen.to_string(), "127.0.0.1:8080");
        // The documented Container Insights mapping is the shipped one.
        let ci = kubernaut_gateway::cloudwatch::container_insights_targets();
        assert_eq!(c.gateway.cloudwatch.targets, ci);
        assert_eq!(d.gateway.cloudwatch.targets, ci);
        assert_eq!(d.admin.listen.to_string(), "127.0.0.1:9090");
    }

    #[test]
    fn a_cloudwatch_rule_for_a_namespaced_kind_needs_a_namespace() {
        let bad = DEFAULTS.replace(
            "- {kind: Pod, namespace: Namespace, name: FullPodName}",
            "- {kind: Pod, name: FullPodName}",
        );
        assert_ne!(bad, DEFAULTS);
        let e = Config::from_yaml(&bad, env(&[("DATABASE_URL", "postgres://x/y")])).unwrap_err();
        assert!(
            e.to_string().contains("gateway.cloudwatch.targets[0]"),
            "{e}"
        );
    }

    #[test]
    fn environment_overrides_win_and_keep_types() {
        let c = Config::from_yaml(
            DEFAULTS,
            env(&[
                ("DATABASE_URL", "postgres://db/k"),
                ("KUBERNAUT__GATEWAY__LISTEN", "127.0.0.1:18080"),
                ("KUBERNAUT__CONTROLLER__DRY_RUN", "true"),
                ("KUBERNAUT__STORE__MAX_CONNECTIONS", "3"),
                ("REDIS_URL", "redis://127.0.0.1:6390/0"),
            ]),
        )
        .unwrap();
        assert_eq!(c.redis.url, "redis://127.0.0.1:6390/0");
        assert_eq!(c.store.database_url, "postgres://db/k");
        assert_eq!(c.gateway.listen.to_string(), "127.0.0.1:18080");
        assert!(c.controller.dry_run);
        assert_eq!(c.store.max_connections, 3);
    }

    #[test]
    fn bad_configuration_is_a_clear_error() {
        let e = Config::from_yaml(DEFAULTS, env(&[])).unwrap_err();
        assert!(format!("{e:#}").contains("DATABASE_URL"), "{e:#}");
        let e = Config::from_yaml(
            DEFAULTS,
            env(&[
                ("DATABASE_URL", "x"),
                ("KUBERNAUT__GATEWAY__LISTEN", "nowhere"),
            ]),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("invalid configuration"), "{e:#}");
        let e = Config::from_yaml(
            &format!("{DEFAULTS}\nsurprise: 1\n"),
            env(&[("DATABASE_URL", "x")]),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("surprise"), "{e:#}");
        let e = Config::from_yaml(
            &DEFAULTS.replace("action: restart_pod", "action: reboot_cluster"),
            env(&[("DATABASE_URL", "x")]),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("reboot_cluster"), "{e:#}");
        let e = Config::from_yaml(
            DEFAULTS,
            env(&[("DATABASE_URL", "x"), ("REDIS_URL", "http://redis:6379")]),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("redis.url"), "{e:#}");
        let e = Config::from_yaml(
            DEFAULTS,
            env(&[
                ("DATABASE_URL", "x"),
                ("KUBERNAUT__GATEWAY__RATE_LIMIT__PER_IDENTITY__BURST", "0"),
            ]),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("perIdentity"), "{e:#}");
    }

    #[test]
    fn dev_tokens_come_from_the_environment_with_a_default() {
        let d = Config::from_yaml(DEV, env(&[("DATABASE_URL", "x")])).unwrap();
        let none = |_: &str| None;
        assert_eq!(d.gateway.auth.static_tokens(none).unwrap(), ["dev-token"]);
        let set = |k: &str| (k == "KUBERNAUT_DEV_TOKEN").then(|| "t0k3n".to_string());
        assert_eq!(d.gateway.auth.static_tokens(set).unwrap(), ["t0k3n"]);
        assert_eq!(expand("a${X}b${Y:-y}c${", |_| None), "abyc${");
        let c = Config::from_yaml(DEFAULTS, env(&[("DATABASE_URL", "x")])).unwrap();
        assert!(c.gateway.auth.enabled, "authentication is on by default");
        let missing = Auth {
            token_files: vec!["/nonexistent/tokens".into()],
            ..c.gateway.auth
        };
        let e = missing.static_tokens(none).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/tokens"), "{e:#}");
    }
}

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

mod analysis;
mod controller;
mod executor;
mod gateway;

pub use analysis::*;
pub use controller::*;
pub use executor::*;
pub use gateway::*;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub gateway: Gateway,
    pub admin: Admin,
    #[serde(default)]
    pub admission: Admission,
    pub cluster: Cluster,
    pub store: Store,
    pub redis: Redis,
    pub controller: Controller,
    pub executor: Executor,
    pub analysis: Analysis,
    /// Who is told of approvals waiting and escalations (K-NT-1).
    #[serde(default)]
    pub notifications: kubernaut_notify::Settings,
    /// Did the fix work (K-AU-2): the window and the scorers.
    #[serde(default)]
    pub verification: kubernaut_verify::Settings,
    /// When a rule's choice is passed over for its recent outcomes (K-AI-2).
    #[serde(default)]
    pub learning: kubernaut_actors::rules::Learning,
    pub logging: Logging,
    #[serde(default)]
    pub rules: Vec<Rule>,
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

/// The validating admission webhook for RemediationRequests
/// ([`crate::admission`]), served over TLS.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Admission {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    /// Kubernaut's own identities: they create requests, and write
    /// approvals for the humans the approval endpoint authenticated.
    pub controllers: Vec<String>,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: ([0, 0, 0, 0], 8443).into(),
            cert_file: "/etc/kubernaut/tls/tls.crt".into(),
            key_file: "/etc/kubernaut/tls/tls.key".into(),
            controllers: vec!["system:serviceaccount:kubernaut-system:kubernaut".into()],
        }
    }
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
        self.verification.validate().map_err(anyhow::Error::msg)?;
        let l = &self.learning;
        if !(0.0..=1.0).contains(&l.threshold) || l.min_samples < 1 {
            bail!("learning: threshold must be in [0, 1] and minSamples at least 1");
        }
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
        if self.gateway.sync_timeout_seconds == 0 {
            bail!("gateway.syncTimeoutSeconds must be at least 1");
        }
        let storm = &self.gateway.storm;
        if storm.rate_window_seconds == 0 || storm.pattern_window_seconds == 0 {
            bail!("gateway.storm windows must be at least 1 second");
        }
        if self.gateway.request_timeout_seconds == 0 {
            bail!("gateway.requestTimeoutSeconds must be at least 1");
        }
        self.gateway.cloudwatch.check()?;
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
        // A token the API server accepts is one for any of its clients:
        // senders must present one issued for Kubernaut.
        if auth.token_review.enabled && auth.token_review.audiences.is_empty() {
            bail!(
                "gateway.auth.tokenReview.audiences is empty: name the audience tokens must be issued for (e.g. kubernaut)"
            );
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
    use super::gateway::expand;
    use super::*;

    const DEFAULTS: &str = include_str!("../../../../config/default.yaml");
    const DEV: &str = include_str!("../../../../config/dev.yaml");

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
        let e = Config::from_yaml(
            &DEFAULTS.replace("audiences: [kubernaut]", "audiences: []"),
            env(&[("DATABASE_URL", "x")]),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("audiences"), "{e:#}");
    }

    #[test]
    fn in_cluster_defaults_ask_for_tokens_issued_for_kubernaut_and_serve_the_webhook() {
        let c = Config::from_yaml(DEFAULTS, env(&[("DATABASE_URL", "x")])).unwrap();
        assert_eq!(c.gateway.auth.token_review.audiences, ["kubernaut"]);
        assert!(c.admission.enabled && c.gateway.tls.enabled);
        assert_eq!(
            c.admission.controllers,
            ["system:serviceaccount:kubernaut-system:kubernaut"]
        );
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

//! `gateway:`: listening, sources, storms, authentication and rate limits.

use super::*;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    pub listen: SocketAddr,
    /// How long a signal waits for the intake's first lists (after a start)
    /// before the sender is told to retry.
    pub sync_timeout_seconds: u64,
    /// Deadline of one signal request; past it the sender is told to retry.
    pub request_timeout_seconds: u64,
    pub auth: Auth,
    pub rate_limit: RateLimits,
    pub kubernetes_events: KubernetesEvents,
    pub storm: Storm,
    /// CloudWatch alarms through SNS (K-GW-3).
    pub cloudwatch: kubernaut_gateway::CloudWatchConfig,
    /// What one signal may carry (labels, annotations, raw payload) and
    /// how many signals one request may hold.
    #[serde(default)]
    pub limits: kubernaut_gateway::Limits,
    /// HTTPS for the signal and approval endpoints: bearer tokens (and the
    /// humans' tokens the approval endpoint takes) never cross the network
    /// in clear.
    #[serde(default)]
    pub tls: Tls,
    /// Approve and Reject from Slack's buttons (K-NT-1).
    #[serde(default)]
    pub slack: kubernaut_gateway::slack::SlackConfig,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Tls {
    pub enabled: bool,
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
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
    pub fn sync_timeout(&self) -> Duration {
        Duration::from_secs(self.sync_timeout_seconds)
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
    /// Addresses or CIDR ranges of proxies in front of the gateway, whose
    /// X-Forwarded-For is believed for the per-IP limit.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
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
pub(super) fn expand(s: &str, env: impl Fn(&str) -> Option<String>) -> String {
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

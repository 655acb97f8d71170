//! Verification (K-AU-2): did a remediation make the incident go away?
//! After a stabilisation window, deterministic scorers each give 0 to 1 or
//! "not applicable":
//! - **health**: the target's pods Ready against those desired, restarts
//!   since the action, CrashLoopBackOff or OOMKilled still present;
//! - **alert**: is the alert still active in Alertmanager (API v2), or was
//!   its resolution already reported to the gateway;
//! - **metric**: the rule's PromQL, evaluated by Prometheus, returns series
//!   while the problem lasts (as an alerting rule's expression does);
//! - **drift**: the target's spec hash at the end of the window against the
//!   one just after the action: someone else changed it, so the outcome
//!   cannot be credited to the action ([`combine`] says Inconclusive).
//!
//! The crate owns the scoring and the HTTP reads of Alertmanager and
//! Prometheus; the cluster is read through `kubernaut-cluster`, and the
//! supervisor decides when.

use std::collections::BTreeMap;
use std::time::Duration;

use kubernaut_api::{ScoreComponent, VerificationOutcome};
use kubernaut_cluster::{MAX_HEALTH_PODS, Observed};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `verification` section of the configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Settings {
    /// How long after the change was seen applied the scorers look.
    pub window_seconds: u64,
    /// Alertmanager's base URL (`http://alertmanager:9093`); empty: the
    /// alert scorer uses only resolutions the gateway received.
    pub alertmanager_url: String,
    /// Prometheus's base URL; empty: no metric scorer.
    pub prometheus_url: String,
    /// Each read of Alertmanager or Prometheus.
    pub timeout_seconds: u64,
    pub weights: Weights,
    /// A weighted score at least this is Effective.
    pub effective_at_least: f64,
    /// A weighted score below this is Ineffective; between the two,
    /// Inconclusive.
    pub ineffective_below: f64,
    /// A PromQL query per action, used when the rule gives none.
    pub action_queries: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window_seconds: 300,
            alertmanager_url: String::new(),
            prometheus_url: String::new(),
            timeout_seconds: 10,
            weights: Weights::default(),
            effective_at_least: 0.75,
            ineffective_below: 0.5,
            action_queries: BTreeMap::new(),
        }
    }
}

impl Settings {
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_seconds)
    }

    pub fn validate(&self) -> Result<(), String> {
        let w = &self.weights;
        if [w.health, w.alert, w.metric]
            .iter()
            .any(|w| !(0.0..=1.0).contains(w))
        {
            return Err("verification.weights must each be between 0 and 1".into());
        }
        if !(0.0..=1.0).contains(&self.effective_at_least)
            || !(0.0..=1.0).contains(&self.ineffective_below)
            || self.ineffective_below > self.effective_at_least
        {
            return Err("verification: need 0 <= ineffectiveBelow <= effectiveAtLeast <= 1".into());
        }
        for (name, url) in [
            ("alertmanagerUrl", &self.alertmanager_url),
            ("prometheusUrl", &self.prometheus_url),
        ] {
            if !url.is_empty() && reqwest::Url::parse(url).is_err() {
                return Err(format!("verification.{name} is not a URL: {url:?}"));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Weights {
    pub health: f64,
    pub alert: f64,
    pub metric: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            health: 0.4,
            alert: 0.3,
            metric: 0.3,
        }
    }
}

/// The scorers that read Alertmanager and Prometheus.
#[derive(Clone)]
pub struct Verifier {
    settings: Settings,
    http: reqwest::Client,
    /// `GET /api/v2/alerts` of Alertmanager, when configured.
    alerts: Option<reqwest::Url>,
    /// `GET /api/v1/query` of Prometheus, when configured.
    query: Option<reqwest::Url>,
}

impl Verifier {
    pub fn new(settings: Settings) -> Result<Verifier, String> {
        settings.validate()?;
        // reqwest is built without a default TLS provider (see the
        // workspace's Cargo.toml); an error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_seconds.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let endpoint = |base: &str, path: &str, key: &str| {
            if base.is_empty() {
                return Ok(None);
            }
            reqwest::Url::parse(&format!("{}{path}", base.trim_end_matches('/')))
                .map(Some)
                .map_err(|e| format!("verification.{key}: {e}"))
        };
        let alerts = endpoint(
            &settings.alertmanager_url,
            "/api/v2/alerts",
            "alertmanagerUrl",
        )?;
        let query = endpoint(&settings.prometheus_url, "/api/v1/query", "prometheusUrl")?;
        Ok(Verifier {
            settings,
            http,
            alerts,
            query,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The alert scorer: 1 when the alert is no longer active (or its
    /// resolution was received), 0 while Alertmanager still has it firing
    /// (silenced or inhibited included: the problem is still there).
    /// `labels` identify the alert; none, and no resolution: not applicable.
    pub async fn alert(&self, labels: &BTreeMap<String, String>, resolved: bool) -> ScoreComponent {
        let weight = self.settings.weights.alert;
        if resolved {
            return component(
                "alert",
                Some(1.0),
                weight,
                "the source reported it resolved",
            );
        }
        let (Some(url), false) = (&self.alerts, labels.is_empty()) else {
            return component("alert", None, weight, "no Alertmanager to ask");
        };
        let mut query: Vec<(&str, String)> = vec![
            ("active", "true".into()),
            ("silenced", "true".into()),
            ("inhibited", "true".into()),
        ];
        query.extend(labels.iter().map(|(k, v)| ("filter", matcher(k, v))));
        let answer = async {
            let r = self.http.get(with_query(url, &query)).send().await?;
            r.error_for_status()?.json::<Vec<Value>>().await
        }
        .await;
        match answer {
            Ok(alerts) if alerts.is_empty() => component(
                "alert",
                Some(1.0),
                weight,
                "no longer active in Alertmanager",
            ),
            Ok(alerts) => component(
                "alert",
                Some(0.0),
                weight,
                &format!(
                    "{} matching alert(s) still active in Alertmanager",
                    alerts.len()
                ),
            ),
            Err(e) => component(
                "alert",
                None,
                weight,
                &format!("Alertmanager did not answer: {}", without_url(e)),
            ),
        }
    }

    /// The metric scorer: evaluates `query` (an alert-style expression)
    /// through Prometheus's HTTP API; no series is 1, any series is 0.
    pub async fn metric(&self, query: Option<&str>) -> ScoreComponent {
        let weight = self.settings.weights.metric;
        let (Some(query), Some(url)) = (query, &self.query) else {
            return component("metric", None, weight, "no query, or no Prometheus");
        };
        let answer = async {
            let r = self
                .http
                .get(with_query(url, &[("query", query.to_string())]))
                .send()
                .await?;
            r.error_for_status()?.json::<Value>().await
        }
        .await;
        let body = match answer {
            Ok(b) => b,
            Err(e) => {
                return component(
                    "metric",
                    None,
                    weight,
                    &format!("Prometheus did not answer: {}", without_url(e)),
                );
            }
        };
        match metric_score(&body) {
            Ok((score, evidence)) => component("metric", Some(score), weight, &evidence),
            Err(e) => component("metric", None, weight, &e),
        }
    }
}

/// `url` with the query string of `pairs`, each encoded.
fn with_query(url: &reqwest::Url, pairs: &[(&str, String)]) -> reqwest::Url {
    let mut u = url.clone();
    u.query_pairs_mut()
        .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
    u
}

/// An Alertmanager matcher `name="value"`, the value quoted and escaped.
fn matcher(name: &str, value: &str) -> String {
    format!("{name}={}", serde_json::Value::String(value.to_string()))
}

/// reqwest's errors name the URL; a query string may carry label values.
fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

/// A component of `name` (evidence cut to 300 characters).
pub fn component(name: &str, score: Option<f64>, weight: f64, evidence: &str) -> ScoreComponent {
    ScoreComponent {
        name: name.into(),
        score,
        weight,
        evidence: evidence.chars().take(300).collect(),
    }
}

/// Reads a Prometheus query answer: an empty vector is 1; a vector with
/// series, or a non-zero scalar, is 0.
pub fn metric_score(body: &Value) -> Result<(f64, String), String> {
    if body["status"] != "success" {
        return Err(format!(
            "Prometheus refused the query: {}",
            body["error"].as_str().unwrap_or("no reason given")
        ));
    }
    let data = &body["data"];
    match data["resultType"].as_str() {
        Some("vector") | Some("matrix") => {
            let n = data["result"].as_array().map_or(0, Vec::len);
            Ok(if n == 0 {
                (1.0, "the query returns no series".into())
            } else {
                let first = &data["result"][0]["value"][1];
                (
                    0.0,
                    format!("the query still returns {n} series (first: {first})"),
                )
            })
        }
        Some("scalar") => {
            let v: f64 = data["result"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN);
            Ok(if v == 0.0 {
                (1.0, "the query is 0".into())
            } else {
                (0.0, format!("the query is {v}"))
            })
        }
        other => Err(format!("an answer of type {other:?} cannot be scored")),
    }
}

/// The health scorer, from the target as it is now and its pods' restarts
/// just after the action. Ready pods over desired; a pod still in
/// CrashLoopBackOff or last OOMKilled with new restarts makes it 0; other
/// restarts since the action halve it. Not applicable to a target without
/// pods of its own, or one that is gone.
pub fn health(
    now: Option<&Observed>,
    baseline: &BTreeMap<String, i32>,
    weight: f64,
) -> ScoreComponent {
    let Some(now) = now else {
        return component("health", None, weight, "the target is gone");
    };
    let Some(desired) = now.desired else {
        return component("health", None, weight, "the target has no pods of its own");
    };
    let ready = now.pods.iter().filter(|p| p.ready).count() as i32;
    let restarts: i32 = now
        .pods
        .iter()
        .map(|p| (p.restarts - baseline.get(&p.name).copied().unwrap_or(0)).max(0))
        .sum();
    let failing: Vec<&str> = now
        .pods
        .iter()
        .filter(|p| {
            p.crash_looping
                || p.oom_killed && p.restarts > baseline.get(&p.name).copied().unwrap_or(0)
        })
        .map(|p| p.name.as_str())
        .collect();
    let mut score = if desired <= 0 {
        1.0
    } else {
        f64::from(ready.min(desired)) / f64::from(desired)
    };
    let mut evidence =
        format!("{ready}/{desired} pods Ready, {restarts} restart(s) since the action");
    if !failing.is_empty() {
        score = 0.0;
        evidence.push_str(&format!(
            "; still crash-looping or OOMKilled: {}",
            failing.join(", ")
        ));
    } else if restarts > 0 {
        score *= 0.5;
    }
    component("health", Some(score), weight, &evidence)
}

/// Each pod's restarts now: the baseline the health scorer compares with.
pub fn restarts(now: Option<&Observed>) -> BTreeMap<String, i32> {
    now.map(|o| {
        o.pods
            .iter()
            .take(MAX_HEALTH_PODS as usize)
            .map(|p| (p.name.clone(), p.restarts))
            .collect()
    })
    .unwrap_or_default()
}

/// The drift scorer: 1 when the spec is as the action left it, 0 when it
/// changed. Weight 0: drift does not move the score, it voids it.
pub fn drift(baseline: Option<&str>, now: Option<&Observed>) -> ScoreComponent {
    match (baseline, now) {
        (Some(before), Some(now)) if before == now.spec_hash => component(
            "drift",
            Some(1.0),
            0.0,
            "the target's spec is as the action left it",
        ),
        (Some(_), Some(_)) => component(
            "drift",
            Some(0.0),
            0.0,
            "the target's spec changed during the window (someone else changed it)",
        ),
        _ => component("drift", None, 0.0, "no spec to compare"),
    }
}

/// The weighted score of the applicable components and the outcome.
/// Drift voids the score: the outcome is Inconclusive.
pub fn combine(
    components: &[ScoreComponent],
    settings: &Settings,
) -> (Option<f64>, VerificationOutcome) {
    let (mut sum, mut weights) = (0.0, 0.0);
    for c in components {
        if let Some(s) = c.score
            && c.weight > 0.0
        {
            sum += s * c.weight;
            weights += c.weight;
        }
    }
    let score = (weights > 0.0).then(|| (sum / weights * 1000.0).round() / 1000.0);
    let drifted = components
        .iter()
        .any(|c| c.name == "drift" && c.score == Some(0.0));
    let outcome = match score {
        _ if drifted => VerificationOutcome::Inconclusive,
        None => VerificationOutcome::Inconclusive,
        Some(s) if s >= settings.effective_at_least => VerificationOutcome::Effective,
        Some(s) if s < settings.ineffective_below => VerificationOutcome::Ineffective,
        Some(_) => VerificationOutcome::Inconclusive,
    };
    (score, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubernaut_cluster::PodHealth;
    use serde_json::json;

    fn pod(name: &str, ready: bool, restarts: i32, crash: bool) -> PodHealth {
        PodHealth {
            name: name.into(),
            ready,
            restarts,
            crash_looping: crash,
            oom_killed: false,
        }
    }

    fn observed(desired: i32, pods: Vec<PodHealth>) -> Observed {
        Observed {
            spec_hash: "h1".into(),
            desired: Some(desired),
            pods,
        }
    }

    #[test]
    fn health_counts_ready_pods_and_new_restarts() {
        let base: BTreeMap<String, i32> = [("a".to_string(), 5)].into();
        let all = observed(2, vec![pod("a", true, 5, false), pod("b", true, 0, false)]);
        assert_eq!(health(Some(&all), &base, 0.4).score, Some(1.0));
        let half = observed(2, vec![pod("a", true, 5, false), pod("b", false, 0, false)]);
        assert_eq!(health(Some(&half), &base, 0.4).score, Some(0.5));
        let restarted = observed(2, vec![pod("a", true, 6, false), pod("b", true, 0, false)]);
        let h = health(Some(&restarted), &base, 0.4);
        assert_eq!(h.score, Some(0.5));
        assert!(h.evidence.contains("1 restart(s)"), "{}", h.evidence);
        let crashing = observed(2, vec![pod("a", true, 5, false), pod("c", false, 3, true)]);
        let h = health(Some(&crashing), &base, 0.4);
        assert_eq!(h.score, Some(0.0));
        assert!(h.evidence.contains("c"), "{}", h.evidence);
        assert_eq!(health(None, &base, 0.4).score, None);
    }

    #[test]
    fn drift_voids_the_score() {
        let s = Settings::default();
        let now = observed(1, vec![pod("a", true, 0, false)]);
        let good = vec![
            health(Some(&now), &BTreeMap::new(), 0.4),
            component("alert", Some(1.0), 0.3, ""),
            drift(Some("h1"), Some(&now)),
        ];
        assert_eq!(
            combine(&good, &s),
            (Some(1.0), VerificationOutcome::Effective)
        );
        let mut drifted = good.clone();
        drifted[2] = drift(Some("h0"), Some(&now));
        assert_eq!(
            combine(&drifted, &s),
            (Some(1.0), VerificationOutcome::Inconclusive)
        );
    }

    #[test]
    fn the_outcome_follows_the_thresholds_over_applicable_scores() {
        let s = Settings::default();
        let c = |h: Option<f64>, a: Option<f64>| {
            vec![
                component("health", h, 0.4, ""),
                component("alert", a, 0.3, ""),
            ]
        };
        assert_eq!(
            combine(&c(Some(0.0), Some(0.0)), &s).1,
            VerificationOutcome::Ineffective
        );
        assert_eq!(
            combine(&c(Some(1.0), None), &s),
            (Some(1.0), VerificationOutcome::Effective)
        );
        // 0.4 * 1 + 0.3 * 0 over 0.7 = 0.571: neither.
        assert_eq!(
            combine(&c(Some(1.0), Some(0.0)), &s),
            (Some(0.571), VerificationOutcome::Inconclusive)
        );
        assert_eq!(
            combine(&c(None, None), &s),
            (None, VerificationOutcome::Inconclusive)
        );
    }

    #[test]
    fn prometheus_answers_are_scored() {
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(metric_score(&empty).unwrap().0, 1.0);
        let some = json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {}, "value": [1, "3"]}]}});
        assert_eq!(metric_score(&some).unwrap().0, 0.0);
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1, "0"]}});
        assert_eq!(metric_score(&scalar).unwrap().0, 1.0);
        let bad = json!({"status": "error", "error": "parse error"});
        assert!(metric_score(&bad).unwrap_err().contains("parse error"));
    }

    #[test]
    fn matchers_quote_outside_values() {
        assert_eq!(matcher("pod", "a\"b"), r#"pod="a\"b""#);
    }

    #[test]
    fn settings_are_checked() {
        let mut s = Settings::default();
        assert!(s.validate().is_ok());
        s.ineffective_below = 0.9;
        assert!(s.validate().is_err());
        let s = Settings {
            prometheus_url: "not a url".into(),
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("prometheusUrl"));
    }
}

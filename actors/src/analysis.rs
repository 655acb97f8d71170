//! The Analysis stage (K-AI-1 … K-AI-3): the LLM path and its fallback to
//! the rule table.
//!
//! The LLM gets an incident document built from the request (the signal,
//! its target and owner chain, environment and priority), what the cluster
//! shows of the target (pod states, recent events: the redacted evidence
//! collect_diagnostics records) and what worked before for this alert and
//! target kind (PostgreSQL, K-AI-2). The document never carries a Secret
//! (none is read) nor a label or annotation whose name says credential,
//! and is cut to `promptMaxChars`.
//!
//! The output schema is built per request from the executor's catalogue,
//! the single source of parameter schemas: only actions on objects the
//! request is about are offered, and their object-naming parameters are
//! enums of those objects, so that a model cannot point an action at
//! something else. The answer is then validated as the executor would
//! parse it (the catalogue's types, the bounds, the object it acts on);
//! an invalid answer is asked again with the errors, up to `maxAttempts`
//! in all, then the rules decide. A provider that is off, unreachable,
//! slow, rate limited or behind an open breaker sends the request to the
//! rules at once: retrying those would only multiply the wait.

use std::sync::Arc;
use std::time::Duration;

use kubernaut_api::{ProcessingStatus, RemediationRequestSpec};
use kubernaut_cluster::catalogue;
use kubernaut_decide::analysis::{
    Facts, Past, SYSTEM, bounded, incident, offer, output_schema, validate,
};
use kubernaut_llm::{Guarded, LlmError};

use crate::Context;
use crate::metrics::{LlmLabels, PathLabels, ProviderLabels, ReasonLabels, TokenLabels};
use crate::rules::{self, Decision, RuleError};

/// Free text the model writes: one line, no quotes or backslashes. Without
/// a pattern, llama.cpp's grammar lets raw newlines through; a length
/// bound (`maxLength`) would make generation about 9× slower there, so the
/// length is bounded by the call's `max_tokens` instead.
#[derive(Clone, Debug)]
pub struct AnalysisSettings {
    /// LLM answers asked for before the rules decide (K-AI-3: 3).
    pub max_attempts: u32,
    /// Bound on the prompt, in characters.
    pub prompt_max_chars: usize,
    /// Actions one analysis may choose.
    pub max_actions: usize,
    /// Past actions shown per alert and target kind.
    pub history_limit: i64,
    /// The signals the LLM analyses; empty: all. For rolling an LLM out
    /// one alert at a time.
    pub llm_signals: Vec<String>,
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            prompt_max_chars: 6000,
            max_actions: 3,
            history_limit: 10,
            llm_signals: Vec::new(),
        }
    }
}

/// The LLM, when one is configured, and how it is used.
#[derive(Clone, Default)]
pub struct Analyst {
    pub llm: Option<Arc<Guarded>>,
    /// The model's name, for the status.
    pub model: String,
    pub settings: AnalysisSettings,
}

/// Which path decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Llm,
    Rules,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Llm => "llm",
            Path::Rules => "rules",
        }
    }
}

pub use kubernaut_decide::analysis::Verdict;

/// The stage's result.
#[derive(Clone, Debug)]
pub struct Analyzed {
    pub path: Path,
    /// Why this path decided, for the status and the audit.
    pub reason: String,
    /// Why the LLM did not decide, as a metric label; `None` when it did.
    pub fallback: Option<&'static str>,
    pub decision: Result<Decision, RuleError>,
    /// The LLM's diagnosis when it decided.
    pub verdict: Option<Verdict>,
    /// LLM answers asked for.
    pub attempts: u32,
    pub elapsed: Duration,
}

/// Runs the analysis of `spec`: the LLM when configured, else (or when it
/// fails) the rules.
pub async fn analyze(
    ctx: &Context,
    spec: &RemediationRequestSpec,
    processing: Option<&ProcessingStatus>,
    holder: &str,
) -> Analyzed {
    let started = std::time::Instant::now();
    let (reason, label, attempts) = match ask_llm(ctx, spec, processing, holder, started).await {
        Ok(analyzed) => return analyzed,
        Err(fallback) => fallback,
    };
    if label != "disabled" {
        ctx.metrics
            .fallbacks
            .get_or_create(&ReasonLabels { reason: label })
            .inc();
    }
    ctx.metrics
        .analyses
        .get_or_create(&PathLabels { path: "rules" })
        .inc();
    Analyzed {
        path: Path::Rules,
        reason,
        fallback: Some(label),
        decision: by_rules(ctx, spec).await,
        verdict: None,
        attempts,
        elapsed: started.elapsed(),
    }
}

/// The rules' decision; a rule with ranked alternatives is decided with
/// the recent effectiveness of its choices (K-AI-2), and without it (the
/// first choice) when PostgreSQL does not answer.
async fn by_rules(ctx: &Context, spec: &RemediationRequestSpec) -> Result<Decision, RuleError> {
    let ranked = rules::rule_for(&ctx.rules, spec).is_some_and(|r| !r.alternatives.is_empty());
    let past = if ranked {
        history(ctx, spec).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ranking a rule's choices without their history");
            Vec::new()
        })
    } else {
        Vec::new()
    };
    let record = |action: &str| {
        past.iter()
            .find(|p| p.action == action)
            .map(|p| rules::Record {
                requests: p.requests,
                effective: p.effective,
            })
    };
    rules::decide_ranked(&ctx.rules, spec, &record, ctx.settings.learning)
}

/// Recent verified outcomes of this alert on this kind of target.
async fn history(
    ctx: &Context,
    spec: &RemediationRequestSpec,
) -> Result<Vec<kubernaut_store::PastOutcome>, String> {
    let asked = ctx.audit.history(
        &spec.signal_name,
        &spec.target.kind,
        ctx.settings.learning.window_days,
        ctx.analyst.settings.history_limit,
    );
    match tokio::time::timeout(Duration::from_secs(2), asked).await {
        Ok(Ok(h)) => Ok(h
            .into_iter()
            .filter(|p| kubernaut_cluster::writes(&p.action))
            .collect()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("PostgreSQL did not answer".into()),
    }
}

/// The LLM's decision, or why the rules decide instead (the reason, its
/// metric label, the answers asked for).
async fn ask_llm(
    ctx: &Context,
    spec: &RemediationRequestSpec,
    processing: Option<&ProcessingStatus>,
    holder: &str,
    started: std::time::Instant,
) -> Result<Analyzed, (String, &'static str, u32)> {
    let fallback =
        |reason: String, label: &'static str, attempts: u32| Err((reason, label, attempts));
    let Some(llm) = ctx.analyst.llm.clone() else {
        return fallback("no LLM is configured".into(), "disabled", 0);
    };
    let settings = &ctx.analyst.settings;
    if !settings.llm_signals.is_empty() && !settings.llm_signals.contains(&spec.signal_name) {
        return fallback(
            format!("the LLM analyses {} only", settings.llm_signals.join(", ")),
            "disabled",
            0,
        );
    }
    let facts = gather(ctx, spec).await;
    let bounds = &ctx.settings.executor.bounds;
    let offered = offer(&facts.objects, &facts.containers, bounds);
    if offered.is_empty() {
        return fallback(
            format!("no action of the catalogue acts on {}", spec.target),
            "no_candidate",
            0,
        );
    }
    let schema = output_schema(&offered, settings.max_actions);
    let incident = incident(spec, processing, &facts, &offered);
    let incident = bounded(incident, settings.prompt_max_chars);
    let provider = llm.provider_name();
    let mut feedback = String::new();
    let mut attempts = 0;
    while attempts < settings.max_attempts.max(1) {
        attempts += 1;
        let user = format!("{incident}{feedback}");
        let answer = llm.structured(SYSTEM, &user, "remediation", &schema).await;
        ctx.metrics
            .llm_breaker
            .get_or_create(&ProviderLabels { provider })
            .set(llm.breaker_state().as_gauge());
        let answer = match answer {
            Ok(a) => a,
            Err(e @ LlmError::NotJson(_)) => {
                count_call(ctx, provider, "not_json");
                feedback = format!("\n\nYour previous answer was rejected: {e}. Answer with JSON.");
                continue;
            }
            Err(e) => {
                count_call(ctx, provider, e.reason());
                return fallback(format!("{provider}: {e}"), e.reason(), attempts);
            }
        };
        ctx.metrics
            .llm_seconds
            .get_or_create(&ProviderLabels { provider })
            .observe(answer.latency.as_secs_f64());
        if let Some(u) = answer.usage {
            for (kind, n) in [
                ("prompt", u.prompt_tokens),
                ("completion", u.completion_tokens),
            ] {
                ctx.metrics
                    .llm_tokens
                    .get_or_create(&TokenLabels { provider, kind })
                    .inc_by(n);
            }
        }
        match validate(
            &answer.output,
            &offered,
            &facts.objects,
            bounds,
            holder,
            settings.max_actions,
        ) {
            Ok((verdict, workflow)) => {
                count_call(ctx, provider, "ok");
                ctx.metrics
                    .analyses
                    .get_or_create(&PathLabels { path: "llm" })
                    .inc();
                let reason = format!(
                    "{provider} ({}) answered validly on attempt {attempts} in {:.1}s",
                    ctx.analyst.model,
                    answer.latency.as_secs_f64()
                );
                return Ok(Analyzed {
                    path: Path::Llm,
                    reason,
                    fallback: None,
                    decision: Ok(Decision {
                        rule: String::new(),
                        workflow,
                        verify_query: rules::verify_query(&ctx.rules, spec).ok().flatten(),
                        passed_over: Vec::new(),
                    }),
                    verdict: Some(verdict),
                    attempts,
                    elapsed: started.elapsed(),
                });
            }
            Err(errors) => {
                count_call(ctx, provider, "invalid");
                tracing::info!(signal = %spec.signal_name, target = %spec.target, attempt = attempts, errors = ?errors, "LLM answer rejected");
                feedback = format!(
                    "\n\nYour previous answer was rejected: {}. Answer again.",
                    errors.join("; ")
                );
            }
        }
    }
    let why = feedback
        .trim()
        .trim_start_matches("Your previous answer was rejected: ");
    fallback(
        format!("{provider}: no valid answer in {attempts} attempts; last: {why}"),
        "invalid_output",
        attempts,
    )
}

fn count_call(ctx: &Context, provider: &'static str, outcome: &'static str) {
    ctx.metrics
        .llm_calls
        .get_or_create(&LlmLabels { provider, outcome })
        .inc();
}

/// What the cluster and the audit trail say about the request's target
/// (the reads are bounded; what could not be read is noted in `gaps`).
async fn gather(ctx: &Context, spec: &RemediationRequestSpec) -> Facts {
    let mut f = Facts::default();
    for o in std::iter::once(&spec.signal_resource)
        .chain(&spec.owner_chain)
        .chain(std::iter::once(&spec.target))
    {
        if !o.name.is_empty() && !f.objects.contains(o) {
            f.objects.push(o.clone());
        }
    }
    let readable = catalogue()
        .iter()
        .find(|a| a.name == "collect_diagnostics")
        .is_some_and(|a| a.acts_on.contains(&spec.target.kind.as_str()));
    if readable {
        match ctx.cluster.diagnostics(&spec.target).await {
            Ok(evidence) => f.read_evidence(&spec.target, &evidence),
            Err(e) => f.gaps.push(format!("target state: {e}")),
        }
    }
    match history(ctx, spec).await {
        Ok(h) => {
            f.history = h
                .into_iter()
                .map(|p| Past {
                    action: p.action,
                    requests: p.requests,
                    effective: p.effective,
                })
                .collect()
        }
        Err(e) => f.gaps.push(format!("history: {e}")),
    }
    f
}

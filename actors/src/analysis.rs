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

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kubernaut_api::workflow::{Step, Workflow};
use kubernaut_api::{ObjectRef, ProcessingStatus, RemediationRequestSpec};
use kubernaut_cluster::{ActionCall, ActionInfo, Bounds, catalogue};
use kubernaut_llm::{Guarded, LlmError};
use kubernaut_store::PastOutcome;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::Context;
use crate::metrics::{LlmLabels, PathLabels, ProviderLabels, ReasonLabels, TokenLabels};
use crate::rules::{self, Decision, RuleError};

/// Free text the model writes: one line, no quotes or backslashes. Without
/// a pattern, llama.cpp's grammar lets raw newlines through; a length
/// bound (`maxLength`) would make generation about 9× slower there, so the
/// length is bounded by the call's `max_tokens` instead.
const FREE_TEXT: &str = "^[A-Za-z0-9 ,.:;()'/_%+=<>-]+$";
/// Confidence as an enum: llama.cpp does not enforce numeric bounds.
const CONFIDENCES: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// How much of the model's prose the status keeps.
const MAX_TEXT: usize = 500;
const MAX_PODS: usize = 5;
const MAX_EVENTS: usize = 10;

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

/// What a valid LLM answer said besides its actions (K-AI-3).
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub root_cause: String,
    /// 0 to 1.
    pub confidence: f64,
    pub rationale: String,
}

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
    let fallback = |reason: String, label: &'static str, attempts: u32| {
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
            decision: rules::decide(&ctx.rules, spec),
            verdict: None,
            attempts,
            elapsed: started.elapsed(),
        }
    };
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
    let facts = Facts::gather(ctx, spec).await;
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
                return Analyzed {
                    path: Path::Llm,
                    reason,
                    fallback: None,
                    decision: Ok(Decision {
                        rule: String::new(),
                        workflow,
                    }),
                    verdict: Some(verdict),
                    attempts,
                    elapsed: started.elapsed(),
                };
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

const SYSTEM: &str = "You are the analysis stage of Kubernaut, a Kubernetes remediation controller. \
Given an alert, the state of its target and what worked before, say what most likely caused the alert \
and choose remediation actions from the allowed list only, in the order they should run. Prefer the \
least risky action that addresses the cause and actions that worked before. Answer with one JSON object: \
rootCause (one sentence), confidence (0 to 1), rationale (one sentence), actions (a list of {action, parameters}).";

/// What the cluster and the audit trail say about the request's target.
#[derive(Debug, Default)]
struct Facts {
    /// The objects actions may act on: the signal's resource, its owner
    /// chain up to the target, and the target's pods.
    objects: Vec<ObjectRef>,
    containers: Vec<String>,
    pods: Vec<Value>,
    events: Vec<Value>,
    history: Vec<PastOutcome>,
    /// What could not be read.
    gaps: Vec<String>,
}

impl Facts {
    async fn gather(ctx: &Context, spec: &RemediationRequestSpec) -> Self {
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
        let history = tokio::time::timeout(
            Duration::from_secs(2),
            ctx.audit.history(
                &spec.signal_name,
                &spec.target.kind,
                ctx.analyst.settings.history_limit,
            ),
        )
        .await;
        match history {
            Ok(Ok(h)) => f.history = h,
            Ok(Err(e)) => f.gaps.push(format!("history: {e}")),
            Err(_) => f.gaps.push("history: PostgreSQL did not answer".into()),
        }
        f
    }

    fn read_evidence(&mut self, target: &ObjectRef, evidence: &Value) {
        let pods = evidence["pods"].as_array().cloned().unwrap_or_default();
        for p in pods.iter().take(MAX_PODS) {
            let Some(name) = p["name"].as_str() else {
                continue;
            };
            let pod = ObjectRef::new("Pod", &target.namespace, name);
            if !self.objects.contains(&pod) {
                self.objects.push(pod);
            }
            let statuses = p["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let containers: Vec<Value> = statuses
                .iter()
                .map(|c| {
                    if let Some(n) = c["name"].as_str()
                        && !self.containers.iter().any(|x| x == n)
                    {
                        self.containers.push(n.to_string());
                    }
                    json!({
                        "name": c["name"],
                        "ready": c["ready"],
                        "restarts": c["restartCount"],
                        "waiting": c["state"]["waiting"]["reason"],
                        "lastTerminated": c["lastState"]["terminated"]["reason"],
                        "exitCode": c["lastState"]["terminated"]["exitCode"],
                    })
                })
                .collect();
            self.pods.push(json!({
                "name": name, "phase": p["phase"], "node": p["node"], "containers": containers,
            }));
        }
        // Pods that have not started name no containers; the template does.
        let template = &evidence["object"]["spec"]["template"]["spec"]["containers"];
        for c in template.as_array().into_iter().flatten() {
            if let Some(n) = c["name"].as_str()
                && !self.containers.iter().any(|x| x == n)
            {
                self.containers.push(n.to_string());
            }
        }
        self.events = evidence["events"]
            .as_array()
            .into_iter()
            .flatten()
            .take(MAX_EVENTS)
            .map(|e| {
                json!({"type": e["type"], "reason": e["reason"], "message": e["message"], "count": e["count"]})
            })
            .collect();
    }
}

/// An action the LLM may choose, with its parameter schema narrowed to the
/// request's objects.
#[derive(Clone, Debug)]
struct Offered {
    info: ActionInfo,
    schema: Value,
}

fn offer(objects: &[ObjectRef], containers: &[String], bounds: &Bounds) -> Vec<Offered> {
    catalogue()
        .into_iter()
        .filter_map(|info| {
            let schema = narrowed(&info, objects, containers, bounds)?;
            Some(Offered { info, schema })
        })
        .collect()
}

/// The action's parameter schema with `$ref`s inlined, annotations
/// dropped, object-naming fields (`kind`, `namespace`, `name`,
/// `container`) reduced to the request's values, numbers to enums within
/// the bounds (llama.cpp does not enforce `minimum`/`maximum`) and free
/// text patterned; `None` when the action acts on none of the request's
/// objects.
fn narrowed(
    info: &ActionInfo,
    objects: &[ObjectRef],
    containers: &[String],
    bounds: &Bounds,
) -> Option<Value> {
    let defs = info.parameters.get("$defs").cloned().unwrap_or(Value::Null);
    let mut schema = inline(&info.parameters, &defs);
    let targets: Vec<&ObjectRef> = objects
        .iter()
        .filter(|o| info.acts_on.contains(&o.kind.as_str()))
        .collect();
    if targets.is_empty() && info.name != "notify_only" {
        return None;
    }
    let kinds: BTreeSet<&str> = targets.iter().map(|o| o.kind.as_str()).collect();
    let namespaces: BTreeSet<&str> = targets.iter().map(|o| o.namespace.as_str()).collect();
    let names: BTreeSet<&str> = targets.iter().map(|o| o.name.as_str()).collect();
    let props = schema
        .get_mut("properties")
        .and_then(Value::as_object_mut)?;
    for (key, prop) in props.iter_mut() {
        let pinned: Option<Vec<&str>> = match key.as_str() {
            "kind" => Some(kinds.iter().copied().collect()),
            "namespace" => Some(namespaces.iter().copied().collect()),
            "name" => Some(names.iter().copied().collect()),
            "container" if !containers.is_empty() => {
                Some(containers.iter().map(String::as_str).collect())
            }
            _ => None,
        };
        match pinned {
            Some(values) => {
                let allowed: Vec<&str> = match prop.get("enum").and_then(Value::as_array) {
                    Some(own) => values
                        .into_iter()
                        .filter(|v| own.iter().any(|o| o == v))
                        .collect(),
                    None => values,
                };
                if allowed.is_empty() {
                    return None;
                }
                *prop = json!({"type": "string", "enum": allowed});
            }
            None if prop["type"] == "string" && prop.get("enum").is_none() => {
                prop["pattern"] = json!(FREE_TEXT);
            }
            None if key.to_ascii_lowercase().contains("replicas") => {
                let n: Vec<i32> = (0..=bounds.max_replicas.clamp(0, 100)).collect();
                *prop = json!({"enum": n});
            }
            None if key == "factor" => {
                let f: Vec<f64> = [1.1, 1.25, 1.5, 2.0, 3.0]
                    .into_iter()
                    .filter(|f| *f <= bounds.max_increase_factor)
                    .collect();
                *prop = json!({"enum": f});
            }
            None => {}
        }
    }
    Some(schema)
}

/// `schema` with local `$ref`s replaced by their definitions and the
/// keywords grammar builders do not need (`$schema`, `$defs`, `title`,
/// `description`, `format`) removed.
fn inline(schema: &Value, defs: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            if let Some(name) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
            {
                return inline(&defs[name], defs);
            }
            let out: Map<String, Value> = map
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "$schema" | "$defs" | "title" | "description" | "format"
                    )
                })
                .map(|(k, v)| (k.clone(), inline(v, defs)))
                .collect();
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| inline(v, defs)).collect()),
        other => other.clone(),
    }
}

/// The answer's schema: a diagnosis and 1 to `max_actions` of the offered
/// actions, each with its own parameters.
fn output_schema(offered: &[Offered], max_actions: usize) -> Value {
    let choices: Vec<Value> = offered
        .iter()
        .map(|o| {
            json!({
                "type": "object",
                "properties": {"action": {"const": o.info.name}, "parameters": o.schema},
                "required": ["action", "parameters"],
                "additionalProperties": false,
            })
        })
        .collect();
    json!({
        "type": "object",
        "properties": {
            "rootCause": {"type": "string", "pattern": FREE_TEXT},
            "confidence": {"enum": CONFIDENCES},
            "rationale": {"type": "string", "pattern": FREE_TEXT},
            "actions": {"type": "array", "items": {"anyOf": choices}, "minItems": 1, "maxItems": max_actions.max(1)},
        },
        "required": ["rootCause", "confidence", "rationale", "actions"],
        "additionalProperties": false,
    })
}

/// Label and annotation names whose values may be credentials.
fn sensitive(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "api_key",
        "api-key",
        "credential",
        "private",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn without_sensitive(map: &std::collections::BTreeMap<String, String>) -> Value {
    map.iter()
        .filter(|(k, _)| !sensitive(k))
        .map(|(k, v)| (k.clone(), json!(truncate(v, 300))))
        .collect::<Map<String, Value>>()
        .into()
}

/// The incident document the prompt carries.
fn incident(
    spec: &RemediationRequestSpec,
    processing: Option<&ProcessingStatus>,
    facts: &Facts,
    offered: &[Offered],
) -> Value {
    let history: Vec<Value> = facts
        .history
        .iter()
        .map(|h| {
            json!({"action": h.action, "requests": h.requests, "verified": h.completed,
                   "effectiveness": (h.effectiveness() * 100.0).round() / 100.0})
        })
        .collect();
    let actions: Vec<Value> = offered
        .iter()
        .map(|o| json!({"action": o.info.name, "risk": o.info.risk, "does": o.info.summary}))
        .collect();
    json!({
        "alert": {
            "name": spec.signal_name, "severity": spec.severity, "source": spec.source,
            "labels": without_sensitive(&spec.labels),
            "annotations": without_sensitive(&spec.annotations),
        },
        "target": spec.target.to_string(),
        "signalResource": spec.signal_resource.to_string(),
        "ownerChain": spec.owner_chain.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "environment": processing.map(|p| p.environment.as_str()).unwrap_or("unknown"),
        "priority": processing.map(|p| p.priority.as_str()).unwrap_or("unknown"),
        "pods": facts.pods,
        "events": facts.events,
        "history": history,
        "unavailable": facts.gaps,
        "allowedActions": actions,
    })
}

/// The incident as prompt text of at most `max` characters: the least
/// telling parts (oldest events, further pods, history, annotations) go
/// first.
fn bounded(mut incident: Value, max: usize) -> String {
    let fits = |v: &Value| v.to_string().chars().count() <= max;
    for key in ["events", "pods", "history"] {
        while !fits(&incident) {
            match incident[key].as_array_mut() {
                Some(items) if !items.is_empty() => {
                    items.pop();
                }
                _ => break,
            }
        }
    }
    for key in ["annotations", "labels"] {
        if !fits(&incident) {
            incident["alert"][key] = json!({});
        }
    }
    let text = incident.to_string();
    if fits(&incident) {
        text
    } else {
        truncate(&text, max)
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    root_cause: String,
    confidence: f64,
    #[serde(default)]
    rationale: String,
    actions: Vec<ChosenAction>,
}

#[derive(Deserialize)]
struct ChosenAction {
    action: String,
    #[serde(default)]
    parameters: Value,
}

/// Checks an answer as the executor would take it: the catalogue's types,
/// the bounds, and the objects the actions act on. Returns the diagnosis
/// and the workflow (the actions in order, each after the one before), or
/// every error found.
fn validate(
    output: &Value,
    offered: &[Offered],
    objects: &[ObjectRef],
    bounds: &Bounds,
    holder: &str,
    max_actions: usize,
) -> Result<(Verdict, Workflow), Vec<String>> {
    let answer: Answer = serde_json::from_value(output.clone())
        .map_err(|e| vec![format!("the answer does not have the required shape: {e}")])?;
    let mut errors = Vec::new();
    if !(0.0..=1.0).contains(&answer.confidence) {
        errors.push(format!(
            "confidence {} is not between 0 and 1",
            answer.confidence
        ));
    }
    if answer.root_cause.trim().is_empty() {
        errors.push("rootCause is empty".into());
    }
    if answer.actions.is_empty() {
        errors.push("no action chosen".into());
    }
    if answer.actions.len() > max_actions {
        errors.push(format!(
            "{} actions chosen; at most {max_actions}",
            answer.actions.len()
        ));
    }
    let mut steps: Vec<Step> = Vec::new();
    for (i, chosen) in answer.actions.iter().enumerate() {
        let at = format!("actions[{i}] ({})", chosen.action);
        if !offered.iter().any(|o| o.info.name == chosen.action) {
            errors.push(format!("{at}: not an allowed action"));
            continue;
        }
        let call = match ActionCall::parse(&chosen.action, chosen.parameters.clone()) {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                continue;
            }
        };
        if let Err(e) = call.check(bounds) {
            errors.push(format!("{at}: {e}"));
            continue;
        }
        if let Some(target) = call.target_of(holder)
            && !objects.contains(&target)
        {
            errors.push(format!("{at}: {target} is not an object of this request"));
            continue;
        }
        let id = format!("s{}-{}", i + 1, chosen.action.replace('_', "-"));
        let depends_on = steps.last().map(|s| vec![s.id.clone()]).unwrap_or_default();
        steps.push(Step {
            id,
            action: chosen.action.clone(),
            parameters: match &chosen.parameters {
                Value::Null => json!({}),
                p => p.clone(),
            },
            depends_on,
            timeout_seconds: None,
            retries: 0,
            rollback: false,
            continue_on_failure: false,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let verdict = Verdict {
        root_cause: truncate(answer.root_cause.trim(), MAX_TEXT),
        confidence: answer.confidence,
        rationale: truncate(answer.rationale.trim(), MAX_TEXT),
    };
    Ok((
        verdict,
        Workflow {
            steps,
            ..Default::default()
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects() -> Vec<ObjectRef> {
        vec![
            ObjectRef::new("Pod", "shop", "web-7d4-abc"),
            ObjectRef::new("ReplicaSet", "shop", "web-7d4"),
            ObjectRef::new("Deployment", "shop", "web"),
        ]
    }

    fn offered() -> Vec<Offered> {
        offer(&objects(), &["app".to_string()], &Bounds::default())
    }

    fn names(offered: &[Offered]) -> Vec<&str> {
        offered.iter().map(|o| o.info.name).collect()
    }

    #[test]
    fn only_actions_on_the_requests_objects_are_offered_with_their_names_pinned() {
        let offered = offered();
        let names = names(&offered);
        for a in [
            "scale_deployment",
            "rollout_restart",
            "rollback_deployment",
            "restart_pod",
            "increase_resources",
            "collect_diagnostics",
            "notify_only",
        ] {
            assert!(names.contains(&a), "{a} missing from {names:?}");
        }
        for a in [
            "drain_node",
            "scale_statefulset",
            "run_job",
            "expand_pvc",
            "delete_job",
        ] {
            assert!(!names.contains(&a), "{a} offered: {names:?}");
        }
        let restart = &offered
            .iter()
            .find(|o| o.info.name == "rollout_restart")
            .unwrap()
            .schema;
        assert_eq!(restart["properties"]["kind"]["enum"], json!(["Deployment"]));
        assert_eq!(restart["properties"]["name"]["enum"], json!(["web"]));
        assert_eq!(restart["properties"]["namespace"]["enum"], json!(["shop"]));
        let text = restart.to_string();
        assert!(
            !text.contains("$ref") && !text.contains("$schema"),
            "{text}"
        );
        let resources = &offered
            .iter()
            .find(|o| o.info.name == "increase_resources")
            .unwrap()
            .schema;
        assert_eq!(resources["properties"]["container"]["enum"], json!(["app"]));
        let scale = &offered
            .iter()
            .find(|o| o.info.name == "scale_deployment")
            .unwrap()
            .schema;
        let replicas = scale["properties"]["replicas"]["enum"].as_array().unwrap();
        assert_eq!(replicas.len() as i32, Bounds::default().max_replicas + 1);
        assert_eq!(
            resources["properties"]["factor"]["enum"],
            json!([1.1, 1.25, 1.5, 2.0])
        );
        let notify = &offered
            .iter()
            .find(|o| o.info.name == "notify_only")
            .unwrap()
            .schema;
        assert_eq!(notify["properties"]["message"]["pattern"], FREE_TEXT);
    }

    fn answer(actions: Value) -> Value {
        json!({"rootCause": "bad rollout", "confidence": 0.9, "rationale": "errors began with it", "actions": actions})
    }

    fn check(output: &Value) -> Result<(Verdict, Workflow), Vec<String>> {
        validate(
            output,
            &offered(),
            &objects(),
            &Bounds::default(),
            "shop/rr-1",
            3,
        )
    }

    #[test]
    fn a_valid_answer_becomes_a_workflow_in_order() {
        let (verdict, wf) = check(&answer(json!([
            {"action": "collect_diagnostics", "parameters": {"kind": "Deployment", "namespace": "shop", "name": "web"}},
            {"action": "rollout_restart", "parameters": {"kind": "Deployment", "namespace": "shop", "name": "web"}},
        ])))
        .unwrap();
        assert_eq!(verdict.confidence, 0.9);
        assert_eq!(verdict.root_cause, "bad rollout");
        let ids: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["s1-collect-diagnostics", "s2-rollout-restart"]);
        assert_eq!(wf.steps[1].depends_on, ["s1-collect-diagnostics"]);
        let known: Vec<&str> = catalogue().iter().map(|a| a.name).collect();
        wf.validate(&known).unwrap();
    }

    #[test]
    fn wrong_actions_and_parameters_are_caught_each_with_its_reason() {
        let errors = check(&answer(json!([
            {"action": "drain_node", "parameters": {"name": "n1"}},
            {"action": "scale_deployment", "parameters": {"namespace": "shop", "name": "web", "replicas": 5000}},
            {"action": "rollout_restart", "parameters": {"kind": "Deployment", "namespace": "shop", "name": "api"}},
            {"action": "restart_pod", "parameters": {"namespace": "shop", "name": "web-7d4-abc", "force": true}},
        ])))
        .unwrap_err();
        let all = errors.join("\n");
        assert!(
            all.contains("actions[0] (drain_node): not an allowed action"),
            "{all}"
        );
        assert!(
            all.contains("actions[1] (scale_deployment)") && all.contains("5000"),
            "{all}"
        );
        assert!(
            all.contains("Deployment/shop/api is not an object of this request"),
            "{all}"
        );
        assert!(
            all.contains("actions[3] (restart_pod)") && all.contains("force"),
            "{all}"
        );
        assert!(all.contains("4 actions chosen; at most 3"), "{all}");

        let errors =
            check(&json!({"rootCause": "x", "confidence": 7, "rationale": "", "actions": []}))
                .unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains("confidence 7")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.contains("no action")), "{errors:?}");
        let errors = check(&json!({"answer": "restart it"})).unwrap_err();
        assert!(errors[0].contains("required shape"), "{errors:?}");
    }

    #[test]
    fn the_output_schema_offers_each_action_with_its_parameters() {
        let schema = output_schema(&offered(), 2);
        let choices = schema["properties"]["actions"]["items"]["anyOf"]
            .as_array()
            .unwrap();
        assert_eq!(choices.len(), offered().len());
        assert_eq!(schema["properties"]["actions"]["maxItems"], 2);
        assert!(
            choices
                .iter()
                .any(|c| c["properties"]["action"]["const"] == "rollout_restart")
        );
        assert_eq!(
            schema["properties"]["confidence"]["enum"]
                .as_array()
                .unwrap()
                .len(),
            11
        );
    }

    #[test]
    fn prompts_drop_credentials_and_stay_within_their_bound() {
        let mut spec: RemediationRequestSpec = serde_json::from_value(json!({
            "fingerprint": "f", "signalName": "HighErrorRate", "severity": "critical",
            "source": "alertmanager", "instanceId": "i",
            "target": {"kind": "Deployment", "namespace": "shop", "name": "web"},
            "signalResource": {"kind": "Deployment", "namespace": "shop", "name": "web"},
            "firingTime": "2026-11-22T10:00:00Z", "receivedTime": "2026-11-22T10:00:01Z",
        }))
        .unwrap();
        spec.labels.insert("db_password".into(), "hunter2".into());
        spec.annotations
            .insert("API-Token".into(), "tok-123".into());
        spec.annotations
            .insert("summary".into(), "errors at 40%".into());
        let facts = Facts {
            events: (0..200)
                .map(|i| json!({"type": "Warning", "reason": "BackOff", "message": format!("restart {i} of a failing container")}))
                .collect(),
            ..Default::default()
        };
        let doc = incident(&spec, None, &facts, &offered());
        let text = bounded(doc.clone(), 3000);
        assert!(
            !text.contains("hunter2") && !text.contains("tok-123"),
            "{text}"
        );
        assert!(text.contains("errors at 40%"), "{text}");
        assert!(text.chars().count() <= 3000);
        let back: Value = serde_json::from_str(&text).expect("still JSON after cutting events");
        let kept = back["events"].as_array().unwrap().len();
        assert!(kept > 0 && kept < 200, "{kept} events kept");
        assert_eq!(bounded(doc, 100).chars().count(), 100);
    }
}

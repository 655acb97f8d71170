//! The deterministic rule table of the Analysis stage: signal name → a
//! workflow (one action, or several steps) with parameter templates.
//! `{{labels.X}}`, `{{target.kind|name|namespace}}` and
//! `{{resource.kind|name|namespace}}` in any string parameter are filled
//! from the request's spec; other values keep their YAML types.
//!
//! A rule may list ranked `alternatives`; [`decide_ranked`] passes over a
//! choice whose recent effectiveness for this alert and target kind is
//! below a threshold (K-AI-2). Its `verifyQuery` is the PromQL the metric
//! scorer evaluates (K-AU-2); placeholders in it are PromQL-escaped.

use kubernaut_api::RemediationRequestSpec;
use kubernaut_api::workflow::{Fill, Step, Workflow, fill_placeholders};
use kubernaut_cluster::catalogue;
use serde::Deserialize;
use serde_json::Value;

/// One rule: `action` with `parameters`, or a `workflow` of steps.
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// The signal name this rule answers (Alertmanager `alertname`).
    pub signal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub parameters: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workflow: Vec<Step>,
    /// Ranked fallbacks, each an action with parameters or a workflow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<Choice>,
    /// PromQL that returns series while the problem lasts, as an alerting
    /// rule's expression does; empty after a fix that worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_query: Option<String>,
}

/// One of a rule's ranked alternatives.
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Choice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub parameters: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workflow: Vec<Step>,
}

impl Choice {
    fn workflow(&self) -> Workflow {
        match &self.action {
            Some(action) => Workflow::single(action, self.parameters.clone()),
            None => Workflow {
                steps: self.workflow.clone(),
                ..Default::default()
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub rule: String,
    pub workflow: Workflow,
    /// The rule's PromQL for the metric scorer, placeholders filled.
    pub verify_query: Option<String>,
    /// Why better-ranked choices were passed over, best first.
    pub passed_over: Vec<String>,
}

/// How an action did for an alert and target kind: finished requests whose
/// outcome is known, and those verified Effective.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record {
    pub requests: i64,
    pub effective: i64,
}

impl Record {
    pub fn effectiveness(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.effective as f64 / self.requests as f64
        }
    }
}

/// When a choice is passed over: it was tried at least `min_samples`
/// times recently and worked in fewer than `threshold` of them.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Learning {
    pub threshold: f64,
    pub min_samples: i64,
    /// Only outcomes of this many recent days count.
    pub window_days: u32,
}

impl Default for Learning {
    fn default() -> Self {
        Learning {
            threshold: 0.5,
            min_samples: 3,
            window_days: 30,
        }
    }
}

impl Decision {
    /// The actions in the workflow's order, for the status and the audit.
    pub fn summary(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for s in &self.workflow.steps {
            if !names.contains(&s.action.as_str()) {
                names.push(&s.action);
            }
        }
        names.join(", ")
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("no rule for signal {0:?}")]
    NoRule(String),
    #[error(
        "parameter {param:?} of rule {rule:?} needs {placeholder}, which the signal does not carry"
    )]
    MissingValue {
        rule: String,
        param: String,
        placeholder: String,
    },
}

impl Rule {
    /// The rule's workflow: its one action, or its steps.
    pub fn workflow(&self) -> Workflow {
        match &self.action {
            Some(action) => Workflow::single(action, self.parameters.clone()),
            None => Workflow {
                steps: self.workflow.clone(),
                ..Default::default()
            },
        }
    }
}

/// Checked at start-up: every rule is one action or one workflow, over
/// actions of the catalogue, with a valid DAG. Parameters are checked
/// against the actions' schemas once their placeholders are filled.
pub fn validate(rules: &[Rule]) -> Result<(), crate::Error> {
    check(rules).map_err(crate::Error::Rules)
}

fn check(rules: &[Rule]) -> Result<(), String> {
    let known: Vec<&str> = catalogue().iter().map(|a| a.name).collect();
    for r in rules {
        match (&r.action, r.workflow.is_empty()) {
            (Some(_), false) => {
                return Err(format!(
                    "rule for {:?} has both action and workflow; give one",
                    r.signal
                ));
            }
            (None, true) => {
                return Err(format!(
                    "rule for {:?} has neither action nor workflow",
                    r.signal
                ));
            }
            _ => {}
        }
        r.workflow()
            .validate(&known)
            .map_err(|e| format!("rule for {:?}: {e}", r.signal))?;
        for (i, c) in r.alternatives.iter().enumerate() {
            if c.action.is_some() != c.workflow.is_empty() {
                return Err(format!(
                    "rule for {:?}: alternative {} needs exactly one of action and workflow",
                    r.signal,
                    i + 1
                ));
            }
            c.workflow()
                .validate(&known)
                .map_err(|e| format!("rule for {:?}, alternative {}: {e}", r.signal, i + 1))?;
        }
    }
    Ok(())
}

/// The rule for `spec`'s signal, if there is one.
pub fn rule_for<'a>(rules: &'a [Rule], spec: &RemediationRequestSpec) -> Option<&'a Rule> {
    rules.iter().find(|r| r.signal == spec.signal_name)
}

/// The matching rule's first choice.
pub fn decide(rules: &[Rule], spec: &RemediationRequestSpec) -> Result<Decision, RuleError> {
    decide_ranked(rules, spec, &|_| None, Learning::default())
}

/// The matching rule's best-ranked choice that has not recently failed:
/// a choice any of whose mutating actions has `record` below
/// `learning.threshold` over at least `learning.min_samples` requests is
/// passed over for the next. When every choice is passed over, the one
/// that did best is taken, and the reasons say so.
pub fn decide_ranked(
    rules: &[Rule],
    spec: &RemediationRequestSpec,
    record: &dyn Fn(&str) -> Option<Record>,
    learning: Learning,
) -> Result<Decision, RuleError> {
    let rule = rule_for(rules, spec).ok_or_else(|| RuleError::NoRule(spec.signal_name.clone()))?;
    let choices: Vec<Workflow> = std::iter::once(rule.workflow())
        .chain(rule.alternatives.iter().map(Choice::workflow))
        .collect();
    let mut passed_over = Vec::new();
    let mut best: Option<(f64, usize)> = None;
    let mut chosen = None;
    for (i, w) in choices.iter().enumerate() {
        let worst = fixes(w)
            .filter_map(|a| record(a).map(|r| (a, r)))
            .filter(|(_, r)| r.requests >= learning.min_samples.max(1))
            .min_by(|a, b| a.1.effectiveness().total_cmp(&b.1.effectiveness()));
        match worst {
            Some((action, r)) if r.effectiveness() < learning.threshold => {
                passed_over.push(format!(
                    "{action} worked in {} of its last {} {} requests on a {} ({:.0}%, below {:.0}%)",
                    r.effective,
                    r.requests,
                    spec.signal_name,
                    spec.target.kind,
                    r.effectiveness() * 100.0,
                    learning.threshold * 100.0
                ));
                if best.is_none_or(|(e, _)| r.effectiveness() > e) {
                    best = Some((r.effectiveness(), i));
                }
            }
            _ => {
                chosen = Some(i);
                break;
            }
        }
    }
    let index = match chosen {
        Some(i) => i,
        None => {
            let i = best.map_or(0, |(_, i)| i);
            passed_over.push(format!(
                "every choice did poorly; taking choice {} of {}, which did best",
                i + 1,
                choices.len()
            ));
            i
        }
    };
    let mut workflow = choices[index].clone();
    for step in &mut workflow.steps {
        fill_placeholders(&mut step.parameters, &mut |key| lookup(key, spec)).map_err(|u| {
            RuleError::MissingValue {
                rule: rule.signal.clone(),
                param: format!("{}.{}", step.id, u.path),
                placeholder: u.placeholder,
            }
        })?;
    }
    Ok(Decision {
        rule: rule.signal.clone(),
        workflow,
        verify_query: query_of(rule, spec)?,
        passed_over,
    })
}

/// The PromQL of `spec`'s rule, filled, whoever decides (the LLM too): it
/// measures the alert, not the action.
pub fn verify_query(
    rules: &[Rule],
    spec: &RemediationRequestSpec,
) -> Result<Option<String>, RuleError> {
    match rule_for(rules, spec) {
        Some(rule) => query_of(rule, spec),
        None => Ok(None),
    }
}

fn query_of(rule: &Rule, spec: &RemediationRequestSpec) -> Result<Option<String>, RuleError> {
    let Some(q) = &rule.verify_query else {
        return Ok(None);
    };
    promql(q, spec)
        .map(Some)
        .map_err(|u| RuleError::MissingValue {
            rule: rule.signal.clone(),
            param: "verifyQuery".into(),
            placeholder: u.placeholder,
        })
}

/// The workflow's actions that change something: the ones whose
/// effectiveness counts (reading or notifying fixes nothing).
pub fn fixes(w: &Workflow) -> impl Iterator<Item = &str> {
    let mut seen: Vec<&str> = Vec::new();
    w.steps
        .iter()
        .map(|s| s.action.as_str())
        .filter(|a| kubernaut_cluster::writes(a))
        .filter(move |a| {
            let new = !seen.contains(a);
            seen.push(a);
            new
        })
}

/// Fills `query`'s placeholders with values escaped for a PromQL string
/// literal: a label value is outside input, and must not end the string.
fn promql(
    query: &str,
    spec: &RemediationRequestSpec,
) -> Result<String, kubernaut_api::workflow::Unfilled> {
    let mut v = Value::String(query.to_string());
    fill_placeholders(&mut v, &mut |key| match lookup(key, spec) {
        Fill::With(s) => Fill::With(
            s.chars()
                .flat_map(|c| match c {
                    '\\' => vec!['\\', '\\'],
                    '"' => vec!['\\', '"'],
                    '\'' => vec!['\\', '\''],
                    '\n' => vec!['\\', 'n'],
                    c if c.is_control() => vec![],
                    c => vec![c],
                })
                .collect(),
        ),
        other => other,
    })?;
    Ok(v.as_str().unwrap_or_default().to_string())
}

/// The storm policy's fan-out: how an approved storm runs its rule over
/// the affected targets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StormPolicy {
    pub max_parallel: u32,
    pub max_failure_ratio: f64,
}

impl Default for StormPolicy {
    fn default() -> Self {
        Self {
            max_parallel: 5,
            max_failure_ratio: 0.3,
        }
    }
}

/// The workflow of an approved storm: the storm's alert rule decided for
/// each affected target, the steps of target `i` renamed `t<i>-<id>` (with
/// their dependencies and `steps.…` references), none failing the others,
/// run at most `max_parallel` at once and stopped once more than
/// `max_failure_ratio` of the settled steps failed.
pub fn storm_plan(
    rules: &[Rule],
    spec: &RemediationRequestSpec,
    targets: &[kubernaut_api::ObjectRef],
    policy: StormPolicy,
) -> Result<Decision, RuleError> {
    let alert = spec
        .storm
        .as_ref()
        .map_or(spec.signal_name.clone(), |s| s.alert_name.clone());
    let mut plan = Workflow {
        steps: Vec::new(),
        max_parallel: Some(policy.max_parallel),
        max_failure_ratio: Some(policy.max_failure_ratio),
    };
    let mut rule = String::new();
    for (i, target) in targets.iter().enumerate() {
        // Each target as itself: the storm's labels and annotations are
        // the first signal's, and would name its pod for every target.
        let one = RemediationRequestSpec {
            signal_name: alert.clone(),
            target: target.clone(),
            signal_resource: target.clone(),
            storm: None,
            labels: Default::default(),
            annotations: Default::default(),
            ..spec.clone()
        };
        let d = decide(rules, &one)?;
        rule = d.rule;
        let rename = |id: &str| format!("t{i}-{id}");
        let ids: Vec<String> = d.workflow.steps.iter().map(|s| s.id.clone()).collect();
        for mut step in d.workflow.steps {
            let mut text = step.parameters.to_string();
            for id in &ids {
                text = text.replace(&format!("steps.{id}."), &format!("steps.{}.", rename(id)));
            }
            step.parameters = serde_json::from_str(&text).unwrap_or(step.parameters);
            step.id = rename(&step.id);
            step.depends_on = step.depends_on.iter().map(|d| rename(d)).collect();
            step.continue_on_failure = true;
            plan.steps.push(step);
        }
    }
    if plan.steps.is_empty() {
        return Err(RuleError::NoRule(format!(
            "{alert} (a storm with no affected targets)"
        )));
    }
    Ok(Decision {
        rule,
        workflow: plan,
        verify_query: None,
        passed_over: Vec::new(),
    })
}

/// A placeholder's value from the signal; a dependency's result
/// (`steps.…`) is left for the workflow runner.
fn lookup(key: &str, spec: &RemediationRequestSpec) -> Fill {
    if key.starts_with("steps.") {
        return Fill::Keep;
    }
    let object = |o: &kubernaut_api::ObjectRef, field: &str| match field {
        "kind" => Some(o.kind.clone()),
        "name" => Some(o.name.clone()),
        "namespace" => Some(o.namespace.clone()),
        _ => None,
    };
    let value = match key.split_once('.') {
        Some(("labels", l)) => spec.labels.get(l).cloned(),
        Some(("target", f)) => object(&spec.target, f),
        Some(("resource", f)) => object(&spec.signal_resource, f),
        _ => None,
    };
    match value.filter(|v| !v.is_empty()) {
        Some(v) => Fill::With(v),
        None => Fill::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubernaut_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kubernaut_api::{ObjectRef, SignalSource};

    fn spec(signal: &str, labels: &[(&str, &str)]) -> RemediationRequestSpec {
        let t = Time("2026-11-22T03:00:00Z".parse().unwrap());
        RemediationRequestSpec {
            fingerprint: "f".into(),
            signal_name: signal.into(),
            severity: "warning".into(),
            source: SignalSource::Alertmanager,
            instance_id: "i".into(),
            target: ObjectRef::new("Deployment", "shop", "cart"),
            signal_resource: ObjectRef::new("Pod", "shop", "cart-1"),
            owner_chain: vec![],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: Default::default(),
            firing_time: t.clone(),
            received_time: t,
            original_payload: String::new(),
            storm: None,
        }
    }

    fn crashloop_rule() -> Rule {
        serde_json::from_value(serde_json::json!({
            "signal": "KubePodCrashLooping", "action": "restart_pod",
            "parameters": {"name": "{{labels.pod}}", "namespace": "{{ target.namespace }}"}
        }))
        .unwrap()
    }

    #[test]
    fn a_matching_rule_renders_its_parameters() {
        let d = decide(
            &[crashloop_rule()],
            &spec("KubePodCrashLooping", &[("pod", "cart-1")]),
        )
        .unwrap();
        assert_eq!(d.summary(), "restart_pod");
        assert_eq!(
            d.workflow.steps[0].parameters,
            serde_json::json!({"name": "cart-1", "namespace": "shop"})
        );
    }

    #[test]
    fn workflow_rules_fill_every_step_and_keep_value_types() {
        let rule: Rule = serde_json::from_value(serde_json::json!({
            "signal": "KubeDeploymentRolloutStuck",
            "workflow": [
                {"id": "look", "action": "collect_diagnostics", "parameters":
                    {"kind": "{{target.kind}}", "namespace": "{{target.namespace}}", "name": "{{target.name}}"}},
                {"id": "scale", "action": "scale_deployment", "dependsOn": ["look"], "parameters":
                    {"namespace": "{{target.namespace}}", "name": "{{target.name}}", "replicas": 3}}
            ]
        }))
        .unwrap();
        assert!(validate(std::slice::from_ref(&rule)).is_ok());
        let d = decide(&[rule], &spec("KubeDeploymentRolloutStuck", &[])).unwrap();
        assert_eq!(d.summary(), "collect_diagnostics, scale_deployment");
        assert_eq!(d.workflow.steps[0].parameters["kind"], "Deployment");
        assert_eq!(d.workflow.steps[1].parameters["replicas"], 3);
        assert_eq!(d.workflow.steps[1].depends_on, ["look"]);
    }

    #[test]
    fn a_storm_plan_runs_the_rule_once_per_target_under_the_policy() {
        let rule: Rule = serde_json::from_value(serde_json::json!({"signal": "HighLatency", "workflow": [
            {"id": "look", "action": "collect_diagnostics", "parameters":
                {"kind": "{{target.kind}}", "namespace": "{{target.namespace}}", "name": "{{target.name}}"}},
            {"id": "restart", "action": "rollout_restart", "dependsOn": ["look"], "parameters":
                {"kind": "Deployment", "namespace": "{{target.namespace}}", "name": "{{target.name}}",
                 "note": "{{steps.look.summary}}"}}
        ]}))
        .unwrap();
        let mut storm = spec("HighLatency", &[]);
        storm.storm = Some(kubernaut_api::StormSpec {
            kind: kubernaut_api::StormKind::Pattern,
            alert_name: "HighLatency".into(),
            namespace: "shop".into(),
        });
        let targets = [
            ObjectRef::new("Deployment", "shop", "a"),
            ObjectRef::new("Deployment", "shop", "b"),
        ];
        let policy = StormPolicy {
            max_parallel: 2,
            max_failure_ratio: 0.25,
        };
        let d = storm_plan(&[rule], &storm, &targets, policy).unwrap();
        let w = &d.workflow;
        let ids: Vec<&str> = w.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["t0-look", "t0-restart", "t1-look", "t1-restart"]);
        assert_eq!(w.steps[3].depends_on, ["t1-look"]);
        assert_eq!(w.steps[3].parameters["name"], "b");
        assert_eq!(w.steps[3].parameters["note"], "{{steps.t1-look.summary}}");
        assert!(w.steps.iter().all(|s| s.continue_on_failure));
        assert_eq!((w.max_parallel, w.max_failure_ratio), (Some(2), Some(0.25)));
        let known: Vec<&str> = catalogue().iter().map(|a| a.name).collect();
        assert!(w.validate(&known).is_ok());
        // A rule that names its object by the signal's labels cannot be
        // run per target: the storm's labels are one target's.
        let by_label: Rule = serde_json::from_value(serde_json::json!({"signal": "HighLatency",
            "action": "restart_pod", "parameters": {"namespace": "shop", "name": "{{labels.pod}}"}}))
        .unwrap();
        let mut labelled = storm.clone();
        labelled.labels.insert("pod".into(), "a-1".into());
        assert!(storm_plan(&[by_label], &labelled, &targets, policy).is_err());
        assert!(matches!(
            storm_plan(&[], &storm, &targets, policy),
            Err(RuleError::NoRule(_))
        ));
    }

    #[test]
    fn step_results_are_left_for_the_runner() {
        let rule: Rule = serde_json::from_value(serde_json::json!({"signal": "S", "workflow": [
            {"id": "job", "action": "run_job", "parameters": {"namespace": "{{target.namespace}}", "template": "t"}},
            {"id": "look", "action": "collect_diagnostics", "dependsOn": ["job"], "parameters":
                {"kind": "Job", "namespace": "{{target.namespace}}", "name": "{{ steps.job.target.name }}"}}]}))
        .unwrap();
        let d = decide(&[rule], &spec("S", &[])).unwrap();
        assert_eq!(
            d.workflow.steps[1].parameters["name"],
            "{{ steps.job.target.name }}"
        );
        assert_eq!(d.workflow.steps[1].parameters["namespace"], "shop");
    }

    #[test]
    fn actions_without_parameters_get_an_empty_object_the_crd_accepts() {
        let rule: Rule =
            serde_json::from_value(serde_json::json!({"signal": "S", "action": "notify_only"}))
                .unwrap();
        let d = decide(&[rule], &spec("S", &[])).unwrap();
        assert_eq!(d.workflow.steps[0].parameters, serde_json::json!({}));
        let step: kubernaut_api::workflow::Step = serde_json::from_value(
            serde_json::json!({"id": "a", "action": "notify_only", "parameters": null}),
        )
        .unwrap();
        assert_eq!(step.parameters, serde_json::json!({}));
    }

    #[test]
    fn no_rule_and_missing_labels_are_errors() {
        assert_eq!(
            decide(&[crashloop_rule()], &spec("Other", &[])),
            Err(RuleError::NoRule("Other".into()))
        );
        let err = decide(&[crashloop_rule()], &spec("KubePodCrashLooping", &[])).unwrap_err();
        assert!(
            matches!(err, RuleError::MissingValue { ref placeholder, ref param, .. }
                if placeholder == "{{labels.pod}}" && param == "restart_pod.name"),
            "{err}"
        );
    }

    #[test]
    fn unknown_actions_cycles_and_ambiguous_rules_are_refused_by_validation() {
        let mut r = crashloop_rule();
        assert!(validate(std::slice::from_ref(&r)).is_ok());
        r.action = Some("reboot_cluster".into());
        assert!(
            validate(std::slice::from_ref(&r))
                .unwrap_err()
                .to_string()
                .contains("reboot_cluster")
        );
        r.action = None;
        assert!(
            validate(std::slice::from_ref(&r))
                .unwrap_err()
                .to_string()
                .contains("neither")
        );
        let cyclic: Rule = serde_json::from_value(serde_json::json!({"signal": "S", "workflow": [
            {"id": "a", "action": "notify_only", "dependsOn": ["b"]},
            {"id": "b", "action": "notify_only", "dependsOn": ["a"]}]}))
        .unwrap();
        assert!(
            validate(&[cyclic])
                .unwrap_err()
                .to_string()
                .contains("cycle")
        );
    }

    fn ranked_rule() -> Rule {
        serde_json::from_value(serde_json::json!({
            "signal": "HighErrorRate",
            "workflow": [
                {"id": "look", "action": "collect_diagnostics", "parameters":
                    {"kind": "Deployment", "namespace": "shop", "name": "cart"}},
                {"id": "fix", "action": "rollout_restart", "dependsOn": ["look"], "parameters":
                    {"kind": "Deployment", "namespace": "shop", "name": "cart"}}],
            "alternatives": [
                {"action": "rollback_deployment", "parameters": {"namespace": "shop", "name": "cart"}},
                {"action": "notify_only", "parameters": {"message": "nothing worked"}}],
            "verifyQuery": "rate(errors{pod=\"{{labels.pod}}\"}[5m]) > 0"
        }))
        .unwrap()
    }

    #[test]
    fn a_choice_that_recently_did_not_work_is_passed_over_and_the_status_says_why() {
        let rules = vec![ranked_rule()];
        validate(&rules).unwrap();
        let s = spec("HighErrorRate", &[("pod", "cart-1")]);
        let learning = Learning::default();
        let history = |action: &str| match action {
            "rollout_restart" => Some(Record {
                requests: 4,
                effective: 1,
            }),
            "collect_diagnostics" => Some(Record {
                requests: 9,
                effective: 0,
            }),
            _ => None,
        };
        let d = decide_ranked(&rules, &s, &history, learning).unwrap();
        assert_eq!(d.workflow.steps[0].action, "rollback_deployment");
        assert_eq!(d.passed_over.len(), 1);
        assert!(
            d.passed_over[0].starts_with("rollout_restart worked in 1 of its last 4"),
            "{:?}",
            d.passed_over
        );
        // Too few samples say nothing: the first choice stands.
        let few = |_: &str| {
            Some(Record {
                requests: 2,
                effective: 0,
            })
        };
        let d = decide_ranked(&rules, &s, &few, learning).unwrap();
        assert_eq!(d.workflow.steps[1].action, "rollout_restart");
        assert!(d.passed_over.is_empty());
        // A choice that changes nothing is never passed over.
        let bad = |_: &str| {
            Some(Record {
                requests: 10,
                effective: 0,
            })
        };
        let d = decide_ranked(&rules, &s, &bad, learning).unwrap();
        assert_eq!(d.workflow.steps[0].action, "notify_only");
        // Every choice that changes something failed: the best of them, said so.
        let mut rule = ranked_rule();
        rule.alternatives.pop();
        let rules = vec![rule];
        let bad = |a: &str| {
            Some(Record {
                requests: 10,
                effective: if a == "rollback_deployment" { 4 } else { 0 },
            })
        };
        let d = decide_ranked(&rules, &s, &bad, learning).unwrap();
        assert_eq!(d.workflow.steps[0].action, "rollback_deployment");
        assert!(d.passed_over.last().unwrap().contains("choice 2 of 2"));
    }

    #[test]
    fn a_verify_query_escapes_outside_values() {
        let rules = vec![ranked_rule()];
        let s = spec("HighErrorRate", &[("pod", "x\"} or vector(1) #\\")]);
        let d = decide(&rules, &s).unwrap();
        assert_eq!(
            d.verify_query.as_deref(),
            Some(r#"rate(errors{pod="x\"} or vector(1) #\\"}[5m]) > 0"#)
        );
    }

    #[test]
    fn an_alternative_must_be_one_action_or_one_workflow() {
        let mut r = ranked_rule();
        r.alternatives[0].workflow = r.workflow.clone();
        assert!(
            validate(&[r])
                .unwrap_err()
                .to_string()
                .contains("alternative 1")
        );
    }
}

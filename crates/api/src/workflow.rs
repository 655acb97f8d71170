//! A remediation workflow (K-EX-1): a DAG of steps, each one action with
//! its parameters, dependencies, timeout, retries, whether it is rolled back
//! when the workflow fails, and whether the workflow goes on if it fails.
//! [`Workflow::validate`] refuses what cannot run (duplicate or empty ids,
//! unknown actions, dependencies on unknown steps, cycles) before anything
//! does, and orders the steps.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workflow {
    pub steps: Vec<Step>,
    /// At most this many steps run at once; unbounded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// Stop starting steps once more than this share of the settled steps
    /// failed (a storm's fan-out); absent: only a failing step without
    /// `continueOnFailure` stops the workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    pub id: String,
    pub action: String,
    /// Checked against the action's schema in the catalogue; absent or
    /// null is `{}` (the CRD stores an object).
    #[serde(default = "empty_object", deserialize_with = "object_or_null")]
    #[schemars(schema_with = "any_object")]
    pub parameters: Value,
    /// Steps that must succeed before this one starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Per attempt; the executor's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Further attempts after a transient failure (API errors, conflicts,
    /// a busy target); refusals are never retried.
    #[serde(default)]
    pub retries: u32,
    /// Undo this step (in reverse order of completion) if the workflow fails.
    #[serde(default)]
    pub rollback: bool,
    /// A failure of this step does not fail the workflow; its dependants
    /// are skipped.
    #[serde(default)]
    pub continue_on_failure: bool,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn object_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => empty_object(),
        v => v,
    })
}

/// An object whose fields the action's own schema checks; the CRD keeps
/// them as given.
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    #[error("the workflow has no steps")]
    Empty,
    #[error("step ids must be non-empty and unique: {0:?}")]
    BadId(String),
    #[error("step {step}: unknown action {action:?}")]
    UnknownAction { step: String, action: String },
    #[error("step {step} depends on unknown step {missing:?}")]
    UnknownDependency { step: String, missing: String },
    #[error("the steps {0:?} depend on each other in a cycle")]
    Cycle(Vec<String>),
    #[error("{0}")]
    Limit(String),
}

impl Workflow {
    /// A workflow of one step, for a single decided action.
    pub fn single(action: &str, parameters: Value) -> Self {
        let parameters = match parameters {
            Value::Null => empty_object(),
            p => p,
        };
        Workflow {
            steps: vec![Step {
                id: action.to_string(),
                action: action.to_string(),
                parameters,
                depends_on: Vec::new(),
                timeout_seconds: None,
                retries: 0,
                rollback: false,
                continue_on_failure: false,
            }],
            ..Default::default()
        }
    }

    /// Checks the DAG and returns step indexes in an order where every step
    /// comes after its dependencies.
    pub fn validate(&self, known_actions: &[&str]) -> Result<Vec<usize>, WorkflowError> {
        if self.steps.is_empty() {
            return Err(WorkflowError::Empty);
        }
        if self.max_parallel == Some(0) {
            return Err(WorkflowError::Limit(
                "maxParallel must be at least 1".into(),
            ));
        }
        if let Some(r) = self.max_failure_ratio
            && !(0.0..1.0).contains(&r)
        {
            return Err(WorkflowError::Limit(format!(
                "maxFailureRatio {r} is outside [0, 1)"
            )));
        }
        let mut index = BTreeMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            if s.id.trim().is_empty() || index.insert(s.id.as_str(), i).is_some() {
                return Err(WorkflowError::BadId(s.id.clone()));
            }
            if !known_actions.contains(&s.action.as_str()) {
                return Err(WorkflowError::UnknownAction {
                    step: s.id.clone(),
                    action: s.action.clone(),
                });
            }
        }
        for s in &self.steps {
            if let Some(missing) = s
                .depends_on
                .iter()
                .find(|d| !index.contains_key(d.as_str()))
            {
                return Err(WorkflowError::UnknownDependency {
                    step: s.id.clone(),
                    missing: missing.clone(),
                });
            }
        }
        // Kahn's algorithm; what is never freed is on (or behind) a cycle.
        let mut waiting: Vec<usize> = self
            .steps
            .iter()
            .map(|s| s.depends_on.iter().collect::<BTreeSet<_>>().len())
            .collect();
        let mut ready: Vec<usize> = (0..self.steps.len()).filter(|&i| waiting[i] == 0).collect();
        let mut order = Vec::with_capacity(self.steps.len());
        while let Some(i) = ready.pop() {
            order.push(i);
            for (j, s) in self.steps.iter().enumerate() {
                let deps: BTreeSet<&String> = s.depends_on.iter().collect();
                if deps.contains(&self.steps[i].id) {
                    waiting[j] -= 1;
                    if waiting[j] == 0 {
                        ready.push(j);
                    }
                }
            }
        }
        if order.len() < self.steps.len() {
            let stuck = (0..self.steps.len())
                .filter(|i| !order.contains(i))
                .map(|i| self.steps[i].id.clone())
                .collect();
            return Err(WorkflowError::Cycle(stuck));
        }
        Ok(order)
    }
}

/// What a placeholder `{{key}}` in a step's parameters becomes.
pub enum Fill {
    With(String),
    /// Left as it is, for a later stage to fill.
    Keep,
    Missing,
}

/// A placeholder that has no value, and the parameter it is in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{placeholder} in {path} has no value")]
pub struct Unfilled {
    /// `name`, `selector.app`, `args[0]`.
    pub path: String,
    pub placeholder: String,
}

/// Fills the `{{key}}` placeholders of every string in `value` (recursively)
/// with what `lookup` says of each key. Rules fill the signal's values when
/// they decide; the workflow runner fills `{{steps.ID.…}}` when a step
/// starts. Other values keep their types.
pub fn fill_placeholders(
    value: &mut Value,
    lookup: &mut impl FnMut(&str) -> Fill,
) -> Result<(), Unfilled> {
    fill_at(value, "", lookup)
}

fn fill_at(
    value: &mut Value,
    path: &str,
    lookup: &mut impl FnMut(&str) -> Fill,
) -> Result<(), Unfilled> {
    let unfilled = |placeholder: &str| Unfilled {
        path: path.to_string(),
        placeholder: placeholder.to_string(),
    };
    match value {
        Value::String(s) if s.contains("{{") => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                out.push_str(&rest[..start]);
                let Some(end) = rest[start..].find("}}") else {
                    return Err(unfilled(&rest[start..]));
                };
                let placeholder = &rest[start..start + end + 2];
                match lookup(rest[start + 2..start + end].trim()) {
                    Fill::With(v) => out.push_str(&v),
                    Fill::Keep => out.push_str(placeholder),
                    Fill::Missing => {
                        let key = rest[start + 2..start + end].trim();
                        return Err(unfilled(&format!("{{{{{key}}}}}")));
                    }
                }
                rest = &rest[start + end + 2..];
            }
            out.push_str(rest);
            *s = out;
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                fill_at(v, &format!("{path}[{i}]"), lookup)?;
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                fill_at(v, &p, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KNOWN: &[&str] = &["collect_diagnostics", "rollout_restart", "notify_only"];

    fn wf(v: Value) -> Workflow {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn steps_come_after_their_dependencies() {
        let w = wf(json!({"steps": [
            {"id": "restart", "action": "rollout_restart", "dependsOn": ["diag"]},
            {"id": "diag", "action": "collect_diagnostics"},
            {"id": "tell", "action": "notify_only", "dependsOn": ["restart", "diag"]},
        ]}));
        let order: Vec<&str> = w
            .validate(KNOWN)
            .unwrap()
            .into_iter()
            .map(|i| w.steps[i].id.as_str())
            .collect();
        assert_eq!(order, ["diag", "restart", "tell"]);
    }

    #[test]
    fn fan_out_limits_must_make_sense() {
        let with = |limits: Value| {
            let mut v = json!({"steps": [{"id": "a", "action": "notify_only"}]});
            v.as_object_mut()
                .unwrap()
                .extend(limits.as_object().unwrap().clone());
            wf(v).validate(KNOWN).map(|_| ())
        };
        assert_eq!(
            with(json!({"maxParallel": 2, "maxFailureRatio": 0.3})),
            Ok(())
        );
        for bad in [
            json!({"maxParallel": 0}),
            json!({"maxFailureRatio": 1.0}),
            json!({"maxFailureRatio": -0.1}),
        ] {
            assert!(
                matches!(with(bad.clone()), Err(WorkflowError::Limit(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn cycles_unknown_actions_and_dangling_dependencies_are_refused() {
        let cycle = wf(json!({"steps": [
            {"id": "a", "action": "notify_only", "dependsOn": ["c"]},
            {"id": "b", "action": "notify_only", "dependsOn": ["a"]},
            {"id": "c", "action": "notify_only", "dependsOn": ["b"]},
            {"id": "free", "action": "notify_only"},
        ]}));
        assert_eq!(
            cycle.validate(KNOWN),
            Err(WorkflowError::Cycle(vec![
                "a".into(),
                "b".into(),
                "c".into()
            ]))
        );
        let selfish =
            wf(json!({"steps": [{"id": "a", "action": "notify_only", "dependsOn": ["a"]}]}));
        assert!(matches!(
            selfish.validate(KNOWN),
            Err(WorkflowError::Cycle(_))
        ));
        let unknown = wf(json!({"steps": [{"id": "a", "action": "reboot_cluster"}]}));
        assert!(matches!(
            unknown.validate(KNOWN),
            Err(WorkflowError::UnknownAction { .. })
        ));
        let dangling =
            wf(json!({"steps": [{"id": "a", "action": "notify_only", "dependsOn": ["z"]}]}));
        assert!(matches!(
            dangling.validate(KNOWN),
            Err(WorkflowError::UnknownDependency { .. })
        ));
        let twice = wf(json!({"steps": [
            {"id": "a", "action": "notify_only"}, {"id": "a", "action": "notify_only"}
        ]}));
        assert_eq!(twice.validate(KNOWN), Err(WorkflowError::BadId("a".into())));
        assert_eq!(
            wf(json!({"steps": []})).validate(KNOWN),
            Err(WorkflowError::Empty)
        );
        assert!(
            serde_json::from_value::<Workflow>(
                json!({"steps": [{"id": "a", "action": "x", "retry": 1}]})
            )
            .is_err()
        );
    }

    #[test]
    fn a_repeated_dependency_counts_once() {
        let w = wf(json!({"steps": [
            {"id": "a", "action": "notify_only"},
            {"id": "b", "action": "notify_only", "dependsOn": ["a", "a"]},
        ]}));
        assert_eq!(w.validate(KNOWN).unwrap().len(), 2);
    }

    #[test]
    fn placeholders_are_filled_kept_or_reported_with_their_path() {
        let mut v =
            json!({"name": "{{ a }}-x", "args": ["{{b}}"], "n": 3, "later": "{{steps.s.x}}"});
        let mut lookup = |k: &str| match k {
            "a" => Fill::With("A".into()),
            k if k.starts_with("steps.") => Fill::Keep,
            _ => Fill::Missing,
        };
        let e = fill_placeholders(&mut v, &mut lookup).unwrap_err();
        assert_eq!(
            e,
            Unfilled {
                path: "args[0]".into(),
                placeholder: "{{b}}".into()
            }
        );
        let mut v = json!({"name": "{{ a }}-x", "n": 3, "later": "{{steps.s.x}}"});
        fill_placeholders(&mut v, &mut lookup).unwrap();
        assert_eq!(v, json!({"name": "A-x", "n": 3, "later": "{{steps.s.x}}"}));
        let mut v = json!("{{a");
        assert_eq!(
            fill_placeholders(&mut v, &mut lookup)
                .unwrap_err()
                .placeholder,
            "{{a"
        );
    }
}

//! The LLM's answer, checked as the executor would take it: the
//! catalogue's types, the bounds, and the objects the actions act on.

use kubernaut_api::ObjectRef;
use kubernaut_api::workflow::{Step, Workflow};
use kubernaut_cluster::{ActionCall, Bounds};
use serde::Deserialize;
use serde_json::{Value, json};

use super::prompt::truncate;
use super::{MAX_TEXT, Offered};

/// What a valid LLM answer said besides its actions (K-AI-3).
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub root_cause: String,
    /// 0 to 1.
    pub confidence: f64,
    pub rationale: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    root_cause: String,
    confidence: f64,
    #[serde(default)]
    rationale: String,
    actions: Vec<ChosenAction>,
}

#[derive(Deserialize)]
pub struct ChosenAction {
    action: String,
    #[serde(default)]
    parameters: Value,
}

/// Checks an answer as the executor would take it: the catalogue's types,
/// the bounds, and the objects the actions act on. Returns the diagnosis
/// and the workflow (the actions in order, each after the one before), or
/// every error found.
pub fn validate(
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

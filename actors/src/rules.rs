//! The deterministic rule table of the Analysis stage: signal name → action
//! with parameter templates. `{{labels.X}}`, `{{target.name}}` and
//! `{{target.namespace}}` are filled from the request's spec.

use std::collections::BTreeMap;

use kubernaut_api::RemediationRequestSpec;
use serde::Deserialize;

#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// The signal name this rule answers (Alertmanager `alertname`).
    pub signal: String,
    pub action: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub rule: String,
    pub action: String,
    pub parameters: BTreeMap<String, String>,
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

/// Actions the executor knows. Config naming anything else is refused at start-up.
pub const KNOWN_ACTIONS: &[&str] = &["restart_pod", "notify_only"];

pub fn validate(rules: &[Rule]) -> Result<(), String> {
    for r in rules {
        if !KNOWN_ACTIONS.contains(&r.action.as_str()) {
            return Err(format!(
                "rule for {:?} names unknown action {:?} (known: {KNOWN_ACTIONS:?})",
                r.signal, r.action
            ));
        }
    }
    Ok(())
}

pub fn decide(rules: &[Rule], spec: &RemediationRequestSpec) -> Result<Decision, RuleError> {
    let rule = rules
        .iter()
        .find(|r| r.signal == spec.signal_name)
        .ok_or_else(|| RuleError::NoRule(spec.signal_name.clone()))?;
    let mut parameters = BTreeMap::new();
    for (k, template) in &rule.parameters {
        parameters.insert(
            k.clone(),
            render(template, spec).map_err(|placeholder| RuleError::MissingValue {
                rule: rule.signal.clone(),
                param: k.clone(),
                placeholder,
            })?,
        );
    }
    Ok(Decision {
        rule: rule.signal.clone(),
        action: rule.action.clone(),
        parameters,
    })
}

fn render(template: &str, spec: &RemediationRequestSpec) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            return Err(rest[start..].to_string());
        };
        let key = rest[start + 2..start + end].trim();
        let value = match key.split_once('.') {
            Some(("labels", l)) => spec.labels.get(l).cloned(),
            Some(("target", "name")) => Some(spec.target.name.clone()),
            Some(("target", "namespace")) => Some(spec.target.namespace.clone()),
            Some(("resource", "name")) => Some(spec.signal_resource.name.clone()),
            _ => None,
        }
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("{{{{{key}}}}}"))?;
        out.push_str(&value);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
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
        Rule {
            signal: "KubePodCrashLooping".into(),
            action: "restart_pod".into(),
            parameters: [
                ("pod".to_string(), "{{labels.pod}}".to_string()),
                ("ns".into(), "{{ target.namespace }}".into()),
            ]
            .into(),
        }
    }

    #[test]
    fn a_matching_rule_renders_its_parameters() {
        let d = decide(
            &[crashloop_rule()],
            &spec("KubePodCrashLooping", &[("pod", "cart-1")]),
        )
        .unwrap();
        assert_eq!(d.action, "restart_pod");
        assert_eq!(d.parameters["pod"], "cart-1");
        assert_eq!(d.parameters["ns"], "shop");
    }

    #[test]
    fn no_rule_and_missing_labels_are_errors() {
        assert_eq!(
            decide(&[crashloop_rule()], &spec("Other", &[])),
            Err(RuleError::NoRule("Other".into()))
        );
        let err = decide(&[crashloop_rule()], &spec("KubePodCrashLooping", &[])).unwrap_err();
        assert!(
            matches!(err, RuleError::MissingValue { ref placeholder, .. } if placeholder == "{{labels.pod}}"),
            "{err}"
        );
    }

    #[test]
    fn unknown_actions_are_refused_by_validation() {
        let mut r = crashloop_rule();
        assert!(validate(std::slice::from_ref(&r)).is_ok());
        r.action = "reboot_cluster".into();
        assert!(validate(&[r]).unwrap_err().contains("reboot_cluster"));
    }
}

//! The approval gate (K-AI-4): a Rego policy, evaluated in-process with
//! regorus, says whether a decided request must wait for a human. The
//! default policy is `config/approval.rego`; `approval.policyFile` replaces
//! it. The policy is parsed at start-up (a broken file stops the start
//! with its error); at evaluation, any error, or a `required` that is not
//! a boolean, means approval required: a policy that cannot answer never
//! lets a change through.

use serde_json::Value;

/// The built-in default policy.
pub const DEFAULT_POLICY: &str = include_str!("../../../config/approval.rego");
const REQUIRED: &str = "data.kubernaut.approval.required";
const REASONS: &str = "data.kubernaut.approval.reasons";

/// A parsed policy, ready to evaluate.
#[derive(Clone)]
pub struct ApprovalPolicy {
    engine: regorus::Engine,
}

impl std::fmt::Debug for ApprovalPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApprovalPolicy")
    }
}

/// What the policy said.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub required: bool,
    pub reasons: Vec<String>,
    /// The evaluation failed: approval is required for that reason.
    pub error: Option<String>,
}

impl ApprovalPolicy {
    /// Parses `rego` (named `path` in errors).
    pub fn new(path: &str, rego: &str) -> Result<Self, crate::Error> {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy(path.to_string(), rego.to_string())
            .map_err(|e| crate::Error::Policy {
                path: path.to_string(),
                message: e.to_string(),
            })?;
        // The first evaluation analyses the policy (its rule order, loop
        // hoisting) and keeps the result in the engine; done here, every
        // evaluation's copy starts from it instead of analysing again.
        // Its answer, for no input, does not matter.
        let _ = engine.eval_rule(REQUIRED.into());
        Ok(Self { engine })
    }

    /// Evaluates the policy for `input` (see `config/approval.rego`).
    pub fn evaluate(&self, input: &Value) -> Verdict {
        match self.try_evaluate(input) {
            Ok(v) => v,
            Err(e) => Verdict {
                required: true,
                reasons: vec![format!("approval policy error: {e}")],
                error: Some(e),
            },
        }
    }

    fn try_evaluate(&self, input: &Value) -> Result<Verdict, String> {
        // Evaluation mutates the engine (input, caches): each one works on
        // its own copy of the parsed policy.
        let mut engine = self.engine.clone();
        engine
            .set_input_json(&input.to_string())
            .map_err(|e| e.to_string())?;
        let required = engine
            .eval_rule(REQUIRED.into())
            .map_err(|e| e.to_string())?;
        let required = match required {
            regorus::Value::Bool(b) => b,
            other => return Err(format!("{REQUIRED} is {other}, not a boolean")),
        };
        let reasons = match engine.eval_rule(REASONS.into()) {
            Ok(v) => {
                let json = v.to_json_str().map_err(|e| e.to_string())?;
                match serde_json::from_str::<Value>(&json) {
                    Ok(Value::Array(items)) => items
                        .into_iter()
                        .map(|i| match i {
                            Value::String(s) => s,
                            other => other.to_string(),
                        })
                        .collect(),
                    _ => Vec::new(),
                }
            }
            // A policy may define `required` alone.
            Err(_) => Vec::new(),
        };
        Ok(Verdict {
            required,
            reasons,
            error: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input(env: &str, confidence: f64, kind: &str, risk: &str, storm: bool) -> Value {
        json!({
            "environment": env, "priority": "P1", "decidedBy": "llm", "confidence": confidence,
            "target": {"kind": kind, "namespace": "shop", "name": "web"},
            "actions": [{"name": "some_action", "risk": risk, "destructive": false}],
            "storm": storm, "signal": {"name": "HighErrorRate", "severity": "critical", "source": "alertmanager"},
        })
    }

    #[test]
    fn the_default_policy_asks_for_approval_where_the_spec_says() {
        let p = ApprovalPolicy::new("approval.rego", DEFAULT_POLICY).unwrap();
        let v = p.evaluate(&input("staging", 0.3, "Deployment", "low", false));
        assert_eq!((v.required, v.reasons.len()), (false, 0), "{v:?}");
        let v = p.evaluate(&input("production", 0.9, "Deployment", "medium", false));
        assert!(!v.required, "{v:?}");
        let v = p.evaluate(&input("production", 0.7, "Deployment", "low", false));
        assert!(v.required, "{v:?}");
        assert_eq!(v.reasons, ["production change with confidence below 0.8"]);
        for kind in ["Node", "StatefulSet"] {
            let v = p.evaluate(&input("development", 1.0, kind, "low", false));
            assert_eq!(v.reasons, [format!("{kind} target")]);
        }
        let v = p.evaluate(&input("development", 1.0, "Deployment", "high", false));
        assert_eq!(v.reasons, ["high-risk action some_action"]);
        let v = p.evaluate(&input("development", 1.0, "Deployment", "none", true));
        assert_eq!(v.reasons, ["storm"]);
        assert_eq!(v.error, None);
    }

    #[test]
    fn an_unlabelled_environment_is_production() {
        let p = ApprovalPolicy::new("approval.rego", DEFAULT_POLICY).unwrap();
        for env in ["unknown", "", "prod", "Production-EU"] {
            let v = p.evaluate(&input(env, 0.5, "Deployment", "low", false));
            assert_eq!(
                v.reasons,
                ["production change with confidence below 0.8"],
                "{env}"
            );
        }
    }

    #[test]
    fn the_llm_confidence_never_waives_approval_for_a_destructive_action() {
        let p = ApprovalPolicy::new("approval.rego", DEFAULT_POLICY).unwrap();
        let mut i = input("development", 1.0, "Deployment", "medium", false);
        i["actions"] = json!([
            {"name": "rollout_restart", "risk": "low", "destructive": false},
            {"name": "scale_deployment", "risk": "medium", "destructive": true},
        ]);
        let v = p.evaluate(&i);
        assert!(v.required, "{v:?}");
        assert_eq!(
            v.reasons,
            ["destructive action scale_deployment chosen by the LLM"]
        );
        // The operators' own rule may: they wrote it.
        i["decidedBy"] = json!("rules");
        assert!(!p.evaluate(&i).required);
    }

    #[test]
    fn policy_errors_mean_approval_required() {
        assert!(ApprovalPolicy::new("bad.rego", "package x\nrequired := ").is_err());
        // `required` is not a boolean.
        let p = ApprovalPolicy::new("p.rego", "package kubernaut.approval\nrequired := \"no\"")
            .unwrap();
        let v = p.evaluate(&json!({}));
        assert!(v.required && v.error.is_some(), "{v:?}");
        // `required` undefined.
        let p = ApprovalPolicy::new("p.rego", "package kubernaut.approval\nother := 1").unwrap();
        let v = p.evaluate(&json!({}));
        assert!(v.required && v.error.is_some(), "{v:?}");
        // A runtime error: division by zero.
        let p = ApprovalPolicy::new(
            "p.rego",
            "package kubernaut.approval\nimport rego.v1\nrequired := x if { x := (1 / input.zero) > 0 }",
        )
        .unwrap();
        let v = p.evaluate(&json!({"zero": 0}));
        assert!(v.required, "{v:?}");
    }
}

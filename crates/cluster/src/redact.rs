//! What of a Kubernetes object may be recorded: the one redaction applied
//! to every object state that leaves the cluster for the audit trail, the
//! status or the LLM prompt (a change's before and after, diagnostics).
//! Literal environment values, the last-applied configuration (a copy of
//! the object as first written, env values and all), a Secret's data and
//! any string under a key that names a credential are replaced; managed
//! fields are dropped as noise.

use serde_json::{Value, json};

/// What a redacted value reads.
pub const REDACTED: &str = "<redacted>";

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether a key names a credential.
pub fn sensitive_key(key: &str) -> bool {
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

/// Redacts `v` in place, at every depth.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("managedFields");
            if map.get("kind").and_then(Value::as_str) == Some("Secret") {
                for key in ["data", "stringData"] {
                    if map.contains_key(key) {
                        map.insert(key.into(), json!(REDACTED));
                    }
                }
            }
            if let Some(Value::Array(env)) = map.get_mut("env") {
                for e in env {
                    if let Some(value) = e.get_mut("value") {
                        *value = json!(REDACTED);
                    }
                }
            }
            if let Some(Value::Object(annotations)) = map.get_mut("annotations")
                && annotations.contains_key(LAST_APPLIED)
            {
                annotations.insert(LAST_APPLIED.into(), json!(REDACTED));
            }
            for (key, value) in map.iter_mut() {
                if value.is_string() && sensitive_key(key) {
                    *value = json!(REDACTED);
                } else {
                    redact(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_no_trace_and_the_rest_stays() {
        let mut v = json!({"kind": "Deployment",
            "metadata": {"name": "web", "managedFields": [{"manager": "kubectl"}],
                "annotations": {LAST_APPLIED: "{\"env\":[{\"value\":\"hunter2\"}]}", "team": "shop"}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "app",
                "args": ["--db-password", "x"],
                "env": [{"name": "DB_PASSWORD", "value": "hunter2"},
                        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}}},
            "config": {"apiToken": "t0k3n", "dbPassword": "hunter2", "timeout": "5s"}});
        redact(&mut v);
        let text = v.to_string();
        for secret in ["hunter2", "t0k3n", "managedFields"] {
            assert!(!text.contains(secret), "{secret}: {text}");
        }
        assert_eq!(v["spec"]["replicas"], 3);
        assert_eq!(v["metadata"]["annotations"]["team"], "shop");
        assert_eq!(v["config"]["timeout"], "5s");
        assert!(
            text.contains("DB_PASSWORD") && text.contains("secretKeyRef"),
            "{text}"
        );
    }

    #[test]
    fn a_secrets_data_is_redacted() {
        let mut v = json!({"kind": "Secret", "metadata": {"name": "s"},
            "data": {"user": "YWRtaW4="}, "stringData": {"pw": "x"}});
        redact(&mut v);
        assert_eq!(v["data"], REDACTED);
        assert_eq!(v["stringData"], REDACTED);
        assert_eq!(v["metadata"]["name"], "s");
    }
}

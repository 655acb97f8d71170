//! The generic webhook (K-GW-1): our own JSON format for senders that are
//! not Alertmanager, SNS or Kubernetes. The body is one signal object or an
//! array of them; the JSON Schema, generated from these types, is published
//! as `docs/generic-signal.schema.json` (`kubernaut generic-schema`).
//! Parsing is strict: unknown fields are errors, so typos do not pass
//! silently.

use std::collections::BTreeMap;

use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{ObjectRef, Signal, SignalSource, SignalStatus};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::SignalError;

/// The most signals one request may carry.
pub const MAX_BATCH: usize = 100;

/// One signal posted to `POST /api/v1/signals/generic`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Kubernaut generic signal")]
pub struct GenericSignal {
    /// The condition, e.g. `HighErrorRate`; remediation rules match on it.
    pub name: String,
    /// The sender's identity of this occurrence: sending the same id again is
    /// a duplicate; a new occurrence needs a new id.
    pub id: String,
    #[serde(default)]
    pub status: GenericStatus,
    /// `critical`, `warning` or `info`; `warning` when absent.
    #[serde(default = "default_severity")]
    pub severity: String,
    /// The Kubernetes object the signal is about.
    pub target: GenericTarget,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; the time of receipt when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    /// RFC 3339; for resolved signals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GenericStatus {
    #[default]
    Firing,
    Resolved,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenericTarget {
    /// Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or Node.
    pub kind: String,
    /// Empty or absent for Nodes.
    #[serde(default)]
    pub namespace: String,
    pub name: String,
}

fn default_severity() -> String {
    "warning".into()
}

/// The JSON Schema of [`GenericSignal`], as published in `docs/`.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(GenericSignal);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// One result per signal of the body; `Err` when the body is not a signal
/// or an array of them at all.
pub fn parse(body: &[u8], received: Timestamp) -> Result<Vec<Result<Signal, SignalError>>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => {
            if items.len() > MAX_BATCH {
                return Err(format!(
                    "{} signals in one request; at most {MAX_BATCH}",
                    items.len()
                ));
            }
            items
        }
        obj @ serde_json::Value::Object(_) => vec![obj],
        _ => return Err("the body must be a signal object or an array of them".into()),
    };
    Ok(items
        .into_iter()
        .map(|item| {
            let g: GenericSignal = serde_json::from_value(item)
                .map_err(|e| SignalError::Invalid(format!("invalid generic signal: {e}")))?;
            g.signal(received)
        })
        .collect())
}

fn time(field: &str, v: &Option<String>) -> Result<Option<Timestamp>, SignalError> {
    v.as_deref()
        .map(|s| {
            s.parse()
                .map_err(|e| SignalError::Invalid(format!("{field} {s:?} is not RFC 3339: {e}")))
        })
        .transpose()
}

impl GenericSignal {
    fn signal(&self, received: Timestamp) -> Result<Signal, SignalError> {
        if self.name.trim().is_empty() || self.id.trim().is_empty() {
            return Err(SignalError::Invalid("name and id must not be empty".into()));
        }
        let Some((kind, namespaced)) = crate::target_kind(&self.target.kind) else {
            return Err(SignalError::NoTarget(format!(
                "target kind {:?} is not one of Pod, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, Node",
                self.target.kind
            )));
        };
        if self.target.name.is_empty() || (namespaced && self.target.namespace.is_empty()) {
            return Err(SignalError::Invalid(
                "target needs a name, and a namespace unless it is a Node".into(),
            ));
        }
        let namespace = if namespaced {
            self.target.namespace.as_str()
        } else {
            ""
        };
        let starts = time("startsAt", &self.starts_at)?;
        let ends = time("endsAt", &self.ends_at)?;
        let mut labels = self.labels.clone();
        labels.insert("alertname".into(), self.name.clone());
        if !namespace.is_empty() {
            labels.insert("namespace".into(), namespace.to_string());
        }
        Ok(Signal {
            source: SignalSource::Generic,
            status: match self.status {
                GenericStatus::Firing => SignalStatus::Firing,
                GenericStatus::Resolved => SignalStatus::Resolved,
            },
            name: self.name.clone(),
            severity: self.severity.clone(),
            instance_key: self.id.clone(),
            resource: ObjectRef::new(kind, namespace, &self.target.name),
            labels,
            annotations: self.annotations.clone(),
            firing_time: starts.unwrap_or(received),
            ended_time: ends,
            received_time: received,
            raw: serde_json::to_string(self).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-22T03:00:05Z".parse().unwrap()
    }

    const ONE: &str = r#"{"name":"HighErrorRate","id":"evt-1","severity":"critical",
        "target":{"kind":"Deployment","namespace":"shop","name":"cart"},
        "labels":{"team":"payments"},"startsAt":"2026-11-22T02:59:00Z"}"#;

    #[test]
    fn one_signal_maps_to_its_target_with_defaults() {
        let r = parse(ONE.as_bytes(), now()).unwrap();
        let s = r[0].as_ref().unwrap();
        assert_eq!(s.name, "HighErrorRate");
        assert_eq!(s.source, SignalSource::Generic);
        assert_eq!(s.status, SignalStatus::Firing);
        assert_eq!(s.resource, ObjectRef::new("Deployment", "shop", "cart"));
        assert_eq!(s.labels["team"], "payments");
        assert_eq!(s.labels["alertname"], "HighErrorRate");
        assert_eq!(s.firing_time.to_string(), "2026-11-22T02:59:00Z");
        assert_eq!(s.instance_key, "evt-1");
    }

    #[test]
    fn arrays_give_one_result_per_item_and_typos_are_errors() {
        let body = format!(
            r#"[{ONE}, {{"name":"X","id":"2","target":{{"kind":"Node","name":"n1"}},"status":"resolved"}},
               {{"name":"X","id":"3","target":{{"kind":"Pod","namespace":"a","name":"p"}},"severty":"info"}}]"#
        );
        let r = parse(body.as_bytes(), now()).unwrap();
        assert_eq!(r.len(), 3);
        let node = r[1].as_ref().unwrap();
        assert_eq!(node.resource, ObjectRef::new("Node", "", "n1"));
        assert_eq!(node.status, SignalStatus::Resolved);
        assert!(matches!(&r[2], Err(SignalError::Invalid(m)) if m.contains("severty")));
    }

    #[test]
    fn bad_bodies_and_fields_are_refused_clearly() {
        assert!(parse(b"42", now()).is_err());
        assert!(parse(b"{", now()).is_err());
        let many = format!("[{}]", vec![ONE; MAX_BATCH + 1].join(","));
        assert!(
            parse(many.as_bytes(), now())
                .unwrap_err()
                .contains("at most")
        );
        let svc = ONE.replace("Deployment", "Service");
        assert!(matches!(
            &parse(svc.as_bytes(), now()).unwrap()[0],
            Err(SignalError::NoTarget(_))
        ));
        let no_ns = ONE.replace(r#""namespace":"shop","#, "");
        assert!(matches!(
            &parse(no_ns.as_bytes(), now()).unwrap()[0],
            Err(SignalError::Invalid(_))
        ));
        let bad_time = ONE.replace("2026-11-22T02:59:00Z", "yesterday");
        assert!(matches!(
            &parse(bad_time.as_bytes(), now()).unwrap()[0],
            Err(SignalError::Invalid(m)) if m.contains("startsAt")
        ));
    }

    #[test]
    fn the_schema_names_every_field() {
        let s = schema_json();
        for field in [
            "name", "id", "status", "severity", "target", "labels", "startsAt", "endsAt",
        ] {
            assert!(s.contains(&format!("\"{field}\"")), "{field}");
        }
    }
}

//! Alertmanager webhook payload, version 4 (K-GW-2), and its mapping to
//! [`Signal`]s: one per alert, with the group's common labels merged under
//! the alert's own.

use std::collections::BTreeMap;

use kubernaut_api::k8s_openapi::jiff::Timestamp;
use kubernaut_api::{ObjectRef, Signal, SignalSource, SignalStatus};

use crate::SignalError;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    pub status: String,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    #[serde(default)]
    pub fingerprint: String,
}

const NO_TARGET: &str =
    "the alert has no pod, deployment, statefulset, daemonset, job_name or node label";

/// Labels naming the resource, most specific first. These are the labels
/// kube-state-metrics and the kubernetes-mixin alerts carry.
const RESOURCE_LABELS: &[(&str, &str, bool)] = &[
    ("pod", "Pod", true),
    ("deployment", "Deployment", true),
    ("statefulset", "StatefulSet", true),
    ("daemonset", "DaemonSet", true),
    ("job_name", "Job", true),
    ("node", "Node", false),
];

pub fn parse(body: &[u8]) -> Result<Payload, serde_json::Error> {
    serde_json::from_slice(body)
}

impl Payload {
    pub fn validate(&self) -> Result<(), String> {
        if self.version != "4" {
            return Err(format!(
                "unsupported payload version {:?}; expected \"4\"",
                self.version
            ));
        }
        if self.alerts.is_empty() {
            return Err("the payload has no alerts".into());
        }
        Ok(())
    }

    /// One result per alert, in payload order.
    pub fn signals(&self, received: Timestamp) -> Vec<Result<Signal, SignalError>> {
        self.alerts
            .iter()
            .map(|a| self.signal(a, received))
            .collect()
    }

    fn signal(&self, alert: &Alert, received: Timestamp) -> Result<Signal, SignalError> {
        let mut labels = self.common_labels.clone();
        labels.extend(alert.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut annotations = self.common_annotations.clone();
        annotations.extend(
            alert
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );

        let name = labels
            .get("alertname")
            .filter(|n| !n.is_empty())
            .cloned()
            .ok_or_else(|| SignalError::Invalid("alert has no alertname label".into()))?;
        let status = match alert.status.as_str() {
            "firing" => SignalStatus::Firing,
            "resolved" => SignalStatus::Resolved,
            other => {
                return Err(SignalError::Invalid(format!(
                    "alert status {other:?} is neither \"firing\" nor \"resolved\""
                )));
            }
        };
        let firing_time: Timestamp = alert.starts_at.parse().map_err(|e| {
            SignalError::Invalid(format!(
                "startsAt {:?} is not an RFC 3339 time: {e}",
                alert.starts_at
            ))
        })?;
        let resource =
            resource_of(&labels).ok_or_else(|| SignalError::NoTarget(NO_TARGET.into()))?;
        // Alertmanager's fingerprint identifies the label set; with startsAt it
        // identifies one firing. Older senders omit it: the labels stand in.
        let identity = if alert.fingerprint.is_empty() {
            kubernaut_api::signal::sha256_hex(&format!("{labels:?}"))
        } else {
            alert.fingerprint.clone()
        };
        let raw = serde_json::to_string(alert).unwrap_or_default();
        Ok(Signal {
            source: SignalSource::Alertmanager,
            status,
            severity: labels
                .get("severity")
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            name,
            instance_key: format!("{identity}@{}", firing_time),
            resource,
            labels,
            annotations,
            firing_time,
            ended_time: (status == SignalStatus::Resolved)
                .then(|| alert.ends_at.parse().ok())
                .flatten(),
            received_time: received,
            raw,
        })
    }
}

fn resource_of(labels: &BTreeMap<String, String>) -> Option<ObjectRef> {
    let namespace = labels.get("namespace").map(String::as_str).unwrap_or("");
    RESOURCE_LABELS
        .iter()
        .find_map(|(label, kind, namespaced)| {
            let name = labels.get(*label).filter(|v| !v.is_empty())?;
            if *namespaced && namespace.is_empty() {
                return None;
            }
            let ns = if *namespaced { namespace } else { "" };
            Some(ObjectRef::new(kind, ns, name))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(alerts: &str) -> String {
        format!(
            r#"{{"version":"4","groupKey":"{{}}:{{alertname=\"KubePodCrashLooping\"}}","truncatedAlerts":0,
            "status":"firing","receiver":"kubernaut","groupLabels":{{"alertname":"KubePodCrashLooping"}},
            "commonLabels":{{"alertname":"KubePodCrashLooping","severity":"warning","namespace":"shop"}},
            "commonAnnotations":{{"summary":"crash looping"}},"externalURL":"http://am:9093","alerts":[{alerts}]}}"#
        )
    }

    const POD_ALERT: &str = r#"{"status":"firing","labels":{"alertname":"KubePodCrashLooping","pod":"cart-7d9f-abcde","container":"app","severity":"critical"},
        "annotations":{"description":"restarting"},"startsAt":"2026-11-22T03:00:00.000Z","endsAt":"0001-01-01T00:00:00Z",
        "generatorURL":"http://prom/graph","fingerprint":"a1b2c3d4e5f60718"}"#;

    fn now() -> Timestamp {
        "2026-11-22T03:00:05Z".parse().unwrap()
    }

    #[test]
    fn a_pod_alert_becomes_a_signal_with_merged_labels() {
        let p = parse(payload(POD_ALERT).as_bytes()).unwrap();
        p.validate().unwrap();
        let sigs = p.signals(now());
        let s = sigs[0].as_ref().unwrap();
        assert_eq!(s.name, "KubePodCrashLooping");
        assert_eq!(s.resource, ObjectRef::new("Pod", "shop", "cart-7d9f-abcde"));
        assert_eq!(s.status, SignalStatus::Firing);
        // The alert's own label wins over the common label.
        assert_eq!(s.severity, "critical");
        assert_eq!(s.labels["container"], "app");
        assert_eq!(s.annotations["summary"], "crash looping");
        assert_eq!(s.annotations["description"], "restarting");
        assert_eq!(s.instance_key, "a1b2c3d4e5f60718@2026-11-22T03:00:00Z");
        assert_eq!(s.firing_time.to_string(), "2026-11-22T03:00:00Z");
    }

    #[test]
    fn the_same_alert_with_a_new_starts_at_is_a_new_instance() {
        let again = POD_ALERT.replace("03:00:00.000Z", "04:00:00.000Z");
        let a = parse(payload(POD_ALERT).as_bytes())
            .unwrap()
            .signals(now())
            .remove(0)
            .unwrap();
        let b = parse(payload(&again).as_bytes())
            .unwrap()
            .signals(now())
            .remove(0)
            .unwrap();
        assert_ne!(a.instance_id(), b.instance_id());
        let c = parse(payload(POD_ALERT).as_bytes())
            .unwrap()
            .signals(now())
            .remove(0)
            .unwrap();
        assert_eq!(a.instance_id(), c.instance_id());
    }

    #[test]
    fn resource_labels_are_chosen_most_specific_first() {
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            resource_of(&l(&[("namespace", "a"), ("pod", "p"), ("node", "n1")])),
            Some(ObjectRef::new("Pod", "a", "p"))
        );
        assert_eq!(
            resource_of(&l(&[("namespace", "a"), ("deployment", "d")])),
            Some(ObjectRef::new("Deployment", "a", "d"))
        );
        assert_eq!(
            resource_of(&l(&[("node", "n1")])),
            Some(ObjectRef::new("Node", "", "n1"))
        );
        // A namespaced kind without a namespace cannot be resolved.
        assert_eq!(resource_of(&l(&[("pod", "p")])), None);
        assert_eq!(resource_of(&l(&[("instance", "10.0.0.1:9100")])), None);
    }

    #[test]
    fn bad_alerts_are_reported_per_alert() {
        let no_name = POD_ALERT.replace(r#""alertname":"KubePodCrashLooping","#, "");
        let mut p = parse(payload(&no_name).as_bytes()).unwrap();
        p.common_labels.remove("alertname");
        assert!(matches!(p.signals(now())[0], Err(SignalError::Invalid(_))));

        let bad_time = POD_ALERT.replace("2026-11-22T03:00:00.000Z", "yesterday");
        let p = parse(payload(&bad_time).as_bytes()).unwrap();
        assert!(
            matches!(&p.signals(now())[0], Err(SignalError::Invalid(m)) if m.contains("startsAt"))
        );

        let no_target = POD_ALERT.replace(r#""pod":"cart-7d9f-abcde","#, "");
        let p = parse(payload(&no_target).as_bytes()).unwrap();
        assert!(matches!(
            &p.signals(now())[0],
            Err(SignalError::NoTarget(_))
        ));
    }

    #[test]
    fn version_and_empty_batches_are_validated() {
        let p = parse(
            payload(POD_ALERT)
                .replace(r#""version":"4""#, r#""version":"3""#)
                .as_bytes(),
        )
        .unwrap();
        assert!(p.validate().unwrap_err().contains("version"));
        let p = parse(payload("").as_bytes()).unwrap();
        assert!(p.validate().unwrap_err().contains("no alerts"));
    }

    #[test]
    fn malformed_json_and_wrong_types_are_errors() {
        assert!(parse(b"{not json").is_err());
        assert!(parse(br#"{"version":4,"status":"firing","alerts":[]}"#).is_err());
        assert!(parse(b"").is_err());
    }
}

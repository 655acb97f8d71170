//! What the cluster and the audit trail say about a request's target, as
//! the prompt and the answer's checks use it. Gathering it is the actors'
//! (I/O); reading the evidence is pure.

use kubernaut_api::ObjectRef;
use serde_json::{Value, json};

use super::{MAX_EVENTS, MAX_PODS};

/// One action's record for this alert and target kind (K-AI-2).
#[derive(Clone, Debug, PartialEq)]
pub struct Past {
    pub action: String,
    /// Recent finished requests that ran it with a known outcome.
    pub requests: i64,
    /// Of those, the ones verified Effective (K-AU-2).
    pub effective: i64,
}

impl Past {
    /// The share of requests that worked, 0 to 1.
    pub fn effectiveness(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.effective as f64 / self.requests as f64
        }
    }
}

/// What the cluster and the audit trail say about the request's target.
#[derive(Debug, Default)]
pub struct Facts {
    /// The objects actions may act on: the signal's resource, its owner
    /// chain up to the target, and the target's pods.
    pub objects: Vec<ObjectRef>,
    pub containers: Vec<String>,
    pub pods: Vec<Value>,
    pub events: Vec<Value>,
    pub history: Vec<Past>,
    /// What could not be read.
    pub gaps: Vec<String>,
}

impl Facts {
    /// Takes what collect_diagnostics recorded of the target: its pods
    /// (and so the objects and containers actions may name) and events.
    pub fn read_evidence(&mut self, target: &ObjectRef, evidence: &Value) {
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

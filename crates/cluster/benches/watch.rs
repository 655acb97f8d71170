//! What a request watch event costs this process to parse, apart from any
//! I/O: one watch line of a Completed notify-only request (its status as
//! the controller writes it, its managed fields, a 1 500-byte alert as
//! received), parsed through kube's `DeserializeGuard` and through
//! [`Guarded`], each timed over N runs on one thread. Prints the mean per
//! event; asserts nothing.
//!
//! `cargo bench -p kubernaut-cluster --bench watch -- 20000`

use std::hint::black_box;
use std::time::Instant;

use kube::core::{DeserializeGuard, WatchEvent};
use kubernaut_api::RemediationRequest;
use kubernaut_cluster::Guarded;
use serde_json::json;

fn time(what: &str, n: u32, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    let per = start.elapsed().as_secs_f64() / f64::from(n) * 1e6;
    println!("  {what:<44} {per:>9.1} µs per event");
    per
}

fn main() {
    let n: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let at = "2026-12-03T15:07:00Z";
    let ns = "bench-43d02f6f6e12";
    let condition = |t: &str, reason: &str| {
        json!({"type": t, "status": "True", "reason": reason,
               "message": format!("{t}: {reason}"), "lastTransitionTime": at})
    };
    let history = |phase: &str, reason: &str, message: &str| json!({"phase": phase, "reason": reason, "message": message, "time": at});
    let step = json!({"id": "notify_only", "action": "notify_only", "parameters": {},
                      "dependsOn": [], "retries": 0, "continueOnFailure": false,
                      "rollback": false});
    let object = json!({
        "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
        "metadata": {
            "name": "deployment-svc-0-3f2a9c", "namespace": ns,
            "uid": "0b7c1d2e-3f4a-4b5c-8d6e-7f8091a2b3c4", "resourceVersion": "123456",
            "generation": 1, "creationTimestamp": at,
            "labels": {"kubernaut.io/fingerprint": "3f2a9c0d1e2f3a4b5c6d",
                       "kubernaut.io/sequence": "1",
                       "app.kubernetes.io/managed-by": "kubernaut"},
            "managedFields": [
                {"manager": "kubernaut-gateway", "operation": "Update",
                 "apiVersion": "kubernaut.io/v1alpha1", "time": at, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:kubernaut.io/fingerprint": {},
                              "f:kubernaut.io/sequence": {}}}, "f:spec": {".": {}, "f:fingerprint": {},
                              "f:signalName": {}, "f:severity": {}, "f:target": {}}}},
                {"manager": "kubernaut-controller", "operation": "Apply",
                 "apiVersion": "kubernaut.io/v1alpha1", "time": at, "fieldsType": "FieldsV1",
                 "subresource": "status",
                 "fieldsV1": {"f:status": {"f:phase": {}, "f:owner": {}, "f:conditions": {},
                              "f:phaseHistory": {}, "f:analysis": {}, "f:execution": {}}}}
            ]
        },
        "spec": {
            "fingerprint": "3f2a9c0d1e2f3a4b5c6d7e8f", "signalName": "BenchNotify",
            "severity": "warning", "source": "alertmanager", "instanceId": "i-0",
            "target": {"kind": "Deployment", "namespace": ns, "name": "svc-0"},
            "signalResource": {"kind": "Pod", "namespace": ns, "name": "svc-0-abc-xyz"},
            "firingTime": at, "receivedTime": at,
            "originalPayload": "x".repeat(1500)
        },
        "status": {
            "phase": "Completed", "owner": "kubernaut-0", "message": "nothing to verify",
            "deadline": at, "completionTime": at, "retentionExpiryTime": at,
            "processing": {"environment": "staging", "priority": "P2",
                           "scope": format!("label on Namespace/{ns}")},
            "analysis": {"action": "notify_only", "decidedBy": "rules",
                         "reason": "no LLM is configured", "rule": "BenchNotify",
                         "workflow": {"steps": [step]}},
            "approval": {"required": false},
            "conditions": [condition("Processed", "Enriched"), condition("Analyzed", "RuleMatched"),
                           condition("Executed", "Succeeded"), condition("Verified", "NothingChanged")],
            "execution": {"action": "notify_only", "startedAt": at, "finishedAt": at,
                          "result": "Succeeded", "message": "1 steps succeeded",
                          "target": {"kind": "Deployment", "namespace": ns, "name": "svc-0"},
                          "steps": [{"id": "notify_only", "action": "notify_only", "attempts": 1,
                                     "phase": "Succeeded", "message": "nothing to change",
                                     "startedAt": at, "finishedAt": at}]},
            "phaseHistory": [
                history("Processing", "Started", ""),
                history("Analyzing", "Enriched", "environment staging, priority P2"),
                history("Executing", "ActionChosen", "rule BenchNotify chose notify_only"),
                history("Verifying", "ActionFinished", "1 steps succeeded"),
                history("Completed", "NothingChanged", "nothing to verify")
            ]
        }
    });
    // As the API server writes a watch line: the tag first.
    let line = format!(r#"{{"type":"MODIFIED","object":{object}}}"#);
    let parsed: WatchEvent<Guarded> = serde_json::from_str(&line).expect("the line parses");
    if let WatchEvent::Modified(Guarded(Err(e))) = &parsed {
        panic!("the sample must be a valid request: {}", e.error);
    }
    println!(
        "watch event parse, N = {n}, one thread ({} bytes per line)",
        line.len()
    );
    let kube = time("kube's DeserializeGuard", n, || {
        let ev: WatchEvent<DeserializeGuard<RemediationRequest>> =
            serde_json::from_str(black_box(&line)).unwrap();
        black_box(ev);
    });
    let ours = time("Guarded (the request watch's)", n, || {
        let ev: WatchEvent<Guarded> = serde_json::from_str(black_box(&line)).unwrap();
        black_box(ev);
    });
    let plain = time("the type alone, no guard", n, || {
        let ev: WatchEvent<RemediationRequest> = serde_json::from_str(black_box(&line)).unwrap();
        black_box(ev);
    });
    println!(
        "  Guarded at {:.2} x DeserializeGuard's cost; the type alone at {:.2} x",
        ours / kube,
        plain / kube
    );
}

//! The analysis' pure half: what is offered, the schemas, the answer's
//! checks and the prompt's bound.

use super::answer::*;
use super::offer::*;
use super::prompt::*;
use super::*;
use kubernaut_api::workflow::Workflow;
use kubernaut_api::{ObjectRef, RemediationRequestSpec};
use kubernaut_cluster::{Bounds, catalogue};
use serde_json::{Value, json};

fn objects() -> Vec<ObjectRef> {
    vec![
        ObjectRef::new("Pod", "shop", "web-7d4-abc"),
        ObjectRef::new("ReplicaSet", "shop", "web-7d4"),
        ObjectRef::new("Deployment", "shop", "web"),
    ]
}

fn offered() -> Vec<Offered> {
    offer(&objects(), &["app".to_string()], &Bounds::default())
}

fn names(offered: &[Offered]) -> Vec<&str> {
    offered.iter().map(|o| o.info.name).collect()
}

#[test]
fn only_actions_on_the_requests_objects_are_offered_with_their_names_pinned() {
    let offered = offered();
    let names = names(&offered);
    for a in [
        "scale_deployment",
        "rollout_restart",
        "rollback_deployment",
        "restart_pod",
        "increase_resources",
        "collect_diagnostics",
        "notify_only",
    ] {
        assert!(names.contains(&a), "{a} missing from {names:?}");
    }
    for a in [
        "drain_node",
        "scale_statefulset",
        "run_job",
        "expand_pvc",
        "delete_job",
    ] {
        assert!(!names.contains(&a), "{a} offered: {names:?}");
    }
    let restart = &offered
        .iter()
        .find(|o| o.info.name == "rollout_restart")
        .unwrap()
        .schema;
    assert_eq!(restart["properties"]["kind"]["enum"], json!(["Deployment"]));
    assert_eq!(restart["properties"]["name"]["enum"], json!(["web"]));
    assert_eq!(restart["properties"]["namespace"]["enum"], json!(["shop"]));
    let text = restart.to_string();
    assert!(
        !text.contains("$ref") && !text.contains("$schema"),
        "{text}"
    );
    let resources = &offered
        .iter()
        .find(|o| o.info.name == "increase_resources")
        .unwrap()
        .schema;
    assert_eq!(resources["properties"]["container"]["enum"], json!(["app"]));
    let scale = &offered
        .iter()
        .find(|o| o.info.name == "scale_deployment")
        .unwrap()
        .schema;
    let replicas = scale["properties"]["replicas"]["enum"].as_array().unwrap();
    assert_eq!(replicas.len() as i32, Bounds::default().max_replicas + 1);
    assert_eq!(
        resources["properties"]["factor"]["enum"],
        json!([1.1, 1.25, 1.5, 2.0])
    );
    let notify = &offered
        .iter()
        .find(|o| o.info.name == "notify_only")
        .unwrap()
        .schema;
    assert_eq!(notify["properties"]["message"]["pattern"], FREE_TEXT);
}

fn answer(actions: Value) -> Value {
    json!({"rootCause": "bad rollout", "confidence": 0.9, "rationale": "errors began with it", "actions": actions})
}

fn check(output: &Value) -> Result<(Verdict, Workflow), Vec<String>> {
    validate(
        output,
        &offered(),
        &objects(),
        &Bounds::default(),
        "shop/rr-1",
        3,
    )
}

#[test]
fn a_valid_answer_becomes_a_workflow_in_order() {
    let (verdict, wf) = check(&answer(json!([
        {"action": "collect_diagnostics", "parameters": {"kind": "Deployment", "namespace": "shop", "name": "web"}},
        {"action": "rollout_restart", "parameters": {"kind": "Deployment", "namespace": "shop", "name": "web"}},
    ])))
    .unwrap();
    assert_eq!(verdict.confidence, 0.9);
    assert_eq!(verdict.root_cause, "bad rollout");
    let ids: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["s1-collect-diagnostics", "s2-rollout-restart"]);
    assert_eq!(wf.steps[1].depends_on, ["s1-collect-diagnostics"]);
    let known: Vec<&str> = catalogue().iter().map(|a| a.name).collect();
    wf.validate(&known).unwrap();
}

#[test]
fn wrong_actions_and_parameters_are_caught_each_with_its_reason() {
    let errors = check(&answer(json!([
        {"action": "drain_node", "parameters": {"name": "n1"}},
        {"action": "scale_deployment", "parameters": {"namespace": "shop", "name": "web", "replicas": 5000}},
        {"action": "rollout_restart", "parameters": {"kind": "Deployment", "namespace": "shop", "name": "api"}},
        {"action": "restart_pod", "parameters": {"namespace": "shop", "name": "web-7d4-abc", "force": true}},
    ])))
    .unwrap_err();
    let all = errors.join("\n");
    assert!(
        all.contains("actions[0] (drain_node): not an allowed action"),
        "{all}"
    );
    assert!(
        all.contains("actions[1] (scale_deployment)") && all.contains("5000"),
        "{all}"
    );
    assert!(
        all.contains("Deployment/shop/api is not an object of this request"),
        "{all}"
    );
    assert!(
        all.contains("actions[3] (restart_pod)") && all.contains("force"),
        "{all}"
    );
    assert!(all.contains("4 actions chosen; at most 3"), "{all}");

    let errors = check(&json!({"rootCause": "x", "confidence": 7, "rationale": "", "actions": []}))
        .unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("confidence 7")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("no action")), "{errors:?}");
    let errors = check(&json!({"answer": "restart it"})).unwrap_err();
    assert!(errors[0].contains("required shape"), "{errors:?}");
}

#[test]
fn the_output_schema_offers_each_action_with_its_parameters() {
    let schema = output_schema(&offered(), 2);
    let choices = schema["properties"]["actions"]["items"]["anyOf"]
        .as_array()
        .unwrap();
    assert_eq!(choices.len(), offered().len());
    assert_eq!(schema["properties"]["actions"]["maxItems"], 2);
    assert!(
        choices
            .iter()
            .any(|c| c["properties"]["action"]["const"] == "rollout_restart")
    );
    assert_eq!(
        schema["properties"]["confidence"]["enum"]
            .as_array()
            .unwrap()
            .len(),
        11
    );
}

#[test]
fn prompts_drop_credentials_and_stay_within_their_bound() {
    let mut spec: RemediationRequestSpec = serde_json::from_value(json!({
        "fingerprint": "f", "signalName": "HighErrorRate", "severity": "critical",
        "source": "alertmanager", "instanceId": "i",
        "target": {"kind": "Deployment", "namespace": "shop", "name": "web"},
        "signalResource": {"kind": "Deployment", "namespace": "shop", "name": "web"},
        "firingTime": "2026-11-22T10:00:00Z", "receivedTime": "2026-11-22T10:00:01Z",
    }))
    .unwrap();
    spec.labels.insert("db_password".into(), "hunter2".into());
    spec.annotations
        .insert("API-Token".into(), "tok-123".into());
    spec.annotations
        .insert("summary".into(), "errors at 40%".into());
    let facts = Facts {
        events: (0..200)
            .map(|i| json!({"type": "Warning", "reason": "BackOff", "message": format!("restart {i} of a failing container")}))
            .collect(),
        ..Default::default()
    };
    let doc = incident(&spec, None, &facts, &offered());
    let text = bounded(doc.clone(), 3000);
    assert!(
        !text.contains("hunter2") && !text.contains("tok-123"),
        "{text}"
    );
    assert!(text.contains("errors at 40%"), "{text}");
    assert!(text.chars().count() <= 3000);
    let back: Value = serde_json::from_str(&text).expect("still JSON after cutting events");
    let kept = back["events"].as_array().unwrap().len();
    assert!(kept > 0 && kept < 200, "{kept} events kept");
    assert_eq!(bounded(doc, 100).chars().count(), 100);
}

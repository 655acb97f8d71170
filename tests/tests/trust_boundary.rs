//! Issue 17: requests others can create act only on what they own. A
//! request created by hand in one managed namespace, naming a Deployment
//! of another, changes nothing there.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::PostParams;
use kubernaut_api::{Phase, RemediationRequest};
use kubernaut_e2e::{
    Stack, api_target, control_plane, managed_namespace, now_rfc3339, phase_history,
    terminal_request, unique,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_another_namespaces_target_is_skipped_and_changes_nothing()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let victim = api_target(&admin, "trust-victim").await?;
    let home = managed_namespace(&admin, "trust-home", "staging").await?;
    let rules = json!([{ "signal": "Foreign", "action": "scale_deployment",
        "parameters": {"namespace": "{{target.namespace}}", "name": "{{target.name}}", "replicas": 0} }]);
    let running = control_plane(stack, &home, &[], rules).await?;

    let name = unique("foreign");
    let now = now_rfc3339();
    let rr: RemediationRequest = serde_json::from_value(json!({
        "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
        "metadata": {"name": name, "namespace": home},
        "spec": {
            "fingerprint": unique("fp"), "signalName": "Foreign", "severity": "critical",
            "source": "generic", "instanceId": unique("instance"),
            "target": victim, "signalResource": victim,
            "firingTime": now, "receivedTime": now, "originalPayload": "{}",
        },
    }))?;
    Api::<RemediationRequest>::namespaced(admin.clone(), &home)
        .create(&PostParams::default(), &rr)
        .await?;

    let rr = terminal_request(&admin, &home, &name, TIMEOUT).await?;
    assert_eq!(rr.phase(), Phase::Skipped, "{:?}", phase_history(&rr));
    let (_, reason) = phase_history(&rr).pop().unwrap_or_default();
    assert_eq!(reason, "OutOfScope");
    let message = rr
        .status
        .as_ref()
        .and_then(|s| s.phase_history.last())
        .map(|t| t.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(&format!("namespace \"{}\"", victim.namespace)),
        "{message}"
    );
    let replicas = Api::<Deployment>::namespaced(admin.clone(), &victim.namespace)
        .get(&victim.name)
        .await?
        .spec
        .and_then(|s| s.replicas);
    assert_eq!(replicas, Some(1));
    running.shutdown().await
}

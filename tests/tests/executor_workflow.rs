//! Workflows (K-EX-1) against the real API server: independent steps run,
//! dependants wait for them, a failing step stops the workflow and the
//! completed steps marked for rollback are undone in reverse order; an
//! invalid workflow changes nothing; a dependant uses its dependency's
//! result.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::PostParams;
use kubernaut_actors::workflow;
use kubernaut_api::StepPhase;
use kubernaut_api::workflow::Workflow;
use kubernaut_e2e::{
    Stack, controller_cluster, deployment, deployment_replicas, exec_settings, lock_is_free,
    managed_namespace, managed_node, unique,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_rolls_back_the_completed_ones_in_reverse() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "wf-rollback", "staging").await?;
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &deployment("cart", 1))
        .await?;
    let node = managed_node(&admin, "wf-node").await?;
    let nodes = Api::<Node>::all(admin.clone());

    let wf: Workflow = serde_json::from_value(json!({"steps": [
        {"id": "scale", "action": "scale_deployment", "rollback": true,
         "parameters": {"namespace": ns, "name": "cart", "replicas": 3}},
        {"id": "cordon", "action": "cordon_node", "rollback": true,
         "parameters": {"name": node}},
        {"id": "broken", "action": "scale_deployment", "dependsOn": ["scale", "cordon"],
         "parameters": {"namespace": ns, "name": "does-not-exist", "replicas": 2}},
        {"id": "after", "action": "notify_only", "dependsOn": ["broken"]},
    ]}))?;
    let report = workflow::run(
        &cluster,
        &wf,
        &exec_settings(&unique("rr-wf")),
        Duration::from_secs(20),
    )
    .await?;

    assert!(!report.succeeded);
    let state = |id: &str| report.steps.iter().find(|s| s.id == id).map(|s| s.state);
    assert_eq!(state("scale"), Some(StepPhase::RolledBack));
    assert_eq!(state("cordon"), Some(StepPhase::RolledBack));
    assert_eq!(state("broken"), Some(StepPhase::Failed));
    assert_eq!(state("after"), Some(StepPhase::Skipped));
    // The dependant started only after both of its dependencies finished.
    assert_eq!(
        report.completion_order.last().map(String::as_str),
        Some("broken")
    );
    // Undone in reverse order of completion.
    let done: Vec<&String> = report
        .completion_order
        .iter()
        .filter(|id| *id == "scale" || *id == "cordon")
        .collect();
    let undone: Vec<&String> = report.rollback_order.iter().collect();
    assert_eq!(undone, done.into_iter().rev().collect::<Vec<_>>());
    // Undone for real.
    assert_eq!(deployment_replicas(&admin, &ns, "cart").await?, 1);
    let cordoned = nodes.get(&node).await?.spec.and_then(|s| s.unschedulable);
    assert_ne!(cordoned, Some(true));
    let scale = report.steps.iter().find(|s| s.id == "scale").unwrap();
    assert_eq!(scale.rollback[0].changes[0].after["spec"]["replicas"], 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_workflow_runs_every_step_and_keeps_its_changes() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "wf-ok", "staging").await?;
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &deployment("api", 1))
        .await?;
    let wf: Workflow = serde_json::from_value(json!({"steps": [
        {"id": "tell", "action": "notify_only", "parameters": {"message": "scaling api"}},
        {"id": "scale", "action": "scale_deployment", "rollback": true, "dependsOn": ["tell"],
         "parameters": {"namespace": ns, "name": "api", "replicas": 2}},
        {"id": "restart", "action": "rollout_restart", "dependsOn": ["scale"],
         "parameters": {"kind": "Deployment", "namespace": ns, "name": "api"}},
    ]}))?;
    let report = workflow::run(
        &cluster,
        &wf,
        &exec_settings(&unique("rr-wf")),
        Duration::from_secs(20),
    )
    .await?;
    assert!(report.succeeded, "{report:?}");
    assert_eq!(report.completion_order, ["tell", "scale", "restart"]);
    assert!(report.steps.iter().all(|s| s.state == StepPhase::Succeeded));
    assert_eq!(
        deployment_replicas(&admin, &ns, "api").await?,
        2,
        "kept: nothing failed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_workflow_changes_nothing() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "wf-invalid", "staging").await?;
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &deployment("api", 1))
        .await?;
    let scale = json!({"id": "scale", "action": "scale_deployment",
        "parameters": {"namespace": ns, "name": "api", "replicas": 3}});
    for (what, bad) in [
        (
            "an unknown action",
            json!({"id": "x", "action": "reboot_cluster"}),
        ),
        (
            "bad parameters",
            json!({"id": "x", "action": "cordon_node", "parameters": {"node": "n"}}),
        ),
        (
            "a cycle",
            json!({"id": "x", "action": "notify_only", "dependsOn": ["x"]}),
        ),
        (
            "the result of a step it does not depend on",
            json!({"id": "x", "action": "collect_diagnostics", "parameters":
                {"kind": "Deployment", "namespace": ns, "name": "{{steps.scale.target.name}}"}}),
        ),
    ] {
        let wf: Workflow = serde_json::from_value(json!({"steps": [scale.clone(), bad]}))?;
        let r = workflow::run(
            &cluster,
            &wf,
            &exec_settings(&unique("rr-wf")),
            Duration::from_secs(20),
        )
        .await;
        assert!(r.is_err(), "{what}: {r:?}");
        assert_eq!(
            deployment_replicas(&admin, &ns, "api").await?,
            1,
            "{what}: nothing ran"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependant_uses_the_result_of_the_step_it_depends_on() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "wf-results", "staging").await?;
    // The Job's name is made by run_job; the diagnostics step learns it
    // from the step it depends on.
    let wf: Workflow = serde_json::from_value(json!({"steps": [
        {"id": "flush", "action": "run_job",
         "parameters": {"namespace": ns, "template": "flush-cache"}},
        {"id": "look", "action": "collect_diagnostics", "dependsOn": ["flush"],
         "parameters": {"kind": "Job", "namespace": "{{steps.flush.target.namespace}}",
                        "name": "{{steps.flush.target.name}}"}},
    ]}))?;
    let report = workflow::run(
        &cluster,
        &wf,
        &exec_settings("rr-results"),
        Duration::from_secs(30),
    )
    .await?;
    assert!(report.succeeded, "{report:#?}");
    let job = report.steps[0]
        .outcome
        .as_ref()
        .expect("run_job's outcome")
        .changes[0]
        .object
        .name
        .clone();
    assert!(job.starts_with("kubernaut-flush-cache-"), "{job}");
    let evidence = &report.steps[1]
        .outcome
        .as_ref()
        .expect("diagnostics")
        .evidence;
    assert_eq!(evidence["object"]["metadata"]["name"], job.as_str());
    assert_eq!(evidence["object"]["kind"], "Job");

    Ok(())
}

/// A step claims its target's lock while its intent is written; when the
/// supervisor never records the intent, the step does not act and gives
/// the lock back at once, so the target is not locked until it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_intent_is_not_recorded_gives_its_lock_back() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "wf-unrecorded", "staging").await?;
    // The supervisor went away: the intent's acknowledgement is dropped.
    let run = scale_api_to_2(&admin, &cluster, &ns, std::sync::Arc::new(|_| {})).await?;
    let report = run.run().await;
    assert_eq!(report.state, StepPhase::Failed);
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("did not record the intent")),
        "{report:?}"
    );
    assert_eq!(
        deployment_replicas(&admin, &ns, "api").await?,
        1,
        "not acted"
    );
    let lock =
        kubernaut_cluster::lock_name(&kubernaut_api::ObjectRef::new("Deployment", &ns, "api"));
    assert!(
        lock_is_free(&cluster, &lock).await?,
        "the lock claimed ahead was given back"
    );
    Ok(())
}

/// A step that reads its target ahead makes its dry run while its intent
/// is written, but changes the target only once the supervisor recorded
/// the intent (K-RR-6): here the record takes half a second, and the
/// target is unchanged until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_changes_its_target_only_after_its_intent_is_recorded() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "wf-recorded-late", "staging").await?;
    // What the target held when the intent was recorded.
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let seen_tx = std::sync::Mutex::new(Some(seen_tx));
    let sink: workflow::Sink = {
        let (admin, ns) = (admin.clone(), ns.clone());
        std::sync::Arc::new(move |out| {
            if let workflow::Out::Step(workflow::StepEvent::Starting { ack, .. }) = out {
                let (admin, ns) = (admin.clone(), ns.clone());
                let seen = seen_tx.lock().unwrap().take();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let replicas = deployment_replicas(&admin, &ns, "api").await;
                    if let Some(seen) = seen {
                        let _ = seen.send(replicas.map_err(|e| e.to_string()));
                    }
                    let _ = ack.send(());
                });
            }
        })
    };
    let run = scale_api_to_2(&admin, &cluster, &ns, sink).await?;
    let report = run.run().await;
    assert_eq!(report.state, StepPhase::Succeeded, "{report:?}");
    assert_eq!(report.attempts, 1);
    let at_record = seen_rx.await?.map_err(anyhow::Error::msg)?;
    assert_eq!(at_record, 1, "unchanged until the intent was recorded");
    assert_eq!(deployment_replicas(&admin, &ns, "api").await?, 2);
    Ok(())
}

/// A step scaling a new Deployment `api` in `ns` from 1 to 2 replicas,
/// telling `sink` what a supervisor would be told.
async fn scale_api_to_2(
    admin: &kube::Client,
    cluster: &kubernaut_cluster::Cluster,
    ns: &str,
    sink: workflow::Sink,
) -> anyhow::Result<workflow::steps::StepRun> {
    Api::<Deployment>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &deployment("api", 1))
        .await?;
    let parameters = json!({"namespace": ns, "name": "api", "replicas": 2});
    Ok(workflow::steps::StepRun {
        cluster: std::sync::Arc::new(cluster.clone()),
        settings: exec_settings(&format!("rr-{ns}")),
        sink,
        step: serde_json::from_value(json!({
            "id": "scale", "action": "scale_deployment", "parameters": parameters
        }))?,
        call: kubernaut_cluster::ActionCall::parse("scale_deployment", parameters.clone()),
        prior: None,
        timeout: Duration::from_secs(30),
        announced: std::sync::Arc::new(|_| {}),
    })
}

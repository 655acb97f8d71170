//! The supervision tree's lifecycle on the real stack (K-RR-2 … K-RR-4):
//! every stage's deadline, enforced by timers and recorded as TimedOut with
//! an escalation; stage and step actors that panic are restarted and the
//! request still completes; a spent restart budget fails the request with
//! the reason.

use std::time::Duration;

use anyhow::Context as _;
use kube::Api;
use kubernaut_api::{Phase, RemediationRequest, StepPhase};
use kubernaut_e2e::{
    Stack, api_target, control_plane, controller_cluster, create_request, deployment_replicas,
    escalations, eventually, metric, phases, terminal_request,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

/// One rule: scale the target to 2 replicas, retrying a busy target for long.
fn rules() -> serde_json::Value {
    json!([{"signal": "TreeTest", "workflow": [{
        "id": "scale", "action": "scale_deployment", "retries": 30,
        "parameters": {"namespace": "{{target.namespace}}", "name": "{{target.name}}", "replicas": 2}
    }]}])
}

fn last_reason(rr: &RemediationRequest) -> String {
    rr.status
        .as_ref()
        .and_then(|s| s.phase_history.last())
        .map(|t| t.reason.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_times_out_at_its_deadline_and_escalates() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    use Phase::*;
    for (key, path) in [
        ("PROCESSING_SECONDS", vec![Processing]),
        ("ANALYZING_SECONDS", vec![Processing, Analyzing]),
        (
            "VERIFYING_SECONDS",
            vec![Processing, Analyzing, Executing, Verifying],
        ),
    ] {
        let stage = *path.last().context("a stage")?;
        let t = api_target(&admin, "tree-timeout").await?;
        let setting = format!("CONTROLLER__TIMEOUTS__{key}");
        let running = control_plane(stack, &t.namespace, &[(&setting, "0")], rules()).await?;
        let name = create_request(&admin, "TreeTest", &t, false).await?;
        let rr = terminal_request(&admin, &t.namespace, &name, TIMEOUT).await?;
        let mut want = path.clone();
        want.push(TimedOut);
        assert_eq!(phases(&rr), want, "{key}");
        assert_eq!(last_reason(&rr), format!("{stage}Timeout"));
        let status = rr.status.clone().context("status")?;
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Escalated" && c.status == "True"),
            "{:?}",
            status.conditions
        );
        assert!(status.deadline.is_some(), "the request's own deadline");
        assert!(status.phase_deadline.is_none(), "a terminal phase has none");
        assert_eq!(escalations(stack, &rr).await?, [format!("{stage}Timeout")]);
        running.shutdown().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executing_deadline_stops_the_running_step() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = api_target(&admin, "tree-exec-deadline").await?;
    // Another holder has the target: the step retries Busy until stopped.
    let cluster = controller_cluster(stack).await?;
    let held = cluster
        .claim_lease(
            &kubernaut_cluster::lock_name(&t),
            "rr-other",
            Duration::from_secs(60),
        )
        .await?
        .context("the lock is free")?;
    let running = control_plane(
        stack,
        &t.namespace,
        &[("CONTROLLER__TIMEOUTS__EXECUTING_SECONDS", "3")],
        rules(),
    )
    .await?;
    let name = create_request(&admin, "TreeTest", &t, false).await?;
    let rr = terminal_request(&admin, &t.namespace, &name, TIMEOUT).await?;
    assert_eq!(rr.phase(), Phase::TimedOut);
    assert_eq!(last_reason(&rr), "ExecutingTimeout");
    let status = rr.status.clone().context("status")?;
    let step = &status.execution.context("execution")?.steps[0];
    assert_eq!(step.phase, StepPhase::Failed, "{step:?}");
    assert!(step.message.starts_with("interrupted"), "{}", step.message);
    let entered = status
        .phase_history
        .iter()
        .find(|t| t.phase == Phase::Executing)
        .context("Executing")?
        .time
        .0;
    let ended = status.phase_history.last().context("TimedOut")?.time.0;
    assert!(
        ended.duration_since(entered).as_secs_f64() >= 3.0,
        "not before the deadline"
    );

    // Released now, the lock would let a surviving step act: none does.
    held.release().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(deployment_replicas(&admin, &t.namespace, "api").await?, 1);
    running.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_waiting_for_approval_fails_when_its_approval_expires() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = api_target(&admin, "tree-approval").await?;
    let running = control_plane(
        stack,
        &t.namespace,
        &[("CONTROLLER__TIMEOUTS__APPROVAL_SECONDS", "2")],
        rules(),
    )
    .await?;
    let name = create_request(&admin, "TreeTest", &t, true).await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &t.namespace);
    let waiting = eventually("AwaitingApproval", TIMEOUT, || async {
        let rr = api.get(&name).await?;
        Ok((rr.phase() == Phase::AwaitingApproval).then_some(rr))
    })
    .await?;
    let deadline = waiting
        .status
        .as_ref()
        .and_then(|s| s.phase_deadline.clone())
        .context("the approval deadline is in the status")?;
    let rr = terminal_request(&admin, &t.namespace, &name, TIMEOUT).await?;
    assert_eq!(
        phases(&rr),
        [
            Phase::Processing,
            Phase::Analyzing,
            Phase::AwaitingApproval,
            Phase::Failed
        ]
    );
    assert_eq!(last_reason(&rr), "ApprovalExpired");
    let approval = rr.status.as_ref().and_then(|s| s.approval.clone());
    let approval = approval.context("the approval verdict is in the status")?;
    assert!(
        approval.required && approval.reasons == ["storm"],
        "{approval:?}"
    );
    let expires = approval.expires_at.context("expiresAt")?.0;
    let apart = expires.duration_since(deadline.0).abs();
    assert!(
        apart < kubernaut_api::k8s_openapi::jiff::SignedDuration::from_secs(1),
        "expiresAt {expires} is not the phase deadline {}",
        deadline.0
    );
    let ended = rr
        .status
        .as_ref()
        .and_then(|s| s.phase_history.last())
        .context("Failed")?
        .time
        .0;
    assert!(ended >= deadline.0, "{ended} is before {}", deadline.0);
    assert_eq!(deployment_replicas(&admin, &t.namespace, "api").await?, 1);
    running.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_actors_are_restarted_and_the_request_completes() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    for (kind, times) in [("processing", 2), ("workflow", 1), ("step", 2)] {
        let t = api_target(&admin, &format!("tree-panic-{kind}")).await?;
        let running = control_plane(
            stack,
            &t.namespace,
            &[
                ("CONTROLLER__FAULT_INJECTION__PANIC_IN", kind),
                ("CONTROLLER__FAULT_INJECTION__TIMES", &times.to_string()),
                ("CONTROLLER__RESTART__FIRST_BACKOFF_MILLIS", "50"),
            ],
            rules(),
        )
        .await?;
        let name = create_request(&admin, "TreeTest", &t, false).await?;
        let rr = terminal_request(&admin, &t.namespace, &name, TIMEOUT).await?;
        assert_eq!(rr.phase(), Phase::Completed, "{kind}: {:?}", rr.status);
        assert_eq!(deployment_replicas(&admin, &t.namespace, "api").await?, 2);
        let restarts = metric(
            &running,
            &format!("kubernaut_controller_actor_restarts_total{{actor=\"{kind}\"}}"),
        )
        .await?;
        assert_eq!(restarts, f64::from(times), "{kind}");
        // Panicked actors (ractor skips their post_stop) are not live any
        // more, and the finished tree has left the gauges.
        for actor in ["processing", "workflow", "step", "supervisor"] {
            let sample = format!("kubernaut_controller_actors_live{{actor=\"{actor}\"}}");
            eventually(&format!("no live {actor} actor"), TIMEOUT, || async {
                Ok((metric(&running, &sample).await? == 0.0).then_some(()))
            })
            .await?;
        }
        let completed = "kubernaut_controller_supervisors{phase=\"Completed\"}";
        assert_eq!(metric(&running, completed).await?, 0.0, "{kind}");
        running.shutdown().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_restart_budget_fails_the_request_with_the_reason() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = api_target(&admin, "tree-exhausted").await?;
    let running = control_plane(
        stack,
        &t.namespace,
        &[
            ("CONTROLLER__FAULT_INJECTION__PANIC_IN", "analysis"),
            ("CONTROLLER__FAULT_INJECTION__TIMES", "100"),
            ("CONTROLLER__RESTART__MAX_RESTARTS", "2"),
            ("CONTROLLER__RESTART__FIRST_BACKOFF_MILLIS", "50"),
        ],
        rules(),
    )
    .await?;
    let name = create_request(&admin, "TreeTest", &t, false).await?;
    let rr = terminal_request(&admin, &t.namespace, &name, TIMEOUT).await?;
    assert_eq!(rr.phase(), Phase::Failed);
    assert_eq!(last_reason(&rr), "StageFailed");
    let message = rr
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("analysis actor failed 3 times") && message.contains("injected fault"),
        "{message}"
    );
    assert_eq!(deployment_replicas(&admin, &t.namespace, "api").await?, 1);
    running.shutdown().await
}

//! The storm policy on the real stack: a storm request acts on no target
//! by itself; it waits for approval with an escalation recorded. Approved
//! (annotation `kubernaut.io/approval`), it runs its alert's rule over every
//! affected target with at most `maxParallel` steps at once; more than
//! `maxFailureRatio` of failed steps stops it; rejected, it is cancelled.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kubernaut_api::{ObjectRef, Phase, RemediationRequest, StepPhase};
use kubernaut_e2e::{
    Stack, control_plane, create_request, deployment_replicas, deployments, escalations,
    eventually, managed_namespace, step_phases, terminal_request,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn rules() -> serde_json::Value {
    json!([{"signal": "StormAlert", "workflow": [{
        "id": "scale", "action": "scale_deployment",
        "parameters": {"namespace": "{{target.namespace}}", "name": "{{target.name}}", "replicas": 2}
    }]}])
}

/// A storm request over `targets`, its status filled as the gateway does.
async fn storm(admin: &kube::Client, ns: &str, targets: &[ObjectRef]) -> anyhow::Result<String> {
    // The storm's own target (an existing one) does not matter: only its
    // affected ones do.
    let own = targets.last().context("targets")?;
    let name = create_request(admin, "StormAlert", own, true).await?;
    let affected: Vec<_> = targets
        .iter()
        .map(|t| json!({"target": t, "signals": 3}))
        .collect();
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), ns);
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"storm": {
            "totalSignals": 3 * targets.len(), "affectedTargets": affected, "unlistedSignals": 0
        }}})),
    )
    .await?;
    Ok(name)
}

async fn waiting(api: &Api<RemediationRequest>, name: &str) -> anyhow::Result<()> {
    eventually("the storm to wait for approval", TIMEOUT, || async {
        Ok((api.get(name).await?.phase() == Phase::AwaitingApproval).then_some(()))
    })
    .await
}

/// Decides as `kubectl annotate` does. A human takes more than the second
/// in which the request was created: an approval dated in that second
/// counts as written at creation, and approves nothing.
async fn decide(api: &Api<RemediationRequest>, name: &str, decision: &str) -> anyhow::Result<()> {
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    api.patch(
        name,
        &PatchParams {
            field_manager: Some("kubectl-annotate".into()),
            ..PatchParams::default()
        },
        &Patch::Merge(json!({"metadata": {"annotations": {
            "kubernaut.io/approval": decision, "kubernaut.io/approved-by": "sre-on-call"
        }}})),
    )
    .await?;
    Ok(())
}

/// The most steps the audit trail shows running at one time.
async fn max_overlap(db: &sqlx::PgPool, uid: &str) -> anyhow::Result<usize> {
    let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT reason, COALESCE(detail->>'step', detail->>'id'), at FROM remediation_events
         WHERE request_uid = $1 AND reason IN ('StepStarted', 'StepFinished')",
    )
    .bind(uid)
    .fetch_all(db)
    .await?;
    type Span = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let mut spans: BTreeMap<String, Span> = BTreeMap::new();
    for (reason, step, at) in rows {
        let span = spans.entry(step).or_default();
        if reason == "StepStarted" {
            span.0 = Some(at);
        } else {
            span.1 = Some(at);
        }
    }
    let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = spans
        .into_values()
        .filter_map(|(a, b)| Some((a?, b?)))
        .collect();
    Ok(spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(a, b)| a <= start && start < b)
                .count()
        })
        .max()
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_storm_fans_out_within_its_bounds() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "storm-policy", "production").await?;
    let targets = deployments(&admin, &ns, "web", 6, 1).await?;
    let running = control_plane(
        stack,
        &ns,
        &[("CONTROLLER__STORM__MAX_PARALLEL", "2")],
        rules(),
    )
    .await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    let db = sqlx::PgPool::connect(&stack.database_url).await?;

    let name = storm(&admin, &ns, &targets).await?;
    waiting(&api, &name).await?;
    // Nothing happens on its own, and the storm is an escalation.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(api.get(&name).await?.phase(), Phase::AwaitingApproval);
    for t in &targets {
        assert_eq!(deployment_replicas(&admin, &ns, &t.name).await?, 1);
    }
    let rr = api.get(&name).await?;
    let uid = rr.metadata.uid.clone().context("uid")?;
    assert_eq!(escalations(stack, &rr).await?, ["StormEscalated"]);

    decide(&api, &name, "approved").await?;
    let rr = terminal_request(&admin, &ns, &name, TIMEOUT).await?;
    let status = rr.status.clone().context("status")?;
    assert_eq!(rr.phase(), Phase::Completed, "{:?}", status.message);
    for t in &targets {
        assert_eq!(
            deployment_replicas(&admin, &ns, &t.name).await?,
            2,
            "{}",
            t.name
        );
    }
    let approved = status
        .phase_history
        .iter()
        .find(|t| t.reason == "Approved")
        .context("the approval in the history")?;
    assert!(
        approved.message.contains("field manager kubectl-annotate"),
        "{}",
        approved.message
    );
    let workflow = status.analysis.context("analysis")?.workflow;
    assert_eq!(workflow.steps.len(), 6);
    assert_eq!(workflow.max_parallel, Some(2));
    let overlap = max_overlap(&db, &uid).await?;
    assert!(
        (1..=2).contains(&overlap),
        "at most 2 steps at once: {overlap}"
    );
    running.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_storm_stops_and_a_rejected_one_is_cancelled() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "storm-stop", "production").await?;
    // The first two targets do not exist: their steps fail.
    let mut targets = vec![
        ObjectRef::new("Deployment", &ns, "gone-0"),
        ObjectRef::new("Deployment", &ns, "gone-1"),
    ];
    targets.extend(deployments(&admin, &ns, "web", 4, 1).await?);
    let running = control_plane(
        stack,
        &ns,
        &[
            ("CONTROLLER__STORM__MAX_PARALLEL", "1"),
            ("CONTROLLER__STORM__MAX_FAILURE_RATIO", "0.3"),
        ],
        rules(),
    )
    .await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);

    let name = storm(&admin, &ns, &targets).await?;
    waiting(&api, &name).await?;
    decide(&api, &name, "approved").await?;
    let rr = terminal_request(&admin, &ns, &name, TIMEOUT).await?;
    let status = rr.status.clone().context("status")?;
    assert_eq!(rr.phase(), Phase::Failed);
    let message = status.message.clone().unwrap_or_default();
    assert!(message.contains("more than 30%"), "{message}");
    use StepPhase::*;
    assert_eq!(
        step_phases(&rr),
        [Failed, Skipped, Skipped, Skipped, Skipped, Skipped]
    );
    for i in 0..4 {
        let name = format!("web-{i}");
        assert_eq!(deployment_replicas(&admin, &ns, &name).await?, 1, "{name}");
    }

    let name = storm(&admin, &ns, &targets[2..]).await?;
    waiting(&api, &name).await?;
    decide(&api, &name, "rejected").await?;
    let rr = terminal_request(&admin, &ns, &name, TIMEOUT).await?;
    assert_eq!(rr.phase(), Phase::Cancelled);
    assert_eq!(
        rr.status.and_then(|s| s.message).as_deref(),
        Some("rejected by field manager kubectl-annotate")
    );
    for i in 0..4 {
        let name = format!("web-{i}");
        assert_eq!(deployment_replicas(&admin, &ns, &name).await?, 1, "{name}");
    }
    running.shutdown().await
}

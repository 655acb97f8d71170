//! Routing holds (K-RR-8) on the real stack, computed from the cluster's
//! requests: a busy target holds a second request Blocked until the first
//! ends, after which the same action within 5 minutes is skipped as
//! recently remediated; failed remediations delay the next attempt with a
//! growing backoff, and the third failure in a row blocks the target for an
//! hour with an escalation.

use std::time::Duration;

use anyhow::Context as _;
use kube::Api;
use kubernaut_api::{Phase, RemediationRequest};
use kubernaut_e2e::{
    Stack, api_target, control_plane, controller_cluster, create_request, escalations, eventually,
    phase_history, phases, terminal_request,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(45);

fn rules() -> serde_json::Value {
    json!([
        {"signal": "HoldScale", "workflow": [{
            "id": "scale", "action": "scale_deployment", "retries": 60,
            "parameters": {"namespace": "{{target.namespace}}", "name": "{{target.name}}", "replicas": 2}
        }]},
        // Beyond executor.bounds.maxReplicas: refused when the step runs,
        // so the request fails after executing.
        {"signal": "HoldFail", "workflow": [{
            "id": "scale", "action": "scale_deployment",
            "parameters": {"namespace": "{{target.namespace}}", "name": "{{target.name}}", "replicas": 5000}
        }]}
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_target_holds_the_next_request_until_it_frees() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = api_target(&admin, "hold-busy").await?;
    // The base backoff is longer than the test waits: only the registry's
    // nudge, when the first request ends, can release the second in time.
    let running = control_plane(
        stack,
        &t.namespace,
        &[("CONTROLLER__HOLDS__BACKOFF_BASE_SECONDS", "120")],
        rules(),
    )
    .await?;
    // Someone else holds the target's lock: the first request's step
    // retries Busy, so the request stays Executing.
    let cluster = controller_cluster(stack).await?;
    let lock = kubernaut_cluster::lock_name(&t);
    let held = cluster
        .claim_lease(&lock, "rr-other", Duration::from_secs(120))
        .await?
        .context("the lock is free")?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &t.namespace);
    let first = create_request(&admin, "HoldScale", &t, false).await?;
    eventually("the first request to execute", TIMEOUT, || async {
        Ok((api.get(&first).await?.phase() == Phase::Executing).then_some(()))
    })
    .await?;

    let second = create_request(&admin, "HoldScale", &t, false).await?;
    let blocked = eventually("the second request to be held", TIMEOUT, || async {
        let rr = api.get(&second).await?;
        Ok((rr.phase() == Phase::Blocked).then_some(rr))
    })
    .await?;
    let status = blocked.status.clone().context("status")?;
    assert_eq!(phase_history(&blocked)[0].1, "TargetBusy");
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.contains(&first),
        "names the busy request: {message}"
    );
    let until = status.blocked_until.context("blockedUntil")?.0;
    let wait = until.duration_since(k8s_openapi::jiff::Timestamp::now());
    assert!(
        wait.as_secs() > 60,
        "held for the backoff (120 s), not less: {wait:?}"
    );

    held.release().await;
    let first = terminal_request(&admin, &t.namespace, &first, TIMEOUT).await?;
    assert_eq!(
        first.phase(),
        Phase::Completed,
        "{:?}",
        phase_history(&first)
    );
    // Released as soon as the target freed, then skipped: the same action
    // was just done on the same target.
    let second = terminal_request(&admin, &t.namespace, &second, TIMEOUT).await?;
    use Phase::*;
    assert_eq!(
        phases(&second),
        [Blocked, Processing, Analyzing, Skipped],
        "{:?}",
        phase_history(&second)
    );
    let reasons: Vec<String> = phase_history(&second).into_iter().map(|(_, r)| r).collect();
    assert_eq!(reasons[1], "HoldReleased");
    assert_eq!(reasons[3], "RecentlyRemediated");
    let status = second.status.context("status")?;
    assert!(status.blocked_until.is_none(), "cleared once released");
    assert_eq!(
        status.analysis.map(|a| a.action).as_deref(),
        Some("scale_deployment"),
        "what would have been done is recorded"
    );
    running.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_back_off_and_the_third_in_a_row_blocks_the_target() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = api_target(&admin, "hold-fail").await?;
    let running = control_plane(
        stack,
        &t.namespace,
        &[("CONTROLLER__HOLDS__BACKOFF_BASE_SECONDS", "2")],
        rules(),
    )
    .await?;
    use Phase::*;
    let mut ended = Vec::new();
    for (n, want) in [
        vec![Processing, Analyzing, Executing, Failed],
        vec![Blocked, Processing, Analyzing, Executing, Failed],
        vec![Blocked, Processing, Analyzing, Executing, Failed],
    ]
    .into_iter()
    .enumerate()
    {
        let name = create_request(&admin, "HoldFail", &t, false).await?;
        let rr = terminal_request(&admin, &t.namespace, &name, TIMEOUT).await?;
        assert_eq!(phases(&rr), want, "request {n}: {:?}", phase_history(&rr));
        if n > 0 {
            let held = &rr.status.as_ref().context("status")?.phase_history[0];
            assert_eq!(held.reason, "Backoff");
            let expect = format!("{n} in a row");
            assert!(held.message.contains(&expect), "{}", held.message);
        }
        ended.push(rr);
    }

    let fourth = create_request(&admin, "HoldFail", &t, false).await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &t.namespace);
    let rr = eventually("the fourth request to be blocked", TIMEOUT, || async {
        let rr = api.get(&fourth).await?;
        Ok((rr.phase() == Phase::Blocked).then_some(rr))
    })
    .await?;
    assert_eq!(phase_history(&rr)[0].1, "ConsecutiveFailures");
    let last = ended
        .last()
        .and_then(|r| r.status.as_ref()?.completion_time.clone())
        .context("completion time")?
        .0;
    let until = rr
        .status
        .as_ref()
        .and_then(|s| s.blocked_until.clone())
        .context("blockedUntil")?
        .0;
    assert_eq!(
        until.duration_since(last).as_secs(),
        3600,
        "an hour from the last failure"
    );
    // The block is an escalation in the audit trail.
    assert_eq!(escalations(stack, &rr).await?, ["ConsecutiveFailures"]);
    // Still blocked a while later: nothing re-checks it early.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(api.get(&fourth).await?.phase(), Phase::Blocked);
    running.shutdown().await?;
    Ok(())
}

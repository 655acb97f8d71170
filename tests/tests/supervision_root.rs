//! The root of the supervision tree on the real stack: a failed top-level
//! actor (here the membership actor, through fault injection) is restarted
//! and its work goes on; one that spends its restart budget takes
//! readiness down and ends the control plane with an error, so that the
//! process exits non-zero and Kubernetes restarts it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::ListParams;
use kubernaut_e2e::{
    Stack, control_plane, control_plane_started, eventually, managed_namespace, metric,
};

/// The renew time of the membership Lease of the control plane that
/// supervises `ns` (its group).
async fn renewed(admin: &kube::Client, ns: &str) -> anyhow::Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kubernaut-system");
    let lp = ListParams::default().labels(&format!("kubernaut.io/member-group={ns}"));
    Ok(leases
        .list(&lp)
        .await?
        .items
        .into_iter()
        .find_map(|l| l.spec?.renew_time.map(|t| t.0.to_string())))
}

fn faults(times: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CONTROLLER__FAULT_INJECTION__PANIC_IN", "membership".into()),
        ("CONTROLLER__FAULT_INJECTION__TIMES", times.into()),
        ("CONTROLLER__RESTART__MAX_RESTARTS", "2".into()),
        ("CONTROLLER__RESTART__FIRST_BACKOFF_MILLIS", "1000".into()),
        ("CONTROLLER__LEASE_RENEW_SECONDS", "1".into()),
    ]
}

fn borrowed<'a>(o: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    o.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn a_failed_membership_actor_is_restarted_and_its_lease_renewals_go_on() -> anyhow::Result<()>
{
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "root-restart", "staging").await?;
    let o = faults("1");
    let running = control_plane(stack, &ns, &borrowed(&o), serde_json::json!([])).await?;
    let restarts = "kubernaut_controller_actor_restarts_total{actor=\"membership\"}";
    eventually(
        "the membership actor to be restarted",
        Duration::from_secs(30),
        || async { Ok((metric(&running, restarts).await? == 1.0).then_some(())) },
    )
    .await?;
    let first = eventually(
        "the membership Lease to be renewed",
        Duration::from_secs(30),
        || async { renewed(&admin, &ns).await },
    )
    .await?;
    eventually(
        "the restarted membership actor to renew the Lease again",
        Duration::from_secs(30),
        || async { Ok(renewed(&admin, &ns).await?.filter(|t| *t != first)) },
    )
    .await?;
    assert!(
        running.ready.is_ready(),
        "a restart keeps the replica Ready"
    );
    assert_eq!(metric(&running, restarts).await?, 1.0);
    running.shutdown().await
}

#[tokio::test]
async fn a_top_level_actor_past_its_budget_takes_readiness_down_and_ends_the_process()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "root-giveup", "staging").await?;
    // Fails on every tick: the first failure and two restarts spend it.
    let o = faults("100");
    // Not waited Ready: on a loaded machine the start-up can outlast the
    // few seconds the restart budget lasts.
    let mut running =
        control_plane_started(stack, &ns, &borrowed(&o), serde_json::json!([])).await?;
    let ended = running
        .ended(Duration::from_secs(60))
        .await
        .ok_or_else(|| anyhow::anyhow!("the control plane still runs after its budget"))?;
    let error = format!("{:#}", ended.expect_err("it ends with an error"));
    assert!(
        error.contains("the Membership actor failed 3 times"),
        "{error}"
    );
    assert!(!running.ready.is_ready(), "readiness is down");
    Ok(())
}

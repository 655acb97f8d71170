//! Replicas share the requests (K-RR-7): two control planes on one API
//! server, each request driven by exactly one of them (every transition in
//! the audit trail names the same replica); when one shuts down, the other
//! adopts what remains at once and completes it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use kubernaut_api::Phase;
use kubernaut_e2e::{
    Stack, control_plane, create_request, deployments, eventually, managed_namespace,
    terminal_request,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

/// The replicas the request's transitions name, once the audit writer
/// (which queues, and never waits) has stored its final one.
async fn replicas_of(db: &sqlx::PgPool, uid: &str) -> anyhow::Result<BTreeSet<String>> {
    eventually(
        "the transitions audited",
        Duration::from_secs(30),
        || async {
            let rows: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT detail->>'replica', to_phase FROM remediation_events
             WHERE request_uid = $1 AND kind = 'transition'",
            )
            .bind(uid)
            .fetch_all(db)
            .await?;
            let done = rows
                .iter()
                .any(|(_, to)| to.as_deref() == Some("Completed"));
            Ok(done.then(|| rows.into_iter().filter_map(|(r, _)| r).collect()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_requests_and_one_adopts_the_others_on_shutdown() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "replicas", "staging").await?;
    // One target per request: requests on one target would wait for each
    // other (routing holds, K-RR-8).
    let targets = deployments(&admin, &ns, "api", 50, 1).await?;
    let rules = json!([{"signal": "ShardTest", "action": "notify_only"}]);
    let fast = [("CONTROLLER__LEASE_RENEW_SECONDS", "1")];
    let a = control_plane(stack, &ns, &fast, rules.clone()).await?;
    let b = control_plane(stack, &ns, &fast, rules).await?;
    // Both have seen each other.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut names = Vec::new();
    for target in &targets[..40] {
        names.push(create_request(&admin, "ShardTest", target, false).await?);
    }
    let db = sqlx::PgPool::connect(&stack.database_url).await?;
    let mut by_replica: BTreeMap<String, usize> = BTreeMap::new();
    for name in &names {
        let rr = terminal_request(&admin, &ns, name, TIMEOUT).await?;
        assert_eq!(rr.phase(), Phase::Completed, "{name}: {:?}", rr.status);
        let uid = rr.metadata.uid.clone().context("uid")?;
        let replicas = replicas_of(&db, &uid).await?;
        assert_eq!(replicas.len(), 1, "{name} was driven by {replicas:?}");
        *by_replica
            .entry(replicas.into_iter().next().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(
        by_replica.len(),
        2,
        "both replicas drive requests: {by_replica:?}"
    );

    // One leaves: the other takes every new request, without waiting for
    // a lease to expire.
    a.shutdown().await?;
    let mut later = Vec::new();
    for target in &targets[40..] {
        later.push(create_request(&admin, "ShardTest", target, false).await?);
    }
    let mut survivors = BTreeSet::new();
    for name in &later {
        let rr = terminal_request(&admin, &ns, name, Duration::from_secs(10)).await?;
        assert_eq!(rr.phase(), Phase::Completed);
        survivors.extend(replicas_of(&db, rr.metadata.uid.as_deref().unwrap_or_default()).await?);
    }
    assert_eq!(survivors.len(), 1, "{survivors:?}");
    b.shutdown().await
}

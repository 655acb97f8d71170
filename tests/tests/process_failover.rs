//! Crash and failover with the controller as separate OS processes
//! (`kubernaut serve`), killed with SIGKILL (K-RR-6, K-RR-7):
//! - killed while a step is executing and started again, the request
//!   completes and the action happened exactly once;
//! - two replicas share 200 requests; one is killed mid-flight, the other
//!   adopts its requests within the lease duration, all complete, and no
//!   step ran twice (the cluster's generations and the audit trail say so).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kubernaut_api::{ObjectRef, Phase, RemediationRequest, StepPhase};
use kubernaut_e2e::{
    ControllerProcess, PostgresServer, Stack, controller_cluster, create_request, deployment,
    eventually, managed_namespace, step_phases, terminal_request,
};
use serde_json::json;

/// Rollout-restart the target: every run bumps its generation, so the
/// generation counts the runs.
fn rules() -> serde_json::Value {
    json!([{"signal": "CrashTest", "workflow": [{
        "id": "restart", "action": "rollout_restart", "retries": 100,
        "parameters": {"kind": "Deployment", "namespace": "{{target.namespace}}", "name": "{{target.name}}"}
    }]}])
}

/// Short leases so that a killed replica is dead in seconds.
const LEASE_SECONDS: u64 = 6;
const FAST: [(&str, &str); 2] = [
    ("CONTROLLER__LEASE_DURATION_SECONDS", "6"),
    ("CONTROLLER__LEASE_RENEW_SECONDS", "1"),
];

async fn generation(api: &Api<Deployment>, name: &str) -> anyhow::Result<i64> {
    Ok(api.get(name).await?.metadata.generation.unwrap_or_default())
}

/// The replicas named by a request's transitions, in order.
async fn drivers(db: &sqlx::PgPool, uid: &str) -> anyhow::Result<Vec<String>> {
    let rows: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT detail->>'replica' FROM remediation_events
         WHERE request_uid = $1 AND kind = 'transition' ORDER BY id",
    )
    .bind(uid)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().flatten().collect())
}

/// The requests in `list` still live and owned by a replica whose name
/// starts with `prefix`.
fn live_owned<'a>(
    list: &'a [RemediationRequest],
    prefix: &'a str,
) -> impl Iterator<Item = &'a RemediationRequest> {
    list.iter()
        .filter(|r| !r.phase().is_terminal())
        .filter(move |r| {
            r.status
                .as_ref()
                .and_then(|s| s.owner.as_deref())
                .is_some_and(|o| o.starts_with(prefix))
        })
}

/// How each of a request's steps finished, from the audit trail.
async fn step_results(db: &sqlx::PgPool, uid: &str) -> anyhow::Result<Vec<String>> {
    let rows: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT detail->>'state' FROM remediation_events
         WHERE request_uid = $1 AND kind = 'action' AND reason = 'StepFinished'",
    )
    .bind(uid)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().flatten().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_step_and_restarted_the_action_happens_once() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "crash", "staging").await?;
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deployment("web", 1))
        .await?;
    let target = ObjectRef::new("Deployment", &ns, "web");
    let before = generation(&deployments, "web").await?;
    // Someone else holds the target: the step has recorded its intent and
    // retries Busy when the controller is killed.
    let cluster = controller_cluster(stack).await?;
    let held = cluster
        .claim_lease(
            &kubernaut_cluster::lock_name(&target),
            "rr-other",
            Duration::from_secs(120),
        )
        .await?
        .context("the lock is free")?;
    let mut first = ControllerProcess::start(stack, &ns, "crash-a", &FAST, rules()).await?;
    let name = create_request(&admin, "CrashTest", &target, false).await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    eventually(
        "the step to be running",
        Duration::from_secs(60),
        || async {
            let rr = api.get(&name).await?;
            let running = rr
                .status
                .and_then(|s| s.execution)
                .is_some_and(|e| e.steps.iter().any(|s| s.phase == StepPhase::Running));
            Ok(running.then_some(()))
        },
    )
    .await?;
    // The trail can only say who started the request once the first
    // process's records have landed: a SIGKILL loses what is still queued
    // (the janitor rebuilds that without a replica's name).
    let db = sqlx::PgPool::connect(&stack.database_url).await?;
    let uid = api.get(&name).await?.metadata.uid.context("uid")?;
    eventually(
        "crash-a's transitions in the audit trail",
        Duration::from_secs(30),
        || async {
            let replicas = drivers(&db, &uid).await?;
            Ok((replicas.iter().any(|r| r.starts_with("crash-a-"))).then_some(()))
        },
    )
    .await?;
    first.kill9();
    held.release().await;

    let second = ControllerProcess::start(stack, &ns, "crash-b", &FAST, rules()).await?;
    let rr = terminal_request(&admin, &ns, &name, Duration::from_secs(60))
        .await
        .with_context(|| second.tail())?;
    assert_eq!(rr.phase(), Phase::Completed, "{:?}", rr.status);
    assert_eq!(
        generation(&deployments, "web").await? - before,
        1,
        "restarted exactly once"
    );
    let replicas = drivers(&db, &uid).await?;
    assert!(
        replicas.first().is_some_and(|r| r.starts_with("crash-a-"))
            && replicas.last().is_some_and(|r| r.starts_with("crash-b-")),
        "started by the first process, finished by the second: {replicas:?}"
    );
    assert_eq!(step_results(&db, &uid).await?, ["Succeeded"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_done_before_a_crash_is_rolled_back_when_the_workflow_fails_after()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "crash-rollback", "staging").await?;
    let targets = kubernaut_e2e::deployments(&admin, &ns, "web", 2, 1).await?;
    let (a, b) = (&targets[0], &targets[1]);
    // The second step waits for b's lock when the first replica dies.
    let cluster = controller_cluster(stack).await?;
    let held = cluster
        .claim_lease(
            &kubernaut_cluster::lock_name(b),
            "rr-other",
            Duration::from_secs(120),
        )
        .await?
        .context("the lock is free")?;
    let rules = json!([{"signal": "TwoScales", "workflow": [
        {"id": "first", "action": "scale_deployment", "rollback": true,
         "parameters": {"namespace": "{{target.namespace}}", "name": a.name, "replicas": 3}},
        {"id": "second", "action": "scale_deployment", "dependsOn": ["first"], "retries": 100,
         "parameters": {"namespace": "{{target.namespace}}", "name": b.name, "replicas": 3}}
    ]}]);
    let mut first = ControllerProcess::start(stack, &ns, "rb-a", &FAST, rules.clone()).await?;
    let name = create_request(&admin, "TwoScales", a, false).await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    eventually(
        "the first step done, the second waiting",
        Duration::from_secs(60),
        || async {
            let steps = api
                .get(&name)
                .await?
                .status
                .and_then(|s| s.execution)
                .map(|e| e.steps);
            let phases: Vec<StepPhase> = steps.iter().flatten().map(|s| s.phase).collect();
            Ok((phases == [StepPhase::Succeeded, StepPhase::Running]).then_some(()))
        },
    )
    .await?;
    let uid = api.get(&name).await?.metadata.uid.context("uid")?;
    let db = sqlx::PgPool::connect(&stack.database_url).await?;
    eventually(
        "the first step's changes in the audit trail",
        Duration::from_secs(30),
        || async { Ok((!step_results(&db, &uid).await?.is_empty()).then_some(())) },
    )
    .await?;
    assert_eq!(
        kubernaut_e2e::deployment_replicas(&admin, &ns, &a.name).await?,
        3
    );
    first.kill9();
    held.release().await;

    // The next replica refuses the second step (a lower bound): the
    // workflow fails, and the first step, done by the dead replica, is
    // undone from what the audit trail recorded.
    let mut settings = FAST.to_vec();
    settings.push(("EXECUTOR__BOUNDS__MAX_REPLICAS", "2"));
    let second = ControllerProcess::start(stack, &ns, "rb-b", &settings, rules).await?;
    let rr = terminal_request(&admin, &ns, &name, Duration::from_secs(60))
        .await
        .with_context(|| second.tail())?;
    assert_eq!(rr.phase(), Phase::Failed, "{:?}", rr.status);
    assert_eq!(step_phases(&rr), [StepPhase::RolledBack, StepPhase::Failed]);
    assert_eq!(
        kubernaut_e2e::deployment_replicas(&admin, &ns, &a.name).await?,
        1,
        "the first step undone"
    );
    assert_eq!(
        kubernaut_e2e::deployment_replicas(&admin, &ns, &b.name).await?,
        1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_lost_with_a_killed_replica_are_rebuilt_from_the_status() -> anyhow::Result<()>
{
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let pg = PostgresServer::start().await?;
    let ns = managed_namespace(&admin, "backfill", "staging").await?;
    let target = kubernaut_e2e::deployments(&admin, &ns, "web", 1, 1).await?;
    let settings = [
        FAST[0],
        FAST[1],
        ("STORE__DATABASE_URL", pg.url.as_str()),
        ("CONTROLLER__AUDIT_GRACE_SECONDS", "1"),
        ("CONTROLLER__JANITOR_INTERVAL_SECONDS", "1"),
    ];
    let rules = json!([{"signal": "Backfill", "action": "notify_only"}]);
    let mut first = ControllerProcess::start(stack, &ns, "bf-a", &settings, rules.clone()).await?;
    // PostgreSQL down: the request's records wait in the replica's queue,
    // and die with it.
    pg.stop()?;
    let name = create_request(&admin, "Backfill", &target[0], false).await?;
    let rr = terminal_request(&admin, &ns, &name, Duration::from_secs(60)).await?;
    assert_eq!(rr.phase(), Phase::Completed);
    first.kill9();
    pg.resume()?;

    let second = ControllerProcess::start(stack, &ns, "bf-b", &settings, rules).await?;
    let uid = rr.metadata.uid.clone().context("uid")?;
    let db = sqlx::PgPool::connect(&pg.url).await?;
    let phase = eventually(
        "the rebuilt request row",
        Duration::from_secs(30),
        || async {
            let phase: Option<String> =
                sqlx::query_scalar("SELECT phase FROM remediation_requests WHERE uid = $1")
                    .bind(&uid)
                    .fetch_optional(&db)
                    .await?;
            Ok(phase)
        },
    )
    .await
    .with_context(|| second.tail())?;
    assert_eq!(phase, "Completed");
    let history: Vec<(String, Option<String>)> = rr
        .status
        .iter()
        .flat_map(|s| &s.phase_history)
        .map(|t| (t.reason.clone(), Some("true".to_string())))
        .collect();
    // The rebuilt records are written one after the other, the request row
    // first: wait for as many transitions as the history has.
    let reasons = eventually(
        "the rebuilt transitions",
        Duration::from_secs(30),
        || async {
            let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT reason, detail->>'backfilled' FROM remediation_events
             WHERE request_uid = $1 AND kind = 'transition' ORDER BY id",
            )
            .bind(&uid)
            .fetch_all(&db)
            .await?;
            Ok((rows.len() >= history.len()).then_some(rows))
        },
    )
    .await?;
    assert_eq!(reasons, history, "every transition, marked as rebuilt");
    let (_, metrics) = kubernaut_e2e::get(&format!("http://{}/metrics", second.admin_addr)).await?;
    assert!(
        metrics.contains("kubernaut_controller_audit_backfilled_total 1"),
        "counted once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replica_processes_share_200_requests_and_survive_a_kill() -> anyhow::Result<()> {
    const N: usize = 200;
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "failover", "staging").await?;
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &ns);
    // One target per request (a target serves one request at a time,
    // K-RR-8); no replicas, so no pods to schedule.
    let targets = kubernaut_e2e::deployments(&admin, &ns, "svc", N, 0).await?;
    // The controller-manager has seen them all, so that verification (the
    // new generation observed) measures the restarts only.
    eventually(
        "the deployments to be observed",
        Duration::from_secs(120),
        || async {
            let list = deployments.list(&ListParams::default()).await?.items;
            let observed = list
                .iter()
                .filter(|d| d.status.as_ref().and_then(|s| s.observed_generation) == Some(1))
                .count();
            Ok((observed == N).then_some(()))
        },
    )
    .await?;
    // 200 restarts at once queue up in the one controller-manager.
    // The killed replica's queued audit records die with it; the
    // survivor's janitor rebuilds them from the status soon after.
    let settings = [
        FAST[0],
        FAST[1],
        ("CONTROLLER__VERIFY_TIMEOUT_SECONDS", "180"),
        ("CONTROLLER__AUDIT_GRACE_SECONDS", "2"),
        ("CONTROLLER__JANITOR_INTERVAL_SECONDS", "1"),
    ];
    let mut a = ControllerProcess::start(stack, &ns, "fo-a", &settings, rules()).await?;
    let b = ControllerProcess::start(stack, &ns, "fo-b", &settings, rules()).await?;
    // Both see each other before the requests come.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut names = Vec::new();
    for t in &targets {
        names.push(create_request(&admin, "CrashTest", t, false).await?);
    }
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    let by_owner = |list: &[RemediationRequest], prefix: &str| live_owned(list, prefix).count();
    // Kill the first replica while it drives requests, once the trail
    // says it started some of them: a SIGKILL loses the records still
    // queued, and those the janitor rebuilds name no replica.
    let db = sqlx::PgPool::connect(&stack.database_url).await?;
    eventually(
        "fo-a to drive requests",
        Duration::from_secs(120),
        || async {
            let list = api.list(&ListParams::default()).await?.items;
            if by_owner(&list, "fo-a-") < 5 {
                return Ok(None);
            }
            let live: Vec<String> = live_owned(&list, "fo-a-")
                .filter_map(|r| r.metadata.uid.clone())
                .collect();
            let recorded: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT request_uid) FROM remediation_events
                 WHERE request_uid = ANY($1) AND kind = 'transition'
                   AND detail->>'replica' LIKE 'fo-a-%'",
            )
            .bind(&live)
            .fetch_one(&db)
            .await?;
            // Several: the first may end on fo-a before the kill.
            Ok((recorded >= 3).then_some(()))
        },
    )
    .await?;
    a.kill9();
    let killed = Instant::now();
    // A status write fo-a had sent may still land after its death (the
    // API server finishes what it received); what is in flight is read
    // once that settles, well inside the lease fo-b waits out.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let in_flight: Vec<String> =
        live_owned(&api.list(&ListParams::default()).await?.items, "fo-a-")
            .filter_map(|r| r.metadata.uid.clone())
            .collect();
    let orphans = in_flight.len();
    // Those the trail shows fo-a driving when it died (the rest of its
    // records died in its queue): each must end driven by fo-b.
    let traced: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT request_uid FROM remediation_events
         WHERE request_uid = ANY($1) AND kind = 'transition'
           AND detail->>'replica' LIKE 'fo-a-%'",
    )
    .bind(&in_flight)
    .fetch_all(&db)
    .await?;
    ensure!(
        !traced.is_empty(),
        "no request in flight on fo-a has fo-a's records in the trail ({orphans} in flight)"
    );

    // Within the lease plus the survivor's adoption writes, nothing live is
    // left with the dead replica: one status write per orphan, at 10/s at
    // least, on an API server that shares two cores with the rest of the
    // test run (the LLM tests' server among it), so a lease's worth of
    // slack; how many orphans there are depends on how far fo-a got.
    let limit =
        Duration::from_secs(2 * LEASE_SECONDS + 5) + Duration::from_millis(100 * orphans as u64);
    eventually("fo-b to adopt fo-a's requests", limit, || async {
        let list = api.list(&ListParams::default()).await?.items;
        Ok((by_owner(&list, "fo-a-") == 0).then_some(()))
    })
    .await
    .with_context(|| b.tail())?;
    let adopted_after = killed.elapsed();

    let mut finished_by: BTreeMap<String, usize> = BTreeMap::new();
    let mut handed = 0;
    let mut rebuilt = 0;
    for (name, t) in names.iter().zip(&targets) {
        let rr = terminal_request(&admin, &ns, name, Duration::from_secs(180))
            .await
            .with_context(|| b.tail())?;
        ensure!(rr.phase() == Phase::Completed, "{name}: {:?}", rr.status);
        // The cluster: one rollout restart per target, no more.
        assert_eq!(
            generation(&deployments, &t.name).await?,
            2,
            "{name}: the target was restarted exactly once"
        );
        let uid = rr.metadata.uid.clone().context("uid")?;
        // The audit trail: one result per step, and the request driven by
        // one replica at a time: fo-a's transitions, then fo-b's.
        let results = eventually(
            "the step's result in the audit trail",
            Duration::from_secs(30),
            || async {
                let r = step_results(&db, &uid).await?;
                Ok((!r.is_empty()).then_some(r))
            },
        )
        .await?;
        assert!(
            results == ["Succeeded"] || results == ["AlreadyDone"],
            "{name}: {results:?}"
        );
        let backfilled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM remediation_events WHERE request_uid = $1 AND detail->>'backfilled' = 'true'",
        )
        .bind(&uid)
        .fetch_one(&db)
        .await?;
        rebuilt += usize::from(backfilled > 0);
        let replicas = drivers(&db, &uid).await?;
        let switches = replicas.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(switches <= 1, "{name} went back and forth: {replicas:?}");
        if let Some(first) = replicas.first()
            && first.starts_with("fo-a-")
            && replicas.last().is_some_and(|r| r.starts_with("fo-b-"))
        {
            handed += 1;
        }
        *finished_by
            .entry(
                replicas
                    .last()
                    .map(|r| r[..4].to_string())
                    .unwrap_or_default(),
            )
            .or_default() += 1;
    }
    // fo-b's records may still be in its queue when its request ends.
    for uid in &traced {
        let handed_over = eventually(
            "a request fo-a drove when it died to end driven by fo-b",
            Duration::from_secs(30),
            || async {
                let replicas = drivers(&db, uid).await?;
                Ok(replicas
                    .last()
                    .is_some_and(|r| r.starts_with("fo-b-"))
                    .then_some(()))
            },
        )
        .await;
        if let Err(e) = handed_over {
            let trail: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT to_phase, detail->>'replica', detail->>'backfilled'
                 FROM remediation_events WHERE request_uid = $1 AND kind = 'transition' ORDER BY id",
            )
            .bind(uid)
            .fetch_all(&db)
            .await?;
            return Err(e.context(format!(
                "request {uid}: transitions (to, replica, backfilled) {trail:?}\n{}",
                b.tail()
            )));
        }
    }
    assert_eq!(
        finished_by.values().sum::<usize>(),
        N,
        "every request finished: {finished_by:?}"
    );
    eprintln!(
        "failover: {orphans} requests in flight on the killed replica ({} of them in the trail as driven by it); no live request left with it after {adopted_after:?}; finished by {finished_by:?}; {handed} handed over mid-flight; audit records of {rebuilt} rebuilt from their status",
        traced.len()
    );
    Ok(())
}

//! Deduplication across gateway replicas on the real stack (K-GW-5): each
//! replica's watch-fed view of requests, and names determined by a
//! fingerprint's sequence so that the API server's "already exists" decides
//! every creation race, with or without Redis. Every test counts requests in
//! the API server and the occurrence count in their status: an accepted
//! signal is a request or a counted duplicate, never lost and never doubled.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kubernaut_api::RemediationRequest;
use kubernaut_e2e::{
    Gateway, RedisServer, Reply, Stack, alertmanager_payload, deployment_with_pods,
    managed_namespace, post, requests,
};
use serde_json::json;

const STARTS_AT: &str = "2026-11-22T03:00:00Z";

fn occurrences(rr: &RemediationRequest) -> i64 {
    rr.occurrence_count()
}

/// The namespace's requests once their occurrence counts add up to at
/// least `total`: a duplicate answered from the Redis journal reaches its
/// request's status shortly after its answer (within a settle interval,
/// or a sweep if its replica is gone). Callers assert the exact figures.
async fn requests_counting(
    admin: &kube::Client,
    ns: &str,
    total: i64,
) -> anyhow::Result<Vec<RemediationRequest>> {
    kubernaut_e2e::eventually(
        &format!("{total} occurrences in the status of {ns}'s requests"),
        Duration::from_secs(20),
        || async {
            let rrs = requests(admin, ns).await?;
            let sum: i64 = rrs.iter().map(occurrences).sum();
            Ok((sum >= total).then_some(rrs))
        },
    )
    .await
}

/// How many replies had each status code.
fn codes(replies: &[Reply]) -> BTreeMap<u16, usize> {
    let mut m = BTreeMap::new();
    for r in replies {
        *m.entry(r.status).or_default() += 1;
    }
    m
}

/// Posts every body concurrently, alternating between the gateways.
async fn fire(gateways: &[&Gateway], bodies: &[String]) -> anyhow::Result<Vec<Reply>> {
    let calls = bodies.iter().enumerate().map(|(i, body)| {
        let url = gateways[i % gateways.len()].url("alertmanager");
        async move { post(&url, "application/json", body.clone()).await }
    });
    join_all(calls).await.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_racing_100_identical_first_signals_create_one_request() -> anyhow::Result<()>
{
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "dedup-race", "production").await?;
    let pods = deployment_with_pods(&admin, &ns, "web", 1).await?;
    let pod = pods.first().context("a pod")?;
    let a = Gateway::start(stack, Some(&stack.redis_url), "gw-a").await?;
    let b = Gateway::start(stack, Some(&stack.redis_url), "gw-b").await?;

    let body = alertmanager_payload("KubePodCrashLooping", &ns, &[(pod, "aa01")], STARTS_AT);
    let replies = fire(&[&a, &b], &vec![body; 100]).await?;

    assert_eq!(
        codes(&replies),
        BTreeMap::from([(201, 1), (202, 99)]),
        "{:?}",
        replies.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    let rrs = requests_counting(&admin, &ns, 100).await?;
    assert_eq!(rrs.len(), 1, "exactly one request");
    assert_eq!(occurrences(&rrs[0]), 100);
    let name = rrs[0].metadata.name.clone().unwrap_or_default();
    assert!(replies.iter().all(|r| r.body["request"] == name.as_str()));
    // Each duplicate got its own place in the count.
    let mut counts: Vec<i64> = replies
        .iter()
        .filter_map(|r| r.body["occurrenceCount"].as_i64())
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=100).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn different_first_signals_for_one_target_open_one_request_even_without_redis()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "dedup-mixed", "staging").await?;
    let pods: Vec<String> = deployment_with_pods(&admin, &ns, "api", 3)
        .await?
        .into_iter()
        .collect();
    // One replica has Redis, the other has lost it: only the API server's
    // name uniqueness serialises them.
    let with_redis = Gateway::start(stack, Some(&stack.redis_url), "gw-redis").await?;
    let without = Gateway::start(stack, None, "gw-no-redis").await?;

    let bodies: Vec<String> = (0..60)
        .map(|i| {
            let alert = ["KubePodCrashLooping", "KubePodNotReady", "OOMKilled"][i % 3];
            let pod = &pods[i % pods.len()];
            alertmanager_payload(alert, &ns, &[(pod, &format!("bb{i:02}"))], STARTS_AT)
        })
        .collect();
    let replies = fire(&[&with_redis, &without], &bodies).await?;

    assert_eq!(codes(&replies), BTreeMap::from([(201, 1), (202, 59)]));
    let rrs = requests_counting(&admin, &ns, 60).await?;
    assert_eq!(rrs.len(), 1, "pods of one Deployment are one incident");
    assert_eq!(occurrences(&rrs[0]), 60);
    assert_eq!(rrs[0].spec.target.kind, "Deployment");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_mid_test_keeps_deduplication_correct() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "dedup-redis-down", "production").await?;
    let web: Vec<String> = deployment_with_pods(&admin, &ns, "web", 2)
        .await?
        .into_iter()
        .collect();
    let db: Vec<String> = deployment_with_pods(&admin, &ns, "db", 2)
        .await?
        .into_iter()
        .collect();
    let mut redis = RedisServer::start().await?;
    let a = Gateway::start(stack, Some(&redis.url), "gw-a").await?;
    let b = Gateway::start(stack, Some(&redis.url), "gw-b").await?;

    // Redis up: ten signal instances, each delivered three times.
    let first: Vec<String> = (0..30)
        .map(|i| {
            let n = i % 10;
            alertmanager_payload(
                "KubePodCrashLooping",
                &ns,
                &[(&web[n % 2], &format!("cc{n:02}"))],
                STARTS_AT,
            )
        })
        .collect();
    let replies = fire(&[&a, &b], &first).await?;
    assert_eq!(codes(&replies), BTreeMap::from([(201, 1), (202, 29)]));
    let fallbacks_before =
        a.intake_metrics.redis_fallbacks_total() + b.intake_metrics.redis_fallbacks_total();
    assert_eq!(fallbacks_before, 0, "Redis was up");

    redis.kill();

    // Redis down: the same ten again, twenty new ones on the same target,
    // and twenty first signals for another target racing on both replicas.
    let mut second: Vec<String> = first[..10].to_vec();
    second.extend((0..20).map(|i| {
        alertmanager_payload(
            "KubePodNotReady",
            &ns,
            &[(&web[i % 2], &format!("dd{i:02}"))],
            STARTS_AT,
        )
    }));
    second.extend((0..20).map(|i| {
        alertmanager_payload(
            "KubePodCrashLooping",
            &ns,
            &[(&db[i % 2], &format!("ee{i:02}"))],
            STARTS_AT,
        )
    }));
    let replies = fire(&[&a, &b], &second).await?;
    assert_eq!(
        codes(&replies),
        BTreeMap::from([(201, 1), (202, 49)]),
        "{:?}",
        replies
            .iter()
            .filter(|r| r.status != 202)
            .map(|r| &r.text)
            .collect::<Vec<_>>()
    );

    let rrs = requests_counting(&admin, &ns, 80).await?;
    let by_target: BTreeMap<String, i64> = rrs
        .iter()
        .map(|r| (r.spec.target.name.clone(), occurrences(r)))
        .collect();
    assert_eq!(
        by_target,
        BTreeMap::from([("db".to_string(), 20), ("web".to_string(), 60)])
    );
    assert!(
        a.intake_metrics.redis_fallbacks_total() + b.intake_metrics.redis_fallbacks_total() > 0,
        "the fallback was counted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_request_ends_redeliveries_stay_duplicates_and_new_firings_open_a_new_one()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "dedup-ended", "development").await?;
    let pods: Vec<String> = deployment_with_pods(&admin, &ns, "cart", 2)
        .await?
        .into_iter()
        .collect();
    // Without Redis, so that only what Kubernetes holds decides.
    let gw = Gateway::start(stack, None, "gw-k8s-only").await?;
    let url = gw.url("alertmanager");
    let send = |alert: &str, pod: &str, fp: &str| {
        let body = alertmanager_payload(alert, &ns, &[(pod, fp)], STARTS_AT);
        let url = url.clone();
        async move { post(&url, "application/json", body).await }
    };

    let created = send("KubePodCrashLooping", &pods[0], "ff01").await?;
    assert_eq!(created.status, 201, "{}", created.text);
    let first = created.body["request"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let counted = send("KubePodNotReady", &pods[1], "ff02").await?;
    assert_eq!(counted.status, 202, "{}", counted.text);
    assert_eq!(counted.body["request"], first.as_str());

    // The remediation ends.
    Api::<RemediationRequest>::namespaced(admin.clone(), &ns)
        .patch_status(
            &first,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Completed"}})),
        )
        .await?;

    // Alertmanager re-sends both alerts with their original startsAt.
    for (alert, pod, fp) in [
        ("KubePodCrashLooping", &pods[0], "ff01"),
        ("KubePodNotReady", &pods[1], "ff02"),
    ] {
        let again = send(alert, pod, fp).await?;
        assert_eq!(again.status, 202, "{alert}: {}", again.text);
        assert_eq!(again.body["request"], first.as_str(), "{alert}");
    }
    // A new firing on the same target opens a new request.
    let fresh = send("KubePodCrashLooping", &pods[0], "ff03").await?;
    assert_eq!(fresh.status, 201, "{}", fresh.text);
    assert_ne!(fresh.body["request"], first.as_str());

    let rrs = requests(&admin, &ns).await?;
    assert_eq!(rrs.len(), 2);
    let ended = rrs
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(first.as_str()))
        .context("the first request")?;
    assert_eq!(occurrences(ended), 4);
    Ok(())
}

/// A name is taken once: after a fingerprint's latest request was deleted,
/// the next one takes the next place in the sequence, not the freed name
/// (a replica whose view still held the deleted request would otherwise
/// create a second open request beside it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_requests_place_is_not_taken_again() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "dedup-deleted", "development").await?;
    let pods = deployment_with_pods(&admin, &ns, "web", 1).await?;
    let pod = pods.first().context("a pod")?;
    let gw = Gateway::start(stack, None, "gw-deleted").await?;
    let url = gw.url("alertmanager");
    let send = |id: &str| {
        let body = alertmanager_payload("KubePodCrashLooping", &ns, &[(pod, id)], STARTS_AT);
        let url = url.clone();
        async move { post(&url, "application/json", body).await }
    };
    let first = send("a1").await?;
    assert_eq!(first.status, 201, "{}", first.text);
    let name = first.body["request"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        name.starts_with("deployment-web-") && name.ends_with("-1"),
        "{name}"
    );
    let rrs: Api<RemediationRequest> = Api::namespaced(admin.clone(), &ns);
    rrs.delete(&name, &Default::default()).await?;
    kubernaut_e2e::eventually("the deletion", Duration::from_secs(10), || async {
        Ok(rrs.get_opt(&name).await?.is_none().then_some(()))
    })
    .await?;
    // Long enough for the replica's watch to have seen the deletion, so
    // that only the tombstone keeps place 1 taken.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let second = send("a2").await?;
    assert_eq!(second.status, 201, "{}", second.text);
    let next = second.body["request"].as_str().unwrap_or_default();
    assert_eq!(next, format!("{}2", name.trim_end_matches('1')));
    Ok(())
}

/// A request someone else wrote under the name of a fingerprint's next
/// place, about another target, neither blocks the fingerprint nor is
/// counted on: the intake takes the place after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_squatting_the_next_name_is_skipped_not_counted_on() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "dedup-squat", "development").await?;
    let pods = deployment_with_pods(&admin, &ns, "web", 1).await?;
    let pod = pods.first().context("a pod")?;
    let fp = kubernaut_api::fingerprint(
        None,
        &kubernaut_api::ObjectRef::new("Deployment", &ns, "web"),
    );
    let squatted = kubernaut_cluster::request_name("Deployment-web", &fp, 1);
    let rrs: Api<RemediationRequest> = Api::namespaced(admin.clone(), &ns);
    rrs.create(
        &Default::default(),
        &serde_json::from_value(json!({
            "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
            "metadata": {"name": squatted},
            "spec": {
                "fingerprint": "0".repeat(64), "signalName": "Squat", "severity": "warning",
                "source": "generic", "instanceId": "squat",
                "target": {"kind": "Deployment", "namespace": ns, "name": "other"},
                "signalResource": {"kind": "Deployment", "namespace": ns, "name": "other"},
                "firingTime": STARTS_AT, "receivedTime": STARTS_AT, "originalPayload": "{}"
            }
        }))?,
    )
    .await?;
    let gw = Gateway::start(stack, None, "gw-squat").await?;
    let body = alertmanager_payload("KubePodCrashLooping", &ns, &[(pod, "s1")], STARTS_AT);
    let created = post(&gw.url("alertmanager"), "application/json", body).await?;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(
        created.body["request"],
        kubernaut_cluster::request_name("Deployment-web", &fp, 2).as_str()
    );
    let squatter = rrs.get(&squatted).await?;
    assert_eq!(occurrences(&squatter), 1, "nothing was counted on it");
    Ok(())
}

/// A replica that answered duplicates from the Redis journal and died
/// before writing them leaves them in the journal; another replica's sweep
/// writes them. Settling the same figure again adds nothing, and
/// duplicates counted meanwhile through the API server (a replica without
/// Redis) are kept beside the journal's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_journaled_duplicates_are_written_by_another_exactly_once()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "dedup-journal", "staging").await?;
    let pods = deployment_with_pods(&admin, &ns, "web", 1).await?;
    let pod = pods.first().context("a pod")?;
    let without = Gateway::start(stack, None, "gw-no-redis").await?;
    let body = |id: &str| alertmanager_payload("KubePodCrashLooping", &ns, &[(pod, id)], STARTS_AT);
    let created = post(&without.url("alertmanager"), "application/json", body("j0")).await?;
    assert_eq!(created.status, 201, "{}", created.text);
    let name = created.body["request"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let id = format!("{ns}/{name}");

    // The dead replica: seven duplicates numbered in the journal (as its
    // intake does, from the status it saw: count 1, none journaled), and
    // never written.
    let journal = kubernaut_store::index::SignalIndex::connect(&stack.redis_url, "kubernaut-e2e")?;
    assert!(journal.wait_connected(Duration::from_secs(5)).await);
    let at = kubernaut_api::k8s_openapi::jiff::Timestamp::now().as_millisecond();
    let mut answers = Vec::new();
    for n in [1, 4, 2] {
        answers.push(journal.count_occurrences(&id, 1, 0, n, at).await?.count);
    }
    assert_eq!(answers, [2, 6, 8], "numbered one after the other");
    // Meanwhile a replica without Redis counts two through the API server.
    for i in 1..=2 {
        let r = post(
            &without.url("alertmanager"),
            "application/json",
            body(&format!("j{i}")),
        )
        .await?;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let rrs: Api<RemediationRequest> = Api::namespaced(admin.clone(), &ns);
    assert_eq!(
        occurrences(&rrs.get(&name).await?),
        3,
        "the journal's seven are not written yet"
    );

    // A live replica with Redis sweeps the journal.
    let _live = Gateway::start(stack, Some(&stack.redis_url), "gw-sweeper").await?;
    let settled = requests_counting(&admin, &ns, 10).await?;
    assert_eq!(
        occurrences(&settled[0]),
        10,
        "1 + 2 through the API server + 7 journaled"
    );
    let dedup = settled[0]
        .status
        .as_ref()
        .and_then(|s| s.deduplication.clone())
        .context("deduplication status")?;
    assert_eq!(dedup.journaled, Some(7));
    kubernaut_e2e::eventually("the journal settled", Duration::from_secs(10), || async {
        let stale = journal.stale_unsettled(Duration::ZERO, 10_000).await?;
        Ok((!stale.contains(&id)).then_some(()))
    })
    .await?;

    // Settling the same figure again (a second sweeper, a retry) adds nothing.
    let key = kubernaut_api::RequestKey::new(ns.clone(), name.clone());
    let again = kubernaut_cluster::Occurrences::new(without.cluster.clone())
        .settle(
            &key,
            7,
            kubernaut_api::k8s_openapi::jiff::Timestamp::now(),
            vec![],
        )
        .await?;
    assert_eq!(again, Some(7));
    assert_eq!(occurrences(&rrs.get(&name).await?), 10);
    Ok(())
}

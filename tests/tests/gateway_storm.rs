//! Storm detection on the real stack (K-GW-6): 500 alerts over 100 pods of
//! 20 Deployments, plus a second alert name, fired through two gateway
//! replicas. Each (namespace, alert name) gets exactly one storm request
//! listing the affected targets, the few signals before the threshold get
//! ordinary requests, and every signal is counted exactly once.

use std::collections::BTreeMap;

use futures::StreamExt;
use kube::Api;
use kube::api::ListParams;
use kubernaut_api::RemediationRequest;
use kubernaut_e2e::{
    Gateway, Stack, alertmanager_payload, deployment_with_pods, managed_namespace, post,
};

const STARTS_AT: &str = "2026-11-22T03:00:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_becomes_one_storm_request_per_alert_name_with_the_right_counts()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    // The harness sets this environment's pattern threshold to 5 targets.
    let ns = managed_namespace(&admin, "storm", "storm-test").await?;
    let mut pods: Vec<(String, String)> = Vec::new();
    for d in 0..20 {
        let name = format!("svc-{d:02}");
        for p in deployment_with_pods(&admin, &ns, &name, 5).await? {
            pods.push((name.clone(), p));
        }
    }
    assert_eq!(pods.len(), 100);
    let a = Gateway::start(stack, Some(&stack.redis_url), "gw-storm-a").await?;
    let b = Gateway::start(stack, Some(&stack.redis_url), "gw-storm-b").await?;

    // 5 firings per pod of one alert; 60 of another, 3 pods of each Deployment.
    let mut bodies: Vec<(&'static str, String)> = Vec::new();
    for round in 0..5 {
        for (i, (_, pod)) in pods.iter().enumerate() {
            let fp = format!("a{round}{i:03}");
            bodies.push((
                "KubePodCrashLooping",
                alertmanager_payload("KubePodCrashLooping", &ns, &[(pod, &fp)], STARTS_AT),
            ));
        }
    }
    for (i, (_, pod)) in pods.iter().enumerate().filter(|(i, _)| i % 5 < 3).take(60) {
        let fp = format!("b{i:03}");
        bodies.push((
            "KubePodNotReady",
            alertmanager_payload("KubePodNotReady", &ns, &[(pod, &fp)], STARTS_AT),
        ));
    }
    let urls = [a.url("alertmanager"), b.url("alertmanager")];
    let replies: Vec<_> = futures::stream::iter(bodies.iter().enumerate())
        .map(|(i, (alert, body))| {
            let url = urls[i % 2].clone();
            async move { (*alert, post(&url, "application/json", body.clone()).await) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut results: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for (alert, reply) in replies {
        let reply = reply?;
        assert!(
            matches!(reply.status, 201 | 202),
            "{alert}: {} {}",
            reply.status,
            reply.text
        );
        let result = reply.body["result"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *results.entry((alert, result)).or_default() += 1;
    }

    // Duplicates answered from the Redis journal reach their request's
    // status shortly after the answer.
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    let rrs = kubernaut_e2e::eventually(
        "every signal counted",
        std::time::Duration::from_secs(20),
        || async {
            let rrs = api.list(&ListParams::default()).await?.items;
            Ok((counted(&rrs) >= 560).then_some(rrs))
        },
    )
    .await?;
    for (alert, sent, targets) in [
        ("KubePodCrashLooping", 500, 20),
        ("KubePodNotReady", 60, 20),
    ] {
        let mine: Vec<&RemediationRequest> =
            rrs.iter().filter(|r| r.spec.signal_name == alert).collect();
        let storms: Vec<&&RemediationRequest> =
            mine.iter().filter(|r| r.spec.storm.is_some()).collect();
        assert_eq!(storms.len(), 1, "{alert}: one storm request");
        let storm = storms[0];
        assert_eq!(
            storm.spec.storm.as_ref().map(|s| s.namespace.as_str()),
            Some(ns.as_str())
        );
        let st = storm
            .status
            .clone()
            .unwrap_or_default()
            .storm
            .unwrap_or_default();
        let ordinary = mine.iter().filter(|r| r.spec.storm.is_none()).count();
        // Before the storm: at most the threshold's worth of targets.
        assert!(ordinary <= 5, "{alert}: {ordinary} ordinary requests");
        let answered: usize = results
            .iter()
            .filter(|((a, _), _)| *a == alert)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(answered as i64, sent, "{alert}: {results:?}");
        let listed: i64 = st.affected_targets.iter().map(|t| t.signals).sum();
        assert_eq!(listed + st.unlisted_signals, st.total_signals);
        assert!(
            st.affected_targets.len() > targets - 6 && st.affected_targets.len() <= targets,
            "{alert}: {} affected targets",
            st.affected_targets.len()
        );
        assert!(
            st.affected_targets
                .iter()
                .all(|t| t.target.kind == "Deployment")
        );
        let stormed = results
            .get(&(alert, "storm".to_string()))
            .copied()
            .unwrap_or(0);
        assert_eq!(
            stormed as i64, st.total_signals,
            "{alert}: answers say storm"
        );
    }
    // Every signal is counted exactly once, on a storm or an ordinary
    // request (an ordinary request counts every alert name of its target:
    // the fingerprint does not include the alert name, K-GW-4).
    assert_eq!(counted(&rrs), 560, "{results:?}");
    Ok(())
}

/// Signals counted on the requests: a storm request's total, an ordinary
/// request's occurrences.
fn counted(rrs: &[RemediationRequest]) -> i64 {
    rrs.iter()
        .map(|r| {
            let st = r.status.clone().unwrap_or_default();
            match (&r.spec.storm, st.storm, st.deduplication) {
                (Some(_), Some(storm), _) => storm.total_signals,
                (None, _, Some(d)) => d.occurrence_count,
                _ => 1,
            }
        })
        .sum()
}

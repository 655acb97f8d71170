//! The Kubernetes-event and generic sources end to end on the real stack:
//! a posted core/v1 Event, Warning events watched from the API server, and
//! the generic webhook with its published schema.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::PostParams;
use kubernaut_api::k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubernaut_e2e::{
    DEV_TOKEN, Gateway, Stack, deployment_with_pods, eventually, managed_namespace, post_as,
    requests,
};
use kubernaut_gateway::kubernetes_event::{WatchSettings, pump};
use serde_json::json;

const JSON: &str = "application/json";

fn event(
    ns: &str,
    pod: &str,
    name: &str,
    kind: &str,
    reason: &str,
    last: Timestamp,
) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod, "apiVersion": "v1"},
        "reason": reason, "message": format!("{reason} for {pod}"), "type": kind, "count": 1,
        "firstTimestamp": last.to_string(), "lastTimestamp": last.to_string(),
        "source": {"component": "kubelet"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_kubernetes_events_open_requests_for_warnings_only() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "src-event", "staging").await?;
    let pods: Vec<String> = deployment_with_pods(&admin, &ns, "api", 1)
        .await?
        .into_iter()
        .collect();
    let gw = Gateway::start(stack, Some(&stack.redis_url), "gw-event").await?;
    let url = gw.url("kubernetes-event");

    let normal = event(
        &ns,
        &pods[0],
        "e-normal",
        "Normal",
        "Pulled",
        Timestamp::now(),
    );
    let r = post_as(&url, JSON, normal.to_string(), Some(DEV_TOKEN)).await?;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["reason"], "not_warning");

    let warning = event(
        &ns,
        &pods[0],
        "e-backoff",
        "Warning",
        "BackOff",
        Timestamp::now(),
    );
    let r = post_as(&url, JSON, warning.to_string(), Some(DEV_TOKEN)).await?;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = post_as(&url, JSON, warning.to_string(), Some(DEV_TOKEN)).await?;
    assert_eq!(r.status, 202, "the same event and count again: {}", r.text);

    let rrs = requests(&admin, &ns).await?;
    assert_eq!(rrs.len(), 1);
    assert_eq!(rrs[0].spec.source.as_str(), "kubernetes-event");
    assert_eq!(rrs[0].spec.signal_name, "BackOff");
    assert_eq!(rrs[0].spec.target.name, "api");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_warning_events_become_requests_and_old_ones_are_skipped() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "src-watch", "staging").await?;
    let fresh: Vec<String> = deployment_with_pods(&admin, &ns, "fresh", 1)
        .await?
        .into_iter()
        .collect();
    let stale: Vec<String> = deployment_with_pods(&admin, &ns, "stale", 1)
        .await?
        .into_iter()
        .collect();
    let gw = Gateway::start(stack, Some(&stack.redis_url), "gw-watch").await?;
    let settings = WatchSettings {
        max_age: Duration::from_secs(300),
        suppress: Duration::from_secs(60),
    };
    let watch = tokio::spawn(pump(
        gw.cluster.warning_events(),
        gw.state.clone(),
        settings,
    ));

    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    let old = Timestamp::now() - SignedDuration::from_hours(2);
    for (name, pod, last) in [
        ("w-stale", &stale[0], old),
        ("w-fresh", &fresh[0], Timestamp::now()),
    ] {
        let mut e = event(&ns, pod, name, "Warning", "OOMKilling", last);
        e["metadata"].as_object_mut().map(|m| m.remove("uid"));
        events
            .create(&PostParams::default(), &serde_json::from_value(e)?)
            .await?;
    }
    let rr = eventually(
        "a request from the watched event",
        Duration::from_secs(30),
        || async {
            let rrs = requests(&admin, &ns).await?;
            Ok(rrs.into_iter().next())
        },
    )
    .await?;
    assert_eq!(rr.spec.source.as_str(), "kubernetes-event");
    assert_eq!(rr.spec.signal_name, "OOMKilling");
    assert_eq!(rr.spec.target.name, "fresh");
    // Give the stale event every chance to be (wrongly) picked up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rrs = requests(&admin, &ns).await?;
    assert_eq!(rrs.len(), 1, "an event from two hours ago is not a signal");
    watch.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_webhook_takes_batches_and_resolutions() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "src-generic", "development").await?;
    deployment_with_pods(&admin, &ns, "billing", 1).await?;
    let gw = Gateway::start(stack, Some(&stack.redis_url), "gw-generic").await?;
    let url = gw.url("generic");
    let target = json!({"kind": "Deployment", "namespace": ns, "name": "billing"});

    let firing = json!([
        {"name": "HighErrorRate", "id": "inc-1", "severity": "critical", "target": target,
         "labels": {"team": "billing"}},
        {"name": "HighLatency", "id": "inc-2", "target": target},
        {"name": "Typo", "id": "inc-3", "target": target, "severty": "info"},
    ]);
    let r = post_as(&url, JSON, firing.to_string(), Some(DEV_TOKEN)).await?;
    assert_eq!(r.status, 207, "{}", r.text);
    let codes: Vec<u64> = r.body["results"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["status"].as_u64()).collect())
        .unwrap_or_default();
    // The two firings race (a batch is handled concurrently): one creates,
    // the other counts; the typo is refused on its own.
    let mut firings = codes[..2].to_vec();
    firings.sort_unstable();
    assert_eq!(
        (firings.as_slice(), codes.get(2)),
        (&[201, 202][..], Some(&400))
    );
    assert!(
        r.body["results"][2]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("severty")
    );

    let resolved = json!({"name": "HighErrorRate", "id": "inc-1", "status": "resolved",
        "target": target, "endsAt": Timestamp::now().to_string()});
    let r = post_as(&url, JSON, resolved.to_string(), Some(DEV_TOKEN)).await?;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"], "resolved");
    // The duplicate was answered from the Redis journal; its count follows.
    let rrs = eventually("both firings counted", Duration::from_secs(20), || async {
        let rrs = requests(&admin, &ns).await?;
        Ok((rrs.len() == 1 && rrs[0].occurrence_count() >= 2).then_some(rrs))
    })
    .await?;
    assert_eq!(
        r.body["request"],
        rrs[0].metadata.name.clone().unwrap_or_default().as_str()
    );
    assert_eq!(rrs[0].spec.source.as_str(), "generic");
    let status = rrs[0].status.clone().unwrap_or_default();
    assert!(status.signal_resolution.is_some());
    assert_eq!(status.deduplication.map(|d| d.occurrence_count), Some(2));

    let r = post_as(&url, JSON, "[1, 2]", Some(DEV_TOKEN)).await?;
    assert_eq!(r.status, 207, "{}", r.text);
    let r = post_as(&url, JSON, "\"hello\"", Some(DEV_TOKEN)).await?;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.content_type, "application/problem+json");
    Ok(())
}

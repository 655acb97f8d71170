//! A real Alertmanager (Debian's prometheus-alertmanager) notifying the
//! gateway through its webhook receiver, with the bearer token from its
//! `http_config`: alerts injected through its API become one request per
//! incident, later notifications are counted, and a resolution is recorded
//! on the request (K-GW-2).

use std::time::Duration;

use kube::Api;
use kube::api::ListParams;
use kubernaut_api::RemediationRequest;
use kubernaut_api::k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubernaut_e2e::{
    AlertmanagerServer, DEV_TOKEN, Gateway, Stack, deployment_with_pods, eventually,
    managed_namespace,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_webhook_notifications_become_requests_and_resolutions() -> anyhow::Result<()>
{
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "am-real", "production").await?;
    let pods: Vec<String> = deployment_with_pods(&admin, &ns, "web", 2)
        .await?
        .into_iter()
        .collect();
    let gw = Gateway::start(stack, Some(&stack.redis_url), "gw-am").await?;
    let am = AlertmanagerServer::start(&gw.url("alertmanager"), DEV_TOKEN).await?;
    let rrs: Api<RemediationRequest> = Api::namespaced(admin.clone(), &ns);

    let starts_at = (Timestamp::now() - SignedDuration::from_secs(60)).to_string();
    let alert = |name: &str, pod: &str, ends_at: Option<String>| {
        let mut a = json!({
            "labels": {"alertname": name, "namespace": ns, "pod": pod, "severity": "critical"},
            "annotations": {"summary": format!("{name} on {pod}")},
            "generatorURL": "http://prometheus.local/graph",
            "startsAt": starts_at,
        });
        if let Some(e) = ends_at {
            a["endsAt"] = json!(e);
        }
        a
    };

    // Two alerts, two groups, one Deployment: one request, both counted.
    am.post_alerts(&json!([alert("KubePodCrashLooping", &pods[0], None)]))
        .await?;
    am.post_alerts(&json!([alert("KubePodNotReady", &pods[1], None)]))
        .await?;
    let rr = eventually("one request counting both alerts", TIMEOUT, || async {
        let items = rrs.list(&ListParams::default()).await?.items;
        let counted = items.first().and_then(|r| {
            r.status
                .as_ref()?
                .deduplication
                .as_ref()
                .map(|d| d.occurrence_count)
        });
        Ok((items.len() == 1 && counted >= Some(2)).then(|| items[0].clone()))
    })
    .await
    .map_err(|e| e.context(am.log()))?;
    assert_eq!(rr.spec.target.kind, "Deployment");
    assert_eq!(rr.spec.target.name, "web");
    assert_eq!(rr.spec.source.as_str(), "alertmanager");
    assert_eq!(rr.spec.labels.get("namespace"), Some(&ns));

    // Alertmanager reports the first alert resolved.
    let ended = Timestamp::now().to_string();
    am.post_alerts(&json!([alert(
        "KubePodCrashLooping",
        &pods[0],
        Some(ended)
    )]))
    .await?;
    let name = rr.metadata.name.clone().unwrap_or_default();
    let resolution = eventually("the resolution on the request", TIMEOUT, || async {
        Ok(rrs
            .get_status(&name)
            .await?
            .status
            .and_then(|s| s.signal_resolution))
    })
    .await
    .map_err(|e| e.context(am.log()))?;
    let status = rrs.get_status(&name).await?.status.unwrap_or_default();
    let instances = status
        .deduplication
        .map(|d| d.recent_instances)
        .unwrap_or_default();
    assert!(
        instances.contains(&resolution.instance_id),
        "the resolution names one of the request's alerts"
    );
    assert_eq!(rrs.list(&ListParams::default()).await?.items.len(), 1);
    Ok(())
}

/// A port free when asked may be taken by the time a server binds it (by a
/// server another test started in between): the start goes on, on another
/// port, and never takes what answers on the taken one for its server.
#[tokio::test]
async fn a_server_whose_port_was_taken_starts_again_on_another() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let held = taken.local_addr()?.port();
    let ports = [held, kubernaut_e2e::free_port()?];
    let mut next = ports.into_iter();
    let am = kubernaut_e2e::retry_while_port_taken("Alertmanager", || {
        let port = next.next().unwrap_or(held);
        AlertmanagerServer::start_on(port, "http://127.0.0.1:9/hook", DEV_TOKEN)
    })
    .await?;
    assert_eq!(am.url, format!("http://127.0.0.1:{}", ports[1]));
    assert!(
        !am.log()
            .to_ascii_lowercase()
            .contains("address already in use"),
        "the log is the running server's own"
    );
    // With every port taken, it says why (not that a minute passed).
    let err = kubernaut_e2e::retry_while_port_taken("Alertmanager", || {
        AlertmanagerServer::start_on(held, "http://127.0.0.1:9/hook", DEV_TOKEN)
    })
    .await
    .err()
    .expect("no start on a port that stays taken");
    assert!(
        format!("{err:#}")
            .to_ascii_lowercase()
            .contains("address already in use"),
        "{err:#}"
    );
    drop(taken);
    Ok(())
}

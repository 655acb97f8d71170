//! Verification latency, the window excluded (issue 16): N Deployments run
//! by the pod simulator, one rollout_restart request each, a control plane
//! with a zero-second window asking a real Alertmanager and a real
//! Prometheus. A watch timestamps each request when it is first seen
//! Verifying and when it ends; the difference is the effect check, the
//! baseline, the four scorers and the status writes. It prints p50, p95,
//! p99 and max, and asserts nothing.
//!
//!   cargo bench -p kubernaut-e2e --bench verification -- [N]
//!
//! N defaults to 50 (requests at once).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use kubernaut_api::{Phase, RemediationRequest};
use kubernaut_e2e::{
    AlertmanagerServer, Exporter, PrometheusServer, Stack, control_plane, create_request_with,
    deployments, eventually, managed_namespace, overrides,
};
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "bench-verify", "development").await?;
    let targets = deployments(&admin, &ns, "svc", n, 1).await?;
    let deploys = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), &ns);
    eventually(
        "every Deployment available",
        Duration::from_secs(300),
        || async {
            let list = deploys.list(&Default::default()).await?;
            let up = list
                .items
                .iter()
                .filter(|d| d.status.as_ref().and_then(|s| s.available_replicas) == Some(1))
                .count();
            Ok((up == n).then_some(()))
        },
    )
    .await?;
    let exporter = Exporter::start("bench_errors 0\n").await?;
    let prometheus = PrometheusServer::start(&[exporter.addr.to_string()]).await?;
    let am = AlertmanagerServer::start("http://127.0.0.1:9/", "unused").await?;
    let settings = [
        ("VERIFICATION__WINDOW_SECONDS", "0".to_string()),
        ("VERIFICATION__ALERTMANAGER_URL", am.url.clone()),
        ("VERIFICATION__PROMETHEUS_URL", prometheus.url.clone()),
    ];
    let rules = json!([{"signal": "BenchVerify", "action": "rollout_restart",
        "parameters": {"kind": "Deployment", "namespace": "{{target.namespace}}", "name": "{{target.name}}"},
        "verifyQuery": "bench_errors{job=\"test\"} > 0"}]);
    let running = control_plane(stack, &ns, &overrides(&settings), rules).await?;

    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn(
        watcher(api.clone(), watcher::Config::default())
            .applied_objects()
            .for_each(move |rr| {
                if let Ok(rr) = rr {
                    let _ = tx.send((Instant::now(), rr));
                }
                async {}
            }),
    );
    let started = Instant::now();
    for t in &targets {
        let labels = json!({"alertname": "BenchVerify", "namespace": ns, "deployment": t.name});
        create_request_with(
            &admin,
            "BenchVerify",
            t,
            false,
            json!({"source": "alertmanager", "labels": labels}),
        )
        .await?;
    }
    let mut verifying: HashMap<String, Instant> = HashMap::new();
    let mut took: Vec<Duration> = Vec::new();
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while took.len() < n && Instant::now() < deadline {
        let Ok(Some((at, rr))) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
        else {
            continue;
        };
        let name = rr.metadata.name.clone().unwrap_or_default();
        let phase = rr.phase();
        if phase == Phase::Verifying {
            verifying.entry(name).or_insert(at);
        } else if phase.is_terminal()
            && let Some(from) = verifying.remove(&name)
        {
            took.push(at - from);
            let outcome = rr
                .status
                .as_ref()
                .and_then(|s| s.verification.as_ref())
                .and_then(|v| v.outcome)
                .map_or("none", |o| o.as_str());
            *outcomes.entry(format!("{phase}/{outcome}")).or_default() += 1;
        }
    }
    watch.abort();
    let elapsed = started.elapsed();
    took.sort();
    let q = |p: f64| {
        took.get(((took.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "verification latency, window excluded ({} of {n} requests, all at once):",
        took.len()
    );
    println!(
        "  p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        q(0.50).as_secs_f64() * 1000.0,
        q(0.95).as_secs_f64() * 1000.0,
        q(0.99).as_secs_f64() * 1000.0,
        took.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    println!(
        "  outcomes: {outcomes:?}; all {n} ended in {:.1} s",
        elapsed.as_secs_f64()
    );
    running.shutdown().await?;
    Ok(())
}

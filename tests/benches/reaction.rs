//! Reaction time on the rule path (issue 18): from an alert posted to the
//! gateway to the first mutating API call of its remediation, end to end,
//! on the real local stack. N Deployments, one Alertmanager notification
//! each, sent at RATE per second (open loop) to a control plane whose rule
//! restarts the Deployment without approval; a watch of the Deployments
//! timestamps the rollout_restart's patch (the pod template's
//! `restartedAt`) as the API server reports it. It prints p50, p95, p99 and
//! max of (patch seen − alert sent), and asserts nothing. A watch of the
//! requests splits that time into stages: the alert's answer, the request
//! seen by a watch, its status first seen Executing (one write carrying the
//! phase, the plan, the claim and the step's write-ahead record, which the
//! action waits for; the step claims the target's lock, reads the target
//! and makes the server-side dry run meanwhile) and the patch.
//!
//!   cargo bench -p kubernaut-e2e --bench reaction -- [N] [RATE]
//!
//! N defaults to 200, RATE to 20 alerts/s.
//! It first waits until no earlier run's namespace is still being deleted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use kubernaut_api::{Phase, RemediationRequest};
use kubernaut_e2e::{Stack, control_plane, deployments, managed_namespace, post, quiet_namespaces};
use serde_json::json;

const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<f64>().ok());
    let n = args.next().map_or(200, |v| v as usize);
    let rate = args.next().unwrap_or(20.0);
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    quiet_namespaces(&admin).await?;
    let ns = managed_namespace(&admin, "bench-react", "development").await?;
    let targets = deployments(&admin, &ns, "app", n, 1).await?;
    let rules = json!([{"signal": "BenchReact", "action": "rollout_restart",
        "parameters": {"kind": "Deployment", "namespace": "{{target.namespace}}", "name": "{{target.name}}"}}]);
    // One alert name over many targets would be a storm: here each is its
    // own incident.
    let settings = [("GATEWAY__STORM__ENABLED", "false")];
    let running = control_plane(stack, &ns, &settings, rules).await?;
    let url = format!(
        "http://{}/api/v1/signals/alertmanager",
        running.gateway_addr
    );

    let deploys = Api::<Deployment>::namespaced(admin.clone(), &ns);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn(
        watcher(deploys, watcher::Config::default())
            .applied_objects()
            .for_each(move |d| {
                if let Ok(d) = d {
                    let restarted = d
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.metadata.as_ref())
                        .and_then(|m| m.annotations.as_ref())
                        .is_some_and(|a| a.contains_key(RESTARTED_AT));
                    if restarted {
                        let _ = tx.send((Instant::now(), d.metadata.name.unwrap_or_default()));
                    }
                }
                async {}
            }),
    );

    // Per target: when its request was first seen, and first seen Executing.
    let requests = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    let (stage_tx, mut stage_rx) = tokio::sync::mpsc::unbounded_channel();
    let stages = tokio::spawn(
        watcher(requests, watcher::Config::default())
            .applied_objects()
            .for_each(move |r| {
                if let Ok(r) = r {
                    let executing = r.status.as_ref().is_some_and(|s| {
                        s.phase == Phase::Executing
                            || s.phase_history.iter().any(|t| t.phase == Phase::Executing)
                    });
                    let _ = stage_tx.send((Instant::now(), r.spec.target.name, executing));
                }
                async {}
            }),
    );

    let every = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut senders = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let due = started + every.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        sent.insert(t.name.clone(), due);
        let body = json!({
            "version": "4", "status": "firing", "receiver": "kubernaut",
            "groupKey": "{}:{alertname=\"BenchReact\"}", "truncatedAlerts": 0,
            "groupLabels": {"alertname": "BenchReact"}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://alertmanager.local",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "BenchReact", "namespace": ns, "deployment": t.name,
                           "severity": "warning"},
                "annotations": {}, "startsAt": "2026-11-22T03:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus.local",
                "fingerprint": format!("react-{i:06}"),
            }],
        })
        .to_string();
        let url = url.clone();
        senders.push(tokio::spawn(async move {
            let answer = post(&url, "application/json", body).await;
            (answer, Instant::now())
        }));
    }
    let mut codes: HashMap<u16, usize> = HashMap::new();
    let mut answered: HashMap<String, Instant> = HashMap::new();
    for (s, t) in senders.into_iter().zip(&targets) {
        let (answer, at) = s.await?;
        *codes.entry(answer.map_or(0, |r| r.status)).or_default() += 1;
        answered.insert(t.name.clone(), at);
    }
    let due = sent.clone();
    let mut patched_at: HashMap<String, Instant> = HashMap::new();
    let mut took: Vec<Duration> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while took.len() < n && Instant::now() < deadline {
        let Ok(Some((at, name))) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
        else {
            continue;
        };
        if let Some(from) = sent.remove(&name) {
            took.push(at.saturating_duration_since(from));
            patched_at.insert(name, at);
        }
    }
    watch.abort();
    stages.abort();
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut executing: HashMap<String, Instant> = HashMap::new();
    while let Ok((at, name, is_executing)) = stage_rx.try_recv() {
        seen.entry(name.clone()).or_insert(at);
        if is_executing {
            executing.entry(name).or_insert(at);
        }
    }
    let mut stage = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for (name, patched) in &patched_at {
        let (Some(&from), Some(&answer), Some(&created), Some(&exec)) = (
            due.get(name),
            answered.get(name),
            seen.get(name),
            executing.get(name),
        ) else {
            continue;
        };
        let points = [from, answer, created, exec, *patched];
        for (i, s) in stage.iter_mut().enumerate() {
            s.push(points[i + 1].saturating_duration_since(points[i]));
        }
    }
    took.sort();
    let q = |took: &[Duration], p: f64| {
        took.get(((took.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0
    };
    println!(
        "reaction time, alert sent -> rollout_restart's patch seen ({} of {n} alerts at {rate}/s; answers {codes:?}):",
        took.len()
    );
    println!(
        "  p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        q(&took, 0.50),
        q(&took, 0.95),
        q(&took, 0.99),
        took.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    println!("  by stage (p50 / p99 ms):");
    let names = [
        "sent -> answered (the gateway's create)",
        "answered -> request seen by a watch",
        "seen -> status Executing seen (the step's write-ahead record with the phase)",
        "Executing seen -> patch seen (the patch; its dry run went ahead)",
    ];
    for (name, mut s) in names.iter().zip(stage) {
        s.sort();
        println!("    {name}: {:.0} / {:.0}", q(&s, 0.5), q(&s, 0.99));
    }
    running.shutdown().await?;
    // Its rollouts would otherwise go on loading the API server under the
    // next measurement.
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin)
        .delete(&ns, &Default::default())
        .await?;
    Ok(())
}

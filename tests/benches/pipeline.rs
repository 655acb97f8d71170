//! The supervision tree under load, on the real local stack: N requests
//! driven concurrently through the actor pipeline of a control plane (the
//! release binary, as its own process, as in a pod), every cluster call
//! going to the real API server. It prints figures; it asserts nothing.
//!
//!   cargo bench -p kubernaut-e2e --bench pipeline -- [N] [--memory-only]
//!
//! N defaults to 1000; `--memory-only` stops after the first part;
//! `--notify-only` runs only the third.
//!
//!   cargo bench -p kubernaut-e2e --bench pipeline -- N --waiting
//!
//! holds N storm requests waiting for approval instead: one live
//! supervisor each and no polling, so that N = 10 000 measures the tree's
//! memory rather than 10 000 steps polling their locks on the API server.
//! `--payload=BYTES` gives each an alert as received of that size (the
//! gateway stores the alert in the request; by default it is `{}`).
//!
//! 1. Memory: N requests on N Deployments whose target locks another
//!    holder has, so every request stays Executing with its whole tree live
//!    (supervisor, workflow actor, step actor waiting on the Lease watch).
//!    RSS per live tree = (the control plane's RSS with N trees − before) / N, and the
//!    Lease requests the API server served meanwhile.
//! 2. Throughput, rollout_restart: the locks released, N requests finish
//!    (real action, verified when the controller-manager observed it),
//!    compared with the cluster's own rate for the same rollouts with no
//!    controller (measured before the control plane starts).
//! 3. Throughput, notify_only: N new requests from creation to Completed,
//!    then the API server's own rate of status merge patches on them (the
//!    limit the mutating run is compared with).
//!
//! Before the control plane starts, the API server's own rate for what a
//! notify-only request costs it (created, one status write, one Event),
//! with no controller: the limit the notify-only run is compared with.
//! Once it has stopped, the same again with status writes as large as the
//! controller's (a Completed request's status): what of the difference is
//! the size of what is written. The notify-only run also prints its API
//! calls per request, by verb and resource.
//!
//! Mailbox wait p99 per actor kind comes from the control plane's own
//! histogram (`kubernaut_controller_actor_mailbox_wait_seconds`), over all
//! three runs.
//!
//! The notify-only run prints the control plane's CPU time per request: on
//! two cores shared with the API server, what the control plane spends is
//! what the API server cannot. Every run first waits until no namespace is
//! being deleted: an earlier run's namespace keeps the namespace
//! controller deleting its thousands of objects for a minute or more, and
//! three back-to-back notify-only runs measured meanwhile gave 162, 130
//! and 125 requests/s (143, 144 and 148 with the wait).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kubernaut_api::{ObjectRef, Phase, RemediationRequest};
use kubernaut_e2e::{
    ControllerProcess, Stack, controller_cluster, create_request, create_request_with, deployments,
    get, kubernaut_release_binary, managed_namespace, quiet_namespaces,
};
use serde_json::json;

const CONCURRENCY: usize = 16;
/// What every report runs on.
const SETUP: &str =
    "real API server, the control plane's release binary as its own process, 2 cores";

/// Waits until the Deployment controller has caught up with `n` new
/// Deployments in `ns` (each observed, with its ReplicaSet): its work on
/// them (ReplicaSets, their status, Events) would otherwise load the API
/// server during what is measured next.
async fn settle(admin: &kube::Client, ns: &str, n: usize) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    let deployments = Api::<Deployment>::namespaced(admin.clone(), ns);
    let sets = Api::<ReplicaSet>::namespaced(admin.clone(), ns);
    let start = Instant::now();
    loop {
        let observed = deployments
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|d| {
                d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
            })
            .count();
        let with_sets = sets.list(&ListParams::default()).await?.items.len();
        if observed >= n && with_sets >= n {
            // The last status writes and Events of the controller.
            tokio::time::sleep(Duration::from_secs(3)).await;
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(600) {
            anyhow::bail!(
                "the Deployment controller did not catch up: {observed} observed, {with_sets} ReplicaSets of {n}"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The control plane's status writes so far, from its `/metrics`.
fn patch_count(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("kubernaut_controller_status_patch_seconds_count ")?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Requests of `signal` in `ns` by phase.
async fn phases(
    api: &Api<RemediationRequest>,
    signal: &str,
) -> anyhow::Result<BTreeMap<&'static str, usize>> {
    let mut by = BTreeMap::new();
    for rr in api.list(&ListParams::default()).await?.items {
        if rr.spec.signal_name == signal {
            *by.entry(rr.phase().as_str()).or_default() += 1;
        }
    }
    Ok(by)
}

/// What the bench's wait reads of a request: its signal and its phase.
/// The whole typed request (its spec, the alert as received, its status's
/// history) would cost the bench's process, which shares the cores with
/// what it measures, several times as much to parse per watch event.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignalOf {
    #[serde(default)]
    signal_name: String,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
struct PhaseOf {
    #[serde(default)]
    phase: Phase,
}

type Progress = kube::core::Object<SignalOf, PhaseOf>;

/// Waits until `n` requests of `signal` satisfy `done`; returns when.
/// It watches the namespace rather than listing it: a list of thousands
/// of requests every few seconds cost the API server a quarter of its CPU
/// in the notify-only run (its pprof), load that was measured against
/// the control plane, and a poll's period blurred the end time.
async fn wait_for(
    api: &Api<RemediationRequest>,
    signal: &str,
    n: usize,
    what: &str,
    done: impl Fn(Phase) -> bool,
) -> anyhow::Result<Instant> {
    use kube::runtime::{WatchStreamExt as _, watcher};
    let start = Instant::now();
    let resource = kube::core::ApiResource::erase::<RemediationRequest>(&());
    let api: Api<Progress> = Api::namespaced_with(
        api.clone().into_client(),
        api.namespace().unwrap_or_default(),
        &resource,
    );
    let mut seen: BTreeMap<String, Phase> = BTreeMap::new();
    // How many of `seen` are done, kept as events come: counting the map
    // on every event would cost the bench's process, which shares the
    // cores with what it measures, O(n) per event.
    let mut count = 0usize;
    let mut told = Instant::now();
    let events = watcher(api, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    let by = |seen: &BTreeMap<String, Phase>| {
        let mut by: BTreeMap<&'static str, usize> = BTreeMap::new();
        for p in seen.values() {
            *by.entry(p.as_str()).or_default() += 1;
        }
        by
    };
    loop {
        let event = tokio::time::timeout(Duration::from_secs(2), events.try_next()).await;
        match event {
            Ok(Ok(Some(watcher::Event::Apply(rr) | watcher::Event::InitApply(rr))))
                if rr.spec.signal_name == signal =>
            {
                if let Some(name) = rr.metadata.name.clone() {
                    let phase = rr.status.map(|s| s.phase).unwrap_or_default();
                    count += usize::from(done(phase));
                    if let Some(was) = seen.insert(name, phase) {
                        count -= usize::from(done(was));
                    }
                }
            }
            Ok(Ok(Some(watcher::Event::Delete(rr)))) => {
                if let Some(was) = rr.metadata.name.as_ref().and_then(|n| seen.remove(n)) {
                    count -= usize::from(done(was));
                }
            }
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(Ok(None)) => anyhow::bail!("{what}: the watch ended"),
            Ok(Err(e)) => eprintln!("  {what}: watch error (retrying): {e}"),
        }
        if count >= n {
            return Ok(Instant::now());
        }
        if start.elapsed() > Duration::from_secs(3600) {
            anyhow::bail!("{what}: gave up after an hour: {:?}", by(&seen));
        }
        if told.elapsed() >= Duration::from_secs(2) {
            eprintln!("  {what}: {count}/{n} {:?}", by(&seen));
            told = Instant::now();
        }
    }
}

async fn create_all(
    admin: &kube::Client,
    signal: &str,
    targets: &[ObjectRef],
) -> anyhow::Result<()> {
    futures::stream::iter(targets)
        .map(|t| create_request(admin, signal, t, false))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// p99 of every actor kind's mailbox wait, from the Prometheus text.
fn mailbox_p99(text: &str) -> BTreeMap<String, (f64, f64)> {
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) =
            line.strip_prefix("kubernaut_controller_actor_mailbox_wait_seconds_bucket{")
        else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap_or_default();
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix("=\""))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        let (Some(actor), Some(le)) = (label("actor"), label("le")) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(0.0)
        };
        buckets
            .entry(actor)
            .or_default()
            .push((le, value.trim().parse().unwrap_or(0.0)));
    }
    buckets
        .into_iter()
        .map(|(actor, mut b)| {
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            let total = b.last().map_or(0.0, |x| x.1);
            let p99 = b
                .iter()
                .find(|(_, c)| *c >= 0.99 * total)
                .map_or(0.0, |x| x.0);
            (actor, (p99, total))
        })
        .collect()
}

/// Requests the API server has served so far, by verb and resource (with
/// its subresource), every client's and every answer code's, from its own
/// `apiserver_request_total`.
async fn api_calls(admin: &kube::Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let req = hyper::Request::get("/metrics").body(Vec::new())?;
    let text = admin.request_text(req).await?;
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix("=\"")?.strip_suffix('"'))
                .unwrap_or("")
        };
        let sub = label("subresource");
        let key = format!(
            "{} {}{}{sub}",
            label("verb"),
            label("resource"),
            if sub.is_empty() { "" } else { "/" }
        );
        *calls.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(calls)
}

/// API calls per request since `before` (every client's), most first,
/// leaving out those under 0.05.
async fn calls_since(
    admin: &kube::Client,
    before: &BTreeMap<String, f64>,
    n: usize,
) -> anyhow::Result<Vec<(String, f64)>> {
    let mut calls: Vec<(String, f64)> = api_calls(admin)
        .await?
        .into_iter()
        .map(|(k, v)| {
            let per = (v - before.get(&k).copied().unwrap_or(0.0)) / n as f64;
            (k, per)
        })
        .filter(|(_, per)| *per >= 0.05)
        .collect();
    calls.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(calls)
}

/// `calls` as the report's line has them: "VERB resource 1.00, ...".
fn listed(calls: &[(String, f64)]) -> String {
    calls
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Requests to the API server about Leases so far (every client's: the
/// membership renewals too).
async fn lease_requests(admin: &kube::Client) -> anyhow::Result<f64> {
    Ok(api_calls(admin)
        .await?
        .iter()
        .filter(|(k, _)| k.ends_with(" leases"))
        .map(|(_, v)| v)
        .sum())
}

/// The API server's own rate of status merge patches on `requests`, at
/// the bench's concurrency: the limit a mutating pipeline is measured
/// against.
async fn raw_status_patches(
    api: &Api<RemediationRequest>,
    names: &[String],
) -> anyhow::Result<f64> {
    let start = Instant::now();
    futures::stream::iter(names.iter().enumerate())
        .map(|(i, name)| async move {
            let patch = json!({"status": {"message": format!("bench patch {i}")}});
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(names.len() as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let memory_only = std::env::args().any(|a| a == "--memory-only");
    let notify_only = std::env::args().any(|a| a == "--notify-only");
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    quiet_namespaces(&admin).await?;
    let ns = managed_namespace(&admin, "bench", "staging").await?;
    eprintln!("pipeline bench: N = {n}, namespace {ns}");
    if std::env::args().any(|a| a == "--waiting") {
        let payload = std::env::args()
            .find_map(|a| a.strip_prefix("--payload=")?.parse().ok())
            .unwrap_or(0);
        return waiting(stack, &admin, &ns, n, payload).await;
    }
    let targets = deployments(&admin, &ns, "svc", n, 0).await?;
    let cluster = controller_cluster(stack).await?;
    let held_targets = if notify_only {
        &targets[..0]
    } else {
        &targets[..]
    };
    let locks: Vec<_> = futures::stream::iter(held_targets)
        .map(|t| {
            let cluster = cluster.clone();
            async move {
                let lock = kubernaut_cluster::lock_name(t);
                cluster
                    .claim_lease(&lock, "bench-holder", Duration::from_secs(3600))
                    .await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .flatten()
        .collect();
    settle(&admin, &ns, n).await?;
    eprintln!(
        "  {n} deployments (observed, with their ReplicaSets) and their target locks are ready"
    );

    let rules = json!([
        {"signal": "BenchRestart", "workflow": [{
            "id": "restart", "action": "rollout_restart", "retries": 10000,
            "parameters": {"kind": "Deployment", "namespace": "{{target.namespace}}", "name": "{{target.name}}"}
        }]},
        {"signal": "BenchNotify", "action": "notify_only"}
    ]);
    // Before any control plane runs, so that nothing else loads the API server.
    let (raw_rate, raw_ns) = raw_pipeline(&admin, &targets, None, false).await?;
    eprintln!("  raw: {raw_rate:.0} requests/s");
    let raw_rollout_rate = if notify_only {
        0.0
    } else {
        let rate = raw_rollouts(&admin, &targets).await?;
        eprintln!("  raw rollouts: {rate:.0}/s");
        settle(&admin, &ns, n).await?;
        rate
    };
    // The remediation budget would hold all but its first thousand
    // requests for approval: every one of the N is to run.
    let budget = n.max(10_000).to_string();
    let running = ControllerProcess::start_binary(
        kubernaut_release_binary()?,
        stack,
        &ns,
        "bench",
        &[
            ("CONTROLLER__VERIFY_TIMEOUT_SECONDS", "1800"),
            ("CONTROLLER__TIMEOUTS__EXECUTING_SECONDS", "3600"),
            ("CONTROLLER__BUDGET__MAX_EXECUTING_PER_NAMESPACE", &budget),
            ("CONTROLLER__BUDGET__MAX_STARTS_PER_MINUTE", &budget),
        ],
        rules,
    )
    .await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    if notify_only {
        let notify = notify_run(&admin, &api, &running, &targets).await?;
        println!("pipeline bench, N = {n}, notify_only ({SETUP})");
        notify.print(n);
        notify.print_limits(n, raw_rate);
        println!(
            "  raw status merge patches, concurrency {CONCURRENCY}: {:.0}/s",
            notify.patch_rate
        );
        print_mailboxes(&notify.metrics);
        drop(running);
        let raw_like_ns = notify.raw_like_written(&admin, &targets).await?;
        for raw in std::iter::once(raw_ns).chain(raw_like_ns) {
            cleanup(&admin, &raw).await?;
        }
        return cleanup(&admin, &ns).await;
    }
    let metrics = |running: &ControllerProcess| {
        let url = format!("http://{}/metrics", running.admin_addr);
        async move { get(&url).await.map(|(_, t)| t) }
    };
    let live = |text: &str, actor: &str| {
        let sample = format!("kubernaut_controller_actors_live{{actor=\"{actor}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&sample)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };

    // 1. Memory with N live trees.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = running.rss_kib()? / 1024.0;
    let start = Instant::now();
    create_all(&admin, "BenchRestart", &targets).await?;
    let created = start.elapsed();
    wait_for(&api, "BenchRestart", n, "held Executing", |p| {
        p == Phase::Executing
    })
    .await?;
    // Every step is waiting for its lock. What that costs the API server:
    tokio::time::sleep(Duration::from_secs(5)).await;
    let leases_before = lease_requests(&admin).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let waiting_leases = lease_requests(&admin).await? - leases_before;
    let text = metrics(&running).await?;
    let held = running.rss_kib()? / 1024.0;
    let trees = live(&text, "supervisor");
    let report_live = format!(
        "supervisors {trees}, workflows {}, steps {}",
        live(&text, "workflow"),
        live(&text, "step")
    );

    if memory_only {
        println!("pipeline bench, N = {n} ({SETUP})");
        println!(
            "  memory: RSS {before:.1} MiB before, {held:.1} MiB with {report_live} live: {:.1} KiB per live tree",
            (held - before) * 1024.0 / trees.max(1.0)
        );
        println!(
            "  {n} requests created in {:.1} s; all Executing after {:.1} s",
            created.as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
        println!(
            "  waiting for locks held elsewhere: {waiting_leases:.0} Lease requests to the API server in 10 s (membership renewals included)"
        );
        print_mailboxes(&text);
        drop(running);
        futures::stream::iter(locks)
            .for_each_concurrent(CONCURRENCY, |claim| claim.release())
            .await;
        cleanup(&admin, &raw_ns).await?;
        return cleanup(&admin, &ns).await;
    }

    // 2. Release: the rollouts happen and are verified.
    let calls_before = api_calls(&admin).await?;
    let released = Instant::now();
    for claim in locks {
        claim.release().await;
    }
    let restarted = wait_for(&api, "BenchRestart", n, "restarted", |p| p.is_terminal()).await?;
    let restart_secs = restarted.duration_since(released).as_secs_f64();
    let restart_done = phases(&api, "BenchRestart").await?;
    let restart_calls = calls_since(&admin, &calls_before, n).await?;

    // 3. The whole pipeline, creation to Completed.
    let notify = notify_run(&admin, &api, &running, &targets).await?;
    let restart_rate = n as f64 / restart_secs;
    println!("pipeline bench, N = {n} ({SETUP})");
    println!(
        "  memory: RSS {before:.1} MiB before, {held:.1} MiB with {report_live} live: {:.1} KiB per live tree",
        (held - before) * 1024.0 / trees.max(1.0)
    );
    println!(
        "  waiting for locks held elsewhere: {waiting_leases:.0} Lease requests to the API server in 10 s (membership renewals included)"
    );
    println!(
        "  rollout_restart: {n} requests finished {restart_secs:.1} s after their locks were released: {restart_rate:.0} requests/s; {restart_done:?}"
    );
    println!(
        "  raw status merge patches, concurrency {CONCURRENCY}: {:.0}/s; rollout_restart at {:.3} x that",
        notify.patch_rate,
        restart_rate / notify.patch_rate
    );
    println!(
        "  raw rollout restarts (the pod template patched until the Deployment controller observed it), concurrency {CONCURRENCY}: {raw_rollout_rate:.0}/s; rollout_restart at {:.3} x that",
        restart_rate / raw_rollout_rate
    );
    println!(
        "  API calls per rollout_restart request from the release to the end (every client's, the cluster's rollouts too): {}",
        listed(&restart_calls)
    );
    notify.print(n);
    notify.print_limits(n, raw_rate);
    println!(
        "  (creating the {n} held requests took {:.1} s)",
        created.as_secs_f64()
    );
    print_mailboxes(&notify.metrics);
    drop(running);
    let raw_like_ns = notify.raw_like_written(&admin, &targets).await?;
    for raw in std::iter::once(raw_ns).chain(raw_like_ns) {
        cleanup(&admin, &raw).await?;
    }
    cleanup(&admin, &ns).await
}

/// The API server's own rate for what a notify-only request costs it, at
/// the bench's concurrency and without a controller: the request created,
/// one status write (a merge patch) and one Event. Done in a namespace
/// of its own, which no control plane watches; `targets` only name the
/// requests' targets. The status write carries a phase and a message, or,
/// given `like`, a status the controller wrote, so that the limit is
/// measured with the controller's own object sizes.
async fn raw_pipeline(
    admin: &kube::Client,
    targets: &[ObjectRef],
    like: Option<&serde_json::Value>,
    apply: bool,
) -> anyhow::Result<(f64, String)> {
    use k8s_openapi::api::events::v1::Event;
    let ns = managed_namespace(admin, "bench-raw", "staging").await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    let events = Api::<Event>::namespaced(admin.clone(), &ns);
    let body = |phase: &str, i: usize| match like {
        Some(status) => {
            let mut status = status.clone();
            status["phase"] = json!(phase);
            status["message"] = json!(format!("raw {i}"));
            json!({ "status": status })
        }
        None => json!({"status": {"phase": phase, "message": format!("raw {i}")}}),
    };
    let start = Instant::now();
    futures::stream::iter(targets.iter().enumerate())
        .map(|(i, t)| {
            let (api, events, ns, body) = (api.clone(), events.clone(), ns.clone(), &body);
            async move {
                let mut t = t.clone();
                t.namespace = ns.clone();
                let name = create_request(admin, "BenchRaw", &t, false).await?;
                for (phase, reason) in [("Completed", "NothingChanged")] {
                    let mut body = body(phase, i);
                    if apply {
                        body["apiVersion"] = json!("kubernaut.io/v1alpha1");
                        body["kind"] = json!("RemediationRequest");
                        body["metadata"] = json!({"name": name});
                        let pp = PatchParams::apply("bench").force();
                        api.patch_status(&name, &pp, &Patch::Apply(&body)).await?;
                    } else {
                        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
                            .await?;
                    }
                    let event: Event = serde_json::from_value(json!({
                        "metadata": {"name": format!("{name}.{reason}").to_lowercase(), "namespace": ns},
                        "regarding": {"apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
                                      "namespace": ns, "name": name},
                        "eventTime": "2026-01-01T00:00:00.000000Z",
                        "type": "Normal", "reason": reason, "action": "Transition",
                        "note": format!("raw {i} {phase}"),
                        "reportingController": "bench", "reportingInstance": "bench",
                    }))?;
                    events.create(&PostParams::default(), &event).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok((targets.len() as f64 / start.elapsed().as_secs_f64(), ns))
}

/// The cluster's own rate for a rollout restart, with no controller: each
/// of `targets`' pod templates annotated as `kubectl rollout restart` does,
/// at the bench's concurrency, until the Deployment controller has
/// observed every new generation (what Kubernaut's verification waits
/// for). The limit the rollout_restart run is compared with.
async fn raw_rollouts(admin: &kube::Client, targets: &[ObjectRef]) -> anyhow::Result<f64> {
    use k8s_openapi::api::apps::v1::Deployment;
    let Some(ns) = targets.first().map(|t| t.namespace.clone()) else {
        return Ok(0.0);
    };
    let api = Api::<Deployment>::namespaced(admin.clone(), &ns);
    let start = Instant::now();
    let wanted: BTreeMap<String, i64> = futures::stream::iter(targets)
        .map(|t| {
            let api = api.clone();
            async move {
                let patch = json!({"spec": {"template": {"metadata": {"annotations": {
                    "kubectl.kubernetes.io/restartedAt": "raw rollout"
                }}}}});
                let d = api
                    .patch(&t.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                anyhow::Ok((t.name.clone(), d.metadata.generation.unwrap_or_default()))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    loop {
        let observed = api
            .list(&ListParams::default().match_any())
            .await?
            .items
            .iter()
            .filter(|d| {
                let name = d.metadata.name.as_deref().unwrap_or_default();
                let observed = d.status.as_ref().and_then(|s| s.observed_generation);
                wanted
                    .get(name)
                    .is_some_and(|w| observed.unwrap_or(0) >= *w)
            })
            .count();
        if observed >= wanted.len() {
            return Ok(wanted.len() as f64 / start.elapsed().as_secs_f64());
        }
        if start.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!(
                "raw rollouts: {observed} of {} observed after 30 minutes",
                wanted.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the notify-only run measured.
struct Notify {
    created: Duration,
    secs: f64,
    writes_per_request: f64,
    /// The control plane's CPU seconds from the first create until the
    /// last request ended, plus the wait for its last Events.
    cpu: f64,
    done: BTreeMap<&'static str, usize>,
    patch_rate: f64,
    /// A Completed request's status, as the controller wrote it.
    written: Option<serde_json::Value>,
    /// API calls per request while it ran, by verb and resource (every
    /// client's: the bench's creates and polling lists too).
    calls: Vec<(String, f64)>,
    metrics: String,
}

/// Part 3: one notify-only request per target, creation to Completed, then
/// the raw status-patch rate on the same requests.
async fn notify_run(
    admin: &kube::Client,
    api: &Api<RemediationRequest>,
    running: &ControllerProcess,
    targets: &[ObjectRef],
) -> anyhow::Result<Notify> {
    let n = targets.len();
    let url = format!("http://{}/metrics", running.admin_addr);
    let patches_before = patch_count(&get(&url).await?.1);
    let calls_before = api_calls(admin).await?;
    let cpu_before = running.cpu_secs()?;
    let start = Instant::now();
    create_all(admin, "BenchNotify", targets).await?;
    let created = start.elapsed();
    let notified = wait_for(api, "BenchNotify", n, "notified", |p| p.is_terminal()).await?;
    let secs = notified.duration_since(start).as_secs_f64();
    // The control plane's last Events may still be on their way.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Its CPU, with the Events and audit records of the last requests:
    // on two shared cores, what it spends the API server cannot.
    let cpu = running.cpu_secs()? - cpu_before;
    let calls = calls_since(admin, &calls_before, n).await?;
    let done = phases(api, "BenchNotify").await?;
    let metrics = get(&url).await?.1;
    let writes_per_request = (patch_count(&metrics) - patches_before) / n as f64;
    let notified: Vec<RemediationRequest> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|rr| rr.spec.signal_name == "BenchNotify")
        .collect();
    // A status the controller wrote, for the raw pipeline's second run.
    let written = notified
        .iter()
        .find(|rr| rr.phase() == Phase::Completed)
        .and_then(|rr| rr.status.as_ref())
        .map(serde_json::to_value)
        .transpose()?;
    let names: Vec<String> = notified
        .into_iter()
        .filter_map(|rr| rr.metadata.name)
        .collect();
    let patch_rate = raw_status_patches(api, &names).await?;
    Ok(Notify {
        created,
        secs,
        writes_per_request,
        cpu,
        done,
        patch_rate,
        written,
        calls,
        metrics,
    })
}

impl Notify {
    /// The API server's own rates, measured in the same run.
    fn print_limits(&self, n: usize, raw_rate: f64) {
        println!(
            "  raw pipeline (create, one status patch, one Event per request), concurrency {CONCURRENCY}: {raw_rate:.0} requests/s; notify_only at {:.3} x that",
            n as f64 / self.secs / raw_rate
        );
    }

    /// The raw pipeline again, its status writes as large as the
    /// controller's, once the control plane has stopped (and before any
    /// namespace is deleted: the deletion would load the API server).
    /// Twice: by merge patch, and by server-side apply as the controller
    /// writes. Returns the namespaces it used.
    async fn raw_like_written(
        &self,
        admin: &kube::Client,
        targets: &[ObjectRef],
    ) -> anyhow::Result<Vec<String>> {
        let Some(written) = &self.written else {
            println!("  raw pipeline with the controller's status: no request Completed");
            return Ok(Vec::new());
        };
        let bytes = serde_json::to_vec(written)?.len();
        let mut used = Vec::new();
        for (apply, how) in [(false, "merge patch"), (true, "server-side apply")] {
            let (rate, ns) = raw_pipeline(admin, targets, Some(written), apply).await?;
            println!(
                "  raw pipeline with the controller's status ({bytes} bytes of JSON) by {how}, concurrency {CONCURRENCY}: {rate:.0} requests/s; notify_only at {:.3} x that",
                targets.len() as f64 / self.secs / rate
            );
            used.push(ns);
        }
        Ok(used)
    }

    fn print(&self, n: usize) {
        println!(
            "  notify_only: {n} requests created in {:.1} s, all ended {:.1} s after the first: {:.0} requests/s, {:.2} status writes per request; {:?}",
            self.created.as_secs_f64(),
            self.secs,
            n as f64 / self.secs,
            self.writes_per_request,
            self.done
        );
        println!(
            "  the control plane's CPU: {:.2} s, {:.2} ms per request",
            self.cpu,
            self.cpu * 1000.0 / n as f64
        );
        println!(
            "  API calls per notify_only request (every client's): {}",
            listed(&self.calls)
        );
    }
}

/// Deletes the bench's namespace (its thousands of objects would slow the
/// shared stack's other users down).
async fn cleanup(admin: &kube::Client, ns: &str) -> anyhow::Result<()> {
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .delete(ns, &Default::default())
        .await?;
    Ok(())
}

/// N storm requests, each waiting for approval with its supervisor live.
async fn waiting(
    stack: &Stack,
    admin: &kube::Client,
    ns: &str,
    n: usize,
    payload: usize,
) -> anyhow::Result<()> {
    let target = deployments(admin, ns, "svc", 1, 0).await?;
    let running = ControllerProcess::start_binary(
        kubernaut_release_binary()?,
        stack,
        ns,
        "bench",
        &[("CONTROLLER__TIMEOUTS__APPROVAL_SECONDS", "3600")],
        json!([]),
    )
    .await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = running.rss_kib()? / 1024.0;
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|_| {
            let extra = if payload == 0 {
                json!({})
            } else {
                let alert = json!({"alerts": [{"labels": {"alertname": "BenchStorm"},
                    "annotations": {"description": ""}}]});
                let padding = payload.saturating_sub(alert.to_string().len());
                let mut alert = alert;
                alert["alerts"][0]["annotations"]["description"] = json!("x".repeat(padding));
                json!({"originalPayload": alert.to_string()})
            };
            create_request_with(admin, "BenchStorm", &target[0], true, extra)
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let created = start.elapsed();
    wait_for(&api, "BenchStorm", n, "waiting for approval", |p| {
        p == Phase::AwaitingApproval
    })
    .await?;
    let waited = start.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, text) = get(&format!("http://{}/metrics", running.admin_addr)).await?;
    let held = running.rss_kib()? / 1024.0;
    let sample = "kubernaut_controller_actors_live{actor=\"supervisor\"} ";
    let live = text
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    println!(
        "pipeline bench, N = {n} waiting requests, alerts of {} bytes ({SETUP})",
        payload.max(2)
    );
    println!(
        "  memory: RSS {before:.1} MiB before, {held:.1} MiB with {live} live supervisors: {:.1} KiB per live supervisor",
        (held - before) * 1024.0 / live.max(1.0)
    );
    println!(
        "  {n} requests created in {:.1} s; all AwaitingApproval ({:.2} status writes each) after {:.1} s: {:.0} requests/s",
        created.as_secs_f64(),
        patch_count(&text) / n as f64,
        waited.as_secs_f64(),
        n as f64 / waited.as_secs_f64()
    );
    print_mailboxes(&text);
    drop(running);
    cleanup(admin, ns).await
}

fn print_mailboxes(metrics: &str) {
    println!("  mailbox wait p99 by actor (messages):");
    for (actor, (p99, count)) in mailbox_p99(metrics) {
        println!(
            "    {actor:<13} p99 <= {:>9.3} ms  ({count} messages)",
            p99 * 1000.0
        );
    }
}

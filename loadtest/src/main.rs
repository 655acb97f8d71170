//! The alert-storm runner (K-OP-4): fires Alertmanager notifications at the
//! gateway with a chosen concurrency or rate, set of targets and share of
//! re-deliveries, and reports throughput, latency percentiles, status codes,
//! and requests created against what was expected. `--svg` draws latency
//! over time; `--csv` keeps every sample.
//!
//! `--raw-create` measures the limit instead: the same number of
//! RemediationRequests created straight on the API server (`$KUBECONFIG`)
//! at the same concurrency, so that a report can give the gateway's
//! new-signal rate as a share of what the API server itself allows. They
//! are minimal requests; with `--like NAME` each is a copy of that request
//! of the namespace (one the gateway created) under a new name and
//! fingerprint, so that the API server stores exactly as much per request
//! as it does for the gateway.
//! `--distinct-alertnames` gives every new alert its own name, so that
//! storm detection (one name over many targets) does not aggregate them.
//!
//! `--scenario FILE` runs a storm described in YAML instead (phases, mixed
//! sources, end-to-end accounting, a Markdown report with plots): see
//! [`scenario`].

mod plot;
mod scenario;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Fire an alert storm at the Kubernaut gateway and report what happened")]
struct Args {
    /// The Alertmanager endpoint of the gateway; several (comma-separated,
    /// one per replica) take the notifications in turn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080/api/v1/signals/alertmanager"
    )]
    url: Vec<String>,
    /// Bearer token.
    #[arg(long, env = "KUBERNAUT_DEV_TOKEN", default_value = "dev-token")]
    token: String,
    /// Namespace of the target pods.
    #[arg(long, required_unless_present = "scenario", default_value = "")]
    namespace: String,
    /// Target pods, comma-separated (`kubectl get pods -o name` without `pod/`).
    #[arg(long, value_delimiter = ',', required_unless_present = "scenario")]
    pods: Vec<String>,
    /// Run this scenario (loadtest/scenarios/*.yaml) instead: it makes its
    /// own namespaces and targets ($KUBECONFIG: an admin) and sends to the
    /// gateways of --url, given as base URLs (http://127.0.0.1:8080).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Scenario mode: the admin endpoints (/metrics) of the replicas.
    #[arg(long, value_delimiter = ',')]
    admin_url: Vec<String>,
    /// Scenario mode: where the report goes.
    #[arg(long, default_value = "target/loadtest")]
    out: PathBuf,
    /// Scenario mode: a PKCS#8 DER RSA key to sign SNS messages with; the
    /// gateway must trust its certificate (gateway.cloudwatch).
    #[arg(long)]
    sns_key: Option<PathBuf>,
    /// Scenario mode: the SNS topic the messages come from.
    #[arg(
        long,
        default_value = "arn:aws:sns:eu-west-1:123456789012:kubernaut-loadtest"
    )]
    sns_topic: String,
    /// Notifications to send.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Notifications in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Notifications per second (open loop); 0 sends as fast as answers come.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Share (0..=1) of notifications that re-deliver an alert already sent.
    #[arg(long, default_value_t = 0.0)]
    duplicate_share: f64,
    /// Alert names to cycle through.
    #[arg(long, value_delimiter = ',', default_value = "KubePodCrashLooping")]
    alertnames: Vec<String>,
    /// Every new alert gets its own name (the first of --alertnames with a
    /// number), so that the new-signal path is measured, not storms.
    #[arg(long)]
    distinct_alertnames: bool,
    /// Create the requests on the API server directly instead (the limit
    /// the new-signal path is measured against).
    #[arg(long)]
    raw_create: bool,
    /// With --raw-create: copy this request of the namespace instead of
    /// creating minimal ones.
    #[arg(long, requires = "raw_create")]
    like: Option<String>,
    /// Requests the storm should create (printed next to what it did create).
    #[arg(long)]
    expect_created: Option<usize>,
    /// After the run, read every request in the namespace (`$KUBECONFIG`)
    /// and check that each accepted alert is accounted for: the requests'
    /// occurrence counts add up to the alerts answered 201 or 202. Use a
    /// namespace of its own for the run.
    #[arg(long)]
    account: bool,
    /// A label for this run in the report.
    #[arg(long, default_value = "storm")]
    label: String,
    #[arg(long)]
    csv: Option<PathBuf>,
    #[arg(long)]
    svg: Option<PathBuf>,
}

struct Sample {
    at: Duration,
    latency: Duration,
    status: u16,
}

/// The alert of notification `i`: re-deliveries repeat an earlier alert's
/// identity exactly (fingerprint and startsAt), new alerts get a new one.
fn alert_for(args: &Args, i: usize, run: &str) -> serde_json::Value {
    let share = args.duplicate_share.clamp(0.0, 1.0);
    // Spread re-deliveries evenly: notification i is new when the count of
    // new ones so far falls behind (1 - share) * (i + 1).
    let new_before = ((1.0 - share) * i as f64).ceil() as usize;
    let new_now = ((1.0 - share) * (i + 1) as f64).ceil() as usize;
    let id = if new_now > new_before || new_before == 0 {
        new_before
    } else {
        // Re-deliver one of the alerts sent so far, round robin.
        i % new_before.max(1)
    };
    let pod = &args.pods[id % args.pods.len()];
    let base = &args.alertnames[id % args.alertnames.len()];
    let name = if args.distinct_alertnames {
        format!("{base}{id:06}")
    } else {
        base.clone()
    };
    json!({
        "status": "firing",
        "labels": {"alertname": name, "namespace": args.namespace, "pod": pod, "severity": "warning"},
        "annotations": {"summary": format!("loadtest {run} alert {id}")},
        "startsAt": "2026-11-22T03:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://loadtest.local",
        "fingerprint": format!("{run}-{id:08}"),
    })
}

fn notification(alert: serde_json::Value) -> String {
    json!({
        "version": "4", "groupKey": "loadtest", "truncatedAlerts": 0, "status": "firing",
        "receiver": "kubernaut", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://loadtest.local", "alerts": [alert],
    })
    .to_string()
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    token: &str,
    body: String,
) -> u16 {
    let req = match hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body)))
    {
        Ok(r) => r,
        Err(_) => return 0,
    };
    match tokio::time::timeout(Duration::from_secs(60), client.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            // Read the body so that the connection goes back to the pool.
            let _ = resp.into_body().collect().await;
            status
        }
        // 0: no answer (connection error or 60 s timeout).
        _ => 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Points a plot draws at most: beyond that, each point stands for a run
/// of consecutive samples and is the slowest of them (a failed one first),
/// so the tail stays visible and the file stays small.
const MAX_POINTS: usize = 2000;

fn svg(samples: &[Sample], title: &str) -> String {
    let mut by_time: Vec<&Sample> = samples.iter().collect();
    by_time.sort_by_key(|s| s.at);
    let per_point = by_time.len().div_ceil(MAX_POINTS).max(1);
    let points: Vec<&Sample> = by_time
        .chunks(per_point)
        .filter_map(|run| {
            run.iter()
                .copied()
                .max_by_key(|s| (!(200..300).contains(&s.status), s.latency))
        })
        .collect();
    let title = if per_point > 1 {
        format!("{title} (each point the slowest of {per_point})")
    } else {
        title.to_string()
    };
    let (w, h, pad) = (800.0, 400.0, 50.0);
    let max_t = samples.iter().map(|s| ms(s.at)).fold(1.0, f64::max);
    let max_l = samples.iter().map(|s| ms(s.latency)).fold(1.0, f64::max);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20">{title}: latency (ms, up to {max_l:.1}) over time (ms, up to {max_t:.0})</text>
<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>
"#,
        h - pad,
        w - pad / 2.0,
        h - pad,
        h - pad
    );
    for s in points {
        let x = pad + ms(s.at) / max_t * (w - 1.5 * pad);
        let y = h - pad - ms(s.latency) / max_l * (h - 2.0 * pad);
        let color = match s.status {
            201 => "green",
            202 => "steelblue",
            200 | 207 => "gray",
            _ => "red",
        };
        let _ = writeln!(
            out,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="1.5" fill="{color}"/>"#
        );
    }
    out.push_str(
        r#"<text x="60" y="390" fill="green">201 created</text><text x="160" y="390" fill="steelblue">202 duplicate</text><text x="270" y="390" fill="red">other</text></svg>"#,
    );
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.scenario {
        let s = scenario::Scenario::load(path)?;
        let sns = match &args.sns_key {
            Some(key) => Some(scenario::SnsSigner::load(key, args.sns_topic.clone())?),
            None => None,
        };
        let trim = |u: &String| u.trim_end_matches('/').to_string();
        return scenario::run(
            s,
            scenario::Options {
                gateways: args.url.iter().map(trim).collect(),
                admins: args.admin_url.iter().map(trim).collect(),
                token: args.token.clone(),
                sns,
                out: args.out.clone(),
            },
        )
        .await;
    }
    if args.concurrency == 0 || args.requests == 0 {
        bail!("--concurrency and --requests must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.duplicate_share) {
        bail!("--duplicate-share must be between 0 and 1");
    }
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    if args.raw_create {
        return raw_create(&args, &run).await;
    }
    let bodies: Vec<String> = (0..args.requests)
        .map(|i| notification(alert_for(&args, i, &run)))
        .collect();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency)
        .build(connector);

    let (client, args_ref, bodies) = (&client, &args, &bodies);
    let (samples, elapsed) = fire(&args, |i| async move {
        let url = &args_ref.url[i % args_ref.url.len()];
        send(client, url, &args_ref.token, bodies[i].clone()).await
    })
    .await;
    report(&args, &samples, elapsed)?;
    if args.account {
        let accepted = samples
            .iter()
            .filter(|s| s.status == 201 || s.status == 202)
            .count();
        account(&args, accepted as i64).await?;
    }
    Ok(())
}

/// Every accepted alert ends in a request or a counted duplicate (a storm
/// member is counted on its storm request): the occurrence counts of the
/// namespace's requests add up to the accepted alerts.
async fn account(args: &Args, accepted: i64) -> anyhow::Result<()> {
    use kubernaut_api::RemediationRequest;
    let client = kube::Client::try_default()
        .await
        .context("a client for $KUBECONFIG")?;
    let api: kube::Api<RemediationRequest> = kube::Api::namespaced(client, &args.namespace);
    let all = api.list(&kube::api::ListParams::default()).await?.items;
    let storms = all.iter().filter(|r| r.spec.storm.is_some()).count();
    let counted: i64 = all.iter().map(RemediationRequest::occurrence_count).sum();
    let lost = accepted - counted;
    println!(
        "accounted: {counted} of {accepted} accepted alerts in {} requests ({storms} storm requests); lost {lost}",
        all.len()
    );
    if lost != 0 {
        bail!("{lost} accepted alerts are not accounted for");
    }
    Ok(())
}

/// RemediationRequests created straight on the API server, as the gateway
/// would create them, `--concurrency` at a time.
async fn raw_create(args: &Args, run: &str) -> anyhow::Result<()> {
    use kubernaut_api::RemediationRequest;
    let client = kube::Client::try_default()
        .await
        .context("a client for $KUBECONFIG")?;
    let api: kube::Api<RemediationRequest> = kube::Api::namespaced(client, &args.namespace);
    let like = match &args.like {
        Some(name) => {
            let mut rr = api.get(name).await.context("the request to copy")?;
            rr.status = None;
            rr.metadata = kube::api::ObjectMeta {
                labels: rr.metadata.labels.take(),
                annotations: rr.metadata.annotations.take(),
                ..Default::default()
            };
            Some(rr)
        }
        None => None,
    };
    let like = &like;
    // The client's connections are opened before the clock starts, as the
    // gateway's are by the time it is measured: the limit is the API
    // server's, not a TLS handshake's.
    futures::future::try_join_all((0..args.concurrency).map(|i| {
        let api = api.clone();
        async move { api.get_opt(&format!("raw-{run}-warm-{i}")).await }
    }))
    .await
    .context("opening the client's connections")?;
    let (samples, elapsed) = fire(args, |i| {
        let api = api.clone();
        async move {
            let pod = &args.pods[i % args.pods.len()];
            let now = "2026-11-22T03:00:00Z";
            let rr: Result<RemediationRequest, _> = match like {
                // A copy: only the identity changes, and keeps its length.
                Some(like) => {
                    let mut rr = like.clone();
                    rr.metadata.name = Some(format!("raw-{run}-{i}"));
                    let renamed =
                        |old: &str| format!("{:0>w$}", format!("{run}{i}"), w = old.len());
                    let (fp, instance) =
                        (renamed(&rr.spec.fingerprint), renamed(&rr.spec.instance_id));
                    // The labels that index a request by digest prefix.
                    for v in rr.metadata.labels.iter_mut().flat_map(|l| l.values_mut()) {
                        for (old, new) in [
                            (&rr.spec.fingerprint, &fp),
                            (&rr.spec.instance_id, &instance),
                        ] {
                            if !v.is_empty() && old.starts_with(v.as_str()) {
                                *v = new[..v.len().min(new.len())].to_string();
                            }
                        }
                    }
                    (rr.spec.fingerprint, rr.spec.instance_id) = (fp, instance);
                    Ok(rr)
                }
                None => serde_json::from_value(json!({
                    "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
                    "metadata": {"name": format!("raw-{run}-{i}"), "namespace": args.namespace},
                    "spec": {
                        "fingerprint": format!("{run}-{i:08}"), "signalName": "RawCreate",
                        "severity": "warning", "source": "alertmanager",
                        "instanceId": format!("{run}-{i}"),
                        "target": {"kind": "Pod", "namespace": args.namespace, "name": pod},
                        "signalResource": {"kind": "Pod", "namespace": args.namespace, "name": pod},
                        "firingTime": now, "receivedTime": now, "originalPayload": "{}",
                    },
                })),
            };
            match rr {
                Ok(rr) => match api.create(&kube::api::PostParams::default(), &rr).await {
                    Ok(_) => 201,
                    Err(kube::Error::Api(e)) => e.code,
                    Err(_) => 0,
                },
                Err(_) => 0,
            }
        }
    })
    .await;
    report(args, &samples, elapsed)
}

/// Runs `one(i)` for every request, `--concurrency` at a time (at
/// `--rate` when set, each timed from when it was due); the samples and
/// the elapsed time.
async fn fire<F, Fut>(args: &Args, one: F) -> (Vec<Sample>, Duration)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let started = Instant::now();
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let one = &one;
    let samples = futures::stream::iter(0..args.requests)
        .map(|i| async move {
            // Open loop: latency counts from when the notification was due,
            // so a gateway that falls behind is not flattered by the
            // sender waiting for it (no coordinated omission).
            let due = match interval {
                Some(every) => {
                    let due = started + every.mul_f64(i as f64);
                    tokio::time::sleep_until(due.into()).await;
                    due
                }
                None => Instant::now(),
            };
            let status = one(i).await;
            Sample {
                at: due - started,
                latency: due.elapsed(),
                status,
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    (samples, started.elapsed())
}

fn report(args: &Args, samples: &[Sample], elapsed: Duration) -> anyhow::Result<()> {
    let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
    for s in samples {
        *codes.entry(s.status).or_default() += 1;
    }
    let mut lat: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    lat.sort_unstable();
    let created = codes.get(&201).copied().unwrap_or(0);
    println!("== loadtest: {}", args.label);
    println!(
        "sent {} notifications ({} alert each) to {} pods, concurrency {}, rate {}, duplicate share {:.2}",
        args.requests,
        1,
        args.pods.len(),
        args.concurrency,
        if args.rate > 0.0 {
            format!("{}/s", args.rate)
        } else {
            "unbounded".into()
        },
        args.duplicate_share
    );
    println!(
        "elapsed {:.2} s, throughput {:.0} alerts/s",
        elapsed.as_secs_f64(),
        args.requests as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        ms(percentile(&lat, 50.0)),
        ms(percentile(&lat, 90.0)),
        ms(percentile(&lat, 99.0)),
        ms(percentile(&lat, 100.0))
    );
    let codes_text: Vec<String> = codes
        .iter()
        .map(|(c, n)| {
            if *c == 0 {
                format!("no answer: {n}")
            } else {
                format!("{c}: {n}")
            }
        })
        .collect();
    println!("status codes: {}", codes_text.join(", "));
    match args.expect_created {
        Some(want) => println!("requests created: {created} (expected {want})"),
        None => println!("requests created: {created}"),
    }
    if let Some(path) = &args.csv {
        let mut out = String::from("sent_ms,latency_ms,status\n");
        for s in samples {
            let _ = writeln!(out, "{:.3},{:.3},{}", ms(s.at), ms(s.latency), s.status);
        }
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(samples, &args.label))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("plot: {}", path.display());
    }
    if let Some(want) = args.expect_created
        && want != created
    {
        bail!("created {created} requests, expected {want}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_run_is_plotted_in_bounded_points_keeping_its_failures_and_tail() {
        let samples: Vec<Sample> = (0..10_000u64)
            .map(|i| Sample {
                at: Duration::from_millis(i),
                latency: Duration::from_millis(if i == 7_777 { 900 } else { 5 }),
                status: if i == 1_234 { 503 } else { 202 },
            })
            .collect();
        let plot = svg(&samples, "run");
        assert_eq!(plot.matches("<circle").count(), MAX_POINTS);
        assert_eq!(
            plot.matches(r#"r="1.5" fill="red""#).count(),
            1,
            "the 503 is drawn"
        );
        assert!(
            plot.contains("up to 900.0"),
            "the slowest sample sets the scale"
        );
        assert!(plot.contains("each point the slowest of 5"));
        let short = svg(&samples[..10], "short");
        assert_eq!(short.matches("<circle").count(), 10);
    }
}

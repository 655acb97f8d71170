//! Self-monitoring, checked for real: Debian's Prometheus scrapes two
//! `kubernaut serve` replicas through a short storm (created, duplicate,
//! storm-aggregated, rejected and invalid signals; requests restarted,
//! verified and notified), loads deploy/'s alerting rules, and then every
//! query of every dashboard panel must return data, every rule must
//! evaluate without error, and every series a rule watches must exist with
//! the labels the rule names. A query that only has data after an event
//! this storm does not cause is listed in EVENT_ONLY with the reason.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kubernaut_api::RemediationRequest;
use kubernaut_e2e::{
    ControllerProcess, Stack, alertmanager_payload, deployment, deployment_with_pods, eventually,
    free_port, get, get_status, managed_namespace, post, repo_root, unique,
};
use serde_json::{Value, json};

/// Queries that have no data until something this test does not cause,
/// and why; each names a test that causes it.
const EVENT_ONLY: &[(&str, &str)] = &[
    (
        "kubernaut_controller_llm_",
        "no LLM is configured here; analysis_llm.rs runs a real one",
    ),
    (
        "kubernaut_controller_analysis_fallbacks_total",
        "only when an LLM is configured and the rules decide instead",
    ),
    (
        "kubernaut_controller_retention_deferred_total",
        "only when retention ends before PostgreSQL confirms the final record (retention.rs)",
    ),
    (
        "kubernaut_gateway_intake_redis_fallbacks_total",
        "only while Redis is unreachable (gateway_dedup.rs)",
    ),
    (
        "kubernaut_gateway_sns_subscriptions_total",
        "only when SNS confirms a subscription (gateway_cloudwatch.rs)",
    ),
];

fn event_only(expr: &str) -> Option<&'static str> {
    EVENT_ONLY
        .iter()
        .find(|(needle, _)| expr.contains(needle))
        .map(|(_, why)| *why)
}

/// Percent-encoding for a form field.
fn form(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus {
    url: String,
    child: Child,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Debian's prometheus, scraping `targets` (pod name, admin address)
    /// every second as job `kubernaut`, with deploy/'s rules loaded.
    async fn start(targets: &[(&str, SocketAddr)]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("prometheus"));
        std::fs::create_dir_all(dir.join("data"))?;
        kubernaut_e2e::prometheus_rule_file(&dir)?;
        let static_configs: Vec<Value> = targets
            .iter()
            .map(|(pod, addr)| json!({"targets": [addr.to_string()], "labels": {"pod": pod}}))
            .collect();
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [dir.join("rules.yaml")],
            "scrape_configs": [{"job_name": "kubernaut", "static_configs": static_configs}],
        });
        std::fs::write(
            dir.join("prometheus.yml"),
            serde_norway::to_string(&config)?,
        )?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus (scripts/deps.sh installs it)")?;
        let prometheus = Self {
            url: format!("http://{listen}"),
            child,
        };
        let ready = format!("{}/-/ready", prometheus.url);
        eventually(
            "Prometheus to be ready",
            Duration::from_secs(30),
            || async { Ok((get_status(&ready).await.ok() == Some(200)).then_some(())) },
        )
        .await
        .with_context(|| log_of(&dir))?;
        Ok(prometheus)
    }

    /// An instant query's result vector; an error when Prometheus refuses
    /// the expression.
    async fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let reply = post(
            &format!("{}/api/v1/query", self.url),
            "application/x-www-form-urlencoded",
            format!("query={}", form(expr)),
        )
        .await?;
        if reply.body["status"] != "success" {
            bail!("{expr}: {}", reply.text);
        }
        Ok(reply.body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
}

/// Every PromQL expression of every dashboard panel, with its panel.
fn dashboard_queries() -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("deploy/dashboards"))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let board: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        for panel in board["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                // Grafana's range variable, as a dashboard over the last
                // five minutes sets it.
                out.push((
                    format!("{file}: {}", panel["title"].as_str().unwrap_or("?")),
                    expr.replace("$__range", "5m"),
                ));
            }
        }
    }
    Ok(out)
}

/// The rules' alert names and expressions.
fn alerting_rules() -> anyhow::Result<Vec<(String, String)>> {
    let rule = kubernaut_e2e::prometheus_rule()?;
    Ok(rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| {
            Some((
                r["alert"].as_str().or(r["record"].as_str())?.to_string(),
                r["expr"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// The series selectors of an expression: metric name and the label names
/// its matchers use (`kubernaut_*` and `up`).
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let bytes = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && ident(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let name = &expr[start..i];
        let braces = expr[i..].starts_with('{');
        if !(name.starts_with("kubernaut_") || (name == "up" && braces)) {
            continue;
        }
        let mut labels = Vec::new();
        if braces && let Some(end) = expr[i..].find('}') {
            let inner = &expr[i + 1..i + end];
            let mut in_quotes = false;
            let mut current = String::new();
            for c in inner.chars() {
                match c {
                    '"' => in_quotes = !in_quotes,
                    ',' if !in_quotes => {
                        labels.push(std::mem::take(&mut current));
                        continue;
                    }
                    _ => {}
                }
                current.push(c);
            }
            labels.push(current);
            labels = labels
                .iter()
                .filter_map(|m| {
                    let name: String = m
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    (!name.is_empty()).then_some(name)
                })
                .collect();
            i += end + 1;
        }
        out.push((name.to_string(), labels));
    }
    out
}

#[test]
fn selectors_are_read_from_expressions() {
    assert_eq!(
        selectors(
            r#"sum by (pod) (rate(kubernaut_controller_x_total{result="failed", a=~"b,c"}[5m])) / up{job="kubernaut"} + rate(kubernaut_y[1m])"#
        ),
        vec![
            (
                "kubernaut_controller_x_total".to_string(),
                vec!["result".to_string(), "a".to_string()]
            ),
            ("up".to_string(), vec!["job".to_string()]),
            ("kubernaut_y".to_string(), vec![]),
        ]
    );
}

/// A webhook receiver that answers 200, for the notifier.
async fn sink() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alerting_rule_has_data_on_a_real_prometheus()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "selfmon", "staging").await?;
    let pods: Vec<String> = deployment_with_pods(&admin, &ns, "web", 2)
        .await?
        .into_iter()
        .collect();
    // Ten more targets for one alert name: a pattern storm in staging
    // (more than 8 distinct targets in the window).
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &ns);
    for i in 0..10 {
        deployments
            .create(&PostParams::default(), &deployment(&format!("app-{i}"), 0))
            .await?;
    }

    let hook = sink().await?;
    let receivers = json!([{"name": "sink", "webhook": {"url": format!("http://{hook}/hook")}}]);
    let overrides = [
        ("NOTIFICATIONS__RECEIVERS", receivers.to_string()),
        (
            "NOTIFICATIONS__ROUTES",
            json!([{"receiver": "sink"}]).to_string(),
        ),
        ("VERIFICATION__WINDOW_SECONDS", "2".to_string()),
    ];
    let overrides: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let rules = json!([
        {"signal": "KubePodCrashLooping", "action": "restart_pod",
         "parameters": {"namespace": "{{resource.namespace}}", "name": "{{resource.name}}"}},
        {"signal": "AppErrorBudgetBurn", "action": "notify_only"},
    ]);
    let a = ControllerProcess::start(stack, &ns, "selfmon-a", &overrides, rules.clone()).await?;
    let b = ControllerProcess::start(stack, &ns, "selfmon-b", &overrides, rules).await?;
    let prometheus =
        Prometheus::start(&[("selfmon-a", a.admin_addr), ("selfmon-b", b.admin_addr)]).await?;

    // The storm, over both replicas' gateways.
    let gateways = [a.gateway_addr, b.gateway_addr];
    let url = |i: usize, source: &str| {
        format!(
            "http://{}/api/v1/signals/{source}",
            gateways[i % gateways.len()]
        )
    };
    let now = chrono::Utc::now().to_rfc3339();
    let crash = alertmanager_payload(
        "KubePodCrashLooping",
        &ns,
        &[(pods[0].as_str(), "fp-crash")],
        &now,
    );
    for i in 0..4 {
        // The first creates; the others count as duplicates.
        let reply = post(&url(i, "alertmanager"), "application/json", crash.clone()).await?;
        ensure!(reply.status / 100 == 2, "{reply:?}");
    }
    let targets: Vec<(String, String)> = (0..10)
        .map(|i| (format!("app-{i}"), format!("fp-burn-{i}")))
        .collect();
    for (i, (name, fp)) in targets.iter().enumerate() {
        let alert = json!({
            "version": "4", "groupKey": "burn", "truncatedAlerts": 0, "status": "firing",
            "receiver": "kubernaut", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager.local",
            "alerts": [{"status": "firing", "labels": {"alertname": "AppErrorBudgetBurn",
                        "namespace": ns, "deployment": name, "severity": "warning"},
                        "annotations": {}, "startsAt": now, "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "", "fingerprint": fp}],
        });
        let reply = post(
            &url(i, "alertmanager"),
            "application/json",
            alert.to_string(),
        )
        .await?;
        ensure!(reply.status / 100 == 2, "{reply:?}");
    }
    // Refused: a namespace Kubernaut does not manage, and a bad payload.
    let outside = alertmanager_payload(
        "KubePodCrashLooping",
        "default",
        &[("nothing", "fp-out")],
        &now,
    );
    let _ = post(&url(0, "alertmanager"), "application/json", outside).await?;
    let bad = post(
        &url(1, "alertmanager"),
        "application/json",
        "{\"alerts\": 7}",
    )
    .await?;
    ensure!(bad.status == 400, "{bad:?}");

    // Every request ends, but the storm's, which waits for a human; the
    // restart is verified and notified.
    let requests = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    let settled = |r: &RemediationRequest| {
        r.phase().is_terminal() || r.phase() == kubernaut_api::Phase::AwaitingApproval
    };
    eventually(
        "every request to settle",
        Duration::from_secs(120),
        || async {
            let list = requests.list(&ListParams::default()).await?;
            let done = list.items.len() >= 3 && list.items.iter().all(settled);
            Ok(done.then_some(list.items.len()))
        },
    )
    .await
    .with_context(|| format!("{}\n{}", a.tail(), b.tail()))?;
    // Two successful scrapes of each replica after the end, so that every
    // counter the storm created has the two samples rate() needs. A fixed
    // five seconds was not enough on a loaded CI machine: one run found
    // every rate() empty, the gauges present (scrapes late or timed out).
    // The window is rounded down, so it never reaches back past the end.
    let settled_at = std::time::Instant::now();
    let scraped = eventually(
        "two successful scrapes of each replica after the storm",
        Duration::from_secs(90),
        || async {
            let window = settled_at.elapsed().as_secs().max(1);
            let scrapes = prometheus
                .query(&format!(
                    "sum_over_time(up{{job=\"kubernaut\"}}[{window}s])"
                ))
                .await?;
            let good = |r: &Value| {
                r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|n| n >= 2.0)
            };
            Ok((scrapes.len() == 2 && scrapes.iter().all(good)).then_some(()))
        },
    )
    .await;
    if let Err(e) = scraped {
        let targets = get(&format!("{}/api/v1/targets", prometheus.url)).await;
        return Err(e.context(targets.map(|t| t.1).unwrap_or_default()));
    }
    // ...and the rules evaluated on them.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut missing = Vec::new();
    let mut report = Vec::new();
    for (panel, expr) in dashboard_queries()? {
        let result = prometheus.query(&expr).await?;
        match (result.is_empty(), event_only(&expr)) {
            (false, _) => report.push(format!("data    {panel}: {expr}")),
            (true, Some(why)) => report.push(format!("event   {panel}: {expr} ({why})")),
            (true, None) => missing.push(format!("{panel}: {expr}")),
        }
    }
    for (alert, expr) in alerting_rules()? {
        // Firing or not, the expression is valid...
        prometheus
            .query(&expr)
            .await
            .with_context(|| format!("rule {alert}"))?;
        // ...and watches series that exist, with the labels it names.
        for (metric, labels) in selectors(&expr) {
            let by = labels.join(", ");
            let result = prometheus
                .query(&format!("group by ({by}) ({metric})"))
                .await?;
            let labelled = result.iter().any(|r| {
                labels
                    .iter()
                    .all(|l| r["metric"][l].as_str().is_some_and(|v| !v.is_empty()))
            });
            match (labelled, event_only(&metric)) {
                (true, _) => report.push(format!("series  {alert}: {metric}{{{by}}}")),
                (false, Some(why)) => report.push(format!("event   {alert}: {metric} ({why})")),
                (false, None) => missing.push(format!("rule {alert}: {metric} by ({by})")),
            }
        }
    }
    println!("{}", report.join("\n"));
    ensure!(
        missing.is_empty(),
        "no data for:\n{}\n(scraped: {})",
        missing.join("\n"),
        get(&format!("http://{}/metrics", a.admin_addr)).await?.1
    );

    // Prometheus evaluated every rule, and none failed.
    let rules = get(&format!("{}/api/v1/rules", prometheus.url)).await?;
    let rules: Value = serde_json::from_str(&rules.1)?;
    let evaluated: BTreeSet<String> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .map(|r| {
            ensure!(r["health"] == "ok", "a rule failed: {r}");
            Ok(r["name"].as_str().unwrap_or_default().to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(evaluated.len() == alerting_rules()?.len(), "{evaluated:?}");
    // Two healthy replicas: nothing of the availability group fires.
    let firing = prometheus.query("ALERTS{alertstate=\"firing\"}").await?;
    ensure!(
        !firing
            .iter()
            .any(|a| a["metric"]["alertname"] == "KubernautDown"),
        "{firing:?}"
    );
    Ok(())
}

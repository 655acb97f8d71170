//! Scenario mode: a storm described in YAML (`loadtest/scenarios/`), run
//! open loop against the gateway and followed to the end in the cluster.
//!
//! A scenario names its phases (ramp, steady, burst, quiet: an arrival
//! rate, linear from `rate` to `to` over the phase), the targets (fresh
//! namespaces of Deployments with pods, made by the runner), the alert-name
//! mix, the share of re-deliveries, the notification batch sizes and the
//! mix of sources: Alertmanager, CloudWatch through SNS (signed with a key
//! whose certificate the gateway trusts), Kubernetes events and the generic
//! webhook. Every notification is sent when it is due, whatever the
//! gateway's pace; its latency counts from then (no coordinated omission)
//! into HDR histograms. Meanwhile `/metrics` of every replica is scraped
//! each second for mailbox depth and wait. After the last phase the runner
//! waits for every request to settle and reports, from the cluster, what
//! each accepted alert became (created, duplicate or storm member: none
//! lost) and how long requests took to reach each phase.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kubernaut_api::{Phase, RemediationRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::plot;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub targets: Targets,
    pub alertnames: Vec<Weighted>,
    #[serde(default)]
    pub duplicate_share: f64,
    #[serde(default)]
    pub batch: Batch,
    pub sources: Sources,
    pub phases: Vec<PhaseSpec>,
    /// How long to wait, after the last phase, for every request to settle.
    #[serde(default = "default_settle")]
    pub settle_seconds: u64,
    /// Notifications in flight at most (the sender's own bound).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
}

fn default_settle() -> u64 {
    120
}

fn default_in_flight() -> usize {
    512
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Targets {
    pub namespaces: usize,
    pub deployments_per_namespace: usize,
    pub pods_per_deployment: usize,
    #[serde(default = "default_environment")]
    pub environment: String,
}

fn default_environment() -> String {
    "staging".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weighted {
    pub name: String,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub min: usize,
    pub max: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self { min: 1, max: 1 }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sources {
    #[serde(default)]
    pub alertmanager: f64,
    #[serde(default)]
    pub cloudwatch: f64,
    #[serde(default)]
    pub kubernetes_event: f64,
    #[serde(default)]
    pub generic: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    pub name: String,
    pub seconds: f64,
    /// Notifications per second at the start of the phase.
    pub rate: f64,
    /// ...and at its end (default: `rate`, a steady phase).
    #[serde(default)]
    pub to: Option<f64>,
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let s: Scenario =
            serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(!self.phases.is_empty(), "a scenario needs phases");
        ensure!(!self.alertnames.is_empty(), "a scenario needs alertnames");
        ensure!(
            (0.0..=1.0).contains(&self.duplicate_share),
            "duplicateShare is a share, 0..=1"
        );
        ensure!(
            self.batch.min >= 1 && self.batch.max >= self.batch.min,
            "batch: 1 <= min <= max"
        );
        let s = &self.sources;
        ensure!(
            [s.alertmanager, s.cloudwatch, s.kubernetes_event, s.generic]
                .iter()
                .all(|w| *w >= 0.0)
                && s.alertmanager + s.cloudwatch + s.kubernetes_event + s.generic > 0.0,
            "sources: weights >= 0, one of them > 0"
        );
        let t = &self.targets;
        ensure!(
            t.namespaces >= 1 && t.deployments_per_namespace >= 1 && t.pods_per_deployment >= 1,
            "targets: at least one namespace, deployment and pod"
        );
        for p in &self.phases {
            ensure!(
                p.seconds > 0.0 && p.rate >= 0.0 && p.to.unwrap_or(p.rate) >= 0.0,
                "phase {}: seconds > 0, rates >= 0",
                p.name
            );
        }
        Ok(())
    }

    /// When each notification is due, from the start, with its phase: the
    /// times at which the integral of the phase's rate passes each whole
    /// notification.
    pub fn schedule(&self) -> Vec<(Duration, usize)> {
        let mut out = Vec::new();
        let mut start = 0.0;
        for (i, p) in self.phases.iter().enumerate() {
            let (a, b, len) = (p.rate, p.to.unwrap_or(p.rate), p.seconds);
            // n(t) = a t + (b - a) t^2 / (2 len); solve n(t) = k for each k.
            let total = (a + b) / 2.0 * len;
            let mut k = 1.0;
            while k <= total + 1e-9 {
                let t = if (b - a).abs() < 1e-12 {
                    k / a
                } else {
                    let c = (b - a) / (2.0 * len);
                    (-a + (a * a + 4.0 * c * k).sqrt()) / (2.0 * c)
                };
                out.push((Duration::from_secs_f64(start + t.clamp(0.0, len)), i));
                k += 1.0;
            }
            start += len;
        }
        out
    }

    pub fn seconds(&self) -> f64 {
        self.phases.iter().map(|p| p.seconds).sum()
    }
}

/// A small deterministic generator (xorshift64*): the same scenario sends
/// the same storm.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Alertmanager,
    Cloudwatch,
    KubernetesEvent,
    Generic,
}

impl Source {
    const ALL: [Source; 4] = [
        Source::Alertmanager,
        Source::Cloudwatch,
        Source::KubernetesEvent,
        Source::Generic,
    ];

    fn path(self) -> &'static str {
        match self {
            Source::Alertmanager => "alertmanager",
            Source::Cloudwatch => "cloudwatch",
            Source::KubernetesEvent => "kubernetes-event",
            Source::Generic => "generic",
        }
    }
}

/// One alert's identity: re-delivering it sends exactly this again.
#[derive(Clone, Debug)]
struct Alert {
    id: String,
    name: String,
    namespace: String,
    /// The Deployment (its `app` label) and the pod first chosen; a pod a
    /// remediation has replaced since is swapped for a live one of the
    /// same Deployment when the alert is first sent (see [`Pods`]).
    app: String,
    pod: String,
}

/// One notification: its source, alerts and due time.
pub struct Shot {
    pub due: Duration,
    pub phase: usize,
    pub source: Source,
    alerts: Vec<Alert>,
}

/// The namespaces, Deployments and pods a run sends alerts about.
pub struct World {
    pub namespaces: Vec<String>,
    /// (namespace, deployment, its pods)
    pub deployments: Vec<(String, String, Vec<String>)>,
}

/// The notifications of a run: sources, batches, alert names and
/// re-deliveries drawn as the scenario says.
pub fn shots(s: &Scenario, world: &World, run: &str) -> Vec<Shot> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let weights: Vec<f64> = s.alertnames.iter().map(|w| w.weight).collect();
    let src = &s.sources;
    let source_weights = [
        src.alertmanager,
        src.cloudwatch,
        src.kubernetes_event,
        src.generic,
    ];
    let mut sent: BTreeMap<Source, Vec<Alert>> = BTreeMap::new();
    let mut n = 0usize;
    s.schedule()
        .into_iter()
        .map(|(due, phase)| {
            let source = Source::ALL[rng.pick(&source_weights)];
            // CloudWatch and Kubernetes events carry one alarm or event each.
            let size = match source {
                Source::Alertmanager | Source::Generic => {
                    s.batch.min + rng.below(s.batch.max - s.batch.min + 1)
                }
                _ => 1,
            };
            let alerts = (0..size)
                .map(|_| {
                    let earlier = sent.entry(source).or_default();
                    if !earlier.is_empty() && rng.unit() < s.duplicate_share {
                        return earlier[rng.below(earlier.len())].clone();
                    }
                    let (namespace, app, pods) =
                        &world.deployments[rng.below(world.deployments.len())];
                    n += 1;
                    let alert = Alert {
                        id: format!("{run}-{n:07}"),
                        name: s.alertnames[rng.pick(&weights)].name.clone(),
                        namespace: namespace.clone(),
                        app: app.clone(),
                        pod: pods[rng.below(pods.len())].clone(),
                    };
                    earlier.push(alert.clone());
                    alert
                })
                .collect();
            Shot {
                due,
                phase,
                source,
                alerts,
            }
        })
        .collect()
}

/// Signs SNS messages as SNS does (SignatureVersion 2: RSA, SHA-256),
/// with a key whose certificate the gateway trusts.
pub struct SnsSigner {
    key: ring::signature::RsaKeyPair,
    pub topic: String,
}

impl SnsSigner {
    /// `key`: a PKCS#8 DER RSA private key.
    pub fn load(key: &Path, topic: String) -> anyhow::Result<Self> {
        let der = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| anyhow::anyhow!("{}: not a PKCS#8 RSA key: {e}", key.display()))?;
        Ok(Self { key, topic })
    }

    fn body(&self, message_id: &str, message: String) -> anyhow::Result<String> {
        let timestamp = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        let msg = kubernaut_gateway::sns::SnsMessage {
            kind: "Notification".into(),
            message_id: message_id.into(),
            token: None,
            topic_arn: self.topic.clone(),
            subject: None,
            message,
            timestamp,
            signature_version: "2".into(),
            signature: String::new(),
            signing_cert_url: "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem".into(),
            subscribe_url: None,
            unsubscribe_url: None,
        };
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                msg.string_to_sign().as_bytes(),
                &mut signature,
            )
            .map_err(|_| anyhow::anyhow!("signing an SNS message failed"))?;
        Ok(json!({
            "Type": msg.kind, "MessageId": msg.message_id, "TopicArn": msg.topic_arn,
            "Message": msg.message, "Timestamp": msg.timestamp, "SignatureVersion": "2",
            "Signature": base64::engine::general_purpose::STANDARD.encode(signature),
            "SigningCertURL": msg.signing_cert_url,
            "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
        })
        .to_string())
    }
}

/// The live pods of the run's Deployments, kept by a watch, and the pod
/// each alert was sent about: as a monitoring system would, alerts name
/// pods that exist when they first fire (remediations replace pods), and a
/// re-delivery names the same pod again.
/// Live pod names by (namespace, Deployment).
type LivePods = BTreeMap<(String, String), Vec<String>>;

#[derive(Clone, Default)]
struct Pods {
    live: Arc<Mutex<LivePods>>,
    pinned: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Pods {
    fn watch(
        &self,
        client: &kube::Client,
        namespaces: &[String],
    ) -> Vec<tokio::task::JoinHandle<()>> {
        use futures::StreamExt;
        use k8s_openapi::api::core::v1::Pod;
        use kube::runtime::watcher;
        namespaces
            .iter()
            .map(|ns| {
                let api = Api::<Pod>::namespaced(client.clone(), ns);
                let (live, ns) = (self.live.clone(), ns.clone());
                tokio::spawn(async move {
                    let mut events = watcher(api, watcher::Config::default()).boxed();
                    while let Some(event) = events.next().await {
                        let (pod, gone) = match event {
                            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                                let gone = p.metadata.deletion_timestamp.is_some();
                                (p, gone)
                            }
                            Ok(watcher::Event::Delete(p)) => (p, true),
                            _ => continue,
                        };
                        let app = app_of(&pod);
                        let name = pod.metadata.name.unwrap_or_default();
                        let Ok(mut live) = live.lock() else { return };
                        let pods = live.entry((ns.clone(), app)).or_default();
                        pods.retain(|p| *p != name);
                        if !gone {
                            pods.push(name);
                        }
                    }
                })
            })
            .collect()
    }

    /// The pod `a` names: the one it was first sent about, else its first
    /// choice if still live, else a live pod of the same Deployment.
    fn of(&self, a: &Alert) -> String {
        let Ok(mut pinned) = self.pinned.lock() else {
            return a.pod.clone();
        };
        if let Some(p) = pinned.get(&a.id) {
            return p.clone();
        }
        let live = self.live.lock().ok().and_then(|l| {
            let pods = l.get(&(a.namespace.clone(), a.app.clone()))?;
            if pods.contains(&a.pod) || pods.is_empty() {
                return Some(a.pod.clone());
            }
            let h =
                a.id.bytes()
                    .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
            Some(pods[h % pods.len()].clone())
        });
        let pod = live.unwrap_or_else(|| a.pod.clone());
        pinned.insert(a.id.clone(), pod.clone());
        pod
    }
}

/// The body a shot POSTs, naming the pods `pods` gives its alerts.
fn body(shot: &Shot, sns: Option<&SnsSigner>, pods: &Pods) -> anyhow::Result<String> {
    let pinned: Vec<Alert> = shot
        .alerts
        .iter()
        .map(|a| Alert {
            pod: pods.of(a),
            ..a.clone()
        })
        .collect();
    let shot = &Shot {
        due: shot.due,
        phase: shot.phase,
        source: shot.source,
        alerts: pinned,
    };
    Ok(match shot.source {
        Source::Alertmanager => {
            let alerts: Vec<Value> = shot
                .alerts
                .iter()
                .map(|a| {
                    json!({
                        "status": "firing",
                        "labels": {"alertname": a.name, "namespace": a.namespace, "pod": a.pod,
                                   "severity": "warning"},
                        "annotations": {"summary": format!("loadtest alert {}", a.id)},
                        "startsAt": "2026-12-01T03:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://loadtest.local", "fingerprint": a.id,
                    })
                })
                .collect();
            json!({
                "version": "4", "groupKey": "loadtest", "truncatedAlerts": 0, "status": "firing",
                "receiver": "kubernaut", "groupLabels": {}, "commonLabels": {},
                "commonAnnotations": {}, "externalURL": "http://loadtest.local", "alerts": alerts,
            })
            .to_string()
        }
        Source::Generic => {
            let alerts: Vec<Value> = shot
                .alerts
                .iter()
                .map(|a| {
                    json!({"name": a.name, "id": a.id, "severity": "warning",
                           "target": {"kind": "Pod", "namespace": a.namespace, "name": a.pod}})
                })
                .collect();
            Value::Array(alerts).to_string()
        }
        Source::KubernetesEvent => {
            let a = &shot.alerts[0];
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": format!("{}.{}", a.pod, a.id), "namespace": a.namespace,
                             "uid": a.id},
                "involvedObject": {"kind": "Pod", "namespace": a.namespace, "name": a.pod,
                                   "apiVersion": "v1"},
                "reason": a.name, "message": format!("loadtest event {}", a.id),
                "type": "Warning", "count": 1,
                "firstTimestamp": "2026-12-01T03:00:00Z", "lastTimestamp": "2026-12-01T03:00:00Z",
                "source": {"component": "kubelet"},
            })
            .to_string()
        }
        Source::Cloudwatch => {
            let a = &shot.alerts[0];
            let sns = sns.context("the scenario sends CloudWatch alarms: give --sns-key")?;
            let alarm = json!({
                "AlarmName": a.name, "AlarmDescription": "loadtest alarm",
                "AWSAccountId": "123456789012", "NewStateValue": "ALARM",
                "NewStateReason": "Threshold Crossed", "StateChangeTime": "2026-12-01T03:00:00.000+0000",
                "Region": "EU (Ireland)",
                "AlarmArn": format!("arn:aws:cloudwatch:eu-west-1:123456789012:alarm:{}", a.name),
                "OldStateValue": "OK",
                "Trigger": {"MetricName": "pod_cpu_utilization", "Namespace": "ContainerInsights",
                            "StatisticType": "Statistic", "Statistic": "AVERAGE",
                            "Dimensions": [{"name": "Namespace", "value": a.namespace},
                                           {"name": "FullPodName", "value": a.pod}],
                            "Period": 60, "EvaluationPeriods": 1,
                            "ComparisonOperator": "GreaterThanThreshold", "Threshold": 90.0},
            });
            sns.body(&a.id, alarm.to_string())?
        }
    })
}

/// What one notification got.
pub struct Shotted {
    pub due: Duration,
    pub phase: usize,
    pub source: Source,
    pub latency: Duration,
    pub status: u16,
    pub alerts: usize,
    /// Alerts the gateway counted on a request (201, 202, or such an
    /// entry of a 207).
    pub accepted: usize,
    /// Each alert's identity (a re-delivery is the same alert again) and
    /// what the gateway said of it.
    said: Vec<(String, Said)>,
}

/// What the gateway said of one alert.
#[derive(Clone, Debug, PartialEq)]
struct Said {
    /// Counted on a request (201 or 202: created, duplicate, storm).
    counted: bool,
    /// The result, the reason it was not acted on, or the HTTP code.
    label: String,
    /// `namespace/name` of the request it was counted on.
    request: Option<String>,
}

/// What the gateway said of each of a notification's alerts, from the
/// answer or, for a 207, its entry for the alert (in the order sent).
fn outcomes(status: u16, body: &[u8], alerts: usize) -> Vec<Said> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let one = |status: u64, r: &Value| {
        let counted = status == 201 || status == 202;
        let label = match (r["result"].as_str(), r["reason"].as_str()) {
            (_, Some(reason)) if !counted => reason.to_string(),
            (Some(result), _) if (200..300).contains(&status) => result.to_string(),
            _ if status == 0 => "no answer".to_string(),
            _ => format!("HTTP {status}"),
        };
        let request = match (r["namespace"].as_str(), r["request"].as_str()) {
            (Some(ns), Some(name)) if counted => Some(format!("{ns}/{name}")),
            _ => None,
        };
        Said {
            counted,
            label,
            request,
        }
    };
    if status == 207 {
        let results = v["results"].as_array().cloned().unwrap_or_default();
        return (0..alerts)
            .map(|i| {
                let r = results.get(i).cloned().unwrap_or(Value::Null);
                one(r["status"].as_u64().unwrap_or(0), &r)
            })
            .collect();
    }
    vec![one(u64::from(status), &v); alerts]
}

/// Mailbox figures of all replicas at one scrape.
#[derive(Clone, Default)]
pub struct Scrape {
    pub at: Duration,
    /// Messages waiting, by actor kind (all replicas).
    pub depth: BTreeMap<String, f64>,
    /// Mailbox wait: (sum of seconds, count) by actor kind, cumulative.
    pub wait: BTreeMap<String, (f64, f64)>,
}

fn parse_metrics(text: &str, into: &mut Scrape) {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let actor = series
            .split_once("actor=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(a, _)| a.to_string());
        let Some(actor) = actor else { continue };
        if series.starts_with("kubernaut_controller_actor_mailbox_depth{") {
            *into.depth.entry(actor).or_default() += value;
        } else if series.starts_with("kubernaut_controller_actor_mailbox_wait_seconds_sum{") {
            into.wait.entry(actor).or_default().0 += value;
        } else if series.starts_with("kubernaut_controller_actor_mailbox_wait_seconds_count{") {
            into.wait.entry(actor).or_default().1 += value;
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn post(
    client: &HttpClient,
    url: &str,
    token: &str,
    source: Source,
    body: String,
) -> (u16, Bytes) {
    let content_type = if source == Source::Cloudwatch {
        "text/plain; charset=UTF-8"
    } else {
        "application/json"
    };
    let mut req = hyper::Request::post(url).header("content-type", content_type);
    if source == Source::Cloudwatch {
        req = req.header("x-amz-sns-message-type", "Notification");
    } else {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let Ok(req) = req.body(Full::new(Bytes::from(body))) else {
        return (0, Bytes::new());
    };
    match tokio::time::timeout(Duration::from_secs(60), client.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, body)
        }
        _ => (0, Bytes::new()),
    }
}

/// Where and how a scenario runs.
pub struct Options {
    pub gateways: Vec<String>,
    pub admins: Vec<String>,
    pub token: String,
    pub sns: Option<SnsSigner>,
    pub out: PathBuf,
}

/// Makes the scenario's namespaces (managed, pods simulated, Kubernaut's
/// actions bound), Deployments, and waits for their pods.
async fn world(s: &Scenario, client: &kube::Client, run: &str) -> anyhow::Result<World> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let t = &s.targets;
    let mut world = World {
        namespaces: Vec::new(),
        deployments: Vec::new(),
    };
    for n in 0..t.namespaces {
        let ns = format!("storm-{run}-{n}");
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns,
            "labels": {"kubernaut.io/managed": "true", "kubernaut.io/environment": t.environment,
                       "podsim.kubernaut.io/enabled": "true", "kubernaut.io/loadtest": run}}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "kubernaut-actions", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "kubernaut-actions"},
            "subjects": [{"kind": "ServiceAccount", "name": "kubernaut",
                          "namespace": "kubernaut-system"}],
        }))?;
        Api::<RoleBinding>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &binding)
            .await?;
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        for d in 0..t.deployments_per_namespace {
            let name = format!("app-{d}");
            let dep: Deployment = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"replicas": t.pods_per_deployment,
                         "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}},
                                      "spec": {"containers": [{"name": "app",
                                               "image": "registry.local/app:1.0"}]}}}
            }))?;
            deployments.create(&PostParams::default(), &dep).await?;
        }
        world.namespaces.push(ns);
    }
    let want = t.deployments_per_namespace * t.pods_per_deployment;
    let deadline = Instant::now() + Duration::from_secs(180);
    for ns in &world.namespaces {
        let pods = Api::<Pod>::namespaced(client.clone(), ns);
        loop {
            let list = pods.list(&ListParams::default()).await?.items;
            if list.len() >= want {
                let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for p in list {
                    let app = app_of(&p);
                    by.entry(app)
                        .or_default()
                        .push(p.metadata.name.unwrap_or_default());
                }
                for (app, pods) in by {
                    world.deployments.push((ns.clone(), app, pods));
                }
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{ns}: {} of {want} pods after 180 s (is kube-controller-manager running?)",
                list.len()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(world)
}

/// When the runner's watch first saw each request (about when it was
/// created), and each phase it reached: the status's times have only
/// second resolution.
type Seen = Arc<Mutex<BTreeMap<String, (Instant, BTreeMap<usize, Instant>)>>>;

fn watch_requests(
    client: &kube::Client,
    namespaces: &[String],
    seen: &Seen,
) -> Vec<tokio::task::JoinHandle<()>> {
    use futures::StreamExt;
    use kube::runtime::watcher;
    namespaces
        .iter()
        .map(|ns| {
            let api = Api::<RemediationRequest>::namespaced(client.clone(), ns);
            let (seen, ns) = (seen.clone(), ns.clone());
            tokio::spawn(async move {
                let mut events = watcher(api, watcher::Config::default()).boxed();
                while let Some(event) = events.next().await {
                    let rr = match event {
                        Ok(watcher::Event::Apply(rr) | watcher::Event::InitApply(rr)) => rr,
                        _ => continue,
                    };
                    let now = Instant::now();
                    let name = format!("{ns}/{}", rr.metadata.name.clone().unwrap_or_default());
                    let Ok(mut seen) = seen.lock() else { return };
                    let entry = seen.entry(name).or_insert_with(|| (now, BTreeMap::new()));
                    // Phases a coalesced write passed through are in its
                    // history: reached by the time the write is seen.
                    let phases = rr
                        .status
                        .iter()
                        .flat_map(|s| s.phase_history.iter().map(|h| h.phase))
                        .chain([rr.phase()]);
                    for phase in phases {
                        if let Some(place) = Phase::ALL.iter().position(|p| *p == phase) {
                            entry.1.entry(place).or_insert(now);
                        }
                    }
                }
            })
        })
        .collect()
}

pub async fn run(s: Scenario, o: Options) -> anyhow::Result<()> {
    ensure!(!o.gateways.is_empty(), "no gateway URL");
    std::fs::create_dir_all(&o.out)?;
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
            % 0xff_ffff
    );
    let client = kube::Client::try_default()
        .await
        .context("a client for $KUBECONFIG")?;
    println!(
        "scenario {}: {} namespaces x {} Deployments x {} pods",
        s.name,
        s.targets.namespaces,
        s.targets.deployments_per_namespace,
        s.targets.pods_per_deployment
    );
    let world = world(&s, &client, &run).await?;
    let seen: Seen = Arc::default();
    let watchers = watch_requests(&client, &world.namespaces, &seen);
    let shots = shots(&s, &world, &run);
    let pods = Pods::default();
    let pod_watchers = pods.watch(&client, &world.namespaces);
    println!(
        "sending {} notifications ({} alerts) over {:.0} s",
        shots.len(),
        shots.iter().map(|s| s.alerts.len()).sum::<usize>(),
        s.seconds()
    );

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(s.max_in_flight)
        .build(connector);

    // The scraper, every second until the run has settled.
    let scrapes = Arc::new(Mutex::new(Vec::<Scrape>::new()));
    let started = Instant::now();
    let scraper = {
        let (scrapes, admins, http) = (scrapes.clone(), o.admins.clone(), http.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let mut one = Scrape {
                    at: started.elapsed(),
                    ..Default::default()
                };
                for admin in &admins {
                    let Ok(req) = hyper::Request::get(format!("{admin}/metrics"))
                        .body(Full::new(Bytes::new()))
                    else {
                        continue;
                    };
                    if let Ok(Ok(resp)) =
                        tokio::time::timeout(Duration::from_secs(2), http.request(req)).await
                        && let Ok(body) = resp.into_body().collect().await
                    {
                        parse_metrics(&String::from_utf8_lossy(&body.to_bytes()), &mut one);
                    }
                }
                if let Ok(mut all) = scrapes.lock() {
                    all.push(one);
                }
            }
        })
    };

    // Open loop: every notification is sent when due, at most
    // max_in_flight at once; a late sender is measured, not hidden.
    let slots = Arc::new(tokio::sync::Semaphore::new(s.max_in_flight));
    let mut tasks = Vec::with_capacity(shots.len());
    for (i, shot) in shots.iter().enumerate() {
        let due = started + shot.due;
        tokio::time::sleep_until(due.into()).await;
        let body = body(shot, o.sns.as_ref(), &pods)?;
        let permit = slots.clone().acquire_owned().await?;
        let (http, url, token) = (
            http.clone(),
            format!(
                "{}/api/v1/signals/{}",
                o.gateways[i % o.gateways.len()],
                shot.source.path()
            ),
            o.token.clone(),
        );
        let (phase, source, n) = (shot.phase, shot.source, shot.alerts.len());
        let ids: Vec<String> = shot.alerts.iter().map(|a| a.id.clone()).collect();
        tasks.push(tokio::spawn(async move {
            let (status, answer) = post(&http, &url, &token, source, body).await;
            drop(permit);
            let latency = due.elapsed();
            let said: Vec<(String, Said)> =
                ids.into_iter().zip(outcomes(status, &answer, n)).collect();
            let accepted = said.iter().filter(|(_, s)| s.counted).count();
            Shotted {
                due: due - started,
                phase,
                source,
                latency,
                status,
                alerts: n,
                accepted,
                said,
            }
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await?);
    }
    let sent_for = started.elapsed();
    // The scenario's own time: quiet phases at its end pass too.
    tokio::time::sleep_until((started + Duration::from_secs_f64(s.seconds())).into()).await;

    // End to end: every request settles (terminal, or waiting for a human).
    let settled = |r: &RemediationRequest| {
        let p = r.phase();
        p.is_terminal() || p == Phase::AwaitingApproval
    };
    let deadline = Instant::now() + Duration::from_secs(s.settle_seconds);
    let requests = loop {
        let mut all = Vec::new();
        for ns in &world.namespaces {
            all.extend(
                Api::<RemediationRequest>::namespaced(client.clone(), ns)
                    .list(&ListParams::default())
                    .await?
                    .items,
            );
        }
        let open = all.iter().filter(|r| !settled(r)).count();
        if open == 0 || Instant::now() > deadline {
            if open > 0 {
                println!("{open} requests still open after {} s", s.settle_seconds);
            }
            break all;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // A last scrape after the end.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    scraper.abort();
    for w in watchers.into_iter().chain(pod_watchers) {
        w.abort();
    }
    let scrapes = scrapes.lock().map(|s| s.clone()).unwrap_or_default();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();

    let report = Report::new(&s, &results, &requests, &seen, &scrapes, sent_for);
    let md = report.markdown(&s, &o.out)?;
    let path = o.out.join("report.md");
    std::fs::write(&path, &md)?;
    println!("{}", report.headline());
    println!("report: {}", path.display());
    // Remove the run's namespaces: their requests would go on loading
    // the API server.
    for ns in &world.namespaces {
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .delete(ns, &Default::default())
            .await;
    }
    if report.lost != 0 {
        bail!("{} accepted alerts are not accounted for", report.lost);
    }
    Ok(())
}

fn hist() -> Histogram<u64> {
    // Microseconds, 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, 600_000_000);
    let _ = h.record(us);
}

fn q(h: &Histogram<u64>, p: f64) -> f64 {
    h.value_at_quantile(p) as f64 / 1000.0
}

pub struct Report {
    pub notifications: usize,
    pub alerts: usize,
    pub accepted: usize,
    /// Distinct alerts among the accepted (re-deliveries removed).
    pub distinct: usize,
    /// Re-deliveries counted again: on requests (the dedup index is fed
    /// by a watch and remembers a bounded number of instances), and on
    /// storm requests (whose totals count deliveries).
    pub recounted: [i64; 2],
    pub lost: i64,
    pub created: usize,
    pub storms: usize,
    pub duplicates: i64,
    pub storm_members: i64,
    pub server_errors: usize,
    pub no_answer: usize,
    latency: Histogram<u64>,
    by_phase: Vec<(Histogram<u64>, usize, usize)>,
    by_source: BTreeMap<&'static str, (usize, usize)>,
    codes: BTreeMap<u16, usize>,
    /// Alerts by what the gateway said of them.
    said: BTreeMap<String, usize>,
    /// By the phase's place in [`Phase::ALL`] (the pipeline's order).
    to_phase: BTreeMap<usize, Histogram<u64>>,
    reached: BTreeMap<usize, usize>,
    throughput: Vec<(f64, f64)>,
    accepted_rate: Vec<(f64, f64)>,
    p50: Vec<(f64, f64)>,
    p99: Vec<(f64, f64)>,
    depth: BTreeMap<String, Vec<(f64, f64)>>,
    wait: BTreeMap<String, Vec<(f64, f64)>>,
    sent_for: Duration,
}

impl Report {
    fn new(
        s: &Scenario,
        results: &[Shotted],
        requests: &[RemediationRequest],
        seen: &BTreeMap<String, (Instant, BTreeMap<usize, Instant>)>,
        scrapes: &[Scrape],
        sent_for: Duration,
    ) -> Self {
        let mut latency = hist();
        let mut by_phase: Vec<(Histogram<u64>, usize, usize)> =
            s.phases.iter().map(|_| (hist(), 0, 0)).collect();
        let mut by_source: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
        let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
        let mut per_second: BTreeMap<u64, (usize, usize, Histogram<u64>)> = BTreeMap::new();
        for r in results {
            record(&mut latency, r.latency);
            let p = &mut by_phase[r.phase];
            record(&mut p.0, r.latency);
            p.1 += 1;
            p.2 += r.accepted;
            let e = by_source.entry(r.source.path()).or_default();
            e.0 += r.alerts;
            e.1 += r.accepted;
            *codes.entry(r.status).or_default() += 1;
            let sec = per_second
                .entry(r.due.as_secs())
                .or_insert_with(|| (0, 0, hist()));
            sec.0 += 1;
            sec.1 += r.accepted;
            record(&mut sec.2, r.latency);
        }
        let accepted: usize = results.iter().map(|r| r.accepted).sum();
        let mut said: BTreeMap<String, usize> = BTreeMap::new();
        // Per request the gateway named: the distinct alerts it counted
        // there, and how many deliveries.
        let mut per_request: BTreeMap<&str, (std::collections::BTreeSet<&str>, i64)> =
            BTreeMap::new();
        let mut distinct: std::collections::BTreeSet<&str> = Default::default();
        for (id, s) in results.iter().flat_map(|r| &r.said) {
            *said.entry(s.label.clone()).or_default() += 1;
            if let Some(request) = &s.request {
                let e = per_request.entry(request.as_str()).or_default();
                e.0.insert(id.as_str());
                e.1 += 1;
                distinct.insert(id.as_str());
            }
        }
        let storms = requests.iter().filter(|r| r.spec.storm.is_some()).count();
        let duplicates: i64 = requests
            .iter()
            .filter(|r| r.spec.storm.is_none())
            .map(|r| r.occurrence_count() - 1)
            .sum();
        // A storm request counts the signals it aggregated.
        let storm_members: i64 = requests
            .iter()
            .filter(|r| r.spec.storm.is_some())
            .map(|r| {
                r.status
                    .as_ref()
                    .and_then(|s| s.storm.as_ref())
                    .map_or_else(|| r.occurrence_count(), |s| s.total_signals)
            })
            .sum();
        let created = requests.len() - storms;
        // Every distinct alert counted on a request is in its count (a
        // re-delivery may be counted again: that is not a loss, and is
        // reported on its own); a request the gateway named is there.
        let in_cluster: BTreeMap<String, (i64, bool)> = requests
            .iter()
            .map(|r| {
                let key = format!(
                    "{}/{}",
                    r.metadata.namespace.as_deref().unwrap_or_default(),
                    r.metadata.name.as_deref().unwrap_or_default()
                );
                let count = match r.status.as_ref().and_then(|s| s.storm.as_ref()) {
                    Some(storm) => (storm.total_signals, true),
                    None => (r.occurrence_count(), false),
                };
                (key, count)
            })
            .collect();
        let (mut lost, mut recounted) = (0i64, [0i64; 2]);
        for (request, (ids, _deliveries)) in &per_request {
            let (count, storm) = in_cluster.get(*request).copied().unwrap_or((0, false));
            lost += (ids.len() as i64 - count).max(0);
            recounted[usize::from(storm)] += (count - ids.len() as i64).max(0);
        }
        let mut to_phase: BTreeMap<usize, Histogram<u64>> = BTreeMap::new();
        let mut reached: BTreeMap<usize, usize> = BTreeMap::new();
        for (first, phases) in seen.values() {
            for (place, at) in phases {
                *reached.entry(*place).or_default() += 1;
                record(
                    to_phase.entry(*place).or_insert_with(hist),
                    at.saturating_duration_since(*first),
                );
            }
        }
        let throughput = per_second
            .iter()
            .map(|(s, v)| (*s as f64, v.0 as f64))
            .collect();
        let accepted_rate = per_second
            .iter()
            .map(|(s, v)| (*s as f64, v.1 as f64))
            .collect();
        let p50 = per_second
            .iter()
            .map(|(s, v)| (*s as f64, q(&v.2, 0.5)))
            .collect();
        let p99 = per_second
            .iter()
            .map(|(s, v)| (*s as f64, q(&v.2, 0.99)))
            .collect();
        let mut depth: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut wait: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for pair in scrapes.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let t = b.at.as_secs_f64();
            for (actor, d) in &b.depth {
                depth.entry(actor.clone()).or_default().push((t, *d));
            }
            for (actor, (sum, count)) in &b.wait {
                let (s0, c0) = a.wait.get(actor).copied().unwrap_or((*sum, *count));
                let mean_ms = if count > &c0 {
                    (sum - s0) / (count - c0) * 1000.0
                } else {
                    0.0
                };
                wait.entry(actor.clone()).or_default().push((t, mean_ms));
            }
        }
        Self {
            notifications: results.len(),
            alerts: results.iter().map(|r| r.alerts).sum(),
            accepted,
            distinct: distinct.len(),
            recounted,
            lost,
            created,
            storms,
            duplicates,
            storm_members,
            server_errors: results.iter().filter(|r| r.status >= 500).count(),
            no_answer: results.iter().filter(|r| r.status == 0).count(),
            latency,
            by_phase,
            by_source,
            codes,
            said,
            to_phase,
            reached,
            throughput,
            accepted_rate,
            p50,
            p99,
            depth,
            wait,
            sent_for,
        }
    }

    pub fn headline(&self) -> String {
        format!(
            "{} alerts in {} notifications, {} counted ({} distinct): {} requests created, {} duplicates, {} storm members in {} storm requests; lost {}; 5xx {}, no answer {}; latency ms p50 {:.1} p95 {:.1} p99 {:.1} max {:.1}",
            self.alerts,
            self.notifications,
            self.accepted,
            self.distinct,
            self.created,
            self.duplicates,
            self.storm_members,
            self.storms,
            self.lost,
            self.server_errors,
            self.no_answer,
            q(&self.latency, 0.5),
            q(&self.latency, 0.95),
            q(&self.latency, 0.99),
            self.latency.max() as f64 / 1000.0,
        )
    }

    fn markdown(&self, s: &Scenario, out: &Path) -> anyhow::Result<String> {
        let mut md = String::new();
        let _ = writeln!(md, "# Storm report: {}\n", s.name);
        if !s.description.is_empty() {
            let _ = writeln!(md, "{}\n", s.description.trim());
        }
        let _ = writeln!(
            md,
            "{} namespaces x {} Deployments x {} pods; duplicate share {:.2}; batches of {}..{} alerts; sent in {:.1} s.\n",
            s.targets.namespaces,
            s.targets.deployments_per_namespace,
            s.targets.pods_per_deployment,
            s.duplicate_share,
            s.batch.min,
            s.batch.max,
            self.sent_for.as_secs_f64()
        );
        let _ = writeln!(md, "## Headline\n");
        let _ = writeln!(md, "| figure | value |\n|---|---|");
        for (k, v) in [
            (
                "alerts sent (notifications)",
                format!("{} ({})", self.alerts, self.notifications),
            ),
            (
                "alerts counted on requests (201, 202)",
                self.accepted.to_string(),
            ),
            (
                "distinct alerts accepted (re-deliveries count once)",
                self.distinct.to_string(),
            ),
            ("requests created", self.created.to_string()),
            ("counted as duplicates", self.duplicates.to_string()),
            (
                "storm members (storm requests)",
                format!("{} ({})", self.storm_members, self.storms),
            ),
            (
                "re-deliveries counted again: on requests / on storm requests",
                format!("{} / {}", self.recounted[0], self.recounted[1]),
            ),
            ("**accepted alerts lost**", format!("**{}**", self.lost)),
            (
                "5xx answers / no answer",
                format!("{} / {}", self.server_errors, self.no_answer),
            ),
            (
                "latency from due time, ms: p50 / p95 / p99 / max",
                format!(
                    "{:.1} / {:.1} / {:.1} / {:.1}",
                    q(&self.latency, 0.5),
                    q(&self.latency, 0.95),
                    q(&self.latency, 0.99),
                    self.latency.max() as f64 / 1000.0
                ),
            ),
        ] {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        let _ = writeln!(
            md,
            "\n## Phases\n\n| phase | target rate /s | sent | achieved /s | accepted alerts | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|"
        );
        for (p, (h, sent, acc)) in s.phases.iter().zip(&self.by_phase) {
            let target = match p.to {
                Some(to) if to != p.rate => format!("{} → {}", p.rate, to),
                _ => p.rate.to_string(),
            };
            let (p50, p99) = if *sent > 0 {
                (format!("{:.1}", q(h, 0.5)), format!("{:.1}", q(h, 0.99)))
            } else {
                ("–".into(), "–".into())
            };
            let _ = writeln!(
                md,
                "| {} | {target} | {sent} | {:.1} | {acc} | {p50} | {p99} |",
                p.name,
                *sent as f64 / p.seconds,
            );
        }
        let _ = writeln!(
            md,
            "\n## Sources\n\n| source | alerts | accepted |\n|---|---|---|"
        );
        for (src, (n, acc)) in &self.by_source {
            let _ = writeln!(md, "| {src} | {n} | {acc} |");
        }
        let codes: Vec<String> = self
            .codes
            .iter()
            .map(|(c, n)| {
                if *c == 0 {
                    format!("no answer {n}")
                } else {
                    format!("{c}: {n}")
                }
            })
            .collect();
        let _ = writeln!(md, "\nHTTP answers: {}.\n", codes.join(", "));
        let said: Vec<String> = self.said.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            md,
            "What the gateway said of each alert: {}.\n",
            said.join(", ")
        );
        let _ = writeln!(
            md,
            "## Time from creation to each phase\n\nAs a watch of the requests saw them (creation: the request's first event; the gateway's own latency is above).\n\n| phase | requests | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|---|"
        );
        for (phase, h) in &self.to_phase {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} | {:.0} |",
                Phase::ALL[*phase].as_str(),
                self.reached.get(phase).copied().unwrap_or(0),
                q(h, 0.5),
                q(h, 0.95),
                q(h, 0.99)
            );
        }
        let plots = [
            (
                "throughput.svg",
                plot::lines(
                    "Notifications sent and alerts accepted per second",
                    "s",
                    "per s",
                    &[
                        ("sent", &self.throughput),
                        ("accepted", &self.accepted_rate),
                    ],
                ),
            ),
            (
                "latency.svg",
                plot::lines(
                    "Latency from due time, per second of the run",
                    "s",
                    "ms",
                    &[("p50", &self.p50), ("p99", &self.p99)],
                ),
            ),
            (
                "funnel.svg",
                plot::bars(
                    "Phase funnel: requests that reached each phase",
                    &self
                        .reached
                        .iter()
                        .map(|(p, n)| (Phase::ALL[*p].as_str().to_string(), *n as f64))
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "mailbox-depth.svg",
                plot::lines(
                    "Mailbox depth by actor kind (all replicas)",
                    "s",
                    "messages",
                    &self
                        .depth
                        .iter()
                        .map(|(k, v)| (k.as_str(), v))
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "mailbox-wait.svg",
                plot::lines(
                    "Mean mailbox wait by actor kind, per scrape",
                    "s",
                    "ms",
                    &self
                        .wait
                        .iter()
                        .map(|(k, v)| (k.as_str(), v))
                        .collect::<Vec<_>>(),
                ),
            ),
        ];
        let _ = writeln!(md, "\n## Plots\n");
        for (file, svg) in plots {
            std::fs::write(out.join(file), svg)?;
            let _ = writeln!(md, "![{file}]({file})\n");
        }
        Ok(md)
    }
}

/// The Deployment a pod of the scenario's world belongs to (its `app` label).
fn app_of(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app").cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(yaml: &str) -> Scenario {
        let s: Scenario = serde_norway::from_str(yaml).expect("parses");
        s.check().expect("valid");
        s
    }

    const BASE: &str = "
name: t
targets: {namespaces: 1, deploymentsPerNamespace: 2, podsPerDeployment: 1}
alertnames: [{name: A}]
sources: {alertmanager: 1}
";

    #[test]
    fn a_ramp_sends_its_integral_spread_over_the_phase_and_quiet_sends_nothing() {
        let s = scenario(&format!(
            "{BASE}phases:\n  - {{name: ramp, seconds: 10, rate: 0, to: 20}}\n  - {{name: quiet, seconds: 5, rate: 0}}\n  - {{name: steady, seconds: 2, rate: 5}}\n"
        ));
        let due = s.schedule();
        let ramp: Vec<_> = due.iter().filter(|(_, p)| *p == 0).collect();
        assert_eq!(ramp.len(), 100, "the area under 0 -> 20 over 10 s");
        // Sparse at the start, dense at the end.
        let first_half = ramp.iter().filter(|(t, _)| t.as_secs_f64() < 5.001).count();
        assert_eq!(first_half, 25);
        assert!(due.iter().all(|(_, p)| *p != 1), "quiet sends nothing");
        let steady: Vec<_> = due.iter().filter(|(_, p)| *p == 2).collect();
        assert_eq!(steady.len(), 10);
        assert!(steady.iter().all(|(t, _)| t.as_secs_f64() >= 15.0));
        assert!(due.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
    }

    #[test]
    fn shots_mix_sources_batches_and_redeliveries_as_asked() {
        let s = scenario(
            "
name: t
targets: {namespaces: 1, deploymentsPerNamespace: 2, podsPerDeployment: 1}
alertnames: [{name: A, weight: 3}, {name: B}]
duplicateShare: 0.5
batch: {min: 1, max: 4}
sources: {alertmanager: 1, cloudwatch: 1}
phases: [{name: steady, seconds: 100, rate: 10}]
",
        );
        let world = World {
            namespaces: vec!["n".into()],
            deployments: vec![
                ("n".into(), "app-0".into(), vec!["p0".into()]),
                ("n".into(), "app-1".into(), vec!["p1".into()]),
            ],
        };
        let shots = shots(&s, &world, "r");
        assert_eq!(shots.len(), 1000);
        let cw = shots
            .iter()
            .filter(|s| s.source == Source::Cloudwatch)
            .count();
        assert!((400..600).contains(&cw), "{cw} of 1000 through SNS");
        assert!(
            shots
                .iter()
                .filter(|s| s.source == Source::Cloudwatch)
                .all(|s| s.alerts.len() == 1)
        );
        assert!(shots.iter().any(|s| s.alerts.len() == 4));
        let alerts: Vec<&Alert> = shots.iter().flat_map(|s| &s.alerts).collect();
        let distinct: std::collections::BTreeSet<&str> =
            alerts.iter().map(|a| a.id.as_str()).collect();
        let share = 1.0 - distinct.len() as f64 / alerts.len() as f64;
        assert!((0.4..0.6).contains(&share), "re-delivered share {share}");
        let a = alerts.iter().filter(|a| a.name == "A").count() as f64;
        assert!((0.65..0.85).contains(&(a / alerts.len() as f64)));
    }

    #[test]
    fn each_alert_of_an_answer_is_counted_or_given_its_reason() {
        let body = br#"{"results": [{"status": 201, "result": "created"},
            {"status": 200, "result": "rejected", "reason": "target_not_found"},
            {"status": 202, "result": "storm"}]}"#;
        let said = outcomes(207, body, 3);
        let labels: Vec<(bool, &str)> =
            said.iter().map(|s| (s.counted, s.label.as_str())).collect();
        assert_eq!(
            labels,
            [
                (true, "created"),
                (false, "target_not_found"),
                (true, "storm")
            ]
        );
        let dup = br#"{"status": 202, "result": "duplicate", "namespace": "n", "request": "r-1"}"#;
        assert_eq!(outcomes(202, dup, 1)[0].request.as_deref(), Some("n/r-1"));
        assert!(
            outcomes(503, b"", 2)
                .iter()
                .all(|s| !s.counted && s.label == "HTTP 503")
        );
    }

    #[test]
    fn mailbox_figures_are_summed_over_replicas_by_actor_kind() {
        let mut s = Scrape::default();
        let text = "# TYPE x gauge\nkubernaut_controller_actor_mailbox_depth{actor=\"supervisor\"} 3\n\
                    kubernaut_controller_actor_mailbox_wait_seconds_sum{actor=\"supervisor\"} 0.5\n\
                    kubernaut_controller_actor_mailbox_wait_seconds_count{actor=\"supervisor\"} 10\n";
        parse_metrics(text, &mut s);
        parse_metrics(text, &mut s);
        assert_eq!(s.depth["supervisor"], 6.0);
        assert_eq!(s.wait["supervisor"], (1.0, 20.0));
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_reason() {
        let bad: Scenario = serde_norway::from_str(&format!(
            "{BASE}duplicateShare: 2\nphases: [{{name: p, seconds: 1, rate: 1}}]\n"
        ))
        .expect("parses");
        assert!(
            bad.check()
                .unwrap_err()
                .to_string()
                .contains("duplicateShare")
        );
        assert!(
            serde_norway::from_str::<Scenario>(&format!("{BASE}phases: []\nrat: 1\n")).is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn every_scenario_shipped_is_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).expect("loadtest/scenarios") {
            let path = e.expect("entry").path();
            Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            n += 1;
        }
        assert!(n >= 1);
    }
}

//! `podsim`: the kubelet stand-in of [`kubernaut_e2e::podsim`], run against
//! the cluster of `$KUBECONFIG` until it is killed. `scripts/stack.sh pods`
//! starts it. Settings from the environment: `PODSIM_NODES` (3),
//! `PODSIM_CRASH_SECONDS` (3), `PODSIM_JOB_SECONDS` (2).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use kubernaut_e2e::podsim::{self, Behaviour, Container, ENABLED_LABEL, Sim};
use serde_json::{Value, json};

const TICK: Duration = Duration::from_millis(250);
/// A bind or delete just sent is not sent again before the watch shows it.
const RESEND_AFTER: Duration = Duration::from_secs(2);

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let nodes = env_u64("PODSIM_NODES", 3).max(1);
    let sim = Sim {
        crash_period: Duration::from_secs(env_u64("PODSIM_CRASH_SECONDS", 3)),
        job_seconds: Duration::from_secs(env_u64("PODSIM_JOB_SECONDS", 2)),
    };
    let client = Client::try_default()
        .await
        .context("a client for $KUBECONFIG")?;
    let nodes = register_nodes(&client, nodes).await?;
    let namespaces = mirror::<Namespace>(
        Api::all(client.clone()),
        watcher::Config::default().labels(&format!("{ENABLED_LABEL}=true")),
    );
    let pods = mirror::<Pod>(Api::all(client.clone()), watcher::Config::default());
    namespaces.wait_until_ready().await?;
    pods.wait_until_ready().await?;
    eprintln!(
        "podsim: {} nodes; simulating pods in namespaces labelled {ENABLED_LABEL}=true",
        nodes.len()
    );
    Kubelet {
        client,
        sim,
        nodes,
        seen: HashMap::new(),
        written: HashMap::new(),
        sent: HashMap::new(),
        next_ip: 0,
    }
    .run(&namespaces, &pods)
    .await
}

/// A reflector's store, fed by a watch that retries with backoff.
fn mirror<K>(api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    store
}

async fn register_nodes(client: &Client, n: u64) -> anyhow::Result<Vec<String>> {
    let api: Api<Node> = Api::all(client.clone());
    let now = Timestamp::now().to_string();
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("podsim-{i}");
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "node.kubernetes.io/instance-type": "podsim"}}}))?;
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).context("registering a node"),
        }
        let capacity = json!({"cpu": "32", "memory": "128Gi", "pods": "250"});
        let status = json!({"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "podsim is posting ready status",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": format!("10.0.0.{}", i + 1)},
                          {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.20.2-podsim", "kubeProxyVersion": "v1.20.2-podsim",
                         "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "podsim://1", "osImage": "podsim",
                         "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": ""}}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .context("writing a node's status")?;
        names.push(name);
    }
    Ok(names)
}

struct Kubelet {
    client: Client,
    sim: Sim,
    nodes: Vec<String>,
    /// When each pod was first seen running here, its start time and IP.
    seen: HashMap<String, (Instant, String, String)>,
    /// The last status written for each pod (uid).
    written: HashMap<String, Value>,
    /// Binds and deletions in flight (uid → when sent).
    sent: HashMap<String, Instant>,
    next_ip: u32,
}

impl Kubelet {
    async fn run(mut self, namespaces: &Store<Namespace>, pods: &Store<Pod>) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let enabled: HashSet<String> =
                namespaces.state().iter().map(|n| n.name_any()).collect();
            let live: Vec<_> = pods
                .state()
                .into_iter()
                .filter(|p| p.namespace().is_some_and(|ns| enabled.contains(&ns)))
                .collect();
            let uids: HashSet<String> = live.iter().filter_map(|p| p.uid()).collect();
            self.seen.retain(|uid, _| uids.contains(uid));
            self.written.retain(|uid, _| uids.contains(uid));
            self.sent.retain(|uid, _| uids.contains(uid));
            for pod in live {
                if let Err(e) = self.reconcile(&pod).await {
                    eprintln!(
                        "podsim: {}/{}: {e:#}",
                        pod.namespace().unwrap_or_default(),
                        pod.name_any()
                    );
                }
            }
        }
    }

    async fn reconcile(&mut self, pod: &Pod) -> anyhow::Result<()> {
        let (Some(uid), Some(ns)) = (pod.uid(), pod.namespace()) else {
            return Ok(());
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let name = pod.name_any();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let ours = node.as_ref().is_none_or(|n| self.nodes.contains(n));
        if !ours {
            return Ok(());
        }
        let recently_sent = self
            .sent
            .get(&uid)
            .is_some_and(|t| t.elapsed() < RESEND_AFTER);
        if pod.metadata.deletion_timestamp.is_some() {
            if !recently_sent {
                self.sent.insert(uid.clone(), Instant::now());
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                ignore_gone(api.delete(&name, &dp).await.map(|_| ()))?;
            }
            return Ok(());
        }
        let Some(node) = node else {
            if !recently_sent {
                self.sent.insert(uid, Instant::now());
                let node = &self.nodes[(fnv(&name) % self.nodes.len() as u64) as usize];
                let binding = json!({"apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": name, "namespace": ns},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                ignore_gone(
                    api.create_subresource::<Value, Value>(
                        "binding",
                        &name,
                        &PostParams::default(),
                        &binding,
                    )
                    .await
                    .map(|_| ()),
                )?;
            }
            return Ok(());
        };
        let spec = pod.spec.as_ref().context("a pod without a spec")?;
        let containers: Vec<Container> = spec
            .containers
            .iter()
            .map(|c| {
                let image = c.image.clone().unwrap_or_default();
                Container {
                    name: c.name.clone(),
                    behaviour: Behaviour::of_image(&image),
                    image,
                }
            })
            .collect();
        let restarted = spec.restart_policy.as_deref().unwrap_or("Always") == "Always";
        let (first, started, ip) = self.first_seen(pod, &uid);
        let node_ip = node
            .strip_prefix("podsim-")
            .and_then(|i| i.parse::<u32>().ok())
            .map_or("10.0.0.1".to_string(), |i| format!("10.0.0.{}", i + 1));
        let status = podsim::status(
            &self.sim,
            &containers,
            restarted,
            first.elapsed(),
            &started,
            &node_ip,
            &ip,
        );
        if self.written.get(&uid) == Some(&status) {
            return Ok(());
        }
        let patch = json!({"status": status});
        ignore_gone(
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ()),
        )?;
        self.written.insert(uid, status);
        Ok(())
    }

    /// The instant the simulation counts the pod's age from: its recorded
    /// start time when the simulator restarted, else now.
    fn first_seen(&mut self, pod: &Pod, uid: &str) -> (Instant, String, String) {
        if let Some(s) = self.seen.get(uid) {
            return s.clone();
        }
        let status = pod.status.as_ref();
        let recorded = status.and_then(|s| s.start_time.as_ref()).map(|t| t.0);
        let (instant, started) = match recorded {
            Some(t) => {
                let age = Timestamp::now().duration_since(t);
                let age = Duration::try_from(age).unwrap_or_default();
                (
                    Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                    t.to_string(),
                )
            }
            None => (Instant::now(), Timestamp::now().to_string()),
        };
        let ip = status.and_then(|s| s.pod_ip.clone()).unwrap_or_else(|| {
            self.next_ip += 1;
            format!(
                "10.244.{}.{}",
                (self.next_ip / 250) % 250,
                self.next_ip % 250 + 1
            )
        });
        let entry = (instant, started, ip);
        self.seen.insert(uid.to_string(), entry.clone());
        entry
    }
}

fn ignore_gone(r: Result<(), kube::Error>) -> anyhow::Result<()> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        other => Ok(other?),
    }
}

/// FNV-1a: a stable spread of pods over nodes.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

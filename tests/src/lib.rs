//! Harness for tests against the real local stack (`scripts/stack.sh`): it
//! brings the stack up if needed (the script is idempotent and serialises
//! concurrent callers), installs the CRD and the controller's RBAC from
//! `deploy/`, and hands out clients for the admin and the controller
//! identities, PostgreSQL, and the gateway over real HTTP. It also starts a
//! gateway on its own (without the controller, which is one per stack) and
//! private Redis servers for tests that stop them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubernaut_cluster::{Cluster, ClusterConfig};
use kubernaut_gateway::{Protection, ProtectionConfig};
use kubernaut_intake::{Intake, IntakeMetrics, IntakeSettings};
use kubernaut_store::index::{IndexTtl, SignalIndex};
use prometheus_client::registry::Registry;
use serde_json::json;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[derive(Clone, Debug)]
pub struct Stack {
    pub admin_kubeconfig: PathBuf,
    pub controller_kubeconfig: PathBuf,
    pub database_url: String,
    pub redis_url: String,
}

fn script(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let path = repo_root().join("scripts").join(name);
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    ensure!(
        out.status.success(),
        "{name} {args:?} failed with {}",
        out.status
    );
    Ok(String::from_utf8(out.stdout)?)
}

impl Stack {
    /// The stack, started once per test process.
    pub fn get() -> &'static Stack {
        static STACK: OnceLock<Stack> = OnceLock::new();
        STACK.get_or_init(|| {
            Stack::up().unwrap_or_else(|e| panic!("the local stack could not start: {e:#}"))
        })
    }

    fn up() -> anyhow::Result<Stack> {
        script("stack.sh", &["up"])?;
        let env = script("stack.sh", &["env"])?;
        let var = |k: &str| -> anyhow::Result<String> {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .with_context(|| format!("stack.sh env printed no {k}"))
        };
        let controller = script("controller-kubeconfig.sh", &[])?;
        Ok(Stack {
            admin_kubeconfig: var("KUBECONFIG")?.into(),
            controller_kubeconfig: controller.trim().into(),
            database_url: var("DATABASE_URL")?,
            redis_url: var("REDIS_URL")?,
        })
    }

    pub async fn admin_client(&self) -> anyhow::Result<kube::Client> {
        client_from(&self.admin_kubeconfig).await
    }

    /// Authenticates as the ServiceAccount deploy/ grants the controller's role to.
    pub async fn controller_client(&self) -> anyhow::Result<kube::Client> {
        client_from(&self.controller_kubeconfig).await
    }

    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .current_dir(repo_root())
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

pub async fn client_from(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// A response from the gateway: status and body (JSON when it parses).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: hyper::HeaderMap,
    pub body: serde_json::Value,
    pub text: String,
}

/// The static token `config/dev.yaml` accepts when `KUBERNAUT_DEV_TOKEN` is unset.
pub const DEV_TOKEN: &str = "dev-token";

/// POSTs with the dev token.
pub async fn post(url: &str, content_type: &str, body: impl Into<Bytes>) -> anyhow::Result<Reply> {
    post_as(url, content_type, body, Some(DEV_TOKEN)).await
}

/// POSTs with the given bearer token, or none.
pub async fn post_as(
    url: &str,
    content_type: &str,
    body: impl Into<Bytes>,
    token: Option<&str>,
) -> anyhow::Result<Reply> {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::post(url).header("content-type", content_type);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Full::new(body.into()))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await??;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Ok(Reply {
        status,
        content_type,
        headers,
        body,
        text,
    })
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = check().await;
        match last {
            Ok(Some(v)) => return Ok(v),
            Ok(None) if Instant::now() < deadline => {}
            Err(_) if Instant::now() < deadline => {}
            Ok(None) => bail!("timed out after {timeout:?} waiting for {what}"),
            Err(e) => {
                return Err(e.context(format!("timed out after {timeout:?} waiting for {what}")));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A unique name for this test run.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}{:x}", std::process::id(), nanos)
}

/// A gateway replica on a free loopback port: the real router and intake,
/// authenticated as the controller's ServiceAccount, without the controller.
pub struct Gateway {
    pub addr: SocketAddr,
    /// What the router serves with, for feeding signals from elsewhere (the event watch).
    pub state: kubernaut_gateway::GatewayState,
    /// The gateway's cluster handle (the controller's identity).
    pub cluster: Cluster,
    pub intake_metrics: IntakeMetrics,
    pub registry: Arc<Registry>,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// `redis_url: None` runs without Redis, as a replica whose Redis is gone.
    /// Accepts the static token [`DEV_TOKEN`], without rate limits.
    pub async fn start(
        stack: &Stack,
        redis_url: Option<&str>,
        holder: &str,
    ) -> anyhow::Result<Self> {
        let protection = ProtectionConfig {
            auth_enabled: true,
            static_tokens: vec![DEV_TOKEN.into()],
            ..ProtectionConfig::open()
        };
        Self::start_with(stack, redis_url, holder, |_| protection).await
    }

    /// As [`Gateway::start`], with protection built from the gateway's cluster handle.
    pub async fn start_with(
        stack: &Stack,
        redis_url: Option<&str>,
        holder: &str,
        protection: impl FnOnce(&Cluster) -> ProtectionConfig,
    ) -> anyhow::Result<Self> {
        let client = stack.controller_client().await?;
        let cluster = Cluster::new(
            client,
            ClusterConfig {
                cluster_name: None,
                protected_namespaces: vec!["kubernaut-protected".into()],
                cluster_scoped_namespace: "kubernaut-system".into(),
                lease_namespace: "kubernaut-system".into(),
            },
        );
        let index = match redis_url {
            Some(url) => {
                // One prefix for all test gateways: replicas share the index,
                // and tests never share namespaces, hence fingerprints.
                let index = SignalIndex::connect(url, "kubernaut-e2e", IndexTtl::default())?;
                ensure!(
                    index.wait_connected(Duration::from_secs(5)).await,
                    "Redis at {url} is not reachable"
                );
                Some(index)
            }
            None => None,
        };
        let mut registry = Registry::with_prefix("kubernaut");
        let gateway_metrics =
            kubernaut_gateway::Metrics::register(registry.sub_registry_with_prefix("gateway"));
        let intake_metrics = IntakeMetrics::register(registry.sub_registry_with_prefix("gateway"));
        let protection = Arc::new(Protection::new(protection(&cluster)));
        let gateway_cluster = cluster.clone();
        let intake = Intake::new(
            cluster,
            index,
            IntakeSettings {
                holder: holder.to_string(),
                claim_ttl: Duration::from_secs(10),
                storm: storm_settings(),
            },
            intake_metrics.clone(),
        );
        let state = kubernaut_gateway::GatewayState {
            intake: Arc::new(intake),
            metrics: gateway_metrics,
            protection,
        };
        let app = kubernaut_gateway::router(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            state,
            cluster: gateway_cluster,
            intake_metrics,
            registry: Arc::new(registry),
            task,
        })
    }

    pub fn url(&self, source: &str) -> String {
        format!("http://{}/api/v1/signals/{source}", self.addr)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Redis server of the test's own, on a free port, so that the test can
/// stop it without disturbing the shared stack.
pub struct RedisServer {
    pub url: String,
    child: Child,
    _dir: PathBuf,
}

impl RedisServer {
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(unique("kubernaut-redis"));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (scripts/deps.sh installs it)")?;
        let url = format!("redis://127.0.0.1:{port}");
        let server = Self {
            url,
            child,
            _dir: dir,
        };
        eventually(
            "redis-server to listen",
            Duration::from_secs(10),
            || async {
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(drop))
            },
        )
        .await?;
        Ok(server)
    }

    /// Kills the server (SIGKILL: no goodbye to the clients).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// Creates a namespace opted in to remediation, with the given environment.
pub async fn managed_namespace(
    admin: &kube::Client,
    prefix: &str,
    environment: &str,
) -> anyhow::Result<String> {
    let ns = unique(prefix);
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns, "labels": {
                "kubernaut.io/managed": "true", "kubernaut.io/environment": environment
            }}}))?,
        )
        .await?;
    Ok(ns)
}

pub fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/app:1.0"}]}
            }
        }
    }))
    .unwrap_or_default()
}

/// Creates a Deployment and waits for kube-controller-manager to create its
/// pods; returns their names.
pub async fn deployment_with_pods(
    admin: &kube::Client,
    namespace: &str,
    name: &str,
    replicas: i32,
) -> anyhow::Result<BTreeSet<String>> {
    Api::<Deployment>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &deployment(name, replicas))
        .await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    let want = usize::try_from(replicas).unwrap_or(0);
    eventually(
        &format!("{replicas} pods of {namespace}/{name}"),
        Duration::from_secs(60),
        || async {
            let names: BTreeSet<String> = pods
                .list(&ListParams::default().labels(&format!("app={name}")))
                .await?
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            Ok((names.len() == want).then_some(names))
        },
    )
    .await
}

/// An Alertmanager v4 notification with one alert per `(pod, fingerprint)`.
pub fn alertmanager_payload(
    alertname: &str,
    namespace: &str,
    alerts: &[(&str, &str)],
    starts_at: &str,
) -> String {
    let alerts: Vec<_> = alerts
        .iter()
        .map(|(pod, fp)| {
            json!({
                "status": "firing",
                "labels": {"alertname": alertname, "namespace": namespace, "pod": pod, "severity": "warning"},
                "annotations": {"summary": format!("{alertname} on {pod}")},
                "startsAt": starts_at,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.local/graph",
                "fingerprint": fp,
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{alertname}\"}}"),
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "kubernaut",
        "groupLabels": {"alertname": alertname},
        "commonLabels": {"alertname": alertname, "namespace": namespace},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": alerts,
    })
    .to_string()
}

/// Creates a ServiceAccount and returns its token (the 1.20 token
/// controller puts one in a Secret), for TokenReview tests.
pub async fn service_account_token(
    admin: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}}))?,
    )
    .await?;
    let secret = eventually(
        &format!("a token Secret for {namespace}/{name}"),
        Duration::from_secs(30),
        || async {
            Ok(sas
                .get(name)
                .await?
                .secrets
                .and_then(|s| s.into_iter().next())
                .and_then(|r| r.name))
        },
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    let token = secrets
        .get(&secret)
        .await?
        .data
        .and_then(|d| d.get("token").cloned())
        .context("the token Secret has no token")?;
    Ok(String::from_utf8(token.0)?)
}

/// GETs a URL; the status code (for readiness checks).
pub async fn get_status(url: &str) -> anyhow::Result<u16> {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::get(url).body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await??;
    Ok(resp.status().as_u16())
}

/// A real Alertmanager (Debian's prometheus-alertmanager) on a free port,
/// whose only receiver is a webhook to the gateway with a bearer token,
/// grouping fast so that tests see notifications within a second or two.
pub struct AlertmanagerServer {
    pub url: String,
    child: Child,
    dir: PathBuf,
}

impl AlertmanagerServer {
    pub async fn start(webhook_url: &str, token: &str) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(unique("kubernaut-alertmanager"));
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            r#"route:
  receiver: kubernaut
  group_by: [alertname, namespace]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: kubernaut
    webhook_configs:
      - url: {webhook_url}
        send_resolved: true
        max_alerts: 0
        http_config:
          authorization:
            type: Bearer
            credentials: {token}
"#
        );
        std::fs::write(dir.join("alertmanager.yml"), config)?;
        let log = std::fs::File::create(dir.join("alertmanager.log"))?;
        let child = Command::new("prometheus-alertmanager")
            .arg(format!(
                "--config.file={}",
                dir.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus-alertmanager (scripts/deps.sh installs it)")?;
        let server = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        };
        let ready = format!("{}/-/ready", server.url);
        eventually(
            "Alertmanager to be ready",
            Duration::from_secs(30),
            || async { Ok((get_status(&ready).await.ok() == Some(200)).then_some(())) },
        )
        .await?;
        Ok(server)
    }

    /// Injects alerts through Alertmanager's API (`POST /api/v2/alerts`).
    pub async fn post_alerts(&self, alerts: &serde_json::Value) -> anyhow::Result<()> {
        let r = post_as(
            &format!("{}/api/v2/alerts", self.url),
            "application/json",
            alerts.to_string(),
            None,
        )
        .await?;
        ensure!(
            r.status == 200,
            "Alertmanager refused the alerts: {} {}",
            r.status,
            r.text
        );
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("alertmanager.log")).unwrap_or_default()
    }
}

impl Drop for AlertmanagerServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Storm detection as in config/dev.yaml, except that the thresholds of the
/// `storm-test` environment are low: other tests' bursts (100 signals for
/// one target) stay below the rate threshold, storm tests label their
/// namespace `storm-test`.
fn storm_settings() -> kubernaut_intake::StormSettings {
    let mut s = kubernaut_intake::StormSettings {
        rate_threshold: 1_000,
        ..Default::default()
    };
    s.pattern_thresholds.insert("storm-test".into(), 5);
    s
}

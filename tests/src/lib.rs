//! Harness for tests against the real local stack (`scripts/stack.sh`): it
//! brings the stack up if needed (the script is idempotent and serialises
//! concurrent callers), installs the CRD and the controller's RBAC from
//! `deploy/`, and hands out clients for the admin and the controller
//! identities, PostgreSQL, and the gateway over real HTTP. It also starts a
//! gateway on its own (without the controller, which is one per stack) and
//! private Redis and PostgreSQL servers for tests that stop them.

pub mod podsim;

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
use kubernaut_gateway::test_pki::Pki;
use kubernaut_gateway::{CloudWatch, CloudWatchConfig, Protection, ProtectionConfig};
use kubernaut_intake::{Intake, IntakeMetrics, IntakeSettings};
use kubernaut_store::index::SignalIndex;
use prometheus_client::registry::Registry;
use serde_json::json;
use tracing::Instrument;

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
        // Pods that live (podsim, next to this test binary: cargo builds
        // the package's binaries for its tests and benchmarks).
        let podsim = std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("podsim"))
            .filter(|p| p.exists())
            .context("the podsim binary next to the test binary")?;
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .arg("pods")
            .env("KUBERNAUT_PODSIM_BIN", &podsim)
            .stderr(Stdio::inherit())
            .status()
            .context("starting the pod simulator")?;
        ensure!(out.success(), "stack.sh pods failed with {out}");
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

    pub async fn controller_config(&self) -> anyhow::Result<kube::Config> {
        config_from(&self.controller_kubeconfig).await
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
    Ok(kube::Client::try_from(config_from(path).await?)?)
}

pub async fn config_from(path: &Path) -> anyhow::Result<kube::Config> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)
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
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    post_with(url, content_type, body, &headers).await
}

/// POSTs as SNS does: `text/plain`, the message type in a header, no token.
pub async fn post_sns(
    url: &str,
    message_type: &str,
    body: impl Into<Bytes>,
) -> anyhow::Result<Reply> {
    post_with(
        url,
        "text/plain; charset=UTF-8",
        body,
        &[("x-amz-sns-message-type", message_type)],
    )
    .await
}

/// POSTs with the given extra headers.
pub async fn post_with(
    url: &str,
    content_type: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::post(url).header("content-type", content_type);
    for (k, v) in headers {
        req = req.header(*k, *v);
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

/// A namespace every test cluster handle treats as protected.
pub const PROTECTED_NAMESPACE: &str = "kubernaut-protected";

/// The cluster handle of the controller's ServiceAccount (its real RBAC),
/// configured as the test gateways and controllers are.
pub async fn controller_cluster(stack: &Stack) -> anyhow::Result<Cluster> {
    Ok(Cluster::connect(
        stack.controller_config().await?,
        ClusterConfig {
            cluster_name: None,
            protected_namespaces: vec![PROTECTED_NAMESPACE.into()],
            cluster_scoped_namespace: "kubernaut-system".into(),
            lease_namespace: "kubernaut-system".into(),
        },
    )?)
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
        let cluster = controller_cluster(stack).await?.with_views();
        let index = match redis_url {
            Some(url) => {
                // One prefix for all test gateways: replicas share the index,
                // and tests never share namespaces, hence fingerprints.
                let index = SignalIndex::connect(url, "kubernaut-e2e")?;
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
                sync_timeout: Duration::from_secs(30),
                storm: storm_settings(),
            },
            intake_metrics.clone(),
        );
        let cloudwatch = CloudWatch::new(&sns_config(), None)?;
        let state = kubernaut_gateway::GatewayState {
            intake: Arc::new(intake.clone()),
            metrics: gateway_metrics,
            protection,
            cloudwatch: Arc::new(cloudwatch),
            approvals: None,
            limits: kubernaut_gateway::Limits::default(),
            slack: None,
        };
        let app = kubernaut_gateway::router(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        ensure!(
            intake.wait_synced(Duration::from_secs(30)).await,
            "the intake's watches did not list within 30 s"
        );
        // The replica's name on every log line of its gateway.
        let span = tracing::info_span!("gateway", replica = holder);
        let task = tokio::spawn(
            async move {
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                let _ = axum::serve(listener, app).await;
            }
            .instrument(span),
        );
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

    /// The gateway's metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("metrics encode into a String");
        text
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Creates Deployments `<prefix>-0` … `<prefix>-<n-1>` with `replicas`
/// each in `ns`, a few at a time; returns them as targets.
pub async fn deployments(
    admin: &kube::Client,
    ns: &str,
    prefix: &str,
    n: usize,
    replicas: i32,
) -> anyhow::Result<Vec<kubernaut_api::ObjectRef>> {
    use futures::{StreamExt, TryStreamExt};
    let api = Api::<Deployment>::namespaced(admin.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("{prefix}-{i}");
                api.create(&PostParams::default(), &deployment(&name, replicas))
                    .await?;
                anyhow::Ok(kubernaut_api::ObjectRef::new("Deployment", ns, &name))
            }
        })
        .buffered(16)
        .try_collect()
        .await
}

/// The local LLM server (`scripts/llm.sh up`: llama.cpp's OpenAI-compatible
/// server with the packaged Gemma 3 270M), started once per test process;
/// its base URL (`…/v1`) and model name.
pub fn llm_server() -> anyhow::Result<(String, String)> {
    static LLM: OnceLock<Result<(String, String), String>> = OnceLock::new();
    LLM.get_or_init(|| {
        let out = script("llm.sh", &["up"]).map_err(|e| format!("{e:#}"))?;
        let value = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::to_string)
                .ok_or_else(|| format!("llm.sh up printed no {key}: {out}"))
        };
        Ok((value("LLM_URL=")?, value("LLM_MODEL=")?))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A separate LLM server of a test's own (`KUBERNAUT_LLM_INSTANCE=name
/// scripts/llm.sh up`), for tests that kill it; stopped when dropped.
pub struct LlmInstance {
    name: String,
    pub url: String,
    pub model: String,
}

impl LlmInstance {
    pub fn start(name: &str) -> anyhow::Result<Self> {
        let out = llm_script(name, "up")?;
        let value = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::to_string)
                .with_context(|| format!("llm.sh up printed no {key}: {out}"))
        };
        Ok(Self {
            name: name.into(),
            url: value("LLM_URL=")?,
            model: value("LLM_MODEL=")?,
        })
    }

    /// SIGKILL: the server dies mid-request, as on an OOM kill.
    pub fn kill(&self) -> anyhow::Result<()> {
        let pid = llm_script(&self.name, "pid")?;
        let status = Command::new("kill").args(["-9", pid.trim()]).status()?;
        ensure!(status.success(), "kill -9 {pid} failed");
        Ok(())
    }
}

impl Drop for LlmInstance {
    fn drop(&mut self) {
        let _ = llm_script(&self.name, "down");
    }
}

fn llm_script(instance: &str, command: &str) -> anyhow::Result<String> {
    let path = repo_root().join("scripts/llm.sh");
    let out = Command::new("bash")
        .arg(&path)
        .arg(command)
        .env("KUBERNAUT_LLM_INSTANCE", instance)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    ensure!(
        out.status.success(),
        "llm.sh {command} failed: {}",
        out.status
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The overrides that point a control plane's analysis at an LLM server
/// running the packaged base model: llama.cpp takes the schema with
/// `json_object`, and the model has no chat template for system prompts.
/// Owned overrides as the `(key, value)` pairs [`control_plane`] takes.
pub fn overrides<'a>(o: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    o.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

pub fn llm_overrides(url: &str, model: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ANALYSIS__LLM__ENABLED", "true".into()),
        ("ANALYSIS__LLM__BASE_URL", url.into()),
        ("ANALYSIS__LLM__MODEL", model.into()),
        ("ANALYSIS__LLM__SCHEMA_MODE", "jsonObjectSchema".into()),
        ("ANALYSIS__LLM__FOLD_SYSTEM_PROMPT", "true".into()),
        ("ANALYSIS__LLM__MAX_TOKENS", "400".into()),
        // Other tests' analyses share the one server and queue on it.
        ("ANALYSIS__LLM__TIMEOUT_SECONDS", "120".into()),
    ]
}

/// A managed staging namespace with Deployment `api` (1 replica): a
/// remediation target.
pub async fn api_target(
    admin: &kube::Client,
    prefix: &str,
) -> anyhow::Result<kubernaut_api::ObjectRef> {
    let ns = managed_namespace(admin, prefix, "staging").await?;
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &deployment("api", 1))
        .await?;
    Ok(kubernaut_api::ObjectRef::new("Deployment", &ns, "api"))
}

/// The phases a request went through, with the reason of each.
pub fn phase_history(
    rr: &kubernaut_api::RemediationRequest,
) -> Vec<(kubernaut_api::Phase, String)> {
    rr.status
        .iter()
        .flat_map(|s| s.phase_history.iter())
        .map(|t| (t.phase, t.reason.clone()))
        .collect()
}

/// The phases a request went through.
pub fn phases(rr: &kubernaut_api::RemediationRequest) -> Vec<kubernaut_api::Phase> {
    phase_history(rr).into_iter().map(|(p, _)| p).collect()
}

/// The phase of each workflow step, in the workflow's order.
pub fn step_phases(rr: &kubernaut_api::RemediationRequest) -> Vec<kubernaut_api::StepPhase> {
    rr.status
        .iter()
        .flat_map(|s| s.execution.iter())
        .flat_map(|e| e.steps.iter().map(|s| s.phase))
        .collect()
}

/// The escalations recorded for a request in the audit trail, once there
/// is one.
pub async fn escalations(
    stack: &Stack,
    rr: &kubernaut_api::RemediationRequest,
) -> anyhow::Result<Vec<String>> {
    let db = sqlx::PgPool::connect(&stack.database_url).await?;
    let uid = rr.metadata.uid.clone().context("uid")?;
    eventually(
        "the escalation in the audit trail",
        Duration::from_secs(60),
        || async {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT reason FROM remediation_events WHERE request_uid = $1 AND kind = 'escalation'",
            )
            .bind(&uid)
            .fetch_all(&db)
            .await?;
            Ok((!rows.is_empty()).then_some(rows))
        },
    )
    .await
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

/// A PostgreSQL server of the test's own (the Debian packages' binaries, as
/// `scripts/stack.sh` uses), on a free port with its data in a temp dir, so
/// that the test can stop and start it.
pub struct PostgresServer {
    pub url: String,
    port: u16,
    dir: PathBuf,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a PostgreSQL tool as the `postgres` user when we are root (it
/// refuses to run as root), as ourselves otherwise.
fn pg_command(tool: &str) -> Command {
    let path = format!("{PG_BIN}/{tool}");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

fn run_quietly(mut c: Command, what: &str) -> anyhow::Result<()> {
    let out = c.output().with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl PostgresServer {
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(unique("kubernaut-pg"));
        std::fs::create_dir_all(&dir)?;
        let _ = Command::new("chown").args(["postgres"]).arg(&dir).status();
        let mut initdb = pg_command("initdb");
        initdb.arg("-D").arg(dir.join("data")).args([
            "--auth=trust",
            "--username=postgres",
            "-E",
            "UTF8",
        ]);
        run_quietly(initdb, "initdb")?;
        let server = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            dir,
        };
        server.resume()?;
        Ok(server)
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn resume(&self) -> anyhow::Result<()> {
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .arg("start");
        run_quietly(c, "pg_ctl start")
    }

    /// Stops the server at once (connections are cut).
    pub fn stop(&self) -> anyhow::Result<()> {
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        run_quietly(c, "pg_ctl stop")
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until no namespace is being deleted; fails after ten minutes.
/// A bench deletes its namespace when it ends, and the namespace
/// controller then deletes its thousands of objects for a minute or more;
/// a measurement started meanwhile would share the API server with that.
pub async fn quiet_namespaces(admin: &kube::Client) -> anyhow::Result<()> {
    let api = Api::<Namespace>::all(admin.clone());
    let start = Instant::now();
    eventually(
        "an earlier run's namespaces to be deleted",
        Duration::from_secs(600),
        || async {
            let namespaces = api.list(&ListParams::default()).await?.items;
            Ok(namespaces
                .iter()
                .all(|ns| ns.metadata.deletion_timestamp.is_none())
                .then_some(()))
        },
    )
    .await?;
    if start.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "  (waited {:.0} s for an earlier run's namespaces to be deleted)",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Creates a namespace opted in to remediation, with the given
/// environment, and lets Kubernaut's actions write there (as an installer
/// does with `kubernaut rbac`). Its pods run, as the pod simulator says.
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
                "kubernaut.io/managed": "true", "kubernaut.io/environment": environment,
                (podsim::ENABLED_LABEL): "true"
            }}}))?,
        )
        .await?;
    bind_actions(admin, &ns).await?;
    Ok(ns)
}

/// The RoleBinding `kubernaut rbac NS` prints, applied: Kubernaut's
/// ServiceAccount may run its actions' writes in `ns`.
pub async fn bind_actions(admin: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let yaml = kubernaut::rbac_bindings(&[ns.to_string()], "kubernaut-system/kubernaut")?;
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_norway::from_str(&yaml)?;
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
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

/// deploy/'s PrometheusRule.
pub fn prometheus_rule() -> anyhow::Result<serde_json::Value> {
    Ok(serde_norway::from_str(&std::fs::read_to_string(
        repo_root().join("deploy/base/prometheusrule.yaml"),
    )?)?)
}

/// Its groups as a Prometheus rule file, `dir/rules.yaml` (what promtool
/// and Prometheus read).
pub fn prometheus_rule_file(dir: &Path) -> anyhow::Result<()> {
    let spec = serde_norway::to_string(&prometheus_rule()?["spec"])?;
    Ok(std::fs::write(dir.join("rules.yaml"), spec)?)
}

/// GETs a URL; the status code (for readiness checks).
pub async fn get_status(url: &str) -> anyhow::Result<u16> {
    Ok(get(url).await?.0)
}

/// GETs `url`: its status and body text.
pub async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::get(url).body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await??;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).to_string()))
}

/// A server process a test started: killed, and its directory removed,
/// when dropped.
struct Process {
    child: Child,
    dir: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `cmd` in `dir` with its output in `dir/<log>`, and waits until
/// `ready` (when given) answers 200.
async fn serve(
    mut cmd: Command,
    dir: PathBuf,
    log: &str,
    what: &str,
    ready: Ready,
) -> anyhow::Result<Process> {
    let out = std::fs::File::create(dir.join(log))?;
    let child = cmd
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {what} (scripts/deps.sh installs it)"))?;
    let mut process = Process { child, dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A server that exited (its port taken, say) is not waited for: and
        // whatever answers on that port now is not it.
        if let Some(status) = process.child.try_wait()? {
            let tail = std::fs::read_to_string(process.dir.join(log)).unwrap_or_default();
            bail!("{what} exited with {status}\n--- its log ---\n{tail}");
        }
        let up = match &ready {
            Ready::Http(url) => get_status(url).await.ok() == Some(200),
            Ready::Listening(port) => tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_ok(),
        };
        if up {
            // What answered may be another server holding the port, and
            // this one about to exit for it (a Python server binds after
            // its imports): it is asked again a moment later.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if process.child.try_wait()?.is_none() {
                return Ok(process);
            }
            continue;
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after 60 s waiting for {what} to be ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How [`serve`] knows its server is up.
enum Ready {
    /// This URL answers 200.
    Http(String),
    /// The port accepts connections.
    Listening(u16),
}

/// Starts a server with `start` on a port free a moment ago; again on
/// another, up to three times, when that one was taken by the time the
/// server bound it (by a server another test started in between).
async fn on_free_port<T, F, Fut>(what: &str, start: F) -> anyhow::Result<T>
where
    F: Fn(u16) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    retry_while_port_taken(what, || async { start(free_port()?).await }).await
}

/// Runs `start` (which picks its ports) again, up to three times in all,
/// while it fails because a port it picked was taken.
pub async fn retry_while_port_taken<T, F, Fut>(what: &str, mut start: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut attempts = 3;
    loop {
        attempts -= 1;
        match start().await {
            Err(e) if attempts > 0 && port_taken(&e) => {
                eprintln!("{what}: a port was taken; starting again on another");
            }
            r => return r,
        }
    }
}

/// Whether a server's start failed because its port was taken (Go's and
/// Python's words for it).
fn port_taken(e: &anyhow::Error) -> bool {
    format!("{e:#}")
        .to_ascii_lowercase()
        .contains("address already in use")
}

/// A real Alertmanager (Debian's prometheus-alertmanager) on a free port,
/// whose only receiver is a webhook to the gateway with a bearer token,
/// grouping fast so that tests see notifications within a second or two.
pub struct AlertmanagerServer {
    pub url: String,
    process: Process,
}

impl AlertmanagerServer {
    pub async fn start(webhook_url: &str, token: &str) -> anyhow::Result<Self> {
        on_free_port("Alertmanager", |port| {
            Self::start_on(port, webhook_url, token)
        })
        .await
    }

    /// [`Self::start`] on `port`.
    pub async fn start_on(port: u16, webhook_url: &str, token: &str) -> anyhow::Result<Self> {
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
        let mut cmd = Command::new("prometheus-alertmanager");
        cmd.arg(format!(
            "--config.file={}",
            dir.join("alertmanager.yml").display()
        ))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=");
        let url = format!("http://127.0.0.1:{port}");
        let ready = Ready::Http(format!("{url}/-/ready"));
        let process = serve(
            cmd,
            dir,
            "alertmanager.log",
            "prometheus-alertmanager",
            ready,
        )
        .await?;
        Ok(Self { url, process })
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
        std::fs::read_to_string(self.process.dir.join("alertmanager.log")).unwrap_or_default()
    }
}

/// A real Prometheus (Debian's `prometheus`) on a free port, scraping
/// `targets` (`host:port`) every second.
pub struct PrometheusServer {
    pub url: String,
    _process: Process,
}

impl PrometheusServer {
    pub async fn start(targets: &[String]) -> anyhow::Result<Self> {
        on_free_port("Prometheus", |port| Self::start_on(port, targets)).await
    }

    async fn start_on(port: u16, targets: &[String]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("kubernaut-prometheus"));
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: test\n    static_configs:\n      - targets: {}\n",
            serde_json::to_string(targets)?
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let url = format!("http://127.0.0.1:{port}");
        let ready = Ready::Http(format!("{url}/-/ready"));
        let process = serve(cmd, dir, "prometheus.log", "prometheus", ready).await?;
        Ok(Self {
            url,
            _process: process,
        })
    }

    /// The number of series `query` returns now.
    pub async fn series(&self, query: &str) -> anyhow::Result<usize> {
        let mut url = format!("{}/api/v1/query?query=", self.url);
        for b in query.bytes() {
            if b.is_ascii_alphanumeric() {
                url.push(b as char);
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
        let (status, body) = get(&url).await?;
        ensure!(status == 200, "Prometheus answered {status}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
    }
}

/// A real SMTP server (Debian's python3-aiosmtpd) on a free port, keeping
/// what it receives in a maildir.
pub struct SmtpServer {
    pub port: u16,
    process: Process,
}

impl SmtpServer {
    pub async fn start() -> anyhow::Result<Self> {
        on_free_port("the SMTP server", Self::start_on).await
    }

    async fn start_on(port: u16) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("kubernaut-smtp"));
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join("mail").join(sub))?;
        }
        // Debian's interpreter, which has the package (not a pyenv one).
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.join("mail"));
        let process = serve(
            cmd,
            dir,
            "smtp.log",
            "aiosmtpd (python3-aiosmtpd)",
            Ready::Listening(port),
        )
        .await?;
        Ok(Self { port, process })
    }

    /// Every message received, as its raw text.
    pub fn messages(&self) -> Vec<String> {
        std::fs::read_dir(self.process.dir.join("mail/new"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }
}

/// A `/metrics` endpoint serving whatever text the test sets.
pub struct Exporter {
    pub addr: SocketAddr,
    text: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    pub async fn start(text: &str) -> anyhow::Result<Self> {
        let shared = Arc::new(std::sync::Mutex::new(text.to_string()));
        let served = shared.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let served = served.clone();
                async move { served.lock().map(|t| t.clone()).unwrap_or_default() }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            text: shared,
            task,
        })
    }

    pub fn set(&self, text: &str) {
        if let Ok(mut t) = self.text.lock() {
            *t = text.to_string();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
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

/// Topics the test gateways accept from SNS (a prefix).
pub const SNS_TOPICS: &str = "arn:aws:sns:eu-west-1:123456789012:kubernaut-*";
/// An accepted topic.
pub const SNS_TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:kubernaut-alarms";
pub const SNS_CERT_URL: &str = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-00000000000000000000000000000000.pem";

/// The CloudWatch settings of test gateways: as where AWS is unreachable,
/// the test PKI's `signer` certificate is trusted and nothing is fetched;
/// subscriptions are confirmed (the attempt fails here, without AWS).
fn sns_config() -> CloudWatchConfig {
    CloudWatchConfig {
        topics: vec![SNS_TOPICS.into()],
        trusted_certificate_files: vec![Pki::get().cert_path("signer")],
        fetch_certificates: false,
        confirm_subscriptions: true,
        replay_window_seconds: 300,
        targets: kubernaut_gateway::cloudwatch::container_insights_targets(),
    }
}

/// An SNS delivery, signed as SNS signs it. The string to sign is built
/// here from AWS's documentation, independently of the gateway's code.
#[derive(Clone, Debug)]
pub struct SnsDelivery {
    pub kind: &'static str,
    pub message_id: String,
    pub topic_arn: String,
    pub subject: Option<String>,
    pub message: String,
    pub timestamp: String,
    pub token: Option<String>,
    pub subscribe_url: Option<String>,
    pub signature_version: &'static str,
    pub cert_url: String,
    /// `signer` (trusted) or `intruder` (a key of the same CA, not trusted).
    pub key: &'static str,
}

impl SnsDelivery {
    pub fn notification(message_id: &str, message: &str) -> Self {
        Self {
            kind: "Notification",
            message_id: message_id.into(),
            topic_arn: SNS_TOPIC.into(),
            subject: Some("ALARM: kubernaut test".into()),
            message: message.into(),
            timestamp: now_rfc3339(),
            token: None,
            subscribe_url: None,
            signature_version: "2",
            cert_url: SNS_CERT_URL.into(),
            key: "signer",
        }
    }

    pub fn subscription(kind: &'static str, topic: &str) -> Self {
        let token = "2336412f37fb687f5d51e6e2425f004aed1ce4c1a2d6a6e3";
        Self {
            kind,
            subject: None,
            token: Some(token.into()),
            topic_arn: topic.into(),
            subscribe_url: Some(format!(
                "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={topic}&Token={token}"
            )),
            ..Self::notification(
                &unique("sub"),
                &format!("You have chosen to subscribe to the topic {topic}."),
            )
        }
    }

    fn string_to_sign(&self) -> String {
        let mut fields: Vec<(&str, Option<&str>)> = vec![
            ("Message", Some(self.message.as_str())),
            ("MessageId", Some(self.message_id.as_str())),
        ];
        if self.kind == "Notification" {
            fields.extend([
                ("Subject", self.subject.as_deref()),
                ("Timestamp", Some(self.timestamp.as_str())),
            ]);
        } else {
            fields.extend([
                ("SubscribeURL", self.subscribe_url.as_deref()),
                ("Timestamp", Some(self.timestamp.as_str())),
                ("Token", self.token.as_deref()),
            ]);
        }
        fields.extend([
            ("TopicArn", Some(self.topic_arn.as_str())),
            ("Type", Some(self.kind)),
        ]);
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}\n{v}\n")))
            .collect()
    }

    /// The JSON body SNS would POST, with a fresh signature.
    pub fn body(&self) -> String {
        let signature = Pki::get().sign(self.key, self.signature_version, &self.string_to_sign());
        let mut v = json!({
            "Type": self.kind,
            "MessageId": self.message_id,
            "TopicArn": self.topic_arn,
            "Message": self.message,
            "Timestamp": self.timestamp,
            "SignatureVersion": self.signature_version,
            "Signature": signature,
            "SigningCertURL": self.cert_url,
            "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
        });
        for (k, val) in [
            ("Subject", &self.subject),
            ("Token", &self.token),
            ("SubscribeURL", &self.subscribe_url),
        ] {
            if let Some(val) = val {
                v[k] = json!(val);
            }
        }
        v.to_string()
    }
}

/// Now, as SNS writes it (`2026-11-22T03:00:00.000Z`).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%3fZ")
        .to_string()
}

/// A CloudWatch alarm as SNS carries it in `Message`, for a Container
/// Insights metric with the given dimensions.
pub fn cloudwatch_alarm(name: &str, state: &str, dimensions: &[(&str, &str)]) -> String {
    let dims: Vec<_> = dimensions
        .iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect();
    json!({
        "AlarmName": name,
        "AlarmDescription": "kubernaut test alarm",
        "AWSAccountId": "123456789012",
        "NewStateValue": state,
        "NewStateReason": "Threshold Crossed: 1 datapoint [97.0] was greater than the threshold (90.0).",
        "StateChangeTime": "2026-11-22T03:00:00.000+0000",
        "Region": "EU (Ireland)",
        "AlarmArn": format!("arn:aws:cloudwatch:eu-west-1:123456789012:alarm:{name}"),
        "OldStateValue": "OK",
        "Trigger": {
            "MetricName": "pod_cpu_utilization",
            "Namespace": "ContainerInsights",
            "StatisticType": "Statistic",
            "Statistic": "AVERAGE",
            "Dimensions": dims,
            "Period": 60,
            "EvaluationPeriods": 1,
            "ComparisonOperator": "GreaterThanThreshold",
            "Threshold": 90.0,
        }
    })
    .to_string()
}

/// The RemediationRequests of a namespace.
pub async fn requests(
    admin: &kube::Client,
    ns: &str,
) -> anyhow::Result<Vec<kubernaut_api::RemediationRequest>> {
    Ok(
        Api::<kubernaut_api::RemediationRequest>::namespaced(admin.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items,
    )
}

/// A Deployment's `spec.replicas` (1 when unset, as the server defaults it).
pub async fn deployment_replicas(
    admin: &kube::Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<i32> {
    let d = Api::<Deployment>::namespaced(admin.clone(), ns)
        .get(name)
        .await?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
}

/// A Node object (the stack has no kubelet) labelled managed; its name.
pub async fn managed_node(admin: &kube::Client, prefix: &str) -> anyhow::Result<String> {
    let name = unique(prefix);
    Api::<k8s_openapi::api::core::v1::Node>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name,
                "labels": {"kubernaut.io/managed": "true"}}}))?,
        )
        .await?;
    Ok(name)
}

/// Whether another request could take the Lease `lock` now; one that
/// could takes it and gives it back at once.
pub async fn lock_is_free(cluster: &Cluster, lock: &str) -> anyhow::Result<bool> {
    let claim = cluster
        .claim_lease(lock, "rr-other", Duration::from_secs(30))
        .await?;
    let free = claim.is_some();
    if let Some(claim) = claim {
        claim.release().await;
    }
    Ok(free)
}

/// How the tests run actions: as `holder`, at most 10 replicas, 30 s locks,
/// one Job template (`flush-cache`).
pub fn exec_settings(holder: &str) -> kubernaut_cluster::ExecSettings {
    kubernaut_cluster::ExecSettings {
        holder: holder.into(),
        dry_run_only: false,
        dry_run_namespaces: Vec::new(),
        bounds: kubernaut_cluster::Bounds {
            max_replicas: 10,
            ..Default::default()
        },
        lock_ttl: Duration::from_secs(30),
        job_templates: serde_json::from_value(json!({"flush-cache": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "flush", "image": "registry.local/redis:7",
                            "args": ["redis-cli", "FLUSHALL"]}]}}}}))
        .unwrap_or_default(),
        job_ttl_seconds: 600,
    }
}

/// A control plane of the test's own, in-process, with the controller's
/// RBAC identity: `config/dev.yaml` with `overrides` (as `KUBERNAUT__…`
/// variables, e.g. `("CONTROLLER__TIMEOUTS__PROCESSING_SECONDS", "0")`),
/// supervising only `ns`, with `rules` taking precedence over the file's.
pub async fn control_plane(
    stack: &Stack,
    ns: &str,
    overrides: &[(&str, &str)],
    rules: serde_json::Value,
) -> anyhow::Result<kubernaut::Running> {
    let running = control_plane_started(stack, ns, overrides, rules).await?;
    eventually(
        "the controller to be ready",
        Duration::from_secs(30),
        || async { Ok(running.ready.is_ready().then_some(())) },
    )
    .await?;
    Ok(running)
}

/// [`control_plane`] without waiting for it to be Ready: for a test whose
/// control plane may fail before it gets there.
pub async fn control_plane_started(
    stack: &Stack,
    ns: &str,
    overrides: &[(&str, &str)],
    rules: serde_json::Value,
) -> anyhow::Result<kubernaut::Running> {
    // `KUBERNAUT_TEST_LOG=info` (or any filter) shows the control
    // plane's logs in the test's output.
    if let Ok(level) = std::env::var("KUBERNAUT_TEST_LOG") {
        kubernaut_telemetry::init_logging(kubernaut_telemetry::LogFormat::Text, &level);
    }
    let mut env = vec![
        ("DATABASE_URL".to_string(), stack.database_url.clone()),
        ("REDIS_URL".to_string(), stack.redis_url.clone()),
        ("KUBERNAUT__GATEWAY__LISTEN".into(), "127.0.0.1:0".into()),
        ("KUBERNAUT__ADMIN__LISTEN".into(), "127.0.0.1:0".into()),
        (
            "KUBERNAUT__CONTROLLER__WATCH_NAMESPACE".into(),
            ns.to_string(),
        ),
    ];
    env.extend(
        overrides
            .iter()
            .map(|(k, v)| (format!("KUBERNAUT__{k}"), v.to_string())),
    );
    let mut cfg = kubernaut::Config::from_yaml(
        &std::fs::read_to_string(repo_root().join("config/dev.yaml"))?,
        env,
    )?;
    let mut rules: Vec<kubernaut_actors::Rule> = serde_json::from_value(rules)?;
    kubernaut_actors::rules::validate(&rules).map_err(anyhow::Error::msg)?;
    rules.append(&mut cfg.rules);
    cfg.rules = rules;
    kubernaut::start(cfg, stack.controller_config().await?).await
}

/// Creates a RemediationRequest for `signal` on `target` directly (as the
/// gateway would); a storm request when `storm`. Returns its name.
pub async fn create_request(
    admin: &kube::Client,
    signal: &str,
    target: &kubernaut_api::ObjectRef,
    storm: bool,
) -> anyhow::Result<String> {
    create_request_with(admin, signal, target, storm, json!({})).await
}

/// [`create_request`] with `extra` fields of the spec (labels, annotations).
pub async fn create_request_with(
    admin: &kube::Client,
    signal: &str,
    target: &kubernaut_api::ObjectRef,
    storm: bool,
    extra: serde_json::Value,
) -> anyhow::Result<String> {
    let name = unique(&signal.to_lowercase());
    let now = now_rfc3339();
    let mut spec = json!({
        "fingerprint": unique("fp"),
        "signalName": signal,
        "severity": "warning",
        "source": "generic",
        "instanceId": unique("instance"),
        "target": target,
        "signalResource": target,
        "firingTime": now,
        "receivedTime": now,
        "originalPayload": "{}",
    });
    if storm {
        spec["storm"] = json!({"kind": "rate", "alertName": signal, "namespace": target.namespace});
    }
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let rr: kubernaut_api::RemediationRequest = serde_json::from_value(json!({
        "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
        "metadata": {"name": name, "namespace": target.namespace},
        "spec": spec,
    }))?;
    Api::<kubernaut_api::RemediationRequest>::namespaced(admin.clone(), &target.namespace)
        .create(&PostParams::default(), &rr)
        .await?;
    Ok(name)
}

/// Waits for the request to reach a terminal phase; returns it then.
pub async fn terminal_request(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<kubernaut_api::RemediationRequest> {
    let api = Api::<kubernaut_api::RemediationRequest>::namespaced(admin.clone(), ns);
    eventually(&format!("{ns}/{name} to end"), timeout, || async {
        let rr = api.get(name).await?;
        Ok(rr.phase().is_terminal().then_some(rr))
    })
    .await
}

/// The value of one sample of the control plane's `/metrics`, 0 if absent.
pub async fn metric(running: &kubernaut::Running, sample: &str) -> anyhow::Result<f64> {
    let (_, text) = get(&format!("http://{}/metrics", running.admin_addr)).await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0))
}

/// The `kubernaut` binary, built (or found up to date) once per test
/// process in the workspace's target dir.
pub fn kubernaut_binary() -> anyhow::Result<PathBuf> {
    built_kubernaut(false)
}

/// [`kubernaut_binary`] as released (optimised): what benchmarks measure.
pub fn kubernaut_release_binary() -> anyhow::Result<PathBuf> {
    built_kubernaut(true)
}

fn built_kubernaut(release: bool) -> anyhow::Result<PathBuf> {
    static BUILT: [OnceLock<Result<PathBuf, String>>; 2] = [OnceLock::new(), OnceLock::new()];
    BUILT[usize::from(release)]
        .get_or_init(|| build_kubernaut(release))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_kubernaut(release: bool) -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = vec!["build", "-q", "-p", "kubernaut", "--bin", "kubernaut"];
    if release {
        args.push("--release");
    }
    let mut build = Command::new(cargo);
    // Cargo describes the running test's own package in the environment
    // (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, OUT_DIR, ...), and build scripts
    // (ring's, among others) rebuild when those change: inherited, they
    // would make this build and the next `cargo test` or `cargo bench`
    // rebuild each other's dependencies every time.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&key.as_ref())
        {
            build.env_remove(key.as_ref());
        }
    }
    let status = build
        .args(&args)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(repo_root())
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p kubernaut failed with {status}"));
    }
    let profile = if release { "release" } else { "debug" };
    Ok(target.join(profile).join("kubernaut"))
}

/// A control plane as its own OS process (`kubernaut serve`), as it runs
/// in a pod: `config/dev.yaml` with `overrides`, supervising only `ns`,
/// with `rules` replacing the file's, and `pod` as its pod name (its
/// identity is `<pod>-<nonce>`). Its log goes to a file; killed on drop.
pub struct ControllerProcess {
    pub pod: String,
    pub admin_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl ControllerProcess {
    pub async fn start(
        stack: &Stack,
        ns: &str,
        pod: &str,
        overrides: &[(&str, &str)],
        rules: serde_json::Value,
    ) -> anyhow::Result<Self> {
        Self::start_binary(kubernaut_binary()?, stack, ns, pod, overrides, rules).await
    }

    /// [`Self::start`] with `binary` (a release build, say).
    pub async fn start_binary(
        binary: PathBuf,
        stack: &Stack,
        ns: &str,
        pod: &str,
        overrides: &[(&str, &str)],
        rules: serde_json::Value,
    ) -> anyhow::Result<Self> {
        // A free port is free when asked, not necessarily when the process
        // binds it: another test may take it in between.
        retry_while_port_taken(pod, || {
            Self::start_once(&binary, stack, ns, pod, overrides, &rules)
        })
        .await
    }

    /// One start on ports free a moment ago.
    async fn start_once(
        binary: &Path,
        stack: &Stack,
        ns: &str,
        pod: &str,
        overrides: &[(&str, &str)],
        rules: &serde_json::Value,
    ) -> anyhow::Result<Self> {
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let gateway_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = std::env::temp_dir().join(unique(&format!("kubernaut-{pod}")) + ".log");
        let out = std::fs::File::create(&log)?;
        let own_database = overrides.iter().any(|(k, _)| *k == "STORE__DATABASE_URL");
        // KUBERNAUT_PROFILE_WRAPPER=heaptrack (or a script) runs the binary
        // under a profiler, as `$WRAPPER BINARY serve ...`.
        let mut cmd = match std::env::var_os("KUBERNAUT_PROFILE_WRAPPER").filter(|w| !w.is_empty())
        {
            Some(w) => {
                let mut c = Command::new(w);
                c.arg(binary);
                c
            }
            None => Command::new(binary),
        };
        if !own_database {
            cmd.env("DATABASE_URL", &stack.database_url);
        }
        cmd.arg("serve")
            .arg("--config")
            .arg(repo_root().join("config/dev.yaml"))
            .env("KUBECONFIG", &stack.controller_kubeconfig)
            .env("POD_NAME", pod)
            .env("REDIS_URL", &stack.redis_url)
            .env("KUBERNAUT__GATEWAY__LISTEN", gateway_addr.to_string())
            .env("KUBERNAUT__ADMIN__LISTEN", admin_addr.to_string())
            .env("KUBERNAUT__CONTROLLER__WATCH_NAMESPACE", ns)
            .env("KUBERNAUT__RULES", rules.to_string())
            .env("KUBERNAUT__LOGGING__FORMAT", "text")
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in overrides {
            cmd.env(format!("KUBERNAUT__{k}"), v);
        }
        let child = cmd.spawn().context("starting kubernaut serve")?;
        let mut process = Self {
            pod: pod.to_string(),
            admin_addr,
            gateway_addr,
            log,
            child,
        };
        let ready = format!("http://{admin_addr}/readyz");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let problem = match process.child.try_wait()? {
                Some(status) => format!("{pod} exited with {status}"),
                None if get_status(&ready).await.ok() == Some(200) => return Ok(process),
                None if Instant::now() > deadline => format!("{pod} not ready within 60 s"),
                None => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            process.kill9();
            let tail = process.tail();
            bail!("{problem}\n--- {pod}'s log ---\n{tail}");
        }
    }

    /// The CPU time the process has used so far (user and system, all its
    /// threads), in seconds, from `/proc/PID/stat`. Its fields 14 and 15
    /// count in USER_HZ, which Linux fixes at 100 for every architecture's
    /// user-space ABI; the field after the command's closing parenthesis
    /// is the third, so the command's own spaces cannot shift them.
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let after_comm = stat.rsplit_once(')').context("no command in stat")?.1;
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<f64> {
            Ok(fields.get(i).context("short stat")?.parse::<f64>()?)
        };
        // Fields 14 and 15 of stat(5), counted from the third.
        Ok((ticks(14 - 3)? + ticks(15 - 3)?) / 100.0)
    }

    /// The process's resident memory now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }

    /// SIGKILL: no shutdown, no hand-over, no Lease release.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The end of its log, for failure messages.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 (`tls.crt`,
/// `tls.key`) in `dir`, made with openssl.
pub fn tls_certificates(dir: &Path) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl")?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n")?;
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=admission-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.cnf",
        "-out",
        "tls.crt",
    ])?;
    Ok(())
}

/// A production namespace with StatefulSet `db` (1 replica).
pub async fn production_statefulset(
    admin: &kube::Client,
    prefix: &str,
) -> anyhow::Result<kubernaut_api::ObjectRef> {
    let ns = managed_namespace(admin, prefix, "production").await?;
    Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "db"}, "spec": {
                "replicas": 1, "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "db", "image": "registry.local/db:1"}]}}}}))?,
        )
        .await?;
    Ok(kubernaut_api::ObjectRef::new("StatefulSet", &ns, "db"))
}

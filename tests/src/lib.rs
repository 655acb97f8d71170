//! Harness for tests against the real local stack (`scripts/stack.sh`): it
//! brings the stack up if needed (the script is idempotent and serialises
//! concurrent callers), installs the CRD and the controller's RBAC from
//! `deploy/`, and hands out clients for the admin and the controller
//! identities, PostgreSQL, and the gateway over real HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use kube::config::{KubeConfigOptions, Kubeconfig};

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
    pub body: serde_json::Value,
    pub text: String,
}

pub async fn post(url: &str, content_type: &str, body: impl Into<Bytes>) -> anyhow::Result<Reply> {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::post(url)
        .header("content-type", content_type)
        .body(Full::new(body.into()))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await??;
    let status = resp.status().as_u16();
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

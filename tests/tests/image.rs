//! The container image `make image` built (scripts/image.sh), run from its
//! own root filesystem: no container runtime works here, so the test
//! mounts a working container of the image and runs the binary with
//! chroot, as the non-root user the image names, against the local stack.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use kubernaut_e2e::{Stack, free_port, get_status, repo_root, unique};

fn image_sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/image.sh"))
        .args(args)
        .output()
        .context("running scripts/image.sh")?;
    ensure!(
        out.status.success(),
        "image.sh {args:?} failed ({}); `make image` builds the image first:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A mounted working container of the image; removed on drop.
struct Mounted {
    name: String,
    root: PathBuf,
}

impl Mounted {
    fn new() -> anyhow::Result<Self> {
        let out = image_sh(&["root"])?;
        let (name, root) = out
            .trim()
            .split_once(' ')
            .with_context(|| format!("image.sh root printed {out:?}"))?;
        Ok(Self {
            name: name.to_string(),
            root: root.into(),
        })
    }

    /// The image's binary under chroot, as user 65532.
    fn command(&self, args: &[&str]) -> Command {
        // The child's environment is only what a pod would set, so chroot
        // is named by its path.
        let chroot = ["/usr/sbin/chroot", "/usr/bin/chroot"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("chroot");
        let mut cmd = Command::new(chroot);
        cmd.arg("--userspec=65532:65532")
            .arg(&self.root)
            .arg("/usr/local/bin/kubernaut")
            .args(args)
            .env_clear();
        cmd
    }

    fn write(&self, path: &str, contents: &str) -> anyhow::Result<()> {
        let at = self.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().unwrap_or(Path::new("/")))?;
        std::fs::write(&at, contents).with_context(|| format!("writing {}", at.display()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = image_sh(&["rm", &self.name]);
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_image_names_its_version_and_runs_as_non_root() -> anyhow::Result<()> {
    let env = image_sh(&["env"])?;
    let var = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
            .with_context(|| format!("image.sh env printed no {k}"))
    };
    let out = Command::new("buildah")
        .args(["--storage-driver", "vfs", "inspect", "--type", "image"])
        .arg(var("IMAGE")?)
        .env("CONTAINERS_STORAGE_CONF", var("CONTAINERS_STORAGE_CONF")?)
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let config = &inspect["OCIv1"]["config"];
    ensure!(config["User"] == "65532:65532", "{config}");
    ensure!(
        config["Entrypoint"][0] == "/usr/local/bin/kubernaut",
        "{config}"
    );
    let labels = &config["Labels"];
    ensure!(
        labels["org.opencontainers.image.version"] == env!("CARGO_PKG_VERSION"),
        "{labels}"
    );
    for label in [
        "org.opencontainers.image.revision",
        "org.opencontainers.image.source",
    ] {
        ensure!(
            labels[label].as_str().is_some_and(|v| !v.is_empty()),
            "{label}: {labels}"
        );
    }

    let image = Mounted::new()?;
    let version = image.command(&["version"]).output()?;
    ensure!(
        version.status.success(),
        "{}",
        String::from_utf8_lossy(&version.stderr)
    );
    ensure!(
        String::from_utf8(version.stdout)?.trim()
            == format!("kubernaut {}", env!("CARGO_PKG_VERSION"))
    );
    // Nothing of the build machine: the binary, its libraries, CA
    // certificates and the user database; no shell.
    ensure!(!image.root.join("bin/sh").exists());
    ensure!(
        image
            .root
            .join("etc/ssl/certs/ca-certificates.crt")
            .exists()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_against_the_local_stack() -> anyhow::Result<()> {
    let stack = Stack::get();
    let image = Mounted::new()?;
    // What a pod mounts: the configuration and, here, a kubeconfig with
    // its CA inline (the stack's files are outside the image's root).
    image.write(
        "/etc/kubernaut/config.yaml",
        &std::fs::read_to_string(repo_root().join("config/dev.yaml"))?,
    )?;
    let kubeconfig = stack.kubectl(&[
        "config",
        "view",
        "--raw",
        "--flatten",
        "--kubeconfig",
        &stack.controller_kubeconfig.to_string_lossy(),
    ])?;
    image.write("/etc/kubernaut/kubeconfig", &kubeconfig)?;

    let admin = format!("127.0.0.1:{}", free_port()?);
    let log_path = std::env::temp_dir().join(unique("image-serve") + ".log");
    let log = std::fs::File::create(&log_path)?;
    let ns = unique("image");
    let child = image
        .command(&["serve", "--config", "/etc/kubernaut/config.yaml"])
        .env("KUBECONFIG", "/etc/kubernaut/kubeconfig")
        .env("DATABASE_URL", &stack.database_url)
        .env("REDIS_URL", &stack.redis_url)
        .env("POD_NAME", &ns)
        .env(
            "KUBERNAUT__GATEWAY__LISTEN",
            format!("127.0.0.1:{}", free_port()?),
        )
        .env("KUBERNAUT__ADMIN__LISTEN", &admin)
        // Only its own (empty) namespace: it supervises nothing of the
        // other tests'.
        .env("KUBERNAUT__CONTROLLER__WATCH_NAMESPACE", &ns)
        .env("KUBERNAUT__LOGGING__FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("chroot into the image")?;
    let mut serve = Killed(child);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = serve.0.try_wait()? {
            bail!(
                "kubernaut serve exited with {status}:\n{}",
                std::fs::read_to_string(&log_path)?
            );
        }
        if get_status(&format!("http://{admin}/readyz")).await.ok() == Some(200) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "not ready within 60 s:\n{}",
                std::fs::read_to_string(&log_path)?
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(get_status(&format!("http://{admin}/metrics")).await? == 200);
    Ok(())
}

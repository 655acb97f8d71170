//! `kubernaut`: `serve --config FILE`, `crds`, `generic-schema`, `actions`,
//! `version`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kubernaut::Config;
use kubernaut_telemetry::{LogFormat, init_logging};

#[derive(Parser)]
#[command(
    name = "kubernaut",
    about = "Kubernetes remediation control plane",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway, the controller and the admin endpoints.
    Serve {
        #[arg(long, short, env = "KUBERNAUT_CONFIG")]
        config: PathBuf,
    },
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Print the JSON Schema of the generic webhook's signals.
    GenericSchema,
    /// Print the action catalogue: names, risk, parameter schemas (JSON).
    Actions,
    /// Print the RoleBindings that let Kubernaut's actions write in these
    /// managed namespaces (and nowhere else): `| kubectl apply -f -`.
    Rbac {
        /// The managed namespaces.
        #[arg(required = true)]
        namespaces: Vec<String>,
        /// Kubernaut's ServiceAccount, as namespace/name.
        #[arg(long, default_value = "kubernaut-system/kubernaut")]
        service_account: String,
    },
    /// The audit trail in PostgreSQL.
    Audit {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the events' hash chain; names the first broken link and exits
    /// non-zero when there is one.
    Verify,
    /// Write events as JSON lines, oldest first.
    Export {
        /// RFC 3339 time; events at or after it.
        #[arg(long)]
        since: String,
        /// Only requests of this namespace.
        #[arg(long)]
        namespace: Option<String>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubernaut: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => {
            println!("kubernaut {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Crds => {
            print!("{}", kubernaut_api::RemediationRequest::crd_yaml()?);
            Ok(())
        }
        Command::Actions => {
            let list = kubernaut_cluster::catalogue();
            println!("{}", serde_json::to_string_pretty(&list)?);
            Ok(())
        }
        Command::Rbac {
            namespaces,
            service_account,
        } => {
            print!(
                "{}",
                kubernaut::rbac_bindings(&namespaces, &service_account)?
            );
            Ok(())
        }
        Command::Audit {
            database_url,
            command,
        } => audit(&database_url, command).await,
        Command::GenericSchema => {
            print!("{}", kubernaut_gateway::generic::schema_json());
            Ok(())
        }
        Command::Serve { config } => {
            let cfg = Config::load(&config)?;
            let format = if cfg.logging.format == "json" {
                LogFormat::Json
            } else {
                LogFormat::Text
            };
            init_logging(format, &cfg.logging.level);
            let kube = kube::Config::infer()
                .await
                .context("configuring the Kubernetes client (KUBECONFIG or in-cluster)")?;
            let running = kubernaut::start(cfg, kube).await?;
            let stop = running_stop_signal();
            tokio::select! {
                () = stop => {
                    tracing::info!("signal received; draining");
                    running.shutdown().await
                }
            }
        }
    }
}

async fn running_stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

async fn audit(database_url: &str, command: AuditCommand) -> anyhow::Result<()> {
    let store = kubernaut_store::Store::connect(database_url, 2)
        .await
        .context("connecting to PostgreSQL")?;
    match command {
        AuditCommand::Verify => {
            let report = store.verify_chain().await?;
            match report.broken {
                None => {
                    println!(
                        "audit chain intact: {} events, head {}",
                        report.checked, report.head
                    );
                    Ok(())
                }
                Some(b) => anyhow::bail!(
                    "audit chain broken at event {} (request {}, {}): its {} does not hold; {} events before it are intact",
                    b.id,
                    b.request_uid,
                    b.reason,
                    b.why,
                    report.checked
                ),
            }
        }
        AuditCommand::Export { since, namespace } => {
            let since: chrono::DateTime<chrono::Utc> = since
                .parse()
                .with_context(|| format!("--since {since:?} is not an RFC 3339 time"))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            store
                .export(since, namespace.as_deref(), |e| {
                    use std::io::Write as _;
                    serde_json::to_writer(&mut out, &e)?;
                    out.write_all(b"\n")
                })
                .await?;
            Ok(())
        }
    }
}

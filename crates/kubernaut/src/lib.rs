//! Wiring for the `kubernaut` binary: builds every component from the
//! configuration and runs the gateway, the controller and the admin
//! endpoints in one process, with one shutdown path for all of them.

pub mod admission;
pub mod config;
pub mod tls;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::Api;
use kube::api::ListParams;
use kubernaut_actors::membership::MembershipSettings;
use kubernaut_actors::{Context, Metrics as ControllerMetrics, Settings, controller};
use kubernaut_api::RemediationRequest;
use kubernaut_cluster::{Cluster, ClusterConfig, KubeApprovals, KubeTokenReviewer};
use kubernaut_gateway::kubernetes_event::WatchSettings;
use kubernaut_gateway::{
    CloudWatch, GatewayState, Metrics as GatewayMetrics, Protection, ProtectionConfig, Rate,
    ReviewPolicy,
};
use kubernaut_intake::{Intake, IntakeMetrics, IntakeSettings};
use kubernaut_store::Store;
use kubernaut_store::index::SignalIndex;
use kubernaut_telemetry::{Readiness, admin_router};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use config::Config;

/// The RoleBindings (YAML) that bind the ClusterRole `kubernaut-actions`
/// (deploy/base/rbac.yaml) to Kubernaut's ServiceAccount `namespace/name` in
/// each of `namespaces`: where its actions may write.
pub fn rbac_bindings(namespaces: &[String], service_account: &str) -> anyhow::Result<String> {
    let (sa_ns, sa) = service_account
        .split_once('/')
        .context("--service-account is namespace/name")?;
    let docs = namespaces
        .iter()
        .map(|ns| {
            let binding = serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "kubernaut-actions", "namespace": ns,
                             "labels": {"app.kubernetes.io/name": "kubernaut"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "kubernaut-actions"},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}],
            });
            serde_norway::to_string(&binding).map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(docs.join("---\n"))
}

/// How long shutdown waits for in-flight HTTP requests and audit writes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// A running control plane.
pub struct Running {
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The admission webhook's address, when it is served.
    pub admission_addr: Option<SocketAddr>,
    pub ready: Readiness,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits for the control plane to end on its own (a component failed)
    /// and returns why; `None` if it is still running after `timeout`.
    pub async fn ended(&mut self, timeout: Duration) -> Option<anyhow::Result<()>> {
        match tokio::time::timeout(timeout, &mut self.task).await {
            Ok(r) => Some(r.context("the control plane task panicked").and_then(|r| r)),
            Err(_) => None,
        }
    }

    /// Stops accepting signals, stops the controller, drains the audit log.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("the control plane task panicked")?
    }

    /// Waits until the process stops on its own (a component failed).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the control plane task panicked")?
    }

    pub fn trigger_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

fn protection_config(
    gateway: &config::Gateway,
    cluster: &Cluster,
) -> anyhow::Result<ProtectionConfig> {
    let auth = &gateway.auth;
    let static_tokens = auth.static_tokens(|k| std::env::var(k).ok())?;
    if !auth.enabled {
        tracing::warn!(
            "gateway authentication is disabled: anyone who reaches the gateway can open remediations"
        );
    }
    let review = auth.token_review.enabled.then(|| ReviewPolicy {
        reviewer: Arc::new(KubeTokenReviewer::new(
            cluster.clone(),
            auth.token_review.audiences.clone(),
        )),
        allowed_users: auth.token_review.allowed_users.clone(),
        allowed_groups: auth.token_review.allowed_groups.clone(),
    });
    let rate = |r: config::RateLimit| -> anyhow::Result<Rate> {
        Ok(Rate {
            per_second: NonZeroU32::new(r.per_second).context("rate of 0")?,
            burst: NonZeroU32::new(r.burst).context("burst of 0")?,
        })
    };
    Ok(ProtectionConfig {
        auth_enabled: auth.enabled,
        static_tokens,
        review,
        per_source_ip: rate(gateway.rate_limit.per_source_ip)?,
        per_identity: rate(gateway.rate_limit.per_identity)?,
        request_timeout: gateway.request_timeout(),
        trusted_proxies: gateway
            .rate_limit
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<kubernaut_gateway::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(Into::into))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "gateway.rateLimit.trustedProxies: {p:?} is not an address or CIDR range"
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()?,
    })
}

/// Who holds a claim: the pod (or host) name, and a nonce that tells two
/// processes on one host, or a restarted pod, apart.
fn holder_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "kubernaut".into());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &nonce[..8])
}

pub async fn start(cfg: Config, kube: kube::Config) -> anyhow::Result<Running> {
    let Config {
        gateway,
        admin,
        admission: admission_cfg,
        cluster,
        store,
        redis,
        controller: ctl,
        executor,
        analysis,
        notifications,
        verification,
        learning,
        logging: _,
        rules,
    } = cfg;
    let analyst = analysis.analyst().context("analysis.llm")?;
    let approval = analysis.approval_policy().context("analysis.approval")?;
    match &analyst.llm {
        Some(llm) => {
            tracing::info!(provider = llm.provider_name(), model = %analyst.model, "analysis asks the LLM first; the rules are its fallback")
        }
        None => tracing::info!("no LLM configured (analysis.llm.enabled): the rules decide"),
    }

    let identity = holder_identity();
    tracing::info!(%identity, "this replica's identity");
    let mut registry = Registry::with_prefix("kubernaut");
    let gateway_metrics = GatewayMetrics::register(registry.sub_registry_with_prefix("gateway"));
    let controller_metrics =
        ControllerMetrics::register(registry.sub_registry_with_prefix("controller"));
    let intake_metrics = IntakeMetrics::register(registry.sub_registry_with_prefix("gateway"));
    if let Some(llm) = &analyst.llm {
        // Closed until the first call says otherwise: the breaker panel and
        // alert have a series from the start.
        let provider = llm.provider_name();
        controller_metrics
            .llm_breaker
            .get_or_create(&kubernaut_actors::metrics::ProviderLabels { provider })
            .set(0);
    }

    let cluster = Cluster::connect(
        kube,
        ClusterConfig {
            cluster_name: Some(cluster.name).filter(|n| !n.is_empty()),
            protected_namespaces: cluster.protected_namespaces,
            cluster_scoped_namespace: cluster.cluster_scoped_namespace,
            lease_namespace: cluster.lease_namespace,
        },
    )
    .context("building the Kubernetes client")?
    // Owner chains, namespaces and nodes from reflectors, for the intake
    // and the controller's stages alike.
    .with_views();
    // The CRD must be servable before anything watches or creates requests.
    // Metadata only: one request our types reject (the watch counts and
    // skips those) must not keep every replica from starting.
    Api::<RemediationRequest>::all(cluster.client().clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
        .context("RemediationRequests cannot be listed: is the CRD installed (kubernaut crds | kubectl apply -f -) and does the controller's role allow it?")?;

    let db = Store::connect(&store.database_url, store.max_connections)
        .await
        .context("connecting to PostgreSQL")?;
    db.migrate().await.context("running migrations")?;
    let (audit, audit_task) = db.audit_log();
    audit.register_metrics(registry.sub_registry_with_prefix("controller"));

    let index = if redis.url.is_empty() {
        tracing::warn!(
            "no Redis configured: every deduplication lookup goes to the Kubernetes API"
        );
        None
    } else {
        let index = SignalIndex::connect(&redis.url, &redis.key_prefix)
            .context("configuring the Redis client")?;
        if !index.wait_connected(Duration::from_secs(2)).await {
            tracing::warn!(
                "Redis is not reachable yet; serving through the Kubernetes API until it is"
            );
        }
        Some(index)
    };
    let intake = Intake::new(
        cluster.clone(),
        index,
        IntakeSettings {
            sync_timeout: gateway.sync_timeout(),
            storm: gateway.storm.settings(),
        },
        intake_metrics,
    );
    let protection = protection_config(&gateway, &cluster)?;
    let cloudwatch = CloudWatch::new(&gateway.cloudwatch, cluster.config().cluster_name.clone())?;
    if gateway.cloudwatch.topics.is_empty() {
        tracing::info!(
            "no SNS topic is allowed (gateway.cloudwatch.topics): CloudWatch alarms are refused"
        );
    }
    let notifier = if notifications.receivers.is_empty() {
        kubernaut_notify::Notifier::off()
    } else {
        let metrics =
            kubernaut_notify::Metrics::register(registry.sub_registry_with_prefix("controller"));
        let audit_log = audit.clone();
        // Every delivery and failure in the audit trail, queued like the
        // rest (a full queue drops and counts it).
        let record = move |d: kubernaut_notify::Delivered| {
            let at = chrono::Utc::now();
            let _ = audit_log.try_record(kubernaut_store::AuditRecord::Event(
                kubernaut_store::EventRecord {
                    request_uid: d.notification.uid.clone(),
                    at,
                    kind: "notification",
                    from_phase: None,
                    to_phase: None,
                    reason: if d.error.is_none() {
                        "Delivered"
                    } else {
                        "DeliveryFailed"
                    }
                    .into(),
                    subject: format!(
                        "{}|{}|{}",
                        d.receiver,
                        d.notification.kind.as_str(),
                        at.timestamp_micros()
                    ),
                    detail: serde_json::json!({
                        "receiver": d.receiver, "kind": d.notification.kind,
                        "attempts": d.attempts, "error": d.error,
                        "summary": d.notification.summary,
                    }),
                },
            ));
        };
        let (notifier, _task) =
            kubernaut_notify::start(&notifications, metrics, record).map_err(anyhow::Error::msg)?;
        notifier
    };
    if verification.window_seconds + ctl.verify_timeout_seconds >= ctl.timeouts.verifying_seconds {
        tracing::warn!(
            window = verification.window_seconds,
            verifying = ctl.timeouts.verifying_seconds,
            "verification.windowSeconds plus controller.verifyTimeoutSeconds is not below controller.timeouts.verifyingSeconds: requests that change something will time out in Verifying"
        );
    }
    let verifier = kubernaut_verify::Verifier::new(verification).map_err(anyhow::Error::msg)?;
    let ctx = Arc::new(Context {
        identity: identity.clone(),
        cluster: cluster.clone(),
        notifier,
        verifier,
        audit,
        rules,
        metrics: controller_metrics,
        holds: Default::default(),
        analyst,
        approval,
        events: cluster.event_sink("kubernaut-controller", &identity),
        settings: Settings {
            verify_timeout: ctl.verify_timeout(),
            restart: ctl.restart_policy(),
            chaos: ctl.chaos()?,
            timeouts: ctl.timeouts.timeouts(),
            retention: Duration::from_secs(ctl.retention_seconds),
            membership: MembershipSettings {
                lease_duration: Duration::from_secs(ctl.lease_duration_seconds),
                renew_every: Duration::from_secs(ctl.lease_renew_seconds),
            },
            shutdown_grace: Duration::from_secs(ctl.shutdown_grace_seconds),
            holds: ctl.holds.settings(),
            storm: kubernaut_actors::rules::StormPolicy {
                max_parallel: ctl.storm.max_parallel,
                max_failure_ratio: ctl.storm.max_failure_ratio,
            },
            budget: ctl.budget.budget(),
            learning,
            janitor_interval: Duration::from_secs(ctl.janitor_interval_seconds.max(1)),
            audit_grace: Duration::from_secs(ctl.audit_grace_seconds),
            executor: executor.settings(ctl.dry_run)?,
            step_timeout: Duration::from_secs(executor.step_timeout_seconds),
            status_linger: Duration::from_millis(ctl.status_linger_millis),
            watch_namespace: Some(ctl.watch_namespace).filter(|n| !n.is_empty()),
        },
    });

    let gw_listener = TcpListener::bind(gateway.listen)
        .await
        .with_context(|| format!("binding the gateway to {}", gateway.listen))?;
    let admin_listener = TcpListener::bind(admin.listen)
        .await
        .with_context(|| format!("binding the admin port to {}", admin.listen))?;
    let gateway_addr = gw_listener.local_addr()?;
    let gateway_tls = if gateway.tls.enabled {
        Some(
            tls::server_config(&gateway.tls.cert_file, &gateway.tls.key_file)
                .context("gateway.tls: its certificate")?,
        )
    } else {
        None
    };
    let admin_addr = admin_listener.local_addr()?;
    let admission_listener = if admission_cfg.enabled {
        let tls = tls::server_config(&admission_cfg.cert_file, &admission_cfg.key_file)
            .context("admission: its certificate")?;
        let tcp = TcpListener::bind(admission_cfg.listen)
            .await
            .with_context(|| {
                format!("binding the admission webhook to {}", admission_cfg.listen)
            })?;
        Some(tls::TlsListener::new(tcp, tls)?)
    } else {
        None
    };
    let admission_addr = match &admission_listener {
        Some(l) => Some(axum::serve::Listener::local_addr(l)?),
        None => None,
    };

    let ready = Readiness::default();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let gw_state = GatewayState {
        intake: Arc::new(intake.clone()),
        metrics: gateway_metrics,
        protection: Arc::new(Protection::new(protection)),
        cloudwatch: Arc::new(cloudwatch),
        approvals: Some(Arc::new(KubeApprovals::new(
            cluster.clone(),
            gateway.auth.token_review.audiences.clone(),
        ))),
        limits: gateway.limits.clone(),
        slack: kubernaut_gateway::slack::SlackApprovals::load(&gateway.slack)
            .map_err(anyhow::Error::msg)?
            .map(Arc::new),
    };
    let gw_app = kubernaut_gateway::router(gw_state.clone());
    let admin_app = admin_router(Arc::new(registry), ready.clone());

    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // TLS or not, the gateway sees each client's address (per-IP limits).
    let gw_make = gw_app.into_make_service_with_connect_info::<SocketAddr>();
    let gw_server: futures::future::BoxFuture<'static, std::io::Result<()>> = match &gateway_tls {
        Some(tls) => {
            use axum::serve::ListenerExt as _;
            let listener = tls::TlsListener::new(gw_listener, tls.clone())?.tap_io(|_| {});
            Box::pin(
                axum::serve(listener, gw_make)
                    .with_graceful_shutdown(wait(shutdown_rx.clone()))
                    .into_future(),
            )
        }
        None => Box::pin(
            axum::serve(gw_listener, gw_make)
                .with_graceful_shutdown(wait(shutdown_rx.clone()))
                .into_future(),
        ),
    };
    let admin_server =
        axum::serve(admin_listener, admin_app).with_graceful_shutdown(wait(shutdown_rx.clone()));
    let ready_flag = ready.clone();
    let intake_drain = intake.clone();
    // Ready once the controller has its requests and the intake its
    // watches: before that a signal would wait for them (or get a 503).
    let controller = controller::run(ctx, shutdown_rx.clone(), move || {
        let (intake, ready_flag) = (intake.clone(), ready_flag.clone());
        tokio::spawn(async move {
            while !intake.wait_synced(Duration::from_secs(30)).await {
                tracing::warn!("the intake's watches have not listed after 30 s; not ready yet");
            }
            tracing::info!("initial lists synced; ready");
            ready_flag.set(true);
        });
    });
    let mut components: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)> = vec![
        (
            "gateway",
            tokio::spawn(
                async move { Ok(gw_server.await?) }.instrument(tracing::info_span!("gateway")),
            ),
        ),
        (
            "admin",
            tokio::spawn(
                async move { Ok(admin_server.await?) }.instrument(tracing::info_span!("admin")),
            ),
        ),
        (
            "controller",
            tokio::spawn(
                async move { Ok(controller.await?) }.instrument(tracing::info_span!("controller")),
            ),
        ),
    ];
    if let Some(listener) = admission_listener {
        let policy = admission::Policy {
            controllers: admission_cfg.controllers.iter().cloned().collect(),
            cluster_home: cluster.config().cluster_scoped_namespace.clone(),
        };
        let app = admission::router(policy, cluster.clone());
        let server = axum::serve(listener, app).with_graceful_shutdown(wait(shutdown_rx.clone()));
        components.push((
            "admission",
            tokio::spawn(
                async move { Ok(server.await?) }.instrument(tracing::info_span!("admission")),
            ),
        ));
    }
    if gateway.kubernetes_events.watch {
        let settings = WatchSettings {
            max_age: Duration::from_secs(gateway.kubernetes_events.max_age_seconds),
            suppress: Duration::from_secs(gateway.kubernetes_events.suppress_seconds),
        };
        let events = cluster.warning_events();
        let mut stop = shutdown_rx.clone();
        components.push((
            "event-watch",
            tokio::spawn(
                async move {
                    tokio::select! {
                        () = kubernaut_gateway::kubernetes_event::pump(events, gw_state, settings) => {
                            anyhow::bail!("the event watch ended")
                        }
                        _ = stop.wait_for(|s| *s) => Ok(()),
                    }
                }
                .instrument(tracing::info_span!("event-watch")),
            ),
        ));
    }
    tracing::info!(gateway = %gateway_addr, admin = %admin_addr, "kubernaut serving");

    let ready_down = ready.clone();
    let shutdown_all = shutdown_tx.clone();
    let task = tokio::spawn(async move {
        // Any component ending ends the process: a half-running control plane
        // is worse than a restarted one.
        let (names, handles): (Vec<_>, Vec<_>) = components.into_iter().unzip();
        let (first, index, rest) = futures::future::select_all(handles).await;
        let name = names[index];
        tracing::info!(component = name, "shutting down");
        ready_down.close();
        let _ = shutdown_all.send(true);
        let drain = async {
            futures::future::join_all(rest).await;
            // Duplicates answered from the Redis journal reach their status
            // now rather than by another replica's sweep.
            intake_drain.settle().await;
            // The controller's context held the last audit handle; the
            // writer ends once its queue is empty.
            let _ = audit_task.await;
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            tracing::warn!("drain timed out after {DRAIN_TIMEOUT:?}");
        }
        match first {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.context(format!("{name} failed"))),
            Err(e) => Err(anyhow::Error::from(e).context(format!("{name} panicked"))),
        }
    });
    Ok(Running {
        gateway_addr,
        admin_addr,
        admission_addr,
        ready,
        shutdown: shutdown_tx,
        task,
    })
}

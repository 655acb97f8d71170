//! K-AU-2 and K-AI-2 on the real stack: pods that live (the pod
//! simulator), a real Alertmanager asked whether the alert is still
//! active, a real Prometheus evaluating the rule's query, and PostgreSQL
//! keeping the outcomes the next decision learns from.

use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kubernaut_api::{ObjectRef, Phase, RemediationRequest, VerificationOutcome};
use kubernaut_e2e::{
    AlertmanagerServer, ControllerProcess, Exporter, PrometheusServer, Stack, control_plane,
    create_request_with, deployment, eventually, managed_namespace, metric, overrides,
    terminal_request, unique,
};
use kubernaut_store::{AuditRecord, EventRecord, OutcomeRecord, RequestRecord, Store};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

/// A Deployment of `image`, `replicas` pods, once the simulator runs them.
async fn workload(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    replicas: i32,
    image: &str,
) -> anyhow::Result<()> {
    let mut d = deployment(name, replicas);
    if let Some(c) = d
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|s| s.containers.first_mut())
    {
        c.image = Some(image.into());
    }
    Api::<Deployment>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &d)
        .await?;
    Ok(())
}

async fn set_image(admin: &kube::Client, ns: &str, name: &str, image: &str) -> anyhow::Result<()> {
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    Api::<Deployment>::namespaced(admin.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

async fn available(admin: &kube::Client, ns: &str, name: &str) -> anyhow::Result<i32> {
    let d = Api::<Deployment>::namespaced(admin.clone(), ns)
        .get(name)
        .await?;
    Ok(d.status.and_then(|s| s.available_replicas).unwrap_or(0))
}

async fn crash_looping(admin: &kube::Client, ns: &str, app: &str) -> anyhow::Result<bool> {
    let pods = Api::<Pod>::namespaced(admin.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    Ok(pods.items.iter().any(|p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        == Some("CrashLoopBackOff")
                })
            })
    }))
}

/// Waits until the request is Verifying with its window recorded.
async fn in_window(
    admin: &kube::Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<RemediationRequest> {
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), ns);
    eventually(&format!("{ns}/{name} in its window"), WAIT, || async {
        let rr = api.get(name).await?;
        anyhow::ensure!(
            !rr.phase().is_terminal(),
            "{ns}/{name} ended before its window: {:?}",
            rr.status
        );
        Ok(rr
            .status
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Verifying && s.verification.is_some())
            .then_some(rr))
    })
    .await
}

fn alert(name: &str, ns: &str, deployment: &str, ends_in: chrono::Duration) -> serde_json::Value {
    json!([{"labels": {"alertname": name, "namespace": ns, "deployment": deployment},
            "annotations": {"summary": "test"},
            "startsAt": (Utc::now() - chrono::Duration::minutes(5)).to_rfc3339(),
            "endsAt": (Utc::now() + ends_in).to_rfc3339()}])
}

fn score_of(rr: &RemediationRequest, component: &str) -> Option<f64> {
    rr.status
        .as_ref()
        .and_then(|s| s.verification.as_ref())
        .and_then(|v| v.components.iter().find(|c| c.name == component))
        .and_then(|c| c.score)
}

/// The outcome row PostgreSQL keeps for the request's action.
async fn stored_outcome(
    stack: &Stack,
    uid: &str,
    action: &str,
) -> anyhow::Result<(String, String, String)> {
    let pool = sqlx::PgPool::connect(&stack.database_url).await?;
    eventually(
        "the outcome in PostgreSQL",
        Duration::from_secs(30),
        || async {
            Ok(sqlx::query_as::<_, (String, String, String)>(
                "SELECT outcome, target_kind, environment FROM remediation_outcomes
             WHERE request_uid = $1 AND action = $2",
            )
            .bind(uid)
            .bind(action)
            .fetch_optional(&pool)
            .await?)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_heals_a_crash_loop_and_every_scorer_says_effective() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "verify-ok", "development").await?;
    workload(&admin, &ns, "web", 2, "registry.local/app:1.0").await?;
    eventually("2 pods available", WAIT, || async {
        Ok((available(&admin, &ns, "web").await? == 2).then_some(()))
    })
    .await?;
    // A bad release: its pods crash-loop.
    set_image(&admin, &ns, "web", "registry.local/app:2.0-crashloop").await?;
    eventually("a crash loop", WAIT, || async {
        Ok(crash_looping(&admin, &ns, "web").await?.then_some(()))
    })
    .await?;

    let exporter = Exporter::start("demo_errors{deployment=\"web\"} 3\n").await?;
    let prometheus = PrometheusServer::start(&[exporter.addr.to_string()]).await?;
    let am = AlertmanagerServer::start("http://127.0.0.1:9/", "unused").await?;
    let signal = unique("WebCrashLooping");
    am.post_alerts(&alert(&signal, &ns, "web", chrono::Duration::hours(1)))
        .await?;
    eventually("Prometheus to scrape the errors", WAIT, || async {
        Ok((prometheus.series("demo_errors > 0").await? == 1).then_some(()))
    })
    .await?;

    let settings = [
        ("VERIFICATION__WINDOW_SECONDS", "8".to_string()),
        ("VERIFICATION__ALERTMANAGER_URL", am.url.clone()),
        ("VERIFICATION__PROMETHEUS_URL", prometheus.url.clone()),
    ];
    let running = control_plane(
        stack,
        &ns,
        &overrides(&settings),
        json!([{"signal": signal, "action": "rollback_deployment",
                "parameters": {"namespace": "{{target.namespace}}", "name": "{{target.name}}"},
                "verifyQuery": "demo_errors{deployment=\"{{target.name}}\"} > 0"}]),
    )
    .await?;
    let target = ObjectRef::new("Deployment", &ns, "web");
    let labels = json!({"alertname": signal, "namespace": ns, "deployment": "web"});
    let name = create_request_with(
        &admin,
        &signal,
        &target,
        false,
        json!({"source": "alertmanager", "labels": labels}),
    )
    .await?;

    // A rollback is high-risk: someone on call approves it.
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    eventually("the approval to be asked", WAIT, || async {
        Ok((api.get(&name).await?.phase() == Phase::AwaitingApproval).then_some(()))
    })
    .await?;
    // managedFields times have whole seconds, and a decision dated the
    // second the request was created is refused (it could predate it).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let approve = json!({"metadata": {"annotations": {
        "kubernaut.io/approval": "approved", "kubernaut.io/approved-by": "sre-on-call"}}});
    let kubectl = PatchParams {
        field_manager: Some("kubectl-annotate".into()),
        ..PatchParams::default()
    };
    api.patch(&name, &kubectl, &Patch::Merge(&approve)).await?;

    // The rollback is applied; the errors stop and Prometheus's rule would
    // resolve the alert: the test plays both.
    let rr = in_window(&admin, &ns, &name).await?;
    let v = rr.status.as_ref().and_then(|s| s.verification.clone());
    assert!(
        v.as_ref()
            .and_then(|v| v.baseline.spec_hash.as_ref())
            .is_some(),
        "the window starts with the target's spec hash: {v:?}"
    );
    exporter.set("demo_errors{deployment=\"web\"} 0\n");
    am.post_alerts(&alert(&signal, &ns, "web", chrono::Duration::zero()))
        .await?;

    let rr = terminal_request(&admin, &ns, &name, WAIT).await?;
    let status = rr.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Completed, "{status:?}");
    let v = status.verification.clone().expect("a verification");
    assert_eq!(v.outcome, Some(VerificationOutcome::Effective), "{v:?}");
    assert_eq!(v.score, Some(1.0), "{v:?}");
    for c in ["health", "alert", "metric", "drift"] {
        assert_eq!(score_of(&rr, c), Some(1.0), "{c}: {v:?}");
    }
    assert!(v.window_ends.0 > v.started_at.0, "a window was kept: {v:?}");
    assert_eq!(available(&admin, &ns, "web").await?, 2, "healed for real");
    let uid = rr.metadata.uid.clone().unwrap_or_default();
    let (outcome, kind, env) = stored_outcome(stack, &uid, "rollback_deployment").await?;
    assert_eq!(
        (outcome.as_str(), kind.as_str(), env.as_str()),
        ("Effective", "Deployment", "development")
    );
    assert!(
        metric(
            &running,
            "kubernaut_controller_verifications_total{outcome=\"Effective\"}"
        )
        .await?
            >= 1.0
    );
    running.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_does_not_help_is_ineffective_fails_and_is_escalated() -> anyhow::Result<()>
{
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "verify-bad", "development").await?;
    workload(&admin, &ns, "api", 1, "registry.local/api:oom").await?;
    eventually("a crash loop", WAIT, || async {
        Ok(crash_looping(&admin, &ns, "api").await?.then_some(()))
    })
    .await?;
    let pod = Api::<Pod>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default().labels("app=api"))
        .await?
        .items
        .into_iter()
        .find_map(|p| p.metadata.name)
        .expect("a pod");
    let am = AlertmanagerServer::start("http://127.0.0.1:9/", "unused").await?;
    let signal = unique("ApiOomKilled");
    am.post_alerts(&alert(&signal, &ns, "api", chrono::Duration::hours(1)))
        .await?;
    let settings = [
        ("VERIFICATION__WINDOW_SECONDS", "8".to_string()),
        ("VERIFICATION__ALERTMANAGER_URL", am.url.clone()),
    ];
    let running = control_plane(
        stack,
        &ns,
        &overrides(&settings),
        json!([{"signal": signal, "action": "restart_pod",
                "parameters": {"namespace": "{{resource.namespace}}", "name": "{{resource.name}}"}}]),
    )
    .await?;
    let name = create_request_with(
        &admin,
        &signal,
        &ObjectRef::new("Deployment", &ns, "api"),
        false,
        json!({"source": "alertmanager",
               "signalResource": ObjectRef::new("Pod", &ns, &pod),
               "labels": {"alertname": signal, "namespace": ns, "deployment": "api"}}),
    )
    .await?;
    let rr = terminal_request(&admin, &ns, &name, WAIT).await?;
    let status = rr.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Failed, "{status:?}");
    let last = status.phase_history.last().map(|t| t.reason.clone());
    assert_eq!(last.as_deref(), Some("Ineffective"), "{status:?}");
    let v = status.verification.clone().expect("a verification");
    assert_eq!(v.outcome, Some(VerificationOutcome::Ineffective), "{v:?}");
    assert_eq!(score_of(&rr, "health"), Some(0.0), "{v:?}");
    assert_eq!(score_of(&rr, "alert"), Some(0.0), "{v:?}");
    assert_eq!(score_of(&rr, "metric"), None, "no Prometheus: {v:?}");
    assert!(
        v.components
            .iter()
            .any(|c| c.name == "health" && c.evidence.contains("crash-looping or OOMKilled")),
        "{v:?}"
    );
    let escalated = metric(
        &running,
        "kubernaut_controller_escalations_total{stage=\"Ineffective\"}",
    )
    .await?;
    assert_eq!(escalated, 1.0);
    let uid = rr.metadata.uid.clone().unwrap_or_default();
    let (outcome, ..) = stored_outcome(stack, &uid, "restart_pod").await?;
    assert_eq!(outcome, "Ineffective");
    running.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_someone_else_changed_in_the_window_is_inconclusive() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "verify-drift", "development").await?;
    workload(&admin, &ns, "cart", 2, "registry.local/cart:1.0").await?;
    eventually("2 pods available", WAIT, || async {
        Ok((available(&admin, &ns, "cart").await? == 2).then_some(()))
    })
    .await?;
    let signal = unique("CartSlow");
    let settings = [("VERIFICATION__WINDOW_SECONDS", "8".to_string())];
    let running = control_plane(
        stack,
        &ns,
        &overrides(&settings),
        json!([{"signal": signal, "action": "rollout_restart",
                "parameters": {"kind": "Deployment", "namespace": "{{target.namespace}}",
                               "name": "{{target.name}}"}}]),
    )
    .await?;
    let name = create_request_with(
        &admin,
        &signal,
        &ObjectRef::new("Deployment", &ns, "cart"),
        false,
        json!({}),
    )
    .await?;
    in_window(&admin, &ns, &name).await?;
    // Someone deploys a new version during the window.
    set_image(&admin, &ns, "cart", "registry.local/cart:1.1").await?;
    let rr = terminal_request(&admin, &ns, &name, WAIT).await?;
    let status = rr.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Completed, "{status:?}");
    let v = status.verification.clone().expect("a verification");
    assert_eq!(v.outcome, Some(VerificationOutcome::Inconclusive), "{v:?}");
    assert_eq!(score_of(&rr, "drift"), Some(0.0), "{v:?}");
    let uid = rr.metadata.uid.clone().unwrap_or_default();
    let (outcome, ..) = stored_outcome(stack, &uid, "rollout_restart").await?;
    assert_eq!(outcome, "Inconclusive");
    running.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_choice_that_recently_did_not_work_is_passed_over_and_changing_nothing_scores_nothing()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "verify-learn", "development").await?;
    workload(&admin, &ns, "queue", 1, "registry.local/queue:1.0").await?;
    let signal = unique("QueueBacklog");
    // Three recent requests where rollout_restart was verified Ineffective.
    let store = Store::connect(&stack.database_url, 2).await?;
    store.migrate().await?;
    let (audit, _task) = store.audit_log();
    for i in 0..3 {
        let uid = format!("{signal}-{i}");
        audit
            .record(AuditRecord::Request(RequestRecord {
                uid: uid.clone(),
                namespace: ns.clone(),
                name: uid.clone(),
                fingerprint: uid.clone(),
                signal_name: signal.clone(),
                severity: "warning".into(),
                source: "generic".into(),
                target_kind: "Deployment".into(),
                target_namespace: ns.clone(),
                target_name: "queue".into(),
                phase: "Failed".into(),
                firing_time: Utc::now(),
            }))
            .await?;
        audit
            .record(AuditRecord::Event(EventRecord {
                request_uid: uid.clone(),
                at: Utc::now(),
                kind: "action",
                from_phase: None,
                to_phase: None,
                reason: "StepFinished".into(),
                subject: "restart".into(),
                detail: json!({"id": "restart", "action": "rollout_restart"}),
            }))
            .await?;
        audit
            .record(AuditRecord::Outcome(OutcomeRecord {
                request_uid: uid,
                action: "rollout_restart".into(),
                signal_name: signal.clone(),
                target_kind: "Deployment".into(),
                environment: "development".into(),
                outcome: "Ineffective".into(),
                score: Some(0.0),
                components: json!([]),
            }))
            .await?;
    }
    let running = control_plane(
        stack,
        &ns,
        &[],
        json!([{"signal": signal, "action": "rollout_restart",
                "parameters": {"kind": "Deployment", "namespace": "{{target.namespace}}",
                               "name": "{{target.name}}"},
                "alternatives": [{"action": "notify_only",
                                  "parameters": {"message": "restarts have not helped; look at the queue"}}]}]),
    )
    .await?;
    let name = create_request_with(
        &admin,
        &signal,
        &ObjectRef::new("Deployment", &ns, "queue"),
        false,
        json!({}),
    )
    .await?;
    let rr = terminal_request(&admin, &ns, &name, WAIT).await?;
    let status = rr.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Completed, "{status:?}");
    let analysis = status.analysis.clone().expect("an analysis");
    assert_eq!(analysis.action, "notify_only", "{analysis:?}");
    assert!(
        analysis
            .passed_over
            .first()
            .is_some_and(|p| p.starts_with("rollout_restart worked in 0 of its last 3")),
        "{analysis:?}"
    );
    // notify_only changed nothing: no window, no score, no outcome row.
    assert!(status.verification.is_none(), "{status:?}");
    let last = status.phase_history.last().map(|t| t.reason.clone());
    assert_eq!(last.as_deref(), Some("NothingChanged"));
    running.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_takes_the_request_over_finishes_the_window_another_began()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "verify-failover", "development").await?;
    workload(&admin, &ns, "pay", 1, "registry.local/pay:1.0").await?;
    eventually("a pod available", WAIT, || async {
        Ok((available(&admin, &ns, "pay").await? == 1).then_some(()))
    })
    .await?;
    let rules = json!([{"signal": "PayLatency", "action": "rollout_restart",
        "parameters": {"kind": "Deployment", "namespace": "{{target.namespace}}", "name": "{{target.name}}"}}]);
    let settings = [
        ("CONTROLLER__LEASE_DURATION_SECONDS", "6"),
        ("CONTROLLER__LEASE_RENEW_SECONDS", "1"),
        ("VERIFICATION__WINDOW_SECONDS", "15"),
    ];
    let mut first = ControllerProcess::start(stack, &ns, "vf-a", &settings, rules.clone()).await?;
    let name = create_request_with(
        &admin,
        "PayLatency",
        &ObjectRef::new("Deployment", &ns, "pay"),
        false,
        json!({}),
    )
    .await?;
    let began = in_window(&admin, &ns, &name).await?;
    let window = began
        .status
        .as_ref()
        .and_then(|s| s.verification.clone())
        .expect("a window");
    first.kill9();

    let second = ControllerProcess::start(stack, &ns, "vf-b", &settings, rules).await?;
    let rr = terminal_request(&admin, &ns, &name, WAIT)
        .await
        .with_context(|| second.tail())?;
    let status = rr.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Completed, "{status:?}");
    let v = status.verification.clone().expect("a verification");
    assert_eq!(v.outcome, Some(VerificationOutcome::Effective), "{v:?}");
    // The same window, not a new one: its start and baseline are the first
    // replica's.
    assert_eq!(v.started_at, window.started_at);
    assert_eq!(v.window_ends, window.window_ends);
    assert_eq!(v.baseline, window.baseline);
    assert!(
        v.scored_at
            .as_ref()
            .is_some_and(|t| t.0 >= window.window_ends.0),
        "scored once the window ended: {v:?}"
    );
    assert!(
        status
            .owner
            .as_deref()
            .is_some_and(|o| o.starts_with("vf-b")),
        "{status:?}"
    );
    Ok(())
}

//! Issue 17 on the real stack: requests others can create act only on
//! what they own, and what an alert sender writes is bounded before it
//! reaches etcd.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::ListParams;
use kube::api::PostParams;
use kubernaut_api::{Phase, RemediationRequest};
use kubernaut_e2e::{
    Gateway, Stack, alertmanager_payload, api_target, control_plane, create_request, deployment,
    deployment_with_pods, eventually, managed_namespace, now_rfc3339, phase_history, post,
    terminal_request, unique,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_another_namespaces_target_is_skipped_and_changes_nothing()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let victim = api_target(&admin, "trust-victim").await?;
    let home = managed_namespace(&admin, "trust-home", "staging").await?;
    let rules = json!([{ "signal": "Foreign", "action": "scale_deployment",
        "parameters": {"namespace": "{{target.namespace}}", "name": "{{target.name}}", "replicas": 0} }]);
    let running = control_plane(stack, &home, &[], rules).await?;

    let name = unique("foreign");
    let now = now_rfc3339();
    let rr: RemediationRequest = serde_json::from_value(json!({
        "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
        "metadata": {"name": name, "namespace": home},
        "spec": {
            "fingerprint": unique("fp"), "signalName": "Foreign", "severity": "critical",
            "source": "generic", "instanceId": unique("instance"),
            "target": victim, "signalResource": victim,
            "firingTime": now, "receivedTime": now, "originalPayload": "{}",
        },
    }))?;
    Api::<RemediationRequest>::namespaced(admin.clone(), &home)
        .create(&PostParams::default(), &rr)
        .await?;

    let rr = terminal_request(&admin, &home, &name, TIMEOUT).await?;
    assert_eq!(rr.phase(), Phase::Skipped, "{:?}", phase_history(&rr));
    let (_, reason) = phase_history(&rr).pop().unwrap_or_default();
    assert_eq!(reason, "OutOfScope");
    let message = rr
        .status
        .as_ref()
        .and_then(|s| s.phase_history.last())
        .map(|t| t.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(&format!("namespace \"{}\"", victim.namespace)),
        "{message}"
    );
    let replicas = Api::<Deployment>::namespaced(admin.clone(), &victim.namespace)
        .get(&victim.name)
        .await?
        .spec
        .and_then(|s| s.replicas);
    assert_eq!(replicas, Some(1));
    running.shutdown().await
}

/// One Alertmanager notification for `pod`, its first alert's labels and
/// annotations extended by `labels` and `annotations`.
fn hostile(
    ns: &str,
    pod: &str,
    fp: &str,
    labels: serde_json::Value,
    annotations: serde_json::Value,
) -> String {
    let mut body: serde_json::Value = serde_json::from_str(&alertmanager_payload(
        "Hostile",
        ns,
        &[(pod, fp)],
        "2026-11-22T03:00:00Z",
    ))
    .expect("the harness writes JSON");
    let alert = &mut body["alerts"][0];
    for (field, extra) in [("labels", labels), ("annotations", annotations)] {
        if let (Some(to), Some(from)) = (alert[field].as_object_mut(), extra.as_object()) {
            to.extend(from.clone());
        }
    }
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_request_a_hostile_sender_can_cause_is_bounded() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "trust-size", "staging").await?;
    let pods: Vec<String> = deployment_with_pods(&admin, &ns, "web", 3)
        .await?
        .into_iter()
        .collect();
    let gw = Gateway::start(stack, Some(&stack.redis_url), "gw-trust-size").await?;
    let url = gw.url("alertmanager");

    // About 200 KiB of annotations: refused, with the bound named.
    let big = hostile(
        &ns,
        &pods[0],
        "big",
        json!({}),
        json!({"description": "x".repeat(200 * 1024)}),
    );
    let reply = post(&url, "application/json", big).await?;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.text.contains("annotations hold"), "{}", reply.text);
    // Too many labels: refused.
    let labels: serde_json::Map<String, serde_json::Value> =
        (0..40).map(|i| (format!("l{i}"), json!("v"))).collect();
    let reply = post(
        &url,
        "application/json",
        hostile(&ns, &pods[1], "many", labels.into(), json!({})),
    )
    .await?;
    assert_eq!(reply.status, 400, "{}", reply.text);

    // Everything at its bound, and NUL and escapes in the severity: taken,
    // with the control characters gone.
    let labels: serde_json::Map<String, serde_json::Value> = (0..28)
        .map(|i| (format!("{i:0>128}"), json!("v".repeat(512))))
        .collect();
    let annotations: serde_json::Map<String, serde_json::Value> = (0..8)
        .map(|i| (format!("a{i}"), json!("é".repeat(1020))))
        .collect();
    let mut body: serde_json::Value = serde_json::from_str(&hostile(
        &ns,
        &pods[2],
        "max",
        labels.into(),
        annotations.into(),
    ))?;
    body["alerts"][0]["labels"]["severity"] = json!("crit\u{0}ical\u{1b}[2J");
    let reply = post(&url, "application/json", body.to_string()).await?;
    assert_eq!(reply.status, 201, "{}", reply.text);

    let rrs = Api::<RemediationRequest>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    assert_eq!(rrs.items.len(), 1, "only the bounded alert made a request");
    let rr = &rrs.items[0];
    assert_eq!(rr.spec.severity, "critical[2J");
    assert!(
        rr.spec
            .original_payload
            .ends_with(kubernaut_gateway::limits::TRUNCATED)
    );
    let size = serde_json::to_vec(rr)?.len();
    eprintln!("the largest request object a sender can cause: {size} bytes");
    assert!(size < 64 * 1024, "{size} bytes");
    let refused = |reason: &str| {
        format!(
            "kubernaut_gateway_signals_total{{source=\"alertmanager\",outcome=\"invalid\",reason=\"{reason}\"}}"
        )
    };
    let text = gw.metrics_text();
    for reason in ["annotations_too_large", "too_many_labels"] {
        assert!(
            text.contains(&format!("{} 1", refused(reason))),
            "{reason}: {text}"
        );
    }
    Ok(())
}

/// Issue 17, finding 7: a Deployment holding a literal password is
/// changed; neither the audit trail nor the request's status holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_literal_password_in_a_changed_object_reaches_neither_postgres_nor_the_status()
-> anyhow::Result<()> {
    const PASSWORD: &str = "correct-horse-battery-staple";
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "trust-secret", "staging").await?;
    let mut d = serde_json::to_value(deployment("api", 1))?;
    d["metadata"]["annotations"] = json!({
        "kubectl.kubernetes.io/last-applied-configuration":
            format!("{{\"env\":[{{\"name\":\"DB_PASSWORD\",\"value\":\"{PASSWORD}\"}}]}}")
    });
    d["spec"]["template"]["spec"]["containers"][0]["env"] =
        json!([{"name": "DB_PASSWORD", "value": PASSWORD}]);
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &serde_json::from_value(d)?)
        .await?;
    let t = kubernaut_api::ObjectRef::new("Deployment", &ns, "api");
    let rules = json!([{ "signal": "Leaky", "action": "scale_deployment",
        "parameters": {"namespace": "{{target.namespace}}", "name": "{{target.name}}", "replicas": 2} }]);
    let running = control_plane(stack, &ns, &[], rules).await?;
    let name = create_request(&admin, "Leaky", &t, false).await?;
    let rr = terminal_request(&admin, &ns, &name, TIMEOUT).await?;
    assert_eq!(rr.phase(), Phase::Completed, "{:?}", phase_history(&rr));
    let uid = rr.metadata.uid.clone().unwrap_or_default();

    let db = sqlx::PgPool::connect(&stack.database_url).await?;
    let details: Vec<String> = eventually("the step's end in the audit trail", TIMEOUT, || async {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT detail::text FROM remediation_events WHERE request_uid = $1",
        )
        .bind(&uid)
        .fetch_all(&db)
        .await?;
        Ok(rows
            .iter()
            .any(|d| d.contains("scale_deployment"))
            .then_some(rows))
    })
    .await?;
    let recorded = details.join("\n");
    assert!(
        recorded.contains("\"replicas\""),
        "the change itself is recorded: {recorded}"
    );
    assert!(!recorded.contains(PASSWORD), "{recorded}");
    assert!(
        recorded.contains("DB_PASSWORD") && recorded.contains("<redacted>"),
        "the object is recorded, its value redacted: {recorded}"
    );
    let status = serde_json::to_string(&rr.status)?;
    assert!(!status.contains(PASSWORD), "{status}");
    // The writer's queue and its refusals are watched like the rest.
    let (_, metrics) =
        kubernaut_e2e::get(&format!("http://{}/metrics", running.admin_addr)).await?;
    for m in [
        "kubernaut_controller_audit_backlog ",
        "kubernaut_controller_audit_dead_letters_total ",
    ] {
        assert!(metrics.lines().any(|l| l.starts_with(m)), "{m}missing");
    }
    running.shutdown().await
}

/// Issue 17, finding 9: a rule filled from alert labels cannot reach
/// beyond the request: a step aimed at another namespace is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_steered_by_labels_to_another_namespace_is_refused() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let victim = api_target(&admin, "trust-rule-victim").await?;
    let t = api_target(&admin, "trust-rule-home").await?;
    let rules = json!([{ "signal": "Steered", "action": "scale_deployment",
        "parameters": {"namespace": "{{labels.ns}}", "name": "api", "replicas": 0} }]);
    let running = control_plane(stack, &t.namespace, &[], rules).await?;
    let name = kubernaut_e2e::create_request_with(
        &admin,
        "Steered",
        &t,
        false,
        json!({"labels": {"ns": victim.namespace}}),
    )
    .await?;
    let rr = terminal_request(&admin, &t.namespace, &name, TIMEOUT).await?;
    assert_eq!(rr.phase(), Phase::Failed, "{:?}", phase_history(&rr));
    let status = serde_json::to_string(&rr.status)?;
    assert!(
        status.contains("is not one of the request's own objects"),
        "{status}"
    );
    for ns in [&victim.namespace, &t.namespace] {
        let replicas = Api::<Deployment>::namespaced(admin.clone(), ns)
            .get("api")
            .await?
            .spec
            .and_then(|s| s.replicas);
        assert_eq!(replicas, Some(1), "{ns}");
    }
    running.shutdown().await
}

/// Issue 17, finding 8: the gateway (and its approval endpoint, which
/// takes humans' tokens) speaks HTTPS when `gateway.tls` is on, as in
/// deploy/; plain HTTP gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_https_and_nothing_in_clear() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = api_target(&admin, "trust-tls").await?;
    let dir = std::env::temp_dir().join(unique("kubernaut-gateway-tls"));
    std::fs::create_dir_all(&dir)?;
    kubernaut_e2e::tls_certificates(&dir)?;
    let overrides = [
        ("GATEWAY__TLS__ENABLED", "true".to_string()),
        (
            "GATEWAY__TLS__CERT_FILE",
            dir.join("tls.crt").display().to_string(),
        ),
        (
            "GATEWAY__TLS__KEY_FILE",
            dir.join("tls.key").display().to_string(),
        ),
    ];
    let overrides = kubernaut_e2e::overrides(&overrides);
    let running = control_plane(stack, &t.namespace, &overrides, json!([])).await?;
    let port = running.gateway_addr.port();
    let body = json!({"name": "TlsCheck", "id": "tls-1", "severity": "warning",
        "target": {"kind": "Deployment", "namespace": t.namespace, "name": "api"}})
    .to_string();
    let curl = |scheme: &str| {
        std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                "--cacert",
            ])
            .arg(dir.join("ca.pem"))
            .args([
                "-H",
                "content-type: application/json",
                "-H",
                "authorization: Bearer dev-token",
            ])
            .args(["--data", &body])
            .arg(format!(
                "{scheme}://127.0.0.1:{port}/api/v1/signals/generic"
            ))
            .output()
    };
    let https = curl("https")?;
    let code = String::from_utf8_lossy(&https.stdout).to_string();
    assert!(
        matches!(code.as_str(), "201" | "202" | "200"),
        "https: {code}"
    );
    let http = curl("http")?;
    let code = String::from_utf8_lossy(&http.stdout).to_string();
    assert_eq!(code, "000", "plain HTTP is not answered");
    running.shutdown().await
}

/// Issue 17: the remediation budget. Past it, a decided request waits
/// for a human instead of acting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_remediation_budget_a_human_is_asked() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let first = api_target(&admin, "trust-budget").await?;
    Api::<Deployment>::namespaced(admin.clone(), &first.namespace)
        .create(&PostParams::default(), &deployment("api2", 1))
        .await?;
    let second = kubernaut_api::ObjectRef::new("Deployment", &first.namespace, "api2");
    let rules = json!([{ "signal": "Budgeted", "action": "notify_only",
        "parameters": {"message": "noted"} }]);
    let running = control_plane(
        stack,
        &first.namespace,
        &[("CONTROLLER__BUDGET__MAX_STARTS_PER_MINUTE", "1")],
        rules,
    )
    .await?;
    let a = create_request(&admin, "Budgeted", &first, false).await?;
    let rr = terminal_request(&admin, &first.namespace, &a, TIMEOUT).await?;
    assert_eq!(rr.phase(), Phase::Completed, "{:?}", phase_history(&rr));

    let b = create_request(&admin, "Budgeted", &second, false).await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &first.namespace);
    let rr = eventually("the second request to wait", TIMEOUT, || async {
        let rr = api.get(&b).await?;
        Ok((rr.phase() == Phase::AwaitingApproval).then_some(rr))
    })
    .await?;
    let reasons = rr
        .status
        .and_then(|s| s.approval)
        .map(|a| a.reasons)
        .unwrap_or_default();
    assert!(
        reasons.iter().any(|r| r.contains("remediation budget")),
        "{reasons:?}"
    );
    running.shutdown().await
}

/// Issue 17, finding 6: as Kubernaut's own ServiceAccount, with the RBAC
/// deploy/ grants, a write outside the managed namespaces is refused by the
/// API server itself, whatever the controller's code would do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_kubernauts_writes_outside_managed_namespaces() -> anyhow::Result<()>
{
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let managed = api_target(&admin, "trust-rbac").await?;
    let plain = unique("trust-rbac-plain");
    stack.kubectl(&["create", "namespace", &plain])?;
    Api::<Deployment>::namespaced(admin.clone(), &plain)
        .create(&PostParams::default(), &deployment("api", 1))
        .await?;
    let kubernaut = stack.controller_client().await?;
    let scale_to_zero = |ns: &str| {
        let api = Api::<Deployment>::namespaced(kubernaut.clone(), ns);
        async move {
            let patch = json!({"spec": {"replicas": 0}});
            api.patch(
                "api",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        }
    };
    for ns in [plain.as_str(), "kube-system"] {
        if ns == "kube-system" {
            // A Deployment of the admin's in kube-system, as a target.
            let _ = Api::<Deployment>::namespaced(admin.clone(), ns)
                .create(&PostParams::default(), &deployment("api", 1))
                .await;
        }
        match scale_to_zero(ns).await {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{ns}: {e:?}"),
            other => panic!("{ns}: the write was not refused: {other:?}"),
        }
    }
    // Where it is bound, the same write goes through.
    scale_to_zero(&managed.namespace).await?;
    Ok(())
}

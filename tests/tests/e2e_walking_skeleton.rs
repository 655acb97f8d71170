//! The walking skeleton end to end on the real stack: an Alertmanager alert
//! for a crash-looping pod becomes a RemediationRequest, the controller
//! (running with the RBAC identity deploy/ grants it) drives it to
//! Completed, the pod is deleted and its ReplicaSet replaces it, and the
//! audit trail is in PostgreSQL. A second alert runs a two-step workflow
//! (collect_diagnostics, then rollout_restart) through the same pipeline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kubernaut::Config;
use kubernaut_api::{Phase, RemediationRequest, StepPhase};
use kubernaut_e2e::{Stack, deployment, eventually, post, repo_root, unique};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn alert_payload(namespace: &str, pod: &str, starts_at: &str) -> String {
    named_alert("KubePodCrashLooping", namespace, pod, starts_at)
}

fn named_alert(alertname: &str, namespace: &str, pod: &str, starts_at: &str) -> String {
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{alertname}\"}}"),
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "kubernaut",
        "groupLabels": {"alertname": alertname},
        "commonLabels": {"alertname": alertname, "namespace": namespace, "severity": "critical"},
        "commonAnnotations": {"summary": "Pod is crash looping."},
        "externalURL": "http://alertmanager.local:9093",
        "alerts": [{
            "status": "firing",
            "labels": {
                "alertname": alertname, "namespace": namespace, "pod": pod,
                "container": "app", "job": "kube-state-metrics", "severity": "critical"
            },
            "annotations": {
                "description": format!("Pod {namespace}/{pod} (app) is in waiting state (reason: \"CrashLoopBackOff\")."),
                "runbook_url": "https://runbooks.prometheus-operator.dev/runbooks/kubernetes/kubepodcrashlooping"
            },
            "startsAt": starts_at,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.local:9090/graph?g0.expr=max_over_time%28kube_pod_container_status_waiting_reason%5B5m%5D%29",
            "fingerprint": format!("{:016x}", pod.len() * 7919)
        }]
    })
    .to_string()
}

async fn pod_names(pods: &Api<Pod>, app: &str) -> anyhow::Result<BTreeSet<String>> {
    Ok(pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_alert_to_completed_restart_with_audit() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;

    // A managed namespace with a Deployment; controller-manager makes its
    // pods, and the pod simulator runs them.
    let ns = unique("e2e-skeleton");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": ns, "labels": {"kubernaut.io/managed": "true", "kubernaut.io/environment": "production",
                                                 (kubernaut_e2e::podsim::ENABLED_LABEL): "true"}}
        }))?)
        .await?;
    kubernaut_e2e::bind_actions(&admin, &ns).await?;
    let unmanaged = unique("e2e-unmanaged");
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": unmanaged}}))?,
        )
        .await?;
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &deployment("cart", 2))
        .await?;
    Api::<Deployment>::namespaced(admin.clone(), &unmanaged)
        .create(&PostParams::default(), &deployment("cart", 1))
        .await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let before = eventually("two cart pods", TIMEOUT, || async {
        let names = pod_names(&pods, "cart").await?;
        Ok((names.len() == 2).then_some(names))
    })
    .await?;
    let victim = before.iter().next().cloned().context("a pod")?;

    // The control plane, in-process, with the controller's RBAC identity.
    let cfg = Config::from_yaml(
        &std::fs::read_to_string(repo_root().join("config/dev.yaml"))?,
        [
            ("DATABASE_URL".to_string(), stack.database_url.clone()),
            (
                "KUBERNAUT__GATEWAY__LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ),
            (
                "KUBERNAUT__ADMIN__LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ),
            // Other tests' requests are theirs to drive.
            (
                "KUBERNAUT__CONTROLLER__WATCH_NAMESPACE".to_string(),
                ns.clone(),
            ),
            ("REDIS_URL".to_string(), stack.redis_url.clone()),
        ],
    )?;
    let running = kubernaut::start(cfg, stack.controller_config().await?).await?;
    let url = format!(
        "http://{}/api/v1/signals/alertmanager",
        running.gateway_addr
    );
    eventually("readiness", TIMEOUT, || async {
        Ok(running.ready.is_ready().then_some(()))
    })
    .await?;

    // First delivery: 201 and a request.
    let payload = alert_payload(&ns, &victim, "2026-11-22T03:00:00.000Z");
    let sent = Instant::now();
    let r = post(&url, "application/json", payload.clone()).await?;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["result"], "created");
    let name = r.body["request"]
        .as_str()
        .context("request name")?
        .to_string();
    assert_eq!(r.body["namespace"], ns.as_str());

    // Re-delivery of the same alert instance while the first is in flight: 202.
    let r = post(&url, "application/json", payload.clone()).await?;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["request"], name.as_str());
    assert_eq!(r.body["occurrenceCount"], 2);

    // The request reaches Completed with its full history.
    let rrs: Api<RemediationRequest> = Api::namespaced(admin.clone(), &ns);
    let done = eventually("the request to complete", TIMEOUT, || async {
        let rr = rrs.get(&name).await?;
        Ok(rr.phase().is_terminal().then_some(rr))
    })
    .await?;
    let latency = sent.elapsed();
    println!("e2e: alert -> Completed in {} ms", latency.as_millis());
    let status = done.status.clone().context("status")?;
    assert_eq!(status.phase, Phase::Completed, "{status:#?}");
    let history: Vec<Phase> = status.phase_history.iter().map(|t| t.phase).collect();
    assert_eq!(
        history,
        [
            Phase::Processing,
            Phase::Analyzing,
            Phase::Executing,
            Phase::Verifying,
            Phase::Completed
        ]
    );
    assert_eq!(done.spec.target.kind, "Deployment");
    assert_eq!(done.spec.target.name, "cart");
    let analysis = status.analysis.context("analysis")?;
    assert_eq!(
        (analysis.decided_by.as_str(), analysis.action.as_str()),
        ("rules", "restart_pod")
    );
    assert_eq!(analysis.workflow.steps[0].parameters["name"], victim);
    let exec = status.execution.context("execution")?;
    assert_eq!(exec.result.map(|r| r.as_str()), Some("Succeeded"));
    assert_eq!(exec.steps.len(), 1);
    assert_eq!(exec.steps[0].phase, StepPhase::Succeeded);
    let victim_uid = exec.steps[0].target_uid.clone();
    assert!(!victim_uid.is_empty(), "the UID is recorded before acting");
    let processing = status.processing.context("processing")?;
    assert_eq!(
        (
            processing.environment.as_str(),
            processing.priority.as_str()
        ),
        ("production", "P0")
    );
    for c in ["Processed", "Analyzed", "Executed", "Verified"] {
        assert!(
            status
                .conditions
                .iter()
                .any(|x| x.type_ == c && x.status == "True"),
            "condition {c}: {:?}",
            status.conditions
        );
    }

    // The named pod is gone and the ReplicaSet created a replacement.
    assert!(
        pods.get_opt(&victim)
            .await?
            .is_none_or(|p| p.metadata.uid.as_deref() != Some(victim_uid.as_str()))
    );
    let after = eventually("a replacement pod", TIMEOUT, || async {
        let names = pod_names(&pods, "cart").await?;
        Ok((names.len() == 2 && !names.contains(&victim)).then_some(names))
    })
    .await?;
    assert_eq!(
        after.intersection(&before).count(),
        1,
        "exactly one pod was replaced: {before:?} -> {after:?}"
    );

    // Audit: the request row and one event per transition, in PostgreSQL.
    let db = sqlx::PgPool::connect(&stack.database_url).await?;
    let uid = done.metadata.uid.clone().context("uid")?;
    let transitions: Vec<(String, String)> = eventually("audit rows", TIMEOUT, || async {
        let row: Option<(String,)> = sqlx::query_as("SELECT phase FROM remediation_requests WHERE uid = $1")
            .bind(&uid)
            .fetch_optional(&db)
            .await?;
        let events: Vec<(String, String)> = sqlx::query_as(
            "SELECT from_phase, to_phase FROM remediation_events WHERE request_uid = $1 AND kind = 'transition' ORDER BY id",
        )
        .bind(&uid)
        .fetch_all(&db)
        .await?;
        Ok((row.is_some_and(|r| r.0 == "Completed") && events.len() == 5).then_some(events))
    })
    .await?;
    assert_eq!(
        transitions[0],
        ("Pending".to_string(), "Processing".to_string())
    );
    assert_eq!(
        transitions[4],
        ("Verifying".to_string(), "Completed".to_string())
    );
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT reason FROM remediation_events WHERE request_uid = $1 AND kind = 'action' ORDER BY id",
    )
    .bind(&uid)
    .fetch_all(&db)
    .await?;
    assert_eq!(
        actions,
        ["StepStarted", "StepFinished", "WorkflowFinished"],
        "the intent before the action, its result (with the object's state before) after"
    );

    // The same alert instance after completion is still a duplicate (K-GW-5).
    let r = post(&url, "application/json", payload).await?;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["occurrenceCount"], 3);
    // Answered from the Redis journal; the status follows.
    eventually("the third occurrence in the status", TIMEOUT, || async {
        let rr = rrs.get(&name).await?;
        Ok((rr.occurrence_count() == 3).then_some(()))
    })
    .await?;
    assert_eq!(
        rrs.list(&ListParams::default()).await?.items.len(),
        1,
        "no second request was opened"
    );

    // A two-step workflow: diagnostics recorded, then a rollout restart.
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &deployment("web", 1))
        .await?;
    let web_pod = eventually("a web pod", TIMEOUT, || async {
        Ok(pod_names(&pods, "web").await?.into_iter().next())
    })
    .await?;
    let r = post(
        &url,
        "application/json",
        named_alert("HighErrorRate", &ns, &web_pod, "2026-11-22T03:05:00Z"),
    )
    .await?;
    assert_eq!(r.status, 201, "{}", r.text);
    let wf_name = r.body["request"].as_str().context("request")?.to_string();
    let done = eventually("the workflow request to finish", TIMEOUT, || async {
        let rr = rrs.get(&wf_name).await?;
        Ok(rr.phase().is_terminal().then_some(rr))
    })
    .await?;
    let status = done.status.clone().context("status")?;
    assert_eq!(status.phase, Phase::Completed, "{status:#?}");
    assert_eq!(
        status.analysis.as_ref().map(|a| a.action.as_str()),
        Some("collect_diagnostics, rollout_restart")
    );
    let steps: Vec<(String, StepPhase)> = status
        .execution
        .as_ref()
        .context("execution")?
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.phase))
        .collect();
    assert_eq!(
        steps,
        [
            ("diagnose".to_string(), StepPhase::Succeeded),
            ("restart".to_string(), StepPhase::Succeeded)
        ]
    );
    let web = Api::<Deployment>::namespaced(admin.clone(), &ns)
        .get("web")
        .await?;
    let stamped = web
        .spec
        .and_then(|s| s.template.metadata?.annotations)
        .is_some_and(|a| a.contains_key("kubectl.kubernetes.io/restartedAt"));
    assert!(stamped, "rollout_restart stamped the pod template");
    let wf_uid = done.metadata.uid.clone().context("uid")?;
    let finished: Vec<serde_json::Value> = eventually("the steps' audit", TIMEOUT, || async {
        let rows: Vec<serde_json::Value> = sqlx::query_scalar(
            "SELECT detail FROM remediation_events WHERE request_uid = $1 AND reason = 'StepFinished' ORDER BY id",
        )
        .bind(&wf_uid)
        .fetch_all(&db)
        .await?;
        Ok((rows.len() == 2).then_some(rows))
    })
    .await?;
    assert_eq!(finished[0]["id"], "diagnose", "dependency order");
    assert!(
        finished[0]["outcome"]["evidence"]["object"].is_object(),
        "the diagnostics are in the audit trail: {}",
        finished[0]
    );
    assert_eq!(finished[1]["id"], "restart");
    assert!(finished[1]["outcome"]["changes"][0]["before"].is_object());

    // Malformed JSON: 400 with a problem body.
    let r = post(&url, "application/json", "{\"version\":\"4\",\"alerts\":[").await?;
    assert_eq!(r.status, 400);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.body["status"], 400);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("invalid Alertmanager payload"),
        "{}",
        r.text
    );

    // A pod in a namespace that is not opted in: accepted, rejected as out of scope.
    let other_pods: Api<Pod> = Api::namespaced(admin.clone(), &unmanaged);
    let other = eventually("an unmanaged pod", TIMEOUT, || async {
        Ok(pod_names(&other_pods, "cart").await?.into_iter().next())
    })
    .await?;
    let r = post(
        &url,
        "application/json",
        alert_payload(&unmanaged, &other, "2026-11-22T03:00:00Z"),
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["reason"], "out_of_scope");
    assert!(
        Api::<RemediationRequest>::namespaced(admin.clone(), &unmanaged)
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );

    running.shutdown().await?;
    for n in [&ns, &unmanaged] {
        namespaces.delete(n, &DeleteParams::default()).await?;
    }
    Ok(())
}

//! Retention (K-RR-9) on the real stack with a PostgreSQL of the test's own:
//! the janitor deletes a terminal request once its retention has expired
//! and its final record is in the audit trail; while PostgreSQL is stopped
//! it deletes nothing, and once PostgreSQL is back (and the queued audit
//! record written) it does.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::PostParams;
use kubernaut_api::{ObjectRef, Phase, RemediationRequest};
use kubernaut_e2e::{
    PostgresServer, Stack, control_plane, create_request, deployment, eventually,
    managed_namespace, metric, terminal_request,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

async fn audited_phase(url: &str, uid: &str) -> anyhow::Result<Option<String>> {
    let db = sqlx::PgPool::connect(url).await?;
    Ok(
        sqlx::query_scalar("SELECT phase FROM remediation_requests WHERE uid = $1")
            .bind(uid)
            .fetch_optional(&db)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_deletes_expired_requests_only_once_audited() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let pg = PostgresServer::start().await?;
    let ns = managed_namespace(&admin, "retention", "staging").await?;
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &ns);
    for name in ["a", "b"] {
        deployments
            .create(&PostParams::default(), &deployment(name, 1))
            .await?;
    }
    let running = control_plane(
        stack,
        &ns,
        &[
            ("STORE__DATABASE_URL", pg.url.as_str()),
            ("CONTROLLER__RETENTION_SECONDS", "2"),
            ("CONTROLLER__JANITOR_INTERVAL_SECONDS", "1"),
        ],
        json!([{"signal": "Retained", "action": "notify_only"}]),
    )
    .await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);

    // PostgreSQL up: deleted soon after its retention.
    let first = create_request(
        &admin,
        "Retained",
        &ObjectRef::new("Deployment", &ns, "a"),
        false,
    )
    .await?;
    let rr = terminal_request(&admin, &ns, &first, TIMEOUT).await?;
    assert_eq!(rr.phase(), Phase::Completed);
    let uid = rr.metadata.uid.clone().unwrap_or_default();
    let expiry = rr.status.as_ref().and_then(|s| {
        Some(
            s.retention_expiry_time
                .clone()?
                .0
                .duration_since(s.completion_time.clone()?.0),
        )
    });
    assert_eq!(
        expiry.map(|d| d.as_secs()),
        Some(2),
        "completion + retention"
    );
    eventually("the first request to be deleted", TIMEOUT, || async {
        Ok(api.get_opt(&first).await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(
        audited_phase(&pg.url, &uid).await?.as_deref(),
        Some("Completed")
    );

    // PostgreSQL down before the request ends: its final record waits in
    // the audit queue, and the request outlives its retention.
    pg.stop()?;
    let second = create_request(
        &admin,
        "Retained",
        &ObjectRef::new("Deployment", &ns, "b"),
        false,
    )
    .await?;
    let rr = terminal_request(&admin, &ns, &second, TIMEOUT).await?;
    let uid = rr.metadata.uid.clone().unwrap_or_default();
    let unavailable = "kubernaut_controller_retention_deferred_total{reason=\"audit_unavailable\"}";
    eventually("the janitor to defer", TIMEOUT, || async {
        Ok((metric(&running, unavailable).await? >= 2.0).then_some(()))
    })
    .await?;
    assert!(
        api.get_opt(&second).await?.is_some(),
        "kept while the audit trail cannot confirm it"
    );

    pg.resume()?;
    eventually("the second request to be deleted", TIMEOUT, || async {
        Ok(api.get_opt(&second).await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(
        audited_phase(&pg.url, &uid).await?.as_deref(),
        Some("Completed")
    );
    assert_eq!(
        metric(&running, "kubernaut_controller_retention_deleted_total").await?,
        2.0
    );
    running.shutdown().await
}

/// A replica killed with records queued loses them; when another replica
/// finished the request, PostgreSQL holds its final phase but not the end
/// of the step the dead one ran. The janitor rebuilds that from the status.
#[tokio::test]
async fn a_step_end_lost_with_a_killed_replica_is_rebuilt_though_the_final_phase_is_audited()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "lost-step", "staging").await?;
    let target = ObjectRef::new("Deployment", &ns, "web");
    let name = create_request(&admin, "LostStep", &target, false).await?;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
    let done = kubernaut_e2e::now_rfc3339();
    let status = json!({"status": {
        "phase": "Completed", "completionTime": done,
        "execution": {"action": "restart_pod", "target": {"kind": "Deployment", "namespace": ns, "name": "web"},
                      "targetUid": "uid-web", "startedAt": done, "finishedAt": done, "result": "Succeeded",
                      "message": "1 steps succeeded",
                      "steps": [{"id": "restart", "action": "restart_pod", "phase": "Succeeded",
                                 "attempts": 1, "finishedAt": done}]}}});
    let rr = api
        .patch_status(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&status),
        )
        .await?;
    let uid = rr.metadata.uid.clone().unwrap_or_default();
    // The survivor's final phase is in PostgreSQL; the step's end is not.
    let store = kubernaut_store::Store::connect(&stack.database_url, 2).await?;
    store
        .write(&kubernaut_store::AuditRecord::Request(
            kubernaut_store::RequestRecord {
                uid: uid.clone(),
                namespace: ns.clone(),
                name: name.clone(),
                fingerprint: rr.spec.fingerprint.clone(),
                signal_name: "LostStep".into(),
                severity: rr.spec.severity.clone(),
                source: rr.spec.source.as_str().into(),
                target_kind: "Deployment".into(),
                target_namespace: ns.clone(),
                target_name: "web".into(),
                phase: "Completed".into(),
                firing_time: chrono::Utc::now(),
            },
        ))
        .await?;
    let running = control_plane(
        stack,
        &ns,
        &[
            ("CONTROLLER__AUDIT_GRACE_SECONDS", "1"),
            ("CONTROLLER__JANITOR_INTERVAL_SECONDS", "1"),
        ],
        json!([]),
    )
    .await?;
    let db = sqlx::PgPool::connect(&stack.database_url).await?;
    let state: String = eventually("the step's end to be rebuilt", TIMEOUT, || async {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT detail->>'state' FROM remediation_events
             WHERE request_uid = $1 AND reason = 'StepFinished' AND detail->>'id' = 'restart'
               AND detail->>'backfilled' = 'true'",
        )
        .bind(&uid)
        .fetch_optional(&db)
        .await?;
        Ok(state)
    })
    .await?;
    assert_eq!(state, "Succeeded");
    assert!(metric(&running, "kubernaut_controller_audit_backfilled_total").await? >= 1.0);
    running.shutdown().await
}

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

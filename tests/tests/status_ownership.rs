//! Status writes are based on a resourceVersion (K-RR-5, K-RR-7): a write
//! from a replica that has not seen the latest version is refused, so a
//! replica that lost a request cannot overwrite its new owner's state.

use anyhow::Context as _;
use kube::Api;
use kubernaut_api::{ObjectRef, RemediationRequest, RemediationRequestStatus};
use kubernaut_e2e::{Stack, controller_cluster, create_request, managed_namespace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_on_a_stale_version_conflicts() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "status-rv", "staging").await?;
    let name = create_request(
        &admin,
        "RvTest",
        &ObjectRef::new("Deployment", &ns, "api"),
        false,
    )
    .await?;
    let rr = Api::<RemediationRequest>::namespaced(admin.clone(), &ns)
        .get(&name)
        .await?;
    let first = rr.metadata.resource_version.context("resourceVersion")?;

    let mine = RemediationRequestStatus {
        owner: Some("replica-a".into()),
        ..Default::default()
    };
    let second = cluster
        .apply_status(&ns, &name, &mine, Some(&first))
        .await?;
    assert_ne!(second, first);

    let theirs = RemediationRequestStatus {
        owner: Some("replica-b".into()),
        ..Default::default()
    };
    let stale = cluster
        .apply_status(&ns, &name, &theirs, Some(&first))
        .await;
    assert!(stale.as_ref().is_err_and(|e| e.is_conflict()), "{stale:?}");
    let owner = Api::<RemediationRequest>::namespaced(admin.clone(), &ns)
        .get(&name)
        .await?
        .status
        .and_then(|s| s.owner);
    assert_eq!(
        owner.as_deref(),
        Some("replica-a"),
        "the stale write changed nothing"
    );

    cluster
        .apply_status(&ns, &name, &theirs, Some(&second))
        .await?;
    Ok(())
}

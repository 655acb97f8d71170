//! The action catalogue against the real API server and
//! kube-controller-manager, as the controller's ServiceAccount: each action's
//! effect on the real object (and the controller-manager's reaction where
//! there is one), rollback, dry-run-only modes, scope and bounds refusals,
//! the per-target lock, and conflict retries.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kubernaut_api::ObjectRef;
use kubernaut_cluster::{
    ActionCall, ActionError, Cluster, ExecSettings, WriteMode, canonical_hash,
};
use kubernaut_e2e::{
    PROTECTED_NAMESPACE, Stack, config_from, controller_cluster, deployment, deployment_replicas,
    deployment_with_pods, eventually, exec_settings, lock_is_free, managed_namespace, managed_node,
    unique,
};
use serde_json::json;

fn call(action: &str, parameters: serde_json::Value) -> ActionCall {
    ActionCall::parse(action, parameters).expect("a valid call")
}

async fn pod_count(admin: &kube::Client, ns: &str, app: &str) -> anyhow::Result<usize> {
    Ok(Api::<Pod>::namespaced(admin.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_deployment_changes_replicas_and_rolls_back() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-scale", "staging").await?;
    deployment_with_pods(&admin, &ns, "cart", 1).await?;

    let scale = call(
        "scale_deployment",
        json!({"namespace": ns, "name": "cart", "replicas": 3}),
    );
    let out = cluster
        .run_action(&scale, &exec_settings("rr-scale"))
        .await?;
    assert!(!out.dry_run);
    assert_eq!(out.changes.len(), 1);
    assert_eq!(out.changes[0].before["spec"]["replicas"], 1);
    assert_eq!(out.changes[0].after["spec"]["replicas"], 3);
    assert_eq!(deployment_replicas(&admin, &ns, "cart").await?, 3);
    // The controller-manager acts on it: three pods.
    eventually("3 pods of cart", Duration::from_secs(60), || async {
        Ok((pod_count(&admin, &ns, "cart").await? == 3).then_some(()))
    })
    .await?;

    // Running it again changes nothing.
    let again = cluster
        .run_action(&scale, &exec_settings("rr-scale"))
        .await?;
    assert!(again.changes.is_empty(), "{again:?}");

    let undo = scale
        .rollback(&out.changes[0])
        .expect("scale can be undone");
    cluster
        .run_action(&undo, &exec_settings("rr-scale"))
        .await?;
    assert_eq!(deployment_replicas(&admin, &ns, "cart").await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_restart_makes_the_controller_manager_roll_a_new_replicaset() -> anyhow::Result<()>
{
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-restart", "staging").await?;
    deployment_with_pods(&admin, &ns, "api", 1).await?;
    let rs = Api::<ReplicaSet>::namespaced(admin.clone(), &ns);
    assert_eq!(rs.list(&ListParams::default()).await?.items.len(), 1);

    let restart = call(
        "rollout_restart",
        json!({"kind": "Deployment", "namespace": ns, "name": "api"}),
    );
    let out = cluster
        .run_action(&restart, &exec_settings("rr-restart"))
        .await?;
    let stamp = &out.changes[0].after["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"];
    assert!(stamp.is_string(), "{out:?}");
    assert!(
        restart.rollback(&out.changes[0]).is_none(),
        "a restart is not undone"
    );
    eventually("a second ReplicaSet", Duration::from_secs(60), || async {
        Ok((rs.list(&ListParams::default()).await?.items.len() == 2).then_some(()))
    })
    .await?;
    Ok(())
}

/// Verifying a rollout reads the workload's observed generation from the
/// watch, not from a GET every poll, and its health and drift readings
/// too: an identity that may list and watch but not get sees the rollout
/// verified and its target observed (a GET would be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_verified_from_the_watch_without_a_get() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-verify", "staging").await?;
    deployment_with_pods(&admin, &ns, "api", 1).await?;

    let user = unique("watch-only");
    let roles = Api::<ClusterRole>::all(admin.clone());
    let bindings = Api::<ClusterRoleBinding>::all(admin.clone());
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": user}, "rules": [
                {"apiGroups": [""], "resources": ["pods", "nodes", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["apps"], "resources": ["replicasets", "deployments", "statefulsets", "daemonsets"], "verbs": ["list", "watch"]},
                {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list", "watch"]},
            ]}))?,
        )
        .await?;
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": user},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]}))?,
        )
        .await?;
    let mut config = config_from(&stack.admin_kubeconfig).await?;
    config.auth_info.impersonate = Some(user.clone());
    let watch_only = Cluster::connect(config, cluster.config().clone())?.with_views();
    // The role may take a moment to apply; the watches retry until it does.
    assert!(watch_only.views_synced(Duration::from_secs(60)).await);
    let get = Api::<Deployment>::namespaced(watch_only.client().clone(), &ns)
        .get("api")
        .await;
    assert!(
        get.is_err(),
        "the identity must not be allowed to get: {get:?}"
    );

    let restart = call(
        "rollout_restart",
        json!({"kind": "Deployment", "namespace": ns, "name": "api"}),
    );
    let out = cluster
        .run_action(&restart, &exec_settings("rr-verify"))
        .await?;
    let verified = eventually("the rollout verified", Duration::from_secs(60), || async {
        // An error is the answer, not a reason to ask again.
        match watch_only.verify(&restart, &out).await {
            Ok(seen) => Ok(seen),
            Err(e) => Ok(Some(format!("error: {e}"))),
        }
    })
    .await?;
    // The health and drift readings come from the watch too, and its
    // spec hash is the one of the object as a GET returns it.
    let target = ObjectRef::new("Deployment", &ns, "api");
    let whole = Api::<Deployment>::namespaced(admin.clone(), &ns)
        .get("api")
        .await?;
    let expected = canonical_hash(&serde_json::to_value(&whole)?["spec"]);
    let observed = eventually("the spec as read", Duration::from_secs(30), || async {
        let seen = watch_only.observe(&target).await?;
        Ok(seen.filter(|o| o.spec_hash == expected))
    })
    .await;
    let _ = roles.delete(&user, &Default::default()).await;
    let _ = bindings.delete(&user, &Default::default()).await;
    assert_eq!(verified, "the workload's controller observed the change");
    assert_eq!(observed?.desired, Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordon_and_uncordon_a_managed_node() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let name = managed_node(&admin, "node-cordon").await?;
    let nodes = Api::<Node>::all(admin.clone());
    let unschedulable = |n: Node| n.spec.and_then(|s| s.unschedulable).unwrap_or(false);

    let cordon = call("cordon_node", json!({"name": name}));
    let out = cluster
        .run_action(&cordon, &exec_settings("rr-node"))
        .await?;
    assert!(unschedulable(nodes.get(&name).await?));
    let undo = cordon
        .rollback(&out.changes[0])
        .expect("a cordon can be undone");
    assert_eq!(undo, call("uncordon_node", json!({"name": name})));
    cluster.run_action(&undo, &exec_settings("rr-node")).await?;
    assert!(!unschedulable(nodes.get(&name).await?));

    // A node without the label is out of scope.
    let other = unique("node-unmanaged");
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": other}}))?,
        )
        .await?;
    let r = cluster
        .run_action(
            &call("cordon_node", json!({"name": other})),
            &exec_settings("rr-node"),
        )
        .await;
    assert!(matches!(r, Err(ActionError::Refused(_))), "{r:?}");
    assert!(!unschedulable(nodes.get(&other).await?));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_only_modes_change_nothing_but_are_checked_by_the_server() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-dry", "staging").await?;
    deployment_with_pods(&admin, &ns, "web", 1).await?;
    let scale = call(
        "scale_deployment",
        json!({"namespace": ns, "name": "web", "replicas": 4}),
    );

    let global = ExecSettings {
        dry_run_only: true,
        ..exec_settings("rr-dry")
    };
    let per_namespace = ExecSettings {
        dry_run_namespaces: vec![ns.clone()],
        ..exec_settings("rr-dry")
    };
    for mode in [global, per_namespace] {
        let out = cluster.run_action(&scale, &mode).await?;
        assert!(out.dry_run);
        assert_eq!(
            out.changes[0].after["spec"]["replicas"], 4,
            "the server's preview"
        );
        assert_eq!(
            deployment_replicas(&admin, &ns, "web").await?,
            1,
            "nothing changed"
        );
    }

    // A missing target is reported as such, never created.
    let missing = call(
        "scale_deployment",
        json!({"namespace": ns, "name": "absent", "replicas": 2}),
    );
    let r = cluster.run_action(&missing, &exec_settings("rr-dry")).await;
    assert!(matches!(r, Err(ActionError::NotFound(_))), "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_bounds_and_the_target_lock_refuse_before_any_change() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;

    // Unmanaged namespace.
    let plain = unique("act-plain");
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": plain}}))?,
        )
        .await?;
    Api::<Deployment>::namespaced(admin.clone(), &plain)
        .create(&PostParams::default(), &deployment("db", 1))
        .await?;
    let r = cluster
        .run_action(
            &call(
                "scale_deployment",
                json!({"namespace": plain, "name": "db", "replicas": 2}),
            ),
            &exec_settings("rr-scope"),
        )
        .await;
    assert!(
        matches!(&r, Err(ActionError::Refused(m)) if m.contains("kubernaut.io/managed")),
        "{r:?}"
    );
    assert_eq!(deployment_replicas(&admin, &plain, "db").await?, 1);

    // Protected namespace, even when labelled managed.
    let namespaces = Api::<Namespace>::all(admin.clone());
    if namespaces.get_opt(PROTECTED_NAMESPACE).await?.is_none() {
        let _ = namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": PROTECTED_NAMESPACE,
                    "labels": {"kubernaut.io/managed": "true"}}}))?,
            )
            .await;
    }
    let deployments = Api::<Deployment>::namespaced(admin.clone(), PROTECTED_NAMESPACE);
    let guarded = unique("guarded");
    deployments
        .create(&PostParams::default(), &deployment(&guarded, 1))
        .await?;
    let r = cluster
        .run_action(
            &call(
                "scale_deployment",
                json!({"namespace": PROTECTED_NAMESPACE, "name": guarded, "replicas": 0}),
            ),
            &exec_settings("rr-scope"),
        )
        .await;
    assert!(
        matches!(&r, Err(ActionError::Refused(m)) if m.contains("protected")),
        "{r:?}"
    );
    assert_eq!(
        deployment_replicas(&admin, PROTECTED_NAMESPACE, &guarded).await?,
        1
    );

    // Bounds.
    let ns = managed_namespace(&admin, "act-bounds", "staging").await?;
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &deployment("api", 1))
        .await?;
    let r = cluster
        .run_action(
            &call(
                "scale_deployment",
                json!({"namespace": ns, "name": "api", "replicas": 11}),
            ),
            &exec_settings("rr-scope"),
        )
        .await;
    assert!(
        matches!(&r, Err(ActionError::Refused(m)) if m.contains("0..=10")),
        "{r:?}"
    );

    // The per-target lock: another request holds it.
    let target = ObjectRef::new("Deployment", &ns, "api");
    let held = cluster
        .claim_lease(
            &kubernaut_cluster::lock_name(&target),
            "rr-other",
            Duration::from_secs(30),
        )
        .await?
        .expect("the lock is free");
    let r = cluster
        .run_action(
            &call(
                "scale_deployment",
                json!({"namespace": ns, "name": "api", "replicas": 2}),
            ),
            &exec_settings("rr-mine"),
        )
        .await;
    assert!(
        matches!(&r, Err(ActionError::Busy(_, holder)) if holder == "rr-other"),
        "{r:?}"
    );
    assert_eq!(deployment_replicas(&admin, &ns, "api").await?, 1);
    held.release().await;
    cluster
        .run_action(
            &call(
                "scale_deployment",
                json!({"namespace": ns, "name": "api", "replicas": 2}),
            ),
            &exec_settings("rr-mine"),
        )
        .await?;
    assert_eq!(
        deployment_replicas(&admin, &ns, "api").await?,
        2,
        "released, the lock is free again"
    );
    // A lock left behind by its holder's process (killed before it
    // released it) is its own again: the request continues on the replica
    // that adopted it, without waiting out the lock's TTL.
    let _left = cluster
        .claim_lease(
            &kubernaut_cluster::lock_name(&target),
            "rr-mine",
            Duration::from_secs(300),
        )
        .await?
        .expect("the lock is free");
    cluster
        .run_action(
            &call(
                "scale_deployment",
                json!({"namespace": ns, "name": "api", "replicas": 3}),
            ),
            &exec_settings("rr-mine"),
        )
        .await?;
    assert_eq!(deployment_replicas(&admin, &ns, "api").await?, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_changed_between_read_and_write_is_read_again() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-conflict", "staging").await?;
    let api = Api::<Deployment>::namespaced(stack.controller_client().await?, &ns);
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &deployment("cart", 1))
        .await?;
    let object = ObjectRef::new("Deployment", &ns, "cart");

    let mut reads = 0;
    let change = cluster
        .update_object(
            &api,
            &object,
            WriteMode::fresh(false),
            |d: &mut Deployment| {
                reads += 1;
                if reads == 1 {
                    // Someone else writes after our read: our replace must conflict.
                    stack
                        .kubectl(&["-n", &ns, "annotate", "deployment", "cart", "team=payments"])
                        .map_err(|e| ActionError::Refused(e.to_string()))?;
                }
                d.spec.get_or_insert_with(Default::default).replicas = Some(2);
                Ok(true)
            },
        )
        .await?
        .expect("a change");
    // At least once more; the deployment controller, which annotates a new
    // Deployment, can cause one more conflict of its own.
    assert!(
        reads >= 2,
        "the conflict made it read again ({reads} reads)"
    );
    let now = Api::<Deployment>::namespaced(admin.clone(), &ns)
        .get("cart")
        .await?;
    assert_eq!(now.spec.and_then(|s| s.replicas), Some(2));
    assert_eq!(
        now.metadata
            .annotations
            .unwrap_or_default()
            .get("team")
            .map(String::as_str),
        Some("payments"),
        "the other writer's change survived"
    );
    assert_eq!(change.before["metadata"]["annotations"]["team"], "payments");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_pod_gets_a_replacement_from_the_controller_manager() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-pod", "staging").await?;
    let pods = deployment_with_pods(&admin, &ns, "cart", 1).await?;
    let old = pods.iter().next().cloned().expect("one pod");

    let restart = call("restart_pod", json!({"namespace": ns, "name": old}));
    let out = cluster
        .run_action(&restart, &exec_settings("rr-pod"))
        .await?;
    assert_eq!(out.changes[0].before["metadata"]["name"], old.as_str());
    assert!(out.changes[0].after.is_null());
    let api = Api::<Pod>::namespaced(admin.clone(), &ns);
    eventually("a replacement pod", Duration::from_secs(60), || async {
        let names: Vec<String> = api
            .list(&ListParams::default().labels("app=cart"))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name)
            .collect();
        Ok((names.len() == 1 && names[0] != old).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_job_removes_the_job() -> anyhow::Result<()> {
    use k8s_openapi::api::batch::v1::Job;
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-job", "staging").await?;
    let jobs = Api::<Job>::namespaced(admin.clone(), &ns);
    jobs.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "migrate"}, "spec": {"template": {
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "m", "image": "registry.local/migrate:1"}]}}}}),
        )?,
    )
    .await?;
    let out = cluster
        .run_action(
            &call("delete_job", json!({"namespace": ns, "name": "migrate"})),
            &exec_settings("rr-job"),
        )
        .await?;
    assert_eq!(out.changes.len(), 1);
    eventually("the job gone", Duration::from_secs(30), || async {
        Ok(jobs.get_opt("migrate").await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_hpa_changes_its_bounds_and_rolls_back() -> anyhow::Result<()> {
    use k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler;
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-hpa", "staging").await?;
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(admin.clone(), &ns);
    hpas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "cart"}, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cart"},
            "minReplicas": 2, "maxReplicas": 4}}))?,
    )
    .await?;
    let bounds = |h: HorizontalPodAutoscaler| {
        h.spec
            .map(|s| (s.min_replicas.unwrap_or(1), s.max_replicas))
            .unwrap_or_default()
    };
    let update = call(
        "update_hpa",
        json!({"namespace": ns, "name": "cart", "maxReplicas": 8}),
    );
    let out = cluster
        .run_action(&update, &exec_settings("rr-hpa"))
        .await?;
    assert_eq!(bounds(hpas.get("cart").await?), (2, 8));
    // A max below the current min is refused by the action itself.
    let r = cluster
        .run_action(
            &call(
                "update_hpa",
                json!({"namespace": ns, "name": "cart", "maxReplicas": 1}),
            ),
            &exec_settings("rr-hpa"),
        )
        .await;
    assert!(matches!(r, Err(ActionError::Refused(_))), "{r:?}");
    let undo = update.rollback(&out.changes[0]).expect("reversible");
    cluster.run_action(&undo, &exec_settings("rr-hpa")).await?;
    assert_eq!(bounds(hpas.get("cart").await?), (2, 4));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_deployment_puts_the_previous_template_back() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-undo", "staging").await?;
    deployment_with_pods(&admin, &ns, "api", 1).await?;
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &ns);
    let image = |d: Deployment| {
        d.spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.image)
            .unwrap_or_default()
    };
    let rollback = call(
        "rollback_deployment",
        json!({"namespace": ns, "name": "api"}),
    );
    // Only one revision: nothing to go back to.
    let r = cluster
        .run_action(&rollback, &exec_settings("rr-undo"))
        .await;
    assert!(
        matches!(&r, Err(ActionError::Refused(m)) if m.contains("no revision")),
        "{r:?}"
    );

    stack.kubectl(&[
        "-n",
        &ns,
        "set",
        "image",
        "deployment/api",
        "app=registry.local/app:2.0",
    ])?;
    let sets = Api::<ReplicaSet>::namespaced(admin.clone(), &ns);
    eventually("revision 2", Duration::from_secs(60), || async {
        Ok((sets.list(&ListParams::default()).await?.items.len() == 2).then_some(()))
    })
    .await?;
    eventually(
        "the deployment at revision 2",
        Duration::from_secs(60),
        || async {
            let d = deployments.get("api").await?;
            let rev = d
                .metadata
                .annotations
                .unwrap_or_default()
                .get("deployment.kubernetes.io/revision")
                .cloned();
            Ok((rev.as_deref() == Some("2")).then_some(()))
        },
    )
    .await?;
    assert_eq!(
        image(deployments.get("api").await?),
        "registry.local/app:2.0"
    );

    let out = cluster
        .run_action(&rollback, &exec_settings("rr-undo"))
        .await?;
    assert_eq!(out.changes.len(), 1);
    let now = deployments.get("api").await?;
    assert_eq!(image(now.clone()), "registry.local/app:1.0");
    let labels = now
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert!(!labels.contains_key("pod-template-hash"), "{labels:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_diagnostics_records_evidence_without_secrets_or_changes() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-diag", "staging").await?;
    let mut d = deployment("cart", 2);
    if let Some(c) = d
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|s| s.containers.first_mut())
    {
        c.env = Some(vec![serde_json::from_value(
            json!({"name": "DB_PASSWORD", "value": "hunter2"}),
        )?]);
    }
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &ns);
    deployments.create(&PostParams::default(), &d).await?;
    eventually("2 pods of cart", Duration::from_secs(60), || async {
        Ok((pod_count(&admin, &ns, "cart").await? == 2).then_some(()))
    })
    .await?;
    // The generation counts spec changes; status updates do not move it.
    let before = deployments.get("cart").await?.metadata.generation;

    let out = cluster
        .run_action(
            &call(
                "collect_diagnostics",
                json!({"kind": "Deployment", "namespace": ns, "name": "cart"}),
            ),
            &exec_settings("rr-diag"),
        )
        .await?;
    assert!(out.changes.is_empty());
    let evidence = out.evidence.to_string();
    assert!(!evidence.contains("hunter2"), "env values are redacted");
    assert!(!evidence.contains("managedFields"));
    assert_eq!(out.evidence["object"]["metadata"]["name"], "cart");
    assert_eq!(out.evidence["pods"].as_array().map(Vec::len), Some(2));
    assert!(
        out.evidence["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["reason"] == "ScalingReplicaSet")),
        "the deployment controller's events: {}",
        out.evidence["events"]
    );
    assert_eq!(deployments.get("cart").await?.metadata.generation, before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_pod_leaves_its_service_and_is_replaced() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-quarantine", "staging").await?;
    Api::<Service>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}))?,
        )
        .await?;
    let pods = deployment_with_pods(&admin, &ns, "web", 1).await?;
    let suspect = pods.iter().next().cloned().expect("one pod");

    let q = call("quarantine_pod", json!({"namespace": ns, "name": suspect}));
    let out = cluster
        .run_action(&q, &exec_settings("rr-quarantine"))
        .await?;
    assert_eq!(out.changes.len(), 1);
    let api = Api::<Pod>::namespaced(admin.clone(), &ns);
    let pod = api.get(&suspect).await?;
    let labels = pod.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("kubernaut.io/quarantined").map(String::as_str),
        Some("true")
    );
    assert!(!labels.contains_key("app"), "{labels:?}");
    let kept = pod.metadata.annotations.unwrap_or_default();
    assert_eq!(
        kept.get("kubernaut.io/quarantined-labels")
            .map(String::as_str),
        Some(r#"{"app":"web"}"#)
    );
    // Its ReplicaSet no longer counts it and makes a replacement; it lives on.
    eventually(
        "a replacement in the service",
        Duration::from_secs(60),
        || async {
            let serving: Vec<String> = api
                .list(&ListParams::default().labels("app=web"))
                .await?
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            Ok((serving.len() == 1 && serving[0] != suspect).then_some(()))
        },
    )
    .await?;
    assert!(
        api.get_opt(&suspect).await?.is_some(),
        "kept for inspection"
    );
    // Quarantined already: nothing more to do.
    let again = cluster
        .run_action(&q, &exec_settings("rr-quarantine"))
        .await?;
    assert!(again.changes.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulsets_scale_and_statefulsets_and_daemonsets_restart() -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-sts", "staging").await?;
    let template = |app: &str| {
        json!({"metadata": {"labels": {"app": app}},
               "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]}})
    };
    let sets: Api<StatefulSet> = Api::namespaced(admin.clone(), &ns);
    sets.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "db"}, "spec": {
            "replicas": 1, "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}}, "template": template("db")}}))?,
    )
    .await?;
    let daemons: Api<DaemonSet> = Api::namespaced(admin.clone(), &ns);
    daemons
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "agent"}, "spec": {
                "selector": {"matchLabels": {"app": "agent"}}, "template": template("agent")}}))?,
        )
        .await?;

    let scale = call(
        "scale_statefulset",
        json!({"namespace": ns, "name": "db", "replicas": 2}),
    );
    let out = cluster.run_action(&scale, &exec_settings("rr-sts")).await?;
    assert_eq!(out.changes[0].after["spec"]["replicas"], 2);
    // The StatefulSet controller creates db-0 (and, once db-0 is ready,
    // db-1; the stack has no kubelet): it observed the new generation.
    eventually(
        "the StatefulSet controller to see 2 replicas",
        Duration::from_secs(60),
        || async {
            let s = sets.get("db").await?;
            let observed = s.status.as_ref().and_then(|st| st.observed_generation);
            Ok((observed == s.metadata.generation).then_some(()))
        },
    )
    .await?;
    assert_eq!(sets.get("db").await?.spec.and_then(|s| s.replicas), Some(2));

    for (kind, name) in [("StatefulSet", "db"), ("DaemonSet", "agent")] {
        let restart = call(
            "rollout_restart",
            json!({"kind": kind, "namespace": ns, "name": name}),
        );
        let out = cluster
            .run_action(&restart, &exec_settings("rr-sts"))
            .await?;
        let stamp = &out.changes[0].after["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"];
        assert!(stamp.is_string(), "{kind}: {stamp}");
        // Verification: the workload's controller observes the change.
        let verified = eventually(
            &format!("{kind} restart verified"),
            Duration::from_secs(60),
            || async { Ok(cluster.verify(&restart, &out).await?) },
        )
        .await?;
        assert!(verified.contains("observed"), "{verified}");
    }
    let a = daemons.get("agent").await?;
    assert!(
        a.spec
            .and_then(|s| s.template.metadata?.annotations)
            .is_some_and(|an| an.contains_key("kubectl.kubernetes.io/restartedAt"))
    );
    Ok(())
}

/// A step whose target another request has locked waits for the lock to
/// go, seen through the Lease watch, and then acts: it neither fails Busy
/// at once nor asks the API server again and again while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_target_is_waited_for_through_the_lease_watch() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?.with_views();
    assert!(cluster.views_synced(Duration::from_secs(30)).await);
    let ns = managed_namespace(&admin, "act-wait", "staging").await?;
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &deployment("api", 1))
        .await?;
    let target = ObjectRef::new("Deployment", &ns, "api");
    let held = cluster
        .claim_lease(
            &kubernaut_cluster::lock_name(&target),
            "rr-other",
            Duration::from_secs(300),
        )
        .await?
        .expect("the lock is free");
    let scale = call(
        "scale_deployment",
        json!({"namespace": ns, "name": "api", "replicas": 2}),
    );
    let waiting = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.run_action(&scale, &exec_settings("rr-mine")).await }
    });
    // Time for a step that did not wait to have failed, or acted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    assert_eq!(deployment_replicas(&admin, &ns, "api").await?, 1);
    held.release().await;
    // Far sooner than the lock's 300 s expiry: the watch saw it go.
    let out = tokio::time::timeout(Duration::from_secs(60), waiting).await???;
    assert_eq!(out.changes.len(), 1);
    assert_eq!(deployment_replicas(&admin, &ns, "api").await?, 2);
    Ok(())
}

/// A step claims its target's lock while its intent is written
/// (`Cluster::claim_lock`): the action runs under that claim and releases
/// it, and an action that ends before it takes its lock gives the claim
/// back at once rather than leaving the target locked until the Lease
/// expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_claimed_ahead_is_acted_under_or_given_back() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-ahead", "staging").await?;
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &deployment("api", 1))
        .await?;
    let lock = kubernaut_cluster::lock_name(&ObjectRef::new("Deployment", &ns, "api"));
    let mine = exec_settings("rr-ahead");
    let scale = |replicas: i32| {
        call(
            "scale_deployment",
            json!({"namespace": ns, "name": "api", "replicas": replicas}),
        )
    };

    let held = cluster.claim_lock(&scale(2), &mine).await;
    assert!(held.is_some(), "the lock was free");
    assert!(
        !lock_is_free(&cluster, &lock).await?,
        "claimed ahead, the target is locked"
    );
    let out = cluster.run_action_holding(&scale(2), &mine, held).await?;
    assert_eq!(out.changes.len(), 1);
    assert_eq!(deployment_replicas(&admin, &ns, "api").await?, 2);
    assert!(
        lock_is_free(&cluster, &lock).await?,
        "released with the action"
    );

    // Refused by the bounds before it takes its lock: the claim goes back.
    let held = cluster.claim_lock(&scale(11), &mine).await;
    assert!(held.is_some());
    let r = cluster.run_action_holding(&scale(11), &mine, held).await;
    assert!(matches!(&r, Err(ActionError::Refused(_))), "{r:?}");
    assert!(
        lock_is_free(&cluster, &lock).await?,
        "given back, not left until it expires"
    );
    assert_eq!(deployment_replicas(&admin, &ns, "api").await?, 2);

    // Held by another request: nothing is claimed ahead, and the action
    // reports whose it is as before.
    let other = cluster
        .claim_lease(&lock, "rr-other", Duration::from_secs(30))
        .await?
        .expect("the lock is free");
    assert!(cluster.claim_lock(&scale(3), &mine).await.is_none());
    let r = cluster.run_action_holding(&scale(3), &mine, None).await;
    assert!(
        matches!(&r, Err(ActionError::Busy(_, holder)) if holder == "rr-other"),
        "{r:?}"
    );
    other.release().await;
    Ok(())
}

/// A lock claimed ahead also reads the target, so that the action's
/// read-modify-write need not read after the step's intent is written. A
/// change made after that read is not lost: the write names the version
/// read, conflicts, and the action reads again and decides on what is
/// there now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_read_ahead_and_changed_since_is_read_again() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-read-ahead", "staging").await?;
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deployment("api", 1))
        .await?;
    let mine = exec_settings("rr-read-ahead");
    let scale = call(
        "scale_deployment",
        json!({"namespace": ns, "name": "api", "replicas": 3}),
    );

    let held = cluster.claim_lock(&scale, &mine).await;
    assert!(held.is_some(), "the lock was free");
    let annotate = json!({"metadata": {"annotations": {"team": "payments"}}});
    deployments
        .patch("api", &PatchParams::default(), &Patch::Merge(&annotate))
        .await?;
    let out = cluster.run_action_holding(&scale, &mine, held).await?;

    assert_eq!(out.changes.len(), 1);
    assert_eq!(
        out.changes[0].before["metadata"]["annotations"]["team"], "payments",
        "the change was decided on the target as it is now, not as read ahead"
    );
    let now = deployments.get("api").await?;
    assert_eq!(now.spec.and_then(|s| s.replicas), Some(3));
    assert_eq!(
        now.metadata.annotations.unwrap_or_default().get("team"),
        Some(&"payments".to_string()),
        "the other writer's change survived"
    );
    Ok(())
}

/// An action run while its step's intent is written (K-RR-6) goes as far
/// as its server-side dry run and waits there: the target changes only
/// once the record is stored, and never when it was not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waits_for_the_steps_record_and_is_never_made_without_it() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-recorded", "staging").await?;
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &ns);
    for name in ["stored", "refused"] {
        deployments
            .create(&PostParams::default(), &deployment(name, 1))
            .await?;
    }
    let replicas = |name: &'static str| {
        let deployments = deployments.clone();
        async move { anyhow::Ok(deployments.get(name).await?.spec.and_then(|s| s.replicas)) }
    };
    let mine = exec_settings("rr-recorded");
    let scale = |name: &str| {
        call(
            "scale_deployment",
            json!({"namespace": ns, "name": name, "replicas": 3}),
        )
    };

    // Stored late: the write waits for it.
    let stored = scale("stored");
    let held = cluster.claim_lock(&stored, &mine).await;
    let held = held.expect("the lock was free");
    assert!(held.read_ahead(), "a scale reads its target ahead");
    let (record, recorded) = kubernaut_cluster::write_ahead();
    let run = {
        let (cluster, stored, mine) = (cluster.clone(), stored.clone(), mine.clone());
        let held = held.until_recorded(recorded);
        tokio::spawn(async move { cluster.run_action_holding(&stored, &mine, Some(held)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        replicas("stored").await?,
        Some(1),
        "nothing changed before the record was stored"
    );
    assert!(!run.is_finished(), "the action waits for the record");
    record.stored();
    let out = run.await??;
    assert_eq!(out.changes.len(), 1);
    assert_eq!(replicas("stored").await?, Some(3));

    // Never stored: no write, and the lock is given back.
    let refused = scale("refused");
    let held = cluster.claim_lock(&refused, &mine).await;
    let held = held.expect("the lock was free");
    let (record, recorded) = kubernaut_cluster::write_ahead();
    drop(record);
    let err = cluster
        .run_action_holding(&refused, &mine, Some(held.until_recorded(recorded)))
        .await
        .expect_err("the record was not stored");
    assert!(
        matches!(err, kubernaut_cluster::ActionError::NotRecorded(_)),
        "{err}"
    );
    assert_eq!(replicas("refused").await?, Some(1), "nothing changed");
    let other = exec_settings("rr-someone-else");
    let theirs = cluster.claim_lock(&refused, &other).await;
    let theirs = theirs.expect("the lock was released");
    theirs.release().await;
    Ok(())
}

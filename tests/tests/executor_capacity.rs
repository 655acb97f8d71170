//! The capacity and node actions against the real API server and
//! kube-controller-manager, as the controller's ServiceAccount:
//! increase_resources, expand_pvc (including the API server's own dry-run
//! refusal), run_job, and drain_node with DaemonSet and mirror pods and a
//! PodDisruptionBudget that forbids eviction.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kubernaut_cluster::{ActionCall, ActionError};
use kubernaut_e2e::{
    Stack, controller_cluster, eventually, exec_settings, managed_namespace, managed_node, unique,
};
use serde_json::{Value, json};

fn call(action: &str, parameters: Value) -> ActionCall {
    ActionCall::parse(action, parameters).expect("a valid call")
}

async fn create<K>(api: &Api<K>, object: Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    Ok(api
        .create(&PostParams::default(), &serde_json::from_value(object)?)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increase_resources_grows_one_container_within_bounds_and_rolls_back() -> anyhow::Result<()>
{
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-res", "staging").await?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    create(
        &deployments,
        json!({"metadata": {"name": "api"}, "spec": {
            "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [
                {"name": "app", "image": "registry.local/api:1",
                 "resources": {"requests": {"memory": "256Mi", "cpu": "250m"},
                               "limits": {"memory": "512Mi"}}},
                {"name": "proxy", "image": "registry.local/proxy:1",
                 "resources": {"limits": {"memory": "64Mi"}}}]}}}}),
    )
    .await?;
    let resources = |d: &Deployment, i: usize| {
        serde_json::to_value(
            &d.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[i]
                .resources,
        )
        .unwrap()
    };

    let grow = call(
        "increase_resources",
        json!({"kind": "Deployment", "namespace": ns, "name": "api",
               "container": "app", "resource": "memory", "factor": 1.5}),
    );
    let out = cluster.run_action(&grow, &exec_settings("rr-res")).await?;
    assert_eq!(out.changes.len(), 1);
    let now = deployments.get("api").await?;
    assert_eq!(
        resources(&now, 0),
        json!({"requests": {"memory": "384Mi", "cpu": "250m"}, "limits": {"memory": "768Mi"}})
    );
    assert_eq!(
        resources(&now, 1),
        json!({"limits": {"memory": "64Mi"}}),
        "the other container is untouched"
    );
    // The controller-manager rolls it out: a second ReplicaSet.
    eventually("the rollout of api", Duration::from_secs(60), || async {
        let d = deployments.get("api").await?;
        let observed = d.status.and_then(|s| s.observed_generation);
        Ok((observed == d.metadata.generation).then_some(()))
    })
    .await?;

    // Bounds: above the factor, or above the absolute cap, changes nothing.
    for (parameters, why) in [
        (json!({"factor": 3.0}), "factor 3"),
        (
            json!({"factor": 2.0, "resource": "cpu", "container": "proxy"}),
            "no cpu",
        ),
    ] {
        let mut p = json!({"kind": "Deployment", "namespace": ns, "name": "api",
                           "container": "app", "resource": "memory"});
        p.as_object_mut()
            .unwrap()
            .extend(parameters.as_object().unwrap().clone());
        let e = cluster
            .run_action(&call("increase_resources", p), &exec_settings("rr-res"))
            .await
            .expect_err(why);
        assert!(matches!(e, ActionError::Refused(_)), "{why}: {e}");
        assert!(e.to_string().contains(why), "{e}");
    }
    let mut tight = exec_settings("rr-res");
    tight.bounds.max_memory = "1Gi".parse()?;
    let e = cluster
        .run_action(&grow, &tight)
        .await
        .expect_err("768Mi × 1.5 = 1152Mi is above a 1Gi cap");
    assert!(e.to_string().contains("exceeds the cap 1Gi"), "{e}");
    assert_eq!(
        resources(&deployments.get("api").await?, 0)["limits"]["memory"],
        "768Mi"
    );

    let undo = grow
        .rollback(&out.changes[0])
        .expect("increase_resources can be undone");
    cluster.run_action(&undo, &exec_settings("rr-res")).await?;
    assert_eq!(
        resources(&deployments.get("api").await?, 0),
        json!({"requests": {"memory": "256Mi", "cpu": "250m"}, "limits": {"memory": "512Mi"}})
    );
    Ok(())
}

/// A StorageClass, and a claim bound by the controller-manager to a
/// pre-made volume when `bound`.
async fn claim(
    admin: &kube::Client,
    ns: &str,
    name: &str,
    expandable: bool,
    bound: bool,
) -> anyhow::Result<String> {
    let class = unique("sc");
    create(
        &Api::<k8s_openapi::api::storage::v1::StorageClass>::all(admin.clone()),
        json!({"metadata": {"name": class}, "provisioner": "kubernetes.io/no-provisioner",
               "allowVolumeExpansion": expandable}),
    )
    .await?;
    if bound {
        create(
            &Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(admin.clone()),
            json!({"metadata": {"name": unique("pv")}, "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "storageClassName": class, "hostPath": {"path": "/tmp/kubernaut-pv"}}}),
        )
        .await?;
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), ns);
    create(
        &claims,
        json!({"metadata": {"name": name}, "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": class,
            "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await?;
    if bound {
        eventually(
            &format!("{name} bound"),
            Duration::from_secs(60),
            || async {
                let phase = claims.get(name).await?.status.and_then(|s| s.phase);
                Ok((phase.as_deref() == Some("Bound")).then_some(()))
            },
        )
        .await?;
    }
    Ok(class)
}

async fn requested(admin: &kube::Client, ns: &str, name: &str) -> anyhow::Result<String> {
    let c = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), ns)
        .get(name)
        .await?;
    Ok(c.spec
        .and_then(|s| s.resources?.requests?.get("storage").map(|q| q.0.clone()))
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_pvc_grows_a_bound_claim_only_where_its_class_allows() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-pvc", "staging").await?;
    claim(&admin, &ns, "data", true, true).await?;
    claim(&admin, &ns, "fixed", false, true).await?;
    claim(&admin, &ns, "pending", true, false).await?;
    let expand = |name: &str, size: &str| {
        call(
            "expand_pvc",
            json!({"namespace": ns, "name": name, "size": size}),
        )
    };
    let settings = exec_settings("rr-pvc");

    let out = cluster
        .run_action(&expand("data", "2Gi"), &settings)
        .await?;
    assert_eq!(out.changes.len(), 1);
    assert_eq!(requested(&admin, &ns, "data").await?, "2Gi");
    let again = cluster
        .run_action(&expand("data", "2Gi"), &settings)
        .await?;
    assert!(again.changes.is_empty(), "{again:?}");

    // Refused by our own checks: the class, shrinking, the factor.
    for (name, size, why) in [
        ("fixed", "2Gi", "does not allow volume expansion"),
        ("data", "1Gi", "can only grow"),
        ("data", "5Gi", "exceeds 4Gi"),
    ] {
        let e = cluster
            .run_action(&expand(name, size), &settings)
            .await
            .expect_err(why);
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
    assert_eq!(requested(&admin, &ns, "fixed").await?, "1Gi");

    // Refused by the API server's dry run, with its message: only a bound
    // claim can be resized.
    let e = cluster
        .run_action(&expand("pending", "2Gi"), &settings)
        .await
        .expect_err("an unbound claim cannot be resized");
    match &e {
        ActionError::DryRunFailed(message) => {
            assert!(message.contains("bound claims"), "{message}")
        }
        other => panic!("expected the server's dry-run refusal, got {other}"),
    }
    assert_eq!(requested(&admin, &ns, "pending").await?, "1Gi");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_job_creates_the_configured_job_once_per_request() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-job", "staging").await?;
    let run = call(
        "run_job",
        json!({"namespace": ns, "template": "flush-cache"}),
    );

    let out = cluster.run_action(&run, &exec_settings("rr-job")).await?;
    assert_eq!(out.changes.len(), 1);
    let name = out.changes[0].object.name.clone();
    let job = Api::<Job>::namespaced(admin.clone(), &ns)
        .get(&name)
        .await?;
    let spec = job.spec.unwrap();
    assert_eq!(
        spec.ttl_seconds_after_finished,
        Some(600),
        "the TTL from the settings"
    );
    let container = &spec.template.spec.unwrap().containers[0];
    assert_eq!(
        container.args.as_deref(),
        Some(&["redis-cli".to_string(), "FLUSHALL".into()][..])
    );
    assert_eq!(
        job.metadata.labels.unwrap()["kubernaut.io/job-template"],
        "flush-cache"
    );

    // The same request again: the Job it made is found, not made twice.
    let again = cluster.run_action(&run, &exec_settings("rr-job")).await?;
    assert!(again.changes.is_empty(), "{again:?}");
    let jobs = Api::<Job>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    assert_eq!(jobs.items.len(), 1);

    let e = cluster
        .run_action(
            &call("run_job", json!({"namespace": ns, "template": "rm-rf"})),
            &exec_settings("rr-job"),
        )
        .await
        .expect_err("only configured templates");
    assert!(e.to_string().contains("no job template \"rm-rf\""), "{e}");
    let e = cluster
        .run_action(
            &call(
                "run_job",
                json!({"namespace": "default", "template": "flush-cache"}),
            ),
            &exec_settings("rr-job"),
        )
        .await
        .expect_err("an unmanaged namespace");
    assert!(e.to_string().contains("not labelled"), "{e}");
    Ok(())
}

/// Pods of `app` on `node` (bound by the template's nodeName: the stack has
/// no scheduler), `replicas` of them; their UIDs.
async fn pods_on_node(
    admin: &kube::Client,
    ns: &str,
    app: &str,
    node: &str,
    replicas: usize,
) -> anyhow::Result<BTreeSet<String>> {
    create(
        &Api::<Deployment>::namespaced(admin.clone(), ns),
        json!({"metadata": {"name": app}, "spec": {"replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": {
                "nodeName": node, "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "app", "image": "registry.local/app:1"}]}}}}),
    )
    .await?;
    uids(admin, ns, app, replicas).await
}

async fn uids(
    admin: &kube::Client,
    ns: &str,
    app: &str,
    want: usize,
) -> anyhow::Result<BTreeSet<String>> {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    eventually(
        &format!("{want} pods of {app}"),
        Duration::from_secs(60),
        || async {
            let uids: BTreeSet<String> = pods
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await?
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.uid)
                .collect();
            Ok((uids.len() == want).then_some(uids))
        },
    )
    .await
}

async fn unschedulable(admin: &kube::Client, node: &str) -> anyhow::Result<bool> {
    let n = Api::<Node>::all(admin.clone()).get(node).await?;
    Ok(n.spec.and_then(|s| s.unschedulable).unwrap_or(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_node_evicts_replaceable_pods_and_leaves_daemon_and_mirror_pods() -> anyhow::Result<()>
{
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-drain", "staging").await?;
    let node = managed_node(&admin, "drain").await?;
    let web = pods_on_node(&admin, &ns, "web", &node, 2).await?;

    // A DaemonSet's pod on the node: made first, then adopted by its
    // DaemonSet (whose own pod would wait for a scheduler).
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let agent = json!({"labels": {"app": "agent"}});
    create(
        &pods,
        json!({"metadata": {"name": "agent-on-node", "labels": agent["labels"]},
               "spec": {"nodeName": node, "containers": [{"name": "a", "image": "registry.local/agent:1"}]}}),
    )
    .await?;
    Api::<Node>::all(admin.clone())
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"agent": &ns}}})),
        )
        .await?;
    create(
        &Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(admin.clone(), &ns),
        json!({"metadata": {"name": "agent"}, "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": agent, "spec": {"nodeSelector": {"agent": ns},
                "containers": [{"name": "a", "image": "registry.local/agent:1"}]}}}}),
    )
    .await?;
    eventually(
        "the DaemonSet adopts its pod",
        Duration::from_secs(60),
        || async {
            let p = pods.get("agent-on-node").await?;
            let adopted = p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "DaemonSet");
            Ok(adopted.then_some(()))
        },
    )
    .await?;
    // A static pod's mirror, as a kubelet would post it.
    create(
        &pods,
        json!({"metadata": {"name": format!("static-{node}"),
                            "annotations": {"kubernetes.io/config.mirror": "hash"}},
               "spec": {"nodeName": node, "containers": [{"name": "s", "image": "registry.local/static:1"}]}}),
    )
    .await?;

    let drain = call("drain_node", json!({"name": node, "timeoutSeconds": 60}));
    let out = cluster
        .run_action(&drain, &exec_settings("rr-drain"))
        .await?;
    assert!(unschedulable(&admin, &node).await?, "cordoned first");
    let evicted: BTreeSet<String> = out
        .changes
        .iter()
        .filter(|c| c.object.kind == "Pod")
        .map(|c| {
            c.before["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(evicted, web, "exactly the Deployment's pods were evicted");
    assert!(
        out.message.contains("DaemonSet pod") && out.message.contains("mirror pod"),
        "{}",
        out.message
    );
    for uid in &web {
        let still: Vec<_> = pods
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.uid.as_ref() == Some(uid))
            .collect();
        assert!(still.is_empty(), "evicted pod {uid} is gone");
    }
    assert!(pods.get_opt("agent-on-node").await?.is_some());
    assert!(pods.get_opt(&format!("static-{node}")).await?.is_some());
    // The ReplicaSet replaces what was evicted.
    let replaced = uids(&admin, &ns, "web", 2).await?;
    assert!(replaced.is_disjoint(&web));

    // The rollback uncordons the node (evicted pods are already replaced).
    let node_change = out
        .changes
        .iter()
        .find(|c| c.object.kind == "Node")
        .expect("the cordon");
    let undo = drain
        .rollback(node_change)
        .expect("the cordon can be undone");
    cluster
        .run_action(&undo, &exec_settings("rr-drain"))
        .await?;
    assert!(!unschedulable(&admin, &node).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_node_fails_cleanly_when_a_disruption_budget_forbids_eviction() -> anyhow::Result<()>
{
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let cluster = controller_cluster(stack).await?;
    let ns = managed_namespace(&admin, "act-pdb", "staging").await?;
    let node = managed_node(&admin, "pdb").await?;
    let db = pods_on_node(&admin, &ns, "db", &node, 2).await?;
    // Running and Ready, as a kubelet would report them, so the budget
    // counts them as healthy (pending pods are never protected).
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    for p in pods
        .list(&ListParams::default().labels("app=db"))
        .await?
        .items
    {
        let name = p.metadata.name.unwrap_or_default();
        pods.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}]}})),
        )
        .await?;
    }
    // policy/v1 came with 1.21; the stack's 1.20 serves policy/v1beta1.
    let v1beta1 = kube::discovery::ApiResource {
        group: "policy".into(),
        version: "v1beta1".into(),
        api_version: "policy/v1beta1".into(),
        kind: "PodDisruptionBudget".into(),
        plural: "poddisruptionbudgets".into(),
    };
    let dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(admin.clone(), &ns, &v1beta1);
    dynamic
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "policy/v1beta1",
                "kind": "PodDisruptionBudget", "metadata": {"name": "db"},
                "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "db"}}}}))?,
        )
        .await?;
    eventually(
        "the budget counts 2 healthy pods",
        Duration::from_secs(60),
        || async {
            let b = dynamic.get("db").await?;
            let healthy = b.data["status"]["currentHealthy"].as_i64();
            Ok((healthy == Some(2)).then_some(()))
        },
    )
    .await?;

    let drain = call("drain_node", json!({"name": node, "timeoutSeconds": 4}));
    let e = cluster
        .run_action(&drain, &exec_settings("rr-pdb"))
        .await
        .expect_err("the budget forbids evicting either pod");
    match &e {
        ActionError::Timeout(message) => {
            assert!(message.contains("disruption budget"), "{message}");
            assert!(message.contains("0 of 2 pods evicted"), "{message}");
        }
        other => panic!("expected a timeout naming the budget, got {other}"),
    }
    assert_eq!(uids(&admin, &ns, "db", 2).await?, db, "no pod was evicted");
    assert!(
        unschedulable(&admin, &node).await?,
        "the node stays cordoned, as kubectl leaves it"
    );
    Ok(())
}

//! The admission webhook on the real API server (issue 17, finding 2):
//! kube-apiserver asks `kubernaut serve` over TLS before it stores a
//! RemediationRequest. Only Kubernaut creates requests, a spec never
//! changes, and only holders of the `approve` verb write an approval; a
//! plain `patch` no longer bypasses what the HTTP endpoint checks.
//!
//! The webhook is registered for this test's namespace only (a
//! namespaceSelector), so other tests sharing the API server never meet it.

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kubernaut_api::RemediationRequest;
use kubernaut_e2e::{
    Stack, api_target, control_plane, eventually, now_rfc3339, service_account_token,
    tls_certificates, unique,
};
use serde_json::json;

const LABEL: &str = "kubernaut-e2e-admission";

fn request(name: &str, ns: &str, target_ns: &str) -> anyhow::Result<RemediationRequest> {
    let now = now_rfc3339();
    let target = json!({"kind": "Deployment", "namespace": target_ns, "name": "api"});
    Ok(serde_json::from_value(json!({
        "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "fingerprint": unique("fp"), "signalName": "Guarded", "severity": "warning",
            "source": "generic", "instanceId": unique("instance"),
            "target": target, "signalResource": target,
            "firingTime": now, "receivedTime": now, "originalPayload": "{}",
        },
    }))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_asks_the_webhook_and_only_kubernaut_and_approvers_get_through()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = api_target(&admin, "admission").await?;
    let ns = t.namespace.clone();
    stack.kubectl(&["label", "namespace", &ns, &format!("{LABEL}={ns}")])?;

    let dir = std::env::temp_dir().join(unique("kubernaut-admission"));
    std::fs::create_dir_all(&dir)?;
    tls_certificates(&dir)?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let overrides = [
        ("ADMISSION__ENABLED", "true".to_string()),
        ("ADMISSION__LISTEN", "127.0.0.1:0".to_string()),
        ("ADMISSION__CERT_FILE", cert.display().to_string()),
        ("ADMISSION__KEY_FILE", key.display().to_string()),
    ];
    let overrides = kubernaut_e2e::overrides(&overrides);
    let rules = json!([{ "signal": "Guarded", "action": "notify_only" }]);
    let running = control_plane(stack, &ns, &overrides, rules).await?;
    let addr = running.admission_addr.context("the webhook is served")?;

    let hook = unique("kubernaut-e2e-admission");
    let ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("ca.pem"))?);
    let configs: Api<kube::core::DynamicObject> = Api::all_with(
        admin.clone(),
        &kube::core::ApiResource {
            group: "admissionregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "admissionregistration.k8s.io/v1".into(),
            kind: "ValidatingWebhookConfiguration".into(),
            plural: "validatingwebhookconfigurations".into(),
        },
    );
    configs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": hook},
                "webhooks": [{
                    "name": "remediationrequests.kubernaut.io",
                    "clientConfig": {
                        "url": format!("https://127.0.0.1:{}{}", addr.port(), kubernaut::admission::PATH),
                        "caBundle": ca,
                    },
                    "rules": [{"apiGroups": ["kubernaut.io"], "apiVersions": ["*"],
                               "operations": ["CREATE", "UPDATE"],
                               "resources": ["remediationrequests"], "scope": "Namespaced"}],
                    "namespaceSelector": {"matchLabels": {LABEL: ns}},
                    "failurePolicy": "Fail", "sideEffects": "None",
                    "admissionReviewVersions": ["v1"], "timeoutSeconds": 5,
                }],
            }))?,
        )
        .await?;

    let result = async {
        let as_admin = Api::<RemediationRequest>::namespaced(admin.clone(), &ns);
        // Even a cluster admin does not create requests: Kubernaut does.
        let refused = eventually(
            "the webhook to be asked",
            Duration::from_secs(30),
            || async {
                match as_admin
                    .create(
                        &PostParams::default(),
                        &request(&unique("by-admin"), &ns, &ns)?,
                    )
                    .await
                {
                    Err(kube::Error::Api(e)) if e.message.contains("created by Kubernaut only") => {
                        Ok(Some(e.message))
                    }
                    _ => Ok(None),
                }
            },
        )
        .await?;
        assert!(refused.contains("kubernaut-admin"), "{refused}");

        let controller = stack.controller_client().await?;
        let as_kubernaut = Api::<RemediationRequest>::namespaced(controller, &ns);
        let other = api_target(&admin, "admission-other").await?;
        let err = as_kubernaut
            .create(
                &PostParams::default(),
                &request(&unique("foreign"), &ns, &other.namespace)?,
            )
            .await
            .expect_err("a request about another namespace is refused");
        assert!(err.to_string().contains(&other.namespace), "{err}");
        let name = unique("guarded");
        as_kubernaut
            .create(&PostParams::default(), &request(&name, &ns, &ns)?)
            .await?;

        let patch =
            json!({"spec": {"target": {"kind": "Deployment", "namespace": ns, "name": "db"}}});
        let err = as_kubernaut
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("the spec is immutable");
        assert!(err.to_string().contains("cannot change"), "{err}");

        // Users who may patch requests, one of them also an approver.
        stack.kubectl(&[
            "-n",
            &ns,
            "create",
            "role",
            "rr-writer",
            "--verb=get,patch,update",
            "--resource=remediationrequests.kubernaut.io",
        ])?;
        let mut tokens = std::collections::BTreeMap::new();
        for sa in ["intruder", "oncall"] {
            tokens.insert(sa, service_account_token(&admin, &ns, sa).await?);
            stack.kubectl(&[
                "-n",
                &ns,
                "create",
                "rolebinding",
                &format!("{sa}-writes"),
                "--role=rr-writer",
                &format!("--serviceaccount={ns}:{sa}"),
            ])?;
        }
        stack.kubectl(&[
            "-n",
            &ns,
            "create",
            "rolebinding",
            "oncall-approves",
            "--clusterrole=kubernaut-approver",
            &format!("--serviceaccount={ns}:oncall"),
        ])?;
        let approve_as = |sa: &str| {
            let token = &tokens[sa];
            stack.kubectl(&[
                "-n",
                &ns,
                "annotate",
                "rr",
                &name,
                "--overwrite",
                "kubernaut.io/approval=approved",
                &format!("--token={token}"),
            ])
        };
        let err = eventually("RBAC for the intruder", Duration::from_secs(30), || async {
            match approve_as("intruder") {
                Err(e) if e.to_string().contains("may not approve") => Ok(Some(e.to_string())),
                _ => Ok(None),
            }
        })
        .await?;
        assert!(err.contains("intruder"), "{err}");
        eventually("RBAC for the approver", Duration::from_secs(30), || async {
            Ok(approve_as("oncall").ok())
        })
        .await?;
        let annotations = as_admin
            .get(&name)
            .await?
            .metadata
            .annotations
            .unwrap_or_default();
        assert_eq!(
            annotations.get("kubernaut.io/approval").map(String::as_str),
            Some("approved")
        );
        anyhow::Ok(())
    }
    .await;

    configs.delete(&hook, &DeleteParams::default()).await?;
    running.shutdown().await?;
    result
}

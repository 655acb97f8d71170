//! The approval gate (K-AI-4) end to end: the default Rego policy holds a
//! production StatefulSet change in AwaitingApproval; an approval by
//! annotation or through the authenticated HTTP endpoint lets it run; the
//! endpoint refuses callers the API server does not know or RBAC does not
//! allow; an approval written before the request waited approves nothing.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kubernaut_api::{ObjectRef, Phase, RemediationRequest};
use kubernaut_e2e::{
    Stack, control_plane, create_request, eventually, metric, phases, post_as, post_with,
    production_statefulset, service_account_token, terminal_request, unique,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(120);

fn rules() -> serde_json::Value {
    json!([{ "signal": "DbLagging", "action": "scale_statefulset",
             "parameters": {"namespace": "{{target.namespace}}", "name": "{{target.name}}", "replicas": 2} }])
}

async fn awaiting(
    admin: &kube::Client,
    t: &ObjectRef,
    name: &str,
) -> anyhow::Result<RemediationRequest> {
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &t.namespace);
    eventually("AwaitingApproval", TIMEOUT, || async {
        let rr = api.get(name).await?;
        Ok((rr.phase() == Phase::AwaitingApproval).then_some(rr))
    })
    .await
}

async fn replicas(admin: &kube::Client, t: &ObjectRef) -> anyhow::Result<Option<i32>> {
    let set = Api::<StatefulSet>::namespaced(admin.clone(), &t.namespace)
        .get(&t.name)
        .await?;
    Ok(set.spec.and_then(|s| s.replicas))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_statefulset_change_waits_and_proceeds_once_annotated() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = production_statefulset(&admin, "gate-annotation").await?;
    let running = control_plane(stack, &t.namespace, &[], rules()).await?;
    let name = create_request(&admin, "DbLagging", &t, false).await?;
    let rr = awaiting(&admin, &t, &name).await?;

    let status = rr.status.clone().context("status")?;
    let approval = status
        .approval
        .clone()
        .context("the policy's verdict is recorded")?;
    // The decision is in the audit trail as data (K-AU-1).
    let db = sqlx::PgPool::connect(&stack.database_url).await?;
    let uid = rr.metadata.uid.clone().unwrap_or_default();
    let decided: serde_json::Value =
        eventually("the decision in the audit trail", TIMEOUT, || async {
            Ok(sqlx::query_scalar(
            "SELECT detail FROM remediation_events WHERE request_uid = $1 AND kind = 'decision'",
        )
        .bind(&uid)
        .fetch_optional(&db)
        .await?)
        })
        .await?;
    assert_eq!(decided["decidedBy"], "rules", "{decided}");
    assert_eq!(decided["actions"], "scale_statefulset", "{decided}");
    assert_eq!(decided["policy"]["required"], true, "{decided}");
    assert_eq!(
        decided["policy"]["reasons"],
        json!(["StatefulSet target"]),
        "{decided}"
    );
    assert!(approval.required, "{approval:?}");
    assert_eq!(approval.reasons, ["StatefulSet target"]);
    assert!(approval.expires_at.is_some() && approval.decision.is_none());
    let analysis = status
        .analysis
        .context("the analysis is recorded before approval")?;
    assert_eq!(
        (analysis.decided_by.as_str(), analysis.action.as_str()),
        ("rules", "scale_statefulset")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replicas(&admin, &t).await?,
        Some(1),
        "nothing runs before approval"
    );

    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &t.namespace);
    // As `kubectl annotate` writes it; the approved-by text is anyone's to
    // write, so the field manager is recorded instead.
    let patch = json!({"metadata": {"annotations": {
        "kubernaut.io/approval": "approved", "kubernaut.io/approved-by": "alice@example.com"}}});
    let kubectl = PatchParams {
        field_manager: Some("kubectl-annotate".into()),
        ..PatchParams::default()
    };
    api.patch(&name, &kubectl, &Patch::Merge(&patch)).await?;
    let rr = terminal_request(&admin, &t.namespace, &name, TIMEOUT).await?;
    assert_eq!(
        phases(&rr)[..4],
        [
            Phase::Processing,
            Phase::Analyzing,
            Phase::AwaitingApproval,
            Phase::Executing
        ]
    );
    let approval = rr.status.and_then(|s| s.approval).context("approval")?;
    assert_eq!(approval.decision.map(|d| d.as_str()), Some("approved"));
    assert_eq!(
        approval.decided_by.as_deref(),
        Some("field manager kubectl-annotate")
    );
    assert_eq!(replicas(&admin, &t).await?, Some(2));
    assert!(
        metric(
            &running,
            "kubernaut_controller_approval_decisions_total{reason=\"required\"}"
        )
        .await?
            >= 1.0
    );
    running.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approval_endpoint_authenticates_authorises_and_records_who_decided()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = production_statefulset(&admin, "gate-http").await?;
    let running = control_plane(stack, &t.namespace, &[], rules()).await?;
    let name = create_request(&admin, "DbLagging", &t, false).await?;
    awaiting(&admin, &t, &name).await?;
    let url = format!(
        "http://{}/api/v1/remediations/{}/{name}/approval",
        running.gateway_addr, t.namespace
    );
    let body = json!({"decision": "approved"}).to_string();

    let r = post_as(&url, "application/json", body.clone(), None).await?;
    assert_eq!(r.status, 401, "{r:?}");
    let r = post_as(&url, "application/json", body.clone(), Some("not-a-token")).await?;
    assert_eq!(r.status, 401, "{r:?}");
    let nobody = service_account_token(&admin, &t.namespace, "nobody").await?;
    let r = post_as(&url, "application/json", body.clone(), Some(&nobody)).await?;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.text.contains("system:serviceaccount:") && r.text.contains("approve"),
        "{r:?}"
    );

    let oncall = service_account_token(&admin, &t.namespace, "oncall").await?;
    Api::<RoleBinding>::namespaced(admin.clone(), &t.namespace)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "oncall-approves"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubernaut-approver"},
                "subjects": [{"kind": "ServiceAccount", "name": "oncall", "namespace": t.namespace}]}))?,
        )
        .await?;
    let bad = post_as(
        &url,
        "application/json",
        r#"{"decision": "maybe"}"#,
        Some(&oncall),
    )
    .await?;
    assert_eq!(bad.status, 400, "{bad:?}");
    let r = eventually(
        "RBAC to allow the approval",
        Duration::from_secs(30),
        || async {
            let r = post_as(&url, "application/json", body.clone(), Some(&oncall)).await?;
            Ok((r.status == 200).then_some(r))
        },
    )
    .await?;
    let who = format!("system:serviceaccount:{}:oncall", t.namespace);
    assert!(r.text.contains(&who), "{r:?}");

    let rr = terminal_request(&admin, &t.namespace, &name, TIMEOUT).await?;
    let approval = rr.status.and_then(|s| s.approval).context("approval")?;
    assert_eq!(approval.decided_by.as_deref(), Some(who.as_str()));
    assert_eq!(replicas(&admin, &t).await?, Some(2));
    let again = post_as(&url, "application/json", body, Some(&oncall)).await?;
    assert_eq!(again.status, 409, "{again:?}");
    running.shutdown().await
}

/// Issue 17, finding 2: an approval annotation a request was created with
/// approves nothing decided later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_written_at_creation_approves_nothing() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = production_statefulset(&admin, "gate-early").await?;
    let running = control_plane(stack, &t.namespace, &[], rules()).await?;
    let name = kubernaut_e2e::unique("early");
    let now = kubernaut_e2e::now_rfc3339();
    let rr: RemediationRequest = serde_json::from_value(json!({
        "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
        "metadata": {"name": name, "namespace": t.namespace, "annotations": {
            "kubernaut.io/approval": "approved", "kubernaut.io/approved-by": "mallory"}},
        "spec": {
            "fingerprint": kubernaut_e2e::unique("fp"), "signalName": "DbLagging",
            "severity": "warning", "source": "generic",
            "instanceId": kubernaut_e2e::unique("instance"),
            "target": t, "signalResource": t,
            "firingTime": now, "receivedTime": now, "originalPayload": "{}",
        },
    }))?;
    Api::<RemediationRequest>::namespaced(admin.clone(), &t.namespace)
        .create(&PostParams::default(), &rr)
        .await?;
    let rr = awaiting(&admin, &t, &name).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &t.namespace);
    assert_eq!(api.get(&name).await?.phase(), Phase::AwaitingApproval);
    assert!(
        rr.status
            .and_then(|s| s.approval)
            .is_some_and(|a| a.decision.is_none())
    );
    assert_eq!(replicas(&admin, &t).await?, Some(1), "nothing ran");
    running.shutdown().await
}

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// A Slack `block_actions` callback for a button, form-encoded, and the
/// headers Slack signs it with at `ts`.
fn slack_click(
    user: &str,
    action: &str,
    value: &str,
    ts: i64,
    secret: &str,
) -> (String, [(String, String); 2]) {
    let payload = json!({"type": "block_actions", "user": {"id": user, "username": user},
        "actions": [{"action_id": action, "block_id": "kubernaut-approval", "value": value, "type": "button"}]});
    let body = format!("payload={}", urlencode(&payload.to_string()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let sig = ring::hmac::sign(&key, format!("v0:{ts}:{body}").as_bytes());
    let headers = [
        ("x-slack-request-timestamp".to_string(), ts.to_string()),
        (
            "x-slack-signature".to_string(),
            format!("v0={}", hex::encode(sig.as_ref())),
        ),
    ];
    (body, headers)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_button_approves_only_when_slack_signed_it_for_an_approver_rbac_allows()
-> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let t = production_statefulset(&admin, "gate-slack").await?;
    let dir = std::env::temp_dir().join(unique("kubernaut-slack"));
    std::fs::create_dir_all(&dir)?;
    let secret_file = dir.join("signing-secret");
    std::fs::write(&secret_file, format!("{SLACK_SECRET}\n"))?;
    let approvers = json!({"U0ALICE": "alice@example.com", "U0BOB": "bob@example.com"}).to_string();
    let secret_path = secret_file.display().to_string();
    let running = control_plane(
        stack,
        &t.namespace,
        &[
            ("GATEWAY__SLACK__SIGNING_SECRET_FILE", secret_path.as_str()),
            ("GATEWAY__SLACK__APPROVERS", approvers.as_str()),
        ],
        rules(),
    )
    .await?;
    let name = create_request(&admin, "DbLagging", &t, false).await?;
    awaiting(&admin, &t, &name).await?;
    // Only alice may approve here.
    Api::<RoleBinding>::namespaced(admin.clone(), &t.namespace)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "alice-approves"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubernaut-approver"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice@example.com"}]}))?,
        )
        .await?;
    let url = format!("http://{}/api/v1/slack/interactions", running.gateway_addr);
    let value = format!("{}/{name}", t.namespace);
    let now = chrono::Utc::now().timestamp();
    let send = |(body, headers): (String, [(String, String); 2])| {
        let url = url.clone();
        async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            post_with(&url, "application/x-www-form-urlencoded", body, &h).await
        }
    };

    // Forged, replayed, or from someone who is not an approver: refused.
    let r = send(slack_click(
        "U0ALICE",
        "approve",
        &value,
        now,
        "not the secret",
    ))
    .await?;
    assert_eq!(r.status, 401, "{r:?}");
    let r = send(slack_click(
        "U0ALICE",
        "approve",
        &value,
        now - 600,
        SLACK_SECRET,
    ))
    .await?;
    assert_eq!(r.status, 401, "a replay after five minutes: {r:?}");
    let r = send(slack_click(
        "U0MALLORY",
        "approve",
        &value,
        now,
        SLACK_SECRET,
    ))
    .await?;
    assert_eq!(r.status, 403, "{r:?}");
    // An approver RBAC does not allow here.
    let r = send(slack_click("U0BOB", "approve", &value, now, SLACK_SECRET)).await?;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.text.contains("bob@example.com"), "{r:?}");
    let api = Api::<RemediationRequest>::namespaced(admin.clone(), &t.namespace);
    assert_eq!(api.get(&name).await?.phase(), Phase::AwaitingApproval);

    // Alice, signed as Slack signs it.
    let r = eventually("RBAC to allow alice", Duration::from_secs(30), || async {
        let r = send(slack_click(
            "U0ALICE",
            "approve",
            &value,
            chrono::Utc::now().timestamp(),
            SLACK_SECRET,
        ))
        .await?;
        Ok((r.status == 200).then_some(r))
    })
    .await?;
    assert!(r.text.contains("alice@example.com"), "{r:?}");
    let rr = terminal_request(&admin, &t.namespace, &name, TIMEOUT).await?;
    let approval = rr.status.and_then(|s| s.approval).context("approval")?;
    assert_eq!(approval.decided_by.as_deref(), Some("alice@example.com"));
    assert_eq!(replicas(&admin, &t).await?, Some(2));
    running.shutdown().await
}

//! The gateway's protection on the real stack (K-GW-7, K-GW-8): bearer
//! tokens checked by the API server's TokenReview (with the RBAC deploy/
//! grants), static tokens, per-identity rate limits, and every refusal as an
//! RFC 7807 problem with its status code.

use std::num::NonZeroU32;
use std::sync::Arc;

use kubernaut_cluster::KubeTokenReviewer;
use kubernaut_e2e::{
    DEV_TOKEN, Gateway, Stack, alertmanager_payload, deployment_with_pods, managed_namespace,
    post_as, service_account_token, unique,
};
use kubernaut_gateway::{ProtectionConfig, Rate, ReviewPolicy};

const STARTS_AT: &str = "2026-11-22T03:00:00Z";
const JSON: &str = "application/json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protection_path_answers_its_status_code() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "protect", "production").await?;
    let pods: Vec<String> = deployment_with_pods(&admin, &ns, "web", 1)
        .await?
        .into_iter()
        .collect();
    let alertmanager = service_account_token(&admin, &ns, "alertmanager").await?;
    let intruder = service_account_token(&admin, &ns, "intruder").await?;

    let allowed = format!("system:serviceaccount:{ns}:alertmanager");
    let gw = Gateway::start_with(stack, Some(&stack.redis_url), "gw-protect", |cluster| {
        ProtectionConfig {
            auth_enabled: true,
            static_tokens: vec![DEV_TOKEN.into(), "ops-token".into()],
            review: Some(ReviewPolicy {
                reviewer: Arc::new(KubeTokenReviewer::new(cluster.clone(), vec![])),
                allowed_users: vec![allowed],
                allowed_groups: vec![],
            }),
            per_identity: Rate {
                per_second: NonZeroU32::MIN,
                burst: NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN),
            },
            ..ProtectionConfig::open()
        }
    })
    .await?;
    let url = gw.url("alertmanager");
    let body = alertmanager_payload("KubePodCrashLooping", &ns, &[(&pods[0], "pp01")], STARTS_AT);

    // No token, a made-up token: 401 with a challenge.
    for token in [None, Some("not-a-token")] {
        let r = post_as(&url, JSON, body.clone(), token).await?;
        assert_eq!(r.status, 401, "{token:?}: {}", r.text);
        assert_eq!(r.content_type, "application/problem+json");
        assert!(r.headers.contains_key("www-authenticate"));
    }
    // A real ServiceAccount the API server vouches for, but not an allowed one: 403.
    let r = post_as(&url, JSON, body.clone(), Some(&intruder)).await?;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(
        r.text
            .contains(&format!("system:serviceaccount:{ns}:intruder"))
    );
    // The allowed ServiceAccount: created, then counted.
    let r = post_as(&url, JSON, body.clone(), Some(&alertmanager)).await?;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = post_as(&url, JSON, body.clone(), Some(&alertmanager)).await?;
    assert_eq!(r.status, 202, "{}", r.text);

    // Bad input, with a valid token: 415, 413, 400, 404 as problems.
    let checks = [
        ("text/plain", body.clone(), url.clone(), 415),
        (
            JSON,
            format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024)),
            url.clone(),
            413,
        ),
        (JSON, "{\"version\":".to_string(), url.clone(), 400),
        (
            JSON,
            body.clone(),
            url.replace("alertmanager", "nagios"),
            404,
        ),
    ];
    for (ct, b, u, want) in checks {
        let r = post_as(&u, ct, b, Some(DEV_TOKEN)).await?;
        assert_eq!(r.status, want, "{}", r.text);
        assert_eq!(r.content_type, "application/problem+json", "{want}");
        let problem: serde_json::Value = serde_json::from_str(&r.text)?;
        assert_eq!(problem["status"], want);
    }

    // Out of scope (K-GW-8): accepted, not acted on.
    let unmanaged = unique("protect-unmanaged");
    admin_namespace(&admin, &unmanaged).await?;
    let legacy: Vec<String> = deployment_with_pods(&admin, &unmanaged, "legacy", 1)
        .await?
        .into_iter()
        .collect();
    let r = post_as(
        &url,
        JSON,
        alertmanager_payload(
            "KubePodCrashLooping",
            &unmanaged,
            &[(&legacy[0], "pp02")],
            STARTS_AT,
        ),
        Some(DEV_TOKEN),
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"], "rejected");
    assert_eq!(r.body["reason"], "out_of_scope");

    // The allowed ServiceAccount used 2 of its burst of 4, refilled at 1/s:
    // a quick burst of 10 gets at most what is left plus the refill, and the
    // rest is refused with 429 and Retry-After.
    let started = std::time::Instant::now();
    let mut codes = Vec::new();
    for _ in 0..10 {
        let r = post_as(&url, JSON, body.clone(), Some(&alertmanager)).await?;
        if r.status == 429 {
            assert!(r.headers.contains_key("retry-after"));
            assert_eq!(r.content_type, "application/problem+json");
        }
        codes.push(r.status);
    }
    let refill = started.elapsed().as_secs() as usize + 1;
    let passed = codes.iter().filter(|c| **c == 202).count();
    assert_eq!(
        passed + codes.iter().filter(|c| **c == 429).count(),
        10,
        "{codes:?}"
    );
    assert!(
        passed >= 2 && passed <= 2 + refill,
        "{codes:?} in {refill} s"
    );
    // Another identity has its own budget.
    let r = post_as(&url, JSON, body, Some("ops-token")).await?;
    assert_eq!(r.status, 202, "{}", r.text);
    Ok(())
}

async fn admin_namespace(admin: &kube::Client, name: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::Api;
    use kube::api::PostParams;
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?,
        )
        .await?;
    Ok(())
}

/// A token for `audience` of ServiceAccount `ns/sa` (TokenRequest).
async fn token_for(
    admin: &kube::Client,
    ns: &str,
    sa: &str,
    audience: &str,
) -> anyhow::Result<String> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [audience], "expirationSeconds": 600}
    }))?;
    let issued: TokenRequest = kube::Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_subresource("token", sa, &kube::api::PostParams::default(), &request)
        .await?;
    Ok(issued.status.map(|s| s.token).unwrap_or_default())
}

/// Issue 17, finding 8: with a dedicated audience, a token the API server
/// issued for itself (or for anyone else) does not get a signal in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tokens_issued_for_kubernaut_are_accepted() -> anyhow::Result<()> {
    let stack = Stack::get();
    let admin = stack.admin_client().await?;
    let ns = managed_namespace(&admin, "audience", "staging").await?;
    let pods: Vec<String> = deployment_with_pods(&admin, &ns, "web", 1)
        .await?
        .into_iter()
        .collect();
    let legacy = service_account_token(&admin, &ns, "alertmanager").await?;
    let allowed = format!("system:serviceaccount:{ns}:alertmanager");
    let gw = Gateway::start_with(stack, Some(&stack.redis_url), "gw-audience", |cluster| {
        ProtectionConfig {
            auth_enabled: true,
            review: Some(ReviewPolicy {
                reviewer: Arc::new(KubeTokenReviewer::new(
                    cluster.clone(),
                    vec!["kubernaut".into()],
                )),
                allowed_users: vec![allowed],
                allowed_groups: vec![],
            }),
            ..ProtectionConfig::open()
        }
    })
    .await?;
    let url = gw.url("alertmanager");
    let body = alertmanager_payload("KubePodCrashLooping", &ns, &[(&pods[0], "aud1")], STARTS_AT);

    let elsewhere = token_for(&admin, &ns, "alertmanager", "https://vault.example.com").await?;
    for (what, token) in [
        ("the API server's own", &legacy),
        ("another audience's", &elsewhere),
    ] {
        let r = post_as(&url, JSON, body.clone(), Some(token)).await?;
        assert_eq!(r.status, 401, "{what} token: {}", r.text);
    }
    let ours = token_for(&admin, &ns, "alertmanager", "kubernaut").await?;
    let r = post_as(&url, JSON, body, Some(&ours)).await?;
    assert_eq!(r.status, 201, "{}", r.text);
    Ok(())
}

//! The validating admission webhook for RemediationRequests. A request is
//! an instruction to change the cluster with Kubernaut's rights, so the
//! API server asks this webhook (over TLS, failurePolicy Fail) before it
//! stores one:
//! - only Kubernaut's own identities (`admission.controllers`) create
//!   requests, never one that is already approved, and only about objects
//!   of the request's own namespace;
//! - a request's spec never changes once created;
//! - an approval (`kubernaut.io/approval`, `kubernaut.io/approved-by`) is
//!   written only by holders of the `approve` verb on the request (a
//!   SubjectAccessReview), or by Kubernaut's approval endpoint, which
//!   checked that verb for the human it authenticated.
//!
//! Status writes (the `status` subresource) are not sent here.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kubernaut_api::{APPROVAL_ANNOTATION, APPROVED_BY_ANNOTATION, RemediationRequest};
use kubernaut_cluster::Cluster;

/// Where the API server posts its reviews.
pub const PATH: &str = "/validate/remediationrequests";

/// What the webhook enforces.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Kubernaut's own identities: the controller's ServiceAccount.
    pub controllers: BTreeSet<String>,
    /// Where requests about cluster-scoped objects live.
    pub cluster_home: String,
}

/// The webhook's answer before any API call.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    Allow,
    Deny(String),
    /// Allowed only if `user` may `approve` the request.
    Approver {
        user: String,
        groups: Vec<String>,
        namespace: String,
        name: String,
    },
}

fn approval_of(rr: &RemediationRequest) -> (Option<&String>, Option<&String>) {
    let a = rr.metadata.annotations.as_ref();
    (
        a.and_then(|a| a.get(APPROVAL_ANNOTATION)),
        a.and_then(|a| a.get(APPROVED_BY_ANNOTATION)),
    )
}

/// The rules, without the SubjectAccessReview.
pub fn check(req: &AdmissionRequest<RemediationRequest>, policy: &Policy) -> Check {
    let user = req.user_info.username.clone().unwrap_or_default();
    let controller = policy.controllers.contains(&user);
    let namespace = req.namespace.clone().unwrap_or_default();
    let Some(rr) = &req.object else {
        return Check::Allow;
    };
    match req.operation {
        Operation::Create => {
            if !controller {
                return Check::Deny(format!(
                    "RemediationRequests are created by Kubernaut only ({}), not by {user}",
                    policy
                        .controllers
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if approval_of(rr) != (None, None) {
                return Check::Deny("a RemediationRequest cannot be created approved".into());
            }
            match kubernaut_api::object::owned_by(&namespace, &rr.spec, &policy.cluster_home) {
                Ok(()) => Check::Allow,
                Err(why) => Check::Deny(why),
            }
        }
        Operation::Update => {
            let Some(old) = &req.old_object else {
                return Check::Allow;
            };
            if old.spec != rr.spec {
                return Check::Deny("the spec of a RemediationRequest cannot change".into());
            }
            if approval_of(old) == approval_of(rr) || controller {
                return Check::Allow;
            }
            Check::Approver {
                user,
                groups: req.user_info.groups.clone().unwrap_or_default(),
                namespace,
                name: req.name.clone(),
            }
        }
        _ => Check::Allow,
    }
}

#[derive(Clone)]
struct Webhook {
    policy: Policy,
    cluster: Cluster,
}

/// The webhook's routes.
pub fn router(policy: Policy, cluster: Cluster) -> axum::Router {
    axum::Router::new()
        .route(PATH, post(review))
        .with_state(Webhook { policy, cluster })
}

async fn review(
    State(w): State<Webhook>,
    Json(review): Json<AdmissionReview<RemediationRequest>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<RemediationRequest> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "an admission review without a request");
            return Json(AdmissionResponse::invalid(e.to_string()).into_review());
        }
    };
    let answer = AdmissionResponse::from(&req);
    let verdict = match check(&req, &w.policy) {
        Check::Allow => Ok(()),
        Check::Deny(why) => Err(why),
        Check::Approver {
            user,
            groups,
            namespace,
            name,
        } => match w
            .cluster
            .may_approve(&user, &groups, &namespace, &name)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "{user} may not approve RemediationRequests in {namespace} (verb approve)"
            )),
            // failurePolicy Fail: when RBAC cannot be asked, no approval.
            Err(e) => Err(format!("cannot check {user}'s right to approve: {e}")),
        },
    };
    let answer = match verdict {
        Ok(()) => answer,
        Err(why) => {
            tracing::info!(
                user = req.user_info.username.as_deref().unwrap_or(""),
                namespace = req.namespace.as_deref().unwrap_or(""),
                name = %req.name,
                operation = ?req.operation,
                %why,
                "admission denied"
            );
            answer.deny(why)
        }
    };
    Json(answer.into_review())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBERNAUT: &str = "system:serviceaccount:kubernaut-system:kubernaut";

    fn policy() -> Policy {
        Policy {
            controllers: [KUBERNAUT.to_string()].into(),
            cluster_home: "kubernaut-system".into(),
        }
    }

    fn rr(target_ns: &str, annotations: serde_json::Value) -> serde_json::Value {
        let target =
            serde_json::json!({"kind": "Deployment", "namespace": target_ns, "name": "web"});
        serde_json::json!({
            "apiVersion": "kubernaut.io/v1alpha1", "kind": "RemediationRequest",
            "metadata": {"name": "r", "namespace": "shop", "annotations": annotations},
            "spec": {"fingerprint": "f", "signalName": "s", "severity": "warning",
                     "source": "generic", "instanceId": "i", "target": target,
                     "signalResource": target, "firingTime": "2026-11-22T03:00:00Z",
                     "receivedTime": "2026-11-22T03:00:00Z", "originalPayload": "{}"}
        })
    }

    fn request(
        operation: &str,
        user: &str,
        object: serde_json::Value,
        old: Option<serde_json::Value>,
    ) -> AdmissionRequest<RemediationRequest> {
        let review: AdmissionReview<RemediationRequest> = serde_json::from_value(serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": "kubernaut.io", "version": "v1alpha1", "kind": "RemediationRequest"},
                "resource": {"group": "kubernaut.io", "version": "v1alpha1", "resource": "remediationrequests"},
                "name": "r", "namespace": "shop", "operation": operation,
                "userInfo": {"username": user, "groups": ["g"]},
                "object": object, "oldObject": old, "dryRun": false
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[test]
    fn only_kubernaut_creates_requests_unapproved_and_about_its_own_namespace() {
        let ok = request("CREATE", KUBERNAUT, rr("shop", serde_json::json!({})), None);
        assert_eq!(check(&ok, &policy()), Check::Allow);
        let user = request("CREATE", "alice", rr("shop", serde_json::json!({})), None);
        assert!(matches!(check(&user, &policy()), Check::Deny(why) if why.contains("alice")));
        let foreign = request("CREATE", KUBERNAUT, rr("bank", serde_json::json!({})), None);
        assert!(matches!(check(&foreign, &policy()), Check::Deny(why) if why.contains("bank")));
        let approved = request(
            "CREATE",
            KUBERNAUT,
            rr("shop", serde_json::json!({APPROVAL_ANNOTATION: "approved"})),
            None,
        );
        assert!(matches!(check(&approved, &policy()), Check::Deny(_)));
    }

    #[test]
    fn the_spec_is_immutable_and_approvals_need_the_approve_verb() {
        let old = rr("shop", serde_json::json!({}));
        let mut changed = old.clone();
        changed["spec"]["target"]["name"] = serde_json::json!("api");
        let r = request("UPDATE", KUBERNAUT, changed, Some(old.clone()));
        assert!(matches!(check(&r, &policy()), Check::Deny(why) if why.contains("spec")));

        let approved = rr("shop", serde_json::json!({APPROVAL_ANNOTATION: "approved"}));
        let r = request("UPDATE", "alice", approved.clone(), Some(old.clone()));
        assert_eq!(
            check(&r, &policy()),
            Check::Approver {
                user: "alice".into(),
                groups: vec!["g".into()],
                namespace: "shop".into(),
                name: "r".into()
            }
        );
        // Kubernaut's endpoint checked the verb for the human itself.
        let r = request("UPDATE", KUBERNAUT, approved, Some(old.clone()));
        assert_eq!(check(&r, &policy()), Check::Allow);
        // Other metadata is anyone's with RBAC on the object.
        let labelled = rr("shop", serde_json::json!({"team": "shop"}));
        let r = request("UPDATE", "alice", labelled, Some(old));
        assert_eq!(check(&r, &policy()), Check::Allow);
    }
}

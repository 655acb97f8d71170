//! The approval endpoint's work (K-AI-4): who the caller is (TokenReview),
//! whether RBAC lets them approve requests in the namespace (a
//! SubjectAccessReview for the verb `approve` on `remediationrequests`),
//! and the decision written as the request's approval annotations, which
//! the request's supervisor sees through its watch like any other.

use async_trait::async_trait;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kubernaut_api::{
    APPROVAL_ANNOTATION, APPROVED_BY_ANNOTATION, ApprovalDesk, ApprovalError, Phase,
    RemediationRequest, TokenReviewer,
};
use serde_json::json;

use crate::{Cluster, FIELD_MANAGER, KubeTokenReviewer, bounded};

pub struct KubeApprovals {
    cluster: Cluster,
    reviewer: KubeTokenReviewer,
}

impl KubeApprovals {
    pub fn new(cluster: Cluster, audiences: Vec<String>) -> Self {
        let reviewer = KubeTokenReviewer::new(cluster.clone(), audiences);
        Self { cluster, reviewer }
    }
}

impl Cluster {
    /// Whether RBAC lets `user` (in `groups`) approve request
    /// `namespace/name`: a SubjectAccessReview for the verb `approve` on
    /// `remediationrequests`. An error when the API server cannot say.
    pub async fn may_approve(
        &self,
        user: &str,
        groups: &[String],
        namespace: &str,
        name: &str,
    ) -> Result<bool, String> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.to_string()),
                groups: Some(groups.to_vec()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("kubernaut.io".into()),
                    resource: Some("remediationrequests".into()),
                    verb: Some("approve".into()),
                    namespace: Some(namespace.into()),
                    name: Some(name.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews: Api<SubjectAccessReview> = Api::all(self.client().clone());
        let answer = bounded(reviews.create(&PostParams::default(), &review))
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

#[async_trait]
impl ApprovalDesk for KubeApprovals {
    async fn decide(
        &self,
        token: &str,
        namespace: &str,
        name: &str,
        approved: bool,
    ) -> Result<String, ApprovalError> {
        let user = self
            .reviewer
            .review(token)
            .await
            .map_err(ApprovalError::Unavailable)?
            .ok_or(ApprovalError::Unauthenticated)?;
        self.record(&user.username, &user.groups, namespace, name, approved)
            .await
    }

    async fn decide_as(
        &self,
        user: &str,
        namespace: &str,
        name: &str,
        approved: bool,
    ) -> Result<String, ApprovalError> {
        self.record(user, &[], namespace, name, approved).await
    }
}

impl KubeApprovals {
    /// Asks RBAC whether `user` may approve, then writes the decision.
    async fn record(
        &self,
        user: &str,
        groups: &[String],
        namespace: &str,
        name: &str,
        approved: bool,
    ) -> Result<String, ApprovalError> {
        let allowed = self
            .cluster
            .may_approve(user, groups, namespace, name)
            .await
            .map_err(ApprovalError::Unavailable)?;
        if !allowed {
            return Err(ApprovalError::Forbidden(user.to_string()));
        }
        let api: Api<RemediationRequest> =
            Api::namespaced(self.cluster.client().clone(), namespace);
        let rr = bounded(api.get_opt(name))
            .await
            .map_err(|e| ApprovalError::Unavailable(e.to_string()))?
            .ok_or_else(|| ApprovalError::NotFound(format!("{namespace}/{name}")))?;
        if rr.phase() != Phase::AwaitingApproval {
            return Err(ApprovalError::NotAwaiting(rr.phase().to_string()));
        }
        // The resourceVersion makes the patch conditional: a request that
        // moved on meanwhile is not annotated after the fact.
        let patch = json!({"metadata": {
            "resourceVersion": rr.metadata.resource_version,
            "annotations": {
                APPROVAL_ANNOTATION: if approved { "approved" } else { "rejected" },
                APPROVED_BY_ANNOTATION: user,
            },
        }});
        bounded(api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&patch),
        ))
        .await
        .map_err(|e| {
            if e.is_conflict() {
                ApprovalError::NotAwaiting("changed meanwhile".into())
            } else {
                ApprovalError::Unavailable(e.to_string())
            }
        })?;
        Ok(user.to_string())
    }
}

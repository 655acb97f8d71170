//! Bearer-token review through the API server (TokenReview), for the
//! gateway's authentication (K-GW-7).

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use kubernaut_api::{ReviewedUser, TokenReviewer};

use crate::{Cluster, bounded};

/// Reviews tokens as the controller's identity, which needs `create` on
/// `tokenreviews` (deploy/base/rbac.yaml binds system:auth-delegator).
#[derive(Clone)]
pub struct KubeTokenReviewer {
    cluster: Cluster,
    audiences: Vec<String>,
}

impl KubeTokenReviewer {
    /// `audiences` empty: the API server's own audience.
    pub fn new(cluster: Cluster, audiences: Vec<String>) -> Self {
        Self { cluster, audiences }
    }
}

#[async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str) -> Result<Option<ReviewedUser>, String> {
        let api: Api<TokenReview> = Api::all(self.cluster.client().clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let answer = bounded(api.create(&PostParams::default(), &review))
            .await
            .map_err(|e| e.to_string())?;
        let Some(status) = answer.status else {
            return Err("the TokenReview came back without a status".into());
        };
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let user = status.user.unwrap_or_default();
        Ok(Some(ReviewedUser {
            username: user.username.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
        }))
    }
}

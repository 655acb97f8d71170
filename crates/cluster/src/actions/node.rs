//! Node actions: cordon_node and uncordon_node.

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kubernaut_api::ObjectRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ActionError, Change};
use crate::Cluster;

/// Parameters of the node actions.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeTarget {
    pub name: String,
}

pub(super) fn was_unschedulable(before: &Value) -> bool {
    before["spec"]["unschedulable"] == Value::Bool(true)
}

impl Cluster {
    pub(super) async fn set_unschedulable(
        &self,
        name: &str,
        unschedulable: bool,
        dry_run: bool,
    ) -> Result<Option<Change>, ActionError> {
        let api: Api<Node> = Api::all(self.client().clone());
        let object = ObjectRef::new("Node", "", name);
        self.update_object(&api, &object, dry_run, |n: &mut Node| {
            let spec = n.spec.get_or_insert_with(Default::default);
            let now = spec.unschedulable.unwrap_or(false);
            // Uncordoned is the absence of the field, as kubectl leaves it.
            spec.unschedulable = unschedulable.then_some(true);
            Ok(now != unschedulable)
        })
        .await
    }
}

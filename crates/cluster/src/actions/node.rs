//! Node actions: cordon_node and uncordon_node.

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kubernaut_api::ObjectRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use futures::future::BoxFuture;

use super::{
    Action, ActionCall, ActionError, Catalogued, Change, Kind, Ran, Risk, RunCx, WriteMode,
};
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
        writes: WriteMode,
    ) -> Result<Option<Change>, ActionError> {
        let api: Api<Node> = Api::all(self.client().clone());
        let object = ObjectRef::new("Node", "", name);
        self.update_object(&api, &object, writes, |n: &mut Node| {
            let spec = n.spec.get_or_insert_with(Default::default);
            let now = spec.unschedulable.unwrap_or(false);
            // Uncordoned is the absence of the field, as kubectl leaves it.
            spec.unschedulable = unschedulable.then_some(true);
            Ok(now != unschedulable)
        })
        .await
    }
}

/// cordon_node.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct CordonNode(pub NodeTarget);

/// uncordon_node.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct UncordonNode(pub NodeTarget);

impl Catalogued for CordonNode {
    const KIND: Kind = Kind::new::<Self>(
        "cordon_node",
        Risk::Medium,
        "Mark a Node unschedulable; its pods keep running.",
        &["Node"],
    )
    .reversible()
    .updates_target();
}

impl Catalogued for UncordonNode {
    const KIND: Kind = Kind::new::<Self>(
        "uncordon_node",
        Risk::Medium,
        "Mark a Node schedulable again.",
        &["Node"],
    )
    .reversible()
    .updates_target();
}

/// Sets `unschedulable`; each undoes the other, unless the node was
/// already as it left it.
macro_rules! schedulability {
    ($t:ident, $unschedulable:literal, $undo:ident) => {
        impl Action for $t {
            fn target(&self, _holder: &str) -> Option<ObjectRef> {
                Some(ObjectRef::new("Node", "", &self.0.name))
            }

            fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
                Box::pin(async move {
                    let change = cx
                        .cluster
                        .set_unschedulable(&self.0.name, $unschedulable, cx.write_mode())
                        .await?;
                    Ok(Ran::Changed(change))
                })
            }

            fn undo(&self, change: &Change) -> Option<ActionCall> {
                (was_unschedulable(&change.before) != $unschedulable)
                    .then(|| ActionCall::of($undo(self.0.clone())))
            }
        }
    };
}

schedulability!(CordonNode, true, UncordonNode);
schedulability!(UncordonNode, false, CordonNode);

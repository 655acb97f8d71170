//! notify_only: change nothing; the request's record carries the decision
//! for a human.

use futures::future::BoxFuture;
use kubernaut_api::ObjectRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Action, ActionError, Catalogued, Kind, Ran, Risk, RunCx};

/// Nothing is changed; the request's record carries the message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyOnly {
    #[serde(default)]
    pub message: String,
}

impl Catalogued for NotifyOnly {
    const KIND: Kind = Kind::new::<Self>(
        "notify_only",
        Risk::None,
        "Change nothing; record the decision for a human.",
        &[],
    )
    .read_only();
}

impl Action for NotifyOnly {
    fn target(&self, _holder: &str) -> Option<ObjectRef> {
        None
    }

    fn run<'a>(&'a self, _cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>> {
        Box::pin(async { Ok(Ran::Changed(None)) })
    }
}

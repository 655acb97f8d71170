//! One trait per action. An action is a parameter type that implements
//! [`Action`] (what it targets, its bounds, how it runs, how it is undone
//! and verified) and [`Catalogued`] (its [`Kind`]: name, risk, what it
//! acts on, whether it can be undone or repeated). [`ActionCall`] is one
//! parsed call of any of them; the catalogue (`super::KINDS`) lists every
//! kind, one line each.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use kubernaut_api::ObjectRef;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ActionError, Bounds, Change, ExecSettings, ReadAhead, Recorded, Risk, WriteMode};
use crate::Cluster;

/// What running an action needs: the cluster, the request's settings, the
/// target (already in scope and, for a writing action, locked), whether
/// only server-side dry runs may be made, and the target as read while its
/// lock was claimed, if it was.
pub struct RunCx<'a> {
    pub cluster: &'a Cluster,
    pub settings: &'a ExecSettings,
    pub target: &'a ObjectRef,
    pub dry_run: bool,
    pub(super) read_ahead: Option<ReadAhead>,
    pub(super) recorded: Option<Recorded>,
}

impl RunCx<'_> {
    /// How its read-modify-writes go ([`Cluster::update_object`]); the
    /// read ahead, and the record its write waits for, go with it.
    pub(super) fn write_mode(self) -> WriteMode {
        WriteMode {
            dry_run: self.dry_run,
            read_ahead: self.read_ahead,
            recorded: self.recorded,
        }
    }
}

/// What an action did.
pub enum Ran {
    /// One read-modify-write; `None` when the object was already as wanted.
    Changed(Option<Change>),
    /// Several changes, and what happened (a drain).
    Many(Vec<Change>, String),
    /// Nothing changed: what was read, and the message.
    Read(Value, String),
}

/// One action's behaviour; the parameters are the implementing type.
pub trait Action: Send + Sync + fmt::Debug + 'static {
    /// The object it changes or reads; `None` when it touches none.
    fn target(&self, holder: &str) -> Option<ObjectRef>;

    /// Bounds and parameter sanity, before anything is read.
    fn check(&self, bounds: &Bounds) -> Result<(), String> {
        let _ = bounds;
        Ok(())
    }

    /// Makes the change (or the read).
    fn run<'a>(&'a self, cx: RunCx<'a>) -> BoxFuture<'a, Result<Ran, ActionError>>;

    /// The call that undoes `change`, if this action can be undone.
    fn undo(&self, change: &Change) -> Option<ActionCall> {
        let _ = change;
        None
    }
}

/// How the Verifying stage sees that a run took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// A plain update the API server answered with the new object, or an
    /// action that waits for its effect itself (drain): at once.
    Answered,
    /// Every deleted object is gone (its controller's replacement has
    /// another UID).
    Gone,
    /// The workload's controller has observed the generation each change
    /// produced.
    Observed,
}

/// What the catalogue knows of an action.
#[derive(Clone, Copy)]
pub struct Kind {
    pub name: &'static str,
    pub risk: Risk,
    pub summary: &'static str,
    /// The kinds of object it acts on; empty when it acts on none
    /// (notify_only) or on one it creates (run_job). The analysis offers
    /// the LLM only actions on objects the request is about.
    pub acts_on: &'static [&'static str],
    /// Whether a failed workflow can undo it.
    pub reversible: bool,
    /// Whether it leaves the same state however often it runs, so that a
    /// step a restart interrupted may simply run again.
    pub repeatable: bool,
    /// Whether it changes anything: a writing action takes its target's
    /// lock and honours dry-run mode; a reading one does neither.
    pub writes: bool,
    /// Its target does not exist before it runs: the namespace's scope
    /// decides.
    pub creates: bool,
    /// Its change is a read-modify-write of its target
    /// ([`Cluster::update_object`]), so the target can be read while the
    /// step's intent is written ([`Cluster::claim_lock`]).
    pub updates_target: bool,
    /// How its effect is verified.
    pub verify: Verify,
    /// It can take something away: capacity (a scale, which may be a
    /// decrease; a drain), an object (a deletion) or a pod from service.
    /// The default approval policy never lets the LLM's confidence alone
    /// waive approval for such an action.
    pub destructive: bool,
    schema: fn() -> Value,
    parse: fn(Value) -> Parsed,
}

/// A parsed call: the action, and its parameters with defaults filled in.
type Parsed = Result<(Arc<dyn Action>, Value), serde_json::Error>;

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl Kind {
    /// A writing, repeatable action that cannot be undone; the builder
    /// methods below say otherwise.
    pub const fn new<A: Catalogued>(
        name: &'static str,
        risk: Risk,
        summary: &'static str,
        acts_on: &'static [&'static str],
    ) -> Kind {
        Kind {
            name,
            risk,
            summary,
            acts_on,
            reversible: false,
            repeatable: true,
            writes: true,
            creates: false,
            updates_target: false,
            verify: Verify::Answered,
            destructive: false,
            schema: schema_of::<A>,
            parse: parse_as::<A>,
        }
    }

    pub const fn reversible(self) -> Kind {
        Kind {
            reversible: true,
            ..self
        }
    }

    /// Running it twice does more than running it once (a deletion, a
    /// rollout).
    pub const fn not_repeatable(self) -> Kind {
        Kind {
            repeatable: false,
            ..self
        }
    }

    pub const fn read_only(self) -> Kind {
        Kind {
            writes: false,
            ..self
        }
    }

    pub const fn verified(self, verify: Verify) -> Kind {
        Kind { verify, ..self }
    }

    pub const fn destructive(self) -> Kind {
        Kind {
            destructive: true,
            ..self
        }
    }

    pub const fn creates(self) -> Kind {
        Kind {
            creates: true,
            ..self
        }
    }

    pub const fn updates_target(self) -> Kind {
        Kind {
            updates_target: true,
            ..self
        }
    }

    /// JSON Schema of the parameters.
    pub fn schema(&self) -> Value {
        (self.schema)()
    }
}

/// An action with its place in the catalogue.
pub trait Catalogued: Action + Serialize + DeserializeOwned + JsonSchema + Sized {
    const KIND: Kind;
}

/// The parameters' JSON Schema with the parameter object at its root: a
/// newtype over shared parameters (`ScaleDeployment(Scale)`) would
/// otherwise publish a bare `$ref`.
fn schema_of<A: JsonSchema>() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(A)).unwrap_or(Value::Null);
    let target = schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .map(str::to_string);
    if let Some(name) = target
        && let Some(Value::Object(def)) = schema["$defs"].get(&name).cloned()
        && let Value::Object(root) = &mut schema
    {
        root.remove("$ref");
        if let Some(Value::Object(defs)) = root.get_mut("$defs") {
            defs.remove(&name);
            if defs.is_empty() {
                root.remove("$defs");
            }
        }
        for (k, v) in def {
            root.insert(k, v);
        }
    }
    schema
}

fn parse_as<A: Catalogued>(v: Value) -> Parsed {
    let a: A = serde_json::from_value(v)?;
    let parameters = serde_json::to_value(&a)?;
    Ok((Arc::new(a), parameters))
}

/// One call of an action with its parameters. Parsed from the analysis' or
/// workflow's `{ "action": name, "parameters": {...} }`; unknown actions
/// and unknown or missing parameters are errors.
#[derive(Clone)]
pub struct ActionCall {
    kind: Kind,
    /// As parsed (defaults filled in), for the record and for equality.
    parameters: Value,
    action: Arc<dyn Action>,
}

impl ActionCall {
    /// Parses `{"action": name, "parameters": {...}}` parts; absent
    /// parameters (`null`) are an empty object.
    pub fn parse(action: &str, parameters: Value) -> Result<Self, String> {
        let parameters = match parameters {
            Value::Null => Value::Object(Default::default()),
            p => p,
        };
        let Some(kind) = super::kind(action) else {
            let known: Vec<&str> = super::KINDS.iter().map(|k| k.name).collect();
            return Err(format!(
                "action {action}: unknown variant `{action}`, expected one of {}",
                known.join(", ")
            ));
        };
        let (action_impl, parameters) =
            (kind.parse)(parameters).map_err(|e| format!("action {action}: {e}"))?;
        Ok(Self {
            kind: *kind,
            parameters,
            action: action_impl,
        })
    }

    /// A call of `a` (an undo, built by an action).
    pub fn of<A: Catalogued>(a: A) -> Self {
        Self {
            kind: A::KIND,
            parameters: serde_json::to_value(&a).unwrap_or(Value::Null),
            action: Arc::new(a),
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind.name
    }

    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    pub fn parameters(&self) -> &Value {
        &self.parameters
    }

    pub fn action(&self) -> &dyn Action {
        self.action.as_ref()
    }

    /// The object the call changes or reads (`holder` names a run_job's Job).
    pub fn target_of(&self, holder: &str) -> Option<ObjectRef> {
        self.action.target(holder)
    }

    /// Bounds and parameter sanity, before anything is read.
    pub fn check(&self, bounds: &Bounds) -> Result<(), ActionError> {
        self.action.check(bounds).map_err(ActionError::Refused)
    }

    /// The call that undoes `change` made by this one, if it can be undone.
    pub fn rollback(&self, change: &Change) -> Option<ActionCall> {
        self.action.undo(change)
    }
}

impl fmt::Debug for ActionCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.kind.name, self.parameters)
    }
}

impl PartialEq for ActionCall {
    fn eq(&self, other: &Self) -> bool {
        self.kind.name == other.kind.name && self.parameters == other.parameters
    }
}

impl Serialize for ActionCall {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({ "action": self.kind.name, "parameters": self.parameters }).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ActionCall {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            action: String,
            #[serde(default)]
            parameters: Value,
        }
        let raw = Raw::deserialize(d)?;
        ActionCall::parse(&raw.action, raw.parameters).map_err(serde::de::Error::custom)
    }
}

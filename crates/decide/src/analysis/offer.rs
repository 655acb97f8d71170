//! The actions offered to the LLM, their parameter schemas narrowed to the
//! request's own objects and the executor's bounds, and the output schema
//! built from them.

use std::collections::BTreeSet;

use kubernaut_api::ObjectRef;
use kubernaut_cluster::{ActionInfo, Bounds, catalogue};
use serde_json::{Map, Value, json};

use super::{CONFIDENCES, FREE_TEXT};

/// An action the LLM may choose, with its parameter schema narrowed to the
/// request's objects.
#[derive(Clone, Debug)]
pub struct Offered {
    pub info: ActionInfo,
    pub schema: Value,
}

pub fn offer(objects: &[ObjectRef], containers: &[String], bounds: &Bounds) -> Vec<Offered> {
    catalogue()
        .iter()
        .filter_map(|info| {
            let schema = narrowed(info, objects, containers, bounds)?;
            Some(Offered {
                info: info.clone(),
                schema,
            })
        })
        .collect()
}

/// The action's parameter schema with `$ref`s inlined, annotations
/// dropped, object-naming fields (`kind`, `namespace`, `name`,
/// `container`) reduced to the request's values, numbers to enums within
/// the bounds (llama.cpp does not enforce `minimum`/`maximum`) and free
/// text patterned; `None` when the action acts on none of the request's
/// objects.
pub fn narrowed(
    info: &ActionInfo,
    objects: &[ObjectRef],
    containers: &[String],
    bounds: &Bounds,
) -> Option<Value> {
    let defs = info.parameters.get("$defs").cloned().unwrap_or(Value::Null);
    let mut schema = inline(&info.parameters, &defs);
    let targets: Vec<&ObjectRef> = objects
        .iter()
        .filter(|o| info.acts_on.contains(&o.kind.as_str()))
        .collect();
    if targets.is_empty() && info.name != "notify_only" {
        return None;
    }
    let kinds: BTreeSet<&str> = targets.iter().map(|o| o.kind.as_str()).collect();
    let namespaces: BTreeSet<&str> = targets.iter().map(|o| o.namespace.as_str()).collect();
    let names: BTreeSet<&str> = targets.iter().map(|o| o.name.as_str()).collect();
    let props = schema
        .get_mut("properties")
        .and_then(Value::as_object_mut)?;
    for (key, prop) in props.iter_mut() {
        let pinned: Option<Vec<&str>> = match key.as_str() {
            "kind" => Some(kinds.iter().copied().collect()),
            "namespace" => Some(namespaces.iter().copied().collect()),
            "name" => Some(names.iter().copied().collect()),
            "container" if !containers.is_empty() => {
                Some(containers.iter().map(String::as_str).collect())
            }
            _ => None,
        };
        match pinned {
            Some(values) => {
                let allowed: Vec<&str> = match prop.get("enum").and_then(Value::as_array) {
                    Some(own) => values
                        .into_iter()
                        .filter(|v| own.iter().any(|o| o == v))
                        .collect(),
                    None => values,
                };
                if allowed.is_empty() {
                    return None;
                }
                *prop = json!({"type": "string", "enum": allowed});
            }
            None if prop["type"] == "string" && prop.get("enum").is_none() => {
                prop["pattern"] = json!(FREE_TEXT);
            }
            None if key.to_ascii_lowercase().contains("replicas") => {
                let n: Vec<i32> = (0..=bounds.max_replicas.clamp(0, 100)).collect();
                *prop = json!({"enum": n});
            }
            None if key == "factor" => {
                let f: Vec<f64> = [1.1, 1.25, 1.5, 2.0, 3.0]
                    .into_iter()
                    .filter(|f| *f <= bounds.max_increase_factor)
                    .collect();
                *prop = json!({"enum": f});
            }
            None => {}
        }
    }
    Some(schema)
}

/// `schema` with local `$ref`s replaced by their definitions and the
/// keywords grammar builders do not need (`$schema`, `$defs`, `title`,
/// `description`, `format`) removed.
pub fn inline(schema: &Value, defs: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            if let Some(name) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
            {
                return inline(&defs[name], defs);
            }
            let out: Map<String, Value> = map
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "$schema" | "$defs" | "title" | "description" | "format"
                    )
                })
                .map(|(k, v)| (k.clone(), inline(v, defs)))
                .collect();
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| inline(v, defs)).collect()),
        other => other.clone(),
    }
}

/// The answer's schema: a diagnosis and 1 to `max_actions` of the offered
/// actions, each with its own parameters.
pub fn output_schema(offered: &[Offered], max_actions: usize) -> Value {
    let choices: Vec<Value> = offered
        .iter()
        .map(|o| {
            json!({
                "type": "object",
                "properties": {"action": {"const": o.info.name}, "parameters": o.schema},
                "required": ["action", "parameters"],
                "additionalProperties": false,
            })
        })
        .collect();
    json!({
        "type": "object",
        "properties": {
            "rootCause": {"type": "string", "pattern": FREE_TEXT},
            "confidence": {"enum": CONFIDENCES},
            "rationale": {"type": "string", "pattern": FREE_TEXT},
            "actions": {"type": "array", "items": {"anyOf": choices}, "minItems": 1, "maxItems": max_actions.max(1)},
        },
        "required": ["rootCause", "confidence", "rationale", "actions"],
        "additionalProperties": false,
    })
}

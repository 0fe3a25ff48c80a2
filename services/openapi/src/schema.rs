//! Schemas made self-contained: local `$ref`s inlined (a reference back into a
//! schema being inlined is cut to "any value" with a note), remote references
//! never fetched, depth and size bounded, OpenAPI 3.0's dialect (`nullable`,
//! boolean `exclusiveMinimum`) rewritten as JSON Schema, `oneOf` read as `anyOf`,
//! and what only documents (`example`, `xml`, `discriminator`, `x-…`) dropped.

use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};

use crate::Version;

/// Deepest nesting of schemas kept; deeper ones become "any value".
pub const MAX_DEPTH: usize = 12;
/// Schema nodes one argument or output schema may copy; the rest become "any value".
pub const NODE_BUDGET: usize = 6_000;
/// Longest description kept inside a schema, in bytes.
pub const SCHEMA_DESCRIPTION_MAX: usize = 400;
/// Longest chain of `$ref` to `$ref` followed for parameters, bodies, responses.
const REF_HOPS: usize = 16;

/// The document the references point into.
pub struct Schemas<'d> {
    pub document: &'d Value,
    pub version: Version,
}

/// What an inlining met that the report should say.
#[derive(Default)]
pub struct Notes {
    pub cut_cycles: bool,
    pub remote: Vec<String>,
    pub too_deep: bool,
    pub budget_exhausted: bool,
    pub unresolved: Vec<String>,
}

impl Notes {
    pub fn into_messages(self, what: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.cut_cycles {
            out.push(format!(
                "{what}: recursive schema cut (the repeated part accepts any value)"
            ));
        }
        if !self.remote.is_empty() {
            out.push(format!(
                "{what}: remote references not fetched (accept any value): {}",
                self.remote.join(", ")
            ));
        }
        if !self.unresolved.is_empty() {
            out.push(format!(
                "{what}: references that name nothing in the document (accept any value): {}",
                self.unresolved.join(", ")
            ));
        }
        if self.too_deep {
            out.push(format!(
                "{what}: schemas nested deeper than {MAX_DEPTH} levels accept any value"
            ));
        }
        if self.budget_exhausted {
            out.push(format!(
                "{what}: schema larger than {NODE_BUDGET} nodes; the rest accepts any value"
            ));
        }
        out
    }
}

/// Cuts `text` to at most `max` bytes at a character boundary, marking the cut.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    format!("{}…", text.get(..end).unwrap_or_default())
}

/// The broad kind of values a schema accepts, as far as its own keywords say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    Scalar,
    Unknown,
}

pub fn kind(schema: &Value) -> Kind {
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
        _ => Vec::new(),
    };
    match types.as_slice() {
        ["object"] => Kind::Object,
        ["array"] => Kind::Array,
        [] if schema.get("properties").is_some() => Kind::Object,
        [] if schema.get("items").is_some() => Kind::Array,
        [] => Kind::Unknown,
        many if many.iter().all(|t| !matches!(*t, "object" | "array")) => Kind::Scalar,
        _ => Kind::Unknown,
    }
}

impl<'d> Schemas<'d> {
    /// What a local reference (`#/components/…`) points to.
    pub fn pointer(&self, reference: &str) -> Option<&'d Value> {
        let fragment = reference.strip_prefix('#')?;
        let decoded = percent_decode_str(fragment).decode_utf8().ok()?;
        self.document.pointer(&decoded)
    }

    /// A parameter, request body, response or path item with its `$ref` chain
    /// followed (local references only).
    pub fn follow(&self, value: &'d Value) -> Result<&'d Value, String> {
        let mut current = value;
        for _ in 0..REF_HOPS {
            let Some(reference) = current.get("$ref").and_then(Value::as_str) else {
                return Ok(current);
            };
            if !reference.starts_with('#') {
                return Err(format!("remote reference `{reference}` is not fetched"));
            }
            current = self
                .pointer(reference)
                .ok_or_else(|| format!("reference `{reference}` names nothing in the document"))?;
        }
        Err(format!("more than {REF_HOPS} references in a row"))
    }

    /// `schema` self-contained (see the module documentation).
    pub fn inline(&self, schema: &Value, notes: &mut Notes) -> Value {
        let mut budget = NODE_BUDGET;
        let mut stack = Vec::new();
        self.walk(schema, &mut stack, 0, &mut budget, notes)
    }

    fn walk(
        &self,
        schema: &Value,
        stack: &mut Vec<String>,
        depth: usize,
        budget: &mut usize,
        notes: &mut Notes,
    ) -> Value {
        let Value::Object(map) = schema else {
            // `true`/`false` schemas stay; anything else is invalid and reported by
            // the schema compiler that checks every tool.
            return schema.clone();
        };
        if *budget == 0 {
            notes.budget_exhausted = true;
            return json!({});
        }
        *budget = budget.saturating_sub(1);
        if depth >= MAX_DEPTH {
            notes.too_deep = true;
            return json!({});
        }
        let next = depth.saturating_add(1);
        if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
            let target = if !reference.starts_with('#') {
                if !notes.remote.iter().any(|r| r == reference) && notes.remote.len() < 5 {
                    notes.remote.push(reference.to_string());
                }
                json!({})
            } else if stack.iter().any(|r| r == reference) {
                notes.cut_cycles = true;
                json!({"description": format!("(recursive: {} again, any value)", short_name(reference))})
            } else if let Some(found) = self.pointer(reference) {
                stack.push(reference.to_string());
                let inlined = self.walk(found, stack, next, budget, notes);
                stack.pop();
                inlined
            } else {
                if notes.unresolved.len() < 5 {
                    notes.unresolved.push(reference.to_string());
                }
                json!({})
            };
            // Keywords beside a `$ref` (3.1; also common in 3.0 documents): the
            // annotations override the target's, the rest must hold as well.
            let siblings: Map<String, Value> = map
                .iter()
                .filter(|(k, _)| *k != "$ref")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if siblings.is_empty() {
                return target;
            }
            // 3.0 ignores a `$ref`'s siblings, but documents write `nullable` there and mean it.
            if self.version == Version::V30 && map.get("nullable") == Some(&Value::Bool(true)) {
                return json!({"anyOf": [target, {"type": "null"}]});
            }
            let extra = self.walk(&Value::Object(siblings), stack, next, budget, notes);
            return merge_siblings(target, extra);
        }
        let mut out = Map::new();
        for (key, value) in map {
            let kept = match key.as_str() {
                "properties" | "patternProperties" | "dependentSchemas" => match value {
                    Value::Object(members) => Value::Object(
                        members
                            .iter()
                            .map(|(name, s)| (name.clone(), self.walk(s, stack, next, budget, notes)))
                            .collect(),
                    ),
                    other => other.clone(),
                },
                "items"
                | "additionalProperties"
                | "not"
                | "if"
                | "then"
                | "else"
                | "contains"
                | "propertyNames"
                | "additionalItems"
                | "unevaluatedItems"
                | "unevaluatedProperties" => match value {
                    Value::Array(list) => {
                        Value::Array(list.iter().map(|s| self.walk(s, stack, next, budget, notes)).collect())
                    }
                    other => self.walk(other, stack, next, budget, notes),
                },
                "allOf" | "anyOf" | "oneOf" | "prefixItems" => match value {
                    Value::Array(list) => {
                        Value::Array(list.iter().map(|s| self.walk(s, stack, next, budget, notes)).collect())
                    }
                    other => other.clone(),
                },
                "description" => match value {
                    Value::String(text) => Value::String(bounded(text, SCHEMA_DESCRIPTION_MAX)),
                    other => other.clone(),
                },
                // Documentation only, or meaningless once inlined.
                "example" | "examples" | "xml" | "externalDocs" | "discriminator" | "$defs" | "definitions"
                | "$schema" | "$id" | "$anchor" | "$dynamicAnchor" | "$comment" => continue,
                "nullable" if self.version == Version::V30 => continue,
                "exclusiveMinimum" | "exclusiveMaximum" if value.is_boolean() => continue,
                k if k.starts_with("x-") => continue,
                _ => value.clone(),
            };
            // OpenAPI documents use `oneOf` for "one of these shapes" with overlapping
            // alternatives (no discriminator), which JSON Schema's "exactly one" would
            // refuse: `anyOf` accepts what the document means.
            let key = if key == "oneOf" && !map.contains_key("anyOf") {
                "anyOf".to_string()
            } else {
                key.clone()
            };
            out.insert(key, kept);
        }
        if self.version == Version::V30 {
            rewrite_30(map, &mut out);
            // `nullable` without a `type` (beside `allOf`, `oneOf`…): null as an alternative.
            if map.get("nullable") == Some(&Value::Bool(true)) && !out.contains_key("type") && !out.contains_key("enum")
            {
                return json!({"anyOf": [Value::Object(out), {"type": "null"}]});
            }
        }
        Value::Object(out)
    }
}

/// OpenAPI 3.0's departures from JSON Schema: `nullable: true` and boolean
/// `exclusiveMinimum`/`exclusiveMaximum` (draft 4) become their 2020-12 forms.
fn rewrite_30(source: &Map<String, Value>, out: &mut Map<String, Value>) {
    if source.get("nullable") == Some(&Value::Bool(true)) {
        match out.get("type").cloned() {
            Some(Value::String(t)) => {
                out.insert("type".into(), json!([t, "null"]));
            }
            Some(Value::Array(mut ts)) if !ts.contains(&json!("null")) => {
                ts.push(json!("null"));
                out.insert("type".into(), Value::Array(ts));
            }
            _ => {}
        }
        if let Some(Value::Array(values)) = out.get_mut("enum")
            && !values.contains(&Value::Null)
        {
            values.push(Value::Null);
        }
    }
    for (flag, bound) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")] {
        if source.get(flag) == Some(&Value::Bool(true))
            && let Some(limit) = out.remove(bound)
        {
            out.insert(flag.into(), limit);
        }
    }
}

fn merge_siblings(target: Value, extra: Value) -> Value {
    let (Value::Object(mut base), Value::Object(extra)) = (target, extra) else {
        return json!({});
    };
    let mut constraints = Map::new();
    for (key, value) in extra {
        if matches!(
            key.as_str(),
            "description" | "title" | "default" | "deprecated" | "readOnly" | "writeOnly"
        ) {
            base.insert(key, value);
        } else {
            constraints.insert(key, value);
        }
    }
    if constraints.is_empty() {
        Value::Object(base)
    } else {
        json!({"allOf": [Value::Object(base), Value::Object(constraints)]})
    }
}

fn short_name(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

/// An object schema's properties and required names, `allOf` members merged;
/// `None` when the schema is not a plain object with properties (a `oneOf`, an
/// array, a free-form map), which then travels as one argument.
pub fn object_members(schema: &Value) -> Option<(Map<String, Value>, Vec<String>)> {
    if schema.get("oneOf").is_some() || schema.get("anyOf").is_some() || schema.get("not").is_some() {
        return None;
    }
    let mut properties = Map::new();
    let mut required = Vec::new();
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        for part in parts {
            let (props, req) = object_members(part)?;
            properties.extend(props);
            required.extend(req);
        }
    } else if kind(schema) != Kind::Object {
        return None;
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        properties.extend(props.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        required.extend(req.iter().filter_map(Value::as_str).map(str::to_string));
    }
    if properties.is_empty() {
        return None;
    }
    required.sort();
    required.dedup();
    Some((properties, required))
}

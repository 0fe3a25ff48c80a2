//! Request templates: `{name}` placeholders filled from the model's arguments and
//! reserved variables (`project.id`, `integration.id`, `run.id`).
//!
//! Substitution is typed: in a JSON body a string that is exactly one placeholder
//! becomes the argument's JSON value (arrays, objects, numbers, booleans and null
//! stay typed); inside longer strings values are interpolated as text and escaped
//! for their context (percent-encoded in the path, form-encoded in the query,
//! refused in headers if they would carry CR, LF or NUL).
//!
//! Hand-written rather than a template engine: the placeholder grammar is tiny and
//! the typed substitution and per-context escaping are the whole point.

use std::collections::{BTreeMap, BTreeSet};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

/// Everything but RFC 3986 unreserved characters is encoded in a path value, so an
/// argument can never add a `/`, `?` or `#` and change where the request goes.
const PATH_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Prefixes of the reserved variables; arguments never shadow them.
pub const RESERVED_PREFIXES: &[&str] = &["project.", "integration.", "run.", "member."];
/// Every reserved variable a template may use.
pub const RESERVED_VARIABLES: &[&str] = &[
    "project.id",
    "integration.id",
    "run.id",
    "member.id",
    "member.email",
    "member.roles",
];

/// The reserved variables of one run. `member.*` exist only in member sessions, so
/// a template that needs them fails (clearly) for an API-key caller.
pub fn reserved_variables(caller: &crate::envelope::Caller, run_id: uuid::Uuid) -> BTreeMap<&'static str, Value> {
    let mut vars = BTreeMap::from([
        ("project.id", Value::String(caller.project_id.to_string())),
        ("integration.id", Value::String(caller.integration_id.to_string())),
        ("run.id", Value::String(run_id.to_string())),
    ]);
    if let Some(member) = &caller.member {
        vars.insert("member.id", Value::String(member.id.clone()));
        vars.insert("member.email", member.email.clone().map_or(Value::Null, Value::String));
        vars.insert(
            "member.roles",
            Value::Array(member.roles.iter().cloned().map(Value::String).collect()),
        );
    }
    vars
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("argument `{0}` is required by the tool's {1} template but was not given")]
    Missing(String, &'static str),
    #[error("argument `{name}` cannot be used in the {context}: {reason}")]
    BadValue {
        name: String,
        context: &'static str,
        reason: String,
    },
    #[error("the rendered URL is invalid: {0}")]
    Url(String),
}

/// Values a template may reference.
pub struct Context<'a> {
    pub arguments: &'a Map<String, Value>,
    pub reserved: BTreeMap<&'static str, Value>,
}

impl<'a> Context<'a> {
    pub fn lookup(&self, name: &str) -> Option<&Value> {
        if RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            self.reserved.get(name)
        } else {
            self.arguments.get(name)
        }
    }
}

/// A placeholder inside a template string: byte range of `{name}` and the name.
#[derive(Debug, PartialEq, Eq)]
pub struct Placeholder<'t> {
    pub start: usize,
    pub end: usize,
    pub name: &'t str,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Finds `{name}` placeholders; braces around anything else are literal text.
pub fn placeholders(template: &str) -> Vec<Placeholder<'_>> {
    let mut found = Vec::new();
    let bytes = template.as_bytes();
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        // `{` is one byte, so `i + 1` is a character boundary within the string.
        let inner = i.saturating_add(1);
        if byte == b'{'
            && let Some(rest) = template.get(inner..)
            && let Some(len) = rest.find('}')
            && len > 0
            && let Some(name) = rest.get(..len)
            && name.chars().all(is_name_char)
        {
            let end = inner.saturating_add(len).saturating_add(1);
            found.push(Placeholder { start: i, end, name });
            i = end;
            continue;
        }
        i = inner;
    }
    found
}

/// The name when the whole template is a single placeholder.
fn whole_placeholder(template: &str) -> Option<&str> {
    let found = placeholders(template);
    match found.as_slice() {
        [p] if p.start == 0 && p.end == template.len() => Some(p.name),
        _ => None,
    }
}

/// Every placeholder name used anywhere in a JSON template.
pub fn json_placeholders(template: &Value, out: &mut BTreeSet<String>) {
    match template {
        Value::String(s) => out.extend(placeholders(s).into_iter().map(|p| p.name.to_string())),
        Value::Array(items) => items.iter().for_each(|v| json_placeholders(v, out)),
        Value::Object(map) => map.values().for_each(|v| json_placeholders(v, out)),
        _ => {}
    }
}

/// The text form of a value inside a longer string.
pub fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn interpolate(
    template: &str,
    ctx: &Context<'_>,
    context: &'static str,
    mut encode: impl FnMut(&str, &str) -> Result<String, TemplateError>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut last = 0;
    for p in placeholders(template) {
        out.push_str(&template[last..p.start]);
        let value = ctx
            .lookup(p.name)
            .ok_or_else(|| TemplateError::Missing(p.name.to_string(), context))?;
        out.push_str(&encode(p.name, &text_of(value))?);
        last = p.end;
    }
    out.push_str(&template[last..]);
    Ok(out)
}

/// Renders the endpoint path; returns it and the argument names it used.
pub fn render_path(template: &str, ctx: &Context<'_>) -> Result<(String, BTreeSet<String>), TemplateError> {
    let mut used = BTreeSet::new();
    let path = interpolate(template, ctx, "path", |name, text| {
        used.insert(name.to_string());
        if text.is_empty() || text == "." || text == ".." {
            return Err(TemplateError::BadValue {
                name: name.to_string(),
                context: "path",
                reason: "a path value must not be empty, `.` or `..`".into(),
            });
        }
        Ok(utf8_percent_encode(text, PATH_VALUE).to_string())
    })?;
    Ok((path, used))
}

/// Renders a header value. A header whose template is one absent placeholder is omitted.
pub fn render_header(template: &str, ctx: &Context<'_>) -> Result<Option<String>, TemplateError> {
    if let Some(name) = whole_placeholder(template)
        && matches!(ctx.lookup(name), None | Some(Value::Null))
    {
        return Ok(None);
    }
    let value = interpolate(template, ctx, "header", |name, text| {
        if text.chars().any(|c| c == '\r' || c == '\n' || c == '\0') || http::HeaderValue::from_str(text).is_err() {
            return Err(TemplateError::BadValue {
                name: name.to_string(),
                context: "header",
                reason: "header values must not contain CR, LF, NUL or other control characters".into(),
            });
        }
        Ok(text.to_string())
    })?;
    Ok(Some(value))
}

/// Renders a query parameter: an array placeholder repeats the parameter; an absent
/// or null one omits it.
pub fn render_query(template: &str, ctx: &Context<'_>) -> Result<Vec<String>, TemplateError> {
    if let Some(name) = whole_placeholder(template) {
        return Ok(match ctx.lookup(name) {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(items)) => items.iter().map(text_of).collect(),
            Some(value) => vec![text_of(value)],
        });
    }
    Ok(vec![interpolate(template, ctx, "query", |_, text| {
        Ok(text.to_string())
    })?])
}

/// Renders a JSON body template with typed substitution. An object member whose
/// value is one absent placeholder is left out.
pub fn render_json(template: &Value, ctx: &Context<'_>) -> Result<Value, TemplateError> {
    Ok(match template {
        Value::String(s) => match whole_placeholder(s) {
            Some(name) => ctx
                .lookup(name)
                .cloned()
                .ok_or_else(|| TemplateError::Missing(name.to_string(), "body"))?,
            None => Value::String(interpolate(s, ctx, "body", |_, text| Ok(text.to_string()))?),
        },
        Value::Array(items) => Value::Array(items.iter().map(|v| render_json(v, ctx)).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, value) in map {
                if let Value::String(s) = value
                    && let Some(name) = whole_placeholder(s)
                    && ctx.lookup(name).is_none()
                {
                    continue;
                }
                out.insert(key.clone(), render_json(value, ctx)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(args: &Map<String, Value>) -> Context<'_> {
        let mut reserved = BTreeMap::new();
        reserved.insert("run.id", json!("r-1"));
        Context {
            arguments: args,
            reserved,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn finds_placeholders_and_ignores_other_braces() {
        let found = placeholders("a{b}c{ not one }{d.e}{\"x\":1}");
        let names: Vec<_> = found.iter().map(|p| p.name).collect();
        assert_eq!(names, vec!["b", "d.e"]);
    }

    #[test]
    fn path_values_are_percent_encoded_and_cannot_traverse() {
        let args = obj(json!({"id": "a/b?c#d e"}));
        let (path, used) = render_path("/items/{id}", &ctx(&args)).expect("renders");
        assert_eq!(path, "/items/a%2Fb%3Fc%23d%20e");
        assert!(used.contains("id"));
        let args = obj(json!({"id": ".."}));
        assert!(matches!(
            render_path("/items/{id}", &ctx(&args)),
            Err(TemplateError::BadValue { .. })
        ));
    }

    #[test]
    fn json_keeps_types_and_interpolates_strings() {
        let args = obj(json!({"tags": ["a", 1], "n": 2.5, "flag": false, "obj": {"k": null}, "name": "x"}));
        let out = render_json(
            &json!({"tags": "{tags}", "n": "{n}", "f": "{flag}", "o": "{obj}", "greeting": "hi {name} ({run.id})", "missing": "{nope}"}),
            &ctx(&args),
        )
        .expect("renders");
        assert_eq!(
            out,
            json!({"tags": ["a", 1], "n": 2.5, "f": false, "o": {"k": null}, "greeting": "hi x (r-1)"})
        );
    }

    #[test]
    fn headers_refuse_injection() {
        let args = obj(json!({"v": "ok\r\nX-Evil: 1"}));
        assert!(render_header("Bearer {v}", &ctx(&args)).is_err());
        let args = obj(json!({"v": "fine"}));
        assert_eq!(render_header("t-{v}", &ctx(&args)).expect("ok"), Some("t-fine".into()));
        assert_eq!(render_header("{absent}", &ctx(&args)).expect("ok"), None);
    }

    #[test]
    fn query_arrays_repeat() {
        let args = obj(json!({"ids": [1, 2]}));
        assert_eq!(render_query("{ids}", &ctx(&args)).expect("ok"), vec!["1", "2"]);
    }

    #[test]
    fn reserved_names_are_not_taken_from_arguments() {
        let args = obj(json!({"run.id": "forged"}));
        assert_eq!(render_json(&json!("{run.id}"), &ctx(&args)).expect("ok"), json!("r-1"));
    }
}

//! One plan per operation: the tool spec that makes exactly the request the
//! operation describes, or why it cannot be one.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tengine_core::domain::{
    AuthStrategy, HttpMethod, ResponseMode, SCHEMA_MAX_BYTES, ToolAnnotations, ToolSpec, validate_header_name,
};

use crate::{
    DocumentError,
    names::{NAME_MAX, normalize_name, unique_name},
    schema::{self, Kind, Notes, Schemas, bounded},
    servers,
};

/// Longest tool description an import writes (summary and description), in bytes.
pub const DESCRIPTION_LIMIT: usize = 2048;
/// Longest argument description, in bytes.
const ARGUMENT_DESCRIPTION_MAX: usize = 600;
const TITLE_MAX: usize = 256;
/// The methods of a path item, in the order they are planned.
const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];
/// Headers the OpenAPI specification says a parameter cannot describe.
const IGNORED_HEADERS: &[&str] = &["accept", "content-type", "authorization"];

/// What to import and how.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only operations with one of these tags (all when empty).
    pub tags: Vec<String>,
    /// Only operations whose path starts with this.
    pub path_prefix: Option<String>,
    /// Only these methods (case-insensitive; all when empty).
    pub methods: Vec<String>,
    /// Only these operationIds (all when empty).
    pub operation_ids: Vec<String>,
    /// Put before every tool name.
    pub name_prefix: Option<String>,
    /// Overrides the document's `servers`.
    pub base_url: Option<String>,
    /// Whether `http://` servers are acceptable (the deployment's `allow_insecure_upstreams`).
    pub allow_insecure: bool,
}

/// The whole document's plan.
#[derive(Debug)]
pub struct Plan {
    pub openapi: String,
    pub title: String,
    pub api_version: String,
    /// Every server the document lists (the first is used unless `base_url` is given).
    pub servers: Vec<String>,
    /// The operations the filters kept, in document order (paths sorted).
    pub operations: Vec<Operation>,
    /// Operations the filters left out.
    pub filtered_out: usize,
}

#[derive(Debug)]
pub struct Operation {
    /// Upper case, as in HTTP.
    pub method: String,
    pub path: String,
    pub operation_id: Option<String>,
    pub tags: Vec<String>,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    Tool(Box<PlannedTool>),
    Skipped(String),
}

#[derive(Debug)]
pub struct PlannedTool {
    /// Created disabled, without auth (secrets are entered separately).
    pub spec: ToolSpec,
    pub source: Source,
    /// The authentication the document asks for, as a suggestion.
    pub suggested_auth: Option<SuggestedAuth>,
    /// What was approximated or left out.
    pub notes: Vec<String>,
}

/// Where a tool came from, stored with it: re-imports find it by `api` and `key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// Always `openapi`.
    pub kind: String,
    /// The document's `info.title`.
    pub api: String,
    /// `METHOD /path` as in the document.
    pub key: String,
    pub operation_id: Option<String>,
    pub tags: Vec<String>,
    /// Argument → where it goes in the request.
    pub arguments: BTreeMap<String, Location>,
}

/// Where an argument goes: `path`, `query`, `header` or `body`, under `name`
/// (a body property, or `""` for the whole body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    #[serde(rename = "in")]
    pub location: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SuggestedAuth {
    pub strategy: AuthStrategy,
    /// The security scheme's name in the document.
    pub scheme: String,
    pub note: String,
}

/// Plans every operation of `document` that `options` select.
pub fn plan(document: &Value, options: &Options) -> Result<Plan, DocumentError> {
    let version = crate::version(document)?;
    let schemas = Schemas { document, version };
    let info = document.get("info");
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    let title = text(info.and_then(|i| i.get("title")));
    let mut plan = Plan {
        openapi: text(document.get("openapi")),
        title: if title.is_empty() { "untitled".into() } else { title },
        api_version: text(info.and_then(|i| i.get("version"))),
        servers: servers::listed(document.get("servers")),
        operations: Vec::new(),
        filtered_out: 0,
    };
    let Some(paths) = document.get("paths").and_then(Value::as_object) else {
        return Ok(plan);
    };
    // Names are given over the whole document, before filtering, so a filtered
    // import names each tool as the full import would.
    let mut taken = HashSet::new();
    for (path, raw_item) in paths {
        let item = schemas.follow(raw_item);
        for method in METHODS {
            let operation = match item {
                Ok(item) => match item.get(*method) {
                    Some(op) if op.is_object() => op,
                    _ => continue,
                },
                Err(_) if *method == "get" => raw_item,
                Err(_) => continue,
            };
            let operation_id = operation.get("operationId").and_then(Value::as_str).map(str::to_string);
            let tags: Vec<String> = operation
                .get("tags")
                .and_then(Value::as_array)
                .map(|t| t.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default();
            let name = tool_name(method, path, operation_id.as_deref(), options, &mut taken);
            if !selected(method, path, operation_id.as_deref(), &tags, options) {
                plan.filtered_out = plan.filtered_out.saturating_add(1);
                continue;
            }
            let outcome = match &item {
                Err(reason) => Outcome::Skipped(format!("the path item: {reason}")),
                Ok(item) => {
                    let op = Op {
                        method,
                        path,
                        item,
                        operation,
                        operation_id: operation_id.clone(),
                        tags: tags.clone(),
                        name,
                        api: &plan.title,
                    };
                    match map_operation(&schemas, &op, options) {
                        Ok(tool) => Outcome::Tool(Box::new(tool)),
                        Err(reason) => Outcome::Skipped(reason),
                    }
                }
            };
            plan.operations.push(Operation {
                method: method.to_ascii_uppercase(),
                path: path.clone(),
                operation_id,
                tags,
                outcome,
            });
        }
    }
    Ok(plan)
}

fn tool_name(
    method: &str,
    path: &str,
    operation_id: Option<&str>,
    options: &Options,
    taken: &mut HashSet<String>,
) -> String {
    let fallback = format!("{method}_{path}");
    let base = operation_id.unwrap_or(&fallback);
    let prefixed = format!("{}{base}", options.name_prefix.as_deref().unwrap_or_default());
    let name = unique_name(&normalize_name(&prefixed, method), taken);
    taken.insert(name.clone());
    name
}

fn selected(method: &str, path: &str, operation_id: Option<&str>, tags: &[String], options: &Options) -> bool {
    (options.tags.is_empty() || tags.iter().any(|t| options.tags.contains(t)))
        && options.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
        && (options.methods.is_empty() || options.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
        && (options.operation_ids.is_empty()
            || operation_id.is_some_and(|id| options.operation_ids.iter().any(|o| o == id)))
}

struct Op<'a> {
    method: &'a str,
    path: &'a str,
    item: &'a Value,
    operation: &'a Value,
    operation_id: Option<String>,
    tags: Vec<String>,
    name: String,
    api: &'a str,
}

/// The tool being built: arguments claimed so far and the templates they fill.
#[derive(Default)]
struct Builder {
    properties: Map<String, Value>,
    required: Vec<String>,
    arguments: BTreeMap<String, Location>,
    taken: HashSet<String>,
    notes: Vec<String>,
}

impl Builder {
    /// A collision-safe argument name for `raw` in `location`: the name itself,
    /// else `{location}_{name}`, else numbered.
    fn claim(&mut self, raw: &str, location: &str) -> String {
        let base = normalize_name(raw, "value");
        let name = if self.taken.contains(&base) {
            unique_name(&normalize_name(&format!("{location}_{base}"), location), &self.taken)
        } else {
            base
        };
        self.taken.insert(name.clone());
        name
    }

    fn add(&mut self, argument: &str, schema: Value, required: bool, location: &str, name: &str) {
        self.properties.insert(argument.to_string(), schema);
        if required {
            self.required.push(argument.to_string());
        }
        self.arguments.insert(
            argument.to_string(),
            Location {
                location: location.into(),
                name: name.into(),
            },
        );
    }

    /// An argument that cannot be expressed: left out when optional (noted), the
    /// whole operation skipped when required.
    fn inexpressible(&mut self, required: bool, what: String) -> Result<(), String> {
        if required {
            Err(what)
        } else {
            self.notes.push(format!("left out: {what}"));
            Ok(())
        }
    }
}

/// A parameter as declared (its `$ref` followed).
struct Parameter<'a> {
    name: &'a str,
    location: &'a str,
    required: bool,
    raw: &'a Value,
}

fn parameters<'a>(schemas: &Schemas<'a>, op: &Op<'a>) -> Result<Vec<Parameter<'a>>, String> {
    let mut merged: Vec<Parameter<'a>> = Vec::new();
    // Path-item parameters first; an operation's parameter of the same name and
    // location replaces it.
    for list in [op.item.get("parameters"), op.operation.get("parameters")] {
        for raw in list.and_then(Value::as_array).into_iter().flatten() {
            let param = schemas.follow(raw).map_err(|e| format!("a parameter: {e}"))?;
            let (Some(name), Some(location)) = (
                param.get("name").and_then(Value::as_str),
                param.get("in").and_then(Value::as_str),
            ) else {
                return Err("a parameter has no `name` or `in`".into());
            };
            let required = location == "path" || param.get("required").and_then(Value::as_bool) == Some(true);
            merged.retain(|p| !(p.name == name && p.location == location));
            merged.push(Parameter {
                name,
                location,
                required,
                raw: param,
            });
        }
    }
    Ok(merged)
}

fn map_operation(schemas: &Schemas<'_>, op: &Op<'_>, options: &Options) -> Result<PlannedTool, String> {
    let method = HttpMethod::parse(op.method).ok_or_else(|| {
        format!(
            "method {} is not one a tool can call (GET, POST, PUT, PATCH, DELETE)",
            op.method.to_ascii_uppercase()
        )
    })?;
    let server_list = op
        .operation
        .get("servers")
        .or_else(|| op.item.get("servers"))
        .or_else(|| schemas.document.get("servers"));
    let base = servers::resolve(server_list, options.base_url.as_deref())?;
    let mut b = Builder::default();
    let params = parameters(schemas, op)?;

    // Path: every `{name}` of the path must be a path parameter.
    let mut endpoint_path = base.prefix.clone();
    let mut rest = op.path;
    let mut path_names = Vec::new();
    while let Some(open) = rest.find('{') {
        let (literal, after) = rest.split_at(open);
        endpoint_path.push_str(literal);
        let after = after.get(1..).unwrap_or_default();
        let close = after
            .find('}')
            .ok_or_else(|| format!("the path `{}` has an unclosed `{{`", op.path))?;
        let (name, tail) = after.split_at(close);
        let param = params
            .iter()
            .find(|p| p.location == "path" && p.name == name)
            .ok_or_else(|| format!("path placeholder `{{{name}}}` is not declared as a path parameter"))?;
        let (schema, kind) = parameter_schema(schemas, param, &mut b.notes)?;
        let style = param.raw.get("style").and_then(Value::as_str).unwrap_or("simple");
        if style != "simple" || matches!(kind, Kind::Array | Kind::Object) {
            return Err(format!(
                "path parameter `{name}` (style {style}, {}) cannot be expressed by a path template",
                kind_text(kind)
            ));
        }
        let argument = b.claim(name, "path");
        b.add(&argument, schema, true, "path", name);
        endpoint_path.push('{');
        endpoint_path.push_str(&argument);
        endpoint_path.push('}');
        path_names.push(name);
        rest = tail.get(1..).unwrap_or_default();
    }
    endpoint_path.push_str(rest);
    if endpoint_path.is_empty() {
        endpoint_path.push('/');
    }

    let mut query_template = BTreeMap::new();
    let mut headers_template = BTreeMap::new();
    for param in params.iter().filter(|p| p.location == "query") {
        let (schema, kind) = parameter_schema(schemas, param, &mut b.notes)?;
        let style = param.raw.get("style").and_then(Value::as_str).unwrap_or("form");
        let explode = param
            .raw
            .get("explode")
            .and_then(Value::as_bool)
            .unwrap_or(style == "form");
        let json_content = param.raw.get("content").is_some();
        // Templates send a scalar as `name=value`, an array as `name=a&name=b`
        // (form, exploded), and an object as compact JSON (a `content` parameter).
        let expressible = match kind {
            Kind::Scalar | Kind::Unknown => style == "form" || json_content,
            Kind::Array => !json_content && style == "form" && explode,
            Kind::Object => json_content,
        };
        if !expressible {
            b.inexpressible(
                param.required,
                format!(
                    "query parameter `{}` ({}, style {style}, explode {explode}) cannot be expressed by a query template",
                    param.name,
                    kind_text(kind)
                ),
            )?;
            continue;
        }
        let argument = b.claim(param.name, "query");
        query_template.insert(param.name.to_string(), format!("{{{argument}}}"));
        b.add(&argument, schema, param.required, "query", param.name);
    }
    for param in params.iter().filter(|p| p.location == "header") {
        if IGNORED_HEADERS.contains(&param.name.to_ascii_lowercase().as_str()) {
            continue;
        }
        let (schema, kind) = parameter_schema(schemas, param, &mut b.notes)?;
        let problem = if validate_header_name("header", param.name).is_err() {
            Some("is a header Tengine sets itself or not a valid name".to_string())
        } else if matches!(kind, Kind::Array | Kind::Object) && param.raw.get("content").is_none() {
            Some(format!("is {} (style simple): not expressible", kind_text(kind)))
        } else {
            None
        };
        if let Some(problem) = problem {
            b.inexpressible(param.required, format!("header parameter `{}` {problem}", param.name))?;
            continue;
        }
        let argument = b.claim(param.name, "header");
        headers_template.insert(param.name.to_string(), format!("{{{argument}}}"));
        b.add(&argument, schema, param.required, "header", param.name);
    }
    for param in params.iter().filter(|p| p.location == "cookie") {
        b.inexpressible(
            param.required,
            format!("cookie parameter `{}` (tools send no cookies)", param.name),
        )?;
    }

    let body_template = request_body(schemas, op, method, &mut b, &mut headers_template)?;
    let (response_mode, output_schema) = response(schemas, op.operation, &mut b.notes);

    let operation = op.operation;
    let summary = operation
        .get("summary")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default();
    let details = operation
        .get("description")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default();
    let description = match (summary.is_empty(), details.is_empty()) {
        (false, false) => format!("{summary}\n\n{details}"),
        (false, true) => summary.to_string(),
        (true, false) => details.to_string(),
        (true, true) => format!("{} {}", op.method.to_ascii_uppercase(), op.path),
    };
    if operation.get("deprecated").and_then(Value::as_bool) == Some(true) {
        b.notes.push("the operation is deprecated".into());
    }
    let suggested_auth = suggested_auth(schemas, operation);
    let mut input_schema = json!({
        "type": "object",
        "properties": Value::Object(std::mem::take(&mut b.properties)),
        "additionalProperties": false,
    });
    if !b.required.is_empty() {
        input_schema["required"] = json!(b.required);
    }
    let spec = ToolSpec {
        name: op.name.clone(),
        title: (!summary.is_empty()).then(|| bounded(summary, TITLE_MAX)),
        description: bounded(&description, DESCRIPTION_LIMIT),
        input_schema,
        output_schema,
        annotations: Some(annotations(method)),
        response_mode,
        base_url: base.origin,
        http_method: method,
        endpoint_path,
        headers_template,
        query_template,
        body_template,
        auth_strategy: AuthStrategy::None,
        auth_secret: None,
        rotation_overlap_secs: None,
        timeout_ms: tengine_core::domain::TIMEOUT_MS_DEFAULT,
        enabled: false,
        require_member: false,
        retry: None,
        inject_member_identity: false,
        task_support: Default::default(),
        approval: Default::default(),
        client_capabilities: None,
    };
    let spec = spec
        .validate(options.allow_insecure)
        .map_err(|e| format!("the tool would be invalid: {e}"))?;
    Ok(PlannedTool {
        spec,
        source: Source {
            kind: "openapi".into(),
            api: op.api.to_string(),
            key: format!("{} {}", op.method.to_ascii_uppercase(), op.path),
            operation_id: op.operation_id.clone(),
            tags: op.tags.clone(),
            arguments: b.arguments,
        },
        suggested_auth,
        notes: b.notes,
    })
}

fn kind_text(kind: Kind) -> &'static str {
    match kind {
        Kind::Object => "an object",
        Kind::Array => "an array",
        Kind::Scalar => "a scalar",
        Kind::Unknown => "untyped",
    }
}

/// A parameter's schema (from `schema`, or the first media type of `content`),
/// inlined, with the parameter's description.
fn parameter_schema(
    schemas: &Schemas<'_>,
    param: &Parameter<'_>,
    notes: &mut Vec<String>,
) -> Result<(Value, Kind), String> {
    let raw = param
        .raw
        .get("schema")
        .or_else(|| {
            param
                .raw
                .get("content")
                .and_then(Value::as_object)
                .and_then(|c| c.values().next())
                .and_then(|media| media.get("schema"))
        })
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut found = Notes::default();
    let mut schema = schemas.inline(&raw, &mut found);
    notes.extend(found.into_messages(&format!("{} parameter `{}`", param.location, param.name)));
    let kind = schema::kind(&schema);
    if let (Some(text), Value::Object(map)) = (param.raw.get("description").and_then(Value::as_str), &mut schema) {
        map.insert(
            "description".into(),
            Value::String(bounded(text.trim(), ARGUMENT_DESCRIPTION_MAX)),
        );
    }
    if param.raw.get("deprecated").and_then(Value::as_bool) == Some(true)
        && let Value::Object(map) = &mut schema
    {
        map.insert("deprecated".into(), Value::Bool(true));
    }
    Ok((schema, kind))
}

const FORM: &str = "application/x-www-form-urlencoded";

/// A media type without its parameters, in lower case.
fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The form media type of a `content` map, if it has one (the templates send an
/// object body form-encoded when `Content-Type` says so).
fn form_media(content: &Map<String, Value>) -> Option<(&String, &Value)> {
    content.iter().find(|(k, _)| essence(k) == FORM)
}

/// The JSON media type of a `content` map, if it has one: `application/json`,
/// else any `…/json` or `…+json`.
fn json_media(content: &Map<String, Value>) -> Option<(&String, &Value)> {
    content
        .iter()
        .find(|(k, _)| essence(k) == "application/json")
        .or_else(|| {
            content.iter().find(|(k, _)| {
                let e = essence(k);
                e.ends_with("/json") || e.ends_with("+json")
            })
        })
}

/// The request body: its object's properties become arguments (the body template
/// puts each back under its own name, typed), any other schema one `body` argument.
fn request_body(
    schemas: &Schemas<'_>,
    op: &Op<'_>,
    method: HttpMethod,
    b: &mut Builder,
    headers: &mut BTreeMap<String, String>,
) -> Result<Option<Value>, String> {
    let Some(raw) = op.operation.get("requestBody") else {
        // POST, PUT and PATCH without a body template send an object of the
        // arguments; an operation without a body sends an empty object instead.
        return Ok(method.has_body().then(|| json!({})));
    };
    let body = schemas.follow(raw).map_err(|e| format!("the request body: {e}"))?;
    let required = body.get("required").and_then(Value::as_bool) == Some(true);
    let content = body
        .get("content")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let Some((media_type, media)) = json_media(&content).or_else(|| form_media(&content)) else {
        let types: Vec<&str> = content.keys().map(String::as_str).collect();
        b.inexpressible(
            required,
            format!(
                "the request body is {} (tools send JSON or form-encoded bodies only)",
                if types.is_empty() {
                    "without content".into()
                } else {
                    types.join(", ")
                }
            ),
        )?;
        return Ok(method.has_body().then(|| json!({})));
    };
    if essence(media_type) != "application/json" {
        headers.insert("Content-Type".into(), media_type.clone());
    }
    let mut found = Notes::default();
    let schema = schemas.inline(media.get("schema").unwrap_or(&json!({})), &mut found);
    b.notes.extend(found.into_messages("request body"));
    let form = essence(media_type) == FORM;
    if let Some((properties, required_members)) = schema::object_members(&schema) {
        let mut template = Map::new();
        for (member, member_schema) in properties {
            // "SHOULD NOT be sent as part of the request" (OpenAPI, readOnly).
            if member_schema.get("readOnly") == Some(&Value::Bool(true)) {
                continue;
            }
            let argument = b.claim(&member, "body");
            template.insert(member.clone(), Value::String(format!("{{{argument}}}")));
            let is_required = required && required_members.contains(&member);
            b.add(&argument, member_schema, is_required, "body", &member);
        }
        Ok(Some(Value::Object(template)))
    } else if form {
        b.inexpressible(
            required,
            "the form-encoded request body is not an object with properties".into(),
        )?;
        Ok(method.has_body().then(|| json!({})))
    } else {
        if !required {
            b.notes
                .push("the optional request body is required by the tool (it is one argument)".into());
        }
        let argument = b.claim("body", "body");
        b.add(&argument, schema, true, "body", "");
        Ok(Some(Value::String(format!("{{{argument}}}"))))
    }
}

/// `json` with the first 2xx response's object schema as `output_schema` when that
/// response is JSON; `text` otherwise.
fn response(schemas: &Schemas<'_>, operation: &Value, notes: &mut Vec<String>) -> (ResponseMode, Option<Value>) {
    let Some(responses) = operation.get("responses").and_then(Value::as_object) else {
        return (ResponseMode::Text, None);
    };
    let mut success: Vec<(&String, &Value)> = responses.iter().filter(|(code, _)| code.starts_with('2')).collect();
    success.sort_by(|a, b| a.0.cmp(b.0));
    let Some((code, raw)) = success.first() else {
        return (ResponseMode::Text, None);
    };
    let Ok(answer) = schemas.follow(raw) else {
        return (ResponseMode::Text, None);
    };
    let Some((_, media)) = answer.get("content").and_then(Value::as_object).and_then(json_media) else {
        return (ResponseMode::Text, None);
    };
    let Some(raw_schema) = media.get("schema") else {
        return (ResponseMode::Json, None);
    };
    let mut found = Notes::default();
    let mut schema = schemas.inline(raw_schema, &mut found);
    if schema::kind(&schema) != Kind::Object && schema::object_members(&schema).is_none() {
        return (ResponseMode::Json, None);
    }
    // An output schema that is only partly described would refuse real answers.
    if found.budget_exhausted || found.too_deep {
        notes.push(format!(
            "no output schema: the {code} response's schema is too large or deep"
        ));
        return (ResponseMode::Json, None);
    }
    if let Value::Object(map) = &mut schema {
        map.insert("type".into(), json!("object"));
    }
    if serde_json::to_vec(&schema).map_or(usize::MAX, |v| v.len()) > SCHEMA_MAX_BYTES {
        notes.push(format!(
            "no output schema: the {code} response's schema is larger than {SCHEMA_MAX_BYTES} bytes"
        ));
        return (ResponseMode::Json, None);
    }
    notes.extend(found.into_messages("output schema"));
    (ResponseMode::Json, Some(schema))
}

/// MCP hints from the method's HTTP semantics.
fn annotations(method: HttpMethod) -> ToolAnnotations {
    let (read_only, destructive, idempotent) = match method {
        HttpMethod::Get => (true, false, true),
        HttpMethod::Post => (false, false, false),
        HttpMethod::Put => (false, true, true),
        HttpMethod::Patch => (false, true, false),
        HttpMethod::Delete => (false, true, true),
    };
    ToolAnnotations {
        read_only_hint: Some(read_only),
        destructive_hint: Some(destructive),
        idempotent_hint: Some(idempotent),
        open_world_hint: Some(true),
    }
}

/// The first security requirement (the operation's, else the document's) as a
/// Tengine auth strategy to set up, with the secret entered separately.
fn suggested_auth(schemas: &Schemas<'_>, operation: &Value) -> Option<SuggestedAuth> {
    let requirements = operation
        .get("security")
        .or_else(|| schemas.document.get("security"))?
        .as_array()?;
    let names: Vec<&String> = requirements.first()?.as_object()?.keys().collect();
    let name = names.first()?;
    let scheme = schemas
        .document
        .pointer("/components/securitySchemes")
        .and_then(|s| s.get(name.as_str()))
        .and_then(|s| schemas.follow(s).ok())?;
    let kind = scheme.get("type").and_then(Value::as_str).unwrap_or_default();
    let http_scheme = scheme
        .get("scheme")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (strategy, note) = match kind {
        "http" if http_scheme == "bearer" => (
            AuthStrategy::StaticBearer,
            "set auth_strategy static_bearer with the API's token as auth_secret".to_string(),
        ),
        "oauth2" | "openIdConnect" => (
            AuthStrategy::StaticBearer,
            format!("{kind}: obtain an access token and set it as a static_bearer auth_secret"),
        ),
        "apiKey" => (
            AuthStrategy::None,
            format!(
                "API key in {} `{}`: no auth strategy sends it; ask the API for a bearer token instead",
                scheme.get("in").and_then(Value::as_str).unwrap_or("?"),
                scheme.get("name").and_then(Value::as_str).unwrap_or("?")
            ),
        ),
        other => (
            AuthStrategy::None,
            format!("security scheme type `{other}` {http_scheme} has no Tengine auth strategy"),
        ),
    };
    Some(SuggestedAuth {
        strategy,
        scheme: bounded(name, NAME_MAX),
        note: if names.len() > 1 {
            format!("{note} (the requirement combines {} schemes)", names.len())
        } else {
            note
        },
    })
}

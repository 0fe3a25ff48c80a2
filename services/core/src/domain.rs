//! Domain types: tools as the owner registers them, and their validation.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::templates::{self, RESERVED_PREFIXES};

/// MCP tool names: 1–128 of `[A-Za-z0-9_.-]`.
pub const TOOL_NAME_MAX: usize = 128;
pub const DESCRIPTION_MAX: usize = 8192;
pub const SCHEMA_MAX_BYTES: usize = 64 * 1024;
pub const TIMEOUT_MS_MIN: u64 = 100;
pub const TIMEOUT_MS_MAX: u64 = 120_000;
pub const TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Longest HMAC rotation overlap.
pub const ROTATION_OVERLAP_MAX_SECS: u64 = 7 * 24 * 3600;

/// Headers Tengine sets itself (or that would let a template subvert the request).
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-authorization",
    "idempotency-key",
    "traceparent",
    "tracestate",
];
/// Header name prefixes Tengine owns.
pub const RESERVED_HEADER_PREFIXES: &[&str] = &["x-tengine-", "webhook-"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }

    /// Methods whose arguments travel in a JSON body by default (the others use the query).
    pub fn has_body(self) -> bool {
        matches!(self, HttpMethod::Post | HttpMethod::Put | HttpMethod::Patch)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            "PUT" => HttpMethod::Put,
            "PATCH" => HttpMethod::Patch,
            "DELETE" => HttpMethod::Delete,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthStrategy {
    #[default]
    None,
    StaticBearer,
    HmacSignature,
}

impl AuthStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthStrategy::None => "none",
            AuthStrategy::StaticBearer => "static_bearer",
            AuthStrategy::HmacSignature => "hmac_signature",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => AuthStrategy::None,
            "static_bearer" => AuthStrategy::StaticBearer,
            "hmac_signature" => AuthStrategy::HmacSignature,
            _ => return None,
        })
    }
}

/// How an upstream response becomes an MCP tool result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseMode {
    /// The body as one text block (the default).
    #[default]
    Text,
    /// The body is JSON: `structuredContent` (checked against `output_schema` when
    /// one is declared) plus the same JSON as a text block.
    Json,
    /// The body is an MCP `CallToolResult` (text, image, audio, resource blocks),
    /// validated and passed through.
    Mcp,
}

impl ResponseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseMode::Text => "text",
            ResponseMode::Json => "json",
            ResponseMode::Mcp => "mcp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => ResponseMode::Text,
            "json" => ResponseMode::Json,
            "mcp" => ResponseMode::Mcp,
            _ => return None,
        })
    }
}

/// MCP tool annotations (hints for clients), in MCP's own field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolAnnotations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_hint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destructive_hint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent_hint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_world_hint: Option<bool>,
}

/// When and how often the worker retries a failed attempt. Only failures that
/// cannot have applied a write, or that the API asks to retry, are retried:
/// connections that never opened, HTTP 429/502/503/504, and timeouts of
/// idempotent methods (GET, PUT, DELETE) or of tools annotated `idempotentHint`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 disables retries).
    #[serde(default = "RetryPolicy::default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "RetryPolicy::default_initial")]
    pub initial_backoff_ms: u64,
    #[serde(default = "RetryPolicy::default_max")]
    pub max_backoff_ms: u64,
    /// No attempt starts after this long since the first one.
    #[serde(default = "RetryPolicy::default_deadline")]
    pub total_deadline_ms: u64,
}

impl RetryPolicy {
    fn default_attempts() -> u32 {
        3
    }
    fn default_initial() -> u64 {
        200
    }
    fn default_max() -> u64 {
        5_000
    }
    fn default_deadline() -> u64 {
        30_000
    }

    fn validate(&self) -> Result<(), FieldError> {
        if !(1..=10).contains(&self.max_attempts) {
            return Err(field_err("retry.max_attempts", "must be between 1 and 10"));
        }
        if !(10..=60_000).contains(&self.initial_backoff_ms) || self.max_backoff_ms < self.initial_backoff_ms {
            return Err(field_err(
                "retry.initial_backoff_ms",
                "must be 10-60000 and not above max_backoff_ms",
            ));
        }
        if self.max_backoff_ms > 300_000 || self.total_deadline_ms > 600_000 {
            return Err(field_err(
                "retry",
                "max_backoff_ms may be at most 300000 and total_deadline_ms at most 600000",
            ));
        }
        Ok(())
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: Self::default_attempts(),
            initial_backoff_ms: Self::default_initial(),
            max_backoff_ms: Self::default_max(),
            total_deadline_ms: Self::default_deadline(),
        }
    }
}

/// Never serialized, like `skip_serializing`, which the OpenAPI derive would read
/// as "no such field" rather than "write-only".
fn write_only<T>(_: &T) -> bool {
    true
}

fn default_timeout() -> u64 {
    TIMEOUT_MS_DEFAULT
}
fn default_true() -> bool {
    true
}

/// Whether a call may become an MCP task (revision 2026-07-28, for clients that
/// declared the `io.modelcontextprotocol/tasks` extension on the request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskSupport {
    /// Always answered synchronously.
    Never,
    /// A task when the call may outlast `ingress.task_after_ms` (its `timeout_ms` is
    /// longer), else answered synchronously.
    #[default]
    Optional,
    /// Always a task; a client without the extension is refused (-32021).
    Required,
}

impl TaskSupport {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskSupport::Never => "never",
            TaskSupport::Optional => "optional",
            TaskSupport::Required => "required",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "never" => TaskSupport::Never,
            "optional" => TaskSupport::Optional,
            "required" => TaskSupport::Required,
            _ => return None,
        })
    }
}

/// Who must approve a call before it reaches the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// Nobody: calls run at once.
    #[default]
    None,
    /// The end user, through the client (an elicitation confirming the call).
    Client,
    /// An operator with the admin token (the run waits, parked, until approved).
    Operator,
}

impl Approval {
    pub fn as_str(self) -> &'static str {
        match self {
            Approval::None => "none",
            Approval::Client => "client",
            Approval::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Approval::None,
            "client" => Approval::Client,
            "operator" => Approval::Operator,
            _ => return None,
        })
    }
}

/// A tool as the owner writes it (POST / PUT body). `auth_secret` is write-only.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: String,
    pub input_schema: Value,
    #[serde(default)]
    pub output_schema: Option<Value>,
    #[serde(default)]
    pub annotations: Option<ToolAnnotations>,
    #[serde(default)]
    pub response_mode: ResponseMode,
    pub base_url: String,
    pub http_method: HttpMethod,
    pub endpoint_path: String,
    #[serde(default)]
    pub headers_template: BTreeMap<String, String>,
    #[serde(default)]
    pub query_template: BTreeMap<String, String>,
    #[serde(default)]
    pub body_template: Option<Value>,
    #[serde(default)]
    pub auth_strategy: AuthStrategy,
    /// The upstream's bearer token (`static_bearer`) or signing secret (`hmac_signature`);
    /// never returned.
    #[serde(default, skip_serializing_if = "write_only")]
    #[schema(write_only)]
    pub auth_secret: Option<String>,
    /// With a new `hmac_signature` secret: how long the previous one keeps signing
    /// too (both signatures are sent), so receivers can rotate without a gap.
    #[serde(default, skip_serializing_if = "write_only")]
    #[schema(write_only)]
    pub rotation_overlap_secs: Option<u64>,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Only member sessions (`tng_mst_…`) may see and call the tool.
    #[serde(default)]
    pub require_member: bool,
    /// Retries of failed attempts (the defaults when absent).
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Send `X-Tengine-Member-Id`, `-Email` and `-Roles` upstream.
    #[serde(default)]
    pub inject_member_identity: bool,
    #[serde(default)]
    pub task_support: TaskSupport,
    #[serde(default)]
    pub approval: Approval,
    /// Client capabilities a call needs (e.g. `{"elicitation": {}}`): a 2026-07-28
    /// request that does not declare them is refused (-32021).
    #[serde(default)]
    pub client_capabilities: Option<Value>,
}

/// A stored tool, as the services use it. Never carries the plaintext secret.
#[derive(Clone, Debug, Serialize, PartialEq, ToSchema)]
pub struct ToolDefinition {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub title: Option<String>,
    pub description: String,
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    pub annotations: Option<ToolAnnotations>,
    pub response_mode: ResponseMode,
    pub base_url: String,
    pub http_method: HttpMethod,
    pub endpoint_path: String,
    pub headers_template: BTreeMap<String, String>,
    pub query_template: BTreeMap<String, String>,
    pub body_template: Option<Value>,
    pub auth_strategy: AuthStrategy,
    pub has_auth_secret: bool,
    /// Until when the previous HMAC secret still signs (rotation overlap).
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub timeout_ms: u64,
    pub enabled: bool,
    pub require_member: bool,
    pub inject_member_identity: bool,
    pub retry: Option<RetryPolicy>,
    pub task_support: TaskSupport,
    pub approval: Approval,
    pub client_capabilities: Option<Value>,
    /// Where the tool was imported from (`POST …/tools/import`: the OpenAPI document's
    /// title, `METHOD /path`, operationId, tags and where each argument goes); `null`
    /// for tools registered one by one.
    pub source: Option<Value>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub auth_secret_ciphertext: Option<Vec<u8>>,
    #[serde(skip)]
    pub auth_secret_previous_ciphertext: Option<Vec<u8>>,
}

/// A field that failed validation, with a JSON-pointer-like path and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Longest project, integration and API key name, in characters.
pub const NAME_MAX_CHARS: usize = 200;
/// Longest member id (an assertion's `sub`) and assertion id (`jti`), in bytes.
pub const MEMBER_ID_MAX_BYTES: usize = 256;

/// A display name: at most `NAME_MAX_CHARS` characters (1 or more unless
/// `may_be_empty`), no control characters (they would hide or forge what an
/// operator reads in listings and logs).
pub fn validate_name(field: &str, name: &str, may_be_empty: bool) -> Result<(), FieldError> {
    let count = name.chars().count();
    if (count == 0 && !may_be_empty) || count > NAME_MAX_CHARS || name.chars().any(char::is_control) {
        let least = if may_be_empty { 0 } else { 1 };
        return Err(field_err(
            field,
            format!("must be {least}-{NAME_MAX_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

/// An identifier chosen by a tenant or its backend (a member id, a key id):
/// 1 to `max_bytes` bytes, no control characters.
pub fn validate_identifier(field: &str, value: &str, max_bytes: usize) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > max_bytes || value.chars().any(char::is_control) {
        return Err(field_err(
            field,
            format!("must be 1-{max_bytes} bytes without control characters"),
        ));
    }
    Ok(())
}

pub fn validate_tool_name(name: &str) -> Result<(), FieldError> {
    if name.is_empty()
        || name.len() > TOOL_NAME_MAX
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(field_err(
            "name",
            "must be 1-128 characters of A-Z, a-z, 0-9, `_`, `.` and `-`",
        ));
    }
    Ok(())
}

/// An endpoint path with each `{placeholder}` filled by a plain segment, to see
/// how its fixed parts are sent.
fn sample_path(template: &str) -> String {
    let mut sample = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        sample.push_str(&rest[..open]);
        match rest[open..].find('}') {
            Some(close) => {
                sample.push('x');
                rest = &rest[open.saturating_add(close).saturating_add(1)..];
            }
            None => {
                rest = &rest[open..];
                break;
            }
        }
    }
    sample.push_str(rest);
    sample
}

/// Normalizes and checks an upstream origin: scheme, host and port only.
pub fn normalize_base_url(raw: &str, allow_insecure: bool) -> Result<String, FieldError> {
    let url = Url::parse(raw).map_err(|e| field_err("base_url", format!("is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure => {}
        "http" => {
            return Err(field_err(
                "base_url",
                "must use https (plain http is allowed only with allow_insecure_upstreams, for development)",
            ));
        }
        other => {
            return Err(field_err(
                "base_url",
                format!("scheme `{other}` is not supported; use https"),
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(field_err("base_url", "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(field_err("base_url", "must not contain credentials; use auth_strategy"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(field_err(
            "base_url",
            "must be an origin only (scheme://host[:port]); put the path in endpoint_path",
        ));
    }
    Ok(url.origin().ascii_serialization())
}

fn schema_properties(schema: &Value) -> BTreeSet<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| props.keys().cloned().collect())
        .unwrap_or_default()
}

fn check_placeholders(
    field: &str,
    names: impl IntoIterator<Item = String>,
    properties: &BTreeSet<String>,
) -> Result<(), FieldError> {
    for name in names {
        let reserved = RESERVED_PREFIXES.iter().any(|p| name.starts_with(p));
        let known_reserved = templates::RESERVED_VARIABLES.contains(&name.as_str());
        if reserved && !known_reserved {
            return Err(field_err(
                field,
                format!(
                    "`{{{name}}}` is not a reserved variable (known: {})",
                    templates::RESERVED_VARIABLES.join(", ")
                ),
            ));
        }
        if !reserved && !properties.contains(&name) {
            return Err(field_err(
                field,
                format!("placeholder `{{{name}}}` names no property of input_schema"),
            ));
        }
    }
    Ok(())
}

pub fn validate_header_name(field: &str, name: &str) -> Result<(), FieldError> {
    let lower = name.to_ascii_lowercase();
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(field_err(field, format!("`{name}` is not a valid HTTP header name")));
    }
    if RESERVED_HEADERS.contains(&lower.as_str()) || RESERVED_HEADER_PREFIXES.iter().any(|p| lower.starts_with(p)) {
        return Err(field_err(
            field,
            format!("header `{name}` is set by Tengine and cannot be templated"),
        ));
    }
    Ok(())
}

impl ToolSpec {
    /// Checks everything that can be checked at registration, so that calls fail
    /// only on their arguments. Returns the normalized spec.
    pub fn validate(mut self, allow_insecure: bool) -> Result<Self, FieldError> {
        validate_tool_name(&self.name)?;
        if self.description.len() > DESCRIPTION_MAX {
            return Err(field_err(
                "description",
                format!("must be at most {DESCRIPTION_MAX} bytes"),
            ));
        }
        let schema = self
            .input_schema
            .as_object()
            .ok_or_else(|| field_err("input_schema", "must be a JSON Schema object"))?;
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(field_err("input_schema.type", "MCP requires \"type\": \"object\""));
        }
        if serde_json::to_vec(&self.input_schema).map_or(0, |v| v.len()) > SCHEMA_MAX_BYTES {
            return Err(field_err(
                "input_schema",
                format!("must be at most {SCHEMA_MAX_BYTES} bytes"),
            ));
        }
        if let Some(title) = &self.title
            && (title.is_empty() || title.len() > TOOL_NAME_MAX * 2)
        {
            return Err(field_err("title", "must be 1-256 bytes when given"));
        }
        if let Some(output) = &self.output_schema {
            if self.response_mode == ResponseMode::Text {
                return Err(field_err(
                    "output_schema",
                    "needs response_mode `json` or `mcp` (a text result has no structured content)",
                ));
            }
            if output.get("type").and_then(Value::as_str) != Some("object") {
                return Err(field_err("output_schema.type", "MCP requires \"type\": \"object\""));
            }
            if serde_json::to_vec(output).map_or(0, |v| v.len()) > SCHEMA_MAX_BYTES {
                return Err(field_err(
                    "output_schema",
                    format!("must be at most {SCHEMA_MAX_BYTES} bytes"),
                ));
            }
        }
        self.base_url = normalize_base_url(&self.base_url, allow_insecure)?;
        if !self.endpoint_path.starts_with('/') || self.endpoint_path.starts_with("//") {
            return Err(field_err("endpoint_path", "must start with a single `/`"));
        }
        if self.endpoint_path.contains(['?', '#', '\\']) || self.endpoint_path.chars().any(char::is_whitespace) {
            return Err(field_err(
                "endpoint_path",
                "must be a path only (no `?`, `#`, `\\` or whitespace); use query_template for the query",
            ));
        }
        if self.endpoint_path.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(field_err("endpoint_path", "must not contain `.` or `..` segments"));
        }
        // Its fixed parts are sent as written, or every call is refused for changing
        // the request target: no percent-encoded dots, no characters that need encoding.
        let sample = sample_path(&self.endpoint_path);
        let sent = url::Url::parse("http://tool.invalid/")
            .and_then(|origin| origin.join(&sample))
            .map(|url| url.path().to_string());
        if sent.as_deref() != Ok(sample.as_str()) {
            return Err(field_err(
                "endpoint_path",
                match sent {
                    Ok(sent) => format!(
                        "would be sent as `{sent}`, not as written; write it normalized and percent-encoded (no encoded dots)"
                    ),
                    Err(err) => format!("is not a valid URL path ({err})"),
                },
            ));
        }
        if !(TIMEOUT_MS_MIN..=TIMEOUT_MS_MAX).contains(&self.timeout_ms) {
            return Err(field_err(
                "timeout_ms",
                format!("must be between {TIMEOUT_MS_MIN} and {TIMEOUT_MS_MAX}"),
            ));
        }
        let properties = schema_properties(&self.input_schema);
        check_placeholders(
            "endpoint_path",
            templates::placeholders(&self.endpoint_path)
                .into_iter()
                .map(|p| p.name.to_string()),
            &properties,
        )?;
        for (name, template) in &self.headers_template {
            let field = format!("headers_template.{name}");
            validate_header_name(&field, name)?;
            if template.contains(['\r', '\n', '\0']) {
                return Err(field_err(field, "must not contain CR, LF or NUL"));
            }
            check_placeholders(
                &field,
                templates::placeholders(template)
                    .into_iter()
                    .map(|p| p.name.to_string()),
                &properties,
            )?;
        }
        for (name, template) in &self.query_template {
            let field = format!("query_template.{name}");
            if name.is_empty() {
                return Err(field_err(field, "query parameter names must not be empty"));
            }
            check_placeholders(
                &field,
                templates::placeholders(template)
                    .into_iter()
                    .map(|p| p.name.to_string()),
                &properties,
            )?;
        }
        if let Some(body) = &self.body_template {
            let mut names = BTreeSet::new();
            templates::json_placeholders(body, &mut names);
            check_placeholders("body_template", names, &properties)?;
        }
        if let Some(retry) = &self.retry {
            retry.validate()?;
        }
        if let Some(overlap) = self.rotation_overlap_secs {
            if self.auth_strategy != AuthStrategy::HmacSignature || self.auth_secret.is_none() {
                return Err(field_err(
                    "rotation_overlap_secs",
                    "applies only when a new auth_secret is set for auth_strategy hmac_signature",
                ));
            }
            if overlap > ROTATION_OVERLAP_MAX_SECS {
                return Err(field_err(
                    "rotation_overlap_secs",
                    format!("must be at most {ROTATION_OVERLAP_MAX_SECS} (7 days)"),
                ));
            }
        }
        match (self.auth_strategy, self.auth_secret.as_deref()) {
            (AuthStrategy::None, Some(_)) => {
                return Err(field_err(
                    "auth_secret",
                    "is only used with auth_strategy static_bearer or hmac_signature",
                ));
            }
            (AuthStrategy::StaticBearer, Some(secret))
                if secret.is_empty() || http::HeaderValue::from_str(&format!("Bearer {secret}")).is_err() =>
            {
                return Err(field_err(
                    "auth_secret",
                    "must be a non-empty token usable in an HTTP header",
                ));
            }
            (AuthStrategy::HmacSignature, Some(secret)) => {
                crate::signing::SigningKey::parse(secret).map_err(|e| field_err("auth_secret", e))?;
            }
            _ => {}
        }
        if let Some(capabilities) = &self.client_capabilities {
            let valid = capabilities
                .as_object()
                .is_some_and(|caps| caps.len() <= 16 && caps.values().all(Value::is_object));
            if !valid {
                return Err(field_err(
                    "client_capabilities",
                    "must be an object of capability name → object (e.g. {\"elicitation\": {}}), at most 16",
                ));
            }
        }
        if self.approval != Approval::None && self.task_support == TaskSupport::Never {
            // An approval may take longer than any client waits: it needs a task to wait in.
            if self.approval == Approval::Operator {
                return Err(field_err(
                    "task_support",
                    "an `operator` approval can take hours: use `optional` or `required` so calls can wait as tasks",
                ));
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_identifiers_refuse_control_characters() {
        assert!(validate_name("name", "Support agent ✓", false).is_ok());
        assert!(validate_name("name", "", true).is_ok());
        assert!(validate_name("name", "", false).is_err());
        assert!(validate_name("name", &"é".repeat(NAME_MAX_CHARS), false).is_ok());
        assert!(validate_name("name", &"é".repeat(NAME_MAX_CHARS + 1), false).is_err());
        for bad in ["a\0b", "line\nbreak", "esc\u{1b}[31m", "del\u{7f}", "c1\u{85}"] {
            assert_eq!(
                validate_name("name", bad, true).map_err(|e| e.field),
                Err("name".into())
            );
            assert!(validate_identifier("member_id", bad, MEMBER_ID_MAX_BYTES).is_err());
        }
        assert!(validate_identifier("member_id", "user-1@example.com", MEMBER_ID_MAX_BYTES).is_ok());
        assert!(validate_identifier("member_id", "", MEMBER_ID_MAX_BYTES).is_err());
        assert!(validate_identifier("member_id", &"x".repeat(MEMBER_ID_MAX_BYTES + 1), MEMBER_ID_MAX_BYTES).is_err());
    }

    fn spec() -> ToolSpec {
        serde_json::from_value(json!({
            "name": "get_item",
            "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}},
            "base_url": "https://api.example.com/",
            "http_method": "GET",
            "endpoint_path": "/items/{id}"
        }))
        .expect("valid json")
    }

    #[test]
    fn normalizes_origin() {
        let s = spec().validate(false).expect("valid");
        assert_eq!(s.base_url, "https://api.example.com");
        assert_eq!(s.timeout_ms, TIMEOUT_MS_DEFAULT);
        assert!(s.enabled);
    }

    #[test]
    fn refuses_bad_fields_with_their_path() {
        type Mutation = Box<dyn Fn(&mut ToolSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.name = "bad name".into()), "name"),
            (Box::new(|s| s.base_url = "http://api.example.com".into()), "base_url"),
            (
                Box::new(|s| s.base_url = "https://api.example.com/v1".into()),
                "base_url",
            ),
            (
                Box::new(|s| s.base_url = "https://u:p@api.example.com".into()),
                "base_url",
            ),
            (Box::new(|s| s.endpoint_path = "//evil.com/x".into()), "endpoint_path"),
            (Box::new(|s| s.endpoint_path = "/x?y=1".into()), "endpoint_path"),
            (Box::new(|s| s.endpoint_path = "/a/{nope}".into()), "endpoint_path"),
            (
                Box::new(|s| s.input_schema = json!({"type": "string"})),
                "input_schema.type",
            ),
            (Box::new(|s| s.timeout_ms = 5), "timeout_ms"),
            (
                Box::new(|s| {
                    s.headers_template.insert("X-Tengine-Member-Id".into(), "x".into());
                }),
                "headers_template.X-Tengine-Member-Id",
            ),
            (
                Box::new(|s| {
                    s.body_template = Some(json!({"a": "{member.secret}"}));
                }),
                "body_template",
            ),
            (
                Box::new(|s| {
                    s.auth_strategy = AuthStrategy::HmacSignature;
                    s.auth_secret = Some("not-whsec".into());
                }),
                "auth_secret",
            ),
        ];
        for (mutate, field) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = s.validate(false).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn insecure_allowed_in_dev() {
        let mut s = spec();
        s.base_url = "http://127.0.0.1:9000".into();
        assert_eq!(s.validate(true).expect("ok").base_url, "http://127.0.0.1:9000");
    }
}

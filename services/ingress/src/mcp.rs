//! The MCP endpoint (`/mcp`): Streamable HTTP, revision 2025-11-25, tools only.
//!
//! Every POST is checked in this order, each failure with its own HTTP status and
//! a JSON-RPC error body that says what to fix: Origin (403), credentials (401),
//! Accept (406), Content-Type (415), size (413), JSON (400, -32700), shape (400,
//! -32600: batches are refused since 2025-06-18), session (400 missing / 404 unknown),
//! `MCP-Protocol-Version` (400). Method-level errors are HTTP 200 with a JSON-RPC
//! error, which is what SDKs surface to the application.
//!
//! We use rmcp's model types for the messages but not its server runtime: sessions
//! here are signed tokens (no per-instance state) and tools/call is a queued run.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::Utc;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, ErrorCode, Implementation, InitializeRequestParams,
    InitializeResult, PaginatedRequestParams, ProtocolVersion, ServerCapabilities, Tool, ToolsCapability,
};
use serde_json::{Map, Value, json};
use tengine_core::{
    credentials,
    domain::ToolDefinition,
    envelope::{Caller, ErrorClass, ExecuteCommand, RunEvent, RunOutcome, RunStatus},
    store::{self, StoreError},
    templates,
};
use uuid::Uuid;

use crate::AppState;

pub const HEADER_SESSION_ID: &str = "mcp-session-id";
pub const HEADER_PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// Revisions this server speaks, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// `_meta` key carrying the Run ID on every tools/call result.
pub const META_RUN_ID: &str = "tengine.dev/runId";
pub const META_STATUS: &str = "tengine.dev/status";
pub const META_HTTP_STATUS: &str = "tengine.dev/httpStatus";
/// Server-defined JSON-RPC code for authentication failures (HTTP 401).
pub const CODE_UNAUTHORIZED: i32 = -32001;
/// How much of an upstream error body the model sees.
const ERROR_EXCERPT_CHARS: usize = 2000;
const MAX_TOOL_NAME_IN_HISTORY: usize = 200;

/// An MCP failure: HTTP status plus a JSON-RPC error object.
#[derive(Debug)]
pub struct McpError {
    status: StatusCode,
    id: Value,
    code: i32,
    message: String,
    data: Option<Value>,
    www_authenticate: Option<String>,
}

impl McpError {
    fn new(status: StatusCode, code: i32, message: impl Into<String>) -> Self {
        Self {
            status,
            id: Value::Null,
            code,
            message: message.into(),
            data: None,
            www_authenticate: None,
        }
    }

    fn with_id(mut self, id: &Value) -> Self {
        self.id = id.clone();
        self
    }

    fn invalid_request(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorCode::INVALID_REQUEST.0, message)
    }

    fn invalid_params(id: &Value, message: impl Into<String>) -> Self {
        Self::new(StatusCode::OK, ErrorCode::INVALID_PARAMS.0, message).with_id(id)
    }

    fn internal(id: &Value, message: impl Into<String>) -> Self {
        Self::new(StatusCode::OK, ErrorCode::INTERNAL_ERROR.0, message).with_id(id)
    }
}

impl IntoResponse for McpError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(data) = self.data {
            error["data"] = data;
        }
        let mut response = (
            self.status,
            Json(json!({"jsonrpc": "2.0", "id": self.id, "error": error})),
        )
            .into_response();
        if let Some(value) = self.www_authenticate.and_then(|v| HeaderValue::from_str(&v).ok()) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

type McpResult<T> = Result<T, McpError>;

fn json_rpc_result(id: &Value, result: Value) -> Response {
    Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

pub async fn post(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    match handle_post(&st, &headers, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// GET would open a server-to-client SSE stream; this server sends no unsolicited
/// messages yet, which the specification answers with 405.
pub async fn get() -> Response {
    method_not_allowed("this server does not offer a GET stream; POST JSON-RPC messages to this endpoint")
}

/// Sessions are signed tokens that expire on their own; there is nothing to end.
pub async fn delete() -> Response {
    method_not_allowed("sessions expire on their own; DELETE is not supported")
}

fn method_not_allowed(message: &str) -> Response {
    let mut response = McpError::invalid_request(StatusCode::METHOD_NOT_ALLOWED, message).into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

async fn handle_post(st: &AppState, headers: &HeaderMap, body: Body) -> McpResult<Response> {
    check_origin(st, headers)?;
    let caller = authenticate(st, headers).await?;
    check_accept(headers)?;
    check_content_type(headers)?;
    let bytes = read_body(body, headers, st.config.ingress.max_request_bytes).await?;

    let message: Value = serde_json::from_slice(&bytes).map_err(|e| {
        McpError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::PARSE_ERROR.0,
            format!("the body is not valid JSON ({e})"),
        )
    })?;
    let Value::Object(message) = message else {
        return Err(if message.is_array() {
            McpError::invalid_request(
                StatusCode::BAD_REQUEST,
                "JSON-RPC batches are not supported (removed in MCP 2025-06-18); send one message per POST",
            )
        } else {
            McpError::invalid_request(StatusCode::BAD_REQUEST, "a JSON-RPC message must be a JSON object")
        });
    };
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(McpError::invalid_request(
            StatusCode::BAD_REQUEST,
            "the message must carry \"jsonrpc\": \"2.0\"",
        ));
    }
    let id = match message.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
        Some(_) => {
            return Err(McpError::invalid_request(
                StatusCode::BAD_REQUEST,
                "\"id\" must be a string or an integer",
            ));
        }
    };
    let Some(method) = message.get("method").and_then(Value::as_str) else {
        if message.contains_key("result") || message.contains_key("error") {
            // A response to a server request; this server sends none, so nothing waits for it.
            return Ok(StatusCode::ACCEPTED.into_response());
        }
        return Err(McpError::invalid_request(
            StatusCode::BAD_REQUEST,
            "the message has no \"method\"",
        ));
    };
    let params = message.get("params").cloned();

    let Some(id) = id else {
        // A notification: validate the session like any other message, then accept.
        if method != "notifications/initialized" || headers.contains_key(HEADER_SESSION_ID) {
            check_session(st, headers, &caller, &Value::Null)?;
        }
        return Ok(StatusCode::ACCEPTED.into_response());
    };

    match method {
        "initialize" => return initialize(st, &caller, &id, params),
        // Revision 2026-07-28's stateless discovery. SDKs fall back to `initialize`
        // on this error; the request id is echoed so the client can match it at once.
        "server/discover" => {
            return Err(McpError::new(
                StatusCode::OK,
                ErrorCode::METHOD_NOT_FOUND.0,
                "server/discover (MCP 2026-07-28) is not supported; this server speaks 2025-11-25: send initialize",
            )
            .with_id(&id));
        }
        _ => {}
    }

    check_session(st, headers, &caller, &id)?;
    check_protocol_version(headers, &id)?;
    match method {
        "ping" => Ok(json_rpc_result(&id, json!({}))),
        "tools/list" => list_tools(st, &caller, &id, params).await,
        "tools/call" => call_tool(st, &caller, &id, params).await,
        other => Err(McpError::new(
            StatusCode::OK,
            ErrorCode::METHOD_NOT_FOUND.0,
            format!("method `{other}` is not supported; this server offers tools (tools/list, tools/call) and ping"),
        )
        .with_id(&id)),
    }
}

fn check_origin(st: &AppState, headers: &HeaderMap) -> McpResult<()> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let own = url::Url::parse(&st.config.ingress.public_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let allowed = origin == own
        || st
            .config
            .ingress
            .allowed_origins
            .iter()
            .any(|o| o.trim_end_matches('/') == origin);
    if allowed {
        Ok(())
    } else {
        Err(McpError::invalid_request(
            StatusCode::FORBIDDEN,
            format!(
                "Origin `{origin}` is not allowed; add it to ingress.allowed_origins (TENGINE_INGRESS__ALLOWED_ORIGINS)"
            ),
        ))
    }
}

fn unauthorized(st: &AppState, message: &str, token_given: bool) -> McpError {
    let mut err = McpError::new(StatusCode::UNAUTHORIZED, CODE_UNAUTHORIZED, message);
    let metadata = format!(
        "{}/.well-known/oauth-protected-resource",
        st.config.ingress.public_url.trim_end_matches('/')
    );
    err.www_authenticate = Some(if token_given {
        format!("Bearer error=\"invalid_token\", resource_metadata=\"{metadata}\"")
    } else {
        format!("Bearer resource_metadata=\"{metadata}\"")
    });
    err
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn authenticate(st: &AppState, headers: &HeaderMap) -> McpResult<Caller> {
    let Some(token) = bearer(headers) else {
        return Err(unauthorized(
            st,
            "missing credentials: send `Authorization: Bearer tengine_…` with a project API key",
            false,
        ));
    };
    if !credentials::looks_like_api_key(token) {
        return Err(unauthorized(
            st,
            "the bearer token is not a Tengine API key (`tengine_…`)",
            true,
        ));
    }
    match store::authenticate_api_key(&st.pool, token).await {
        Ok(Some(caller)) => Ok(caller),
        Ok(None) => Err(unauthorized(st, "the API key is unknown or revoked", true)),
        Err(err) => {
            tracing::error!(error = %err, "authenticating an API key");
            Err(McpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::INTERNAL_ERROR.0,
                "credentials could not be checked right now; retry",
            ))
        }
    }
}

/// True when a comma-separated Accept header allows `wanted` (`type/subtype`).
fn accepts(accept: &str, wanted: &str) -> bool {
    let (wanted_type, _) = wanted.split_once('/').unwrap_or((wanted, ""));
    accept.split(',').any(|range| {
        let range = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        range == wanted || range == "*/*" || range == format!("{wanted_type}/*")
    })
}

fn check_accept(headers: &HeaderMap) -> McpResult<()> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accepts(accept, "application/json") && accepts(accept, "text/event-stream") {
        Ok(())
    } else {
        Err(McpError::invalid_request(
            StatusCode::NOT_ACCEPTABLE,
            "the Accept header must list both application/json and text/event-stream",
        ))
    }
}

fn check_content_type(headers: &HeaderMap) -> McpResult<()> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(McpError::invalid_request(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ))
    }
}

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> McpResult<bytes::Bytes> {
    let too_large = || {
        McpError::invalid_request(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds {limit} bytes (ingress.max_request_bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| too_large())
}

fn check_session(st: &AppState, headers: &HeaderMap, caller: &Caller, id: &Value) -> McpResult<()> {
    let Some(session) = headers.get(HEADER_SESSION_ID) else {
        return Err(McpError::invalid_request(
            StatusCode::BAD_REQUEST,
            "missing Mcp-Session-Id header: send initialize first and echo the session id it returns",
        )
        .with_id(id));
    };
    let valid = session
        .to_str()
        .ok()
        .and_then(|s| st.sessions.verify(s, caller.api_key_id))
        .is_some();
    if valid {
        Ok(())
    } else {
        Err(McpError::invalid_request(
            StatusCode::NOT_FOUND,
            "unknown or expired session: send initialize to start a new one",
        )
        .with_id(id))
    }
}

fn check_protocol_version(headers: &HeaderMap, id: &Value) -> McpResult<()> {
    let Some(version) = headers.get(HEADER_PROTOCOL_VERSION) else {
        // Absent: the client speaks 2025-03-26, which we support.
        return Ok(());
    };
    let version = version.to_str().unwrap_or_default();
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(McpError::invalid_request(
            StatusCode::BAD_REQUEST,
            format!(
                "unsupported MCP-Protocol-Version `{version}`; supported: {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        )
        .with_id(id))
    }
}

fn negotiate(requested: &str) -> ProtocolVersion {
    match requested {
        "2025-06-18" => ProtocolVersion::V_2025_06_18,
        "2025-03-26" => ProtocolVersion::V_2025_03_26,
        _ => ProtocolVersion::V_2025_11_25,
    }
}

fn initialize(st: &AppState, caller: &Caller, id: &Value, params: Option<Value>) -> McpResult<Response> {
    let params: InitializeRequestParams = serde_json::from_value(params.unwrap_or(Value::Null))
        .map_err(|e| McpError::invalid_params(id, format!("initialize params are malformed: {e}")))?;
    let version = negotiate(params.protocol_version.to_string().as_str());
    let mut capabilities = ServerCapabilities::default();
    let mut tools = ToolsCapability::default();
    tools.list_changed = Some(false);
    capabilities.tools = Some(tools);
    let result = InitializeResult::new(capabilities)
        .with_protocol_version(version.clone())
        .with_server_info(Implementation::new("tengine", tengine_core::VERSION).with_title("Tengine"))
        .with_instructions("Tools of this project are HTTP APIs registered in Tengine. Each call is recorded with a Run ID (see _meta).");
    let session = st.sessions.issue(caller.api_key_id, &version.to_string());
    let mut response = json_rpc_result(
        id,
        serde_json::to_value(result).map_err(|e| McpError::internal(id, e.to_string()))?,
    );
    if let Ok(value) = HeaderValue::from_str(&session) {
        response.headers_mut().insert(HEADER_SESSION_ID, value);
    }
    Ok(response)
}

const CURSOR_TAG: &str = "t1:";

fn encode_cursor(last_name: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_TAG}{last_name}"))
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    raw.strip_prefix(CURSOR_TAG).map(str::to_string)
}

fn mcp_tool(tool: &ToolDefinition) -> Tool {
    let schema = tool.input_schema.as_object().cloned().unwrap_or_default();
    let mut out = Tool::new_with_raw(tool.name.clone(), None, Arc::new(schema));
    if !tool.description.is_empty() {
        out.description = Some(tool.description.clone().into());
    }
    out
}

async fn list_tools(st: &AppState, caller: &Caller, id: &Value, params: Option<Value>) -> McpResult<Response> {
    let params: PaginatedRequestParams = match params {
        None | Some(Value::Null) => PaginatedRequestParams::default(),
        Some(p) => serde_json::from_value(p)
            .map_err(|e| McpError::invalid_params(id, format!("tools/list params are malformed: {e}")))?,
    };
    let after = match params.cursor.as_deref() {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            McpError::invalid_params(
                id,
                "invalid cursor: pass the nextCursor of a previous tools/list unchanged",
            )
        })?),
    };
    let page = st.config.ingress.tools_page_size.max(1);
    let mut tools = store::list_tools(&st.pool, caller.project_id, true, after.as_deref(), page as i64 + 1)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "listing tools");
            McpError::internal(id, "tools could not be listed right now; retry")
        })?;
    let next_cursor = (tools.len() > page).then(|| {
        tools.truncate(page);
        encode_cursor(&tools[page - 1].name)
    });
    let mut result = json!({"tools": tools.iter().map(mcp_tool).collect::<Vec<_>>()});
    if let Some(cursor) = next_cursor {
        result["nextCursor"] = json!(cursor);
    }
    Ok(json_rpc_result(id, result))
}

fn tool_result(is_error: bool, text: String, meta: Map<String, Value>) -> Value {
    let mut result = if is_error {
        CallToolResult::error(vec![ContentBlock::text(text)])
    } else {
        CallToolResult::success(vec![ContentBlock::text(text)])
    };
    // The 2026 `resultType` discriminator means nothing to 2025-11-25 clients.
    result.result_type = None;
    let mut value = serde_json::to_value(result).unwrap_or_else(|_| json!({"content": [], "isError": true}));
    value["_meta"] = Value::Object(meta);
    value
}

fn run_meta(run_id: Uuid, status: RunStatus, http_status: Option<u16>) -> Map<String, Value> {
    let mut meta = Map::new();
    meta.insert(META_RUN_ID.into(), json!(run_id));
    meta.insert(META_STATUS.into(), json!(status.as_str()));
    if let Some(code) = http_status {
        meta.insert(META_HTTP_STATUS.into(), json!(code));
    }
    meta
}

fn excerpt(body: &str) -> String {
    if body.chars().count() <= ERROR_EXCERPT_CHARS {
        body.to_string()
    } else {
        let cut: String = body.chars().take(ERROR_EXCERPT_CHARS).collect();
        format!("{cut}… (truncated)")
    }
}

/// What the model sees for a finished run.
pub fn outcome_result(outcome: &RunOutcome) -> Value {
    let http_status = outcome.response.as_ref().map(|r| r.http_status);
    let meta = run_meta(outcome.run_id, outcome.status, http_status);
    if outcome.status == RunStatus::Succeeded {
        let body = outcome.response.as_ref().map(|r| r.body.clone()).unwrap_or_default();
        return tool_result(false, body, meta);
    }
    let detail = outcome.error.clone().unwrap_or_else(|| "the run failed".into());
    let text = match (outcome.error_class, &outcome.response) {
        (Some(ErrorClass::UpstreamStatus), Some(response)) => format!(
            "The API behind tool `{}` answered HTTP {}: {}",
            outcome.tool_name,
            response.http_status,
            excerpt(&response.body)
        ),
        _ => format!("Tool `{}` failed: {detail}", outcome.tool_name),
    };
    tool_result(true, text, meta)
}

fn truncate_name(name: &str) -> String {
    name.chars().take(MAX_TOOL_NAME_IN_HISTORY).collect()
}

async fn reject(st: &AppState, caller: &Caller, run_id: Uuid, tool_name: &str, class: ErrorClass, error: &str) {
    st.dispatcher
        .log(
            caller.project_id,
            RunEvent::Rejected {
                run_id,
                caller: caller.clone(),
                tool_name: truncate_name(tool_name),
                accepted_at: Utc::now(),
                error_class: class,
                error: error.to_string(),
            },
        )
        .await;
}

fn reserved_variables(caller: &Caller, run_id: Uuid) -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("project.id", json!(caller.project_id)),
        ("integration.id", json!(caller.integration_id)),
        ("run.id", json!(run_id)),
    ])
}

async fn call_tool(st: &AppState, caller: &Caller, id: &Value, params: Option<Value>) -> McpResult<Response> {
    let params: CallToolRequestParams = serde_json::from_value(params.unwrap_or(Value::Null)).map_err(|e| {
        McpError::invalid_params(
            id,
            format!("tools/call params are malformed ({e}); expected {{\"name\": string, \"arguments\": object}}"),
        )
    })?;
    let run_id = Uuid::now_v7();
    let name = params.name.to_string();
    let arguments = params.arguments.unwrap_or_default();

    let tool = match store::get_tool(&st.pool, caller.project_id, &name).await {
        Ok(tool) if tool.enabled => tool,
        Ok(_) | Err(StoreError::NotFound) => {
            let message = format!("Unknown tool: `{}`", truncate_name(&name));
            reject(st, caller, run_id, &name, ErrorClass::UnknownTool, &message).await;
            let mut err = McpError::invalid_params(id, format!("{message}; call tools/list for the available tools"));
            err.data = Some(json!({ META_RUN_ID: run_id }));
            return Err(err);
        }
        Err(err) => {
            tracing::error!(error = %err, "loading a tool");
            return Err(McpError::internal(id, "the tool could not be loaded right now; retry"));
        }
    };

    // Bad arguments are a tool execution error (SEP-1303, MCP 2025-11-25), so the
    // model sees the message and can correct itself.
    let args_value = Value::Object(arguments);
    let problems = st
        .validators
        .check(&tool, &args_value)
        .map_err(|e| McpError::internal(id, e))?;
    let arguments = match args_value {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let problem = if problems.is_empty() {
        let ctx = templates::Context {
            arguments: &arguments,
            reserved: reserved_variables(caller, run_id),
        };
        templates::render_request(&tool, &ctx).err().map(|e| e.to_string())
    } else {
        Some(problems.join("; "))
    };
    if let Some(problem) = problem {
        let message = format!("Invalid arguments for tool `{}`: {problem}", tool.name);
        reject(st, caller, run_id, &tool.name, ErrorClass::InvalidArguments, &message).await;
        let result = tool_result(true, message, run_meta(run_id, RunStatus::Rejected, None));
        return Ok(json_rpc_result(id, result));
    }

    let command = ExecuteCommand {
        run_id,
        caller: caller.clone(),
        tool_id: tool.id,
        tool_name: tool.name.clone(),
        tool_version: tool.version,
        arguments,
        accepted_at: Utc::now(),
        reply_to: Some(st.dispatcher.reply_subject(run_id)),
    };
    let waiting = st.dispatcher.register(run_id);
    if let Err(err) = st.dispatcher.enqueue(&command).await {
        tracing::error!(%run_id, error = %err, "queueing a run");
        return Err(McpError::internal(
            id,
            "the call could not be queued (the execution queue is unavailable or full); it was not run: retry later",
        ));
    }
    tracing::info!(%run_id, tool = %tool.name, project_id = %caller.project_id, "run accepted");

    let wait = Duration::from_millis(
        (tool.timeout_ms + st.config.ingress.call_wait_slack_ms).min(st.config.ingress.max_call_wait_ms),
    );
    let result = match st.dispatcher.wait(waiting, caller.project_id, wait).await {
        Some(outcome) => outcome_result(&outcome),
        None => tool_result(
            true,
            format!(
                "Run {run_id} did not finish within {} ms. It was accepted and will still complete; \
                 its outcome will be in run history (GET /v1/runs/{run_id}).",
                wait.as_millis()
            ),
            run_meta(run_id, RunStatus::Accepted, None),
        ),
    };
    Ok(json_rpc_result(id, result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_matching() {
        assert!(accepts("application/json, text/event-stream", "text/event-stream"));
        assert!(accepts("*/*", "application/json"));
        assert!(accepts("text/*;q=0.5", "text/event-stream"));
        assert!(!accepts("application/json", "text/event-stream"));
        assert!(!accepts("", "application/json"));
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        assert_eq!(decode_cursor(&encode_cursor("a.b")).as_deref(), Some("a.b"));
        assert!(decode_cursor("!!").is_none());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("other")).is_none());
    }
}

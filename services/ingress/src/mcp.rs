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

use std::sync::Arc;

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rmcp::model::{
    ErrorCode, Implementation, InitializeRequestParams, InitializeResult, PaginatedRequestParams, ProtocolVersion,
    ServerCapabilities, Tool, ToolsCapability,
};
use serde_json::{Value, json};
use tengine_control::{
    principals::{self, Principal},
    tools,
};
use tengine_core::{credentials, domain::ToolDefinition, prometheus};

use crate::{AppState, calls, idempotency, members, sessions, streams};

pub const HEADER_SESSION_ID: &str = "mcp-session-id";
pub const HEADER_PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// Revisions this server speaks, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// `_meta` key carrying the Run ID on every tools/call result.
pub const META_RUN_ID: &str = "tengine.dev/runId";
pub const META_STATUS: &str = "tengine.dev/status";
pub const META_HTTP_STATUS: &str = "tengine.dev/httpStatus";
/// Server-defined JSON-RPC code for authentication failures (HTTP 401). Not
/// -32001: the official SDKs use that for their own request timeouts.
pub const CODE_UNAUTHORIZED: i32 = -32040;

/// An MCP failure: HTTP status plus a JSON-RPC error object.
#[derive(Debug)]
pub struct McpError {
    status: StatusCode,
    id: Value,
    code: i32,
    message: String,
    pub(crate) data: Option<Value>,
    /// Response headers of this error (`WWW-Authenticate` on 401s, `Retry-After` on 429s).
    headers: Vec<(header::HeaderName, String)>,
}

impl McpError {
    pub(crate) fn new(status: StatusCode, code: i32, message: impl Into<String>) -> Self {
        Self {
            status,
            id: Value::Null,
            code,
            message: message.into(),
            data: None,
            headers: Vec::new(),
        }
    }

    pub(crate) fn with_id(mut self, id: &Value) -> Self {
        self.id = id.clone();
        self
    }

    fn invalid_request(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorCode::INVALID_REQUEST.0, message)
    }

    pub(crate) fn invalid_params(id: &Value, message: impl Into<String>) -> Self {
        Self::new(StatusCode::OK, ErrorCode::INVALID_PARAMS.0, message).with_id(id)
    }

    pub(crate) fn internal(id: &Value, message: impl Into<String>) -> Self {
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
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

pub(crate) type McpResult<T> = Result<T, McpError>;

pub(crate) fn json_rpc_result(id: &Value, result: Value) -> Response {
    Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

pub async fn post(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    match handle_post(&st, &headers, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// GET opens the server-to-client stream: `notifications/tools/list_changed` when
/// the project's tools change. With `Last-Event-ID` naming a tools/call stream it
/// resumes that call instead and delivers its result.
pub async fn get(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match handle_get(&st, &headers).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// DELETE ends the session on every instance.
pub async fn delete(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let result = async {
        check_host_and_origin(&st, &headers)?;
        let principal = authenticate(&st, &headers).await?;
        let session = check_session(&st, &headers, &principal, &Value::Null)?;
        if !st.key_limits.session_write(principal.caller.api_key_id) {
            return Err(too_many_session_writes(&st, &Value::Null));
        }
        let expires_at = st.sessions.expires_at(&session);
        st.session_states.end(&session, expires_at).await.map_err(|e| {
            tracing::error!(error = %e, "ending a session");
            McpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::INTERNAL_ERROR.0,
                "the session could not be ended right now; retry",
            )
        })?;
        Ok::<_, McpError>(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn handle_get(st: &Arc<AppState>, headers: &HeaderMap) -> McpResult<Response> {
    check_host_and_origin(st, headers)?;
    let principal = authenticate(st, headers).await?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !accepts(accept, "text/event-stream") {
        return Err(McpError::invalid_request(
            StatusCode::NOT_ACCEPTABLE,
            "the GET stream is text/event-stream: send `Accept: text/event-stream`",
        ));
    }
    let session = check_session(st, headers, &principal, &Value::Null)?;
    check_protocol_version(headers, &Value::Null)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(streams::EventId::decode);
    // One slot per open stream, held by its task until the stream ends.
    let Some(slot) = st.key_limits.open_stream(principal.caller.api_key_id) else {
        return Err(McpError::invalid_request(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this API key already holds {} open streams on this server (ingress.max_streams_per_key): close \
                 one first",
                st.config.ingress.max_streams_per_key
            ),
        ));
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    match resume {
        Some(event_id) => {
            let st = st.clone();
            tokio::spawn(async move {
                calls::resume(st, principal.caller, event_id, tx).await;
                drop(slot);
            });
        }
        None => {
            let mut changes = st.tool_changes.subscribe();
            let shutdown = st.shutdown.clone();
            let project_id = principal.caller.project_id;
            let states = st.session_states.clone();
            let mut ends = states.ends();
            let key = sessions::SessionStates::key(&session);
            tokio::spawn(async move {
                let _slot = slot;
                let changed = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tx.closed() => break,
                        // A DELETE (on any instance) ends the session's stream too.
                        ended = ends.recv() => match ended {
                            Ok(ended) if ended == key => break,
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                if states.get(&session).ended { break }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        },
                        change = changes.recv() => {
                            let relevant = match change {
                                Ok(project) => project == project_id,
                                // Missed some: telling the client to re-list is always safe.
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                            };
                            if relevant && tx.send(streams::message(None, &changed)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    }
    Ok(streams::response(rx))
}

/// The metric label for a JSON-RPC method: known ones by name, anything else as
/// `other` (a client must not be able to create time series at will).
fn method_label(method: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "initialize",
        "notifications/initialized",
        "notifications/cancelled",
        "ping",
        "tools/list",
        "tools/call",
        "logging/setLevel",
        "completion/complete",
        "server/discover",
    ];
    KNOWN.iter().find(|m| **m == method).copied().unwrap_or("other")
}

async fn handle_post(st: &Arc<AppState>, headers: &HeaderMap, body: Body) -> McpResult<Response> {
    check_host_and_origin(st, headers)?;
    let authenticating = std::time::Instant::now();
    let principal = authenticate(st, headers).await?;
    prometheus::stage(prometheus::INGRESS_STAGE_SECONDS, "auth", authenticating);
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
    metrics::counter!(prometheus::MCP_REQUESTS, "method" => method_label(method)).increment(1);

    let Some(id) = id else {
        // A notification: validate the session like any other message, then accept.
        if method == "notifications/initialized" && !headers.contains_key(HEADER_SESSION_ID) {
            return Ok(StatusCode::ACCEPTED.into_response());
        }
        let session = check_session(st, headers, &principal, &Value::Null)?;
        if method == "notifications/cancelled"
            && let Some(request_id) = params.as_ref().and_then(|p| p.get("requestId"))
        {
            st.dispatcher
                .request_cancel(&calls::call_key(&session, request_id))
                .await;
        }
        return Ok(StatusCode::ACCEPTED.into_response());
    };

    match method {
        "initialize" => return initialize(st, &principal, &id, params),
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

    let session = check_session(st, headers, &principal, &id)?;
    check_protocol_version(headers, &id)?;
    match method {
        "ping" => Ok(json_rpc_result(&id, json!({}))),
        "tools/list" => list_tools(st, &principal, &id, params).await,
        "tools/call" => {
            let key = headers
                .get(idempotency::HEADER)
                .map(|v| {
                    v.to_str()
                        .ok()
                        .filter(|k| !k.is_empty() && k.len() <= idempotency::MAX_KEY_LEN)
                        .map(str::to_string)
                        .ok_or_else(|| {
                            McpError::invalid_request(
                                StatusCode::BAD_REQUEST,
                                format!(
                                    "Idempotency-Key must be 1-{} visible ASCII characters",
                                    idempotency::MAX_KEY_LEN
                                ),
                            )
                            .with_id(&id)
                        })
                })
                .transpose()?;
            let trace = tengine_core::telemetry::extract_http(headers);
            calls::call_tool(st.clone(), principal, session, id, params, key, trace).await
        }
        "logging/setLevel" => {
            if !st.key_limits.session_write(principal.caller.api_key_id) {
                return Err(too_many_session_writes(st, &id));
            }
            set_log_level(st, &session, &id, params).await
        }
        // No prompts or resource templates here, so there is never anything to complete.
        "completion/complete" => Ok(json_rpc_result(
            &id,
            json!({"completion": {"values": [], "total": 0, "hasMore": false}}),
        )),
        other => Err(McpError::new(
            StatusCode::OK,
            ErrorCode::METHOD_NOT_FOUND.0,
            format!("method `{other}` is not supported; this server offers tools (tools/list, tools/call), logging/setLevel and ping"),
        )
        .with_id(&id)),
    }
}

async fn set_log_level(st: &AppState, session: &str, id: &Value, params: Option<Value>) -> McpResult<Response> {
    let level = params
        .as_ref()
        .and_then(|p| p.get("level"))
        .and_then(Value::as_str)
        .filter(|l| sessions::log_level_rank(l).is_some())
        .ok_or_else(|| {
            McpError::invalid_params(
                id,
                format!("params.level must be one of: {}", sessions::LOG_LEVELS.join(", ")),
            )
        })?;
    let expires_at = st.sessions.expires_at(session);
    st.session_states
        .set_log_level(session, level, expires_at)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "storing a log level");
            McpError::internal(id, "the log level could not be stored right now; retry")
        })?;
    Ok(json_rpc_result(id, json!({})))
}

/// 429: a key's session writes (DELETE, logging/setLevel) over its per-second limit.
fn too_many_session_writes(st: &AppState, id: &Value) -> McpError {
    let mut err = McpError::invalid_request(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many session writes (DELETE, logging/setLevel) for this API key: at most {} per second \
             (ingress.session_writes_per_second); retry in a second",
            st.config.ingress.session_writes_per_second
        ),
    )
    .with_id(id);
    err.headers.push((header::RETRY_AFTER, "1".into()));
    err
}

/// True for names that only ever reach this machine.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Host (without port) of a `scheme://host[:port]` origin or a `host[:port]` value.
fn host_of(value: &str) -> Option<String> {
    let with_scheme = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    url::Url::parse(&with_scheme).ok()?.host_str().map(str::to_string)
}

/// DNS-rebinding protection: the Host must be this server's public host, an
/// allowed host or a loopback name; a browser Origin must be this server's, an
/// allowed origin or a loopback one. Failures are 403.
fn check_host_and_origin(st: &AppState, headers: &HeaderMap) -> McpResult<()> {
    let public = url::Url::parse(&st.config.ingress.public_url).ok();
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        let name = host_of(host).unwrap_or_default();
        let allowed = is_loopback_host(&name)
            || public
                .as_ref()
                .and_then(|u| u.host_str())
                .is_some_and(|h| h.eq_ignore_ascii_case(&name))
            || st
                .config
                .ingress
                .allowed_hosts
                .iter()
                .any(|h| h == "*" || h.eq_ignore_ascii_case(&name) || h.eq_ignore_ascii_case(host));
        if !allowed {
            return Err(McpError::invalid_request(
                StatusCode::FORBIDDEN,
                format!(
                    "Host `{host}` is not served here; add it to ingress.allowed_hosts (TENGINE_INGRESS__ALLOWED_HOSTS)"
                ),
            ));
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let own = public.map(|u| u.origin().ascii_serialization()).unwrap_or_default();
    let allowed = origin == own
        || host_of(origin).is_some_and(|h| is_loopback_host(&h))
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
    let challenge = if token_given {
        format!("Bearer error=\"invalid_token\", resource_metadata=\"{metadata}\"")
    } else {
        format!("Bearer resource_metadata=\"{metadata}\"")
    };
    err.headers.push((header::WWW_AUTHENTICATE, challenge));
    err
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn authenticate(st: &AppState, headers: &HeaderMap) -> McpResult<Principal> {
    let Some(token) = bearer(headers) else {
        return Err(unauthorized(
            st,
            "missing credentials: send `Authorization: Bearer tengine_…` (API key) or `Bearer tng_mst_…` (member session)",
            false,
        ));
    };
    let found = if token.starts_with(members::TOKEN_PREFIX) {
        let (api_key_id, member) = st
            .members
            .verify(token)
            .map_err(|e| unauthorized(st, &e.to_string(), true))?;
        principals::authenticate_member(&st.pool, api_key_id, member).await
    } else if credentials::looks_like_api_key(token) {
        principals::authenticate_api_key(&st.pool, token).await
    } else {
        return Err(unauthorized(
            st,
            "the bearer token is neither a Tengine API key (`tengine_…`) nor a member session (`tng_mst_…`)",
            true,
        ));
    };
    match found {
        Ok(Some(principal)) if !principal.may_call() => Err(McpError::new(
            StatusCode::FORBIDDEN,
            CODE_UNAUTHORIZED,
            "this API key has no `call` scope (it may only read run history and usage): use a key created with \
             \"scopes\": [\"call\"] for MCP",
        )),
        Ok(Some(principal)) => Ok(principal),
        Ok(None) => Err(unauthorized(
            st,
            "the credential is unknown or revoked (API key, integration or member sessions)",
            true,
        )),
        Err(err) => {
            tracing::error!(error = %err, "authenticating a credential");
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

/// The request's session id, if it is valid, unexpired, not ended and opened by this caller's key.
fn check_session(st: &AppState, headers: &HeaderMap, principal: &Principal, id: &Value) -> McpResult<String> {
    let Some(session) = headers.get(HEADER_SESSION_ID) else {
        return Err(McpError::invalid_request(
            StatusCode::BAD_REQUEST,
            "missing Mcp-Session-Id header: send initialize first and echo the session id it returns",
        )
        .with_id(id));
    };
    let session = session.to_str().unwrap_or_default();
    let caller = &principal.caller;
    let member = caller.member.as_ref().map(|m| m.id.as_str());
    let valid =
        st.sessions.verify(session, caller.api_key_id, member).is_some() && !st.session_states.get(session).ended;
    if valid {
        Ok(session.to_string())
    } else {
        Err(McpError::invalid_request(
            StatusCode::NOT_FOUND,
            "unknown, expired or ended session: send initialize to start a new one",
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

fn initialize(st: &AppState, principal: &Principal, id: &Value, params: Option<Value>) -> McpResult<Response> {
    let params: InitializeRequestParams = serde_json::from_value(params.unwrap_or(Value::Null))
        .map_err(|e| McpError::invalid_params(id, format!("initialize params are malformed: {e}")))?;
    let version = negotiate(params.protocol_version.to_string().as_str());
    let mut capabilities = ServerCapabilities::default();
    let mut tools = ToolsCapability::default();
    tools.list_changed = Some(true);
    capabilities.tools = Some(tools);
    capabilities.logging = Some(Default::default());
    capabilities.completions = Some(Default::default());
    let result = InitializeResult::new(capabilities)
        .with_protocol_version(version.clone())
        .with_server_info(Implementation::new("tengine", tengine_core::VERSION).with_title("Tengine"))
        .with_instructions("Tools of this project are HTTP APIs registered in Tengine. Each call is recorded with a Run ID (see _meta).");
    let caller = &principal.caller;
    let member = caller.member.as_ref().map(|m| m.id.as_str());
    let session = st.sessions.issue(caller.api_key_id, member, &version.to_string());
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
    out.title = tool.title.clone();
    out.output_schema = tool
        .output_schema
        .as_ref()
        .and_then(Value::as_object)
        .map(|o| Arc::new(o.clone()));
    // Same field names on both sides; a round trip keeps us off rmcp's non-exhaustive constructor.
    out.annotations = tool
        .annotations
        .as_ref()
        .and_then(|a| serde_json::to_value(a).ok())
        .and_then(|v| serde_json::from_value(v).ok());
    out
}

async fn list_tools(st: &AppState, principal: &Principal, id: &Value, params: Option<Value>) -> McpResult<Response> {
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
    // Tools the caller may not use are hidden; keep reading until a page is full.
    let mut tools = Vec::with_capacity(page.saturating_add(1));
    let mut after = after;
    loop {
        let batch = tools::list(
            &st.pool,
            principal.caller.project_id,
            true,
            after.as_deref(),
            i64::try_from(page).unwrap_or(i64::MAX).saturating_add(1),
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "listing tools");
            McpError::internal(id, "tools could not be listed right now; retry")
        })?;
        let exhausted = batch.len() <= page;
        after = batch.last().map(|t| t.name.clone());
        tools.extend(batch.into_iter().filter(|t| principal.may_use(t)));
        if exhausted || tools.len() > page {
            break;
        }
    }
    let next_cursor = (tools.len() > page).then(|| {
        tools.truncate(page);
        tools.last().map(|t| encode_cursor(&t.name)).unwrap_or_default()
    });
    let mut result = json!({"tools": tools.iter().map(mcp_tool).collect::<Vec<_>>()});
    if let Some(cursor) = next_cursor {
        result["nextCursor"] = json!(cursor);
    }
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

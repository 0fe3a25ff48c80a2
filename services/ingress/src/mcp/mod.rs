//! The MCP endpoint (`/mcp`): Streamable HTTP, tools only, two revisions chosen
//! per request: 2025-11-25 (and older) sessions here, 2026-07-28 stateless requests
//! in [`modern`].
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
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tengine_control::principals::Principal;
use tengine_core::{errors, prometheus};

mod auth;
mod listen;
pub mod modern;
mod session;
mod tools_list;
mod transport;

use auth::authenticate;
pub use auth::bearer;
use session::{check_session, initialize};
use tools_list::list_tools;
use transport::{accepts, check_accept, check_content_type, check_host_and_origin, check_protocol_version, read_body};

use crate::{
    AppState, calls,
    calls::idempotency,
    jsonrpc::{self, Incoming, RpcError, RpcResult},
    sessions, streams,
};

pub const HEADER_SESSION_ID: &str = "mcp-session-id";
pub const HEADER_PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// Revisions this server speaks, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];

/// Which MCP resource a request came to: the shared `/mcp` (`None`) or a
/// project's own `/mcp/{project_id}`, the resource its OAuth tokens are for.
pub type Endpoint = Option<uuid::Uuid>;

pub async fn post(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    post_to(&st, None, &headers, body).await
}

pub async fn project_post(
    State(st): State<Arc<AppState>>,
    Path(project): Path<uuid::Uuid>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    post_to(&st, Some(project), &headers, body).await
}

pub async fn project_get(
    State(st): State<Arc<AppState>>,
    Path(project): Path<uuid::Uuid>,
    headers: HeaderMap,
) -> Response {
    get_from(&st, Some(project), &headers).await
}

pub async fn project_delete(
    State(st): State<Arc<AppState>>,
    Path(project): Path<uuid::Uuid>,
    headers: HeaderMap,
) -> Response {
    delete_at(&st, Some(project), &headers).await
}

async fn post_to(st: &Arc<AppState>, endpoint: Endpoint, headers: &HeaderMap, body: Body) -> Response {
    match handle_post(st, endpoint, headers, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// GET opens the server-to-client stream: `notifications/tools/list_changed` when
/// the project's tools change. With `Last-Event-ID` naming a tools/call stream it
/// resumes that call instead and delivers its result.
pub async fn get(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    get_from(&st, None, &headers).await
}

async fn get_from(st: &Arc<AppState>, endpoint: Endpoint, headers: &HeaderMap) -> Response {
    if let Some(refused) = not_in_modern(headers) {
        return refused;
    }
    match handle_get(st, endpoint, headers).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// DELETE ends the session on every instance.
pub async fn delete(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    delete_at(&st, None, &headers).await
}

async fn delete_at(st: &Arc<AppState>, endpoint: Endpoint, headers: &HeaderMap) -> Response {
    if let Some(refused) = not_in_modern(headers) {
        return refused;
    }
    let result = async {
        check_host_and_origin(st, headers)?;
        let principal = authenticate(st, endpoint, headers).await?;
        let session = check_session(st, headers, &principal, &Value::Null)?;
        if !st.key_limits.session_write(principal.caller.api_key_id) {
            return Err(too_many_session_writes(st, &Value::Null));
        }
        let expires_at = st.sessions.expires_at(&session);
        st.session_states.end(&session, expires_at).await.map_err(|e| {
            tracing::error!(error = %e, "ending a session");
            RpcError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                errors::INTERNAL_ERROR,
                "the session could not be ended right now; retry",
            )
        })?;
        Ok::<_, RpcError>(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// GET and DELETE belong to sessions: a 2026-07-28 request gets 405 (it has no
/// GET stream: `subscriptions/listen` replaces it; no session to delete).
fn not_in_modern(headers: &HeaderMap) -> Option<Response> {
    let version = headers.get(HEADER_PROTOCOL_VERSION)?.to_str().ok()?.trim();
    if SUPPORTED_VERSIONS.contains(&version) {
        return None;
    }
    let mut refused = RpcError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        errors::RPC_INVALID_REQUEST,
        format!("revision {version} has no GET stream and no sessions: POST subscriptions/listen for notifications"),
    );
    refused.headers.push((header::ALLOW, "POST".into()));
    Some(refused.into_response())
}

async fn handle_get(st: &Arc<AppState>, endpoint: Endpoint, headers: &HeaderMap) -> RpcResult<Response> {
    check_host_and_origin(st, headers)?;
    let principal = authenticate(st, endpoint, headers).await?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !accepts(accept, "text/event-stream") {
        return Err(RpcError::invalid_request(
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
        return Err(RpcError::invalid_request(
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

async fn handle_post(st: &Arc<AppState>, endpoint: Endpoint, headers: &HeaderMap, body: Body) -> RpcResult<Response> {
    let (principal, bytes) = match admit_post(st, endpoint, headers, body).await {
        Ok(admitted) => admitted,
        Err(err) => return Ok(closing(err.into_response())),
    };
    let incoming = jsonrpc::parse(&bytes)?;
    if let Incoming::Request { method, .. } | Incoming::Notification { method, .. } = &incoming {
        metrics::counter!(prometheus::MCP_REQUESTS, "method" => method_label(method)).increment(1);
    }
    if modern::is_modern(headers, &incoming) {
        return modern::handle(st, headers, principal, incoming).await;
    }
    match incoming {
        // A client's answer to a server request (a client approval's
        // elicitation/create): to the call waiting for it, on whichever instance.
        Incoming::Response { id, message } => {
            let session = check_session(st, headers, &principal, &Value::Null)?;
            calls::deliver_answer(st, &session, &id, &message).await;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Incoming::Notification { method, params } => notification(st, headers, &principal, &method, params).await,
        Incoming::Request { id, method, params } => request(st, headers, principal, id, &method, params).await,
    }
}

/// The checks a POST passes before its body is read, then the body.
async fn admit_post(
    st: &Arc<AppState>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> RpcResult<(Principal, axum::body::Bytes)> {
    check_host_and_origin(st, headers)?;
    let authenticating = std::time::Instant::now();
    let principal = authenticate(st, endpoint, headers).await?;
    prometheus::stage(prometheus::INGRESS_STAGE_SECONDS, "auth", authenticating);
    check_accept(headers)?;
    check_content_type(headers)?;
    let bytes = read_body(body, headers, st.config.ingress.max_request_bytes).await?;
    Ok((principal, bytes))
}

/// A refusal sent before the request body was read (or while it was too large):
/// the connection cannot carry another request, so it says so. Without it a
/// client would send its next request (the retry with a token after a 401) on a
/// connection the server is closing, and get no answer.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    response
}

/// A notification: the session is checked like for any other message, then 202.
async fn notification(
    st: &AppState,
    headers: &HeaderMap,
    principal: &Principal,
    method: &str,
    params: Option<Value>,
) -> RpcResult<Response> {
    if method == "notifications/initialized" && !headers.contains_key(HEADER_SESSION_ID) {
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let session = check_session(st, headers, principal, &Value::Null)?;
    if method == "notifications/cancelled"
        && let Some(request_id) = params.as_ref().and_then(|p| p.get("requestId"))
    {
        st.dispatcher
            .request_cancel(&calls::call_key(&session, request_id))
            .await;
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// A request of a 2025-11-25 (or older) session, by method.
async fn request(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    principal: Principal,
    id: Value,
    method: &str,
    params: Option<Value>,
) -> RpcResult<Response> {
    match method {
        "initialize" => return initialize(st, &principal, &id, params),
        // Revision 2026-07-28's discovery without its request metadata: not a modern
        // request, and nothing a session offers; the id is echoed.
        "server/discover" => {
            return Err(RpcError::new(
                StatusCode::OK,
                errors::METHOD_NOT_FOUND,
                format!(
                    "server/discover is a method of revision 2026-07-28: send it with params._meta[\"{}\"] and the \
                     MCP-Protocol-Version header, or use initialize for 2025-11-25",
                    modern::META_PROTOCOL_VERSION
                ),
            )
            .with_id(&id));
        }
        _ => {}
    }
    let session = check_session(st, headers, &principal, &id)?;
    check_protocol_version(headers, &id)?;
    match method {
        "ping" => Ok(jsonrpc::result(&id, json!({}))),
        "tools/list" => list_tools(st, &principal, &id, params).await,
        "tools/call" => {
            let request = calls::CallRequest {
                idempotency_key: idempotency::from_header(headers, &id)?,
                trace: tengine_core::telemetry::extract_http(headers),
                era: calls::Era::Legacy { session },
                principal,
                id,
                params,
            };
            calls::call_tool(st.clone(), request).await
        }
        "logging/setLevel" => {
            if !st.key_limits.session_write(principal.caller.api_key_id) {
                return Err(too_many_session_writes(st, &id));
            }
            set_log_level(st, &session, &id, params).await
        }
        // No prompts or resource templates here, so there is never anything to complete.
        "completion/complete" => Ok(jsonrpc::result(
            &id,
            json!({"completion": {"values": [], "total": 0, "hasMore": false}}),
        )),
        other => Err(RpcError::new(
            StatusCode::OK,
            errors::METHOD_NOT_FOUND,
            format!(
                "method `{other}` is not supported; this server offers tools (tools/list, tools/call), \
                 logging/setLevel and ping"
            ),
        )
        .with_id(&id)),
    }
}

async fn set_log_level(st: &AppState, session: &str, id: &Value, params: Option<Value>) -> RpcResult<Response> {
    let level = params
        .as_ref()
        .and_then(|p| p.get("level"))
        .and_then(Value::as_str)
        .filter(|l| sessions::log_level_rank(l).is_some())
        .ok_or_else(|| {
            RpcError::invalid_params(
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
            RpcError::internal(id, "the log level could not be stored right now; retry")
        })?;
    Ok(jsonrpc::result(id, json!({})))
}

/// 429: a key's session writes (DELETE, logging/setLevel) over its per-second limit.
fn too_many_session_writes(st: &AppState, id: &Value) -> RpcError {
    let mut err = RpcError::invalid_request(
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

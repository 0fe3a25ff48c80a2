//! MCP revision 2026-07-28 ("modern"), served beside 2025-11-25 on the same
//! endpoint and chosen per request (the spec's `basic/versioning.mdx`): a POST whose
//! `MCP-Protocol-Version` header names no handshake-era revision, or that carries
//! the per-request `_meta` protocol fields without the header, is served
//! statelessly here. No session, no `initialize`, no GET stream.
//!
//! Every request is checked in the order the conformance suite expects: `_meta`
//! (400, -32602), the request-metadata headers (400, -32020), the version (400,
//! -32022), the method (404, -32601); then the method's own checks. Every result
//! carries `resultType` and the server's identity in `_meta`.

use std::sync::Arc;

use axum::{
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Map, Value, json};
use tengine_control::principals::Principal;
use tengine_core::errors;

use super::{HEADER_PROTOCOL_VERSION, SUPPORTED_VERSIONS, tools_list};
use crate::{
    AppState,
    calls::{self, Era},
    jsonrpc::{self, Incoming, RpcError, RpcResult},
    results::decorate,
    tasks,
};

/// The revisions served on this path.
pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
pub const HEADER_METHOD: &str = "mcp-method";
pub const HEADER_NAME: &str = "mcp-name";
/// How long clients may cache `tools/list` (tool definitions are cached 5 s by the
/// ingress itself; a subscription announces changes at once).
const TOOLS_TTL_MS: u64 = 10_000;
/// How long clients may cache `server/discover`.
const DISCOVER_TTL_MS: u64 = 3_600_000;

/// Methods of this revision, as served here (everything else is 404, -32601).
const METHODS: &[&str] = &[
    "server/discover",
    "tools/list",
    "tools/call",
    "subscriptions/listen",
    "completion/complete",
    "tasks/get",
    "tasks/update",
    "tasks/cancel",
];

/// Whether a POST belongs to the modern revision.
pub(crate) fn is_modern(headers: &HeaderMap, incoming: &Incoming) -> bool {
    match headers.get(HEADER_PROTOCOL_VERSION) {
        Some(version) => version.to_str().is_ok_and(|v| !SUPPORTED_VERSIONS.contains(&v.trim())),
        None => match incoming {
            Incoming::Request { params, .. } | Incoming::Notification { params, .. } => params
                .as_ref()
                .and_then(|p| p.get("_meta"))
                .and_then(|m| m.get(META_PROTOCOL_VERSION))
                .is_some(),
            Incoming::Response { .. } => false,
        },
    }
}

/// The per-request `_meta` of this revision.
pub(crate) struct RequestMeta {
    pub version: String,
    pub capabilities: Map<String, Value>,
    pub log_level: Option<String>,
}

/// Handles a modern POST (the credential is already checked).
pub(crate) async fn handle(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    principal: Principal,
    incoming: Incoming,
) -> RpcResult<Response> {
    let Incoming::Request { id, method, params } = incoming else {
        // This revision defines no client notifications over HTTP: accepted and dropped.
        return Ok(StatusCode::ACCEPTED.into_response());
    };
    let meta = request_meta(&id, params.as_ref())?;
    check_headers(headers, &id, &method, params.as_ref(), &meta)?;
    if !MODERN_VERSIONS.contains(&meta.version.as_str()) {
        let mut err = RpcError::new(
            StatusCode::BAD_REQUEST,
            errors::UNSUPPORTED_VERSION,
            format!(
                "protocol version `{}` is not served; supported: {}",
                meta.version,
                MODERN_VERSIONS.join(", ")
            ),
        )
        .with_id(&id);
        err.data = Some(json!({"supported": MODERN_VERSIONS, "requested": meta.version}));
        return Err(err);
    }
    if !METHODS.contains(&method.as_str()) {
        return Err(RpcError::new(
            StatusCode::NOT_FOUND,
            errors::METHOD_NOT_FOUND,
            format!("method `{method}` is not served in revision 2026-07-28"),
        )
        .with_id(&id));
    }
    match method.as_str() {
        "server/discover" => Ok(complete(&id, discover())),
        "tools/list" => {
            let mut page = tools_list::tools_page(st, &principal, &id, params).await?;
            // The list depends on the credential: private to its authorization context.
            page["ttlMs"] = json!(TOOLS_TTL_MS);
            page["cacheScope"] = json!("private");
            Ok(complete(&id, page))
        }
        "tools/call" => {
            let request = calls::CallRequest {
                idempotency_key: calls::idempotency::from_header(headers, &id)?,
                trace: tengine_core::telemetry::extract_http(headers),
                era: Era::Modern {
                    log_level: meta.log_level,
                    capabilities: meta.capabilities,
                    param_headers: calls::param_headers::collect(headers),
                },
                principal,
                id,
                params,
            };
            calls::call_tool(st.clone(), request).await
        }
        "subscriptions/listen" => super::listen::listen(st, principal, id, params),
        "tasks/get" | "tasks/update" | "tasks/cancel" => {
            // The extension is declared per request; checked before the task is looked up.
            if !tasks::declared(&meta.capabilities) {
                return Err(RpcError::missing_capability(&id, tasks::required_capability(), &method));
            }
            let params = params.as_ref();
            let result = match method.as_str() {
                "tasks/get" => tasks::get(st, &principal, &id, params).await?,
                "tasks/cancel" => tasks::cancel(st, &principal, &id, params).await?,
                _ => tasks::update(st, &principal, &id, params).await?,
            };
            Ok(complete(&id, result))
        }
        // No prompts or resource templates here, so there is never anything to complete.
        _ => Ok(complete(
            &id,
            json!({"completion": {"values": [], "total": 0, "hasMore": false}}),
        )),
    }
}

/// `server/discover`: what this server speaks and offers.
fn discover() -> Value {
    json!({
        "supportedVersions": MODERN_VERSIONS,
        "capabilities": {
            "tools": {"listChanged": true},
            "completions": {},
            "logging": {},
            "extensions": {tasks::EXTENSION: {}},
        },
        "ttlMs": DISCOVER_TTL_MS,
        "cacheScope": "public",
    })
}

fn complete(id: &Value, result: Value) -> Response {
    jsonrpc::result(id, decorate(result))
}

/// `_meta` with the required protocol fields, else 400, -32602.
fn request_meta(id: &Value, params: Option<&Value>) -> RpcResult<RequestMeta> {
    let invalid = |what: &str| {
        RpcError::new(
            StatusCode::BAD_REQUEST,
            errors::INVALID_PARAMS,
            format!(
                "{what}: every request of revision 2026-07-28 carries params._meta with \
                 \"{META_PROTOCOL_VERSION}\" (a string) and \"{META_CLIENT_CAPABILITIES}\" (an object)"
            ),
        )
        .with_id(id)
    };
    let meta = params
        .and_then(|p| p.get("_meta"))
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("params._meta is missing"))?;
    let version = meta
        .get(META_PROTOCOL_VERSION)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("the protocol version is missing"))?;
    let capabilities = meta
        .get(META_CLIENT_CAPABILITIES)
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("the client capabilities are missing"))?;
    let log_level = match meta.get(META_LOG_LEVEL) {
        None => None,
        Some(Value::String(level)) if crate::sessions::log_level_rank(level).is_some() => Some(level.clone()),
        Some(_) => {
            return Err(RpcError::new(
                StatusCode::BAD_REQUEST,
                errors::INVALID_PARAMS,
                format!(
                    "{META_LOG_LEVEL} must be one of: {}",
                    crate::sessions::LOG_LEVELS.join(", ")
                ),
            )
            .with_id(id));
        }
    };
    Ok(RequestMeta {
        version: version.to_string(),
        capabilities: capabilities.clone(),
        log_level,
    })
}

/// The request-metadata headers against the body: `MCP-Protocol-Version`,
/// `Mcp-Method`, and `Mcp-Name` for the methods that name something (400, -32020).
fn check_headers(
    headers: &HeaderMap,
    id: &Value,
    method: &str,
    params: Option<&Value>,
    meta: &RequestMeta,
) -> RpcResult<()> {
    let mismatch =
        |message: String| RpcError::new(StatusCode::BAD_REQUEST, errors::HEADER_MISMATCH, message).with_id(id);
    let name_field = match method {
        "tools/call" => Some("name"),
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    };
    let expected = [
        (HEADER_PROTOCOL_VERSION, Some(meta.version.as_str())),
        (HEADER_METHOD, Some(method)),
        (
            HEADER_NAME,
            name_field.map(|field| {
                params
                    .and_then(|p| p.get(field))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            }),
        ),
    ];
    for (header, body) in expected {
        let Some(body) = body else { continue };
        let mut values = headers.get_all(header).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(mismatch(format!(
                "the {header} header must be sent exactly once (the body says `{body}`)"
            )));
        };
        let value = value
            .to_str()
            .ok()
            .and_then(|v| decode_header_value(v.trim()))
            .ok_or_else(|| mismatch(format!("the {header} header has invalid characters or encoding")))?;
        if value != body {
            return Err(mismatch(format!(
                "Header mismatch: {header} header value `{value}` does not match body value `{body}`"
            )));
        }
    }
    Ok(())
}

/// A header value as sent: plain, or `=?base64?…?=` (the UTF-8 bytes, standard
/// base64 with padding). `None` when the encoded form does not decode.
pub(crate) fn decode_header_value(value: &str) -> Option<String> {
    match value.strip_prefix("=?base64?").and_then(|v| v.strip_suffix("?=")) {
        Some(encoded) => String::from_utf8(STANDARD.decode(encoded).ok()?).ok(),
        None => Some(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_decode_their_base64_form_only() {
        assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
        assert_eq!(decode_header_value("=?base64?SGVsbG8=?=").as_deref(), Some("Hello"));
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(decode_header_value("=?base64?SGVsbG8?="), None, "bad padding");
        assert_eq!(decode_header_value("=?base64?SGVs!!!bG8=?="), None, "not base64");
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8=").as_deref(),
            Some("=?base64?SGVsbG8="),
            "no suffix: a literal"
        );
    }

    #[test]
    fn results_say_their_type_and_who_answered() {
        let result = decorate(json!({"tools": []}));
        assert_eq!(result["resultType"], "complete");
        assert_eq!(result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "tengine");
        let task = decorate(json!({"resultType": "task"}));
        assert_eq!(task["resultType"], "task", "kept");
    }
}

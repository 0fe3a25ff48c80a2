//! 2025-11-25 sessions: `initialize` negotiates a version and issues a signed
//! session id; later requests must carry it (see `crate::sessions`).

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode},
    response::Response,
};
use rmcp::model::{
    Implementation, InitializeRequestParams, InitializeResult, ProtocolVersion, ServerCapabilities, ToolsCapability,
};
use serde_json::Value;
use tengine_control::principals::Principal;

use super::HEADER_SESSION_ID;
use crate::{
    AppState,
    jsonrpc::{self, RpcError, RpcResult},
};

/// The request's session id, if it is valid, unexpired, not ended and opened by this caller's key.
pub(crate) fn check_session(
    st: &AppState,
    headers: &HeaderMap,
    principal: &Principal,
    id: &Value,
) -> RpcResult<String> {
    let Some(session) = headers.get(HEADER_SESSION_ID) else {
        return Err(RpcError::invalid_request(
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
        Err(RpcError::invalid_request(
            StatusCode::NOT_FOUND,
            "unknown, expired or ended session: send initialize to start a new one",
        )
        .with_id(id))
    }
}

pub(crate) fn negotiate(requested: &str) -> ProtocolVersion {
    match requested {
        "2025-06-18" => ProtocolVersion::V_2025_06_18,
        "2025-03-26" => ProtocolVersion::V_2025_03_26,
        _ => ProtocolVersion::V_2025_11_25,
    }
}

pub(crate) fn initialize(
    st: &AppState,
    principal: &Principal,
    id: &Value,
    params: Option<Value>,
) -> RpcResult<Response> {
    let params: InitializeRequestParams = serde_json::from_value(params.unwrap_or(Value::Null))
        .map_err(|e| RpcError::invalid_params(id, format!("initialize params are malformed: {e}")))?;
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
    // What the session's user can be asked (client approvals, an API's input requests).
    let askable = match serde_json::to_value(&params.capabilities) {
        Ok(Value::Object(capabilities)) => crate::sessions::Askable::of(&capabilities),
        _ => crate::sessions::Askable::default(),
    };
    let session = st
        .sessions
        .issue(caller.api_key_id, member, &version.to_string(), askable);
    let mut response = jsonrpc::result(
        id,
        serde_json::to_value(result).map_err(|e| RpcError::internal(id, e.to_string()))?,
    );
    if let Ok(value) = HeaderValue::from_str(&session) {
        response.headers_mut().insert(HEADER_SESSION_ID, value);
    }
    Ok(response)
}

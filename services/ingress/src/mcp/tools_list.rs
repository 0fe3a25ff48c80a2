//! `tools/list`: the caller's tools (enabled, allowed by its integration), in
//! name order, paginated by an opaque cursor.

use std::sync::Arc;

use axum::response::Response;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rmcp::model::{PaginatedRequestParams, Tool};
use serde_json::{Value, json};
use tengine_control::{principals::Principal, tools};
use tengine_core::domain::ToolDefinition;

use crate::{
    AppState,
    jsonrpc::{self, RpcError, RpcResult},
};

const CURSOR_TAG: &str = "t1:";

pub(crate) fn encode_cursor(last_name: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_TAG}{last_name}"))
}

pub(crate) fn decode_cursor(cursor: &str) -> Option<String> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    raw.strip_prefix(CURSOR_TAG).map(str::to_string)
}

pub(crate) fn mcp_tool(tool: &ToolDefinition) -> Tool {
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

pub(crate) async fn list_tools(
    st: &AppState,
    principal: &Principal,
    id: &Value,
    params: Option<Value>,
) -> RpcResult<Response> {
    Ok(jsonrpc::result(id, tools_page(st, principal, id, params).await?))
}

/// One page of the caller's tools: `{"tools", "nextCursor"?}`.
pub(crate) async fn tools_page(
    st: &AppState,
    principal: &Principal,
    id: &Value,
    params: Option<Value>,
) -> RpcResult<Value> {
    let params: PaginatedRequestParams = match params {
        None | Some(Value::Null) => PaginatedRequestParams::default(),
        Some(p) => serde_json::from_value(p)
            .map_err(|e| RpcError::invalid_params(id, format!("tools/list params are malformed: {e}")))?,
    };
    let after = match params.cursor.as_deref() {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            RpcError::invalid_params(
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
            RpcError::internal(id, "tools could not be listed right now; retry")
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
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        assert_eq!(decode_cursor(&encode_cursor("a.b")).as_deref(), Some("a.b"));
        assert!(decode_cursor("!!").is_none());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("other")).is_none());
    }
}

//! `Mcp-Param-{Name}` headers (revision 2026-07-28, SEP-2243): a client mirrors
//! each argument whose input-schema property carries `x-mcp-header: Name` into
//! that header, so that intermediaries can route on it. The header must match
//! the argument (after decoding `=?base64?…?=`): one that is missing, malformed
//! or different is refused with 400 / -32020 before anything runs.

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};
use tengine_core::{domain::ToolDefinition, errors};

use super::{Call, Era, Step};
use crate::{jsonrpc::RpcError, mcp::modern::decode_header_value};

const PREFIX: &str = "mcp-param-";

/// The request's `Mcp-Param-*` headers: the name after the prefix (lower case)
/// and the value, `None` when it is not visible ASCII.
pub fn collect(headers: &HeaderMap) -> Vec<(String, Option<String>)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let suffix = name.as_str().strip_prefix(PREFIX)?;
            Some((suffix.to_string(), value.to_str().ok().map(|v| v.trim().to_string())))
        })
        .collect()
}

/// An argument as its header carries it: strings as they are, integers in
/// decimal, booleans as `true`/`false`; `None` for what no header can carry.
fn header_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Call {
    /// Every `x-mcp-header` argument of the tool against its header.
    pub(super) fn check_param_headers(&self, tool: &ToolDefinition, arguments: &Map<String, Value>) -> Step<()> {
        let Era::Modern { param_headers, .. } = &self.era else {
            return Ok(());
        };
        let Some(properties) = tool.input_schema.get("properties").and_then(Value::as_object) else {
            return Ok(());
        };
        let mismatch = |message: String| RpcError::new(StatusCode::BAD_REQUEST, errors::HEADER_MISMATCH, message);
        for (property, schema) in properties {
            let Some(name) = schema.get("x-mcp-header").and_then(Value::as_str) else {
                continue;
            };
            let header = param_headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
            let expected = arguments.get(property);
            let (expected, header) = match (expected.and_then(header_text), header, expected) {
                (None, None, _) | (None, Some(_), Some(_)) => continue,
                (Some(_), None, _) => {
                    return Err(mismatch(format!(
                        "the Mcp-Param-{name} header is missing: the argument `{property}` is in the body (its \
                         input-schema property has x-mcp-header)"
                    ))
                    .with_id(&self.id)
                    .into());
                }
                (None, Some(_), None) => {
                    return Err(mismatch(format!(
                        "the Mcp-Param-{name} header was sent but the body has no argument `{property}`"
                    ))
                    .with_id(&self.id)
                    .into());
                }
                (Some(expected), Some((_, value)), _) => (expected, value),
            };
            let Some(value) = header.as_deref().and_then(decode_header_value) else {
                return Err(mismatch(format!(
                    "the Mcp-Param-{name} header has invalid characters or encoding (send visible ASCII, or \
                     =?base64?<standard base64 with padding>?=)"
                ))
                .with_id(&self.id)
                .into());
            };
            if value != expected {
                return Err(mismatch(format!(
                    "Header mismatch: Mcp-Param-{name} header value `{value}` does not match the argument \
                     `{property}` in the body"
                ))
                .with_id(&self.id)
                .into());
            }
        }
        Ok(())
    }
}

//! What the model sees for a run: its outcome mapped by the tool's
//! `response_mode` to an MCP tool result, with Tengine's `_meta` keys.

use std::time::Duration;

use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Map, Value, json};
use tengine_core::{
    domain::{ResponseMode, ToolDefinition},
    envelope::{BodyEncoding, ErrorClass, RunOutcome, RunStatus, UpstreamResponse},
};
use uuid::Uuid;

use tengine_core::prometheus;

/// Counts tools/call answers by run status.
pub(crate) fn count_call(status: &'static str) {
    metrics::counter!(prometheus::CALLS, "status" => status).increment(1);
}

/// `_meta` key of the server's identity on every 2026-07-28 result.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
use crate::AppState;

/// `_meta` key carrying the Run ID on every tools/call result.
pub const META_RUN_ID: &str = "tengine.dev/runId";
pub const META_STATUS: &str = "tengine.dev/status";
pub const META_HTTP_STATUS: &str = "tengine.dev/httpStatus";
/// How much of an upstream error body the model sees.
const ERROR_EXCERPT_CHARS: usize = 2000;

pub(crate) fn tool_result(is_error: bool, text: String, meta: Map<String, Value>) -> Value {
    block_result(is_error, ContentBlock::text(text), meta)
}

pub(crate) fn block_result(is_error: bool, block: ContentBlock, meta: Map<String, Value>) -> Value {
    let mut result = if is_error {
        CallToolResult::error(vec![block])
    } else {
        CallToolResult::success(vec![block])
    };
    // The 2026 `resultType` discriminator means nothing to 2025-11-25 clients.
    result.result_type = None;
    let mut value = serde_json::to_value(result).unwrap_or_else(|_| json!({"content": [], "isError": true}));
    value["_meta"] = Value::Object(meta);
    value
}

pub(crate) fn run_meta(run_id: Uuid, status: RunStatus, http_status: Option<u16>) -> Map<String, Value> {
    let mut meta = Map::new();
    meta.insert(META_RUN_ID.into(), json!(run_id));
    meta.insert(META_STATUS.into(), json!(status.as_str()));
    if let Some(code) = http_status {
        meta.insert(META_HTTP_STATUS.into(), json!(code));
    }
    meta
}

pub(crate) fn excerpt(body: &str) -> String {
    if body.chars().count() <= ERROR_EXCERPT_CHARS {
        body.to_string()
    } else {
        let cut: String = body.chars().take(ERROR_EXCERPT_CHARS).collect();
        format!("{cut}… (truncated)")
    }
}

/// What the model sees for a finished run, mapped by the tool's `response_mode`;
/// for an API that asked for input, an `InputRequiredResult` when `asking` says
/// which call can carry it (see [`crate::asks`]).
pub fn outcome_result(
    st: &AppState,
    tool: &ToolDefinition,
    outcome: &RunOutcome,
    asking: Option<&crate::asks::Asking>,
) -> Value {
    if let Some(asked) = crate::asks::answer(st, outcome, asking) {
        return asked;
    }
    count_call(outcome.status.as_str());
    match (outcome.status, &outcome.response) {
        (RunStatus::Succeeded, Some(response)) => {
            let meta = outcome_meta(outcome);
            let whole_text = response.encoding == BodyEncoding::Text && !response.truncated;
            if whole_text {
                return success_result(st, tool, &response.body, meta);
            }
            // A partial or binary body cannot meet an output schema.
            let is_error = tool.output_schema.is_some() && !is_media(response);
            body_result(&tool.name, response, is_error, meta)
        }
        _ => failure_result(outcome),
    }
}

/// The mapping when the tool's definition is no longer available.
pub(crate) fn text_outcome_result(outcome: &RunOutcome) -> Value {
    match (outcome.status, &outcome.response) {
        (RunStatus::Succeeded, Some(response)) => {
            body_result(&outcome.tool_name, response, false, outcome_meta(outcome))
        }
        _ => failure_result(outcome),
    }
}

/// Whether a body reaches the model as an image or audio block: a whole binary
/// body of an `image/*` or `audio/*` type.
pub(crate) fn is_media(response: &UpstreamResponse) -> bool {
    let essence = response.essence();
    response.encoding == BodyEncoding::Base64
        && !response.truncated
        && (essence.starts_with("image/") || essence.starts_with("audio/"))
}

/// A body as it is: text (with a note when the API sent more than it holds), an
/// image or audio block, or, for other binary bodies, a note of what it was.
pub(crate) fn body_result(tool: &str, response: &UpstreamResponse, is_error: bool, meta: Map<String, Value>) -> Value {
    let essence = response.essence();
    let block = if is_media(response) {
        if essence.starts_with("image/") {
            ContentBlock::image(response.body.clone(), essence)
        } else {
            ContentBlock::audio(response.body.clone(), essence)
        }
    } else {
        ContentBlock::text(match response.encoding {
            BodyEncoding::Text if response.truncated => format!("{}\n\n{}", response.body, truncation_note(response)),
            BodyEncoding::Text => response.body.clone(),
            BodyEncoding::Base64 => binary_note(tool, response),
        })
    };
    block_result(is_error, block, meta)
}

/// The full size of a body, in bytes as the API sent it.
pub(crate) fn full_size(response: &UpstreamResponse) -> String {
    response
        .size
        .map_or_else(|| "an unknown number of".into(), |size| size.to_string())
}

pub(crate) fn truncation_note(response: &UpstreamResponse) -> String {
    format!(
        "[Tengine: the response has {} bytes; only its first {} bytes are shown (worker.max_response_bytes).]",
        full_size(response),
        response.kept_bytes()
    )
}

pub(crate) fn binary_note(tool: &str, response: &UpstreamResponse) -> String {
    let kind = response.content_type.as_deref().unwrap_or("no content type");
    let cut = if response.truncated {
        format!(
            ", more than the {} bytes kept (worker.max_response_bytes)",
            response.kept_bytes()
        )
    } else {
        String::new()
    };
    format!(
        "Tool `{tool}` answered a binary body ({kind}, {} bytes{cut}); it cannot be shown as text.",
        full_size(response)
    )
}

pub(crate) fn outcome_meta(outcome: &RunOutcome) -> Map<String, Value> {
    run_meta(
        outcome.run_id,
        outcome.status,
        outcome.response.as_ref().map(|r| r.http_status),
    )
}

pub(crate) fn failure_result(outcome: &RunOutcome) -> Value {
    let detail = outcome
        .error
        .clone()
        .unwrap_or_else(|| format!("the run ended as {}", outcome.status.as_str()));
    let text = match (outcome.error_class, &outcome.response) {
        (Some(ErrorClass::UpstreamStatus), Some(response)) => format!(
            "The API behind tool `{}` answered HTTP {}: {}",
            outcome.tool_name,
            response.http_status,
            match response.encoding {
                BodyEncoding::Text => excerpt(&response.body),
                BodyEncoding::Base64 => binary_note(&outcome.tool_name, response),
            }
        ),
        _ => format!("Tool `{}` failed: {detail}", outcome.tool_name),
    };
    tool_result(true, text, outcome_meta(outcome))
}

pub(crate) fn success_result(st: &AppState, tool: &ToolDefinition, body: &str, meta: Map<String, Value>) -> Value {
    let invalid = |why: String| {
        tool_result(
            true,
            format!("Tool `{}` returned an unusable response: {why}", tool.name),
            meta.clone(),
        )
    };
    match tool.response_mode {
        ResponseMode::Text => tool_result(false, body.to_string(), meta),
        ResponseMode::Json => {
            let Ok(value) = serde_json::from_str::<Value>(body) else {
                return invalid("the body is not JSON (the tool's response_mode is `json`)".into());
            };
            if let Some(problem) = st.validators.check_output(tool, &value) {
                return invalid(problem);
            }
            let mut result = tool_result(false, body.to_string(), meta);
            if value.is_object() {
                result["structuredContent"] = value;
            }
            result
        }
        ResponseMode::Mcp => {
            let parsed = serde_json::from_str::<CallToolResult>(body);
            let Ok(mut upstream) = parsed else {
                let why = parsed.err().map(|e| e.to_string()).unwrap_or_default();
                return invalid(format!("the body is not an MCP CallToolResult ({why})"));
            };
            if let Some(structured) = &upstream.structured_content
                && let Some(problem) = st.validators.check_output(tool, structured)
            {
                return invalid(problem);
            }
            if upstream.structured_content.is_none() && tool.output_schema.is_some() && upstream.is_error != Some(true)
            {
                return invalid("structuredContent is required by the tool's output_schema".into());
            }
            upstream.result_type = None;
            let mut value = serde_json::to_value(&upstream).unwrap_or_else(|_| json!({"content": []}));
            let mut merged = value
                .get("_meta")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            merged.extend(meta);
            value["_meta"] = Value::Object(merged);
            value
        }
    }
}

/// A finished run whose response is no longer kept (calls without a client
/// idempotency key, after the event log rolled past them).
pub(crate) fn forgotten_result(run_id: Uuid, status: &str) -> Value {
    let mut meta = Map::new();
    meta.insert(META_RUN_ID.into(), json!(run_id));
    meta.insert(META_STATUS.into(), json!(status));
    tool_result(
        status != RunStatus::Succeeded.as_str(),
        format!(
            "Run {run_id} already finished ({status}); its response is no longer kept. It was not run again \
             (GET /v1/runs/{run_id} shows its record)."
        ),
        meta,
    )
}

pub(crate) fn still_running(tool: &ToolDefinition, run_id: Uuid, wait: Duration) -> Value {
    // Only a tool an operator approves can be waiting for a decision.
    let when = if tool.approval == tengine_core::domain::Approval::Operator {
        " (once an operator decides, if it awaits approval)"
    } else {
        ""
    };
    tool_result(
        true,
        format!(
            "Run {run_id} did not finish within {} ms. It was accepted and will still complete{when}; its \
             outcome will be in run history (GET /v1/runs/{run_id}).",
            wait.as_millis()
        ),
        run_meta(run_id, RunStatus::Accepted, None),
    )
}

/// Who answers, as every modern result's `_meta` says.
pub fn server_info() -> Value {
    json!({"name": "tengine", "version": tengine_core::VERSION})
}

/// Marks a result of this revision: `resultType` (unless it has one) and the
/// server's identity in `_meta`.
pub fn decorate(mut result: Value) -> Value {
    if let Value::Object(fields) = &mut result {
        fields
            .entry("resultType")
            .or_insert_with(|| Value::String("complete".into()));
        let meta = fields.entry("_meta").or_insert_with(|| json!({}));
        if let Value::Object(meta) = meta {
            meta.insert(META_SERVER_INFO.into(), server_info());
        }
    }
    result
}

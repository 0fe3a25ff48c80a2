//! `tools/call`: validate, queue, follow, answer. The answer is plain JSON unless
//! the client asked for progress (`_meta.progressToken`) or set a log level; then
//! it is an SSE stream: a priming event, `notifications/progress` and
//! `notifications/message` for the run's stages, then the result.

use std::{sync::Arc, time::Duration};

use axum::{
    http::StatusCode,
    response::{Response, sse::Event},
};
use chrono::Utc;
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock};
use serde_json::{Map, Value, json};
use tengine_control::{StoreError, principals::Principal, quotas, tools};
use tengine_core::{
    domain::{ResponseMode, ToolDefinition},
    envelope::{BodyEncoding, Caller, ErrorClass, ExecuteCommand, RunEvent, RunOutcome, RunStatus, UpstreamResponse},
    payload, prometheus,
    telemetry::TraceContext,
    templates,
};
use tengine_projector::history::{self, results::Recorded};
use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    AppState,
    dispatch::{CallKey, Following, Signal},
    idempotency,
    mcp::{META_HTTP_STATUS, META_RUN_ID, META_STATUS, McpError, McpResult, json_rpc_result},
    sessions::{SessionStates, log_level_rank},
    streams::{self, EventId, RESULT_SEQ},
};

/// How much of an upstream error body the model sees.
const ERROR_EXCERPT_CHARS: usize = 2000;
const MAX_TOOL_NAME_IN_HISTORY: usize = 200;
/// Stages reported as progress: queued, sent to the API, answered.
const STAGES: u32 = 3;
/// JSON-RPC error code of a call refused by a quota (implementation-defined server error range).
pub const QUOTA_EXCEEDED: i32 = -32029;

pub fn call_key(session: &str, request_id: &Value) -> CallKey {
    CallKey {
        session: SessionStates::key(session),
        request_id: request_id.to_string(),
    }
}

pub(crate) fn tool_result(is_error: bool, text: String, meta: Map<String, Value>) -> Value {
    block_result(is_error, ContentBlock::text(text), meta)
}

fn block_result(is_error: bool, block: ContentBlock, meta: Map<String, Value>) -> Value {
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

fn excerpt(body: &str) -> String {
    if body.chars().count() <= ERROR_EXCERPT_CHARS {
        body.to_string()
    } else {
        let cut: String = body.chars().take(ERROR_EXCERPT_CHARS).collect();
        format!("{cut}… (truncated)")
    }
}

/// What the model sees for a finished run, mapped by the tool's `response_mode`.
pub fn outcome_result(st: &AppState, tool: &ToolDefinition, outcome: &RunOutcome) -> Value {
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
fn text_outcome_result(outcome: &RunOutcome) -> Value {
    match (outcome.status, &outcome.response) {
        (RunStatus::Succeeded, Some(response)) => {
            body_result(&outcome.tool_name, response, false, outcome_meta(outcome))
        }
        _ => failure_result(outcome),
    }
}

/// Whether a body reaches the model as an image or audio block: a whole binary
/// body of an `image/*` or `audio/*` type.
fn is_media(response: &UpstreamResponse) -> bool {
    let essence = response.essence();
    response.encoding == BodyEncoding::Base64
        && !response.truncated
        && (essence.starts_with("image/") || essence.starts_with("audio/"))
}

/// A body as it is: text (with a note when the API sent more than it holds), an
/// image or audio block, or, for other binary bodies, a note of what it was.
fn body_result(tool: &str, response: &UpstreamResponse, is_error: bool, meta: Map<String, Value>) -> Value {
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
fn full_size(response: &UpstreamResponse) -> String {
    response
        .size
        .map_or_else(|| "an unknown number of".into(), |size| size.to_string())
}

fn truncation_note(response: &UpstreamResponse) -> String {
    format!(
        "[Tengine: the response has {} bytes; only its first {} bytes are shown (worker.max_response_bytes).]",
        full_size(response),
        response.kept_bytes()
    )
}

fn binary_note(tool: &str, response: &UpstreamResponse) -> String {
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

fn outcome_meta(outcome: &RunOutcome) -> Map<String, Value> {
    run_meta(
        outcome.run_id,
        outcome.status,
        outcome.response.as_ref().map(|r| r.http_status),
    )
}

fn failure_result(outcome: &RunOutcome) -> Value {
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

fn success_result(st: &AppState, tool: &ToolDefinition, body: &str, meta: Map<String, Value>) -> Value {
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

fn truncate_name(name: &str) -> String {
    name.chars().take(MAX_TOOL_NAME_IN_HISTORY).collect()
}

async fn reject(st: &AppState, caller: &Caller, run_id: Uuid, tool_name: &str, class: ErrorClass, error: &str) {
    count_call("rejected");
    st.dispatcher
        .log(
            caller.project_id,
            RunEvent::Rejected {
                run_id,
                caller: caller.clone(),
                tool_name: truncate_name(tool_name),
                accepted_at: Utc::now(),
                error_class: class,
                error: payload::bounded_error(error.to_string()),
            },
        )
        .await;
}

/// `tools/call`: one span per call carrying the Run ID (a child of the client's
/// trace when it sent `traceparent`), timed and counted.
pub async fn call_tool(
    st: Arc<AppState>,
    principal: Principal,
    session: String,
    id: Value,
    params: Option<Value>,
    idempotency_key: Option<String>,
    trace: TraceContext,
) -> McpResult<Response> {
    let run_id = Uuid::now_v7();
    let span = tracing::info_span!("tools/call", %run_id, tool = tracing::field::Empty);
    let started = std::time::Instant::now();
    let _in_flight = InFlight::enter();
    let answer = execute(st, principal, session, id, params, idempotency_key, trace, run_id)
        .instrument(span)
        .await;
    metrics::histogram!(prometheus::CALL_SECONDS).record(started.elapsed().as_secs_f64());
    answer
}

/// Counts calls waiting for their outcome; the gauge goes down however the call ends.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!(prometheus::CALLS_IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(prometheus::CALLS_IN_FLIGHT).decrement(1.0);
    }
}

fn count_call(status: &'static str) {
    metrics::counter!(prometheus::CALLS, "status" => status).increment(1);
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    st: Arc<AppState>,
    principal: Principal,
    session: String,
    id: Value,
    params: Option<Value>,
    idempotency_key: Option<String>,
    trace: TraceContext,
    run_id: Uuid,
) -> McpResult<Response> {
    let params: CallToolRequestParams = serde_json::from_value(params.unwrap_or(Value::Null)).map_err(|e| {
        McpError::invalid_params(
            &id,
            format!("tools/call params are malformed ({e}); expected {{\"name\": string, \"arguments\": object}}"),
        )
    })?;
    let name = params.name.to_string();
    tracing::Span::current().record("tool", name.as_str());
    let progress_token = params
        .meta
        .as_ref()
        .and_then(|m| serde_json::to_value(m).ok())
        .and_then(|m| m.get("progressToken").cloned())
        .filter(|t| t.is_string() || t.is_number());
    let meta_key = params
        .meta
        .as_ref()
        .and_then(|m| serde_json::to_value(m).ok())
        .and_then(|m| m.get(idempotency::META_KEY).and_then(Value::as_str).map(str::to_string));
    let arguments = params.arguments.unwrap_or_default();
    let caller = principal.caller.clone();

    let loading = std::time::Instant::now();
    let tool = st.catalog.get(&st.pool, caller.project_id, &name).await;
    prometheus::stage(prometheus::INGRESS_STAGE_SECONDS, "tool", loading);
    let tool = match tool {
        Ok(tool) if tool.enabled && principal.may_use(&tool) => tool,
        Ok(tool)
            if tool.enabled
                && tool.require_member
                && caller.member.is_none()
                && principal
                    .allowed_tools
                    .as_ref()
                    .is_none_or(|names| names.contains(&tool.name)) =>
        {
            let message = format!("Tool `{}` requires a member session (Bearer tng_mst_…)", tool.name);
            reject(&st, &caller, run_id, &name, ErrorClass::UnknownTool, &message).await;
            return Err(McpError::invalid_params(&id, message));
        }
        Ok(_) | Err(StoreError::NotFound) => {
            let message = format!("Unknown tool: `{}`", truncate_name(&name));
            reject(&st, &caller, run_id, &name, ErrorClass::UnknownTool, &message).await;
            let mut err = McpError::invalid_params(&id, format!("{message}; call tools/list for the available tools"));
            err.data = Some(json!({ META_RUN_ID: run_id }));
            return Err(err);
        }
        Err(err) => {
            tracing::error!(error = %err, "loading a tool");
            return Err(McpError::internal(&id, "the tool could not be loaded right now; retry"));
        }
    };

    // Bad arguments are a tool execution error (SEP-1303, MCP 2025-11-25), so the
    // model sees the message and can correct itself.
    let args_value = Value::Object(arguments);
    let problems = st
        .validators
        .check(&tool, &args_value)
        .map_err(|e| McpError::internal(&id, e))?;
    let arguments = match args_value {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let problem = if problems.is_empty() {
        let ctx = templates::Context {
            arguments: &arguments,
            reserved: templates::reserved_variables(&caller, run_id),
        };
        tengine_core::request::render(&tool, &ctx).err().map(|e| e.to_string())
    } else {
        Some(problems.join("; "))
    };
    if let Some(problem) = problem {
        let message = format!("Invalid arguments for tool `{}`: {problem}", tool.name);
        reject(&st, &caller, run_id, &tool.name, ErrorClass::InvalidArguments, &message).await;
        let result = tool_result(true, message, run_meta(run_id, RunStatus::Rejected, None));
        return Ok(json_rpc_result(&id, result));
    }
    let client_key = idempotency_key.is_some() || meta_key.is_some();
    let accepted_at = Utc::now();
    let mut command = ExecuteCommand {
        run_id,
        caller: caller.clone(),
        tool_id: tool.id,
        tool_name: tool.name.clone(),
        tool_version: tool.version,
        arguments,
        accepted_at,
        reply_to: Some(st.dispatcher.reply_subject(run_id)),
        // A client's own key outlives the event log's guarantee: history keeps the
        // outcome for as long as the key maps to the run.
        keep_result_until: client_key
            .then(|| accepted_at.checked_add_signed(st.config.ingress.idempotency_ttl()))
            .flatten(),
    };
    // A command larger than a NATS message could never be queued. (A Run ID taken
    // over below has the same encoded length.)
    if let Err(message) = command.check_fits(payload::server_max_payload(&st.nats)) {
        reject(&st, &caller, run_id, &tool.name, ErrorClass::InvalidArguments, &message).await;
        return Err(McpError::invalid_params(&id, message));
    }

    // One run per idempotency key: a retry follows the run it started.
    let scope = match idempotency_key.or(meta_key) {
        // Scoped to the credential (API key, and member): another caller's key never matches.
        Some(key) if key.len() <= idempotency::MAX_KEY_LEN => format!(
            "key\n{}\n{}\n{key}",
            caller.api_key_id,
            caller.member.as_ref().map_or("", |m| m.id.as_str())
        ),
        Some(_) => {
            return Err(McpError::invalid_params(
                &id,
                format!(
                    "_meta.idempotencyKey must be at most {} characters",
                    idempotency::MAX_KEY_LEN
                ),
            ));
        }
        None => format!("request\n{}\n{id}", SessionStates::key(&session)),
    };
    let claim_key = idempotency::Idempotency::key(caller.project_id, &scope);
    let fingerprint = idempotency::fingerprint(&tool.name, &command.arguments);
    let claiming = std::time::Instant::now();
    let claimed = st
        .idempotency
        .claim(&claim_key, run_id, &fingerprint, |run| {
            traced(&st, caller.project_id, run)
        })
        .await;
    prometheus::stage(prometheus::INGRESS_STAGE_SECONDS, "claim", claiming);
    let lease = match claimed {
        Ok(idempotency::Claimed::Owned(lease)) => lease,
        Ok(idempotency::Claimed::Existing(original)) => {
            return Ok(json_rpc_result(
                &id,
                follow_existing(&st, &tool, caller.project_id, original).await,
            ));
        }
        Ok(idempotency::Claimed::Pending(original)) => {
            // Its first call holds the key and is still being queued (or gave up a
            // moment ago): answer now rather than wait on a run that may never exist.
            let mut err = McpError::internal(
                &id,
                format!(
                    "the first attempt of this call (run {original}) is not queued yet; retry in a few \
                     seconds with the same key: it will run at most once"
                ),
            );
            err.data = Some(json!({ META_RUN_ID: original }));
            return Err(err);
        }
        Ok(idempotency::Claimed::Conflict(original)) => {
            let mut err = McpError::invalid_params(
                &id,
                format!(
                    "this idempotency key was already used for run {original} with other arguments; \
                     use a new key for a different call"
                ),
            );
            err.data = Some(json!({ META_RUN_ID: original }));
            return Err(err);
        }
        Err(err) => {
            tracing::error!(error = %err, "claiming an idempotency key");
            return Err(McpError::internal(
                &id,
                "the call could not be recorded right now; it was not run: retry",
            ));
        }
    };
    // A claim taken over keeps the Run ID it was first given.
    let run_id = lease.run_id;
    tracing::Span::current().record("run_id", tracing::field::display(run_id));

    // Counted only once the key is claimed: a retry that follows an existing run
    // returned above, so it never counts twice.
    let charging = std::time::Instant::now();
    // The limits came with the credential (one query for both).
    let verdict = quotas::charge(&st.pool, &caller, principal.limits).await;
    prometheus::stage(prometheus::INGRESS_STAGE_SECONDS, "quota", charging);
    let charge = match verdict {
        Ok(quotas::Verdict::Allowed(charge)) => charge,
        Ok(quotas::Verdict::Exceeded(exceeded)) => {
            let message = exceeded.message();
            reject(&st, &caller, run_id, &tool.name, ErrorClass::QuotaExceeded, &message).await;
            // The same key may be used again once the quota resets.
            lease.release().await;
            let mut err = McpError::new(StatusCode::OK, QUOTA_EXCEEDED, message).with_id(&id);
            err.data = Some(json!({
                META_RUN_ID: run_id,
                "limit": exceeded.limit,
                "value": exceeded.value,
                "resetsAt": exceeded.resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }));
            return Err(err);
        }
        Err(err) => {
            tracing::error!(error = %err, "checking quotas");
            lease.release().await;
            return Err(McpError::internal(
                &id,
                "the call's quota could not be checked right now; it was not run: retry",
            ));
        }
    };

    command.run_id = run_id;
    command.reply_to = Some(st.dispatcher.reply_subject(run_id));
    let following = st.dispatcher.follow(run_id, Some(call_key(&session, &id)));
    let enqueueing = std::time::Instant::now();
    // Only while the lease holds: after it, a retry may take the key over.
    let enqueued = st.dispatcher.enqueue(&command, &trace, lease.remaining()).await;
    prometheus::stage(prometheus::INGRESS_STAGE_SECONDS, "enqueue", enqueueing);
    // Queued or not, this call is done with the key: the run (if stored) is its trace.
    drop(lease);
    if let Err(err) = enqueued {
        // Publishing was retried under the same Nats-Msg-Id (stored at most once).
        // The command may still have been stored (every ack lost), so the key stays
        // bound to this run: a retry follows the run if it was stored, and once the
        // lease has lapsed without a trace, queues this same run again (see
        // `idempotency`). No `Rejected` event: the run may well exist.
        tracing::error!(%run_id, error = %err, "queueing a run");
        count_call("unconfirmed");
        quotas::refund(&st.pool, caller.project_id, &charge).await;
        let mut err = McpError::internal(
            &id,
            format!(
                "the call could not be confirmed as queued (the execution queue is unavailable or full): retry in a \
                 few seconds with the same idempotency key (or, without one, the same JSON-RPC id in this session): \
                 it will run at most once (run {run_id})"
            ),
        );
        err.data = Some(json!({ META_RUN_ID: run_id }));
        return Err(err);
    }
    tracing::info!(%run_id, tool = %tool.name, project_id = %caller.project_id, "run accepted");

    let wait = Duration::from_millis(
        (tool.timeout_ms.saturating_add(st.config.ingress.call_wait_slack_ms)).min(st.config.ingress.max_call_wait_ms),
    );
    let log = st
        .session_states
        .get(&session)
        .log_level
        .and_then(|l| log_level_rank(&l))
        .is_some_and(|rank| rank <= INFO_RANK);
    if progress_token.is_none() && !log {
        return Ok(match follow_to_end(&st, &tool, following, &caller, wait).await {
            Ending::Result(result) => json_rpc_result(&id, result),
            // No answer for a cancelled request (the SDKs have forgotten it): an
            // event stream that ends at once, without ids, so nobody resumes it.
            Ending::Cancelled => streams::response(mpsc::channel(1).1),
        });
    }
    let (tx, rx) = mpsc::channel(16);
    let notifier = Notifier {
        tx,
        run_id,
        request_id: id,
        progress_token,
        log,
        seq: 0,
    };
    tokio::spawn(stream_call(st, tool, following, caller, wait, notifier));
    Ok(streams::response(rx))
}

/// Whether a run left a trace: its command queued, its events in the log, or its
/// row in history (which outlives the log and every idempotency key).
async fn traced(st: &AppState, project_id: Uuid, run_id: Uuid) -> Result<bool, String> {
    if st.dispatcher.in_streams(project_id, run_id).await? {
        return Ok(true);
    }
    history::runs::in_history(&st.pool, run_id)
        .await
        .map_err(|e| e.to_string())
}

/// A retry of a call that already has a run: that run's outcome, from the event
/// log, else from history (once the log has rolled past it), else when it comes.
async fn follow_existing(st: &AppState, tool: &ToolDefinition, project_id: Uuid, run_id: Uuid) -> Value {
    if let Some(outcome) = st.dispatcher.recorded(project_id, run_id).await {
        return outcome_result(st, tool, &outcome);
    }
    match history::results::recorded(&st.pool, run_id).await {
        Ok(Some(Recorded::Kept(outcome))) => return outcome_result(st, tool, &outcome),
        Ok(Some(Recorded::StatusOnly(status))) => return forgotten_result(run_id, &status),
        Ok(None) => {}
        Err(err) => tracing::warn!(%run_id, error = %err, "reading a run's outcome from history"),
    }
    let wait = Duration::from_millis(st.config.ingress.max_call_wait_ms);
    let deadline = tengine_core::tasks::deadline_after(wait);
    match st.dispatcher.poll_outcome(project_id, run_id, deadline).await {
        Some(outcome) => outcome_result(st, tool, &outcome),
        None => still_running(run_id, wait),
    }
}

/// A finished run whose response is no longer kept (calls without a client
/// idempotency key, after the event log rolled past them).
fn forgotten_result(run_id: Uuid, status: &str) -> Value {
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

const INFO_RANK: usize = 1;

enum Ending {
    Result(Value),
    Cancelled,
}

fn still_running(run_id: Uuid, wait: Duration) -> Value {
    tool_result(
        true,
        format!(
            "Run {run_id} did not finish within {} ms. It was accepted and will still complete; \
             its outcome will be in run history (GET /v1/runs/{run_id}).",
            wait.as_millis()
        ),
        run_meta(run_id, RunStatus::Accepted, None),
    )
}

/// Follows a run to its outcome, ignoring progress (the JSON answer).
async fn follow_to_end(
    st: &AppState,
    tool: &ToolDefinition,
    mut following: Following,
    caller: &Caller,
    wait: Duration,
) -> Ending {
    let deadline = tengine_core::tasks::deadline_after(wait);
    loop {
        match following.next(deadline).await {
            Some(Signal::Finished(outcome)) => return Ending::Result(outcome_result(st, tool, &outcome)),
            Some(Signal::Cancelled) => {
                st.dispatcher.cancel(caller.project_id, following.run_id).await;
                return Ending::Cancelled;
            }
            Some(Signal::Sent | Signal::Answered | Signal::Upstream { .. }) => continue,
            None => {
                return Ending::Result(
                    match st.dispatcher.recorded(caller.project_id, following.run_id).await {
                        Some(outcome) => outcome_result(st, tool, &outcome),
                        None => still_running(following.run_id, wait),
                    },
                );
            }
        }
    }
}

/// Writes a call's SSE stream.
struct Notifier {
    tx: mpsc::Sender<Event>,
    run_id: Uuid,
    request_id: Value,
    progress_token: Option<Value>,
    log: bool,
    seq: u32,
}

impl Notifier {
    fn id(&mut self, n: Option<u32>) -> EventId {
        self.seq = self.seq.saturating_add(1);
        EventId {
            r: self.run_id,
            i: self.request_id.clone(),
            n: n.unwrap_or(self.seq),
        }
    }

    async fn send(&mut self, message: &Value) -> bool {
        let id = self.id(None);
        self.tx.send(streams::message(Some(&id), message)).await.is_ok()
    }

    async fn prime(&mut self) -> bool {
        let id = self.id(Some(0));
        self.tx.send(streams::priming(&id)).await.is_ok()
    }

    async fn stage(&mut self, progress: u32, message: &str) -> bool {
        self.progress(f64::from(progress), message).await
    }

    async fn progress(&mut self, progress: f64, message: &str) -> bool {
        if let Some(token) = self.progress_token.clone() {
            let note = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": token, "progress": progress, "total": STAGES, "message": message}});
            if !self.send(&note).await {
                return false;
            }
        }
        if self.log {
            let note = json!({"jsonrpc": "2.0", "method": "notifications/message",
                "params": {"level": "info", "logger": "tengine", "data": {"runId": self.run_id, "message": message}}});
            if !self.send(&note).await {
                return false;
            }
        }
        true
    }

    async fn finish(mut self, result: Value) {
        let id = self.id(Some(RESULT_SEQ));
        let response = json!({"jsonrpc": "2.0", "id": self.request_id, "result": result});
        let _ = self.tx.send(streams::message(Some(&id), &response)).await;
    }
}

async fn stream_call(
    st: Arc<AppState>,
    tool: Arc<ToolDefinition>,
    mut following: Following,
    caller: Caller,
    wait: Duration,
    mut notifier: Notifier,
) {
    if !notifier.prime().await || !notifier.stage(1, "queued").await {
        return;
    }
    let deadline = tengine_core::tasks::deadline_after(wait);
    let (mut sent, mut answered) = (false, false);
    let mut upstream_progress = 2.0_f64;
    loop {
        match following.next(deadline).await {
            Some(Signal::Sent) if !sent => {
                sent = true;
                if !notifier.stage(2, "sent to the API").await {
                    return;
                }
            }
            Some(Signal::Answered) if !answered => {
                answered = true;
                if !notifier.stage(3, "the API answered").await {
                    return;
                }
            }
            Some(Signal::Upstream {
                progress,
                total,
                message,
            }) if sent && !answered => {
                // The API's own progress fits between "sent" (2) and "answered" (3).
                let fraction = match total {
                    Some(total) if total > 0.0 => (progress / total).clamp(0.0, 1.0),
                    _ => 1.0 - 1.0 / (1.0 + progress.max(0.0)),
                };
                let value = 2.0 + fraction * 0.99;
                if value > upstream_progress {
                    upstream_progress = value;
                    let text = message.unwrap_or_else(|| format!("the API reports {progress}"));
                    if !notifier.progress(value, &text).await {
                        return;
                    }
                }
            }
            Some(Signal::Sent | Signal::Answered | Signal::Upstream { .. }) => {}
            Some(Signal::Finished(outcome)) => {
                // Progress must rise to the end even if a stage signal was lost.
                if !sent && !notifier.stage(2, "sent to the API").await {
                    return;
                }
                if !answered && !notifier.stage(3, "the API answered").await {
                    return;
                }
                notifier.finish(outcome_result(&st, &tool, &outcome)).await;
                return;
            }
            Some(Signal::Cancelled) => {
                // No response for a cancelled request: the stream just ends.
                st.dispatcher.cancel(caller.project_id, following.run_id).await;
                return;
            }
            None => {
                let result = match st.dispatcher.recorded(caller.project_id, following.run_id).await {
                    Some(outcome) => outcome_result(&st, &tool, &outcome),
                    None => still_running(following.run_id, wait),
                };
                notifier.finish(result).await;
                return;
            }
        }
    }
}

/// GET + `Last-Event-ID` of a tools/call stream: deliver that call's result once
/// the run has finished, from the event log (the worker's reply went to the
/// instance that accepted the call).
pub async fn resume(st: Arc<AppState>, caller: Caller, event: EventId, tx: mpsc::Sender<Event>) {
    if st.dispatcher.is_cancelled(event.r).await {
        // The client cancelled this call: there is nothing to deliver.
        return;
    }
    let deadline = tengine_core::tasks::deadline_after(Duration::from_millis(st.config.ingress.max_call_wait_ms));
    // The poll ends when the client hangs up, not minutes later.
    let outcome = tokio::select! {
        outcome = st.dispatcher.poll_outcome(caller.project_id, event.r, deadline) => outcome,
        () = tx.closed() => return,
    };
    let Some(outcome) = outcome else {
        return;
    };
    // Only the credential that made the call may resume it.
    let member = |c: &Caller| c.member.as_ref().map(|m| m.id.clone());
    if outcome.caller.api_key_id != caller.api_key_id || member(&outcome.caller) != member(&caller) {
        return;
    }
    let result = match tools::get(&st.pool, caller.project_id, &outcome.tool_name).await {
        Ok(tool) => outcome_result(&st, &tool, &outcome),
        // The tool is gone: the plain text mapping still tells the model what happened.
        Err(_) => text_outcome_result(&outcome),
    };
    let id = EventId {
        r: event.r,
        i: event.i.clone(),
        n: RESULT_SEQ,
    };
    let response = json!({"jsonrpc": "2.0", "id": event.i, "result": result});
    let _ = tx.send(streams::message(Some(&id), &response)).await;
}

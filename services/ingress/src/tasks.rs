//! The MCP Tasks extension (`io.modelcontextprotocol/tasks`, revision 2026-07-28):
//! a task is a run. Its id is the Run ID; its state is read from where the run
//! lives (the queue, the event log, run history), so a task is reachable from
//! any ingress instance and survives restarts of every process. Beyond its run,
//! a task keeps its call in the `{PREFIX}_TASKS` bucket ([`TaskCalls`]): when the
//! API asks for input ([`crate::asks`]) the task is `input_required` with the
//! API's requests, and once `tasks/update` has delivered every answer the call
//! goes on as a continuation run (the answers and the API's state in
//! `X-Tengine-Input`); the task follows its latest run.
//!
//! Status: accepted/running → `working`; succeeded, and failures the API answered
//! (a non-2xx status: a tool-level error) → `completed` with the tool result
//! inline; every other failure → `failed` with a JSON-RPC error; cancelled →
//! `cancelled`.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tengine_control::{principals::Principal, quotas};
use tengine_core::{
    domain::ToolDefinition,
    envelope::{Caller, CommandEnvelope, CommandInput, ErrorClass, ExecuteCommand, RunOutcome, RunStatus},
    errors,
    telemetry::TraceContext,
};
use tengine_projector::history::{self, results::Recorded};
use uuid::Uuid;

use crate::{AppState, asks, jsonrpc::RpcError, results};

pub const EXTENSION: &str = "io.modelcontextprotocol/tasks";
const AWAITING_APPROVAL: &str = "awaiting an operator's approval (tengine approvals approve|reject)";

/// Whether a request's client capabilities declare the extension.
pub fn declared(capabilities: &Map<String, Value>) -> bool {
    capabilities.get("extensions").and_then(|e| e.get(EXTENSION)).is_some()
}

/// The capability a request lacks when it needs tasks (`data.requiredCapabilities`).
pub fn required_capability() -> Value {
    json!({"extensions": {EXTENSION: {}}})
}

/// The call behind each task, and the run the task is at.
#[derive(Clone)]
pub struct TaskCalls {
    kv: kv::Store,
}

#[derive(Serialize, Deserialize)]
struct TaskCall {
    /// The task's first command (a MessagePack envelope, base64).
    command: String,
    /// The run the task is at: its first, or its latest continuation.
    current: Uuid,
    /// Continuations so far.
    #[serde(default)]
    round: u32,
    /// Answers delivered so far to the current run's input requests.
    #[serde(default)]
    answered: Map<String, Value>,
}

impl TaskCalls {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Keeps the call of a new task.
    pub async fn remember(&self, command: &ExecuteCommand) -> Result<(), String> {
        let encoded = CommandEnvelope::new(command.run_id, command.clone())
            .encode()
            .map_err(|e| e.to_string())?;
        let call = TaskCall {
            command: STANDARD.encode(encoded),
            current: command.run_id,
            round: 0,
            answered: Map::new(),
        };
        let value = serde_json::to_vec(&call).map_err(|e| e.to_string())?;
        self.kv
            .put(command.run_id.to_string(), value.into())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn load(&self, task_id: Uuid) -> Option<(TaskCall, ExecuteCommand, u64)> {
        let entry = self.kv.entry(task_id.to_string()).await.ok()??;
        let call: TaskCall = serde_json::from_slice(&entry.value).ok()?;
        let bytes = STANDARD.decode(&call.command).ok()?;
        let command = CommandEnvelope::decode(&bytes).ok()?.body;
        Some((call, command, entry.revision))
    }

    /// Compare-and-set: of two updates at once, one wins.
    async fn store(&self, task_id: Uuid, call: &TaskCall, revision: u64) -> Result<(), String> {
        let value = serde_json::to_vec(call).map_err(|e| e.to_string())?;
        self.kv
            .update(task_id.to_string(), value.into(), revision)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// How often a client should poll: a tenth of the tool's timeout, 0.5–5 s.
fn poll_interval_ms(timeout_ms: u64) -> u64 {
    (timeout_ms / 10).clamp(500, 5_000)
}

/// How long a task can be read: as long as run history keeps its run (`null`:
/// forever).
fn ttl_ms(st: &AppState) -> Value {
    match st.config.projector.history_retention_days {
        0 => Value::Null,
        days => json!(u64::from(days).saturating_mul(86_400_000)),
    }
}

/// The answer to a `tools/call` that became a task (its run is queued: durable).
pub fn created(st: &AppState, run_id: Uuid, tool: &ToolDefinition, accepted_at: DateTime<Utc>, parked: bool) -> Value {
    let message = if parked {
        AWAITING_APPROVAL
    } else {
        "queued; the run's outcome will be the task's result"
    };
    json!({
        "resultType": "task",
        "taskId": run_id,
        "status": "working",
        "statusMessage": message,
        "createdAt": iso(accepted_at),
        "lastUpdatedAt": iso(accepted_at),
        "ttlMs": ttl_ms(st),
        "pollIntervalMs": poll_interval_ms(tool.timeout_ms),
    })
}

/// A run as a task: where it stands and who made it.
enum State {
    Working {
        caller: Caller,
        tool_name: String,
        accepted_at: DateTime<Utc>,
    },
    Finished(Box<RunOutcome>),
    /// History has it, but not its outcome (a call without a client key, after the
    /// event log rolled past it).
    Forgotten {
        caller: Caller,
        accepted_at: DateTime<Utc>,
        finished_at: Option<DateTime<Utc>>,
        status: String,
    },
}

impl State {
    fn caller(&self) -> &Caller {
        match self {
            State::Working { caller, .. } | State::Forgotten { caller, .. } => caller,
            State::Finished(outcome) => &outcome.caller,
        }
    }
}

async fn state(st: &AppState, project_id: Uuid, run_id: Uuid) -> Option<State> {
    if let Some(outcome) = st.dispatcher.recorded(project_id, run_id).await {
        return Some(State::Finished(Box::new(outcome)));
    }
    if let Some((caller, tool_name, accepted_at)) = st.dispatcher.unfinished(project_id, run_id).await {
        return Some(State::Working {
            caller,
            tool_name,
            accepted_at,
        });
    }
    if let Ok(Some(Recorded::Kept(outcome))) = history::results::recorded(&st.pool, run_id).await {
        return Some(State::Finished(outcome));
    }
    let (run, _) = history::runs::get(&st.pool, run_id).await.ok()?;
    let caller = Caller {
        project_id: run.project_id,
        integration_id: run.integration_id,
        api_key_id: run.api_key_id,
        member: run.member_id.map(|id| tengine_core::envelope::Member {
            id,
            email: None,
            roles: Vec::new(),
            session_issued_at: run.accepted_at,
        }),
    };
    let unfinished = matches!(run.status.as_str(), "accepted" | "awaiting_approval" | "running");
    Some(if unfinished {
        State::Working {
            caller,
            tool_name: run.tool_name,
            accepted_at: run.accepted_at,
        }
    } else {
        State::Forgotten {
            caller,
            accepted_at: run.accepted_at,
            finished_at: run.finished_at,
            status: run.status,
        }
    })
}

/// The task, if it exists and belongs to the caller's credential (anything else
/// is "not found": a task id tells nothing about other callers' runs).
async fn owned(
    st: &AppState,
    principal: &Principal,
    id: &Value,
    task_id: Option<&Value>,
) -> Result<(Uuid, State), RpcError> {
    let not_found = || {
        RpcError::new(
            axum::http::StatusCode::BAD_REQUEST,
            errors::INVALID_PARAMS,
            "Failed to retrieve task: Task not found",
        )
        .with_id(id)
    };
    let run_id = task_id
        .and_then(Value::as_str)
        .and_then(|t| Uuid::parse_str(t).ok())
        .ok_or_else(not_found)?;
    let state = state(st, principal.caller.project_id, run_id)
        .await
        .ok_or_else(not_found)?;
    let caller = state.caller();
    let member = |c: &Caller| c.member.as_ref().map(|m| m.id.clone());
    if caller.project_id != principal.caller.project_id
        || caller.api_key_id != principal.caller.api_key_id
        || member(caller) != member(&principal.caller)
    {
        return Err(not_found());
    }
    Ok((run_id, state))
}

/// `tasks/get`.
pub async fn get(
    st: &Arc<AppState>,
    principal: &Principal,
    id: &Value,
    params: Option<&Value>,
) -> Result<Value, RpcError> {
    let (task_id, state) = owned(st, principal, id, params.and_then(|p| p.get("taskId"))).await?;
    Ok(describe(st, principal.caller.project_id, task_id, state).await)
}

/// The task of a run an idempotent retry found (the key is the caller's own):
/// the same task again, in its current state.
pub async fn retried(st: &Arc<AppState>, project_id: Uuid, run_id: Uuid) -> Option<Value> {
    let state = state(st, project_id, run_id).await?;
    let mut task = describe(st, project_id, run_id, state).await;
    task["resultType"] = json!("task");
    Some(task)
}

/// A task as `tasks/get` shows it: its latest run, and the answers it waits for.
async fn describe(st: &Arc<AppState>, project_id: Uuid, task_id: Uuid, first: State) -> Value {
    let call = st.task_calls.load(task_id).await;
    let (run_id, state, answered) = match call {
        Some((call, _, _)) if call.current != task_id => match state(st, project_id, call.current).await {
            Some(current) => (call.current, current, call.answered),
            None => (task_id, first, Map::new()),
        },
        Some((call, _, _)) => (task_id, first, call.answered),
        None => (task_id, first, Map::new()),
    };
    let mut task = describe_run(st, project_id, run_id, state, &answered).await;
    task["taskId"] = json!(task_id);
    task
}

async fn describe_run(
    st: &Arc<AppState>,
    project_id: Uuid,
    run_id: Uuid,
    state: State,
    answered: &Map<String, Value>,
) -> Value {
    let tool = |name: &str| {
        let st = st.clone();
        let name = name.to_string();
        async move { st.tools.get(project_id, &name).await.ok() }
    };
    let mut task = match state {
        State::Working {
            tool_name, accepted_at, ..
        } => {
            let timeout = tool(&tool_name).await.map_or(30_000, |t| t.timeout_ms);
            let mut task = json!({"status": "working", "createdAt": iso(accepted_at),
                                  "lastUpdatedAt": iso(Utc::now()), "pollIntervalMs": poll_interval_ms(timeout)});
            if st.approvals.is_parked(run_id).await {
                task["statusMessage"] = json!(AWAITING_APPROVAL);
            }
            task
        }
        State::Finished(outcome) => match waiting(&outcome, answered) {
            Some(task) => task,
            None => {
                let definition = tool(&outcome.tool_name).await;
                finished(st, definition.as_deref(), &outcome)
            }
        },
        State::Forgotten {
            accepted_at,
            finished_at,
            status,
            ..
        } => {
            let (task_status, extra) = match status.as_str() {
                "succeeded" => (
                    "completed",
                    json!({"result": results::forgotten_result(run_id, &status)}),
                ),
                "cancelled" => ("cancelled", json!({})),
                _ => (
                    "failed",
                    json!({"error": {"code": errors::INTERNAL_ERROR.code, "message": format!("the run ended {status}")}}),
                ),
            };
            let mut task = json!({"status": task_status, "createdAt": iso(accepted_at),
                                  "lastUpdatedAt": iso(finished_at.unwrap_or(accepted_at))});
            merge(&mut task, extra);
            task
        }
    };
    task["ttlMs"] = ttl_ms(st);
    task
}

/// A run whose API asked for input, as a task waiting for the client: the
/// requests not answered yet.
fn waiting(outcome: &RunOutcome, answered: &Map<String, Value>) -> Option<Value> {
    let ask = asks::parse(outcome.response.as_ref()?)?.ok()?;
    let pending: Map<String, Value> = ask
        .requests
        .into_iter()
        .filter(|(key, _)| !answered.contains_key(key))
        .collect();
    Some(json!({
        "status": "input_required",
        "statusMessage": "the API asks for input: answer with tasks/update",
        "inputRequests": pending,
        "createdAt": iso(outcome.accepted_at),
        "lastUpdatedAt": iso(outcome.finished_at),
        "pollIntervalMs": 1000,
    }))
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

/// A finished run as a task.
fn finished(st: &AppState, tool: Option<&ToolDefinition>, outcome: &RunOutcome) -> Value {
    let mut task = json!({"createdAt": iso(outcome.accepted_at), "lastUpdatedAt": iso(outcome.finished_at)});
    // What the model should read (the API's error answer, an operator's refusal) is a result.
    let completed = outcome.status == RunStatus::Succeeded
        || (outcome.status == RunStatus::Failed && outcome.error_class == Some(ErrorClass::UpstreamStatus))
        || outcome.error_class == Some(ErrorClass::ApprovalDenied);
    let extra = if completed {
        let result = match tool {
            Some(tool) => results::outcome_result(st, tool, outcome, None),
            None => results::text_outcome_result(outcome),
        };
        json!({"status": "completed", "result": result})
    } else if outcome.status == RunStatus::Cancelled {
        json!({"status": "cancelled", "statusMessage": outcome.error})
    } else {
        let message = outcome
            .error
            .clone()
            .unwrap_or_else(|| format!("the run ended {}", outcome.status.as_str()));
        json!({"status": "failed", "statusMessage": message,
               "error": {"code": errors::INTERNAL_ERROR.code, "message": message,
                         "data": {"status": outcome.status.as_str(), "errorClass": outcome.error_class}}})
    };
    merge(&mut task, extra);
    task
}

/// `tasks/cancel`: cooperative. A queued run never runs; a request in flight is
/// aborted (the run ends `cancelled`, saying the API may have received it); a
/// finished task stays as it is. The answer is an empty acknowledgment.
pub async fn cancel(
    st: &AppState,
    principal: &Principal,
    id: &Value,
    params: Option<&Value>,
) -> Result<Value, RpcError> {
    let (task_id, mut state) = owned(st, principal, id, params.and_then(|p| p.get("taskId"))).await?;
    let mut run_id = task_id;
    if let Some((call, _, _)) = st.task_calls.load(task_id).await
        && call.current != task_id
        && let Some(current) = self::state(st, principal.caller.project_id, call.current).await
    {
        (run_id, state) = (call.current, current);
    }
    if matches!(state, State::Working { .. }) && !crate::approvals::withdraw(st, run_id).await {
        st.dispatcher.abort(principal.caller.project_id, run_id).await;
    }
    Ok(json!({}))
}

/// `tasks/update`: answers to the input requests of a task whose API asked
/// ([`crate::asks`]). Answers to keys it did not ask are ignored; once every
/// request is answered, the call goes on as a continuation run (a new Run ID,
/// the answers and the API's state in `X-Tengine-Input`) that the task follows.
/// The answer is an empty acknowledgment; the task's state shows on `tasks/get`.
pub async fn update(
    st: &AppState,
    principal: &Principal,
    id: &Value,
    params: Option<&Value>,
) -> Result<Value, RpcError> {
    let (task_id, _) = owned(st, principal, id, params.and_then(|p| p.get("taskId"))).await?;
    let Some(responses) = params.and_then(|p| p.get("inputResponses")).and_then(Value::as_object) else {
        return Ok(json!({}));
    };
    let Some((mut call, command, revision)) = st.task_calls.load(task_id).await else {
        return Ok(json!({}));
    };
    let project_id = principal.caller.project_id;
    let ask = match st.dispatcher.recorded(project_id, call.current).await {
        Some(outcome) => outcome.response.as_ref().and_then(asks::parse),
        None => None,
    };
    let Some(Ok(ask)) = ask else {
        return Ok(json!({}));
    };
    for (key, response) in responses {
        if ask.requests.contains_key(key) {
            call.answered.insert(key.clone(), response.clone());
        }
    }
    if Value::Object(call.answered.clone()).to_string().len() > asks::MAX_RESPONSES_BYTES {
        let max = asks::MAX_RESPONSES_BYTES;
        return Err(RpcError::invalid_params(
            id,
            format!("inputResponses take more than {max} bytes as JSON"),
        ));
    }
    let conflict = |e: String| {
        tracing::warn!(%task_id, error = %e, "updating a task");
        RpcError::internal(
            id,
            "the task changed meanwhile (another tasks/update?): read it with tasks/get, retry",
        )
    };
    if !ask.requests.keys().all(|key| call.answered.contains_key(key)) {
        st.task_calls.store(task_id, &call, revision).await.map_err(conflict)?;
        return Ok(json!({}));
    }
    let answered = Answered {
        task_id,
        call,
        command,
        revision,
        state: ask.state,
    };
    continue_task(st, principal, id, answered).await?;
    Ok(json!({}))
}

/// A task whose every input request is answered.
struct Answered {
    task_id: Uuid,
    call: TaskCall,
    command: ExecuteCommand,
    /// The task record's revision the answers were read at.
    revision: u64,
    /// The API's state, for its next round.
    state: Option<String>,
}

/// Queues the continuation of a task whose every input request is answered.
async fn continue_task(st: &AppState, principal: &Principal, id: &Value, answered: Answered) -> Result<(), RpcError> {
    let Answered {
        task_id,
        mut call,
        command,
        revision,
        state,
    } = answered;
    if call.round.saturating_add(1) >= asks::MAX_ROUNDS {
        let max = asks::MAX_ROUNDS;
        return Err(RpcError::invalid_params(
            id,
            format!("the API asked for input more than {max} times; giving up"),
        ));
    }
    let next = ExecuteCommand {
        run_id: Uuid::now_v7(),
        accepted_at: Utc::now(),
        reply_to: None,
        progress: false,
        input: Some(CommandInput {
            responses: std::mem::take(&mut call.answered),
            state,
        }),
        ..command
    };
    match quotas::charge(&st.pool, &principal.caller, principal.limits).await {
        Ok(quotas::Verdict::Allowed(_)) => {}
        Ok(quotas::Verdict::Exceeded(exceeded)) => {
            let message = exceeded.message();
            return Err(RpcError::new(axum::http::StatusCode::OK, errors::QUOTA_EXCEEDED, message).with_id(id));
        }
        Err(err) => {
            tracing::error!(error = %err, "checking quotas");
            return Err(RpcError::internal(
                id,
                "the quota could not be checked right now; retry",
            ));
        }
    }
    // The task points at its continuation before it is queued: of two updates,
    // only the one that moved it queues a run.
    let previous = std::mem::replace(&mut call.current, next.run_id);
    call.round = call.round.saturating_add(1);
    st.task_calls.store(task_id, &call, revision).await.map_err(|e| {
        tracing::warn!(%task_id, error = %e, "continuing a task");
        RpcError::internal(
            id,
            "the task changed meanwhile (another tasks/update?): read it with tasks/get, retry",
        )
    })?;
    if let Err(err) = st
        .dispatcher
        .enqueue(&next, &TraceContext::default(), Duration::from_secs(3), Duration::ZERO)
        .await
    {
        tracing::error!(%task_id, error = %err, "queueing a task's continuation");
        // Back to waiting for the same answers (best effort: the client retries).
        call.current = previous;
        call.round = call.round.saturating_sub(1);
        call.answered = next.input.map(|input| input.responses).unwrap_or_default();
        if let Some((_, _, now)) = st.task_calls.load(task_id).await {
            let _ = st.task_calls.store(task_id, &call, now).await;
        }
        return Err(RpcError::internal(
            id,
            "the task could not be continued right now; retry tasks/update",
        ));
    }
    tracing::info!(%task_id, run_id = %next.run_id, "task continued with the client's answers");
    Ok(())
}

//! The MCP Tasks extension (`io.modelcontextprotocol/tasks`, revision 2026-07-28):
//! a task is a run. Its id is the Run ID; its state is read from where the run
//! lives (the queue, the event log, run history), so a task is reachable from
//! any ingress instance and survives restarts of every process. Nothing is stored
//! for a task beyond its run.
//!
//! Status: accepted/running → `working`; succeeded, and failures the API answered
//! (a non-2xx status: a tool-level error) → `completed` with the tool result
//! inline; every other failure → `failed` with a JSON-RPC error; cancelled →
//! `cancelled`.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use tengine_control::principals::Principal;
use tengine_core::{
    domain::ToolDefinition,
    envelope::{Caller, ErrorClass, RunOutcome, RunStatus},
    errors,
};
use tengine_projector::history::{self, results::Recorded};
use uuid::Uuid;

use crate::{AppState, jsonrpc::RpcError, results};

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
    let (run_id, state) = owned(st, principal, id, params.and_then(|p| p.get("taskId"))).await?;
    Ok(describe(st, principal.caller.project_id, run_id, state).await)
}

/// The task of a run an idempotent retry found (the key is the caller's own):
/// the same task again, in its current state.
pub async fn retried(st: &Arc<AppState>, project_id: Uuid, run_id: Uuid) -> Option<Value> {
    let state = state(st, project_id, run_id).await?;
    let mut task = describe(st, project_id, run_id, state).await;
    task["resultType"] = json!("task");
    Some(task)
}

/// A task as `tasks/get` shows it.
async fn describe(st: &Arc<AppState>, project_id: Uuid, run_id: Uuid, state: State) -> Value {
    let tool = |name: &str| {
        let st = st.clone();
        let name = name.to_string();
        async move { st.catalog.get(&st.pool, project_id, &name).await.ok() }
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
        State::Finished(outcome) => {
            let definition = tool(&outcome.tool_name).await;
            finished(st, definition.as_deref(), &outcome)
        }
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
    task["taskId"] = json!(run_id);
    task["ttlMs"] = ttl_ms(st);
    task
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
    let (run_id, state) = owned(st, principal, id, params.and_then(|p| p.get("taskId"))).await?;
    if matches!(state, State::Working { .. }) && !crate::approvals::withdraw(st, run_id).await {
        st.dispatcher.abort(principal.caller.project_id, run_id).await;
    }
    Ok(json!({}))
}

/// `tasks/update`: answers to a task's input requests. Tengine's tasks never ask
/// for input, so every key is unknown and ignored (as the extension says); the
/// task must still exist and be the caller's.
pub async fn update(
    st: &AppState,
    principal: &Principal,
    id: &Value,
    params: Option<&Value>,
) -> Result<Value, RpcError> {
    owned(st, principal, id, params.and_then(|p| p.get("taskId"))).await?;
    Ok(json!({}))
}

//! Re-drive: a finished run's call made again as a new run. It goes through the
//! steps of `tools/call` as its original caller (the tool exists, is enabled and
//! allowed; the credential is live; the arguments pass the schema and templates;
//! the quota; operator approval), so it gets its own Run ID, history and usage,
//! and its `Accepted` event names the run it re-drives.
//!
//! What it runs again: the arguments run history kept. They are kept with the
//! bodies, so only for projects that store bodies, and redacted like them; a run
//! whose arguments were not kept, or were changed by redaction or the size cap,
//! is refused (409 `redrive_unavailable`) rather than run with other arguments
//! than its caller sent.
//!
//! A retry with the same key (`Idempotency-Key` of the admin request, or the
//! console form's re-drive id) is claimed like a client's idempotency key, under
//! the original caller's credential: it answers the first re-drive's run and does
//! not run it twice.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tengine_control::principals;
use tengine_core::{
    envelope::{Caller, Member},
    telemetry::TraceContext,
};
use tengine_projector::history;
use tracing::Instrument;
use uuid::Uuid;

use super::{Accepted, Call, Era, META_RUN_ID, Stop, confirm};
use crate::AppState;

/// Why a re-drive did not start a run.
#[derive(Debug)]
pub enum RedriveError {
    /// No such run in the project.
    NotFound,
    /// The run cannot be re-driven (not finished, or its arguments were not kept whole).
    Unavailable(String),
    /// The call path refused the new call; its message says why.
    Refused(String),
    /// Storage or the queue failed; nothing was run.
    Internal(String),
}

/// The new run (or, for a retry of the same re-drive, the run it already started).
#[derive(Debug)]
pub struct Redriven {
    pub run_id: Uuid,
    pub tool_name: String,
}

/// A key's claim scope: its original run's, so one key re-drives each run once.
fn claim_key(original: Uuid, key: &str) -> String {
    format!("redrive {original} {key}")
}

/// Runs `original` (of `project_id`) again; `key` makes a retry answer the same run.
pub async fn redrive(
    st: Arc<AppState>,
    project_id: Uuid,
    original: Uuid,
    key: Option<String>,
) -> Result<Redriven, RedriveError> {
    let (run, _) = history::runs::get(&st.pool, original).await.map_err(|e| match e {
        tengine_control::StoreError::NotFound => RedriveError::NotFound,
        other => RedriveError::Internal(other.to_string()),
    })?;
    if run.project_id != project_id {
        return Err(RedriveError::NotFound);
    }
    if matches!(run.status.as_str(), "accepted" | "running") {
        return Err(RedriveError::Unavailable(format!(
            "run {original} has not finished (it is {}); re-drive it once it has",
            run.status
        )));
    }
    let arguments = kept_arguments(&st, original).await?;
    // The original caller as it stands now: a revoked key, integration or member refuses.
    let caller = Caller {
        project_id,
        integration_id: run.integration_id,
        api_key_id: run.api_key_id,
        member: run.member_id.clone().map(|id| Member {
            id,
            email: None,
            roles: Vec::new(),
            // Sessions of the member revoked after the original call refuse it.
            session_issued_at: run.accepted_at,
        }),
    };
    let principal = principals::current(&st.pool, &caller)
        .await
        .map_err(|e| RedriveError::Internal(e.to_string()))?
        .ok_or_else(|| {
            RedriveError::Refused(format!(
                "the credential that made run {original} was revoked (or its integration deleted): a re-drive calls \
                 as the original caller"
            ))
        })?;
    let run_id = Uuid::now_v7();
    let call = Call {
        st,
        principal,
        // No session and no client to ask: a tool that needs one (a user's
        // confirmation, declared client capabilities, a task) is refused.
        era: Era::Modern {
            log_level: None,
            capabilities: Map::new(),
            param_headers: Vec::new(),
        },
        id: json!(format!("redrive-{original}")),
        trace: TraceContext::new(),
        run_id,
        redrive_of: Some(original),
    };
    let span = tracing::info_span!("redrive", %run_id, redrive_of = %original, tool = %run.tool_name);
    call.redrive(&run.tool_name, arguments, key.map(|k| claim_key(original, &k)))
        .instrument(span)
        .await
        .map(|run_id| Redriven {
            run_id,
            tool_name: run.tool_name,
        })
}

/// The arguments history kept of `run_id`, if whole.
async fn kept_arguments(st: &AppState, run_id: Uuid) -> Result<Map<String, Value>, RedriveError> {
    let kept = history::runs::arguments(&st.pool, run_id)
        .await
        .map_err(|e| RedriveError::Internal(e.to_string()))?;
    match (kept.arguments, kept.arguments_altered) {
        (_, Some(true)) => Err(RedriveError::Unavailable(format!(
            "the arguments of run {run_id} were kept redacted or cut (the project's redact_fields or body_max_bytes): \
             it cannot be run again with the arguments its caller sent"
        ))),
        (Some(text), _) => match serde_json::from_str(&text) {
            Ok(Value::Object(arguments)) => Ok(arguments),
            _ => Err(RedriveError::Unavailable(format!(
                "the arguments kept of run {run_id} are not a JSON object"
            ))),
        },
        (None, _) => Err(RedriveError::Unavailable(format!(
            "the arguments of run {run_id} were not kept: run history keeps a call's arguments only for projects that \
             store bodies (store_bodies), for runs that reached the API, while the run's bodies are kept"
        ))),
    }
}

/// A JSON-RPC refusal's message.
fn refusal(err: &crate::jsonrpc::RpcError) -> String {
    let message = err.message();
    message["error"]["message"].as_str().unwrap_or("refused").to_string()
}

/// A tool result's text (the model's view of a refusal).
fn result_text(result: &Value) -> String {
    result["content"][0]["text"].as_str().unwrap_or("refused").to_string()
}

impl Call {
    /// `tools/call`'s steps up to queueing (or parking) the run; nobody waits on its answer.
    async fn redrive(
        self,
        name: &str,
        arguments: Map<String, Value>,
        key: Option<String>,
    ) -> Result<Uuid, RedriveError> {
        let refused = |stop: Stop| match stop {
            Stop::Error(err) => RedriveError::Refused(refusal(&err)),
            Stop::Result(result) => RedriveError::Refused(result_text(&result)),
        };
        let tool = self.resolve(name).await.map_err(refused)?;
        let as_task = self.gate(&tool).map_err(refused)?;
        let arguments = self.validate(&tool, arguments).await.map_err(refused)?;
        let admission = self
            .admit(&tool, &arguments, confirm::Input::default())
            .await
            .map_err(refused)?;
        match self.execute(tool, arguments, key, admission, None, as_task).await {
            Ok(Accepted::Follow(answering)) => Ok(answering.following.run_id),
            Ok(Accepted::Task(task)) => task["task"]["taskId"]
                .as_str()
                .and_then(|id| Uuid::parse_str(id).ok())
                .ok_or_else(|| RedriveError::Internal("a re-drive became a task without an id".into())),
            // The same key again: the run its first request started.
            Err(Stop::Result(result)) => result["_meta"][META_RUN_ID]
                .as_str()
                .and_then(|id| Uuid::parse_str(id).ok())
                .ok_or_else(|| RedriveError::Refused(result_text(&result))),
            Err(Stop::Error(err)) => {
                let message = err.message();
                Err(match message["error"]["code"].as_i64() {
                    Some(code) if code == i64::from(tengine_core::errors::INTERNAL_ERROR.code) => {
                        RedriveError::Internal(refusal(&err))
                    }
                    _ => RedriveError::Refused(refusal(&err)),
                })
            }
        }
    }
}

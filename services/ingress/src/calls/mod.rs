//! `tools/call` as a pipeline of named steps, each its own function:
//! parse → resolve (the tool, and the caller's access to it) → validate (schema,
//! dry render) → command (fits a NATS message) → claim (the idempotency key) →
//! charge (quotas) → enqueue → answer (follow the run; JSON, or SSE with progress).
//! A step that ends the call early returns a [`Stop`]: a JSON-RPC error, or a tool
//! result the model sees (bad arguments are a tool execution error, SEP-1303).

use std::{sync::Arc, time::Duration};

use axum::{http::StatusCode, response::Response};
use chrono::Utc;
use rmcp::model::CallToolRequestParams;
use serde_json::{Map, Value, json};
use tengine_control::{
    StoreError,
    principals::Principal,
    quotas::{self, Charge},
};
use tengine_core::{
    domain::{Approval, TaskSupport, ToolDefinition},
    envelope::{Caller, ErrorClass, ExecuteCommand, RunEvent, RunOrigin, RunStatus},
    errors, payload, prometheus,
    telemetry::TraceContext,
    templates,
};
use tengine_projector::history::{self, results::Recorded};
use tracing::Instrument;
use uuid::Uuid;

mod confirm;
pub mod idempotency;
pub mod param_headers;
mod progress;
pub mod redrive;
mod session_input;

pub use crate::results::{META_HTTP_STATUS, META_RUN_ID, META_STATUS};
pub(crate) use confirm::can_elicit_form;
pub use progress::resume;
pub use session_input::deliver_answer;

use crate::{
    AppState,
    dispatch::{CallKey, Following, Signal},
    jsonrpc::{self, RpcError, RpcResult},
    results,
    sessions::SessionStates,
};

const MAX_TOOL_NAME_IN_HISTORY: usize = 200;
/// How long a call without a claim may keep publishing its command.
const QUEUEING: Duration = Duration::from_secs(3);
/// How long a call answered on this instance runs before its `Accepted` event is
/// stored (see `Dispatcher::enqueue`).
const ACCEPTED_AFTER: Duration = Duration::from_millis(250);

/// Which revision of MCP a call came through: it decides what identifies a retry,
/// how the answer looks and what a closed stream means.
#[derive(Clone)]
pub enum Era {
    /// A 2025-11-25 (or older) session: a resend with the same JSON-RPC id in the
    /// session is the same call; `notifications/cancelled` cancels.
    Legacy { session: String },
    /// 2026-07-28: no session; only a client key identifies a retry; closing the
    /// response stream cancels the call (if it has not reached the API).
    Modern {
        log_level: Option<String>,
        /// What the client declared on this request (`_meta`).
        capabilities: Map<String, Value>,
        /// `Mcp-Param-*` headers (see [`param_headers`]).
        param_headers: Vec<(String, Option<String>)>,
    },
}

/// One `tools/call` as the MCP layer hands it over.
pub struct CallRequest {
    pub principal: Principal,
    pub era: Era,
    pub id: Value,
    pub params: Option<Value>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    pub trace: TraceContext,
}

/// Why a call ends before its run is queued.
enum Stop {
    Error(RpcError),
    /// A tool result (HTTP 200, `result`).
    Result(Value),
}

impl From<RpcError> for Stop {
    fn from(err: RpcError) -> Self {
        Stop::Error(err)
    }
}

type Step<T> = Result<T, Stop>;

/// A call queued (or parked): what its caller gets.
enum Accepted {
    /// A task (the run is durable).
    Task(Value),
    /// The run to follow to its answer.
    Follow(Box<progress::Answering>),
}

/// What the parameters ask for.
struct Params {
    name: String,
    arguments: Map<String, Value>,
    progress_token: Option<Value>,
    /// `_meta.idempotencyKey`.
    meta_key: Option<String>,
    /// `inputResponses` and `requestState` (2026-07-28).
    input: confirm::Input,
}

/// One call going through the pipeline.
struct Call {
    st: Arc<AppState>,
    principal: Principal,
    era: Era,
    id: Value,
    trace: TraceContext,
    run_id: Uuid,
    /// A re-drive's original run (see [`redrive`]).
    redrive_of: Option<Uuid>,
}

pub fn call_key(session: &str, request_id: &Value) -> CallKey {
    CallKey {
        session: SessionStates::key(session),
        request_id: request_id.to_string(),
    }
}

/// `tools/call`: one span per call carrying the Run ID (a child of the client's
/// trace when it sent `traceparent`), timed and counted.
pub async fn call_tool(st: Arc<AppState>, request: CallRequest) -> RpcResult<Response> {
    let run_id = Uuid::now_v7();
    let span = tracing::info_span!("tools/call", %run_id, tool = tracing::field::Empty);
    let started = std::time::Instant::now();
    let _in_flight = InFlight::enter();
    let id = request.id.clone();
    let modern = matches!(request.era, Era::Modern { .. });
    let call = Call {
        st,
        principal: request.principal,
        era: request.era,
        id: request.id,
        trace: request.trace,
        run_id,
        redrive_of: None,
    };
    let answer = call.run(request.params, request.idempotency_key).instrument(span).await;
    metrics::histogram!(prometheus::CALL_SECONDS).record(started.elapsed().as_secs_f64());
    match answer {
        Ok(response) => Ok(response),
        Err(Stop::Error(err)) => Err(err),
        Err(Stop::Result(result)) if modern => Ok(jsonrpc::result(&id, results::decorate(result))),
        Err(Stop::Result(result)) => Ok(jsonrpc::result(&id, result)),
    }
}

impl Call {
    async fn run(self, params: Option<Value>, header_key: Option<String>) -> Step<Response> {
        let Params {
            name,
            arguments,
            progress_token,
            meta_key,
            input,
        } = self.parse(params)?;
        let tool = self.resolve(&name).await?;
        self.check_param_headers(&tool, &arguments)?;
        let as_task = self.gate(&tool)?;
        let arguments = self.validate(&tool, arguments).await?;
        let key = header_key.or(meta_key);
        if self.streams_in_session(&tool) {
            // 2025-11-25: the call on its own stream, where its user can be asked.
            return self.run_in_session(tool, arguments, key, progress_token);
        }
        let admission = self.admit(&tool, &arguments, input).await?;
        let accepted = self
            .execute(tool, arguments, key, admission, progress_token, as_task)
            .await?;
        Ok(match accepted {
            Accepted::Task(task) => jsonrpc::result(&self.id, results::decorate(task)),
            Accepted::Follow(answering) => answering.answer(self.st.clone()).await,
        })
    }

    /// The steps once the call may run: claim its key, charge it, queue (or park)
    /// it; then what its caller waits on.
    async fn execute(
        &self,
        tool: Arc<ToolDefinition>,
        arguments: Map<String, Value>,
        key: Option<String>,
        admission: confirm::Admission,
        progress_token: Option<Value>,
        as_task: bool,
    ) -> Step<Accepted> {
        let mut command = self.command(&tool, arguments, key.as_deref()).await?;
        command.input = admission.input;
        // Each round of an API's questions is a call of its own.
        let round = match (&command.input, &admission.nonce) {
            (None, _) => None,
            (Some(_), Some(nonce)) => Some(nonce.clone()),
            (Some(_), None) => Some(format!("round {}", admission.round)),
        };
        let lease = self
            .claim(&tool, &command, key, as_task, round.as_deref(), admission.round)
            .await?;
        // A claim taken over keeps the Run ID it was first given.
        let run_id = lease.as_ref().map_or(self.run_id, |lease| lease.run_id);
        tracing::Span::current().record("run_id", tracing::field::display(run_id));
        if let Some(nonce) = &admission.nonce {
            self.spend(nonce, run_id, lease.as_deref()).await?;
        }
        let charge = self.charge(&tool, run_id, lease.as_deref()).await?;
        command.run_id = run_id;
        command.reply_to = Some(self.st.dispatcher.reply_subject(run_id));
        let parked = tool.approval == Approval::Operator;
        if as_task && let Err(err) = self.st.task_calls.remember(&command).await {
            // Without its call kept, a task whose API asks could not go on.
            tracing::error!(%run_id, error = %err, "keeping a task's call");
            quotas::refund(&self.st.pool, self.caller().project_id, &charge).await;
            if let Some(lease) = &lease {
                lease.release().await;
            }
            return Err(RpcError::internal(
                &self.id,
                "the task could not be created right now; it was not run: retry",
            )
            .into());
        }
        // Whether a client waits here for this run's answer (not a task, not a re-drive).
        let attended = !as_task && self.redrive_of.is_none();
        let log = match &self.era {
            Era::Legacy { session } => progress::session_logs_info(&self.st, session),
            Era::Modern { log_level, .. } => log_level.as_deref().is_some_and(progress::logs_info),
        };
        // Only a caller shown the attempt's progress needs the worker's progress messages.
        command.progress = attended && (progress_token.is_some() || log);
        // 2026-07-28: a client that goes away cancels its call. Armed before the
        // command is stored: this request's future may be dropped at any await from
        // here on, and a run queued after its client left must not reach the API.
        let gone = (matches!(self.era, Era::Modern { .. }) && attended)
            .then(|| progress::CancelOnDrop::new(&self.st, self.caller(), run_id));
        let queued = if parked {
            self.park(&command, lease, charge).await
        } else {
            self.enqueue(&command, lease, charge, attended).await
        };
        let following = match queued {
            Ok(following) => following,
            // Not queued (or not confirmed: then a retry with the key follows the run).
            Err(err) => {
                if let Some(gone) = gone {
                    gone.disarm();
                }
                return Err(err);
            }
        };
        tracing::info!(%run_id, tool = %tool.name, project_id = %self.caller().project_id, "run accepted");
        // Queued: the command's arguments are no longer needed but to seal an API's questions.
        let asking = self.asking(&tool, std::mem::take(&mut command.arguments), admission.round);
        if as_task {
            let task = self.task(&tool, &command, following, parked, asking.as_ref()).await;
            return Ok(Accepted::Task(task));
        }
        Ok(Accepted::Follow(Box::new(progress::Answering {
            tool,
            following,
            caller: self.caller().clone(),
            request_id: self.id.clone(),
            progress_token,
            log,
            modern: matches!(self.era, Era::Modern { .. }),
            // A parked call waits for a person: as long as a call may wait at all.
            long_wait: parked,
            asking,
            cancel_on_drop: gone,
        })))
    }

    /// The answer to a call that became a task: its command is stored, so the task
    /// (the run) is durable and readable now. An API that asks for input within
    /// `ingress.task_input_window_ms` has its requests answered first: a multi
    /// round-trip result rather than a task (the re-issued call becomes the task).
    async fn task(
        &self,
        tool: &ToolDefinition,
        command: &ExecuteCommand,
        mut following: Following,
        parked: bool,
        asking: Option<&crate::asks::Asking>,
    ) -> Value {
        let window = Duration::from_millis(self.st.config.ingress.task_input_window_ms);
        if !parked && !window.is_zero() {
            let deadline = tengine_core::tasks::deadline_after(window);
            while let Some(signal) = following.next(deadline).await {
                let Signal::Finished(outcome) = signal else { continue };
                if let Some(asked) = crate::asks::answer(&self.st, &outcome, asking)
                    && asked["resultType"] == "input_required"
                {
                    return asked;
                }
                break;
            }
        }
        crate::tasks::created(&self.st, command.run_id, tool, command.accepted_at, parked)
    }

    /// What a 2026-07-28 call needs to carry the API's input requests.
    fn asking(&self, tool: &ToolDefinition, arguments: Map<String, Value>, round: u32) -> Option<crate::asks::Asking> {
        let Era::Modern { capabilities, .. } = &self.era else {
            return None;
        };
        Some(crate::asks::Asking {
            caller: self.caller().clone(),
            tool_id: tool.id,
            tool_name: tool.name.clone(),
            tool_version: tool.version,
            arguments,
            capabilities: capabilities.clone(),
            round,
        })
    }

    /// The same call again under another Run ID (the next round of an API's questions).
    fn next_round(&self, run_id: Uuid) -> Call {
        Call {
            st: self.st.clone(),
            principal: self.principal.clone(),
            era: self.era.clone(),
            id: self.id.clone(),
            trace: self.trace.clone(),
            run_id,
            redrive_of: self.redrive_of,
        }
    }

    fn caller(&self) -> &Caller {
        &self.principal.caller
    }

    fn parse(&self, mut params: Option<Value>) -> Step<Params> {
        let input = confirm::Input::take(&mut params);
        let params: CallToolRequestParams = serde_json::from_value(params.unwrap_or(Value::Null)).map_err(|e| {
            RpcError::invalid_params(
                &self.id,
                format!("tools/call params are malformed ({e}); expected {{\"name\": string, \"arguments\": object}}"),
            )
        })?;
        let name = params.name.to_string();
        tracing::Span::current().record("tool", name.as_str());
        let meta = params.meta.as_ref().and_then(|m| serde_json::to_value(m).ok());
        let progress_token = meta
            .as_ref()
            .and_then(|m| m.get("progressToken").cloned())
            .filter(|t| t.is_string() || t.is_number());
        // A key that is not one is refused: ignored, every retry would be a new run.
        let meta_key = match meta.as_ref().and_then(|m| m.get(idempotency::META_KEY)) {
            None | Some(Value::Null) => None,
            Some(Value::String(key)) if !key.is_empty() => Some(key.clone()),
            Some(other) => {
                return Err(RpcError::invalid_params(
                    &self.id,
                    format!(
                        "_meta.idempotencyKey must be a string of 1-{} bytes, not {}",
                        idempotency::MAX_KEY_LEN,
                        match other {
                            Value::String(_) => "an empty string",
                            Value::Number(_) => "a number",
                            Value::Bool(_) => "a boolean",
                            Value::Array(_) => "an array",
                            _ => "an object",
                        }
                    ),
                )
                .into());
            }
        };
        Ok(Params {
            name,
            arguments: params.arguments.unwrap_or_default(),
            progress_token,
            meta_key,
            input,
        })
    }

    /// The tool by name, if it is enabled and the caller may use it.
    async fn resolve(&self, name: &str) -> Step<Arc<ToolDefinition>> {
        let loading = std::time::Instant::now();
        let tool = self.st.tools.get(self.caller().project_id, name).await;
        prometheus::stage(prometheus::INGRESS_STAGE_SECONDS, "tool", loading);
        let principal = &self.principal;
        match tool {
            Ok(tool) if tool.enabled && principal.may_use(&tool) => Ok(tool),
            Ok(tool)
                if tool.enabled
                    && tool.require_member
                    && principal.caller.member.is_none()
                    && principal
                        .allowed_tools
                        .as_ref()
                        .is_none_or(|names| names.contains(&tool.name)) =>
            {
                let message = format!("Tool `{}` requires a member session (Bearer tng_mst_…)", tool.name);
                self.reject(name, ErrorClass::UnknownTool, &message).await;
                Err(RpcError::invalid_params(&self.id, message).into())
            }
            Ok(_) | Err(StoreError::NotFound) => {
                let message = format!("Unknown tool: `{}`", truncate_name(name));
                self.reject(name, ErrorClass::UnknownTool, &message).await;
                let mut err =
                    RpcError::invalid_params(&self.id, format!("{message}; call tools/list for the available tools"));
                err.data = Some(json!({ META_RUN_ID: self.run_id }));
                Err(err.into())
            }
            Err(err) => {
                tracing::error!(error = %err, "loading a tool");
                Err(RpcError::internal(&self.id, "the tool could not be loaded right now; retry").into())
            }
        }
    }

    /// Revision 2026-07-28: the client capabilities the tool needs (-32021 when the
    /// request did not declare them), and whether the call becomes a task.
    fn gate(&self, tool: &ToolDefinition) -> Step<bool> {
        let Era::Modern { capabilities, .. } = &self.era else {
            return Ok(false);
        };
        if let Some(Value::Object(required)) = &tool.client_capabilities {
            let missing: Map<String, Value> = required
                .iter()
                .filter(|(name, _)| !capabilities.contains_key(*name))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            if !missing.is_empty() {
                let what = format!("tool `{}`", tool.name);
                return Err(RpcError::missing_capability(&self.id, Value::Object(missing), &what).into());
            }
        }
        let declared = crate::tasks::declared(capabilities);
        match tool.task_support {
            TaskSupport::Never => Ok(false),
            TaskSupport::Required if !declared => {
                let what = format!("tool `{}` (it runs as a task)", tool.name);
                Err(RpcError::missing_capability(&self.id, crate::tasks::required_capability(), &what).into())
            }
            TaskSupport::Required => Ok(true),
            // A call that waits for a person, or may run long, waits as a task when it can.
            TaskSupport::Optional => Ok(declared
                && (tool.approval == Approval::Operator || tool.timeout_ms > self.st.config.ingress.task_after_ms)),
        }
    }

    /// The arguments against the tool's schema, then a dry render of its request.
    async fn validate(&self, tool: &ToolDefinition, arguments: Map<String, Value>) -> Step<Map<String, Value>> {
        let arguments = Value::Object(arguments);
        let problems = self
            .st
            .validators
            .check(tool, &arguments)
            .map_err(|e| RpcError::internal(&self.id, e))?;
        let Value::Object(arguments) = arguments else {
            return Ok(Map::new());
        };
        let problem = if problems.is_empty() {
            let ctx = templates::Context {
                arguments: &arguments,
                reserved: templates::reserved_variables(self.caller(), self.run_id),
            };
            tengine_core::request::render(tool, &ctx).err().map(|e| e.to_string())
        } else {
            Some(problems.join("; "))
        };
        let Some(problem) = problem else { return Ok(arguments) };
        let message = format!("Invalid arguments for tool `{}`: {problem}", tool.name);
        self.reject(&tool.name, ErrorClass::InvalidArguments, &message).await;
        let meta = results::run_meta(self.run_id, RunStatus::Rejected, None);
        Err(Stop::Result(results::tool_result(true, message, meta)))
    }

    /// The command to queue, refused with a clear error when it could never fit a
    /// NATS message (a Run ID taken over later has the same encoded length).
    async fn command(
        &self,
        tool: &ToolDefinition,
        arguments: Map<String, Value>,
        client_key: Option<&str>,
    ) -> Step<ExecuteCommand> {
        let accepted_at = Utc::now();
        let trace_id = tengine_core::telemetry::trace_id(&tracing::Span::current(), &self.trace);
        let origin = RunOrigin {
            trace_id: (!trace_id.is_empty()).then_some(trace_id),
            idempotency_key: client_key.map(str::to_string),
            redrive_of: self.redrive_of,
        };
        let command = ExecuteCommand {
            run_id: self.run_id,
            caller: self.caller().clone(),
            tool_id: tool.id,
            tool_name: tool.name.clone(),
            tool_version: tool.version,
            arguments,
            accepted_at,
            reply_to: Some(self.st.dispatcher.reply_subject(self.run_id)),
            // A client's own key outlives the event log's guarantee: history keeps the
            // outcome for as long as the key maps to the run.
            keep_result_until: client_key
                .and_then(|_| accepted_at.checked_add_signed(self.st.config.ingress.idempotency_ttl())),
            input: None,
            origin: Some(origin),
            // Set once it is known how the caller wants its answer (`execute`).
            progress: false,
        };
        if let Err(message) = command.check_fits(payload::server_max_payload(&self.st.nats)) {
            self.reject(&tool.name, ErrorClass::InvalidArguments, &message).await;
            return Err(RpcError::invalid_params(&self.id, message).into());
        }
        Ok(command)
    }

    /// One run per idempotency key: the key is claimed for this call, or a retry
    /// follows (or waits for) the run the key already has.
    /// Records in the run's history, in the background, that a client retry was
    /// answered from it (the API was not called again).
    fn log_client_retry(&self, run_id: Uuid, tool_name: &str) {
        let event = RunEvent::ClientRetried {
            run_id,
            caller: self.caller().clone(),
            tool_name: tool_name.to_string(),
            retried_at: chrono::Utc::now(),
        };
        let (st, project_id) = (self.st.clone(), self.caller().project_id);
        tokio::spawn(async move { st.dispatcher.log(project_id, event).await });
    }

    async fn claim(
        &self,
        tool: &ToolDefinition,
        command: &ExecuteCommand,
        key: Option<String>,
        as_task: bool,
        round: Option<&str>,
        rounds_before: u32,
    ) -> Step<Option<Box<idempotency::Lease>>> {
        let caller = self.caller();
        let scope = match (key, &self.era) {
            // Scoped to the credential (API key, and member): another caller's key never matches.
            (Some(key), _) if key.len() <= idempotency::MAX_KEY_LEN => format!(
                "key\n{}\n{}\n{key}\n{}",
                caller.api_key_id,
                caller.member.as_ref().map_or("", |m| m.id.as_str()),
                round.unwrap_or_default()
            ),
            (Some(_), _) => {
                let max = idempotency::MAX_KEY_LEN;
                return Err(RpcError::invalid_params(
                    &self.id,
                    format!("_meta.idempotencyKey must be at most {max} characters"),
                )
                .into());
            }
            (None, Era::Legacy { session }) => match round {
                None => format!("request\n{}\n{}", SessionStates::key(session), self.id),
                Some(round) => format!("request\n{}\n{}\n{round}", SessionStates::key(session), self.id),
            },
            // 2026-07-28 has no session: without a client key, every request is a new call.
            (None, Era::Modern { .. }) => return Ok(None),
        };
        let claim_key = idempotency::Idempotency::key(caller.project_id, &scope);
        let fingerprint = idempotency::fingerprint(&tool.name, &command.arguments);
        let claiming = std::time::Instant::now();
        let claimed = self
            .st
            .idempotency
            .claim(&claim_key, self.run_id, &fingerprint, |run| {
                traced(&self.st, caller.project_id, run)
            })
            .await;
        prometheus::stage(prometheus::INGRESS_STAGE_SECONDS, "claim", claiming);
        let with_run = |mut err: RpcError, run: Uuid| {
            err.data = Some(json!({ META_RUN_ID: run }));
            Stop::Error(err)
        };
        match claimed {
            Ok(idempotency::Claimed::Owned(lease)) => Ok(Some(lease)),
            // A task's retry gets its task again; a plain call's, the run's outcome.
            Ok(idempotency::Claimed::Existing(original)) => {
                self.log_client_retry(original, &tool.name);
                Err(Stop::Result(match as_task {
                    true => match crate::tasks::retried(&self.st, caller.project_id, original).await {
                        Some(task) => task,
                        None => follow_existing(&self.st, tool, caller.project_id, original, None).await,
                    },
                    false => {
                        // A retry may get the API's questions again: sealed for this call.
                        let asking = self.asking(tool, command.arguments.clone(), rounds_before);
                        follow_existing(&self.st, tool, caller.project_id, original, asking.as_ref()).await
                    }
                }))
            }
            // Its first call holds the key and is still being queued (or gave up a
            // moment ago): answer now rather than wait on a run that may never exist.
            Ok(idempotency::Claimed::Pending(original)) => Err(with_run(
                RpcError::internal(
                    &self.id,
                    format!(
                        "the first attempt of this call (run {original}) is not queued yet; retry in a few seconds \
                         with the same key: it will run at most once"
                    ),
                ),
                original,
            )),
            Ok(idempotency::Claimed::Conflict(original)) => Err(with_run(
                RpcError::invalid_params(
                    &self.id,
                    format!(
                        "this idempotency key was already used for run {original} with other arguments; use a new \
                         key for a different call"
                    ),
                ),
                original,
            )),
            Err(err) => {
                tracing::error!(error = %err, "claiming an idempotency key");
                Err(RpcError::internal(
                    &self.id,
                    "the call could not be recorded right now; it was not run: retry",
                )
                .into())
            }
        }
    }

    /// Counts the call against the caller's quotas. Only once the key is claimed: a
    /// retry that follows an existing run never counts twice. A refusal gives the
    /// key back, so the same key works once the quota resets.
    async fn charge(&self, tool: &ToolDefinition, run_id: Uuid, lease: Option<&idempotency::Lease>) -> Step<Charge> {
        let charging = std::time::Instant::now();
        // The limits came with the credential (one query for both).
        let verdict = quotas::charge(&self.st.pool, self.caller(), self.principal.limits).await;
        prometheus::stage(prometheus::INGRESS_STAGE_SECONDS, "quota", charging);
        match verdict {
            Ok(quotas::Verdict::Allowed(charge)) => Ok(charge),
            Ok(quotas::Verdict::Exceeded(exceeded)) => {
                let message = exceeded.message();
                self.reject_run(run_id, &tool.name, ErrorClass::QuotaExceeded, &message)
                    .await;
                if let Some(lease) = lease {
                    lease.release().await;
                }
                let mut err = RpcError::new(StatusCode::OK, errors::QUOTA_EXCEEDED, message).with_id(&self.id);
                err.data = Some(json!({
                    META_RUN_ID: run_id,
                    "limit": exceeded.limit,
                    "value": exceeded.value,
                    "resetsAt": exceeded.resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                }));
                Err(err.into())
            }
            Err(err) => {
                tracing::error!(error = %err, "checking quotas");
                if let Some(lease) = lease {
                    lease.release().await;
                }
                Err(RpcError::internal(
                    &self.id,
                    "the call's quota could not be checked right now; it was not run: retry",
                )
                .into())
            }
        }
    }

    /// Queues the command (while the lease holds) and starts following its run.
    async fn enqueue(
        &self,
        command: &ExecuteCommand,
        lease: Option<Box<idempotency::Lease>>,
        charge: Charge,
        attended: bool,
    ) -> Step<Following> {
        let run_id = command.run_id;
        let cancellable = match &self.era {
            Era::Legacy { session } => Some(call_key(session, &self.id)),
            Era::Modern { .. } => None,
        };
        let following = self.st.dispatcher.follow(run_id, cancellable);
        let enqueueing = std::time::Instant::now();
        // Only while the lease holds: after it, a retry may take the key over.
        let within = lease.as_ref().map_or(QUEUEING, |lease| lease.remaining());
        // A task's or a re-drive's run is in history at once (nobody waits for it
        // here; tasks/get may come next); a call answered here only if it outlasts
        // `ACCEPTED_AFTER`.
        let accepted_after = if attended { ACCEPTED_AFTER } else { Duration::ZERO };
        let enqueued = self
            .st
            .dispatcher
            .enqueue(command, &self.trace, within, accepted_after)
            .await;
        prometheus::stage(prometheus::INGRESS_STAGE_SECONDS, "enqueue", enqueueing);
        // Queued or not, this call is done with the key: the run (if stored) is its trace.
        drop(lease);
        let Err(err) = enqueued else { return Ok(following) };
        // Publishing was retried under the same Nats-Msg-Id (stored at most once). The
        // command may still have been stored (every ack lost), so the key stays bound
        // to this run: a retry follows the run if it was stored, and once the lease has
        // lapsed without a trace, queues this same run again (see `idempotency`). No
        // `Rejected` event: the run may well exist.
        tracing::error!(%run_id, error = %err, "queueing a run");
        results::count_call("unconfirmed");
        quotas::refund(&self.st.pool, self.caller().project_id, &charge).await;
        let mut err = RpcError::internal(
            &self.id,
            format!(
                "the call could not be confirmed as queued (the execution queue is unavailable or full): retry in a \
                 few seconds with the same idempotency key (or, without one, the same JSON-RPC id in this session): \
                 it will run at most once (run {run_id})"
            ),
        );
        err.data = Some(json!({ META_RUN_ID: run_id }));
        Err(err.into())
    }

    /// Parks the command until an operator decides (tools with `approval: operator`)
    /// and starts following its run; see `crate::approvals`.
    async fn park(
        &self,
        command: &ExecuteCommand,
        lease: Option<Box<idempotency::Lease>>,
        charge: Charge,
    ) -> Step<Following> {
        let run_id = command.run_id;
        let following = self.st.dispatcher.follow(run_id, None);
        let ttl = chrono::Duration::seconds(i64::try_from(self.st.config.ingress.approval_ttl_secs).unwrap_or(86_400));
        let expires_at = command
            .accepted_at
            .checked_add_signed(ttl)
            .unwrap_or(command.accepted_at);
        let parked = match self.st.approvals.park(command, expires_at).await {
            // Parked already (a retry that took its key over): the same call.
            Ok(()) => Ok(()),
            Err(_) if self.st.approvals.is_parked(run_id).await => Ok(()),
            Err(err) => Err(err),
        };
        let logged = match parked {
            Ok(()) => {
                let event = RunEvent::AwaitingApproval {
                    run_id,
                    caller: command.caller.clone(),
                    tool_name: command.tool_name.clone(),
                    accepted_at: command.accepted_at,
                    expires_at,
                };
                self.st
                    .dispatcher
                    .publish(command.caller.project_id, event)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(err) => Err(err),
        };
        drop(lease);
        let Err(err) = logged else {
            tracing::info!(%run_id, "call parked for an operator's approval");
            return Ok(following);
        };
        tracing::error!(%run_id, error = %err, "parking a run");
        quotas::refund(&self.st.pool, self.caller().project_id, &charge).await;
        let mut err = RpcError::internal(
            &self.id,
            format!(
                "the call could not be parked for approval right now: retry in a few seconds with the same \
                 idempotency key: it will run at most once (run {run_id})"
            ),
        );
        err.data = Some(json!({ META_RUN_ID: run_id }));
        Err(err.into())
    }

    async fn reject(&self, tool_name: &str, class: ErrorClass, error: &str) {
        self.reject_run(self.run_id, tool_name, class, error).await;
    }

    /// Logs a `Rejected` event: the call is in run history although it was not run.
    async fn reject_run(&self, run_id: Uuid, tool_name: &str, class: ErrorClass, error: &str) {
        results::count_call("rejected");
        let caller = self.caller();
        let event = RunEvent::Rejected {
            run_id,
            caller: caller.clone(),
            tool_name: truncate_name(tool_name),
            accepted_at: Utc::now(),
            error_class: class,
            error: payload::bounded_error(error.to_string()),
        };
        self.st.dispatcher.log(caller.project_id, event).await;
    }
}

fn truncate_name(name: &str) -> String {
    name.chars().take(MAX_TOOL_NAME_IN_HISTORY).collect()
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

/// What a key's run left: its command queued, its events in the log, or its row in
/// history (which outlives the log and every idempotency key); and whether it was
/// cancelled before it reached the API.
async fn traced(st: &AppState, project_id: Uuid, run_id: Uuid) -> Result<idempotency::Trace, String> {
    if let Some(outcome) = st.dispatcher.recorded(project_id, run_id).await {
        let unattempted = outcome.status == RunStatus::Cancelled && outcome.attempts == 0;
        return Ok(if unattempted {
            idempotency::Trace::CancelledUnattempted
        } else {
            idempotency::Trace::Exists
        });
    }
    let found = st.dispatcher.in_streams(project_id, run_id).await?
        || history::runs::in_history(&st.pool, run_id)
            .await
            .map_err(|e| e.to_string())?;
    Ok(if found {
        idempotency::Trace::Exists
    } else {
        idempotency::Trace::None
    })
}

/// A retry of a call that already has a run: that run's outcome from the event
/// log, or, while it has none, the outcome when it comes; history only once the
/// log no longer knows the run (history may show a cancellation requested for a
/// run whose real outcome is still to come).
async fn follow_existing(
    st: &AppState,
    tool: &ToolDefinition,
    project_id: Uuid,
    run_id: Uuid,
    asking: Option<&crate::asks::Asking>,
) -> Value {
    if let Some(outcome) = st.dispatcher.recorded(project_id, run_id).await {
        return results::outcome_result(st, tool, &outcome, asking);
    }
    let live = st.dispatcher.in_streams(project_id, run_id).await.unwrap_or(true);
    if !live {
        match history::results::recorded(&st.pool, run_id).await {
            Ok(Some(Recorded::Kept(outcome))) => return results::outcome_result(st, tool, &outcome, asking),
            Ok(Some(Recorded::StatusOnly(status))) => return results::forgotten_result(run_id, &status),
            Ok(None) => {}
            Err(err) => tracing::warn!(%run_id, error = %err, "reading a run's outcome from history"),
        }
    }
    let wait = Duration::from_millis(st.config.ingress.max_call_wait_ms);
    let deadline = tengine_core::tasks::deadline_after(wait);
    match st.dispatcher.poll_outcome(project_id, run_id, deadline).await {
        Some(outcome) => results::outcome_result(st, tool, &outcome, asking),
        None => results::still_running(tool, run_id, wait),
    }
}

//! One delivery of a command, as typed stages (the shape of svix's dispatcher):
//! [`Worker::prepare_dispatch`] (lookups, access, rendering, secrets, address
//! policy) → the attempt loop, each attempt a [`Worker::make_http_call`] → the
//! outcome ([`Worker::handle_answered_dispatch`], or a [`Refusal`] when the run ends
//! without (another) call of the API).

use std::time::Duration;

use async_nats::jetstream::Message;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use tengine_control::{
    StoreError, StoreResult,
    principals::{self, Principal},
};
use tengine_core::{
    bodies::BodyPolicy,
    domain::{HttpMethod, RetryPolicy, ToolDefinition},
    envelope::{AttemptReport, ErrorClass, ExecuteCommand, RunEvent, RunOutcome, RunStatus},
    payload, prometheus,
    request::RenderedRequest,
    telemetry::{self, TraceContext},
    templates,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use tengine_core::addresses;

use crate::{Worker, outbound};

/// How long an attempt runs before history is told (an `AttemptStarted` event):
/// most calls end sooner and need no message for it.
const SHOWN_RUNNING_AFTER: Duration = Duration::from_millis(250);

/// Why a run ends without calling the API (again).
pub(crate) struct Refusal {
    status: RunStatus,
    class: Option<ErrorClass>,
    error: String,
}

impl Refusal {
    pub(crate) fn failed(class: ErrorClass, error: impl Into<String>) -> Self {
        Self {
            status: RunStatus::Failed,
            class: Some(class),
            error: error.into(),
        }
    }

    fn revoked(error: String) -> Self {
        Self {
            status: RunStatus::Revoked,
            class: Some(ErrorClass::Revoked),
            error,
        }
    }

    fn cancelled() -> Self {
        Self {
            status: RunStatus::Cancelled,
            class: None,
            error: "the client cancelled the call before the API was called".into(),
        }
    }

    /// Aborted by `tasks/cancel` while attempt `number` was in flight.
    fn aborted(number: u32) -> Self {
        Self {
            status: RunStatus::Cancelled,
            class: None,
            error: format!(
                "cancelled while attempt {number} was in flight: its request was cut off, and the API may have \
                 received it"
            ),
        }
    }

    /// Aborted by `tasks/cancel` while waiting to retry after attempt `number`.
    fn aborted_between(number: u32) -> Self {
        Self {
            status: RunStatus::Cancelled,
            class: None,
            error: format!(
                "cancelled before attempt {}; attempt {number} had been made",
                number.saturating_add(1)
            ),
        }
    }
}

/// The runs a worker is executing, each with the token that aborts it (fed by
/// `{prefix}.control.abort`). A run is registered before its cancellation mark is
/// read, and `tasks/cancel` sets the mark before it broadcasts the abort: an abort
/// that comes before the registration is seen as the mark, any later one cuts the token.
#[derive(Clone, Default)]
pub(crate) struct Aborts(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<uuid::Uuid, CancellationToken>>>);

impl Aborts {
    /// Registers a run for the lifetime of the returned guard.
    fn register(&self, run_id: uuid::Uuid) -> AbortGuard {
        let token = CancellationToken::new();
        if let Ok(mut runs) = self.0.lock() {
            runs.insert(run_id, token.clone());
        }
        AbortGuard {
            aborts: self.clone(),
            run_id,
            token,
        }
    }

    pub(crate) fn abort(&self, run_id: uuid::Uuid) {
        if let Some(token) = self.0.lock().ok().and_then(|runs| runs.get(&run_id).cloned()) {
            tracing::info!(%run_id, "aborting the run");
            token.cancel();
        }
    }
}

struct AbortGuard {
    aborts: Aborts,
    run_id: uuid::Uuid,
    token: CancellationToken,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if let Ok(mut runs) = self.aborts.0.lock() {
            runs.remove(&self.run_id);
        }
    }
}

/// Everything the attempts of one delivery share, prepared once.
pub(crate) struct Dispatch<'a> {
    command: &'a ExecuteCommand,
    tool: std::sync::Arc<ToolDefinition>,
    request: RenderedRequest,
    client: reqwest::Client,
    secret: Option<String>,
    /// The previous HMAC secret during a rotation overlap.
    previous: Option<String>,
    /// Bodies kept in run history, for projects that store them.
    bodies: Option<BodyPolicy>,
    retry: RetryPolicy,
    /// The number of this delivery's first attempt (unique across redeliveries).
    first: u32,
}

impl Dispatch<'_> {
    fn credentials(&self) -> outbound::Credentials<'_> {
        outbound::Credentials {
            strategy: self.tool.auth_strategy,
            secret: self.secret.as_deref(),
            previous: self.previous.as_deref(),
        }
    }

    /// Only failures that cannot have written are retried; a timeout only for
    /// idempotent requests.
    fn idempotent(&self) -> bool {
        matches!(
            self.tool.http_method,
            HttpMethod::Get | HttpMethod::Put | HttpMethod::Delete
        ) || self.tool.annotations.as_ref().and_then(|a| a.idempotent_hint) == Some(true)
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        // Registration validates these; a stored row is held to the same ranges anyway.
        let max_backoff = self.retry.max_backoff_ms.min(300_000);
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.retry.initial_backoff_ms.min(max_backoff)))
            .with_max_delay(Duration::from_millis(max_backoff))
            .with_jitter()
            .with_max_times(usize::try_from(self.retry.max_attempts.saturating_sub(1)).unwrap_or(0))
            .build()
    }
}

/// Whether a run may (still) call the API, from the tool and the caller's
/// credential as PostgreSQL holds them now (in memory only while provably current,
/// `tengine_control::freshness`: a revocation counts from the next check, which
/// comes before every attempt).
enum Access {
    Allowed(std::sync::Arc<ToolDefinition>),
    /// Why not: the tool was disabled or deleted, or the caller lost access.
    Revoked(String),
    /// It could not be checked (the database failed); the message says what.
    Unknown(String),
}

fn access(
    command: &ExecuteCommand,
    tool: StoreResult<std::sync::Arc<ToolDefinition>>,
    principal: StoreResult<Option<Principal>>,
) -> Access {
    let tool = match tool {
        Ok(tool) if tool.enabled && tool.project_id == command.caller.project_id => tool,
        Ok(_) | Err(StoreError::NotFound) => {
            return Access::Revoked(format!("tool `{}` was disabled or deleted", command.tool_name));
        }
        Err(err) => {
            tracing::error!(error = %err, "loading the tool");
            return Access::Unknown("the tool definition could not be loaded".into());
        }
    };
    match principal.map(|p| principals::revocation(p, &tool)) {
        Ok(None) => Access::Allowed(tool),
        Ok(Some(reason)) => Access::Revoked(reason),
        Err(err) => {
            tracing::error!(error = %err, "checking the caller's credential");
            Access::Unknown("the caller's credential could not be checked".into())
        }
    }
}

/// The tool and the caller's credential as they stand now.
async fn current_access(worker: &Worker, command: &ExecuteCommand) -> Access {
    let (tool, principal) = tokio::join!(
        worker.tools.by_id(command.tool_id),
        worker.principals.current(&command.caller),
    );
    access(command, tool, principal)
}

impl Worker {
    /// Runs one delivery (`delivery`: its number; attempt numbers continue across
    /// redeliveries) to the run's outcome.
    pub(crate) async fn execute(
        &self,
        command: &ExecuteCommand,
        delivery: u32,
        message: &Message,
        remote: &TraceContext,
        pending: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> RunOutcome {
        // The `attempts` of a run that ends before this delivery calls the API.
        let before = delivery.saturating_sub(1);
        // Before the cancellation mark is read (see `Aborts`).
        let aborting = self.aborts.register(command.run_id);
        let dispatch = match self.prepare_dispatch(command, before).await {
            Ok(dispatch) => dispatch,
            // A failure while preparing counts this delivery as an attempt (as it
            // always has); a revocation or a cancellation does not.
            Err(refusal) if refusal.status == RunStatus::Failed => return self.refused(command, delivery, refusal),
            Err(refusal) => return self.refused(command, before, refusal),
        };
        // Aborted while preparing: the API was not called.
        if aborting.token.is_cancelled() {
            return self.refused(command, before, Refusal::cancelled());
        }
        let began = std::time::Instant::now();
        let deadline = Duration::from_millis(dispatch.retry.total_deadline_ms);
        let mut delays = dispatch.backoff();
        let mut number = dispatch.first;
        loop {
            // Access may have changed during the last attempt or the wait.
            if number > dispatch.first
                && let Err(refusal) = self.recheck_access(&dispatch, number).await
            {
                return self.refused(command, number.saturating_sub(1), refusal);
            }
            let (result, report) = match self
                .make_http_call(&dispatch, number, message, remote, pending, &aborting.token)
                .await
            {
                Ok(Some(answered)) => answered,
                Ok(None) => return self.refused(command, number, Refusal::aborted(number)),
                Err(refusal) => return self.refused(command, delivery, refusal),
            };
            let wait = if outbound::retryable(&result, dispatch.idempotent()) {
                outbound::next_wait(
                    delays.next(),
                    result.retry_after,
                    deadline.saturating_sub(began.elapsed()),
                )
            } else {
                None
            };
            // A cancelled call is not retried: it ends with the answer it has.
            if wait.is_none() || self.is_cancelled(command).await {
                return self.handle_answered_dispatch(&dispatch, number, result, report);
            }
            // Retried: this attempt's answer is stored on its own (the outcome carries the last).
            let (run_id, project_id) = (command.run_id, command.caller.project_id);
            pending.push(self.log_attempt(project_id, report.into_event(run_id, project_id)));
            let wait = wait.unwrap_or_default();
            tracing::info!(attempt = number, ?wait, error = ?result.error, "retrying");
            let waiting = async {
                tokio::select! {
                    () = tokio::time::sleep(wait) => true,
                    () = aborting.token.cancelled() => false,
                }
            };
            if !self.keeping_claim(message, waiting).await {
                return self.refused(command, number, Refusal::aborted_between(number));
            }
            number = number.saturating_add(1);
        }
    }

    /// Lookups (at once: each is a round trip on the call's critical path), access,
    /// the rendered request, secrets, the project's address policy and bodies.
    async fn prepare_dispatch<'a>(&self, command: &'a ExecuteCommand, before: u32) -> Result<Dispatch<'a>, Refusal> {
        let looking_up = std::time::Instant::now();
        let (access, project, cancelled) = tokio::join!(
            current_access(self, command),
            self.runtimes.get(command.caller.project_id),
            self.is_cancelled(command),
        );
        prometheus::stage(prometheus::WORKER_STAGE_SECONDS, "lookup", looking_up);
        if cancelled {
            return Err(Refusal::cancelled());
        }
        let tool = match access {
            Access::Allowed(tool) => tool,
            Access::Revoked(reason) => {
                return Err(Refusal::revoked(format!(
                    "{reason} since the call was accepted; the API was not called"
                )));
            }
            Access::Unknown(why) => return Err(Refusal::failed(ErrorClass::Internal, why)),
        };
        if tool.version != command.tool_version {
            tracing::info!(
                accepted = command.tool_version,
                current = tool.version,
                "the tool changed since the call was accepted; using its current definition"
            );
        }
        let ctx = templates::Context {
            arguments: &command.arguments,
            reserved: templates::reserved_variables(&command.caller, command.run_id),
        };
        let request = tengine_core::request::render(&tool, &ctx)
            .map_err(|err| Refusal::failed(ErrorClass::InvalidArguments, err.to_string()))?;
        let secret = match tool.auth_secret_ciphertext.as_deref() {
            None => None,
            Some(sealed) => Some(self.secrets.open(tool.id, sealed).map_err(|err| {
                tracing::error!(error = %err, tool_id = %tool.id, "decrypting the tool secret");
                Refusal::failed(
                    ErrorClass::Internal,
                    "the tool's secret cannot be decrypted with the configured master key",
                )
            })?),
        };
        // The previous secret only until its overlap ends (the definition may be
        // older than that, in memory).
        let previous = tool
            .auth_secret_previous_ciphertext
            .as_deref()
            .filter(|_| tool.previous_secret_expires_at.is_some_and(|at| at > Utc::now()))
            .and_then(|sealed| self.secrets.open(tool.id, sealed).ok());
        let project = project.map_err(|err| {
            tracing::error!(error = %err, "loading the project's outbound allow-list");
            Refusal::failed(ErrorClass::Internal, "the project's settings could not be loaded")
        })?;
        let client = self.client_for(&request, &project.outbound_allowlist)?;
        let retry = tool.retry.clone().unwrap_or_default();
        Ok(Dispatch {
            command,
            first: before.saturating_mul(retry.max_attempts).saturating_add(1),
            tool,
            request,
            client,
            secret,
            previous,
            bodies: project.bodies.clone(),
            retry,
        })
    }

    /// The pooled client of the project's address policy; a literal IP (which never
    /// goes through the policy's resolver) is checked here.
    fn client_for(&self, request: &RenderedRequest, allowlist: &[String]) -> Result<reqwest::Client, Refusal> {
        let policy = addresses::Policy::for_project(self.config.allow_private_upstreams, allowlist);
        policy
            .check_literal_host(&request.url)
            .map_err(|refused| Refusal::failed(ErrorClass::Forbidden, refused))?;
        let connect_timeout = Duration::from_millis(self.config.worker.connect_timeout_ms);
        self.clients
            .try_get_with(policy.clone(), || outbound::client(connect_timeout, policy))
            .map_err(|err| Refusal::failed(ErrorClass::Internal, format!("building the HTTP client: {err}")))
    }

    /// Before every attempt after the first: the credential, its integration or
    /// member, `allowed_tools` and the tool, as they stand now.
    async fn recheck_access(&self, dispatch: &Dispatch<'_>, number: u32) -> Result<(), Refusal> {
        let (first, made) = (dispatch.first, number.saturating_sub(1));
        match current_access(self, dispatch.command).await {
            Access::Allowed(_) => Ok(()),
            Access::Revoked(reason) => {
                tracing::info!(attempt = number, %reason, "access revoked between attempts");
                Err(Refusal::revoked(format!(
                    "{reason} during the run; attempt {number} was not made (the API was called for attempts \
                     {first} to {made})"
                )))
            }
            Access::Unknown(why) => Err(Refusal::failed(
                ErrorClass::Internal,
                format!("{why} before attempt {number}"),
            )),
        }
    }

    /// One attempt: signs afresh (the request id stays the run id), logs its start
    /// and end (stored while the API is called; awaited before the ack), forwards the
    /// API's own progress, and sends the request with the tool's timeout. `None`
    /// when `abort` cut the request off.
    async fn make_http_call(
        &self,
        dispatch: &Dispatch<'_>,
        number: u32,
        message: &Message,
        remote: &TraceContext,
        pending: &mut Vec<tokio::task::JoinHandle<()>>,
        abort: &CancellationToken,
    ) -> Result<Option<(outbound::AttemptResult, AttemptReport)>, Refusal> {
        let command = dispatch.command;
        let mut headers = outbound::signed_headers(
            &dispatch.request,
            &command.caller,
            command.run_id,
            &dispatch.credentials(),
            dispatch.tool.inject_member_identity,
            Utc::now().timestamp(),
            command.input.as_ref().map(|input| input.header_value()).as_deref(),
        )
        .map_err(|err| Refusal::failed(ErrorClass::InvalidArguments, err))?;
        // Each attempt is a span of its own; the upstream sees it as the parent.
        let attempt_span = tracing::info_span!("attempt", attempt = number);
        telemetry::inject_http(&attempt_span, remote, &mut headers);
        let started_at = Utc::now();
        let started = RunEvent::AttemptStarted {
            run_id: command.run_id,
            project_id: command.caller.project_id,
            attempt: number,
            started_at,
        };
        // Stored only if the API is still answering after a while: history shows a
        // long call as running, and a quick one costs no message for it.
        let answering = CancellationToken::new();
        let _answered = answering.clone().drop_guard();
        pending.push(self.log_attempt_after(
            command.caller.project_id,
            started.clone(),
            SHOWN_RUNNING_AFTER,
            answering,
        ));
        self.notify_progress(command, started).await;

        // The API's own progress goes to the waiting ingress as it arrives.
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel::<outbound::Progress>();
        let forward = async {
            while let Some(p) = progress_rx.recv().await {
                let event = RunEvent::UpstreamProgress {
                    run_id: command.run_id,
                    progress: p.progress,
                    total: p.total,
                    message: p.message,
                };
                self.notify_progress(command, event).await;
            }
        };
        let call = async {
            let mut report = |p: outbound::Progress| {
                let _ = progress_tx.send(p);
            };
            let result = outbound::send(
                &dispatch.client,
                dispatch.request.clone(),
                headers,
                Duration::from_millis(dispatch.tool.timeout_ms),
                self.config.worker.max_response_bytes,
                &mut report,
            )
            .await;
            drop(progress_tx);
            result
        }
        .instrument(attempt_span);
        let attempt = async {
            tokio::select! {
                (result, ()) = async { tokio::join!(call, forward) } => Some(result),
                () = abort.cancelled() => None,
            }
        };
        let Some(result) = self.keeping_claim(message, attempt).await else {
            let aborted = RunEvent::AttemptFinished {
                run_id: command.run_id,
                project_id: command.caller.project_id,
                attempt: number,
                started_at,
                finished_at: Utc::now(),
                http_status: None,
                error_class: None,
                error: Some("aborted in flight (tasks/cancel); the API may have received the request".into()),
                bytes_out: 0,
                bytes_in: 0,
            };
            pending.push(self.log_attempt(command.caller.project_id, aborted.clone()));
            self.notify_progress(command, aborted).await;
            return Ok(None);
        };
        metrics::counter!(prometheus::ATTEMPTS, "outcome" => result.error_class.map_or("ok", ErrorClass::as_str))
            .increment(1);
        metrics::histogram!(prometheus::UPSTREAM_SECONDS).record(result.elapsed.as_secs_f64());
        let report = attempt_report(number, started_at, &result);
        let (run_id, project_id) = (command.run_id, command.caller.project_id);
        self.notify_progress(command, report.clone().into_event(run_id, project_id))
            .await;
        tracing::debug!(attempt = number, elapsed = ?result.elapsed, "attempt finished");
        Ok(Some((result, report)))
    }

    /// The outcome of the last attempt made: succeeded on a 2xx, else failed (a
    /// retry the client cancelled ends with the failure it had). Bodies are
    /// redacted and capped here, within what the outcome's message has left.
    fn handle_answered_dispatch(
        &self,
        dispatch: &Dispatch<'_>,
        number: u32,
        result: outbound::AttemptResult,
        report: AttemptReport,
    ) -> RunOutcome {
        let bodies = dispatch.bodies.as_ref().map(|policy| {
            let response_bytes = result.response.as_ref().map_or(0, |r| r.body.len());
            let budget = payload::bodies_budget(payload::server_max_payload(&self.nats), response_bytes);
            let mut kept = policy.capture(dispatch.request.body.as_deref(), result.response.as_ref(), budget);
            policy.keep_arguments(&mut kept, &dispatch.command.arguments, budget);
            kept
        });
        let status = if result.error_class.is_none() {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        };
        let mut outcome = self.outcome(dispatch.command, number, status);
        outcome.error_class = result.error_class;
        outcome.error = result.error.map(payload::bounded_error);
        outcome.response = result.response;
        outcome.bodies = bodies;
        outcome.last_attempt = Some(Box::new(report));
        outcome
    }

    /// The outcome of a run ended by a [`Refusal`] after `attempts` attempts.
    pub(crate) fn refused(&self, command: &ExecuteCommand, attempts: u32, refusal: Refusal) -> RunOutcome {
        let mut outcome = self.outcome(command, attempts, refusal.status);
        outcome.error_class = refusal.class;
        outcome.error = Some(payload::bounded_error(refusal.error));
        outcome
    }

    /// An outcome with the run's identity, times and status; the rest empty.
    pub(crate) fn outcome(&self, command: &ExecuteCommand, attempts: u32, status: RunStatus) -> RunOutcome {
        let finished_at = Utc::now();
        RunOutcome {
            run_id: command.run_id,
            caller: command.caller.clone(),
            tool_name: command.tool_name.clone(),
            status,
            error_class: None,
            error: None,
            response: None,
            attempts,
            accepted_at: command.accepted_at,
            finished_at,
            latency_ms: u64::try_from(
                finished_at
                    .signed_duration_since(command.accepted_at)
                    .num_milliseconds(),
            )
            .unwrap_or(0),
            bodies: None,
            keep_result_until: command.keep_result_until,
            last_attempt: None,
            origin: command.origin.clone().map(Box::new),
        }
    }
}

fn attempt_report(number: u32, started_at: DateTime<Utc>, result: &outbound::AttemptResult) -> AttemptReport {
    AttemptReport {
        attempt: number,
        started_at,
        finished_at: Utc::now(),
        http_status: result.response.as_ref().map(|r| r.http_status),
        error_class: result.error_class,
        error: result.error.clone().map(payload::bounded_error),
        bytes_out: result.bytes_out,
        bytes_in: result.bytes_in,
    }
}

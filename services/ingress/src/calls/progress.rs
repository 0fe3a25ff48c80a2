//! Following a queued run to its answer: one JSON body, or (when the client asked
//! for progress or set a log level) an SSE stream with a priming event, the run's
//! stages as `notifications/progress` / `notifications/message`, then the result.
//! Also the resumption of a lost call stream (`GET` + `Last-Event-ID`).

use std::{sync::Arc, time::Duration};

use axum::response::Response;
use serde_json::{Value, json};
use tengine_control::tools;
use tengine_core::{domain::ToolDefinition, envelope::Caller};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::results::{decorate, outcome_result, still_running, text_outcome_result};
use crate::{
    AppState,
    dispatch::{Following, Signal},
    jsonrpc,
    sessions::log_level_rank,
    streams::{self, Event, EventId, RESULT_SEQ},
};

/// Stages reported as progress: queued, sent to the API, answered.
const STAGES: u32 = 3;
const INFO_RANK: usize = 1;

/// Whether a log level asks for `info` notifications of the run's stages.
pub(super) fn logs_info(level: &str) -> bool {
    log_level_rank(level).is_some_and(|rank| rank <= INFO_RANK)
}

/// Whether the session's log level (`logging/setLevel`) asks for them.
pub(super) fn session_logs_info(st: &AppState, session: &str) -> bool {
    st.session_states
        .get(session)
        .log_level
        .as_deref()
        .is_some_and(logs_info)
}

/// A queued run and how its caller wants the answer.
pub(super) struct Answering {
    pub(super) tool: Arc<ToolDefinition>,
    pub(super) following: Following,
    pub(super) caller: Caller,
    pub(super) request_id: Value,
    pub(super) progress_token: Option<Value>,
    pub(super) log: bool,
    /// Revision 2026-07-28: results say their type; streams have no event ids (no
    /// resumption); a client that goes away cancels the run.
    pub(super) modern: bool,
    /// Waits as long as a call may (`ingress.max_call_wait_ms`), not the tool's timeout.
    pub(super) long_wait: bool,
    /// A 2026-07-28 call that can carry the API's input requests.
    pub(super) asking: Option<crate::asks::Asking>,
    /// 2026-07-28: cancels the run if the client goes away before its answer.
    pub(super) cancel_on_drop: Option<CancelOnDrop>,
}

impl Answering {
    /// How long the caller waits: the tool's timeout plus slack, capped.
    fn wait(&self, st: &AppState) -> Duration {
        let ingress = &st.config.ingress;
        Duration::from_millis(if self.long_wait {
            ingress.max_call_wait_ms
        } else {
            self.tool
                .timeout_ms
                .saturating_add(ingress.call_wait_slack_ms)
                .min(ingress.max_call_wait_ms)
        })
    }

    /// Follows the run on a 2025-11-25 stream that is already open (the session's
    /// user may be asked on it): progress, then the result, resumable; or, when
    /// the API asked for input, the outcome asking (nothing sent for it).
    pub(super) async fn stream_into(self, st: Arc<AppState>, tx: mpsc::Sender<Event>) -> Streamed {
        let wait = self.wait(&st);
        let notifier = Notifier {
            tx,
            run_id: self.following.run_id,
            request_id: self.request_id,
            progress_token: self.progress_token,
            log: self.log,
            seq: 0,
            modern: false,
            relay_asks: true,
        };
        stream_call(st, self.tool, self.following, self.caller, wait, notifier, self.asking).await
    }

    /// Waits up to the tool's timeout (plus slack, capped) for the outcome.
    pub(super) async fn answer(self, st: Arc<AppState>) -> Response {
        let wait = self.wait(&st);
        if self.progress_token.is_none() && !self.log {
            // 2026-07-28: a client that goes away (this future is dropped) cancels.
            let guard = self.cancel_on_drop;
            let ending = follow_to_end(
                &st,
                &self.tool,
                self.following,
                &self.caller,
                wait,
                self.asking.as_ref(),
            )
            .await;
            if let Some(guard) = guard {
                guard.disarm();
            }
            return match ending {
                Ending::Result(result) if self.modern => jsonrpc::result(&self.request_id, decorate(result)),
                Ending::Result(result) => jsonrpc::result(&self.request_id, result),
                // No answer for a cancelled request (the SDKs have forgotten it): an
                // event stream that ends at once, without ids, so nobody resumes it.
                Ending::Cancelled => streams::response(mpsc::channel(1).1),
            };
        }
        let (tx, rx) = mpsc::channel(16);
        let notifier = Notifier {
            tx,
            run_id: self.following.run_id,
            request_id: self.request_id,
            progress_token: self.progress_token,
            log: self.log,
            seq: 0,
            modern: self.modern,
            relay_asks: false,
        };
        let guard = self.cancel_on_drop;
        tokio::spawn(async move {
            // A stream the client closed before the result (2026-07-28) cancels the run.
            let streamed = stream_call(st, self.tool, self.following, self.caller, wait, notifier, self.asking);
            if !matches!(streamed.await, Streamed::Closed)
                && let Some(guard) = guard
            {
                guard.disarm();
            }
        });
        streams::response(rx)
    }
}

enum Ending {
    Result(Value),
    Cancelled,
}

/// How a call's stream ended.
pub(super) enum Streamed {
    /// The client went away.
    Closed,
    /// With the result, or nothing (a cancelled call).
    Ended,
    /// The API asked for input: the caller asks the session's user (see `session_input`).
    Asked(Box<tengine_core::envelope::RunOutcome>),
}

/// Writes a call's SSE stream.
struct Notifier {
    tx: mpsc::Sender<Event>,
    run_id: Uuid,
    request_id: Value,
    progress_token: Option<Value>,
    log: bool,
    seq: u32,
    /// 2026-07-28: no event ids (no resumption), results with `resultType`.
    modern: bool,
    /// Hand an outcome whose API asked for input back to the caller (a session
    /// that asks its user) instead of answering it.
    relay_asks: bool,
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
        let id = (!self.modern).then(|| self.id(None));
        self.tx.send(streams::message(id.as_ref(), message)).await.is_ok()
    }

    /// The first event of a resumable stream; 2026-07-28 streams are not resumable.
    async fn prime(&mut self) -> bool {
        if self.modern {
            return true;
        }
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
        let (id, result) = if self.modern {
            (None, decorate(result))
        } else {
            (Some(self.id(Some(RESULT_SEQ))), result)
        };
        let response = json!({"jsonrpc": "2.0", "id": self.request_id, "result": result});
        let _ = self.tx.send(streams::message(id.as_ref(), &response)).await;
    }
}

/// Follows a run to its outcome, ignoring progress (the JSON answer).
async fn follow_to_end(
    st: &AppState,
    tool: &ToolDefinition,
    mut following: Following,
    caller: &Caller,
    wait: Duration,
    asking: Option<&crate::asks::Asking>,
) -> Ending {
    let deadline = tengine_core::tasks::deadline_after(wait);
    loop {
        match following.next(deadline).await {
            Some(Signal::Finished(outcome)) => return Ending::Result(outcome_result(st, tool, &outcome, asking)),
            Some(Signal::Cancelled) => {
                st.dispatcher.cancel(caller.project_id, following.run_id).await;
                return Ending::Cancelled;
            }
            Some(Signal::Sent | Signal::Answered | Signal::Upstream { .. }) => continue,
            None => {
                return Ending::Result(
                    match st.dispatcher.recorded(caller.project_id, following.run_id).await {
                        Some(outcome) => outcome_result(st, tool, &outcome, asking),
                        None => still_running(tool, following.run_id, wait),
                    },
                );
            }
        }
    }
}

async fn stream_call(
    st: Arc<AppState>,
    tool: Arc<ToolDefinition>,
    mut following: Following,
    caller: Caller,
    wait: Duration,
    mut notifier: Notifier,
    asking: Option<crate::asks::Asking>,
) -> Streamed {
    if !notifier.prime().await || !notifier.stage(1, "queued").await {
        return Streamed::Closed;
    }
    let deadline = tengine_core::tasks::deadline_after(wait);
    let (mut sent, mut answered) = (false, false);
    let mut upstream_progress = 2.0_f64;
    loop {
        match following.next(deadline).await {
            Some(Signal::Sent) if !sent => {
                sent = true;
                if !notifier.stage(2, "sent to the API").await {
                    return Streamed::Closed;
                }
            }
            Some(Signal::Answered) if !answered => {
                answered = true;
                if !notifier.stage(3, "the API answered").await {
                    return Streamed::Closed;
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
                        return Streamed::Closed;
                    }
                }
            }
            Some(Signal::Sent | Signal::Answered | Signal::Upstream { .. }) => {}
            Some(Signal::Finished(outcome)) => {
                // Progress must rise to the end even if a stage signal was lost.
                if !sent && !notifier.stage(2, "sent to the API").await {
                    return Streamed::Closed;
                }
                if !answered && !notifier.stage(3, "the API answered").await {
                    return Streamed::Closed;
                }
                if notifier.relay_asks
                    && outcome
                        .response
                        .as_ref()
                        .and_then(crate::asks::parse)
                        .is_some_and(|a| a.is_ok())
                {
                    return Streamed::Asked(outcome);
                }
                notifier
                    .finish(outcome_result(&st, &tool, &outcome, asking.as_ref()))
                    .await;
                return Streamed::Ended;
            }
            Some(Signal::Cancelled) => {
                // No response for a cancelled request: the stream just ends.
                st.dispatcher.cancel(caller.project_id, following.run_id).await;
                return Streamed::Ended;
            }
            None => {
                let result = match st.dispatcher.recorded(caller.project_id, following.run_id).await {
                    Some(outcome) => outcome_result(&st, &tool, &outcome, asking.as_ref()),
                    None => still_running(&tool, following.run_id, wait),
                };
                notifier.finish(result).await;
                return Streamed::Ended;
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
        Ok(tool) => outcome_result(&st, &tool, &outcome, None),
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

/// Cancels a run when dropped armed: the 2026-07-28 answer to a client that closed
/// its response stream. Only a run that has not reached the API stops (the worker
/// checks the mark before every attempt); one in flight runs to its outcome, which
/// a re-issued call with the same key then gets.
pub(super) struct CancelOnDrop {
    st: Arc<AppState>,
    project_id: Uuid,
    run_id: Uuid,
    armed: bool,
}

impl CancelOnDrop {
    pub(super) fn new(st: &Arc<AppState>, caller: &Caller, run_id: Uuid) -> Self {
        Self {
            st: st.clone(),
            project_id: caller.project_id,
            run_id,
            armed: true,
        }
    }

    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let (st, project_id, run_id) = (self.st.clone(), self.project_id, self.run_id);
            tracing::info!(%run_id, "the client closed its stream: cancelling the run");
            tokio::spawn(async move {
                // A call parked for approval is withdrawn (no operator sees it any more).
                if !crate::approvals::withdraw(&st, run_id).await {
                    st.dispatcher.cancel(project_id, run_id).await;
                }
            });
        }
    }
}

//! Asking the user in a 2025-11-25 session: server-to-client requests on the
//! call's own SSE stream. Two things ask: a client approval (see
//! [`super::confirm`]: an `elicitation/create` confirmation before the call
//! runs) and the API itself ([`crate::asks`]: its input requests, relayed as
//! `elicitation/create`, `sampling/createMessage` or `roots/list`, then the call
//! goes on as a continuation run with the answers, for up to `asks::MAX_ROUNDS`
//! rounds). A session whose client declared any of these capabilities at
//! `initialize` has its calls answered as streams, so that there is one to ask on.
//!
//! The client POSTs its answers to the session (any instance), which relays each
//! over core NATS (`{prefix}.input.{token}`, the token a digest of the session and
//! the request id, so only that session can answer). A session that cannot be
//! asked for a confirmation is refused with a clear error.

use std::{sync::Arc, time::Duration};

use axum::{http::StatusCode, response::Response};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tengine_core::{
    domain::{Approval, ToolDefinition},
    envelope::CommandInput,
    errors,
};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{
    Accepted, Call, Era, Step, Stop,
    confirm::{self, Admission, Answer},
    progress::Streamed,
};
use crate::{
    AppState, asks,
    jsonrpc::RpcError,
    results,
    sessions::SessionStates,
    streams::{self, Event},
};

/// Where a session's answer to `request_id` is relayed.
fn answer_subject(st: &AppState, session: &str, request_id: &Value) -> String {
    let digest = Sha256::digest(format!("{}\n{request_id}", SessionStates::key(session)).as_bytes());
    st.topology.input_answer_subject(&hex::encode(&digest[..20]))
}

/// Relays a client's answer (a JSON-RPC response POSTed to its session) to the
/// call waiting for it. Nobody waiting: dropped.
pub async fn deliver_answer(st: &AppState, session: &str, request_id: &Value, message: &Value) {
    let Ok(payload) = serde_json::to_vec(message) else {
        return;
    };
    let subject = answer_subject(st, session, request_id);
    if let Err(err) = st.nats.publish(subject, payload.into()).await {
        tracing::warn!(error = %err, "relaying a client's answer");
    }
}

/// What asking the session's user came to.
enum Asked {
    /// Every answer (a response's `result`, by the key it was asked under; a
    /// request answered with an error has none).
    Answered(Map<String, Value>),
    /// The client went away: nothing more to do.
    Gone,
    /// No answer in time.
    Unanswered,
}

impl Call {
    /// Whether this call is answered on a stream its user can be asked on.
    pub(super) fn streams_in_session(&self, tool: &ToolDefinition) -> bool {
        let Era::Legacy { session } = &self.era else {
            return false;
        };
        tool.approval == Approval::Client || self.st.sessions.askable(session).any()
    }

    /// Opens the call's stream and runs the call on it, asking the user there.
    pub(super) fn run_in_session(
        self,
        tool: Arc<ToolDefinition>,
        arguments: Map<String, Value>,
        key: Option<String>,
        progress_token: Option<Value>,
    ) -> Step<Response> {
        let Era::Legacy { session } = &self.era else {
            return Err(RpcError::internal(&self.id, "a session call without a session").into());
        };
        if tool.approval == Approval::Client && !self.st.sessions.askable(session).elicitation {
            return Err(RpcError::new(
                StatusCode::OK,
                errors::RPC_INVALID_REQUEST,
                format!(
                    "tool `{}` needs the user's confirmation of each call, and this session's client cannot ask \
                     for it: connect with MCP revision 2026-07-28, or with a client that declares the elicitation \
                     capability (form mode) at initialize",
                    tool.name
                ),
            )
            .with_id(&self.id)
            .into());
        }
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let message = match self.stream(tool, arguments, key, progress_token, &tx).await {
                Ok(()) => return,
                Err(Stop::Result(result)) => json!({"jsonrpc": "2.0", "id": self.id, "result": result}),
                Err(Stop::Error(err)) => err.message(),
            };
            let _ = tx.send(streams::message(None, &message)).await;
        });
        Ok(streams::response(rx))
    }

    async fn stream(
        &self,
        tool: Arc<ToolDefinition>,
        arguments: Map<String, Value>,
        key: Option<String>,
        progress_token: Option<Value>,
        tx: &mpsc::Sender<Event>,
    ) -> Step<()> {
        if tool.approval == Approval::Client && !self.confirm_on_stream(&tool, &arguments, tx).await? {
            return Ok(());
        }
        let mut round = self.next_round(self.run_id);
        let mut admission = Admission::default();
        let mut rounds = 0_u32;
        loop {
            let accepted = round
                .execute(
                    tool.clone(),
                    arguments.clone(),
                    key.clone(),
                    admission,
                    progress_token.clone(),
                    false,
                )
                .await?;
            let Accepted::Follow(answering) = accepted else {
                return Ok(());
            };
            let Streamed::Asked(outcome) = answering.stream_into(self.st.clone(), tx.clone()).await else {
                return Ok(());
            };
            let Some(Ok(ask)) = outcome.response.as_ref().and_then(asks::parse) else {
                return Ok(());
            };
            let meta = results::outcome_meta(&outcome);
            rounds = rounds.saturating_add(1);
            if rounds >= asks::MAX_ROUNDS {
                let text = format!(
                    "The API asked for input more than {} times; giving up.",
                    asks::MAX_ROUNDS
                );
                return Err(Stop::Result(results::tool_result(true, text, meta)));
            }
            let askable = self.askable().capabilities();
            let requests: Map<String, Value> = ask
                .requests
                .into_iter()
                .filter(|(_, r)| {
                    asks::capability_of(r["method"].as_str().unwrap_or_default())
                        .is_some_and(|c| askable.contains_key(c))
                })
                .collect();
            if requests.is_empty() {
                let text = "The API asks the user for input that this session's client did not declare capabilities \
                            for (elicitation, sampling or roots) at initialize."
                    .to_string();
                return Err(Stop::Result(results::tool_result(true, text, meta)));
            }
            let responses = match self.ask_on_stream(&requests, tx).await? {
                Asked::Answered(responses) => responses,
                Asked::Gone => return Ok(()),
                Asked::Unanswered => {
                    let text = "The API asked the user for input, and no answer came in time.".to_string();
                    return Err(Stop::Result(results::tool_result(true, text, meta)));
                }
            };
            admission = Admission {
                input: Some(CommandInput {
                    responses,
                    state: ask.state,
                }),
                round: rounds,
                nonce: None,
            };
            round = self.next_round(Uuid::now_v7());
        }
    }

    /// Asks a client approval's confirmation; `Ok(false)` when the client went away.
    async fn confirm_on_stream(
        &self,
        tool: &ToolDefinition,
        arguments: &Map<String, Value>,
        tx: &mpsc::Sender<Event>,
    ) -> Step<bool> {
        let request =
            json!({"method": "elicitation/create", "params": confirm::elicitation(tool, arguments, self, "")});
        let asked = self
            .ask_on_stream(&Map::from_iter([(confirm::CONFIRM_KEY.to_string(), request)]), tx)
            .await?;
        let answer = match asked {
            Asked::Gone => return Ok(false),
            Asked::Unanswered => {
                let why = format!(
                    "the user did not answer within {} s",
                    self.st.config.ingress.input_ttl_secs
                );
                return Err(self.declined(tool, &why).await);
            }
            Asked::Answered(mut answers) => answers.remove(confirm::CONFIRM_KEY),
        };
        match confirm::answer(answer.as_ref()) {
            Some(Answer::Confirmed) => Ok(true),
            Some(Answer::Declined(why)) => Err(self.declined(tool, why).await),
            None => Err(self.declined(tool, "the client could not ask the user").await),
        }
    }

    /// Sends each request to the session's client on the call's stream and waits
    /// (up to `ingress.input_ttl_secs`) for every answer.
    async fn ask_on_stream(&self, requests: &Map<String, Value>, tx: &mpsc::Sender<Event>) -> Step<Asked> {
        let Era::Legacy { session } = &self.era else {
            return Ok(Asked::Gone);
        };
        let unavailable = |e: async_nats::SubscribeError| {
            tracing::error!(error = %e, "listening for a client's answer");
            Stop::Error(RpcError::internal(
                &self.id,
                "the user could not be asked right now; retry",
            ))
        };
        let mut pending = Vec::new();
        for (key, request) in requests {
            let id = json!(format!("tengine-{}-{key}", self.run_id));
            let answers = self
                .st
                .nats
                .subscribe(answer_subject(&self.st, session, &id))
                .await
                .map_err(unavailable)?;
            let message = json!({"jsonrpc": "2.0", "id": id, "method": request["method"], "params": request["params"]});
            if tx.send(streams::message(None, &message)).await.is_err() {
                return Ok(Asked::Gone);
            }
            pending.push((key.clone(), answers));
        }
        let deadline = tengine_core::tasks::deadline_after(Duration::from_secs(self.st.config.ingress.input_ttl_secs));
        let mut answered = Map::new();
        for (key, mut answers) in pending {
            let answer = tokio::select! {
                answer = answers.next() => answer,
                () = tokio::time::sleep_until(deadline) => return Ok(Asked::Unanswered),
                () = tx.closed() => return Ok(Asked::Gone),
            };
            let message: Value = answer
                .and_then(|a| serde_json::from_slice(&a.payload).ok())
                .unwrap_or(Value::Null);
            if let Some(result) = message.get("result") {
                answered.insert(key, result.clone());
            }
        }
        Ok(Asked::Answered(answered))
    }

    fn askable(&self) -> crate::sessions::Askable {
        match &self.era {
            Era::Legacy { session } => self.st.sessions.askable(session),
            Era::Modern { .. } => crate::sessions::Askable::default(),
        }
    }
}

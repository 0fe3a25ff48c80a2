//! Client approval in a 2025-11-25 session (see [`super::confirm`]): the call's
//! response is an SSE stream whose first message is an `elicitation/create`
//! request; the client POSTs its answer to the session (any instance), which
//! relays it over core NATS (`{prefix}.input.{token}`, the token a digest of the
//! session and the request id, so only that session can answer); on a
//! confirmation the call runs and its progress and result follow on the same
//! stream. A session whose client did not declare form elicitation at
//! `initialize` is refused with a clear error.

use std::{sync::Arc, time::Duration};

use axum::{http::StatusCode, response::Response, response::sse::Event};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tengine_core::{
    domain::{Approval, ToolDefinition},
    errors,
};
use tokio::sync::mpsc;

use super::{
    Accepted, Call, Era, Step, Stop,
    confirm::{self, Answer},
};
use crate::{AppState, jsonrpc::RpcError, sessions::SessionStates, streams};

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

impl Call {
    /// Whether the confirmation is asked on a session's stream.
    pub(super) fn asks_in_session(&self, tool: &ToolDefinition) -> bool {
        tool.approval == Approval::Client && matches!(self.era, Era::Legacy { .. })
    }

    /// Opens the call's stream, asks the user there, then runs the call on it.
    pub(super) fn confirm_in_session(
        self,
        tool: Arc<ToolDefinition>,
        arguments: Map<String, Value>,
        key: Option<String>,
        progress_token: Option<Value>,
    ) -> Step<Response> {
        let Era::Legacy { session } = &self.era else {
            return Err(RpcError::internal(&self.id, "a session call without a session").into());
        };
        if !self.st.sessions.elicits(session) {
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
            let message = match self.ask_and_run(tool, arguments, key, progress_token, &tx).await {
                Ok(()) => return,
                Err(Stop::Result(result)) => json!({"jsonrpc": "2.0", "id": self.id, "result": result}),
                Err(Stop::Error(err)) => err.message(),
            };
            let _ = tx.send(streams::message(None, &message)).await;
        });
        Ok(streams::response(rx))
    }

    async fn ask_and_run(
        &self,
        tool: Arc<ToolDefinition>,
        arguments: Map<String, Value>,
        key: Option<String>,
        progress_token: Option<Value>,
        tx: &mpsc::Sender<Event>,
    ) -> Step<()> {
        let Era::Legacy { session } = &self.era else {
            return Ok(());
        };
        let ask_id = json!(format!("tengine-confirm-{}", self.run_id));
        let mut answers = self
            .st
            .nats
            .subscribe(answer_subject(&self.st, session, &ask_id))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "listening for a client's answer");
                RpcError::internal(&self.id, "the user could not be asked right now; it was not run: retry")
            })?;
        let params = confirm::elicitation(&tool, &arguments, self, "");
        let ask = json!({"jsonrpc": "2.0", "id": ask_id, "method": "elicitation/create", "params": params});
        if tx.send(streams::message(None, &ask)).await.is_err() {
            return Ok(());
        }
        let patience = Duration::from_secs(self.st.config.ingress.input_ttl_secs);
        let answer = tokio::select! {
            answer = answers.next() => answer,
            () = tokio::time::sleep(patience) => None,
            // The client hung up: nothing ran, nobody to tell.
            () = tx.closed() => return Ok(()),
        };
        let Some(answer) = answer else {
            let why = format!("the user did not answer within {} s", patience.as_secs());
            return Err(self.declined(&tool, &why).await);
        };
        let message: Value = serde_json::from_slice(&answer.payload).unwrap_or(Value::Null);
        match confirm::answer(message.get("result")) {
            Some(Answer::Confirmed) => {}
            Some(Answer::Declined(why)) => return Err(self.declined(&tool, why).await),
            None => return Err(self.declined(&tool, "the client could not ask the user").await),
        }
        match self
            .execute(
                tool,
                arguments,
                key,
                confirm::Admission::default(),
                progress_token,
                false,
            )
            .await?
        {
            Accepted::Follow(answering) => answering.stream_into(self.st.clone(), tx.clone()).await,
            Accepted::Task(task) => return Err(Stop::Result(task)),
        }
        Ok(())
    }
}

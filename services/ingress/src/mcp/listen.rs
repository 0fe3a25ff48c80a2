//! `subscriptions/listen` (revision 2026-07-28): a long-lived response stream that
//! replaces the GET stream. The first message acknowledges the notifications the
//! server will send (here: `toolsListChanged`); every message carries the
//! subscription id (the request's id); tool changes come from the same broadcast
//! as the legacy GET stream. Closing the stream ends the subscription; a server
//! shutdown ends it with a result.

use std::sync::Arc;

use axum::{http::StatusCode, response::Response};
use serde_json::{Value, json};
use tengine_control::principals::Principal;
use tokio::sync::broadcast::error::RecvError;

use crate::{
    AppState,
    jsonrpc::{RpcError, RpcResult},
    results::decorate,
    streams,
};

pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

pub(crate) fn listen(
    st: &Arc<AppState>,
    principal: Principal,
    id: Value,
    params: Option<Value>,
) -> RpcResult<Response> {
    let wanted = params
        .as_ref()
        .and_then(|p| p.get("notifications"))
        .and_then(|n| n.get("toolsListChanged"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(slot) = st.key_limits.open_stream(principal.caller.api_key_id) else {
        return Err(RpcError::invalid_request(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this API key already holds {} open streams on this server (ingress.max_streams_per_key): close one \
                 first",
                st.config.ingress.max_streams_per_key
            ),
        )
        .with_id(&id));
    };
    let tag = json!({ META_SUBSCRIPTION_ID: id });
    // Only what was asked for and is offered; an empty filter is acknowledged as such.
    let honored = if wanted {
        json!({"toolsListChanged": true})
    } else {
        json!({})
    };
    let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                     "params": {"_meta": tag, "notifications": honored}});
    let changed = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                         "params": {"_meta": tag}});
    let ended = json!({"jsonrpc": "2.0", "id": id, "result": decorate(json!({"_meta": tag}))});
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut changes = st.tool_changes.subscribe();
    let shutdown = st.shutdown.clone();
    let project_id = principal.caller.project_id;
    tokio::spawn(async move {
        let _slot = slot;
        if tx.send(streams::message(None, &ack)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = tx.send(streams::message(None, &ended)).await;
                    break;
                }
                _ = tx.closed() => break,
                change = changes.recv() => {
                    let relevant = match change {
                        Ok(project) => project == project_id,
                        // Missed some: telling the client to re-list is always safe.
                        Err(RecvError::Lagged(_)) => true,
                        Err(RecvError::Closed) => break,
                    };
                    if wanted && relevant && tx.send(streams::message(None, &changed)).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok(streams::response(rx))
}

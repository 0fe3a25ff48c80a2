//! Server-Sent Events for MCP: POST responses that carry notifications before the
//! result, and the GET stream. Event ids name the run and the JSON-RPC request, so
//! a client that lost a POST stream can resume with `GET` + `Last-Event-ID` on any
//! instance and receive the result from the event log.

use std::{convert::Infallible, time::Duration};

use axum::response::{
    IntoResponse, Response,
    sse::{Event, KeepAlive, Sse},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

/// How long a client should wait before reconnecting a dropped stream.
pub const RETRY: Duration = Duration::from_millis(1000);
/// Sequence number of the event that carries a call's result.
pub const RESULT_SEQ: u32 = u32::MAX;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventId {
    /// Run id.
    pub r: Uuid,
    /// JSON-RPC request id of the call.
    pub i: Value,
    /// Position within the stream.
    pub n: u32,
}

impl EventId {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(raw: &str) -> Option<Self> {
        if raw.len() > 512 {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(raw).ok()?).ok()
    }
}

/// The first event of a stream: an id and empty data, so the client can resume.
pub fn priming(id: &EventId) -> Event {
    Event::default().id(id.encode()).retry(RETRY).data("")
}

pub fn message(id: Option<&EventId>, message: &Value) -> Event {
    let event = Event::default().event("message").data(message.to_string());
    match id {
        Some(id) => event.id(id.encode()),
        None => event,
    }
}

/// An SSE response fed by a channel; it ends when the sender is dropped.
pub fn response(rx: mpsc::Receiver<Event>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip() {
        let id = EventId {
            r: Uuid::now_v7(),
            i: serde_json::json!("req-1"),
            n: 3,
        };
        let raw = id.encode();
        assert!(raw.chars().all(|c| c.is_ascii_graphic()));
        assert_eq!(EventId::decode(&raw), Some(id));
        assert_eq!(EventId::decode("garbage"), None);
    }
}

//! Server-Sent Events for MCP: POST responses that carry notifications before the
//! result, and the GET stream. Event ids name the run and the JSON-RPC request, so
//! a client that lost a POST stream can resume with `GET` + `Last-Event-ID` on any
//! instance and receive the result from the event log.

use std::{convert::Infallible, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
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
/// A comment line after this much silence keeps idle streams (and proxies) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

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

/// One server-sent event, already framed. Written here rather than with axum's
/// `Event`, which cannot write the empty `data:` field of a priming event.
#[derive(Debug, Clone)]
pub struct Event(Bytes);

/// The first event of a stream: an id and empty data, so the client can resume.
pub fn priming(id: &EventId) -> Event {
    Event(Bytes::from(format!(
        "id: {}\nretry: {}\ndata: \n\n",
        id.encode(),
        RETRY.as_millis()
    )))
}

/// A JSON-RPC message: compact JSON has no line breaks, so it is one `data:` line.
pub fn message(id: Option<&EventId>, message: &Value) -> Event {
    let id = id.map(|id| format!("id: {}\n", id.encode())).unwrap_or_default();
    Event(Bytes::from(format!("event: message\n{id}data: {message}\n\n")))
}

/// An SSE response fed by a channel; it ends when the sender is dropped. A
/// comment line after [`KEEP_ALIVE`] of silence keeps the connection open.
pub fn response(rx: mpsc::Receiver<Event>) -> Response {
    let body = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = tokio::select! {
            event = rx.recv() => event?.0,
            () = tokio::time::sleep(KEEP_ALIVE) => Bytes::from_static(b":\n\n"),
        };
        Some((Ok::<_, Infallible>(chunk), rx))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
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

    #[test]
    fn priming_has_an_empty_data_field_and_messages_one_data_line() {
        let id = EventId {
            r: Uuid::nil(),
            i: serde_json::json!(1),
            n: 0,
        };
        let primed = String::from_utf8(priming(&id).0.to_vec()).expect("utf8");
        assert_eq!(primed, format!("id: {}\nretry: 1000\ndata: \n\n", id.encode()));
        let text = serde_json::json!({"text": "two\nlines"});
        let framed = String::from_utf8(message(None, &text).0.to_vec()).expect("utf8");
        assert_eq!(framed, "event: message\ndata: {\"text\":\"two\\nlines\"}\n\n");
    }
}

//! The client side of MCP Streamable HTTP that a load test needs: open a session
//! (initialize + notifications/initialized), call a tool, classify the answer.
//!
//! Hand-written rather than `rmcp`'s client on purpose: a load generator must
//! keep its own per-call cost tiny and visible (one POST, one parse), and must
//! drive thousands of sessions without a task per session.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub const PROTOCOL_VERSION: &str = "2025-11-25";
/// The stateless revision: no session, each request carries its own metadata.
pub const STATELESS_VERSION: &str = "2026-07-28";
const ACCEPT: &str = "application/json, text/event-stream";

/// How one call ended, as the report counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    /// HTTP status other than 2xx.
    Http(u16),
    /// A JSON-RPC error object (code).
    Rpc(i64),
    /// `result.isError: true` (the upstream answered, but not with success).
    Tool,
    /// Connection refused/reset, timeout, unparsable answer.
    Transport,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Http(s) => write!(f, "http_{s}"),
            Outcome::Rpc(c) => write!(f, "jsonrpc_{c}"),
            Outcome::Tool => write!(f, "tool_error"),
            Outcome::Transport => write!(f, "transport"),
        }
    }
}

/// One MCP session: its id and the next JSON-RPC id. Ids must differ per call,
/// because Tengine treats the same session + JSON-RPC id as a client retry.
pub struct Session {
    pub id: String,
    next: AtomicU64,
}

impl Session {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

pub async fn open_session(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Session> {
    let init = json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                   "clientInfo": {"name": "tengine-load", "version": env!("CARGO_PKG_VERSION")}}
    });
    let response = client
        .post(url)
        .bearer_auth(token)
        .header("accept", ACCEPT)
        .json(&init)
        .send()
        .await
        .context("initialize")?;
    let status = response.status();
    let id = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.text().await.unwrap_or_default();
    let Some(id) = id.filter(|_| status.is_success()) else {
        bail!("initialize answered {status} without a session id: {body}");
    };
    let initialized = client
        .post(url)
        .bearer_auth(token)
        .header("accept", ACCEPT)
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", PROTOCOL_VERSION)
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .context("notifications/initialized")?;
    if initialized.status().as_u16() != 202 {
        bail!("notifications/initialized answered {}", initialized.status());
    }
    Ok(Session {
        id,
        next: AtomicU64::new(1),
    })
}

/// Opens the session's GET stream (server-to-client notifications) and returns the
/// response, whose body stays open as long as it is held.
pub async fn open_stream(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    session: &Session,
) -> anyhow::Result<reqwest::Response> {
    let response = client
        .get(url)
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session.id)
        .header("mcp-protocol-version", PROTOCOL_VERSION)
        .send()
        .await
        .context("GET stream")?;
    if !response.status().is_success() {
        bail!("GET stream answered {}", response.status());
    }
    Ok(response)
}

pub async fn call_tool(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    session: &Session,
    tool: &str,
    arguments: &Value,
) -> Outcome {
    let request = json!({
        "jsonrpc": "2.0", "id": session.next_id(), "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}
    });
    let sent = client
        .post(url)
        .bearer_auth(token)
        .header("accept", ACCEPT)
        .header("mcp-session-id", &session.id)
        .header("mcp-protocol-version", PROTOCOL_VERSION)
        .json(&request)
        .send()
        .await;
    answer(sent).await
}

/// A 2026-07-28 stateless `tools/call`: the metadata in `_meta` and the
/// `Mcp-Method`/`Mcp-Name` headers, no session; `id` unique per call.
pub async fn call_stateless(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    id: u64,
    tool: &str,
    arguments: &Value,
) -> Outcome {
    let request = stateless_request(id, tool, arguments);
    answer(stateless_post(client, url, token, tool, &request).send().await).await
}

/// The body of a 2026-07-28 `tools/call`.
pub fn stateless_request(id: u64, tool: &str, arguments: &Value) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": {
            "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "tengine-load", "version": env!("CARGO_PKG_VERSION")},
        }}
    })
}

/// The POST of a 2026-07-28 `tools/call` with the headers the revision requires.
pub fn stateless_post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    tool: &str,
    request: &Value,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .bearer_auth(token)
        .header("accept", ACCEPT)
        .header("mcp-protocol-version", STATELESS_VERSION)
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .json(request)
}

/// Reads a `tools/call` answer (JSON or SSE) and classifies it.
async fn answer(sent: reqwest::Result<reqwest::Response>) -> Outcome {
    let Ok(response) = sent else { return Outcome::Transport };
    match read(response).await {
        Some((status, _)) if !(200..300).contains(&status) => Outcome::Http(status),
        Some((_, message)) => classify(message),
        None => Outcome::Transport,
    }
}

/// The HTTP status of an answer and its JSON-RPC response (the last one of an SSE
/// body); `None` when the body could not be read.
pub async fn read(response: reqwest::Response) -> Option<(u16, Option<Value>)> {
    let status = response.status().as_u16();
    let sse = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = response.bytes().await.ok()?;
    let message = if sse {
        last_sse_message(&body)
    } else {
        serde_json::from_slice::<Value>(&body).ok()
    };
    Some((status, message))
}

/// A plain HTTP POST of the same arguments, for calling an upstream directly.
pub async fn call_direct(client: &reqwest::Client, url: &str, arguments: &Value) -> Outcome {
    match client.post(url).json(arguments).send().await {
        Ok(response) => {
            let status = response.status();
            match response.bytes().await {
                Ok(_) if status.is_success() => Outcome::Ok,
                Ok(_) => Outcome::Http(status.as_u16()),
                Err(_) => Outcome::Transport,
            }
        }
        Err(_) => Outcome::Transport,
    }
}

fn last_sse_message(body: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .rev()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .find(|m| m.get("result").is_some() || m.get("error").is_some())
}

fn classify(message: Option<Value>) -> Outcome {
    let Some(message) = message else {
        return Outcome::Transport;
    };
    if let Some(error) = message.get("error") {
        return Outcome::Rpc(error.get("code").and_then(Value::as_i64).unwrap_or(0));
    }
    match message.get("result") {
        Some(result) if result.get("isError").and_then(Value::as_bool) == Some(true) => Outcome::Tool,
        Some(_) => Outcome::Ok,
        None => Outcome::Transport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_json_rpc_answers() {
        assert_eq!(classify(Some(json!({"result": {"isError": false}}))), Outcome::Ok);
        assert_eq!(classify(Some(json!({"result": {"isError": true}}))), Outcome::Tool);
        assert_eq!(classify(Some(json!({"error": {"code": -32602}}))), Outcome::Rpc(-32602));
        assert_eq!(classify(None), Outcome::Transport);
    }

    #[test]
    fn reads_the_answer_from_an_sse_body() {
        let body = b"id: 1\ndata: \n\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n\
                     data: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"isError\":false}}\n\n";
        assert_eq!(classify(last_sse_message(body)), Outcome::Ok);
    }
}

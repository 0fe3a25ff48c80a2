//! A raw MCP Streamable HTTP client for tests that need to see every status and
//! header (the SDK clients are exercised separately).

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

pub struct RawSession {
    http: reqwest::Client,
    url: String,
    token: String,
    pub session_id: Option<String>,
    /// JSON-RPC id of the next request. Within a session an id names one call
    /// (a repeated id is a retry), so clients sharing a session must not overlap.
    pub next_id: i64,
}

impl RawSession {
    pub fn new(http: reqwest::Client, url: String, token: String) -> Self {
        Self {
            http,
            url,
            token,
            session_id: None,
            next_id: 1,
        }
    }

    /// Opens the session's GET stream (`initialize` first).
    pub async fn get_stream(&self) -> reqwest::Response {
        self.http
            .get(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream")
            .header(
                "mcp-session-id",
                self.session_id.as_deref().expect("an initialized session"),
            )
            .send()
            .await
            .expect("GET")
    }

    /// POSTs raw bytes with the given headers (no defaults added).
    pub async fn post_raw(&self, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let mut request = self.http.post(&self.url).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("POST /mcp");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    /// POSTs a message with the headers a well-behaved client sends.
    pub async fn post(&self, message: &Value) -> Reply {
        let auth = format!("Bearer {}", self.token);
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("accept", ACCEPT_BOTH),
            ("content-type", "application/json"),
            ("mcp-protocol-version", "2025-11-25"),
        ];
        if let Some(id) = &self.session_id {
            headers.push(("mcp-session-id", id.as_str()));
        }
        self.post_raw(&headers, serde_json::to_vec(message).expect("json"))
            .await
    }

    pub async fn initialize(&mut self) -> Reply {
        let reply = self
            .post(&json!({
                "jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "it", "version": "1"}}
            }))
            .await;
        assert_eq!(reply.status, 200, "initialize: {}", reply.body);
        self.session_id = reply
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert!(self.session_id.is_some(), "initialize returns Mcp-Session-Id");
        let note = self
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert_eq!(note.status, 202);
        reply
    }

    pub async fn request(&mut self, method: &str, params: Value) -> Reply {
        self.next_id += 1;
        self.post(&json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}))
            .await
    }

    /// tools/call; returns the JSON-RPC `result` (panics on a JSON-RPC error).
    pub async fn call(&mut self, name: &str, arguments: Value) -> Value {
        let reply = self
            .request("tools/call", json!({"name": name, "arguments": arguments}))
            .await;
        assert_eq!(reply.status, 200, "tools/call: {}", reply.body);
        reply
            .body
            .get("result")
            .cloned()
            .unwrap_or_else(|| panic!("tools/call failed: {}", reply.body))
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<String>,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// Parses an SSE body (comments and keep-alives skipped).
pub fn parse_sse(text: &str) -> Vec<SseEvent> {
    let mut events = Vec::new();
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let mut event = SseEvent::default();
        let mut seen = false;
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "id" => event.id = Some(value),
                "event" => event.event = Some(value),
                "retry" => event.retry = Some(value),
                "data" => {
                    if !event.data.is_empty() {
                        event.data.push('\n');
                    }
                    event.data.push_str(&value);
                }
                _ => continue,
            }
            seen = true;
        }
        if seen {
            events.push(event);
        }
    }
    events
}

/// The Run ID a tools/call result carries in `_meta`.
pub fn run_id(result: &Value) -> String {
    result["_meta"]["tengine.dev/runId"]
        .as_str()
        .unwrap_or_else(|| panic!("result has a run id: {result}"))
        .to_string()
}

pub fn text(result: &Value) -> String {
    result["content"][0]["text"].as_str().unwrap_or_default().to_string()
}

/// A raw client of revision 2026-07-28: every request carries the per-request
/// `_meta` and the request-metadata headers; no session.
pub struct ModernClient {
    http: reqwest::Client,
    url: String,
    token: String,
    /// The client capabilities declared on every request.
    pub capabilities: Value,
}

pub const MODERN: &str = "2026-07-28";

impl ModernClient {
    pub fn new(http: reqwest::Client, url: String, token: String) -> Self {
        Self {
            http,
            url,
            token,
            capabilities: json!({}),
        }
    }

    /// The body of a request, `_meta` included.
    pub fn body(&self, id: Value, method: &str, mut params: Value) -> Value {
        params["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!(MODERN);
        params["_meta"]["io.modelcontextprotocol/clientCapabilities"] = self.capabilities.clone();
        params["_meta"]["io.modelcontextprotocol/clientInfo"] = json!({"name": "tengine-tests", "version": "1"});
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
    }

    /// The headers a conforming client sends with `body`.
    pub fn headers(&self, body: &Value) -> Vec<(String, String)> {
        let method = body["method"].as_str().unwrap_or_default().to_string();
        let mut headers = vec![
            ("authorization".to_string(), format!("Bearer {}", self.token)),
            ("accept".to_string(), ACCEPT_BOTH.to_string()),
            ("content-type".to_string(), "application/json".to_string()),
            ("mcp-protocol-version".to_string(), MODERN.to_string()),
            ("mcp-method".to_string(), method.clone()),
        ];
        if method == "tools/call" {
            headers.push((
                "mcp-name".to_string(),
                body["params"]["name"].as_str().unwrap_or_default().to_string(),
            ));
        }
        headers
    }

    /// Sends `body` with `headers` as they are.
    pub async fn send(&self, headers: &[(String, String)], body: &Value) -> Reply {
        let mut request = self.http.post(&self.url).body(serde_json::to_vec(body).expect("json"));
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.expect("POST /mcp");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = parse_reply(&text);
        Reply { status, headers, body }
    }

    /// A conforming request.
    pub async fn request(&self, id: Value, method: &str, params: Value) -> Reply {
        let body = self.body(id, method, params);
        self.send(&self.headers(&body), &body).await
    }
}

/// A JSON body, or the last JSON-RPC response of an SSE body.
fn parse_reply(text: &str) -> Value {
    if let Ok(value) = serde_json::from_str(text) {
        return value;
    }
    text.lines()
        .rev()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .find(|message| message.get("id").is_some())
        .unwrap_or_else(|| Value::String(text.to_string()))
}

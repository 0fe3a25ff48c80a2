//! A real HTTP API on 127.0.0.1:0 standing in for a customer's service. It records
//! every request and verifies both signature forms as docs/upstream.md tells a receiver
//! to: `webhook-signature` with the `standardwebhooks` crate plus the `webhook-id`
//! binding, and `tng3`.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, RawQuery, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::any,
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// For a request with a `webhook-signature`: `Some(true)` when every check of
    /// [`check_signatures`] passed with the upstream's secret, else `Some(false)`
    /// and `signature_error` says why. `None` for an unsigned request.
    pub signature_valid: Option<bool>,
    pub signature_error: Option<String>,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
    /// The request target as received: path, then `?query` if there was one.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_bytes(v.as_bytes()),
            ) {
                map.append(name, value);
            }
        }
        map
    }
    /// [`check_signatures`] on this request.
    pub fn check_signatures(&self, secret: &str) -> Result<(), String> {
        check_signatures(secret, &self.method, &self.target(), &self.header_map(), &self.body)
    }
}

/// The headers `tng3` and the `webhook-id` binding cover, in order, as docs/upstream.md
/// lists them (written out as a receiver would, not taken from tengine_core).
pub const SIGNED_HEADERS: [&str; 7] = [
    "x-tengine-project-id",
    "x-tengine-integration-id",
    "x-tengine-request-id",
    "idempotency-key",
    "x-tengine-member-id",
    "x-tengine-member-email",
    "x-tengine-member-roles",
];

/// `{METHOD}\n{path?query}\n` then `{name}:{value}\n` per signed header, values as
/// received (absent: empty).
pub fn request_block(method: &str, target: &str, headers: &HeaderMap) -> Vec<u8> {
    let mut block = format!("{method}\n{target}\n").into_bytes();
    for name in SIGNED_HEADERS {
        block.extend_from_slice(name.as_bytes());
        block.push(b':');
        if let Some(value) = headers.get(name) {
            block.extend_from_slice(value.as_bytes());
        }
        block.push(b'\n');
    }
    // A re-issued call's answers, on a line of their own, only when sent.
    if let Some(value) = headers.get("x-tengine-input") {
        block.extend_from_slice(b"x-tengine-input:");
        block.extend_from_slice(value.as_bytes());
        block.push(b'\n');
    }
    block
}

/// The `X-Tengine-Input` of a request, decoded: `{"inputResponses", "state"}`.
pub fn input_of(headers: &HeaderMap) -> Option<Value> {
    let raw = headers.get("x-tengine-input")?.to_str().ok()?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(raw).ok()?).ok()
}

/// Both signature forms, as docs/upstream.md tells a receiver to check them:
/// `webhook-signature` (the `standardwebhooks` crate) with the `webhook-id`
/// binding, and `tng3`. Any one of several space-separated signatures may match.
pub fn check_signatures(
    secret: &str,
    method: &str,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let webhook = standardwebhooks::Webhook::new(secret).map_err(|e| format!("secret: {e}"))?;
    webhook
        .verify(body, headers)
        .map_err(|e| format!("standardwebhooks: {e}"))?;
    let block = request_block(method, target, headers);
    let binding = URL_SAFE_NO_PAD.encode(Sha256::digest(&block));
    if get("webhook-id").rsplit_once('.').map(|(_, b)| b) != Some(binding.as_str()) {
        return Err(format!(
            "webhook-id binding: {:?} does not end in .{binding}",
            get("webhook-id")
        ));
    }
    if get("x-tengine-timestamp") != get("webhook-timestamp") {
        return Err("x-tengine-timestamp differs from webhook-timestamp".into());
    }
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .map_err(|e| format!("secret: {e}"))?;
    let line = format!(
        "tng3 {} {} {}",
        get("x-tengine-timestamp"),
        hex::encode(Sha256::digest(&block)),
        hex::encode(Sha256::digest(body))
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| format!("key: {e}"))?;
    mac.update(line.as_bytes());
    let expected = format!("tng3={}", hex::encode(mac.finalize().into_bytes()));
    if !get("x-tengine-signature").split(' ').any(|s| s == expected) {
        return Err(format!("no tng3 signature matches: {:?}", get("x-tengine-signature")));
    }
    Ok(())
}

struct Inner {
    secret: Option<String>,
    requests: std::sync::Mutex<Vec<Recorded>>,
    /// Failures served so far, per request id (`/flaky`).
    failures: std::sync::Mutex<BTreeMap<String, u32>>,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Upstream {
    pub async fn spawn(secret: Option<String>) -> Self {
        let inner = Arc::new(Inner {
            secret,
            requests: Default::default(),
            failures: Default::default(),
        });
        let app = Router::new()
            .route("/status/{code}", any(status))
            .route("/slow/{ms}", any(slow))
            .route("/flaky/{n}/{code}", any(flaky))
            .route("/ndjson", any(ndjson))
            .route("/binary/{bytes}", any(binary))
            .route("/json/{bytes}", any(big_json))
            .route("/retry-after", any(retry_after))
            .route("/ask/{rounds}", any(ask))
            .route("/ask-later/{rounds}", any(ask_later))
            .route("/{*rest}", any(echo))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().expect("lock").clone()
    }
}

fn record(inner: &Inner, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) {
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |pq| pq.as_str().to_string());
    let (signature_valid, signature_error) = match (&inner.secret, headers.contains_key("webhook-signature")) {
        (Some(secret), true) => match check_signatures(secret, method.as_str(), &target, headers, body) {
            Ok(()) => (Some(true), None),
            Err(e) => (Some(false), Some(e)),
        },
        (None, true) => (Some(false), Some("no secret to verify with".into())),
        (_, false) => (None, None),
    };
    inner.requests.lock().expect("lock").push(Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers: headers
            .iter()
            // Tengine sends non-ASCII values (a member's name) as UTF-8 bytes.
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        signature_valid,
        signature_error,
    });
}

async fn echo(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&inner, &method, &uri, &headers, &body);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Json(json!({"method": method.as_str(), "path": uri.path(), "query": query, "body": parsed})).into_response()
}

/// [`ask`] after 1 s of work: a task's API that asks only once it is under way.
async fn ask_later(
    state: State<Arc<Inner>>,
    rounds: Path<u32>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::time::sleep(Duration::from_secs(1)).await;
    ask(state, rounds, method, uri, headers, body).await
}

/// An API that asks the user before it answers: round `n` (no input yet: 1)
/// asks for `step{n}` by elicitation, with its state `round-{n}`; once `rounds`
/// rounds are answered it echoes every answer and the state it got back.
async fn ask(
    State(inner): State<Arc<Inner>>,
    Path(rounds): Path<u32>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&inner, &method, &uri, &headers, &body);
    let input = input_of(&headers);
    let answered: u32 = input
        .as_ref()
        .and_then(|i| i["state"].as_str())
        .and_then(|s| s.strip_prefix("round-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if answered >= rounds {
        return Json(json!({"done": true, "input": input})).into_response();
    }
    let next = answered + 1;
    let ask = json!({
        "inputRequests": {
            format!("step{next}"): {
                "method": "elicitation/create",
                "params": {
                    "message": format!("Step {next}?"),
                    "requestedSchema": {"type": "object", "properties": {"v": {"type": "string"}}, "required": ["v"]}
                }
            },
            "model": {
                "method": "sampling/createMessage",
                "params": {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}], "maxTokens": 5}
            }
        },
        "state": format!("round-{next}")
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/vnd.tengine.input-required+json",
        )],
        ask.to_string(),
    )
        .into_response()
}

async fn status(
    State(inner): State<Arc<Inner>>,
    Path(code): Path<u16>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&inner, &method, &uri, &headers, &body);
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, format!("upstream says {}", code.as_u16())).into_response()
}

async fn slow(
    State(inner): State<Arc<Inner>>,
    Path(ms): Path<u64>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&inner, &method, &uri, &headers, &body);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "finally".into_response()
}

/// Answers `code` to the first `n` requests of each request id, then 200. A 503
/// carries `Retry-After: 1`.
async fn flaky(
    State(inner): State<Arc<Inner>>,
    Path((n, code)): Path<(u32, u16)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&inner, &method, &uri, &headers, &body);
    let id = headers
        .get("x-tengine-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let served = {
        let mut failures = inner.failures.lock().expect("lock");
        let count = failures.entry(id).or_insert(0);
        *count += 1;
        *count
    };
    if served <= n {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut response = (code, format!("failure {served}")).into_response();
        if code == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        return response;
    }
    "recovered".into_response()
}

/// Streams three NDJSON progress lines, 50 ms apart, then the result line.
async fn ndjson(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&inner, &method, &uri, &headers, &body);
    let lines = futures::stream::unfold(0u32, |i| async move {
        if i > 3 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let line = if i < 3 {
            format!(
                "{{\"progress\": {}, \"total\": 3, \"message\": \"step {}\"}}\n",
                i + 1,
                i + 1
            )
        } else {
            "{\"answer\": 42}\n".to_string()
        };
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), i + 1))
    });
    (
        [("content-type", "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// `bytes` bytes none of which is UTF-8 (0x80..=0xFF in turn), of content
/// type `?type=` (default `application/octet-stream`).
async fn binary(
    State(inner): State<Arc<Inner>>,
    Path(bytes): Path<usize>,
    Query(query): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&inner, &method, &uri, &headers, &body);
    let content_type = query
        .get("type")
        .cloned()
        .unwrap_or_else(|| "application/octet-stream".into());
    ([("content-type", content_type)], binary_body(bytes)).into_response()
}

/// The body `/binary/{bytes}` answers. As text each byte would become U+FFFD
/// (3 bytes): the worst case of a lossy conversion.
pub fn binary_body(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| 0x80 | (i % 128) as u8).collect()
}

/// A JSON object of exactly `bytes` bytes (`{"data":"aaa…"}`).
async fn big_json(
    State(inner): State<Arc<Inner>>,
    Path(bytes): Path<usize>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&inner, &method, &uri, &headers, &body);
    let filler = "a".repeat(bytes.saturating_sub(r#"{"data":""}"#.len()));
    (
        [("content-type", "application/json")],
        format!(r#"{{"data":"{filler}"}}"#),
    )
        .into_response()
}

/// HTTP 503 with `Retry-After: {?value=}`, verbatim.
async fn retry_after(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&inner, &method, &uri, &headers, &body);
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    if let Some(Ok(value)) = query.get("value").map(|v| axum::http::HeaderValue::from_str(v)) {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

/// An address on which nothing listens (bound, then released).
pub async fn closed_port_url() -> String {
    // Port 1 (tcpmux) is privileged and served by nothing here, so connections are
    // refused for good; a port freed by the test could be taken by another process
    // (parallel tests start servers) between the check and the call.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    assert!(
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).is_err(),
        "something listens on 127.0.0.1:1; the tests need it closed"
    );
    format!("http://{addr}")
}

//! Revision 2026-07-28 beside 2025-11-25 on one endpoint: stateless requests with
//! per-request `_meta`, `server/discover`, the request-metadata header rules and
//! their error codes, `resultType` and caching hints, `subscriptions/listen`,
//! cancellation by closing the stream, and a re-issued call (new JSON-RPC id, the
//! same idempotency key) that gets the first run's outcome.

use std::time::Duration;

use serde_json::{Value, json};
use tengine_tests::{
    TestApp, ToolSpec,
    mcp::{ModernClient, run_id},
    spawn_app, spawn_app_with,
    upstream::Upstream,
};

fn client(app: &TestApp) -> ModernClient {
    ModernClient::new(app.http.clone(), app.mcp_url.clone(), app.api_key.clone())
}

async fn echo_tool(app: &TestApp, upstream: &Upstream, name: &str, path: &str) {
    app.create_tool(
        ToolSpec::post(name, &upstream.url(), path)
            .description(name)
            .timeout_ms(15000),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn discover_lists_and_calls_without_a_session() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    echo_tool(&app, &upstream, "echo", "/echo").await;
    let modern = client(&app);

    let discovered = modern.request(json!("d-1"), "server/discover", json!({})).await;
    assert_eq!(discovered.status, 200, "{}", discovered.body);
    let result = &discovered.body["result"];
    assert_eq!(result["supportedVersions"], json!(["2026-07-28"]), "{result}");
    assert_eq!(result["capabilities"]["tools"]["listChanged"], true);
    assert_eq!(result["resultType"], "complete");
    assert_eq!(result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "tengine");
    assert!(
        result["ttlMs"].as_u64().is_some() && result["cacheScope"].is_string(),
        "{result}"
    );
    assert!(
        discovered.headers.get("mcp-session-id").is_none(),
        "no session is minted"
    );

    let listed = modern.request(json!(1), "tools/list", json!({})).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let result = &listed.body["result"];
    assert_eq!(result["tools"][0]["name"], "echo", "{result}");
    assert_eq!(result["resultType"], "complete");
    assert_eq!(result["cacheScope"], "private", "the list depends on the credential");
    assert!(result["ttlMs"].as_u64().is_some());

    let called = modern
        .request(json!(2), "tools/call", json!({"name": "echo", "arguments": {"a": 1}}))
        .await;
    assert_eq!(called.status, 200, "{}", called.body);
    let result = &called.body["result"];
    assert_eq!(result["resultType"], "complete", "{result}");
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "tengine");
    assert!(result["_meta"]["tengine.dev/runId"].is_string());
    let run = app.admin.finished_run(&run_id(result)).await;
    assert_eq!(run["status"], "succeeded");

    // Removed methods, unknown ones and methods of other features: 404, -32601.
    for method in [
        "initialize",
        "ping",
        "logging/setLevel",
        "resources/subscribe",
        "prompts/list",
        "unknown/x",
    ] {
        let reply = modern.request(json!(method), method, json!({})).await;
        assert_eq!(reply.status, 404, "{method}: {}", reply.body);
        assert_eq!(reply.body["error"]["code"], -32601, "{method}");
        assert_eq!(reply.body["id"], method, "the id is echoed");
    }
    // GET and DELETE belong to sessions.
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let response = app
            .http
            .request(method.clone(), &app.mcp_url)
            .bearer_auth(&app.api_key)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 405, "{method}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn request_metadata_is_checked_in_order() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    echo_tool(&app, &upstream, "echo", "/echo").await;
    let modern = client(&app);
    let code = |reply: &tengine_tests::mcp::Reply| reply.body["error"]["code"].as_i64();

    // `_meta` missing or incomplete: 400, -32602 (even with a correct version header).
    let mut body = modern.body(json!(101), "server/discover", json!({}));
    let headers = modern.headers(&body);
    for field in [
        "io.modelcontextprotocol/protocolVersion",
        "io.modelcontextprotocol/clientCapabilities",
    ] {
        let mut broken = body.clone();
        broken["params"]["_meta"].as_object_mut().expect("meta").remove(field);
        let reply = modern.send(&headers, &broken).await;
        assert_eq!(
            (reply.status, code(&reply)),
            (400, Some(-32602)),
            "{field}: {}",
            reply.body
        );
    }
    // clientInfo is optional.
    body["params"]["_meta"]
        .as_object_mut()
        .expect("meta")
        .remove("io.modelcontextprotocol/clientInfo");
    assert_eq!(modern.send(&headers, &body).await.status, 200);

    // Headers that disagree with the body, or are missing: 400, -32020.
    let call = modern.body(json!(7), "tools/call", json!({"name": "echo", "arguments": {}}));
    let good = modern.headers(&call);
    let with = |name: &str, value: Option<&str>| {
        let mut h: Vec<(String, String)> = good.iter().filter(|(n, _)| n != name).cloned().collect();
        if let Some(value) = value {
            h.push((name.to_string(), value.to_string()));
        }
        h
    };
    for (name, value) in [
        ("mcp-method", Some("tools/list")),
        ("mcp-method", None),
        ("mcp-method", Some("TOOLS/CALL")),
        ("mcp-name", Some("other_tool")),
        ("mcp-name", None),
        ("mcp-name", Some("=?base64?ZWNobw?=")),
        ("mcp-protocol-version", None),
    ] {
        let reply = modern.send(&with(name, value), &call).await;
        assert_eq!(
            (reply.status, code(&reply)),
            (400, Some(-32020)),
            "{name}: {value:?}: {}",
            reply.body
        );
        assert_eq!(reply.body["id"], 7);
    }
    // Accepted: the name Base64-encoded, or padded with whitespace; header names in any case.
    for (name, value) in [
        ("mcp-name", "=?base64?ZWNobw==?="),
        ("mcp-name", "  echo  "),
        ("MCP-METHOD", "tools/call"),
    ] {
        let mut headers = with(&name.to_ascii_lowercase(), None);
        headers.push((name.to_string(), value.to_string()));
        let reply = modern.send(&headers, &call).await;
        assert_eq!(reply.status, 200, "{name}: {value}: {}", reply.body);
        assert_eq!(reply.body["result"]["isError"], false, "{}", reply.body);
    }

    // A header version that differs from the body's: -32020 (not -32022).
    let mut other = modern.body(json!(302), "server/discover", json!({}));
    other["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("v999.0.0");
    let reply = modern.send(&modern.headers(&other), &other).await;
    assert_eq!((reply.status, code(&reply)), (400, Some(-32020)), "{}", reply.body);
    // The same unsupported version in both: 400, -32022 with what is supported.
    let headers: Vec<(String, String)> = modern
        .headers(&other)
        .into_iter()
        .map(|(n, v)| {
            if n == "mcp-protocol-version" {
                (n, "v999.0.0".into())
            } else {
                (n, v)
            }
        })
        .collect();
    let reply = modern.send(&headers, &other).await;
    assert_eq!((reply.status, code(&reply)), (400, Some(-32022)), "{}", reply.body);
    assert_eq!(reply.body["error"]["data"]["supported"], json!(["2026-07-28"]));
    assert_eq!(reply.body["error"]["data"]["requested"], "v999.0.0");
    assert_eq!(reply.body["id"], 302);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_hears_of_tool_changes() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    echo_tool(&app, &upstream, "echo", "/echo").await;
    let modern = client(&app);
    let body = modern.body(
        json!("listen-1"),
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true}}),
    );
    let mut request = app.http.post(&app.mcp_url).json(&body);
    for (name, value) in modern.headers(&body) {
        request = request.header(name, value);
    }
    let mut stream = request.send().await.expect("listen");
    assert_eq!(stream.status().as_u16(), 200);
    let mut buffer = String::new();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .expect("the acknowledgment at once")
        .expect("read")
        .expect("data");
    buffer.push_str(&String::from_utf8_lossy(&first));
    let ack = events(&buffer).remove(0);
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged", "{ack}");
    assert_eq!(ack["params"]["notifications"]["toolsListChanged"], true);
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "listen-1"
    );

    app.create_tool(ToolSpec::post("added", &upstream.url(), "/echo")).await;
    buffer.clear();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let changed = loop {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
            .await
            .expect("a notification within 5 s")
            .expect("read")
            .expect("data");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(event) = events(&buffer)
            .into_iter()
            .find(|e| e["method"] == "notifications/tools/list_changed")
        {
            break event;
        }
        assert!(std::time::Instant::now() < deadline, "no list_changed: {buffer}");
    };
    assert_eq!(
        changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "listen-1"
    );
}

/// The JSON messages of SSE `data:` lines.
fn events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str(data.trim()).ok())
        .collect()
}

/// A client whose stream breaks while the API is being called re-issues the call
/// (a new JSON-RPC id, as 2026-07-28 requires) with the same idempotency key: it
/// gets the first run's outcome, and the API saw one request.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_reissued_after_its_stream_broke_gets_the_first_runs_outcome() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    echo_tool(&app, &upstream, "slow_write", "/slow/1500").await;
    let modern = client(&app);
    let body = modern.body(
        json!("first"),
        "tools/call",
        json!({"name": "slow_write", "arguments": {"n": 1}}),
    );
    let mut headers = modern.headers(&body);
    headers.push(("idempotency-key".into(), "order-77".into()));
    let first = {
        let (http, url, headers, body) = (app.http.clone(), app.mcp_url.clone(), headers.clone(), body.clone());
        tokio::spawn(async move {
            let mut request = http.post(url).json(&body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.send().await.map(|r| r.status())
        })
    };
    // The worker has called the API: now the connection breaks.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while upstream.requests().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the API was not called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.abort();

    let mut again = modern.body(
        json!("second"),
        "tools/call",
        json!({"name": "slow_write", "arguments": {"n": 1}}),
    );
    again["params"]["_meta"]["idempotencyKey"] = json!("order-77");
    let reply = modern.send(&modern.headers(&again), &again).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let result = &reply.body["result"];
    assert_eq!(result["isError"], false, "the first run's outcome: {result}");
    let run = app.admin.finished_run(&run_id(result)).await;
    assert_eq!(run["status"], "succeeded");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.requests().len(), 1, "the API saw one request");
}

/// Closing the stream of a call that has not reached the API cancels it: the API
/// is never called. Re-issued with its idempotency key, the call then runs (as a
/// new run: the cancelled one did nothing).
#[tokio::test(flavor = "multi_thread")]
async fn closing_the_stream_of_a_queued_call_cancels_it() {
    let app = spawn_app_with(&[("worker.concurrency", "1")]).await;
    let upstream = Upstream::spawn(None).await;
    echo_tool(&app, &upstream, "busy", "/slow/3000").await;
    echo_tool(&app, &upstream, "write", "/echo").await;
    let modern = client(&app);
    // The only worker slot is taken.
    let busy = {
        let modern = client(&app);
        tokio::spawn(async move {
            modern
                .request(json!("busy"), "tools/call", json!({"name": "busy"}))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = modern.body(
        json!("queued"),
        "tools/call",
        json!({"name": "write", "arguments": {"x": 1}}),
    );
    let headers = modern.headers(&body);
    let queued = {
        let (http, url) = (app.http.clone(), app.mcp_url.clone());
        tokio::spawn(async move {
            let mut request = http.post(url).json(&body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.send().await.map(|r| r.status())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    queued.abort();
    busy.await.expect("busy call");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let writes = upstream.requests().iter().filter(|r| r.path == "/echo").count();
    assert_eq!(writes, 0, "the cancelled call never reached the API");
    let (_, runs) = app
        .admin
        .get(&format!("/v1/projects/{}/runs?tool=write", app.project_id))
        .await;
    assert_eq!(runs["runs"][0]["status"], "cancelled", "{runs}");
    let cancelled = runs["runs"][0]["run_id"].as_str().expect("run id").to_string();

    let mut again = modern.body(
        json!("again"),
        "tools/call",
        json!({"name": "write", "arguments": {"x": 1}}),
    );
    again["params"]["_meta"]["idempotencyKey"] = json!("write-1");
    let reply = modern.send(&modern.headers(&again), &again).await;
    assert_eq!(reply.body["result"]["isError"], false, "{}", reply.body);
    assert_ne!(run_id(&reply.body["result"]), cancelled, "a new run");
    let writes = upstream.requests().iter().filter(|r| r.path == "/echo").count();
    assert_eq!(writes, 1, "the re-issued call ran once");
    // And a further retry follows that run.
    again["id"] = json!("again-2");
    let followed = modern.send(&modern.headers(&again), &again).await;
    assert_eq!(run_id(&followed.body["result"]), run_id(&reply.body["result"]));
    assert_eq!(upstream.requests().iter().filter(|r| r.path == "/echo").count(), 1);
}

/// SEP-2243: an argument whose property carries `x-mcp-header` is mirrored in an
/// `Mcp-Param-*` header, which must match it (plain or `=?base64?…?=`); a
/// missing, malformed or different header is refused with 400 / -32020, and the
/// call never runs.
#[tokio::test(flavor = "multi_thread")]
async fn param_headers_must_match_their_arguments() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("query", &upstream.url(), "/echo").schema(json!({
        "type": "object",
        "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "limit": {"type": "integer", "x-mcp-header": "Limit"},
            "sql": {"type": "string"}
        },
        "required": ["region", "sql"]
    })))
    .await;
    let client = client(&app);
    let send = |args: Value, params: Vec<(&'static str, &'static str)>| {
        let body = client.body(json!(1), "tools/call", json!({"name": "query", "arguments": args}));
        let mut headers = client.headers(&body);
        headers.extend(params.into_iter().map(|(n, v)| (n.to_string(), v.to_string())));
        (body, headers)
    };
    let accepted = [
        (
            json!({"region": "us-west1", "sql": "x"}),
            vec![("mcp-param-region", "us-west1")],
        ),
        (
            json!({"region": "Hello", "sql": "x"}),
            vec![("Mcp-Param-Region", "=?base64?SGVsbG8=?=")],
        ),
        (
            json!({"region": "eu", "limit": 7, "sql": "x"}),
            vec![("mcp-param-region", "eu"), ("mcp-param-limit", "7")],
        ),
        // Not the sentinel form: a literal value.
        (
            json!({"region": "=?base64?SGVsbG8=", "sql": "x"}),
            vec![("mcp-param-region", "=?base64?SGVsbG8=")],
        ),
    ];
    for (args, params) in accepted {
        let (body, headers) = send(args, params);
        let reply = client.send(&headers, &body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["result"]["isError"], false, "{}", reply.body);
    }
    let runs = upstream.requests().len();
    let refused = [
        (json!({"region": "us-west1", "sql": "x"}), vec![], "missing"),
        (
            json!({"region": "us-west1", "sql": "x"}),
            vec![("mcp-param-region", "eu-west1")],
            "does not match",
        ),
        (
            json!({"region": "Hello", "sql": "x"}),
            vec![("mcp-param-region", "=?base64?SGVsbG8?=")],
            "encoding",
        ),
        (
            json!({"region": "Hello", "sql": "x"}),
            vec![("mcp-param-region", "=?base64?SGVs!!!bG8=?=")],
            "encoding",
        ),
        (
            json!({"region": "eu", "sql": "x"}),
            vec![("mcp-param-region", "eu"), ("mcp-param-limit", "7")],
            "no argument `limit`",
        ),
    ];
    for (args, params, says) in refused {
        let (body, headers) = send(args, params);
        let reply = client.send(&headers, &body).await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        assert_eq!(reply.body["error"]["code"], -32020, "{}", reply.body);
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "expected {says:?} in {message}");
    }
    assert_eq!(upstream.requests().len(), runs, "a refused call never runs");
}

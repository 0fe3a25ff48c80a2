//! MCP protocol features beyond request/response: SSE answers with progress and
//! log notifications, the GET stream, session end, cancellation, resumption,
//! response modes and DNS-rebinding protection.

use std::time::Duration;

use serde_json::{Value, json};
use tengine_tests::{
    ToolSpec,
    mcp::{ACCEPT_BOTH, RawSession, parse_sse, run_id, text},
    spawn_app, spawn_app_with,
    upstream::Upstream,
};

#[tokio::test(flavor = "multi_thread")]
async fn progress_and_logs_arrive_on_an_sse_answer_before_the_result() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::post("echo", &upstream.url(), "/echo")
            .description("d")
            .timeout_ms(5000),
    )
    .await;
    let mut session = app.session();
    session.initialize().await;
    let level = session.request("logging/setLevel", json!({"level": "info"})).await;
    assert_eq!(level.body["result"], json!({}), "{}", level.body);

    let reply = session
        .request(
            "tools/call",
            json!({"name": "echo", "arguments": {"x": 1}, "_meta": {"progressToken": 7}}),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    let events = parse_sse(reply.body.as_str().expect("an SSE body is text"));
    let priming = &events[0];
    assert!(
        priming.id.is_some() && priming.data.is_empty() && priming.retry.is_some(),
        "{priming:?}"
    );
    let messages: Vec<Value> = events[1..].iter().map(|e| e.json()).collect();
    let progress: Vec<f64> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| {
            assert_eq!(m["params"]["progressToken"], 7, "the token is echoed with its type");
            m["params"]["progress"].as_f64().expect("number")
        })
        .collect();
    assert_eq!(progress, vec![1.0, 2.0, 3.0]);
    let logs = messages
        .iter()
        .filter(|m| m["method"] == "notifications/message")
        .count();
    assert_eq!(logs, 3);
    let last = messages.last().expect("a result");
    assert_eq!(last["result"]["isError"], false, "the result comes last: {last}");
    assert!(events.iter().all(|e| e.id.is_some()), "every event has an id");
}

/// A call answered as one JSON body shows no progress, so its worker sends the
/// ingress only the outcome (each message wakes the ingress); a call with a
/// progress token also gets the attempt's start and end, which its stages need.
#[tokio::test(flavor = "multi_thread")]
async fn only_a_caller_shown_progress_gets_the_attempts_messages() {
    use futures::StreamExt;
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("echo", &upstream.url(), "/echo")).await;
    let nats = async_nats::connect(tengine_tests::nats_url()).await.expect("nats");
    let mut replies = nats
        .subscribe(format!("{}.reply.>", app.config.nats_prefix))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");
    let mut session = app.session();
    session.initialize().await;

    let plain = session
        .request("tools/call", json!({"name": "echo", "arguments": {}}))
        .await;
    assert_eq!(plain.body["result"]["isError"], false, "{}", plain.body);
    let plain_run = run_id(&plain.body["result"]);
    let shown = session
        .request(
            "tools/call",
            json!({"name": "echo", "arguments": {}, "_meta": {"progressToken": 1}}),
        )
        .await;
    let events = parse_sse(shown.body.as_str().expect("an SSE body is text"));
    let last = events.last().expect("events").json();
    assert_eq!(last["result"]["isError"], false, "{last}");
    let shown_run = run_id(&last["result"]);

    // The reply subject ends in the run id: count each run's messages.
    let (mut plain_count, mut shown_count) = (0, 0);
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), replies.next()).await {
        let run = message.subject.rsplit('.').next().unwrap_or_default().to_string();
        if run == plain_run {
            plain_count += 1;
        } else if run == shown_run {
            shown_count += 1;
        }
    }
    assert_eq!(plain_count, 1, "the outcome alone");
    assert_eq!(shown_count, 3, "the attempt's start and end, then the outcome");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_stream_announces_tool_changes_and_delete_ends_the_session() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let mut session = app.session();
    session.initialize().await;
    let sid = session.session_id.clone().expect("session");
    let mut stream = session.get_stream().await;
    assert_eq!(stream.status().as_u16(), 200);
    // Let the stream subscribe before the change.
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.create_tool(
        ToolSpec::post("new_tool", &upstream.url(), "/x")
            .description("d")
            .timeout_ms(5000),
    )
    .await;
    let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .expect("a notification within 5 s")
        .expect("read")
        .expect("data");
    let events = parse_sse(&String::from_utf8_lossy(&chunk));
    assert_eq!(events[0].json()["method"], "notifications/tools/list_changed");

    let deleted = app
        .http
        .delete(&app.mcp_url)
        .bearer_auth(&app.api_key)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status().as_u16(), 204);
    let after = session.request("ping", json!({})).await;
    assert_eq!(after.status, 404, "an ended session is unknown: {}", after.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_queued_call_is_never_executed() {
    // One worker slot: the second call waits in the queue behind the first.
    let app = spawn_app_with(&[("worker.concurrency", "1")]).await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::get("slow", &upstream.url(), "/slow/4000")
            .description("d")
            .timeout_ms(5000),
    )
    .await;
    let mut first = app.session();
    first.initialize().await;
    let mut second = app.session();
    second.initialize().await;
    let busy = tokio::spawn(async move { first.call("slow", json!({})).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let sid = second.session_id.clone().expect("session");
    let http = app.http.clone();
    let (url, key) = (app.mcp_url.clone(), app.api_key.clone());
    let queued = tokio::spawn(async move {
        second
            .post(&json!({"jsonrpc": "2.0", "id": "call-2", "method": "tools/call", "params": {"name": "slow", "arguments": {}}}))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancel = RawSession::new(http, url, key);
    let mut cancel = cancel;
    cancel.session_id = Some(sid);
    let ack = cancel
        .post(&json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "call-2", "reason": "test"}}))
        .await;
    assert_eq!(ack.status, 202);
    let answer = queued.await.expect("join");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!(""), "a cancelled request gets no JSON-RPC answer");
    busy.await.expect("join");

    // Wait for the worker to reach the cancelled command, then check it was skipped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, runs) = app
        .admin
        .get(&format!("/v1/projects/{}/runs?status=cancelled", app.project_id))
        .await;
    let cancelled = runs["runs"].as_array().expect("runs");
    assert_eq!(cancelled.len(), 1, "{runs}");
    let run = app
        .admin
        .finished_run(cancelled[0]["run_id"].as_str().expect("id"))
        .await;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(upstream.requests().len(), 1, "the cancelled call never reached the API");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_stream_resumes_with_last_event_id() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::get("slow", &upstream.url(), "/slow/800")
            .description("d")
            .timeout_ms(5000),
    )
    .await;
    let mut session = app.session();
    session.initialize().await;
    let sid = session.session_id.clone().expect("session");
    // Read only the priming event, then drop the connection.
    let mut response = app
        .http
        .post(&app.mcp_url)
        .bearer_auth(&app.api_key)
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("mcp-session-id", &sid)
        .json(&json!({"jsonrpc": "2.0", "id": 41, "method": "tools/call",
                      "params": {"name": "slow", "arguments": {}, "_meta": {"progressToken": "p"}}}))
        .send()
        .await
        .expect("POST");
    let first = response.chunk().await.expect("read").expect("priming");
    let priming = parse_sse(&String::from_utf8_lossy(&first));
    let last_id = priming[0].id.clone().expect("priming id");
    drop(response);

    let resumed = app
        .http
        .get(&app.mcp_url)
        .bearer_auth(&app.api_key)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("last-event-id", &last_id)
        .send()
        .await
        .expect("GET");
    assert_eq!(resumed.status().as_u16(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resumed.text())
        .await
        .expect("the resumed stream ends with the result")
        .expect("text");
    let events = parse_sse(&body);
    let result = events.last().expect("an event").json();
    assert_eq!(result["id"], 41);
    assert_eq!(text(&result["result"]), "finally");
}

#[tokio::test(flavor = "multi_thread")]
async fn response_modes_map_json_and_mcp_bodies() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::post("as_json", &upstream.url(), "/anything")
            .description("d")
            .timeout_ms(5000)
            .response_mode("json")
            .output_schema(
                json!({"type": "object", "required": ["method"], "properties": {"method": {"type": "string"}}}),
            )
            .title("As JSON")
            .annotations(json!({"readOnlyHint": true, "openWorldHint": false})),
    )
    .await;
    app.create_tool(
        ToolSpec::post("bad_json", &upstream.url(), "/status/200")
            .description("d")
            .timeout_ms(5000)
            .response_mode("json"),
    )
    .await;
    app.create_tool(
        ToolSpec::post("as_mcp", &upstream.url(), "/status/200")
            .description("d")
            .timeout_ms(5000)
            .response_mode("mcp"),
    )
    .await;

    let mut session = app.session();
    session.initialize().await;
    let listed = session.request("tools/list", json!({})).await;
    let as_json = listed.body["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .find(|t| t["name"] == "as_json")
        .cloned()
        .expect("listed");
    assert_eq!(as_json["title"], "As JSON");
    assert_eq!(as_json["annotations"]["readOnlyHint"], true);
    assert_eq!(as_json["outputSchema"]["required"], json!(["method"]));

    let result = session.call("as_json", json!({})).await;
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["structuredContent"]["method"], "POST");
    let text_json: Value = serde_json::from_str(&text(&result)).expect("the text block holds the JSON");
    assert_eq!(text_json, result["structuredContent"]);

    let not_json = session.call("bad_json", json!({})).await;
    assert_eq!(not_json["isError"], true, "`upstream says 200` is not JSON: {not_json}");
    // An upstream that does not return a CallToolResult is refused, not passed on.
    let not_mcp = session.call("as_mcp", json!({})).await;
    assert_eq!(not_mcp["isError"], true, "{not_mcp}");
    assert!(run_id(&not_mcp).len() > 10);

    let (status, body) = app
        .admin
        .try_create_tool(
            app.project_id,
            ToolSpec::get("x", &upstream.url(), "/").output_schema(json!({"type": "object"})),
        )
        .await;
    assert_eq!(status, 422, "an output schema needs a structured response mode: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_hosts_and_origins_are_refused() {
    let app = spawn_app().await;
    let session = app.session();
    let auth = format!("Bearer {}", app.api_key);
    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}"#;
    let base = vec![
        ("authorization", auth.as_str()),
        ("accept", ACCEPT_BOTH),
        ("content-type", "application/json"),
    ];
    let mut evil_host = base.clone();
    evil_host.push(("host", "evil.example.com"));
    assert_eq!(session.post_raw(&evil_host, ping.to_vec()).await.status, 403);
    // A second Host does not slip past the check of the first (RFC 9112: 400).
    let own = app.base_url.trim_start_matches("http://").to_string();
    let mut two_hosts = base.clone();
    two_hosts.push(("host", own.as_str()));
    two_hosts.push(("host", "evil.example.com"));
    let reply = session.post_raw(&two_hosts, ping.to_vec()).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("more than one Host")
    );
    let mut evil_origin = base.clone();
    evil_origin.push(("origin", "https://evil.example.com"));
    assert_eq!(session.post_raw(&evil_origin, ping.to_vec()).await.status, 403);
    let mut local_origin = base.clone();
    local_origin.push(("origin", "http://localhost:3000"));
    assert_eq!(session.post_raw(&local_origin, ping.to_vec()).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_log_levels_and_completion() {
    let app = spawn_app().await;
    let mut session = app.session();
    let init = session.initialize().await;
    let caps = &init.body["result"]["capabilities"];
    assert!(caps["logging"].is_object() && caps["completions"].is_object() && caps["tools"]["listChanged"] == true);
    let bad = session.request("logging/setLevel", json!({"level": "loud"})).await;
    assert_eq!(bad.body["error"]["code"], -32602);
    let completion = session
        .request(
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "x"}, "argument": {"name": "a", "value": ""}}),
        )
        .await;
    assert_eq!(completion.body["result"]["completion"]["values"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_progress_is_forwarded() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::post("long_job", &upstream.url(), "/ndjson")
            .description("d")
            .timeout_ms(5000),
    )
    .await;
    let mut session = app.session();
    session.initialize().await;
    let reply = session
        .request(
            "tools/call",
            json!({"name": "long_job", "arguments": {}, "_meta": {"progressToken": "job"}}),
        )
        .await;
    let events = parse_sse(reply.body.as_str().expect("SSE"));
    let notes: Vec<Value> = events
        .iter()
        .map(|e| e.json())
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    let values: Vec<f64> = notes
        .iter()
        .map(|n| n["params"]["progress"].as_f64().expect("number"))
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "progress only rises: {values:?}"
    );
    let from_api: Vec<&str> = notes
        .iter()
        .filter_map(|n| n["params"]["message"].as_str())
        .filter(|m| m.starts_with("step"))
        .collect();
    assert_eq!(from_api, vec!["step 1", "step 2", "step 3"], "{notes:?}");
    let result = events.last().expect("result").json();
    assert_eq!(
        text(&result["result"]),
        r#"{"answer": 42}"#,
        "the non-progress lines are the result"
    );
}

/// One key holds at most `ingress.max_streams_per_key` open GET streams on an
/// instance; a closed stream frees its slot, and other keys are not affected.
#[tokio::test(flavor = "multi_thread")]
async fn open_streams_are_limited_per_key() {
    let app = tengine_tests::spawn_app_with(&[("ingress.max_streams_per_key", "2")]).await;
    let mut session = app.session();
    session.initialize().await;
    let sid = session.session_id.clone().expect("session");
    let open = |key: String, sid: String| {
        let request = app
            .http
            .get(&app.mcp_url)
            .bearer_auth(key)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", sid);
        async move { request.send().await.expect("GET") }
    };
    let first = open(app.api_key.clone(), sid.clone()).await;
    let second = open(app.api_key.clone(), sid.clone()).await;
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let third = open(app.api_key.clone(), sid.clone()).await;
    assert_eq!(third.status().as_u16(), 429);
    let body: serde_json::Value = third.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_streams_per_key"),
        "{body}"
    );
    // Another key of the project has its own slots.
    let other_key = app.admin.create_api_key(app.project_id, &[]).await.key;
    let mut other = tengine_tests::mcp::RawSession::new(app.http.clone(), app.mcp_url.clone(), other_key.clone());
    other.initialize().await;
    let other_sid = other.session_id.clone().expect("session");
    assert_eq!(open(other_key, other_sid).await.status().as_u16(), 200);
    // The client hangs up: its slot is freed once the server notices.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let again = open(app.api_key.clone(), sid.clone()).await;
        if again.status().as_u16() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slot was not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(second);
}

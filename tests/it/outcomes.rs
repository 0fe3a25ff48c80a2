//! An outcome always fits the event log, and nothing an upstream answers can make
//! a run be called again: large and binary bodies are kept in part (with a flag
//! and their full size), headers are clamped, and a credential revoked between two
//! attempts stops the run.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};
use tengine_tests::{
    TestApp, ToolSpec,
    mcp::{RawSession, run_id, text},
    spawn_app, spawn_app_with,
    upstream::{Upstream, binary_body},
};

/// A POST tool with room for large answers (10 s).
fn post_tool(name: &str, upstream: &Upstream, path: &str) -> ToolSpec {
    ToolSpec::post(name, &upstream.url(), path).timeout_ms(10000)
}

/// Requests the upstream received on paths starting with `prefix`, after the
/// worker had time to (wrongly) call it again.
async fn calls_to(upstream: &Upstream, prefix: &str) -> usize {
    tokio::time::sleep(Duration::from_millis(300)).await;
    upstream
        .requests()
        .iter()
        .filter(|r| r.path.starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_binary_response_is_kept_in_part_and_the_api_is_called_once() {
    let app = spawn_app_with(&[("worker.max_response_bytes", "300000")]).await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(post_tool("download", &upstream, "/binary/400000"))
        .await;
    app.create_tool(post_tool("picture", &upstream, "/binary/200000").query_template(json!({"type": "image/png"})))
        .await;
    let mut session = app.session();
    session.initialize().await;

    // 400 KB of non-UTF-8 bytes over a 300 KB limit: truncated, not failed.
    let result = session.call("download", json!({})).await;
    assert_eq!(result["isError"], false, "{result}");
    let note = text(&result);
    assert!(
        note.contains("application/octet-stream") && note.contains("400000 bytes"),
        "{note}"
    );
    let run = app.admin.finished_run(&run_id(&result)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["response_truncated"], true, "{run}");
    assert_eq!(run["response_size"], 400000, "{run}");
    assert_eq!(
        calls_to(&upstream, "/binary/400000").await,
        1,
        "the API was called once"
    );

    // An image under the limit reaches the model intact, as an image block.
    let result = session.call("picture", json!({})).await;
    assert_eq!(result["isError"], false, "{result}");
    let block = &result["content"][0];
    assert_eq!(block["type"], "image", "{block}");
    assert_eq!(block["mimeType"], "image/png");
    let data = STANDARD
        .decode(block["data"].as_str().expect("base64 data"))
        .expect("valid base64");
    assert_eq!(data, binary_body(200000), "the bytes arrive unchanged");
    let run = app.admin.finished_run(&run_id(&result)).await;
    assert_eq!(run["response_truncated"], false, "{run}");
    assert_eq!(run["response_size"], 200000, "{run}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binary_response_under_the_default_limit_runs_once() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(post_tool("picture", &upstream, "/binary/400000").query_template(json!({"type": "image/png"})))
        .await;
    let mut session = app.session();
    session.initialize().await;

    let result = session.call("picture", json!({})).await;
    assert_eq!(result["content"][0]["type"], "image", "{result}");
    let run = app.admin.finished_run(&run_id(&result)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["response_size"], 400000, "{run}");
    assert_eq!(calls_to(&upstream, "/binary/").await, 1, "the API was called once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_near_one_mib_response_with_stored_bodies_runs_once() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let (status, body) = app
        .admin
        .patch_project(app.project_id, json!({"store_bodies": true, "body_max_bytes": 1048576}))
        .await;
    assert_eq!(status, 200, "{body}");
    app.create_tool(post_tool("export", &upstream, "/json/1000000")).await;
    let mut session = app.session();
    session.initialize().await;

    let result = session.call("export", json!({"all": true})).await;
    assert_eq!(result["isError"], false, "{result}");
    let answer = text(&result);
    assert!(
        answer.starts_with(r#"{"data":"aaa"#),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(answer.contains("1000000 bytes"), "the model is told the body was cut");
    let run = app.admin.finished_run(&run_id(&result)).await;
    assert_eq!(run["status"], "succeeded", "{}", run["status"]);
    assert_eq!(run["response_truncated"], true);
    assert_eq!(run["response_size"], 1000000);
    assert_eq!(run["bodies"]["truncated"], true);
    assert_eq!(run["bodies"]["request"], r#"{"all":true}"#);
    assert_eq!(calls_to(&upstream, "/json/").await, 1, "the API was called once");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_retry_after_ends_the_run_cleanly() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let retry = json!({"max_attempts": 3, "initial_backoff_ms": 10, "max_backoff_ms": 20});
    let forms = [
        ("seconds", "18446744073709551615"),
        ("date", "Fri, 31 Dec 9999 23:59:59 GMT"),
    ];
    for (tool, value) in forms {
        let spec = post_tool(tool, &upstream, "/retry-after")
            .query_template(json!({"value": value, "tool": tool}))
            .retry(retry.clone());
        app.create_tool(spec).await;
    }
    let mut session = app.session();
    session.initialize().await;

    for (tool, _) in forms {
        let result = session.call(tool, json!({})).await;
        assert_eq!(result["isError"], true, "{result}");
        let run = app.admin.finished_run(&run_id(&result)).await;
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(run["http_status"], 503, "{run}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let calls = upstream
            .requests()
            .iter()
            .filter(|r| r.query.as_deref().is_some_and(|q| q.contains(&format!("tool={tool}"))))
            .count();
        assert!((1..=3).contains(&calls), "{tool}: the API was called {calls} times");
    }
}

/// Starts a call to `tool` (its API answers 503 + `Retry-After: 1` first), runs
/// `revoke` once the API has seen the first attempt, and returns the result.
async fn revoked_between_attempts(
    app: &TestApp,
    key: &str,
    upstream: &Upstream,
    tool: &str,
    path: &str,
    revoke: impl AsyncFnOnce(),
) -> Value {
    let mut session = RawSession::new(app.http.clone(), app.mcp_url.clone(), key.to_string());
    session.initialize().await;
    let call = tokio::spawn({
        let tool = tool.to_string();
        async move { session.call(&tool, json!({})).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !upstream.requests().iter().any(|r| r.path == path) {
        assert!(std::time::Instant::now() < deadline, "the first attempt never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    revoke().await;
    call.await.expect("the call task")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_revoked_between_attempts_stops_the_run() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(post_tool("charge", &upstream, "/flaky/1/503")).await;
    app.create_tool(post_tool("refund", &upstream, "/flaky/1/502")).await;

    let result = revoked_between_attempts(&app, &app.api_key, &upstream, "charge", "/flaky/1/503", async || {
        let (status, body) = app.admin.revoke_api_key(app.project_id, app.api_key_id).await;
        assert_eq!(status, 204, "{body}");
    })
    .await;
    assert_eq!(result["isError"], true, "{result}");
    assert_eq!(result["_meta"]["tengine.dev/status"], "revoked", "{result}");
    let run = app.admin.finished_run(&run_id(&result)).await;
    assert_eq!(run["status"], "revoked", "{run}");
    assert_eq!(run["attempts"], 1, "{run}");
    assert_eq!(calls_to(&upstream, "/flaky/1/503").await, 1, "the API saw one request");

    // A tool disabled between attempts stops its run too (a fresh key calls it).
    let key = app.admin.create_api_key(app.project_id, &[]).await.key;
    let result = revoked_between_attempts(&app, &key, &upstream, "refund", "/flaky/1/502", async || {
        let (status, body) = app
            .admin
            .patch_tool(app.project_id, "refund", json!({"enabled": false}))
            .await;
        assert_eq!(status, 200, "{body}");
    })
    .await;
    let run = app.admin.finished_run(&run_id(&result)).await;
    assert_eq!(run["status"], "revoked", "{run}");
    assert_eq!(calls_to(&upstream, "/flaky/1/502").await, 1, "the API saw one request");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_too_large_for_the_queue_is_refused() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(post_tool("upload", &upstream, "/echo")).await;
    let mut session = app.session();
    session.initialize().await;

    // A request just under ingress.max_request_bytes: its command (arguments plus
    // the caller, the tool and the headers) is over the server's max_payload.
    let message = |blob: &str| {
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
               "params": {"name": "upload", "arguments": {"blob": blob}}})
    };
    let empty = serde_json::to_vec(&message("")).expect("json").len();
    let blob = "x".repeat(app.config.ingress.max_request_bytes - empty - 8);
    let reply = session.post(&message(&blob)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], -32602, "{}", reply.body);
    let message = reply.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("too large"), "{message}");
    assert!(upstream.requests().is_empty());
}

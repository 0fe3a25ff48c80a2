//! The MCP transport refuses bad input with the right HTTP status and JSON-RPC error.

use serde_json::json;
use tengine_tests::{ToolSpec, mcp::ACCEPT_BOTH, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_required_and_checked() {
    let app = spawn_app().await;
    let session = app.session();
    let body = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).expect("json");
    let base = [("accept", ACCEPT_BOTH), ("content-type", "application/json")];

    let missing = session.post_raw(&base, body.clone()).await;
    assert_eq!(missing.status, 401);
    let challenge = missing.headers["www-authenticate"].to_str().expect("ascii");
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("resource_metadata=\""),
        "{challenge}"
    );
    assert_eq!(missing.body["error"]["code"], -32040);
    assert!(
        missing.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("Authorization")
    );

    for bad in [
        "Bearer tengine_not-a-real-key",
        "Bearer sk-something-else",
        "Basic dXNlcjpwYXNz",
    ] {
        let mut headers = base.to_vec();
        headers.push(("authorization", bad));
        let reply = session.post_raw(&headers, body.clone()).await;
        assert_eq!(reply.status, 401, "{bad}: {}", reply.body);
    }

    // The metadata document the challenge names exists.
    let meta: serde_json::Value = app
        .http
        .get(format!("{}/.well-known/oauth-protected-resource", app.base_url))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(meta["resource"], format!("{}/mcp", app.base_url));
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_key_stops_working_immediately() {
    let app = spawn_app().await;
    let mut session = app.session();
    session.initialize().await;
    assert_eq!(session.request("ping", json!({})).await.status, 200);
    let (status, _) = app.admin.revoke_api_key(app.project_id, app.api_key_id).await;
    assert_eq!(status, 204);
    let reply = session.request("ping", json!({})).await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("revoked")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_get_clear_errors() {
    let app = spawn_app_with(&[("ingress.max_request_bytes", "2048")]).await;
    let mut session = app.session();
    session.initialize().await;
    let auth = format!("Bearer {}", app.api_key);
    let sid = session.session_id.clone().expect("session");
    let good = [
        ("authorization", auth.as_str()),
        ("accept", ACCEPT_BOTH),
        ("content-type", "application/json"),
        ("mcp-session-id", sid.as_str()),
    ];

    let parse = session
        .post_raw(&good, b"{\"jsonrpc\": \"2.0\", \"id\": 1,".to_vec())
        .await;
    assert_eq!(parse.status, 400);
    assert_eq!(parse.body["error"]["code"], -32700);

    let batch = session
        .post_raw(
            &good,
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#.to_vec(),
        )
        .await;
    assert_eq!(batch.status, 400);
    assert_eq!(batch.body["error"]["code"], -32600);
    assert!(batch.body["error"]["message"].as_str().expect("msg").contains("batch"));

    let no_version = session.post_raw(&good, br#"{"id":1,"method":"ping"}"#.to_vec()).await;
    assert_eq!(no_version.status, 400);
    assert_eq!(no_version.body["error"]["code"], -32600);

    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#.to_vec();
    let mut wrong_accept = good.to_vec();
    wrong_accept[1] = ("accept", "application/json");
    assert_eq!(session.post_raw(&wrong_accept, ping.clone()).await.status, 406);
    let mut wrong_type = good.to_vec();
    wrong_type[2] = ("content-type", "text/plain");
    assert_eq!(session.post_raw(&wrong_type, ping.clone()).await.status, 415);

    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x".repeat(4096)}});
    let too_big = session.post_raw(&good, serde_json::to_vec(&big).expect("json")).await;
    assert_eq!(too_big.status, 413);
    assert!(too_big.body["error"]["message"].as_str().expect("msg").contains("2048"));

    let mut no_session = good.to_vec();
    no_session.pop();
    let missing = session.post_raw(&no_session, ping.clone()).await;
    assert_eq!(missing.status, 400);
    assert!(
        missing.body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("Mcp-Session-Id")
    );
    let mut bogus = good.to_vec();
    bogus[3] = ("mcp-session-id", "v1.bogus.session");
    assert_eq!(session.post_raw(&bogus, ping.clone()).await.status, 404);

    let mut future = good.to_vec();
    future.push(("mcp-protocol-version", "1999-01-01"));
    assert_eq!(session.post_raw(&future, ping.clone()).await.status, 400);

    let unknown = session.request("resources/list", json!({})).await;
    assert_eq!(unknown.status, 200);
    assert_eq!(unknown.body["error"]["code"], -32601);

    let get = app
        .http
        .get(&app.mcp_url)
        .header("authorization", &auth)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("get");
    assert_eq!(get.status().as_u16(), 400, "GET needs a session");
}

#[tokio::test(flavor = "multi_thread")]
async fn session_of_one_key_is_not_valid_for_another() {
    let app = spawn_app().await;
    let mut first = app.session();
    first.initialize().await;
    let other_key = app.admin.create_api_key(app.project_id, &[]).await.key;
    let mut second = tengine_tests::mcp::RawSession::new(app.http.clone(), app.mcp_url.clone(), other_key);
    second.session_id = first.session_id.clone();
    assert_eq!(second.request("ping", json!({})).await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn discover_without_its_request_metadata_is_refused_with_the_request_id() {
    let app = spawn_app().await;
    let session = app.session();
    let auth = format!("Bearer {}", app.api_key);
    // The 2026-07-28 header without the per-request `_meta`: a malformed modern request.
    let reply = session
        .post_raw(
            &[
                ("authorization", auth.as_str()),
                ("accept", ACCEPT_BOTH),
                ("content-type", "application/json"),
                ("mcp-protocol-version", "2026-07-28"),
            ],
            br#"{"jsonrpc":"2.0","id":"probe-1","method":"server/discover","params":{}}"#.to_vec(),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.body["id"], "probe-1");
    assert_eq!(reply.body["error"]["code"], -32602);
    // Neither header nor `_meta`: a 2025-11-25 request, which has no discovery.
    let reply = session
        .post_raw(
            &[
                ("authorization", auth.as_str()),
                ("accept", ACCEPT_BOTH),
                ("content-type", "application/json"),
            ],
            br#"{"jsonrpc":"2.0","id":"probe-2","method":"server/discover","params":{}}"#.to_vec(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["id"], "probe-2");
    assert_eq!(reply.body["error"]["code"], -32601);
}

#[tokio::test(flavor = "multi_thread")]
async fn initialize_negotiates_versions() {
    let app = spawn_app().await;
    let session = app.session();
    for (asked, expected) in [
        ("2025-06-18", "2025-06-18"),
        ("2025-11-25", "2025-11-25"),
        ("2099-01-01", "2025-11-25"),
    ] {
        let reply = session
            .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": asked, "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}}))
            .await;
        assert_eq!(reply.body["result"]["protocolVersion"], expected, "{asked}");
        assert!(reply.body["result"]["capabilities"]["tools"].is_object());
    }
    let bad = session
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"nope": 1}}))
        .await;
    assert_eq!(bad.body["error"]["code"], -32602);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_session_alternates_between_instances_across_a_restart() {
    let app = spawn_app().await;
    let upstream = tengine_tests::upstream::Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("echo", &upstream.url(), "/echo")).await;
    let second = app.spawn_ingress(None).await;
    let mut on_first = app.session();
    on_first.initialize().await;
    let session_id = on_first.session_id.clone();
    let mut on_second = tengine_tests::mcp::RawSession::new(
        app.http.clone(),
        format!("{}/mcp", second.base_url),
        app.api_key.clone(),
    );
    on_second.session_id = session_id.clone();
    // One session, one id sequence: the second client continues where ids are unused.
    on_second.next_id = 1000;

    for i in 0..3 {
        let a = on_first.call("echo", json!({"i": i})).await;
        assert_eq!(a["isError"], false, "{a}");
        let b = on_second.call("echo", json!({"i": i})).await;
        assert_eq!(b["isError"], false, "{b}");
    }
    // Restart the second instance on the same address: the session still works there.
    let addr = second.addr;
    second.stop().await;
    let restarted = app.spawn_ingress(Some(addr)).await;
    let again = on_second.call("echo", json!({"after": "restart"})).await;
    assert_eq!(again["isError"], false, "{again}");
    assert_eq!(upstream.requests().len(), 7);

    // Ending the session on one instance ends it on the other.
    let deleted = app
        .http
        .delete(format!("{}/mcp", restarted.base_url))
        .bearer_auth(&app.api_key)
        .header("mcp-session-id", session_id.as_deref().expect("id"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status().as_u16(), 204);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let reply = on_first.request("ping", json!({})).await;
        if reply.status == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the other instance still accepts the ended session"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    restarted.stop().await;
}

/// A refusal sent before the body is read (a 401 asking for a token, a body too
/// large) closes its connection and says so: a client that then retries (with
/// its token) on a pooled connection must get an answer, not a dropped request.
#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_before_the_body_is_read_closes_its_connection() {
    let app = spawn_app().await;
    // One connection at most: the retry goes where the refusal came from, unless closed.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    let padding = "x".repeat(256 * 1024);
    let body = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": padding}}))
        .expect("json");
    for _ in 0..5 {
        let refused = http
            .post(&app.mcp_url)
            .header("accept", ACCEPT_BOTH)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("the refusal is answered");
        assert_eq!(refused.status(), 401);
        assert_eq!(
            refused.headers().get("connection").and_then(|v| v.to_str().ok()),
            Some("close"),
            "the unread body makes the connection unusable"
        );
        let init = json!({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
        let retried = http
            .post(&app.mcp_url)
            .bearer_auth(&app.api_key)
            .header("accept", ACCEPT_BOTH)
            .header("content-type", "application/json")
            .json(&init)
            .send()
            .await
            .expect("the retry with the token is answered");
        assert_eq!(retried.status(), 200);
    }
}

/// Connections that hold the ingress without sending a request are closed: one
/// that sends nothing, one that sends its headers a byte at a time and stops,
/// and one whose body stalls (answered 400, as `tengine_core::serving` says).
#[tokio::test(flavor = "multi_thread")]
async fn idle_slow_and_stalled_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let addr = app.base_url.trim_start_matches("http://").to_string();
    let auth = format!("Bearer {}", app.api_key);
    let limit = tengine_core::serving::HEADER_TIMEOUT.max(tengine_core::serving::BODY_STALL_TIMEOUT);
    let started = std::time::Instant::now();
    let open = |first: Vec<u8>| {
        let addr = addr.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
            stream.write_all(&first).await.expect("write");
            // Everything the server sends until it closes (bounded by the test's own timeout).
            let mut answer = Vec::new();
            let read = tokio::time::timeout(
                limit + std::time::Duration::from_secs(15),
                stream.read_to_end(&mut answer),
            )
            .await;
            (read.is_ok(), String::from_utf8_lossy(&answer).to_string())
        }
    };
    let stalled_body = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nAccept: {ACCEPT_BOTH}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    let (idle, partial, stalled) = tokio::join!(
        open(Vec::new()),
        open(format!("POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: ").into_bytes()),
        open(stalled_body.into_bytes()),
    );
    let took = started.elapsed();
    assert!(idle.0 && idle.1.is_empty(), "an idle connection is closed: {idle:?}");
    assert!(partial.0, "a connection stuck in its headers is closed: {partial:?}");
    assert!(stalled.0, "a connection whose body stalled is closed: {stalled:?}");
    assert!(stalled.1.starts_with("HTTP/1.1 400"), "{}", stalled.1);
    assert!(stalled.1.contains("could not be read"), "{}", stalled.1);
    assert!(
        took < limit + std::time::Duration::from_secs(10),
        "closed after {took:?}"
    );
}

/// The header timeout bounds reading a request, not a long answer: a GET stream
/// open for longer than it still delivers.
#[tokio::test(flavor = "multi_thread")]
async fn a_get_stream_outlives_the_header_timeout() {
    use std::time::Duration;
    let app = spawn_app().await;
    let upstream = tengine_tests::upstream::Upstream::spawn(None).await;
    let mut session = app.session();
    session.initialize().await;
    let mut stream = session.get_stream().await;
    assert_eq!(stream.status().as_u16(), 200);
    tokio::time::sleep(tengine_core::serving::HEADER_TIMEOUT + Duration::from_secs(3)).await;
    app.create_tool(ToolSpec::post("later", &upstream.url(), "/x").description("d"))
        .await;
    let mut seen = String::new();
    while !seen.contains("notifications/tools/list_changed") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
            .await
            .expect("a notification within 5 s")
            .expect("the stream is still open")
            .expect("data, not the end of the stream");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

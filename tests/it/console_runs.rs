//! Runs in depth: a run's origin in history (trace id, idempotency key), and
//! re-drive (a finished run's call again as a new run) through the admin API,
//! with its refusals; and the console's Runs screens in headless Chromium (live
//! tail, run detail with the attempts timeline, re-drive with confirmation).

use std::path::PathBuf;

use reqwest::{header, redirect::Policy};
use serde_json::{Value, json};
use tengine_tests::{
    ADMIN_TOKEN, TestApp, ToolSpec,
    mcp::{ACCEPT_BOTH, RawSession, run_id},
    spawn_app,
    upstream::Upstream,
};

use crate::browser::Chromium;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// A project that keeps bodies, a tool whose API fails once (503) then answers,
/// and one call of it with a client key and a trace: (session, run id).
async fn project_with_a_retried_run(app: &TestApp, upstream: &Upstream) -> (RawSession, String) {
    let (status, body) = app
        .admin
        .patch_project(app.project_id, json!({"store_bodies": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    app.create_tool(
        ToolSpec::get("flaky", &upstream.url(), "/flaky/1/503")
            .description("fails once")
            .schema(json!({"type": "object", "properties": {"q": {"type": "string"}}}))
            .retry(json!({"max_attempts": 3, "initial_backoff_ms": 10})),
    )
    .await;
    let mut session = app.session();
    session.initialize().await;
    let result = call_traced(app, &session, "flaky", json!({"q": "first"}), Some("client-key-1")).await;
    assert_eq!(result["isError"], false, "{result}");
    let run = run_id(&result);
    app.admin.finished_run(&run).await;
    (session, run)
}

/// tools/call with a `traceparent` and, if given, a client idempotency key.
async fn call_traced(app: &TestApp, session: &RawSession, tool: &str, arguments: Value, key: Option<&str>) -> Value {
    let auth = format!("Bearer {}", app.api_key);
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let sid = session.session_id.clone().expect("a session");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("accept", ACCEPT_BOTH),
        ("content-type", "application/json"),
        ("mcp-protocol-version", "2025-11-25"),
        ("mcp-session-id", sid.as_str()),
        ("traceparent", traceparent.as_str()),
    ];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let message = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}});
    let reply = session
        .post_raw(&headers, serde_json::to_vec(&message).expect("json"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["result"].clone()
}

async fn redrive(app: &TestApp, project: uuid::Uuid, run: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = app
        .http
        .post(format!(
            "{}/v1/projects/{project}/runs/{run}/redrive",
            app.admin.base_url
        ))
        .bearer_auth(&app.admin.token);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("redrive");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redrive_is_a_new_run_through_the_call_path_once_per_key() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let (mut session, first) = project_with_a_retried_run(&app, &upstream).await;

    // History has the call's origin and its two attempts (the 503, then the answer).
    let (_, run) = app.admin.get(&format!("/v1/runs/{first}")).await;
    assert_eq!(run["trace_id"], TRACE_ID, "{run}");
    assert_eq!(run["idempotency_key"], "client-key-1", "{run}");
    assert_eq!(run["attempts"], 2, "{run}");
    assert_eq!(run["attempt_details"][0]["http_status"], 503, "{run}");

    let (status, redriven) = redrive(&app, app.project_id, &first, Some("again-1")).await;
    assert_eq!(status, 202, "{redriven}");
    let new = redriven["run_id"].as_str().expect("run id").to_string();
    assert_ne!(new, first);
    assert_eq!(redriven["redrive_of"], first.as_str());
    // The same request again: the same run, not a second one.
    let (status, retried) = redrive(&app, app.project_id, &first, Some("again-1")).await;
    assert_eq!(status, 202, "{retried}");
    assert_eq!(retried["run_id"], new.as_str());
    let (_, done) = app.admin.get(&format!("/v1/runs/{new}")).await;
    let done = if done["finished_at"].is_null() {
        app.admin.finished_run(&new).await
    } else {
        done
    };
    assert_eq!(done["redrive_of"], first.as_str(), "{done}");
    let done = app.admin.finished_run(&new).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["tool_name"], "flaky");
    // The upstream got the same arguments' request again under the new Run ID.
    let (_, bodies) = app.admin.get(&format!("/v1/runs/{new}")).await;
    assert!(
        bodies["bodies"]["response"]
            .as_str()
            .unwrap_or_default()
            .contains("recovered"),
        "{bodies}"
    );
    // Without a key, each request is a new run.
    let (_, other) = redrive(&app, app.project_id, &first, None).await;
    assert!(
        other["run_id"].as_str().is_some_and(|r| r != new && r != first),
        "{other}"
    );
    app.admin.wait_for_projector().await;
    let (_, listed) = app
        .admin
        .get(&format!("/v1/projects/{}/runs?tool=flaky", app.project_id))
        .await;
    assert_eq!(
        listed["runs"].as_array().map(Vec::len),
        Some(3),
        "one run per re-drive: {listed}"
    );

    // Another project's run is not found under this project.
    let (status, body) = redrive(&app, app.admin.create_project("other").await, &first, None).await;
    assert_eq!(status, 404, "{body}");

    // Arguments changed by redaction are not run again.
    let (status, _) = app
        .admin
        .patch_project(app.project_id, json!({"redact_fields": ["q"]}))
        .await;
    assert_eq!(status, 200);
    let redacted = run_id(&session.call("flaky", json!({"q": "secret"})).await);
    app.admin.finished_run(&redacted).await;
    let (status, body) = redrive(&app, app.project_id, &redacted, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("redrive_unavailable")),
        "{body}"
    );
    // Nor are arguments never kept (bodies not stored).
    let (status, _) = app
        .admin
        .patch_project(app.project_id, json!({"store_bodies": false, "redact_fields": []}))
        .await;
    assert_eq!(status, 200);
    let unkept = run_id(&session.call("flaky", json!({"q": "x"})).await);
    app.admin.finished_run(&unkept).await;
    let (status, body) = redrive(&app, app.project_id, &unkept, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("redrive_unavailable")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("store_bodies"),
        "{body}"
    );

    // The call path's checks: a disabled tool, then a revoked credential.
    let (status, _) = app
        .admin
        .patch_tool(app.project_id, "flaky", json!({"enabled": false}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = redrive(&app, app.project_id, &first, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("redrive_refused")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Unknown tool"),
        "{body}"
    );
    let (status, _) = app
        .admin
        .patch_tool(app.project_id, "flaky", json!({"enabled": true}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = app.admin.revoke_api_key(app.project_id, app.api_key_id).await;
    assert!(status < 300, "{status}");
    let (status, body) = redrive(&app, app.project_id, &first, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("redrive_refused")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{body}"
    );

    // The OpenAPI document describes it.
    let (_, doc) = app.admin.get("/v1/openapi.json").await;
    let op = &doc["paths"]["/v1/projects/{project_id}/runs/{run_id}/redrive"]["post"];
    assert_eq!(op["operationId"], "redrive_run", "{op}");
    assert!(
        op["responses"]["409"].is_object() && op["responses"]["202"].is_object(),
        "{op}"
    );
    let _ = header::LOCATION;
    let _ = Policy::none();
    let _ = ADMIN_TOKEN;
    let _ = Chromium::start;
    let _ = screenshots;
}

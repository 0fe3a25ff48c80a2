//! Quotas: a project's monthly call limit and a per-member (per-key) rate limit,
//! shared by every ingress instance, refused with JSON-RPC -32029 and recorded.

use chrono::{Datelike, Timelike};
use futures::future::join_all;
use serde_json::{Value, json};
use tengine_tests::{
    TestApp, ToolSpec,
    mcp::{ACCEPT_BOTH, RawSession, run_id},
    spawn_app,
    upstream::Upstream,
};

/// One tools/call of `echo` through `url`, with a JSON-RPC id and an optional
/// idempotency key (the arguments are the key, so a retry sends the same ones).
async fn call(app: &TestApp, url: &str, key: &str, session: &str, id: u64, idem: Option<&str>) -> Value {
    let auth = format!("Bearer {key}");
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"call": idem.map_or(id.to_string(), str::to_string)}}});
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("accept", ACCEPT_BOTH),
        ("content-type", "application/json"),
        ("mcp-session-id", session),
    ];
    if let Some(idem) = idem {
        headers.push(("idempotency-key", idem));
    }
    let reply = RawSession::new(app.http.clone(), url.to_string(), key.to_string())
        .post_raw(&headers, serde_json::to_vec(&body).expect("json"))
        .await;
    assert_eq!(
        reply.status, 200,
        "a quota refusal is a JSON-RPC error in a 200: {}",
        reply.body
    );
    reply.body
}

async fn session_id(app: &TestApp, url: &str, key: &str) -> String {
    let mut session = RawSession::new(app.http.clone(), url.to_string(), key.to_string());
    session.initialize().await;
    session.session_id.expect("session")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_monthly_limit_holds_across_ingress_instances() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("echo", &upstream.url(), "/echo")).await;
    const LIMIT: usize = 5;
    const CALLS: usize = 14;

    let (status, project) = app
        .admin
        .patch_project(app.project_id, json!({"monthly_call_limit": -1}))
        .await;
    assert_eq!(status, 422, "{project}");
    let (status, project) = app
        .admin
        .patch_project(app.project_id, json!({"monthly_call_limit": LIMIT}))
        .await;
    assert_eq!(status, 200, "{project}");
    assert_eq!(project["monthly_call_limit"], json!(LIMIT));
    assert_eq!(project["member_calls_per_minute"], Value::Null);

    let second = app.spawn_ingress(None).await;
    let urls = [app.mcp_url.clone(), format!("{}/mcp", second.base_url)];
    let sessions = [
        session_id(&app, &urls[0], &app.api_key).await,
        session_id(&app, &urls[1], &app.api_key).await,
    ];
    // All at once, alternating between the two instances.
    let replies = join_all((0..CALLS).map(|i| {
        let (url, session) = (&urls[i % 2], &sessions[i % 2]);
        let idem = format!("call-{i}");
        let app = &app;
        async move { call(app, url, &app.api_key, session, i as u64 + 1, Some(&idem)).await }
    }))
    .await;
    let succeeded: Vec<usize> = (0..CALLS)
        .filter(|i| replies[*i]["result"]["isError"] == json!(false))
        .collect();
    let refused: Vec<&Value> = replies.iter().filter(|r| r["error"].is_object()).collect();
    assert_eq!(succeeded.len(), LIMIT, "exactly the limit succeeds: {replies:?}");
    assert_eq!(refused.len(), CALLS - LIMIT, "{replies:?}");
    for reply in &refused {
        let error = &reply["error"];
        assert_eq!(error["code"], -32029, "{error}");
        assert_eq!(error["data"]["limit"], "monthly_call_limit");
        assert_eq!(error["data"]["value"], json!(LIMIT));
        let message = error["message"].as_str().expect("message");
        assert!(
            message.contains("monthly call limit (5 calls)") && message.contains("resets at"),
            "{message}"
        );
        let resets = chrono::DateTime::parse_from_rfc3339(error["data"]["resetsAt"].as_str().expect("resetsAt"))
            .expect("an RFC 3339 time");
        assert!(
            resets > chrono::Utc::now() && resets.day() == 1 && resets.hour() == 0,
            "{resets}"
        );
    }

    // A retry of an admitted call (same key, other instance) returns its run and is not counted.
    let first = succeeded[0];
    let retry = call(
        &app,
        &urls[(first + 1) % 2],
        &app.api_key,
        &sessions[(first + 1) % 2],
        100,
        Some(&format!("call-{first}")),
    )
    .await;
    assert_eq!(retry["result"]["isError"], json!(false), "{retry}");
    assert_eq!(run_id(&retry["result"]), run_id(&replies[first]["result"]));
    let (counted,): (i64,) = sqlx::query_as("SELECT calls FROM quota_counters WHERE scope = 'month'")
        .fetch_one(&app.pool)
        .await
        .expect("counter");
    assert_eq!(counted, LIMIT as i64);

    // Refusals are in run history as rejected runs.
    for reply in &refused {
        let run = reply["error"]["data"]["tengine.dev/runId"].as_str().expect("run id");
        let run = app.admin.finished_run(run).await;
        assert_eq!(run["status"], "rejected");
        assert_eq!(run["error_class"], "quota_exceeded");
    }
    assert_eq!(upstream.requests().len(), LIMIT, "the API saw only admitted calls");

    // Raising the limit admits calls again; null removes it.
    let (status, _) = app
        .admin
        .patch_project(app.project_id, json!({"monthly_call_limit": null}))
        .await;
    assert_eq!(status, 200);
    let more = call(&app, &urls[0], &app.api_key, &sessions[0], 200, None).await;
    assert_eq!(more["result"]["isError"], json!(false), "{more}");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_applies_per_caller() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("echo", &upstream.url(), "/echo")).await;
    let (status, body) = app
        .admin
        .patch_project(app.project_id, json!({"member_calls_per_minute": 2}))
        .await;
    assert_eq!(status, 200, "{body}");
    // All calls of this test must fall in one minute window.
    let second_of_minute = chrono::Utc::now().second();
    if second_of_minute > 45 {
        tokio::time::sleep(std::time::Duration::from_secs(u64::from(61 - second_of_minute))).await;
    }
    let session = session_id(&app, &app.mcp_url, &app.api_key).await;
    for id in 1..=2 {
        let reply = call(&app, &app.mcp_url, &app.api_key, &session, id, None).await;
        assert_eq!(reply["result"]["isError"], json!(false), "{reply}");
    }
    let refused = call(&app, &app.mcp_url, &app.api_key, &session, 3, None).await;
    assert_eq!(refused["error"]["code"], -32029, "{refused}");
    assert_eq!(refused["error"]["data"]["limit"], "member_calls_per_minute");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 calls per minute")),
        "{refused}"
    );
    // Another key of the project has its own budget.
    let other_key = app.admin.create_api_key(app.project_id, &[]).await.key;
    let other_session = session_id(&app, &app.mcp_url, &other_key).await;
    let other = call(&app, &app.mcp_url, &other_key, &other_session, 1, None).await;
    assert_eq!(other["result"]["isError"], json!(false), "{other}");
}

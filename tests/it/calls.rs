//! Tool calls end to end: ingress → JetStream → worker → upstream → back, and the
//! run history the projector builds.

use serde_json::json;
use tengine_tests::{
    ToolSpec,
    mcp::{run_id, text},
    signing_secret, spawn_app,
    upstream::{Upstream, closed_port_url},
};

fn object_schema(props: serde_json::Value) -> serde_json::Value {
    json!({"type": "object", "properties": props})
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_call_reaches_upstream_with_identity_and_typed_body() {
    let app = spawn_app().await;
    let secret = signing_secret();
    let upstream = Upstream::spawn(Some(secret.clone())).await;
    let spec = ToolSpec::post("create_item", &upstream.url(), "/orgs/{org}/items")
        .description("create_item tool")
        .timeout_ms(2000)
        .schema(object_schema(json!({
            "org": {"type": "string"}, "tags": {"type": "array"}, "meta": {"type": "object"},
            "count": {"type": "integer"}, "flag": {"type": "boolean"}
        })))
        .auth_hmac(&secret);
    let created = app.create_tool(spec).await;
    assert_eq!(created["has_auth_secret"], true);
    assert!(created.get("auth_secret").is_none(), "the secret is never returned");

    let mut session = app.session();
    session.initialize().await;
    let args = json!({"org": "a/b c", "tags": ["x", 1, null], "meta": {"nested": [true]}, "count": 3, "flag": false});
    let result = session.call("create_item", args).await;
    assert_eq!(result["isError"], false, "{result}");
    let run = run_id(&result);

    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/orgs/a%2Fb%20c/items", "path values are percent-encoded");
    assert_eq!(
        req.json(),
        json!({"tags": ["x", 1, null], "meta": {"nested": [true]}, "count": 3, "flag": false}),
        "arguments not used in the path form the JSON body, typed"
    );
    assert_eq!(
        req.signature_valid,
        Some(true),
        "standardwebhooks, the webhook-id binding and tng3 verify: {:?}",
        req.signature_error
    );
    assert_eq!(req.header("x-tengine-request-id"), Some(run.as_str()));
    let webhook_id = req.header("webhook-id").expect("webhook-id");
    assert!(webhook_id.starts_with(&format!("{run}.")), "{webhook_id}");
    assert_eq!(req.header("idempotency-key"), Some(run.as_str()));
    assert_eq!(
        req.header("x-tengine-project-id"),
        Some(app.project_id.to_string().as_str())
    );
    assert!(req.header("x-tengine-integration-id").is_some());
    let signatures: Vec<&str> = req
        .header("x-tengine-signature")
        .expect("signatures")
        .split(' ')
        .collect();
    assert!(
        matches!(signatures[..], [tng3, tng2] if tng3.starts_with("tng3=") && tng2.starts_with("tng2=")
            && tng3.len() == 5 + 64 && tng2.len() == 5 + 64),
        "{signatures:?}"
    );
    assert!(
        req.header("authorization").is_none(),
        "the client's token is never forwarded"
    );

    let history = app.admin.finished_run(&run).await;
    assert_eq!(history["status"], "succeeded");
    assert_eq!(history["http_status"], 200);
    assert_eq!(history["tool_name"], "create_item");
    assert_eq!(history["attempts"], 1);
    assert_eq!(history["attempt_details"][0]["http_status"], 200);

    // The secret is stored encrypted.
    let stored: (Vec<u8>,) = sqlx::query_as("SELECT auth_secret_ciphertext FROM tools WHERE name = 'create_item'")
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert!(!String::from_utf8_lossy(&stored.0).contains(&secret[6..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_query_headers_and_static_bearer() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let spec = ToolSpec::get("search", &upstream.url(), "/search")
        .description("search tool")
        .timeout_ms(2000)
        .schema(object_schema(
            json!({"q": {"type": "string"}, "ids": {"type": "array"}, "lang": {"type": "string"}}),
        ))
        .query_template(json!({"query": "{q}", "id": "{ids}", "run": "{run.id}"}))
        .headers_template(json!({"Accept-Language": "{lang}", "X-Project": "p-{project.id}"}))
        .auth_bearer("upstream-token-123");
    app.create_tool(spec).await;

    let mut session = app.session();
    session.initialize().await;
    let result = session
        .call("search", json!({"q": "a&b=c", "ids": [1, 2], "lang": "de"}))
        .await;
    assert_eq!(result["isError"], false, "{result}");
    let run = run_id(&result);
    let req = &upstream.requests()[0];
    let query = req.query.clone().unwrap_or_default();
    assert!(query.contains("query=a%26b%3Dc"), "{query}");
    assert!(query.contains("id=1&id=2"), "{query}");
    assert!(query.contains(&format!("run={run}")), "{query}");
    assert_eq!(req.header("accept-language"), Some("de"));
    assert_eq!(req.header("x-project"), Some(format!("p-{}", app.project_id).as_str()));
    assert_eq!(req.header("authorization"), Some("Bearer upstream-token-123"));
    assert!(req.body.is_empty());

    // A header-injection attempt fails before anything is sent.
    let injected = session
        .call("search", json!({"q": "x", "lang": "de\r\nX-Evil: 1"}))
        .await;
    assert_eq!(injected["isError"], true);
    assert!(text(&injected).contains("header"), "{injected}");
    assert_eq!(upstream.requests().len(), 1, "nothing was sent");
    let history = app.admin.finished_run(&run_id(&injected)).await;
    assert_eq!(history["status"], "rejected");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_tool_errors_and_recorded() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let dead = closed_port_url().await;
    app.create_tool(
        ToolSpec::post("boom", &upstream.url(), "/status/500")
            .description("boom tool")
            .timeout_ms(2000)
            .schema(object_schema(json!({}))),
    )
    .await;
    app.create_tool(
        ToolSpec::get("slow", &upstream.url(), "/slow/3000")
            .description("slow tool")
            .timeout_ms(300)
            .schema(object_schema(json!({}))),
    )
    .await;
    app.create_tool(
        ToolSpec::get("dead", &dead, "/x")
            .description("dead tool")
            .timeout_ms(2000)
            .schema(object_schema(json!({}))),
    )
    .await;
    app.create_tool(
        ToolSpec::post("strict", &upstream.url(), "/strict")
            .description("strict tool")
            .timeout_ms(2000)
            .schema(json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"], "additionalProperties": false})),
    )
    .await;

    let mut session = app.session();
    session.initialize().await;

    let boom = session.call("boom", json!({})).await;
    assert_eq!(boom["isError"], true);
    assert!(
        text(&boom).contains("HTTP 500") && text(&boom).contains("upstream says 500"),
        "{boom}"
    );
    let run = app.admin.finished_run(&run_id(&boom)).await;
    assert_eq!(
        (run["status"].as_str(), run["http_status"].as_i64()),
        (Some("failed"), Some(500))
    );
    assert_eq!(run["error_class"], "upstream_status");

    let timeout = session.call("slow", json!({})).await;
    assert_eq!(timeout["isError"], true);
    assert!(text(&timeout).contains("300 ms"), "{timeout}");
    let run = app.admin.finished_run(&run_id(&timeout)).await;
    assert_eq!(run["error_class"], "timeout");

    let refused = session.call("dead", json!({})).await;
    assert_eq!(refused["isError"], true);
    assert!(text(&refused).contains("connect"), "{refused}");
    let run = app.admin.finished_run(&run_id(&refused)).await;
    assert_eq!(run["error_class"], "connect");

    let invalid = session.call("strict", json!({"n": 0, "extra": true})).await;
    assert_eq!(invalid["isError"], true);
    let message = text(&invalid);
    assert!(message.contains("/n") && message.contains("extra"), "{message}");
    let run = app.admin.finished_run(&run_id(&invalid)).await;
    assert_eq!(
        (run["status"].as_str(), run["error_class"].as_str()),
        (Some("rejected"), Some("invalid_arguments"))
    );

    let unknown = session
        .request("tools/call", json!({"name": "nope", "arguments": {}}))
        .await;
    assert_eq!(unknown.body["error"]["code"], -32602, "{}", unknown.body);
    let unknown_run = unknown.body["error"]["data"]["tengine.dev/runId"]
        .as_str()
        .expect("run id")
        .to_string();
    let run = app.admin.finished_run(&unknown_run).await;
    assert_eq!(run["error_class"], "unknown_tool");

    let malformed = session.request("tools/call", json!({"arguments": {}})).await;
    assert_eq!(malformed.body["error"]["code"], -32602);

    assert!(
        upstream.requests().iter().all(|r| r.path != "/strict"),
        "invalid arguments never reach the upstream"
    );

    // History lists every run of the project, filterable by status.
    let (_, failed) = app
        .admin
        .get(&format!("/v1/projects/{}/runs?status=failed", app.project_id))
        .await;
    assert_eq!(failed["runs"].as_array().map(Vec::len), Some(3), "{failed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_tools_vanish_and_projects_are_isolated() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::post("mine", &upstream.url(), "/m")
            .description("mine tool")
            .timeout_ms(2000)
            .schema(object_schema(json!({}))),
    )
    .await;
    let other_id = app.admin.create_project("other").await;
    app.admin
        .create_tool(
            other_id,
            ToolSpec::post("theirs", &upstream.url(), "/t")
                .description("theirs tool")
                .timeout_ms(2000)
                .schema(object_schema(json!({}))),
        )
        .await;

    let mut session = app.session();
    session.initialize().await;
    let listed = session.request("tools/list", json!({})).await;
    let names: Vec<_> = listed.body["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, vec!["mine"]);
    let theirs = session
        .request("tools/call", json!({"name": "theirs", "arguments": {}}))
        .await;
    assert_eq!(theirs.body["error"]["code"], -32602);

    // A run of another project is invisible to this project's key.
    let other_key = app.admin.create_api_key(other_id, &[]).await.key;
    let mut other_session =
        tengine_tests::mcp::RawSession::new(app.http.clone(), app.mcp_url.clone(), other_key.clone());
    other_session.initialize().await;
    let their_run = run_id(&other_session.call("theirs", json!({})).await);
    app.admin.finished_run(&their_run).await;
    let peek = app
        .http
        .get(format!("{}/v1/runs/{their_run}", app.base_url))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .expect("get");
    assert_eq!(peek.status().as_u16(), 404);
    let own = app
        .http
        .get(format!("{}/v1/runs/{their_run}", app.base_url))
        .bearer_auth(&other_key)
        .send()
        .await
        .expect("get");
    assert_eq!(own.status().as_u16(), 200);

    let (status, _) = app
        .admin
        .patch_tool(app.project_id, "mine", json!({"enabled": false}))
        .await;
    assert_eq!(status, 200);
    let listed = session.request("tools/list", json!({})).await;
    assert_eq!(listed.body["result"]["tools"], json!([]));
    let call = session
        .request("tools/call", json!({"name": "mine", "arguments": {}}))
        .await;
    assert_eq!(call.body["error"]["code"], -32602);
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_list_paginates() {
    let app = spawn_app_paged().await;
    let upstream = Upstream::spawn(None).await;
    for i in 0..5 {
        let name = format!("t{i}");
        app.create_tool(
            ToolSpec::post(&name, &upstream.url(), "/x")
                .description(&format!("{name} tool"))
                .timeout_ms(2000)
                .schema(object_schema(json!({}))),
        )
        .await;
    }
    let mut session = app.session();
    session.initialize().await;
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let params = cursor.as_ref().map_or(json!({}), |c| json!({"cursor": c}));
        let page = session.request("tools/list", params).await;
        let result = &page.body["result"];
        assert!(result["tools"].as_array().expect("tools").len() <= 2);
        names.extend(
            result["tools"]
                .as_array()
                .expect("tools")
                .iter()
                .map(|t| t["name"].to_string()),
        );
        match result["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(names.len(), 5);
    let bad = session.request("tools/list", json!({"cursor": "garbage!"})).await;
    assert_eq!(bad.body["error"]["code"], -32602);
}

async fn spawn_app_paged() -> tengine_tests::TestApp {
    tengine_tests::spawn_app_with(&[("ingress.tools_page_size", "2")]).await
}

/// Arguments that would make a URL too long to send are the caller's to fix: the
/// call is refused before it is queued, saying so, not failed as a network error.
#[tokio::test(flavor = "multi_thread")]
async fn a_url_too_long_to_send_is_refused_as_invalid_arguments() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::get("find", &upstream.url(), "/echo").schema(object_schema(json!({"q": {"type": "string"}}))),
    )
    .await;
    let mut session = app.session();
    session.initialize().await;
    let result = session
        .call("find", json!({"q": "x".repeat(tengine_core::request::URL_MAX_BYTES)}))
        .await;
    assert_eq!(result["isError"], true, "{result}");
    assert_eq!(result["_meta"]["tengine.dev/status"], "rejected", "{result}");
    let message = text(&result);
    assert!(
        message.contains("Invalid arguments") && message.contains("bytes"),
        "{message}"
    );
    assert!(upstream.requests().is_empty(), "nothing was sent");
    // Within the limit the same tool works.
    let ok = session.call("find", json!({"q": "x".repeat(1000)})).await;
    assert_eq!(ok["isError"], false, "{ok}");
}

/// A call still running after 250 ms shows in history from then on (its
/// `Accepted` event is stored), before it ends, and ends there with its outcome.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_call_shows_in_history_while_it_runs() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::get("lengthy", &upstream.url(), "/slow/3000")
            .description("a call of three seconds")
            .timeout_ms(10_000)
            .schema(object_schema(json!({}))),
    )
    .await;
    let mut session = app.session();
    session.initialize().await;
    let started = std::time::Instant::now();
    let call = tokio::spawn(async move { session.call("lengthy", json!({})).await });
    let listed = format!("/v1/projects/{}/runs?tool=lengthy", app.project_id);
    let seen = loop {
        let (status, runs) = app.admin.get(&listed).await;
        assert_eq!(status, 200, "{runs}");
        if let Some(run) = runs["runs"].as_array().and_then(|r| r.first()).cloned() {
            break run;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_millis(2500),
            "the run did not show in history while it ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        matches!(seen["status"].as_str(), Some("accepted" | "running")),
        "in flight: {seen}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2900),
        "seen before the end"
    );
    let result = call.await.expect("the call");
    assert_eq!(result["isError"], false, "{result}");
    let run = app.admin.finished_run(&run_id(&result)).await;
    assert_eq!(
        (run["status"].as_str(), &run["run_id"]),
        (Some("succeeded"), &seen["run_id"])
    );
}

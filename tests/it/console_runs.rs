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
}

const SECRET: &str = "console-upstream-secret-4711";

/// Asserts a page shows no secret and nothing of the other project, and keeps its source.
async fn checked(browser: &Chromium, app: &TestApp, foreign: &[&str]) -> String {
    let source = browser.source().await;
    for secret in [ADMIN_TOKEN, app.api_key.as_str(), SECRET] {
        assert!(!source.contains(secret), "a page shows a secret: {source}");
    }
    for other in foreign {
        assert!(
            !source.contains(other),
            "a page shows another project's {other}: {source}"
        );
    }
    source
}

/// Empties a field, then types into it.
async fn replace_text(browser: &Chromium, css: &str, text: &str) {
    let id = browser.find("css selector", css).await;
    browser.command(&format!("/element/{id}/clear"), json!({})).await;
    browser.type_into(css, text).await;
}

/// Waits (up to 10 s) until the element's text contains `needle`.
async fn wait_for_text(browser: &Chromium, css: &str, needle: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = browser.text(css).await;
        if text.contains(needle) {
            return text;
        }
        assert!(start.elapsed().as_secs() < 10, "{css} never shows {needle:?}: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_creates_a_tool_with_its_preview_tails_runs_and_redrives_one() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let (status, body) = app
        .admin
        .patch_project(app.project_id, json!({"store_bodies": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    // Another project, with a tool and a run: none of it may show here.
    let other = app.admin.create_project("elsewhere").await;
    let key = app.admin.create_api_key(other, &[]).await;
    app.admin
        .create_tool(
            other,
            ToolSpec::get("foreign_tool", &upstream.url(), "/items").description("theirs"),
        )
        .await;
    let mut theirs = RawSession::new(app.http.clone(), app.mcp_url.clone(), key.key.clone());
    theirs.initialize().await;
    let foreign_run = run_id(&theirs.call("foreign_tool", json!({})).await);
    let foreign = ["foreign_tool", foreign_run.as_str()];

    let shots = screenshots();
    let browser = Chromium::start().await;
    browser.open(&format!("{}/console/sign-in", app.base_url)).await;
    browser.type_into("input[type=password]", ADMIN_TOKEN).await;
    browser.click("button[type=submit]").await;
    browser.wait_for_url("/console").await;
    browser
        .open(&format!("{}/console/projects/{}/tools", app.base_url, app.project_id))
        .await;
    browser.click_link("New tool").await;
    browser.wait_for_url("/tools/new").await;

    // The form, with the live preview beside it.
    browser.type_into("#name", "flaky").await;
    browser.type_into("#description", "fails once, then answers").await;
    browser.type_into("#base_url", &upstream.url()).await;
    browser.type_into("#endpoint_path", "/flaky/1/503").await;
    replace_text(
        &browser,
        "#input_schema",
        r#"{"type": "object", "properties": {"q": {"type": "string"}}}"#,
    )
    .await;
    browser.click("#auth_strategy option[value=static_bearer]").await;
    browser.type_into("#auth_secret", SECRET).await;
    replace_text(&browser, "#example_arguments", r#"{"q": "hello"}"#).await;
    let preview = wait_for_text(&browser, "#preview", "q=hello").await;
    assert!(
        preview.starts_with(&format!("GET {}/flaky/1/503?q=hello", upstream.url())),
        "{preview}"
    );
    assert!(preview.contains("Authorization: Bearer <redacted>"), "{preview}");
    checked(&browser, &app, &foreign).await;
    browser.screenshot(&shots.join("tool-new.png")).await;

    // A value the server refuses: its message beside the field, everything typed kept.
    browser.type_into("#retry_max_attempts", "11").await;
    browser.click("button[value=save]").await;
    browser.wait_for("#retry_max_attempts-problem").await;
    let refused = checked(&browser, &app, &foreign).await;
    assert!(
        browser
            .text("#retry_max_attempts-problem")
            .await
            .contains("must be between 1 and 10"),
        "{refused}"
    );
    assert_eq!(browser.count("#retry_max_attempts[aria-invalid=true]").await, 1);
    assert_eq!(browser.count("#name[value=flaky]").await, 1, "{refused}");
    assert!(
        refused.contains("/flaky/1/503") && refused.contains("fails once, then answers"),
        "{refused}"
    );
    assert_eq!(browser.count("#retry_max_attempts[value='11']").await, 1, "{refused}");
    browser.screenshot(&shots.join("tool-refused.png")).await;
    let (status, _) = app
        .admin
        .get(&format!("/v1/projects/{}/tools/flaky", app.project_id))
        .await;
    assert_eq!(status, 404, "a refused form creates nothing");

    replace_text(&browser, "#retry_max_attempts", "3").await;
    browser.type_into("#retry_initial_backoff_ms", "10").await;
    // The secret is not sent back with a refused form: typed again.
    browser.type_into("#auth_secret", SECRET).await;
    browser.click("button[value=save]").await;
    browser.wait_for_url("/tools").await;
    browser.wait_for("a[aria-label='Edit flaky']").await;
    let (_, tool) = app
        .admin
        .get(&format!("/v1/projects/{}/tools/flaky", app.project_id))
        .await;
    assert_eq!(
        (tool["version"].as_i64(), tool["has_auth_secret"].as_bool()),
        (Some(1), Some(true)),
        "{tool}"
    );
    assert_eq!(tool["retry"]["max_attempts"], 3, "{tool}");

    // Editing: the stored values in the form, the secret kept when left empty.
    browser.click("a[aria-label='Edit flaky']").await;
    browser.wait_for_url("/flaky/edit").await;
    assert_eq!(browser.count("#endpoint_path[value='/flaky/1/503']").await, 1);
    replace_text(&browser, "#description", "fails once, then recovers").await;
    checked(&browser, &app, &foreign).await;
    browser.screenshot(&shots.join("tool-edit.png")).await;
    browser.click("button[value=save]").await;
    browser.wait_for_url("/tools").await;
    let (_, tool) = app
        .admin
        .get(&format!("/v1/projects/{}/tools/flaky", app.project_id))
        .await;
    assert_eq!(tool["version"], 2, "{tool}");
    assert_eq!(tool["description"], "fails once, then recovers");
    assert_eq!(tool["has_auth_secret"], true, "{tool}");

    // Runs: the live tail shows a new call without a reload.
    browser.click_link("Runs").await;
    browser.wait_for_url("/runs").await;
    wait_for_text(&browser, "#tail-status", "Live").await;
    let mut session = app.session();
    session.initialize().await;
    let result = call_traced(&app, &session, "flaky", json!({"q": "hello"}), Some("tail-key")).await;
    assert_eq!(result["isError"], false, "{result}");
    let run = run_id(&result);
    let row = format!("#run-{run}");
    browser.wait_for(&row).await;
    wait_for_text(&browser, &row, "succeeded").await;
    assert!(browser.url().await.ends_with("/runs"), "no reload, no navigation");
    assert_eq!(
        browser.count("#no-runs").await,
        0,
        "the empty note goes with the first row"
    );
    checked(&browser, &app, &foreign).await;
    browser.screenshot(&shots.join("runs-live.png")).await;

    // A client retry with the key is answered from the run (and shown on its page).
    let again = call_traced(&app, &session, "flaky", json!({"q": "hello"}), Some("tail-key")).await;
    assert_eq!(run_id(&again), run, "{again}");
    app.admin.wait_for_projector().await;

    // The run's page: attempts with the retry and its reason, the rendered request.
    browser.click_link(&run).await;
    browser.wait_for_url(&run).await;
    let detail = checked(&browser, &app, &foreign).await;
    let timeline = browser.text("#timeline").await;
    for shown in [
        "Queued",
        "Attempt 1",
        "with HTTP 503",
        "Retried after upstream_status: the API answered HTTP 503, backoff",
        "Attempt 2",
        "with HTTP 200",
        "Client retries answered from this run (deduplicated, the API not called again): 1",
    ] {
        assert!(timeline.contains(shown), "{shown}: {timeline}");
    }
    let request = browser.text("#rendered-request").await;
    assert!(
        request.contains("q=hello") && request.contains("Bearer <redacted>"),
        "{request}"
    );
    assert!(detail.contains("recovered"), "the response body: {detail}");
    browser.screenshot(&shots.join("run-detail.png")).await;

    // Re-drive, after a confirmation: the new run links to the old one and back.
    browser.click(&format!("a[aria-label='Re-drive run {run}']")).await;
    browser.wait_for_url("/redrive").await;
    assert!(browser.text("#redrive-arguments").await.contains("hello"));
    checked(&browser, &app, &foreign).await;
    browser.screenshot(&shots.join("run-redrive.png")).await;
    browser.click("main form button[type=submit]").await;
    browser.wait_for("#redrive-of").await;
    let new_url = browser.url().await;
    let new_run = new_url.rsplit('/').next().unwrap_or_default().to_string();
    assert_ne!(new_run, run);
    assert!(browser.text("#redrive-of").await.contains(&run));
    app.admin.finished_run(&new_run).await;
    browser
        .open(&format!(
            "{}/console/projects/{}/runs/{new_run}",
            app.base_url, app.project_id
        ))
        .await;
    let redriven = checked(&browser, &app, &foreign).await;
    assert!(browser.text("#timeline").await.contains("Attempt 2"), "{redriven}");
    browser.screenshot(&shots.join("run-redriven.png")).await;
    browser.click_link(&run).await;
    browser.wait_for("#redrives").await;
    assert!(browser.text("#redrives").await.contains(&new_run));
    let (_, listed) = app.admin.get(&format!("/v1/runs/{new_run}")).await;
    assert_eq!(listed["redrive_of"], run.as_str());

    // Another project's run is not shown under this one.
    browser
        .open(&format!(
            "{}/console/projects/{}/runs/{foreign_run}",
            app.base_url, app.project_id
        ))
        .await;
    assert!(browser.source().await.contains("run not found"));
    browser.stop().await;
}

/// A cookie's `name=value` from a response's `Set-Cookie` headers.
fn cookie(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("{name} is set"))
        .to_string()
}

/// The value of the hidden `csrf` field of a page.
fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a csrf field") + marker.len();
    page[start..].split('"').next().unwrap_or_default().to_string()
}

/// Signs in over raw HTTP: the session cookie's `name=value`.
async fn signed_in(http: &reqwest::Client, console: &str) -> String {
    let page = http.get(format!("{console}/sign-in")).send().await.expect("get");
    let pending = cookie(&page, "tengine_console_sign_in");
    let csrf = csrf_of(&page.text().await.expect("page"));
    let answer = http
        .post(format!("{console}/sign-in"))
        .header(header::COOKIE, &pending)
        .form(&[("csrf", csrf.as_str()), ("token", ADMIN_TOKEN)])
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status(), 303);
    cookie(&answer, "tengine_console")
}

async fn get_page(http: &reqwest::Client, url: &str, session: &str) -> (u16, String) {
    let response = http.get(url).header(header::COOKIE, session).send().await.expect("get");
    (response.status().as_u16(), response.text().await.expect("page"))
}

#[tokio::test(flavor = "multi_thread")]
async fn without_javascript_the_preview_button_and_filters_work() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let (_session, run) = project_with_a_retried_run(&app, &upstream).await;
    app.admin.wait_for_projector().await;
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    let console = format!("{}/console", app.base_url);
    let session = signed_in(&http, &console).await;
    let tools = format!("{console}/projects/{}/tools", app.project_id);
    let (status, form) = get_page(&http, &format!("{tools}/new"), &session).await;
    assert_eq!(status, 200);
    let csrf = csrf_of(&form);
    let url = upstream.url();
    let fields = [
        ("csrf", csrf.as_str()),
        ("name", "draft"),
        ("http_method", "GET"),
        ("base_url", url.as_str()),
        ("endpoint_path", "/items/{id}"),
        (
            "input_schema",
            r#"{"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}"#,
        ),
        ("auth_strategy", "static_bearer"),
        ("auth_secret", SECRET),
        ("response_mode", "text"),
        ("approval", "none"),
        ("example_arguments", r#"{"id": "42"}"#),
        ("action", "preview"),
    ];
    // The Preview button: the page again, with the preview; nothing saved.
    let previewed = http
        .post(format!("{tools}/new"))
        .header(header::COOKIE, &session)
        .form(&fields)
        .send()
        .await
        .expect("post");
    assert_eq!(previewed.status(), 200);
    let page = previewed.text().await.expect("page");
    assert!(page.contains(&format!("GET {url}/items/42")), "{page}");
    assert!(
        page.contains("Bearer &lt;redacted&gt;") && !page.contains(SECRET),
        "{page}"
    );
    assert!(
        page.contains("value=\"draft\""),
        "the form keeps what was typed: {page}"
    );
    let (status, _) = app
        .admin
        .get(&format!("/v1/projects/{}/tools/draft", app.project_id))
        .await;
    assert_eq!(status, 404, "a preview saves nothing");
    // The live preview's endpoint: a fragment; the arguments checked against the draft's schema.
    let mut bad = fields.to_vec();
    bad.retain(|(k, _)| *k != "example_arguments");
    bad.push(("example_arguments", "{}"));
    let fragment = http
        .post(format!("{tools}/preview"))
        .header(header::COOKIE, &session)
        .form(&bad)
        .send()
        .await
        .expect("post");
    assert_eq!(fragment.status(), 200);
    let fragment = fragment.text().await.expect("fragment");
    assert!(
        fragment.contains("id") && fragment.contains("required") && !fragment.contains("<html"),
        "{fragment}"
    );
    let forged = http
        .post(format!("{tools}/preview"))
        .header(header::COOKIE, &session)
        .form(&[("csrf", "forged"), ("name", "draft")])
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), 403);
    // A JSON field that does not parse: its message beside it, the typed text kept.
    let mut broken = fields.to_vec();
    broken.retain(|(k, _)| *k != "input_schema" && *k != "action");
    broken.push(("input_schema", "{not json"));
    broken.push(("action", "save"));
    let refused = http
        .post(format!("{tools}/new"))
        .header(header::COOKIE, &session)
        .form(&broken)
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 422);
    let page = refused.text().await.expect("page");
    assert!(
        page.contains("id=\"input_schema-problem\"") && page.contains("is not JSON"),
        "{page}"
    );
    assert!(
        page.contains("{not json</textarea>") && !page.contains(SECRET),
        "{page}"
    );

    // Filters: integration and time range, in the URL.
    let runs = format!("{console}/projects/{}/runs", app.project_id);
    let (_, project) = app.admin.get(&format!("/v1/projects/{}", app.project_id)).await;
    let integration = project["default_integration_id"]
        .as_str()
        .expect("integration")
        .to_string();
    for (query, shown) in [
        (format!("integration={integration}&from=2000-01-01T00%3A00"), true),
        (format!("integration={}", uuid::Uuid::now_v7()), false),
        ("to=2000-01-01T00%3A00".to_string(), false),
        ("from=2999-01-01T00%3A00%3A00Z".to_string(), false),
    ] {
        let (status, html) = get_page(&http, &format!("{runs}?{query}"), &session).await;
        assert_eq!(status, 200, "{query}: {html}");
        assert_eq!(html.contains(&run), shown, "{query}: {html}");
        assert!(html.contains("href=\"") && html.contains("Refresh"), "{html}");
    }
    let (status, html) = get_page(&http, &format!("{runs}?from=yesterday"), &session).await;
    assert_eq!(status, 400, "{html}");
    // The live tail's stream: the run's row, as an event.
    let mut stream = http
        .get(format!("{runs}.stream?integration={integration}"))
        .header(header::COOKIE, &session)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.chunk())
        .await
        .expect("an event within 5 s")
        .expect("read")
        .expect("data");
    let event = String::from_utf8_lossy(&chunk).to_string();
    assert!(
        event.contains("event: run") && event.contains(&format!("id=\"run-{run}\"")),
        "{event}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_serves_its_own_script_and_the_tail_needs_a_session() {
    let app = spawn_app().await;
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    let console = format!("{}/console", app.base_url);
    let script = http
        .get(format!("{console}/assets/console.js"))
        .send()
        .await
        .expect("get");
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/javascript")
    );
    assert!(script.text().await.expect("script").contains("EventSource"));
    let tail = http
        .get(format!("{console}/projects/{}/runs.stream", app.project_id))
        .send()
        .await
        .expect("get");
    assert_eq!(tail.status(), 303, "no session: to sign-in");
    let sign_in = http.get(format!("{console}/sign-in")).send().await.expect("get");
    let csp = sign_in.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("script-src 'self';") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
}

/// The project's waiting calls, once there are `n` of them.
async fn waiting_calls(app: &TestApp, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = app
            .admin
            .get(&format!("/v1/projects/{}/approvals", app.project_id))
            .await;
        let list = body["approvals"].as_array().cloned().unwrap_or_default();
        if list.len() == n {
            return list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} waiting calls: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redrive_of_a_guarded_tool_waits_for_an_operator_like_any_call() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let (status, _) = app
        .admin
        .patch_project(app.project_id, json!({"store_bodies": true}))
        .await;
    assert_eq!(status, 200);
    app.create_tool(
        ToolSpec::post("refund", &upstream.url(), "/echo")
            .schema(json!({"type": "object", "properties": {"order": {"type": "integer"}}}))
            .field("approval", "operator"),
    )
    .await;
    let mut session = app.session();
    session.initialize().await;
    let waiting = tokio::spawn(async move { session.call("refund", json!({"order": 42})).await });
    let first = waiting_calls(&app, 1).await[0]["run_id"]
        .as_str()
        .expect("run")
        .to_string();
    let (status, _) = app.admin.post(&format!("/v1/runs/{first}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let result = waiting.await.expect("call");
    assert_eq!(result["isError"], false, "{result}");
    app.admin.finished_run(&first).await;

    // The re-drive is parked too: nothing reaches the API before an operator decides.
    let before = upstream.requests().len();
    let (status, redriven) = redrive(&app, app.project_id, &first, Some("guarded")).await;
    assert_eq!(status, 202, "{redriven}");
    let new = redriven["run_id"].as_str().expect("run").to_string();
    let parked = waiting_calls(&app, 1).await;
    assert_eq!(parked[0]["run_id"], new.as_str());
    assert_eq!(parked[0]["arguments"], json!({"order": 42}), "the original's arguments");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(upstream.requests().len(), before);
    let (status, _) = app.admin.post(&format!("/v1/runs/{new}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let done = app.admin.finished_run(&new).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(upstream.requests().len(), before + 1);
    app.admin.wait_for_projector().await;
    let (_, done) = app.admin.get(&format!("/v1/runs/{new}")).await;
    assert_eq!(done["redrive_of"], first.as_str(), "{done}");

    // Its page shows the operator's decision in the timeline.
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    let console = format!("{}/console", app.base_url);
    let cookie = signed_in(&http, &console).await;
    let (status, page) = get_page(
        &http,
        &format!("{console}/projects/{}/runs/{new}", app.project_id),
        &cookie,
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("Approval: approved by admin"), "{page}");
}

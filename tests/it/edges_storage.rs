//! What callers, upstreams and tenants send never stops run history: text is made
//! valid for PostgreSQL (NUL is stored as `␀`), the admin API refuses NUL and
//! control characters in identifiers, and an event the projector cannot apply is
//! dead-lettered while the events after it are projected.

use axum::{Router, http::StatusCode, routing::any};
use serde_json::{Value, json};
use tengine_tests::{
    TestApp, ToolSpec,
    mcp::{RawSession, run_id},
    poison::{self, Poison},
    spawn_app,
    upstream::Upstream,
};
use uuid::Uuid;

/// A second project with a key and an `echo` tool, and a session on it.
async fn other_project(app: &TestApp, upstream: &Upstream) -> (Uuid, RawSession) {
    let id = app.admin.create_project("bystander").await;
    let key = app.admin.create_api_key(id, &[]).await.key;
    app.admin
        .create_tool(id, ToolSpec::post("echo", &upstream.url(), "/echo"))
        .await;
    let mut session = RawSession::new(app.http.clone(), app.mcp_url.clone(), key);
    session.initialize().await;
    (id, session)
}

/// The other project's call reaches history: the projector is not stuck.
async fn history_flows(app: &TestApp, session: &mut RawSession) {
    let run = run_id(&session.call("echo", json!({"after": true})).await);
    let row = app.admin.finished_run(&run).await;
    assert_eq!(row["status"], "succeeded", "{row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nul_in_an_argument_name_leaves_history_flowing_for_everyone() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::post("strict", &upstream.url(), "/echo")
            .schema(json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false})),
    )
    .await;
    let mut session = app.session();
    session.initialize().await;
    // The schema error quotes the unknown property's name, NUL included.
    let refused = session.call("strict", json!({"x\u{0}y": 1})).await;
    assert_eq!(refused["isError"], true, "{refused}");
    let refused = run_id(&refused);

    let (_, mut other) = other_project(&app, &upstream).await;
    history_flows(&app, &mut other).await;
    let row = app.admin.finished_run(&refused).await;
    assert_eq!(row["status"], "rejected", "{row}");
    let error = row["error"].as_str().expect("error");
    assert!(error.contains("x␀y"), "the NUL is stored visibly escaped: {error}");
}

/// An API answering raw bytes with NUL in them (text, or an error page).
async fn nul_upstream() -> String {
    let app = Router::new()
        .route(
            "/ok",
            any(|| async { ([("content-type", "text/plain")], b"before\0after".to_vec()) }),
        )
        .route(
            "/fail",
            any(|| async {
                (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "text/plain")],
                    b"bad\0input".to_vec(),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn nul_in_bodies_output_and_tool_names_is_stored_escaped() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let nul = nul_upstream().await;
    let (status, body) = app
        .admin
        .patch_project(app.project_id, json!({"store_bodies": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    for (name, path) in [("nul_ok", "/ok"), ("nul_fail", "/fail")] {
        app.create_tool(ToolSpec::post(name, &nul, path).retry(json!({"max_attempts": 1})))
            .await;
    }
    let mut session = app.session();
    session.initialize().await;

    let ok = session.call("nul_ok", json!({})).await;
    assert_eq!(ok["isError"], false, "{ok}");
    assert!(
        ok["content"][0]["text"].as_str().is_some_and(|t| t.contains('\0')),
        "the client gets the real bytes: {ok}"
    );
    let ok = run_id(&ok);
    let failed = run_id(&session.call("nul_fail", json!({})).await);
    // An unknown tool whose name carries a NUL is recorded too.
    let unknown = session
        .request("tools/call", json!({"name": "no\u{0}pe", "arguments": {}}))
        .await;
    let unknown = unknown.body["error"]["data"]["tengine.dev/runId"]
        .as_str()
        .unwrap_or_else(|| panic!("an unknown tool is refused with its run id: {}", unknown.body))
        .to_string();

    let (_, mut other) = other_project(&app, &upstream).await;
    history_flows(&app, &mut other).await;

    let row = app.admin.finished_run(&ok).await;
    assert_eq!(row["status"], "succeeded", "{row}");
    assert_eq!(row["bodies"]["response"], "before␀after", "{row}");
    let row = app.admin.finished_run(&failed).await;
    assert_eq!(row["status"], "failed", "{row}");
    assert_eq!(row["bodies"]["response"], "bad␀input", "{row}");
    let row = app.admin.finished_run(&unknown).await;
    assert_eq!(row["status"], "rejected", "{row}");
    assert_eq!(row["tool_name"], "no␀pe", "{row}");
}

async fn dead_letters(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM projector_dead_letters")
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_event_is_dead_lettered_and_the_projector_goes_on() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let Poison { fixable, garbage } = poison::publish(&app).await;

    // Later events, of this project and another, are projected.
    let (_, mut other) = other_project(&app, &upstream).await;
    history_flows(&app, &mut other).await;
    poison::wait_for_dead_letters(&app, 2).await;
    let (_, health) = app.admin.get("/v1/health").await;
    assert_eq!(health["dead_letters"], 2, "{health}");

    // The runs say their history is incomplete, and why.
    let (status, run) = app.admin.get(&format!("/v1/runs/{fixable}")).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "accepted", "{run}");
    let why = run["history_error"].as_str().expect("history_error");
    assert!(why.starts_with("an event of this run could not be recorded: "), "{why}");
    assert!(why.contains(poison::CONSTRAINT), "{why}");
    let (_, list) = app.admin.get(&format!("/v1/projects/{}/runs", app.project_id)).await;
    let listed = list["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["run_id"] == json!(fixable))
        .cloned()
        .expect("listed");
    assert_eq!(listed["history_error"], run["history_error"]);
    let (status, run) = app.admin.get(&format!("/v1/runs/{garbage}")).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "unrecorded", "{run}");
    assert_eq!(run["project_id"], json!(app.project_id), "{run}");
    assert!(
        run["history_error"]
            .as_str()
            .is_some_and(|e| e.contains("not a valid envelope")),
        "{run}"
    );
    // Its integration, tool and member are unknown: a whole-project reader (a `read`
    // key) sees it, a `call` key (scoped to its integration and tools) does not.
    let reader = app.admin.create_api_key(app.project_id, &["read"]).await;
    for (key, expected) in [(reader.key.as_str(), 200), (app.api_key.as_str(), 404)] {
        let unrecorded = app
            .http
            .get(format!("{}/v1/runs/{garbage}", app.base_url))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET");
        assert_eq!(unrecorded.status().as_u16(), expected);
    }

    // A rebuild meets the same events and goes through them too.
    tengine_projector::rebuild::rebuild(&app.config).await.expect("rebuild");
    assert_eq!(dead_letters(&app).await, 2, "the rebuild records no second copy");

    // Once the cause is fixed, the event can be applied again.
    let ids: Vec<(i64, Option<Uuid>)> =
        sqlx::query_as("SELECT id, event_id FROM projector_dead_letters ORDER BY stream_seq")
            .fetch_all(&app.pool)
            .await
            .expect("ids");
    let close_after = app.config.projector.usage_close_after_secs;
    let refused = tengine_projector::dead_letters::reapply(&app.pool, close_after, ids[0].0)
        .await
        .expect_err("the constraint still refuses it");
    assert!(refused.to_string().contains(poison::CONSTRAINT), "{refused}");
    poison::fix(&app).await;
    tengine_projector::dead_letters::reapply(&app.pool, close_after, ids[0].0)
        .await
        .expect("reapplied");
    let run = app.admin.finished_run(&fixable.to_string()).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"], "poison", "{run}");
    assert_eq!(run["history_error"], Value::Null, "{run}");
    let again = tengine_projector::dead_letters::reapply(&app.pool, close_after, ids[0].0).await;
    assert!(again.is_err(), "a dead letter is re-applied once");
    let undecodable = tengine_projector::dead_letters::reapply(&app.pool, close_after, ids[1].0)
        .await
        .expect_err("garbage stays garbage");
    assert!(undecodable.to_string().contains("decode"), "{undecodable}");
    let (_, health) = app.admin.get("/v1/health").await;
    assert_eq!(health["dead_letters"], 1, "{health}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_refuses_nul_and_control_characters() {
    let app = spawn_app().await;
    let p = app.project_id;
    let tool = ToolSpec::get("t", "https://api.example.com", "/")
        .schema(json!({"type": "object", "properties": {"a\u{0}": {}}}))
        .json();
    let cases: Vec<(reqwest::Method, String, Value, &str)> = vec![
        (
            reqwest::Method::POST,
            "/v1/projects".into(),
            json!({"name": "a\u{0}b"}),
            "name",
        ),
        (
            reqwest::Method::POST,
            "/v1/projects".into(),
            json!({"name": "a\u{7}b"}),
            "name",
        ),
        (
            reqwest::Method::POST,
            format!("/v1/projects/{p}/tools"),
            tool,
            "input_schema.properties.a␀",
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/projects/{p}"),
            json!({"redact_fields": ["ok", "pass\u{0}word"]}),
            "redact_fields[1]",
        ),
        (
            reqwest::Method::POST,
            format!("/v1/projects/{p}/integrations"),
            json!({"name": "line\nbreak"}),
            "name",
        ),
        (
            reqwest::Method::POST,
            format!("/v1/projects/{p}/api-keys"),
            json!({"name": "esc\u{1b}[31m"}),
            "name",
        ),
        (
            reqwest::Method::POST,
            format!("/v1/projects/{p}/members/u%00x/revoke-sessions"),
            Value::Null,
            "member_id",
        ),
        (
            reqwest::Method::POST,
            format!("/v1/projects/{p}/members/u%0Ax/revoke-sessions"),
            Value::Null,
            "member_id",
        ),
    ];
    for (method, path, body, field) in cases {
        let (status, answer) = app
            .admin
            .request(method.clone(), &path, (!body.is_null()).then_some(body.clone()))
            .await;
        assert_eq!(status, 422, "{method} {path} {body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_field", "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    // A NUL is named as such.
    let (_, answer) = app.admin.post("/v1/projects", json!({"nested": {"k": "\u{0}"}})).await;
    assert_eq!(answer["error"]["field"], "nested.k", "{answer}");
    assert!(
        answer["error"]["message"].as_str().is_some_and(|m| m.contains("NUL")),
        "{answer}"
    );
    // An escaped backslash before `u0000` is no NUL.
    let (status, answer) = app
        .admin
        .post("/v1/projects", json!({"name": "C:\\u0000 folder"}))
        .await;
    assert_eq!(status, 201, "{answer}");
    // Lookups with a NUL find nothing rather than failing.
    let (status, answer) = app.admin.get(&format!("/v1/projects/{p}/tools/a%00b")).await;
    assert_eq!(status, 404, "{answer}");
}

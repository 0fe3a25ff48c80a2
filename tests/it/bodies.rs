//! Opt-in bodies in run history: off by default; when on, redacted (recursively,
//! arrays included), capped with truncation flagged, and never a secret.

use serde_json::{Value, json};
use tengine_tests::{ToolSpec, mcp::run_id, spawn_app, upstream::Upstream};

#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_kept_only_when_the_project_opts_in_redacted_and_capped() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let secret = "sk-test-never-stored-0123456789";
    app.create_tool(ToolSpec::post("echo", &upstream.url(), "/echo").auth_bearer(secret))
        .await;
    let mut session = app.session();
    session.initialize().await;
    let args = json!({"user": "ann", "password": "hunter2", "card": {"number": "4111111111111111", "cvc": "123"},
                      "items": [{"password": "x"}, {"card": {"number": "5500"}}]});

    // Off by default.
    let off = run_id(&session.call("echo", args.clone()).await);
    let run = app.admin.finished_run(&off).await;
    assert_eq!(run["bodies"], Value::Null, "{run}");

    let (status, body) = app
        .admin
        .patch_project(app.project_id, json!({"body_max_bytes": 0}))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = app
        .admin
        .patch_project(app.project_id, json!({"redact_fields": ["card..number"]}))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, project) = app
        .admin
        .patch_project(
            app.project_id,
            json!({"store_bodies": true, "body_max_bytes": 4096, "redact_fields": ["password", "card.number"]}),
        )
        .await;
    assert_eq!(status, 200, "{project}");
    assert_eq!(project["store_bodies"], true);
    assert_eq!(project["redact_fields"], json!(["password", "card.number"]));

    let on = run_id(&session.call("echo", args.clone()).await);
    let run = app.admin.finished_run(&on).await;
    let bodies = &run["bodies"];
    assert_eq!(bodies["truncated"], false, "{run}");
    let request: Value = serde_json::from_str(bodies["request"].as_str().expect("request body")).expect("json");
    assert_eq!(request["user"], "ann");
    assert_eq!(request["password"], "[REDACTED]");
    assert_eq!(request["card"]["number"], "[REDACTED]");
    assert_eq!(request["card"]["cvc"], "123");
    assert_eq!(request["items"][0]["password"], "[REDACTED]");
    assert_eq!(request["items"][1]["card"]["number"], "[REDACTED]");
    // The echo API answers {"body": <what it received>}: redacted at depth too.
    let response: Value = serde_json::from_str(bodies["response"].as_str().expect("response body")).expect("json");
    assert_eq!(response["body"]["password"], "[REDACTED]");
    assert_eq!(response["body"]["card"]["number"], "[REDACTED]");
    assert_eq!(response["body"]["user"], "ann");
    let everything = run.to_string();
    for secret_value in [secret, "hunter2", "4111111111111111", "5500"] {
        assert!(
            !everything.contains(secret_value),
            "{secret_value} is stored: {everything}"
        );
    }
    // The API itself got the real values.
    let received = upstream.requests();
    let last = received.last().expect("a request");
    assert!(String::from_utf8_lossy(&last.body).contains("hunter2"));

    // Capped, and flagged.
    let (status, _) = app
        .admin
        .patch_project(app.project_id, json!({"body_max_bytes": 64}))
        .await;
    assert_eq!(status, 200);
    let long = run_id(&session.call("echo", json!({"text": "x".repeat(500)})).await);
    let run = app.admin.finished_run(&long).await;
    assert_eq!(run["bodies"]["truncated"], true, "{run}");
    assert_eq!(run["bodies"]["request"].as_str().map(str::len), Some(64));
    assert!(run["bodies"]["response"].as_str().is_some_and(|r| r.len() <= 64));

    // Off again: new runs keep nothing.
    let (status, _) = app
        .admin
        .patch_project(app.project_id, json!({"store_bodies": false}))
        .await;
    assert_eq!(status, 200);
    let again = run_id(&session.call("echo", args).await);
    assert_eq!(app.admin.finished_run(&again).await["bodies"], Value::Null);
}

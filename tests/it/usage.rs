//! Usage metering: each run counted exactly once, by tool, from the event log.

use serde_json::json;
use tengine_tests::{ToolSpec, mcp::run_id, spawn_app, upstream::Upstream};

#[tokio::test(flavor = "multi_thread")]
async fn usage_counts_equal_run_counts() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    for (name, path) in [("ok", "/echo"), ("boom", "/status/500")] {
        app.create_tool(
            ToolSpec::post(name, &upstream.url(), path)
                .schema(json!({"type": "object", "properties": {"n": {"type": "integer"}}}))
                .retry(json!({"max_attempts": 1})),
        )
        .await;
    }
    let mut session = app.session();
    session.initialize().await;
    let mut runs = Vec::new();
    for n in 0..3 {
        runs.push(run_id(&session.call("ok", json!({"n": n})).await));
    }
    runs.push(run_id(&session.call("ok", json!({"n": "not a number"})).await));
    runs.push(run_id(&session.call("boom", json!({})).await));
    for run in &runs {
        app.admin.finished_run(run).await;
    }

    let path = format!("/v1/projects/{}/usage?group_by=tool", app.project_id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let usage = loop {
        let (status, body) = app.admin.get(&path).await;
        assert_eq!(status, 200, "{body}");
        let total: i64 = body["usage"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["calls"].as_i64().unwrap_or(0))
            .sum();
        if total == 5 || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let row = |tool: &str| {
        usage["usage"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["tool"] == tool)
            .cloned()
            .unwrap_or_else(|| panic!("a row for {tool}: {usage}"))
    };
    let ok = row("ok");
    assert_eq!(
        (ok["calls"].as_i64(), ok["successes"].as_i64(), ok["failures"].as_i64()),
        (Some(4), Some(3), Some(1)),
        "{ok}"
    );
    let boom = row("boom");
    assert_eq!(
        (boom["calls"].as_i64(), boom["failures"].as_i64()),
        (Some(1), Some(1)),
        "{boom}"
    );

    let (runs_in_history,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(runs_in_history, 5, "usage counts equal run counts");
    let (status, _) = app
        .admin
        .get(&format!("/v1/projects/{}/usage?group_by=colour", app.project_id))
        .await;
    assert_eq!(status, 400);

    // History filters: integration, time range, status, tool (newest first).
    let project = app.project_id;
    let (_, key) = app.admin.get(&format!("/v1/projects/{project}/api-keys")).await;
    let integration = key["api_keys"][0]["integration_id"]
        .as_str()
        .expect("integration")
        .to_string();
    let count = |query: String| {
        let app = &app;
        async move {
            let (status, body) = app.admin.get(&format!("/v1/projects/{project}/runs?{query}")).await;
            assert_eq!(status, 200, "{body}");
            body["runs"].as_array().map_or(0, Vec::len)
        }
    };
    assert_eq!(count(format!("integration={integration}")).await, 5);
    assert_eq!(count(format!("integration={}", uuid::Uuid::now_v7())).await, 0);
    assert_eq!(
        count("from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z".into()).await,
        5
    );
    assert_eq!(count("from=2100-01-01T00:00:00Z".into()).await, 0);
    assert_eq!(count("status=rejected&tool=ok".into()).await, 1);
    assert_eq!(count("member=nobody".into()).await, 0);
    let (status, _) = app
        .admin
        .get(&format!("/v1/projects/{project}/runs?from=yesterday"))
        .await;
    assert_eq!(status, 400, "a bad time is refused with a JSON error");

    let (_, health) = app.admin.get("/v1/health").await;
    assert!(health["projector_lag_events"].is_u64(), "{health}");
}

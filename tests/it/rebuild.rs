//! `tengine projector rebuild`: replaying the whole event log yields the same run
//! history and usage, row for row, while the live projector keeps running.

use serde_json::{Value, json};
use sqlx::types::Json;
use tengine_tests::{TestApp, ToolSpec, mcp::run_id, spawn_app, upstream::Upstream};

/// Every projected row, as JSON, in a stable order (`updated_at` and
/// `processed_at` are wall-clock times of the write, not history).
async fn snapshot(app: &TestApp) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for (table, order) in [
        ("runs", "run_id"),
        ("run_attempts", "run_id, attempt"),
        ("usage_hourly", "project_id, integration_id, member_id, tool_name, hour"),
    ] {
        let rows: Vec<(Json<Value>,)> = sqlx::query_as(&format!(
            "SELECT to_jsonb(t) - 'updated_at' FROM {table} t ORDER BY {order}"
        ))
        .fetch_all(&app.pool)
        .await
        .expect("snapshot");
        out.push((table.to_string(), rows.into_iter().map(|r| r.0.0).collect()));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_reproduces_history_and_usage() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    for (name, path, attempts) in [
        ("ok", "/echo", 1),
        ("boom", "/status/500", 1),
        ("flaky", "/flaky/2/503", 3),
    ] {
        app.create_tool(
            ToolSpec::post(name, &upstream.url(), path)
                .schema(schema.clone())
                .retry(json!({"max_attempts": attempts, "initial_backoff_ms": 10})),
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
    let flaky = session.call("flaky", json!({})).await;
    assert_eq!(flaky["isError"], json!(false), "succeeds on the third attempt: {flaky}");
    runs.push(run_id(&flaky));
    for run in &runs {
        app.admin.finished_run(run).await;
    }
    app.admin.wait_for_projector().await;
    let before = snapshot(&app).await;
    assert_eq!(before[0].1.len(), 6, "six runs");
    assert!(before[1].1.len() >= 7, "attempts, retries included: {:?}", before[1].1);

    // Damage the projection: the rebuild must restore it from the log alone.
    sqlx::query("DELETE FROM runs WHERE status = 'failed'")
        .execute(&app.pool)
        .await
        .expect("delete");
    sqlx::query("UPDATE usage_hourly SET calls = calls + 100")
        .execute(&app.pool)
        .await
        .expect("update");
    sqlx::query("DELETE FROM run_attempts WHERE attempt = 1")
        .execute(&app.pool)
        .await
        .expect("delete");

    let rebuilt = tengine_projector::rebuild::rebuild(&app.config).await.expect("rebuild");
    assert_eq!(rebuilt.runs, 6, "{rebuilt:?}");
    let after = snapshot(&app).await;
    for ((table, before), (_, after)) in before.iter().zip(&after) {
        assert_eq!(before, after, "{table} differs after the rebuild");
    }
    let (processed,): (i64,) = sqlx::query_as("SELECT count(*) FROM processed_events")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(
        processed as u64, rebuilt.events,
        "every replayed event is recorded as applied"
    );
    let (checkpoint,): (i64,) = sqlx::query_as("SELECT max(stream_seq) FROM projector_checkpoints")
        .fetch_one(&app.pool)
        .await
        .expect("checkpoint");
    assert_eq!(checkpoint as u64, rebuilt.through_seq);
    let (scratch,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'rebuild_%'")
            .fetch_one(&app.pool)
            .await
            .expect("schemas");
    assert_eq!(scratch, 0, "the scratch schema is dropped");

    // The live projector goes on from the rebuilt checkpoint.
    let later = run_id(&session.call("ok", json!({"n": 9})).await);
    let run = app.admin.finished_run(&later).await;
    assert_eq!(run["status"], "succeeded");
    app.admin.wait_for_projector().await;
    let (calls,): (i64,) = sqlx::query_as("SELECT sum(calls)::bigint FROM usage_hourly")
        .fetch_one(&app.pool)
        .await
        .expect("usage");
    assert_eq!(calls, 7, "each run counted once, after the rebuild too");
}

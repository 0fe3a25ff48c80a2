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

/// Each run is counted once, with its bytes and in its hour, however its outcome
/// reaches the projector: alone (a quick call), after its `Accepted` in the same
/// batch or an earlier one (a long call), after a retried attempt's own event, or
/// more than once (in one batch, or again later under another event id).
#[tokio::test(flavor = "multi_thread")]
async fn a_run_is_counted_once_however_its_outcome_arrives() {
    use chrono::{DateTime, Duration, Utc};
    use tengine_core::envelope::{AttemptReport, Caller, EventEnvelope, RunEvent, RunOutcome, RunStatus};
    use uuid::Uuid;

    let app = spawn_app().await;
    let caller = Caller {
        project_id: app.project_id,
        integration_id: Uuid::now_v7(),
        api_key_id: app.api_key_id,
        member: None,
    };
    let now = Utc::now();
    let attempt = |n: u32, bytes_in: u64, bytes_out: u64| AttemptReport {
        attempt: n,
        started_at: now,
        finished_at: now,
        http_status: Some(200),
        error_class: None,
        error: None,
        bytes_out,
        bytes_in,
    };
    let outcome = |run_id: Uuid, tool: &str, accepted_at: DateTime<Utc>, attempts: u32, last: AttemptReport| {
        RunEvent::Finished(RunOutcome {
            run_id,
            caller: caller.clone(),
            tool_name: tool.into(),
            status: RunStatus::Succeeded,
            error_class: None,
            error: None,
            response: None,
            attempts,
            accepted_at,
            finished_at: now,
            latency_ms: 12,
            bodies: None,
            keep_result_until: None,
            last_attempt: Some(Box::new(last)),
            origin: None,
        })
    };
    let accepted = |run_id: Uuid, tool: &str| RunEvent::Accepted {
        run_id,
        caller: caller.clone(),
        tool_name: tool.into(),
        accepted_at: now,
        origin: None,
    };
    let (quick, long, together, retried) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    // Accepted three hours ago and finished now: past the hour's closing, so it
    // counts in the hour it finished.
    let late = Uuid::now_v7();
    let three_hours_ago = now - Duration::hours(3);
    let batches = [
        vec![
            outcome(quick, "quick", now, 1, attempt(1, 5, 3)),
            accepted(long, "long"),
            accepted(together, "together"),
            outcome(together, "together", now, 1, attempt(1, 7, 11)),
            attempt(1, 1, 1).into_event(retried, app.project_id),
            outcome(late, "late", three_hours_ago, 1, attempt(1, 2, 2)),
        ],
        vec![
            outcome(quick, "quick", now, 1, attempt(1, 5, 3)),
            outcome(quick, "quick", now, 1, attempt(1, 5, 3)),
            outcome(long, "long", now, 1, attempt(1, 13, 17)),
            outcome(retried, "retried", now, 2, attempt(2, 2, 4)),
        ],
        vec![
            outcome(quick, "quick", now, 1, attempt(1, 5, 3)),
            outcome(long, "long", now, 1, attempt(1, 13, 17)),
            outcome(late, "late", three_hours_ago, 1, attempt(1, 2, 2)),
        ],
    ];
    for (n, batch) in batches.into_iter().enumerate() {
        let events: Vec<(u64, EventEnvelope)> = batch
            .into_iter()
            .map(|event| (0, EventEnvelope::new(Uuid::now_v7(), event)))
            .collect();
        tengine_projector::apply_batch(&app.pool, "usage-test", 1800, &events)
            .await
            .unwrap_or_else(|err| panic!("batch {n}: {err}"));
    }

    let hour = |at: DateTime<Utc>| {
        let pool = app.pool.clone();
        async move {
            let (hour,): (DateTime<Utc>,) = sqlx::query_as("SELECT date_trunc('hour', $1::timestamptz)")
                .bind(at)
                .fetch_one(&pool)
                .await
                .expect("hour");
            hour
        }
    };
    type Row = (String, DateTime<Utc>, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT tool_name, hour, calls, successes, latency_ms_sum, bytes_in, bytes_out FROM usage_hourly \
         WHERE project_id = $1 AND integration_id = $2 ORDER BY tool_name",
    )
    .bind(app.project_id)
    .bind(caller.integration_id)
    .fetch_all(&app.pool)
    .await
    .expect("usage");
    let this_hour = hour(now).await;
    assert_eq!(
        rows,
        vec![
            ("late".to_string(), this_hour, 1, 1, 12, 2, 2),
            ("long".to_string(), this_hour, 1, 1, 12, 13, 17),
            ("quick".to_string(), this_hour, 1, 1, 12, 5, 3),
            ("retried".to_string(), this_hour, 1, 1, 12, 3, 5),
            ("together".to_string(), this_hour, 1, 1, 12, 7, 11),
        ]
    );
    let (counted,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs WHERE run_id = ANY($1) AND usage_counted")
        .bind(vec![quick, long, together, retried, late])
        .fetch_one(&app.pool)
        .await
        .expect("runs");
    assert_eq!(counted, 5);
}

//! Retention: run history is partitioned by day and whole expired days are
//! dropped; recent history and every usage aggregate stay.

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use serde_json::{Value, json};
use sqlx::types::Json;
use tengine_core::envelope::{Caller, EventEnvelope, RunEvent};
use tengine_projector::retention::{self, partition_name, uuid_day};
use tengine_tests::{TestApp, ToolSpec, mcp::run_id, spawn_app, upstream::Upstream};
use uuid::Uuid;

/// A UUIDv7 from `at`.
fn v7_at(at: chrono::DateTime<Utc>) -> Uuid {
    let secs = u64::try_from(at.timestamp()).expect("after 1970");
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        secs,
        at.timestamp_subsec_nanos(),
    ))
}

async fn usage_rows(app: &TestApp) -> Vec<Value> {
    let rows: Vec<(Json<Value>,)> = sqlx::query_as(
        "SELECT to_jsonb(u) FROM usage_hourly u ORDER BY project_id, integration_id, member_id, tool_name, hour",
    )
    .fetch_all(&app.pool)
    .await
    .expect("usage");
    rows.into_iter().map(|r| r.0.0).collect()
}

async fn exists(app: &TestApp, relation: &str) -> bool {
    let (found,): (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
        .bind(relation)
        .fetch_one(&app.pool)
        .await
        .expect("to_regclass");
    found
}

/// Days that have a partition of `table`.
async fn partitions(app: &TestApp, table: &str) -> BTreeSet<String> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass",
    )
    .bind(table)
    .fetch_all(&app.pool)
    .await
    .expect("partitions");
    rows.into_iter().map(|(n,)| n).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_days_are_dropped_whole_and_usage_stays() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    for (name, path) in [("ok", "/echo"), ("boom", "/status/500")] {
        app.create_tool(
            ToolSpec::post(name, &upstream.url(), path)
                .schema(schema.clone())
                .retry(json!({"max_attempts": 1})),
        )
        .await;
    }
    let mut session = app.session();
    session.initialize().await;
    let ok = run_id(&session.call("ok", json!({"n": 1})).await);
    let boom = run_id(&session.call("boom", json!({})).await);
    for run in [&ok, &boom] {
        app.admin.finished_run(run).await;
    }
    app.admin.wait_for_projector().await;

    // The reader's SQL function and the projector's Rust copy agree.
    let now = Utc::now();
    let old_at = now - Duration::days(40);
    let old_run = v7_at(old_at);
    for id in [Uuid::parse_str(&ok).expect("uuid"), old_run, Uuid::max()] {
        let (sql_day,): (chrono::NaiveDate,) = sqlx::query_as("SELECT uuid_v7_day($1)")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .expect("uuid_v7_day");
        assert_eq!(sql_day, uuid_day(id), "{id}");
    }

    // A run 40 days old, through the projector's own path: its batch creates the
    // day's partitions on demand, and counts its usage.
    let caller = Caller {
        project_id: app.project_id,
        integration_id: Uuid::now_v7(),
        api_key_id: app.api_key_id,
        member: None,
    };
    let old_day = uuid_day(old_run);
    assert!(!exists(&app, &partition_name("runs", old_day)).await);
    let rejected = EventEnvelope::new(
        v7_at(old_at),
        RunEvent::Rejected {
            run_id: old_run,
            caller,
            tool_name: "ok".into(),
            accepted_at: old_at,
            error_class: tengine_core::envelope::ErrorClass::UpstreamStatus,
            error: "old".into(),
        },
    );
    tengine_projector::apply_batch(&app.pool, "retention-test", 1800, &[(0, rejected)])
        .await
        .expect("an old batch is applied");
    for table in retention::PARTITIONED_TABLES {
        assert!(
            exists(&app, &partition_name(table, old_day)).await,
            "{table} of {old_day}"
        );
    }
    let (status, run) = app.admin.get(&format!("/v1/runs/{old_run}")).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "rejected");

    // A run 45 days old written directly, its partitions made by `ensure_partitions`.
    let older_run = v7_at(now - Duration::days(45));
    let older_day = uuid_day(older_run);
    let mut tx = app.pool.begin().await.expect("begin");
    let created = retention::ensure_partitions(&mut tx, &BTreeSet::from([older_day]))
        .await
        .expect("ensure");
    assert_eq!(created, 3, "one partition per history table");
    sqlx::query(
        "INSERT INTO runs (run_id, day, project_id, integration_id, api_key_id, tool_name, status, accepted_at) \
         VALUES ($1, $2, $3, $4, $5, 'ok', 'succeeded', $6)",
    )
    .bind(older_run)
    .bind(older_day)
    .bind(app.project_id)
    .bind(Uuid::now_v7())
    .bind(app.api_key_id)
    .bind(now - Duration::days(45))
    .execute(&mut *tx)
    .await
    .expect("insert run");
    sqlx::query("INSERT INTO run_attempts (run_id, day, attempt, started_at) VALUES ($1, $2, 1, $3)")
        .bind(older_run)
        .bind(older_day)
        .bind(now - Duration::days(45))
        .execute(&mut *tx)
        .await
        .expect("insert attempt");
    tx.commit().await.expect("commit");
    let mut tx = app.pool.begin().await.expect("begin");
    assert_eq!(
        retention::ensure_partitions(&mut tx, &BTreeSet::from([older_day]))
            .await
            .expect("ensure"),
        0,
        "already there"
    );
    tx.rollback().await.expect("rollback");

    let usage_before = usage_rows(&app).await;
    assert!(
        usage_before
            .iter()
            .any(|r| r["hour"].as_str().is_some_and(|h| h.starts_with(&old_day.to_string()))),
        "the old run is counted in usage: {usage_before:?}"
    );

    // Retention: 30 days.
    let done = retention::maintain(&app.pool, 30, Utc::now()).await.expect("maintain");
    let dropped: BTreeSet<String> = done.dropped.iter().cloned().collect();
    for day in [old_day, older_day] {
        for table in retention::PARTITIONED_TABLES {
            let name = partition_name(table, day);
            assert!(dropped.contains(&name), "{name} dropped: {dropped:?}");
            assert!(!exists(&app, &name).await, "{name} is gone");
            assert!(!partitions(&app, table).await.contains(&name));
        }
    }
    assert_eq!(dropped.len(), 6, "nothing recent dropped: {dropped:?}");
    // Today's and the next days' partitions exist ahead of time.
    let today = Utc::now().date_naive();
    for ahead in 0..=retention::AHEAD_DAYS {
        let day = today + chrono::Days::new(ahead);
        for table in retention::PARTITIONED_TABLES {
            assert!(exists(&app, &partition_name(table, day)).await, "{table} of {day}");
        }
    }

    // Usage aggregates are untouched, the dropped days' included.
    assert_eq!(usage_rows(&app).await, usage_before);

    // Dropped history is gone; recent history is whole and still filterable.
    for gone in [old_run, older_run] {
        let (status, _) = app.admin.get(&format!("/v1/runs/{gone}")).await;
        assert_eq!(status, 404, "{gone}");
    }
    let run = app.admin.finished_run(&ok).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["attempt_details"].as_array().map(Vec::len), Some(1), "{run}");
    let (status, listed) = app
        .admin
        .get(&format!("/v1/projects/{}/runs?tool=boom&status=failed", app.project_id))
        .await;
    assert_eq!(status, 200, "{listed}");
    let listed: Vec<&str> = listed["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    assert_eq!(listed, vec![boom.as_str()]);
    let (_, all) = app.admin.get(&format!("/v1/projects/{}/runs", app.project_id)).await;
    assert_eq!(all["runs"].as_array().map(Vec::len), Some(2), "{all}");

    // A pass with nothing expired drops nothing; 0 keeps everything.
    assert!(
        retention::maintain(&app.pool, 30, Utc::now())
            .await
            .expect("maintain")
            .dropped
            .is_empty()
    );
    assert!(
        retention::maintain(&app.pool, 0, Utc::now() + Duration::days(3650))
            .await
            .expect("maintain")
            .dropped
            .is_empty()
    );

    // The projector goes on.
    let later = run_id(&session.call("ok", json!({"n": 2})).await);
    assert_eq!(app.admin.finished_run(&later).await["status"], "succeeded");
}

/// The migration that partitions history keeps every existing row, on its day.
#[tokio::test(flavor = "multi_thread")]
async fn existing_history_is_moved_into_day_partitions() {
    let isolation = tengine_tests::Isolation::new().await;
    let pool = sqlx::PgPool::connect(&isolation.db_url).await.expect("pool");
    let partitioning = 20261124000010;
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            tengine_core::connections::MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version < partitioning)
                .cloned()
                .collect(),
        ),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    };
    before.run(&pool).await.expect("migrations before partitioning");
    let now = Utc::now();
    let (recent, old) = (v7_at(now), v7_at(now - Duration::days(3)));
    let project = Uuid::now_v7();
    for (run, status) in [(recent, "succeeded"), (old, "failed")] {
        sqlx::query(
            "INSERT INTO runs (run_id, project_id, integration_id, api_key_id, tool_name, status, accepted_at, \
             usage_counted, request_body, bodies_truncated) VALUES ($1, $2, $2, $2, 't', $3, now(), true, '{}', false)",
        )
        .bind(run)
        .bind(project)
        .bind(status)
        .execute(&pool)
        .await
        .expect("old-form run");
        sqlx::query("INSERT INTO run_attempts (run_id, attempt, started_at, bytes_in) VALUES ($1, 1, now(), 7)")
            .bind(run)
            .execute(&pool)
            .await
            .expect("old-form attempt");
        sqlx::query("INSERT INTO processed_events (event_id) VALUES ($1)")
            .bind(run)
            .execute(&pool)
            .await
            .expect("old-form event id");
    }
    tengine_core::connections::MIGRATOR
        .run(&pool)
        .await
        .expect("partitioning migration");

    for (run, status) in [(recent, "succeeded"), (old, "failed")] {
        let (record, attempts) = tengine_projector::history::runs::get(&pool, run)
            .await
            .expect("run kept");
        assert_eq!(record.status, status);
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].bytes_in, Some(7));
        let bodies = tengine_projector::history::runs::bodies(&pool, run)
            .await
            .expect("bodies");
        assert_eq!(bodies.and_then(|b| b.request_body).as_deref(), Some("{}"));
        for table in retention::PARTITIONED_TABLES {
            let (n,): (i64,) = sqlx::query_as(&format!(
                "SELECT count(*) FROM {}",
                partition_name(table, uuid_day(run))
            ))
            .fetch_one(&pool)
            .await
            .expect("partition");
            assert_eq!(n, 1, "{table} of {run}");
        }
    }
    let (counted,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs WHERE usage_counted")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(counted, 2, "usage flags kept (no run is counted twice)");
    let (leftovers,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_class WHERE relname LIKE '%unpartitioned%'")
        .fetch_one(&pool)
        .await
        .expect("leftovers");
    assert_eq!(leftovers, 0, "the old tables and their indexes are gone");
    pool.close().await;
}

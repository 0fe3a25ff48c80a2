//! `tengine usage export` against a real cluster: closed hours only, CSV and JSON
//! lines, resumable with a cursor, and the scheduled mode writing each hour file
//! exactly once across a kill and restart of the exporter.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use chrono::{DateTime, DurationRound, Utc};
use serde_json::{Value, json};
use tengine_tests::{TestApp, ToolSpec, mcp::run_id, spawn_app, upstream::Upstream};

const HOURS: i64 = 40;
const TOOLS: [&str; 3] = ["alpha", "beta", "gamma"];

fn tengine(app: &TestApp) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tengine"));
    command
        .env("TENGINE_DATABASE_URL", &app.config.database_url)
        .env("TENGINE_NATS_URL", &app.config.nats_url)
        .env("TENGINE_NATS_PREFIX", &app.config.nats_prefix)
        .env("RUST_LOG", "warn");
    command
}

fn run(app: &TestApp, args: &[&str]) -> (String, Value) {
    let output = tengine(app).args(args).output().expect("run tengine");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "tengine {args:?} failed: {stderr}");
    let summary = stderr
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    (String::from_utf8_lossy(&output.stdout).to_string(), summary)
}

fn hour_now() -> DateTime<Utc> {
    Utc::now().duration_trunc(chrono::Duration::hours(1)).expect("hour")
}

/// Usage rows in past (closed) hours: `HOURS` hours × 3 tools, ending 3 hours ago.
async fn seed_past_usage(app: &TestApp, integration: uuid::Uuid) -> DateTime<Utc> {
    let first = hour_now() - chrono::Duration::hours(HOURS + 3);
    for h in 0..HOURS {
        for (i, tool) in TOOLS.iter().enumerate() {
            sqlx::query(
                "INSERT INTO usage_hourly (project_id, integration_id, member_id, tool_name, hour, calls, successes, \
                 failures, latency_ms_sum, bytes_in, bytes_out) VALUES ($1, $2, '', $3, $4, $5, $5, 0, 7, 10, 20)",
            )
            .bind(app.project_id)
            .bind(integration)
            .bind(tool)
            .bind(first + chrono::Duration::hours(h))
            .bind(h * 10 + i as i64 + 1)
            .execute(&app.pool)
            .await
            .expect("seed usage");
        }
    }
    first
}

/// The expected JSON lines of one hour, from the database.
async fn expected_hour(app: &TestApp, hour: DateTime<Utc>) -> Vec<Value> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tool_name, calls FROM usage_hourly WHERE project_id = $1 AND hour = $2 ORDER BY tool_name",
    )
    .bind(app.project_id)
    .bind(hour)
    .fetch_all(&app.pool)
    .await
    .expect("rows");
    rows.into_iter()
        .map(|(tool, calls)| json!({"tool_name": tool, "calls": calls}))
        .collect()
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn setup() -> (TestApp, Upstream, DateTime<Utc>) {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("live", &upstream.url(), "/echo")).await;
    // A real call: its hour is still open and must not be exported.
    let mut session = app.session();
    session.initialize().await;
    let run = run_id(&session.call("live", json!({})).await);
    let run = app.admin.finished_run(&run).await;
    let integration = uuid::Uuid::parse_str(run["integration_id"].as_str().expect("integration")).expect("uuid");
    let first = seed_past_usage(&app, integration).await;
    // The live call's usage row is written with its run.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM usage_hourly WHERE tool_name = 'live'")
        .fetch_one(&app.pool)
        .await
        .expect("count")
        .0
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "the live call was not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (app, upstream, first)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_streams_closed_hours_and_resumes_from_its_cursor() {
    let (app, _upstream, first) = setup().await;
    let project = app.project_id.to_string();
    let total = (HOURS as usize) * TOOLS.len();
    tokio::task::block_in_place(|| {
        let (out, summary) = run(&app, &["usage", "export", "--project", &project, "--format", "jsonl"]);
        let rows = lines(&out);
        assert_eq!(rows.len(), total, "only the closed hours: {summary}");
        assert!(
            rows.iter().all(|r| r["tool_name"] != "live"),
            "the open hour is not exported"
        );
        assert_eq!(summary["complete"], true);
        assert_eq!(
            rows[0]["hour"],
            json!(first.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        );
        assert_eq!(rows[0]["calls"], 1);
        assert_eq!(rows[0]["latency_buckets"].as_array().map(Vec::len), Some(10));

        let (csv, _) = run(&app, &["usage", "export", "--project", &project, "--format", "csv"]);
        let csv: Vec<&str> = csv.lines().collect();
        assert_eq!(csv.len(), total + 1, "a header and one line per row");
        assert!(
            csv[0].starts_with("project_id,hour,integration_id,member_id,tool_name,calls"),
            "{}",
            csv[0]
        );
        assert!(csv[1].ends_with(",0;0;0;0;0;0;0;0;0;0,10,20"), "{}", csv[1]);

        // In chunks into a file: a cursor file after each, the chunks add up to the whole.
        let dir = std::env::temp_dir().join(format!("tengine-export-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("usage.jsonl");
        let file_arg = file.to_str().expect("path");
        let (_, first_chunk) = run(
            &app,
            &[
                "usage",
                "export",
                "--project",
                &project,
                "--limit",
                "50",
                "--output",
                file_arg,
            ],
        );
        assert_eq!(
            (first_chunk["rows"].as_u64(), first_chunk["complete"].as_bool()),
            (Some(50), Some(false))
        );
        let mut cursor = std::fs::read_to_string(format!("{file_arg}.cursor")).expect("cursor file");
        assert_eq!(cursor.trim(), first_chunk["cursor"].as_str().expect("cursor"));
        loop {
            let (_, chunk) = run(
                &app,
                &[
                    "usage",
                    "export",
                    "--project",
                    &project,
                    "--limit",
                    "50",
                    "--output",
                    file_arg,
                    "--cursor",
                    cursor.trim(),
                ],
            );
            cursor = std::fs::read_to_string(format!("{file_arg}.cursor")).expect("cursor file");
            if chunk["complete"] == true {
                break;
            }
        }
        assert_eq!(lines(&std::fs::read_to_string(&file).expect("file")), rows);

        // Runs: the live run's hour is open.
        let (runs, _) = run(&app, &["usage", "export", "--project", &project, "--runs"]);
        assert_eq!(runs.lines().count(), 0);
        let (status, _) = (
            tengine(&app)
                .args(["usage", "export", "--project", &project, "--cursor", "nonsense"])
                .output()
                .expect("run"),
            (),
        );
        assert!(!status.status.success());
        assert!(String::from_utf8_lossy(&status.stderr).contains("--cursor is not a cursor"));
    });
}

fn hour_files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|name| !name.starts_with(".exported"))
                .map(|name| {
                    let text = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
                    (name, text)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduled_export_writes_every_closed_hour_once_across_a_restart() {
    let (app, _upstream, first) = setup().await;
    let dir = std::env::temp_dir().join(format!("tengine-schedule-{}", uuid::Uuid::new_v4()));
    let dir_arg = dir.to_str().expect("path").to_string();
    let project_dir = dir.join(app.project_id.to_string());

    // Killed (SIGKILL) part-way through.
    let mut exporter = tengine(&app)
        .args([
            "usage",
            "export",
            "--schedule",
            "--dir",
            &dir_arg,
            "--once",
            "--throttle-ms",
            "100",
        ])
        .spawn()
        .expect("start the exporter");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while hour_files(&project_dir)
        .keys()
        .filter(|n| n.ends_with(".jsonl"))
        .count()
        < 5
    {
        assert!(std::time::Instant::now() < deadline, "the exporter wrote nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    exporter.kill().expect("kill");
    let _ = exporter.wait();
    let partial = hour_files(&project_dir);
    assert!(
        partial.keys().filter(|n| n.ends_with(".jsonl")).count() < HOURS as usize,
        "killed before the end: {partial:?}"
    );

    tokio::task::block_in_place(|| run(&app, &["usage", "export", "--schedule", "--dir", &dir_arg, "--once"]));
    let files = hour_files(&project_dir);
    let names: Vec<&String> = files.keys().collect();
    assert_eq!(
        names.len(),
        HOURS as usize,
        "one file per closed hour, no temporary files: {names:?}"
    );
    for h in 0..HOURS {
        let hour = first + chrono::Duration::hours(h);
        let name = format!("{}.jsonl", hour.format("%Y-%m-%dT%H"));
        let text = files.get(&name).unwrap_or_else(|| panic!("{name} missing: {names:?}"));
        let got: Vec<Value> = lines(text)
            .into_iter()
            .map(|r| json!({"tool_name": r["tool_name"], "calls": r["calls"]}))
            .collect();
        assert_eq!(got, expected_hour(&app, hour).await, "{name}");
        // Files written before the kill are the same, complete ones.
        if let Some(before) = partial.get(&name) {
            assert_eq!(before, text, "{name} was rewritten");
        }
    }
    let state = std::fs::read_to_string(project_dir.join(".exported-until")).expect("state file");
    assert!(DateTime::parse_from_rfc3339(state.trim()).is_ok(), "{state}");

    // Another pass writes nothing new.
    let modified = |name: &str| {
        std::fs::metadata(project_dir.join(name))
            .and_then(|m| m.modified())
            .ok()
    };
    let some = names[0].clone();
    let before = modified(&some);
    let output = tokio::task::block_in_place(|| {
        tengine(&app)
            .args(["usage", "export", "--schedule", "--dir", &dir_arg, "--once"])
            .output()
            .expect("run")
    });
    assert!(String::from_utf8_lossy(&output.stderr).contains("exported 0 hour file(s)"));
    assert_eq!(modified(&some), before);
    let _ = std::fs::remove_dir_all(&dir);
}

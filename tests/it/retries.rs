//! Client retries never duplicate a write: one idempotency key, one run, one call
//! of the API — whether the retry comes after the outcome, while the run is in
//! flight, or through another ingress instance.

use serde_json::{Value, json};
use tengine_tests::{
    TestApp, ToolSpec,
    mcp::{ACCEPT_BOTH, ModernClient, RawSession, run_id},
    spawn_app,
    upstream::Upstream,
};

async fn call_with_key(app: &TestApp, url: &str, session: &str, key: &str, id: u64, args: Value) -> Value {
    let auth = format!("Bearer {}", app.api_key);
    let body =
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "write", "arguments": args}});
    let reply = RawSession::new(app.http.clone(), url.to_string(), app.api_key.clone())
        .post_raw(
            &[
                ("authorization", auth.as_str()),
                ("accept", ACCEPT_BOTH),
                ("content-type", "application/json"),
                ("mcp-session-id", session),
                ("idempotency-key", key),
            ],
            serde_json::to_vec(&body).expect("json"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_call_runs_once() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("write", &upstream.url(), "/slow/600").timeout_ms(5000))
        .await;
    let second = app.spawn_ingress(None).await;
    let mut session = app.session();
    session.initialize().await;
    let sid = session.session_id.clone().expect("session");
    let (url_a, url_b) = (app.mcp_url.clone(), format!("{}/mcp", second.base_url));

    // Two concurrent attempts with one key, through two instances: one run.
    let (first, retry) = tokio::join!(
        call_with_key(&app, &url_a, &sid, "order-1", 1, json!({"amount": 5})),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            call_with_key(&app, &url_b, &sid, "order-1", 2, json!({"amount": 5})).await
        }
    );
    assert_eq!(first["result"]["isError"], false, "{first}");
    assert_eq!(run_id(&first["result"]), run_id(&retry["result"]), "{retry}");
    assert_eq!(first["result"]["content"], retry["result"]["content"]);
    assert_eq!(upstream.requests().len(), 1, "the API was called once");

    // After the outcome: the recorded result comes back, the API is not called.
    let later = call_with_key(&app, &url_a, &sid, "order-1", 3, json!({"amount": 5})).await;
    assert_eq!(run_id(&later["result"]), run_id(&first["result"]));
    assert_eq!(upstream.requests().len(), 1);

    // The same key with other arguments is refused.
    let conflict = call_with_key(&app, &url_a, &sid, "order-1", 4, json!({"amount": 6})).await;
    assert_eq!(conflict["error"]["code"], -32602, "{conflict}");
    assert!(
        conflict["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("other arguments")
    );

    // `_meta.idempotencyKey` works like the header; a new key is a new run.
    let meta = session
        .request(
            "tools/call",
            json!({"name": "write", "arguments": {"amount": 5}, "_meta": {"idempotencyKey": "order-1"}}),
        )
        .await;
    assert_eq!(run_id(&meta.body["result"]), run_id(&first["result"]));
    let fresh = call_with_key(&app, &url_a, &sid, "order-2", 5, json!({"amount": 5})).await;
    assert_ne!(run_id(&fresh["result"]), run_id(&first["result"]));
    assert_eq!(upstream.requests().len(), 2);

    // A key belongs to its credential: another API key's "order-1" is another call.
    let other_key = app.admin.create_api_key(app.project_id, &[]).await.key;
    let mut other = RawSession::new(app.http.clone(), url_a.clone(), other_key.clone());
    other.initialize().await;
    let other_sid = other.session_id.clone().expect("session");
    let auth = format!("Bearer {other_key}");
    let theirs = other
        .post_raw(
            &[
                ("authorization", auth.as_str()),
                ("accept", ACCEPT_BOTH),
                ("content-type", "application/json"),
                ("mcp-session-id", other_sid.as_str()),
                ("idempotency-key", "order-1"),
            ],
            serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "write", "arguments": {"amount": 5}}}))
            .expect("json"),
        )
        .await;
    assert_ne!(run_id(&theirs.body["result"]), run_id(&first["result"]));
    assert_eq!(upstream.requests().len(), 3);

    // Without a key, the same JSON-RPC id in the same session is the same call.
    let repeat =
        json!({"jsonrpc": "2.0", "id": "same", "method": "tools/call", "params": {"name": "write", "arguments": {}}});
    let a = session.post(&repeat).await;
    let b = session.post(&repeat).await;
    assert_eq!(run_id(&a.body["result"]), run_id(&b.body["result"]));
    assert_eq!(upstream.requests().len(), 4);

    // History counts the retries each run answered (the other arguments' refusal is none).
    app.admin.wait_for_projector().await;
    let first_run = app.admin.finished_run(&run_id(&first["result"])).await;
    assert_eq!(first_run["client_retries"], 3, "{first_run}");
    let repeated = app.admin.finished_run(&run_id(&a.body["result"])).await;
    assert_eq!(repeated["client_retries"], 1, "{repeated}");
    assert_eq!(
        app.admin.finished_run(&run_id(&fresh["result"])).await["client_retries"],
        0
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_retries_only_what_is_safe() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let tool = |name: &str, method: &str, path: &str, retry: Value| {
        ToolSpec::new(name, method, &upstream.url(), path)
            .timeout_ms(300)
            .retry(retry)
    };
    let fast = json!({"max_attempts": 3, "initial_backoff_ms": 20, "max_backoff_ms": 50});
    app.create_tool(tool("unavailable", "POST", "/flaky/2/503", fast.clone()))
        .await;
    app.create_tool(tool("broken", "POST", "/flaky/5/500", fast.clone()))
        .await;
    app.create_tool(tool("slow_post", "POST", "/slow/1000", fast.clone()))
        .await;
    app.create_tool(tool(
        "slow_get",
        "GET",
        "/slow/1000",
        json!({"max_attempts": 2, "initial_backoff_ms": 20}),
    ))
    .await;
    let mut session = app.session();
    session.initialize().await;

    // 503 twice (Retry-After: 1), then 200: one run, three attempts, one request id.
    let started = std::time::Instant::now();
    let ok = session.call("unavailable", json!({})).await;
    assert_eq!(ok["isError"], false, "{ok}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "Retry-After was honoured"
    );
    let attempts: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/flaky/2"))
        .collect();
    assert_eq!(attempts.len(), 3);
    let ids: std::collections::BTreeSet<_> = attempts
        .iter()
        .map(|r| r.header("x-tengine-request-id").unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same request id");
    let webhook_ids: std::collections::BTreeSet<_> = attempts
        .iter()
        .map(|r| r.header("webhook-id").unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        webhook_ids.len(),
        1,
        "webhook-id (with its binding) is the same on every attempt"
    );
    let stamps: std::collections::BTreeSet<_> = attempts
        .iter()
        .map(|r| r.header("x-tengine-timestamp").unwrap_or_default().to_string())
        .collect();
    assert!(stamps.len() >= 2, "each attempt is signed afresh");
    let run = app.admin.finished_run(&run_id(&ok)).await;
    assert_eq!(run["attempts"], 3);
    let details = run["attempt_details"].as_array().expect("attempts");
    assert_eq!(
        details
            .iter()
            .map(|a| a["http_status"].as_i64().unwrap_or(0))
            .collect::<Vec<_>>(),
        vec![503, 503, 200]
    );

    // 500 is not retried.
    let broken = session.call("broken", json!({})).await;
    assert_eq!(broken["isError"], true);
    assert_eq!(app.admin.finished_run(&run_id(&broken)).await["attempts"], 1);

    // A timed-out POST may have written: not retried. A GET is.
    let post = session.call("slow_post", json!({})).await;
    assert_eq!(app.admin.finished_run(&run_id(&post)).await["attempts"], 1);
    let get = session.call("slow_get", json!({})).await;
    let run = app.admin.finished_run(&run_id(&get)).await;
    assert_eq!(
        (run["attempts"].as_i64(), run["error_class"].as_str()),
        (Some(2), Some("timeout"))
    );

    let (status, body) = app
        .admin
        .try_create_tool(app.project_id, tool("bad", "GET", "/x", json!({"max_attempts": 50})))
        .await;
    assert_eq!(status, 422, "{body}");
}

/// A call whose command the queue does not confirm keeps its idempotency key: the
/// command may be stored although every ack was lost, so a quick retry is told to
/// wait instead of starting a second run, and only once the first run left no
/// trace for `ORPHAN_AFTER_MS` does a retry take the key over. The API is called once.
#[tokio::test(flavor = "multi_thread")]
async fn an_unconfirmed_call_keeps_its_key_until_it_is_an_orphan() {
    // A queue of one command: while a slow call holds it, the queue refuses the next.
    let app = tengine_tests::spawn_app_with(&[
        ("streams.commands_max_msgs", "1"),
        ("ingress.idempotency_lease_ms", "2500"),
    ])
    .await;
    let upstream = Upstream::spawn(None).await;
    for (name, path) in [("write", "/echo"), ("slow", "/slow/7000")] {
        app.create_tool(ToolSpec::post(name, &upstream.url(), path).timeout_ms(10000))
            .await;
    }
    let mut busy = app.session();
    busy.initialize().await;
    let slow = tokio::spawn(async move { busy.call("slow", json!({})).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let mut session = app.session();
    session.initialize().await;
    let sid = session.session_id.clone().expect("session");
    let claimed_at = std::time::Instant::now();
    let refused = call_with_key(&app, &app.mcp_url, &sid, "unconfirmed", 1, json!({"n": 1})).await;
    assert_eq!(refused["error"]["code"], -32603, "{refused}");
    let first = refused["error"]["data"]["tengine.dev/runId"]
        .as_str()
        .expect("run id")
        .to_string();
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("same idempotency key"),
        "{refused}"
    );

    // At once: the key still belongs to the first run, which may exist after all.
    let waiting = call_with_key(&app, &app.mcp_url, &sid, "unconfirmed", 2, json!({"n": 1})).await;
    assert_eq!(waiting["error"]["code"], -32603, "{waiting}");
    assert_eq!(
        waiting["error"]["data"]["tengine.dev/runId"],
        first.as_str(),
        "{waiting}"
    );

    // Once the queue has room and the first call's lease (2.5 s, + 2 s for clock
    // skew) lapsed without a trace of the run, a retry queues that same run.
    slow.await.expect("the slow call");
    let orphaned = std::time::Duration::from_millis(5_000);
    if let Some(rest) = orphaned.checked_sub(claimed_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let done = call_with_key(&app, &app.mcp_url, &sid, "unconfirmed", 3, json!({"n": 1})).await;
    assert_eq!(done["result"]["isError"], false, "{done}");
    assert_eq!(run_id(&done["result"]), first, "the key keeps its first Run ID: {done}");
    let writes = upstream.requests().iter().filter(|r| r.path == "/echo").count();
    assert_eq!(writes, 1, "the API was called once");
    // A further retry follows that run.
    let again = call_with_key(&app, &app.mcp_url, &sid, "unconfirmed", 4, json!({"n": 1})).await;
    assert_eq!(run_id(&again["result"]), run_id(&done["result"]));
    assert_eq!(upstream.requests().iter().filter(|r| r.path == "/echo").count(), 1);
}

/// A key's first call held between its claim and its queueing (here: waiting for
/// a quota counter row another transaction holds) is never overtaken by a retry,
/// however long it is held: the API is called once.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_while_the_first_call_is_held_before_queueing_runs_once() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("write", &upstream.url(), "/echo")).await;
    let (status, body) = app
        .admin
        .patch_project(app.project_id, json!({"monthly_call_limit": 1000}))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut session = app.session();
    session.initialize().await;
    let sid = session.session_id.clone().expect("session");
    // A first call creates the month's counter row.
    let warm = call_with_key(&app, &app.mcp_url, &sid, "warm-up", 1, json!({"n": 0})).await;
    assert_eq!(warm["result"]["isError"], false, "{warm}");

    let mut lock = app.pool.begin().await.expect("tx");
    sqlx::query("SELECT calls FROM quota_counters WHERE project_id = $1 AND scope = 'month' FOR UPDATE")
        .bind(app.project_id)
        .fetch_one(&mut *lock)
        .await
        .expect("the month's counter row, locked");
    let first = tokio::spawn({
        let (app_http, url, key, sid) = (app.http.clone(), app.mcp_url.clone(), app.api_key.clone(), sid.clone());
        async move {
            let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                              "params": {"name": "write", "arguments": {"n": 1}}});
            RawSession::new(app_http, url, key.clone())
                .post_raw(
                    &[
                        ("authorization", format!("Bearer {key}").as_str()),
                        ("accept", ACCEPT_BOTH),
                        ("content-type", "application/json"),
                        ("mcp-session-id", sid.as_str()),
                        ("idempotency-key", "held"),
                    ],
                    serde_json::to_vec(&body).expect("json"),
                )
                .await
                .body
        }
    });
    // Longer than any "orphaned claim" rule could wait: the first call still holds it.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let retry = tokio::spawn({
        let app_http = app.http.clone();
        let (url, key, sid) = (app.mcp_url.clone(), app.api_key.clone(), sid.clone());
        async move {
            let body = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                              "params": {"name": "write", "arguments": {"n": 1}}});
            RawSession::new(app_http, url, key.clone())
                .post_raw(
                    &[
                        ("authorization", format!("Bearer {key}").as_str()),
                        ("accept", ACCEPT_BOTH),
                        ("content-type", "application/json"),
                        ("mcp-session-id", sid.as_str()),
                        ("idempotency-key", "held"),
                    ],
                    serde_json::to_vec(&body).expect("json"),
                )
                .await
                .body
        }
    });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    lock.rollback().await.expect("release the row");
    let first = first.await.expect("first call");
    let retry = retry.await.expect("retry");
    assert_eq!(first["result"]["isError"], false, "{first}");
    let first_run = run_id(&first["result"]);
    // The retry was told to come back (the first call still held the key), or followed it.
    match retry.get("result") {
        Some(result) => assert_eq!(run_id(result), first_run, "{retry}"),
        None => assert_eq!(
            retry["error"]["data"]["tengine.dev/runId"],
            first_run.as_str(),
            "{retry}"
        ),
    }
    let again = call_with_key(&app, &app.mcp_url, &sid, "held", 4, json!({"n": 1})).await;
    assert_eq!(run_id(&again["result"]), first_run, "{again}");
    let writes = upstream.requests().iter().filter(|r| r.json()["n"] == 1).count();
    assert_eq!(writes, 1, "the API was called once for the key");
}

/// The event log's limits may drop a run's events long before its key expires:
/// a retry still gets the recorded outcome (from history) and the API is not
/// called again.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_the_event_log_rolled_past_the_run_gets_its_recorded_outcome() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("write", &upstream.url(), "/echo")).await;
    let mut session = app.session();
    session.initialize().await;
    let sid = session.session_id.clone().expect("session");
    let first = call_with_key(&app, &app.mcp_url, &sid, "order-9", 1, json!({"amount": 9})).await;
    assert_eq!(first["result"]["isError"], false, "{first}");
    let run = run_id(&first["result"]);
    app.admin.finished_run(&run).await;

    // The log rolls past the run (its limits, or an operator's purge).
    let js = async_nats::jetstream::new(async_nats::connect(tengine_tests::nats_url()).await.expect("nats"));
    let topology = tengine_core::Topology::from_config(&app.config);
    js.get_stream(topology.events_stream())
        .await
        .expect("event log")
        .purge()
        .await
        .expect("purge the event log");

    let retry = call_with_key(&app, &app.mcp_url, &sid, "order-9", 2, json!({"amount": 9})).await;
    assert_eq!(retry["result"]["isError"], false, "{retry}");
    assert_eq!(run_id(&retry["result"]), run, "{retry}");
    assert_eq!(
        retry["result"]["content"], first["result"]["content"],
        "the recorded outcome"
    );
    assert_eq!(upstream.requests().len(), 1, "the API was called once");
}

/// A key the client meant but that is not one (not a string, empty, or not visible
/// ASCII in the header) is refused, not ignored: ignored, each retry would be a
/// new run and write again.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_idempotency_key_is_refused_not_ignored() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("write", &upstream.url(), "/echo")).await;
    let client = ModernClient::new(app.http.clone(), app.mcp_url.clone(), app.api_key.clone());
    for key in [json!(5), json!(true), json!({"k": "v"}), json!(""), json!(["a"])] {
        let reply = client
            .request(
                json!(1),
                "tools/call",
                json!({"name": "write", "arguments": {}, "_meta": {"idempotencyKey": key}}),
            )
            .await;
        assert_eq!(reply.body["error"]["code"], -32602, "key {key}: {}", reply.body);
        let message = reply.body["error"]["message"].as_str().expect("message");
        assert!(message.contains("_meta.idempotencyKey"), "key {key}: {message}");
    }
    for key in ["a b", "tab\there"] {
        let body = client.body(json!(2), "tools/call", json!({"name": "write", "arguments": {}}));
        let mut headers = client.headers(&body);
        headers.push(("idempotency-key".into(), key.into()));
        let reply = client.send(&headers, &body).await;
        assert_eq!(reply.status, 400, "header {key:?}: {}", reply.body);
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .expect("message")
                .contains("Idempotency-Key"),
            "{}",
            reply.body
        );
    }
    assert!(upstream.requests().is_empty(), "no call reached the API");
    // A well-formed key still works.
    let reply = client
        .request(
            json!(3),
            "tools/call",
            json!({"name": "write", "arguments": {}, "_meta": {"idempotencyKey": "order-9"}}),
        )
        .await;
    run_id(&reply.body["result"]);
}

/// An attempt in history: number, end, error, HTTP status.
type AttemptRow = (i32, Option<chrono::DateTime<chrono::Utc>>, Option<String>, Option<i32>);

/// A worker that dies during an attempt never reports its end; the run is
/// delivered again and finishes on its next attempt. History closes the lost
/// attempt with the run (it does not show it running forever) and says why. The
/// events are what such a run leaves in the log: the lost attempt's start (stored
/// because the API took longer than a quarter second), then the outcome of the
/// second delivery.
#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_lost_with_its_worker_ends_with_the_run() {
    use tengine_core::envelope::{AttemptReport, Caller, RunEvent, RunOutcome, RunStatus};
    let app = spawn_app().await;
    let js = async_nats::jetstream::new(async_nats::connect(tengine_tests::nats_url()).await.expect("nats"));
    let topology = tengine_core::Topology::from_config(&app.config);
    let caller = Caller {
        project_id: app.project_id,
        integration_id: uuid::Uuid::now_v7(),
        api_key_id: app.api_key_id,
        member: None,
    };
    let run_id = uuid::Uuid::now_v7();
    let accepted_at = chrono::Utc::now();
    let second_start = accepted_at + chrono::Duration::seconds(30);
    let finished_at = second_start + chrono::Duration::milliseconds(40);
    let events = [
        RunEvent::AttemptStarted {
            run_id,
            project_id: app.project_id,
            attempt: 1,
            started_at: accepted_at,
        },
        RunEvent::Finished(RunOutcome {
            run_id,
            caller,
            tool_name: "slow".into(),
            status: RunStatus::Succeeded,
            error_class: None,
            error: None,
            response: None,
            attempts: 2,
            accepted_at,
            finished_at,
            latency_ms: 40,
            bodies: None,
            keep_result_until: None,
            last_attempt: Some(Box::new(AttemptReport {
                attempt: 2,
                started_at: second_start,
                finished_at,
                http_status: Some(200),
                error_class: None,
                error: None,
                bytes_out: 2,
                bytes_in: 2,
            })),
            origin: None,
        }),
    ];
    for event in events {
        tengine_core::bus::publish_event(&js, &topology, app.project_id, event)
            .await
            .expect("publish");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let attempts: Vec<AttemptRow> = loop {
        let rows = sqlx::query_as(
            "SELECT attempt, finished_at, error, http_status FROM run_attempts WHERE run_id = $1 ORDER BY attempt",
        )
        .bind(run_id)
        .fetch_all(&app.pool)
        .await
        .expect("attempts");
        if rows.len() == 2 {
            break rows;
        }
        assert!(std::time::Instant::now() < deadline, "attempts {rows:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let (_, lost_end, lost_error, lost_status) = &attempts[0];
    assert_eq!(
        lost_end.map(|t| t.timestamp_millis()),
        Some(finished_at.timestamp_millis())
    );
    assert!(
        lost_error
            .as_deref()
            .is_some_and(|e| e.contains("the worker stopped during this attempt")),
        "{lost_error:?}"
    );
    assert_eq!(*lost_status, None);
    assert_eq!((attempts[1].0, attempts[1].3), (2, Some(200)));
}

//! The MCP Tasks extension on revision 2026-07-28: a call becomes a task only for a
//! client that declared the extension on its request, only once its run is durable;
//! the task is the run, so any ingress instance answers `tasks/get`, also after the
//! one that created it restarted; `tasks/cancel` stops a queued run before it runs
//! and cuts off a request in flight.

use std::time::Duration;

use serde_json::{Value, json};
use tengine_tests::{
    TestApp, ToolSpec,
    mcp::{ModernClient, Reply},
    spawn_app, spawn_app_with,
    upstream::{Upstream, input_of},
};

const TASKS: &str = "io.modelcontextprotocol/tasks";

fn with_tasks(app: &TestApp, url: &str) -> ModernClient {
    let mut client = ModernClient::new(app.http.clone(), url.to_string(), app.api_key.clone());
    client.capabilities = json!({"extensions": {TASKS: {}}});
    client
}

/// `tasks/get` with the Mcp-Name header the extension requires (the task id).
async fn get_task(client: &ModernClient, id: Value, task_id: &str) -> Reply {
    task_request(client, id, "tasks/get", task_id).await
}

async fn task_request(client: &ModernClient, id: Value, method: &str, task_id: &str) -> Reply {
    let body = client.body(id, method, json!({"taskId": task_id}));
    let mut headers = client.headers(&body);
    headers.push(("mcp-name".into(), task_id.into()));
    client.send(&headers, &body).await
}

/// Polls a task until it leaves `working`.
async fn until_done(client: &ModernClient, task_id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let reply = get_task(client, json!(format!("poll-{n}")), task_id).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let task = reply.body["result"].clone();
        assert_eq!(task["resultType"], "complete", "tasks/get is a complete result: {task}");
        if task["status"] != "working" {
            return task;
        }
        assert!(std::time::Instant::now() < deadline, "the task stayed working: {task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_required_task_is_created_durable_and_polled_to_completion_across_an_ingress_restart() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::post("report", &upstream.url(), "/slow/800")
            .field("task_support", "required")
            .timeout_ms(5000),
    )
    .await;
    let first = app.spawn_ingress(None).await;
    let url = format!("{}/mcp", first.base_url);

    // Without the extension on this request: -32021, the extension named.
    let plain = ModernClient::new(app.http.clone(), url.clone(), app.api_key.clone());
    let refused = plain.request(json!(1), "tools/call", json!({"name": "report"})).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], -32021);
    assert!(refused.body["error"]["data"]["requiredCapabilities"]["extensions"][TASKS].is_object());
    assert!(upstream.requests().is_empty());

    let client = with_tasks(&app, &url);
    let created = client
        .request(json!(2), "tools/call", json!({"name": "report", "arguments": {"q": 1}}))
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let task = &created.body["result"];
    assert_eq!(task["resultType"], "task", "{task}");
    assert_eq!(task["status"], "working");
    let task_id = task["taskId"].as_str().expect("taskId").to_string();
    for field in ["createdAt", "lastUpdatedAt"] {
        assert!(
            chrono::DateTime::parse_from_rfc3339(task[field].as_str().expect(field)).is_ok(),
            "{task}"
        );
    }
    assert!(task["ttlMs"].as_u64().is_some_and(|t| t > 0), "{task}");
    assert!(task["pollIntervalMs"].as_u64().is_some_and(|p| p > 0), "{task}");
    assert!(task.get("result").is_none() && task.get("requestState").is_none());
    // Durable at once: the same instance resolves it immediately.
    let now = get_task(&client, json!(3), &task_id).await;
    assert_eq!(now.status, 200, "{}", now.body);
    assert_eq!(now.body["result"]["taskId"], task_id.as_str());

    // The instance that created it goes away; another one (the cluster's) answers.
    first.stop().await;
    let other = with_tasks(&app, &app.mcp_url);
    let done = until_done(&other, &task_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["isError"], false, "{done}");
    assert!(done["result"]["content"][0]["text"].is_string(), "{done}");
    assert_eq!(upstream.requests().len(), 1, "the API was called once");
    let run = app.admin.finished_run(&task_id).await;
    assert_eq!(run["status"], "succeeded", "the task is the run");

    // Another credential of the project does not see it.
    let other_key = app.admin.create_api_key(app.project_id, &[]).await;
    let mut stranger = ModernClient::new(app.http.clone(), app.mcp_url.clone(), other_key.key);
    stranger.capabilities = json!({"extensions": {TASKS: {}}});
    let hidden = get_task(&stranger, json!(4), &task_id).await;
    assert_eq!(hidden.status, 400, "{}", hidden.body);
    assert_eq!(hidden.body["error"]["code"], -32602);
}

#[tokio::test(flavor = "multi_thread")]
async fn task_methods_check_the_extension_and_the_task() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("quick", &upstream.url(), "/echo")).await;
    let plain = ModernClient::new(app.http.clone(), app.mcp_url.clone(), app.api_key.clone());
    let client = with_tasks(&app, &app.mcp_url);
    for method in ["tasks/get", "tasks/update", "tasks/cancel"] {
        let reply = task_request(&plain, json!(method), method, "gate-test").await;
        assert_eq!(
            (reply.status, reply.body["error"]["code"].as_i64()),
            (400, Some(-32021)),
            "{method}: {}",
            reply.body
        );
    }
    let unknown = get_task(&client, json!(5), &uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(unknown.body["error"]["code"], -32602, "{}", unknown.body);
    for removed in ["tasks/result", "tasks/list"] {
        let reply = client.request(json!(removed), removed, json!({})).await;
        assert_eq!(
            (reply.status, reply.body["error"]["code"].as_i64()),
            (404, Some(-32601)),
            "{removed}"
        );
    }
    // An optional tool with a short timeout answers synchronously, even to a client with tasks.
    let sync = client.request(json!(6), "tools/call", json!({"name": "quick"})).await;
    assert_eq!(sync.body["result"]["resultType"], "complete", "{}", sync.body);
    assert!(sync.body["result"].get("taskId").is_none());
    // The extension is advertised.
    let discovered = client.request(json!(7), "server/discover", json!({})).await;
    assert!(
        discovered.body["result"]["capabilities"]["extensions"][TASKS].is_object(),
        "{}",
        discovered.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_end_completed_on_api_errors_and_failed_on_others() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("rejects", &upstream.url(), "/status/422").field("task_support", "required"))
        .await;
    app.create_tool(
        ToolSpec::post("unreachable", &tengine_tests::upstream::closed_port_url().await, "/x")
            .field("task_support", "required")
            .retry(json!({"max_attempts": 1})),
    )
    .await;
    let client = with_tasks(&app, &app.mcp_url);
    let task = client.request(json!(1), "tools/call", json!({"name": "rejects"})).await;
    let done = until_done(&client, task.body["result"]["taskId"].as_str().expect("task")).await;
    assert_eq!(
        done["status"], "completed",
        "an API error is a tool-level error: {done}"
    );
    assert_eq!(done["result"]["isError"], true);
    let task = client
        .request(json!(2), "tools/call", json!({"name": "unreachable"}))
        .await;
    let done = until_done(&client, task.body["result"]["taskId"].as_str().expect("task")).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]["code"].is_i64() && done["error"]["message"].is_string(),
        "{done}"
    );
    assert!(done.get("result").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_task_cuts_off_its_request_in_flight_or_keeps_it_from_running() {
    let app = spawn_app_with(&[("worker.concurrency", "1")]).await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::post("long", &upstream.url(), "/slow/8000")
            .field("task_support", "required")
            .timeout_ms(20000),
    )
    .await;
    app.create_tool(ToolSpec::post("queued", &upstream.url(), "/echo").field("task_support", "required"))
        .await;
    let client = with_tasks(&app, &app.mcp_url);
    let long = client.request(json!(1), "tools/call", json!({"name": "long"})).await;
    let long_id = long.body["result"]["taskId"].as_str().expect("task").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while upstream.requests().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the API was not called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The only worker slot is busy: this one waits in the queue.
    let queued = client.request(json!(2), "tools/call", json!({"name": "queued"})).await;
    let queued_id = queued.body["result"]["taskId"].as_str().expect("task").to_string();
    let ack = task_request(&client, json!(3), "tasks/cancel", &queued_id).await;
    assert_eq!(
        ack.body["result"],
        json!({"resultType": "complete", "_meta": ack.body["result"]["_meta"]}),
        "{}",
        ack.body
    );

    let cutting = std::time::Instant::now();
    let ack = task_request(&client, json!(4), "tasks/cancel", &long_id).await;
    assert_eq!(ack.status, 200, "{}", ack.body);
    let done = until_done(&client, &long_id).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(
        done["statusMessage"].as_str().unwrap_or_default().contains("in flight"),
        "it says the API may have received the request: {done}"
    );
    assert!(cutting.elapsed() < Duration::from_secs(5), "cut off, not waited out");
    let done = until_done(&client, &queued_id).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        upstream.requests().iter().filter(|r| r.path == "/echo").count(),
        0,
        "the queued task never ran"
    );
    let run = app.admin.finished_run(&long_id).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    // Cancelling a finished task is acknowledged and changes nothing.
    let again = task_request(&client, json!(5), "tasks/cancel", &long_id).await;
    assert_eq!(again.status, 200);
    assert_eq!(until_done(&client, &long_id).await["status"], "cancelled");
}

/// A `tasks/cancel` that reaches the worker while it prepares the run (after it read
/// the run's cancellation mark, before it sends the request) still keeps the run from
/// reaching the API. The worker is held in that window by a lock on the tools table,
/// which its lookups read and the ingress (its tool cached) does not.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_cancelled_while_the_worker_prepares_it_never_reaches_the_api() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::post("long", &upstream.url(), "/slow/8000")
            .field("task_support", "required")
            .timeout_ms(20000),
    )
    .await;
    // Caches the tool in the ingress: the call is refused before anything is queued.
    // Serving calls starts the ingress's freshness markers; once one is back (well
    // within 250 ms) the copy is used, so the call below does not wait for the lock.
    let plain = ModernClient::new(app.http.clone(), app.mcp_url.clone(), app.api_key.clone());
    for attempt in 0..2 {
        let refused = plain
            .request(json!(attempt), "tools/call", json!({"name": "long"}))
            .await;
        assert_eq!(refused.body["error"]["code"], -32021, "{}", refused.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut lock = app.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE tools IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock tools");
    let client = with_tasks(&app, &app.mcp_url);
    let created = client.request(json!(1), "tools/call", json!({"name": "long"})).await;
    let task_id = created.body["result"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("a task: {}", created.body))
        .to_string();
    // The worker has the command and waits for the tools table (its other lookups,
    // the cancellation mark among them, are done).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query ILIKE '%FROM tools%'",
        )
        .fetch_one(&app.pool)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never looked the tool up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ack = task_request(&client, json!(2), "tasks/cancel", &task_id).await;
    assert_eq!(ack.status, 200, "{}", ack.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.rollback().await.expect("unlock tools");

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    let task = loop {
        n += 1;
        let task = get_task(&client, json!(format!("poll-{n}")), &task_id).await.body["result"].clone();
        if task["status"] != "working" || std::time::Instant::now() > deadline {
            break task;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(task["status"], "cancelled", "the cancellation was lost: {task}");
    assert!(
        task["statusMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("before the API was called"),
        "{task}"
    );
    assert!(upstream.requests().is_empty(), "the API was called");
}

/// Polls a task until its status is `status`.
async fn until_status(client: &ModernClient, task_id: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let task = get_task(client, json!(format!("wait-{n}")), task_id).await.body["result"].clone();
        if task["status"] == status {
            return task;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the task never became {status}: {task}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn update(client: &ModernClient, id: &str, task_id: &str, responses: Value) -> Reply {
    let body = client.body(
        json!(id),
        "tasks/update",
        json!({"taskId": task_id, "inputResponses": responses}),
    );
    let mut headers = client.headers(&body);
    headers.push(("mcp-name".into(), task_id.into()));
    client.send(&headers, &body).await
}

/// A task whose API asks for input once under way waits `input_required` with
/// the requests; `tasks/update` may answer them one at a time (the answered ones
/// leave the list); once all are answered the call goes on as a continuation run
/// with the answers and the API's state, round after round, to completion.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_asks_for_input_and_goes_on_once_every_request_is_answered() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::post("provision", &upstream.url(), "/ask-later/2")
            .field("task_support", "required")
            .timeout_ms(5000),
    )
    .await;
    let mut client = with_tasks(&app, &app.mcp_url);
    client.capabilities = json!({"extensions": {TASKS: {}}, "elicitation": {}, "sampling": {}});
    let created = client
        .request(
            json!(1),
            "tools/call",
            json!({"name": "provision", "arguments": {"size": "xl"}}),
        )
        .await;
    let task_id = created.body["result"]["taskId"].as_str().expect("task").to_string();

    let waiting = until_status(&client, &task_id, "input_required").await;
    let keys: Vec<&String> = waiting["inputRequests"].as_object().expect("requests").keys().collect();
    assert_eq!(keys, ["model", "step1"], "{waiting}");

    // One answer: still waiting, for the other only.
    let ack = update(
        &client,
        "u1",
        &task_id,
        json!({"step1": {"action": "accept", "content": {"v": "a"}}}),
    )
    .await;
    assert_eq!(ack.status, 200, "{}", ack.body);
    assert_eq!(ack.body["result"]["resultType"], "complete", "{}", ack.body);
    assert!(
        ack.body["result"].get("status").is_none(),
        "an ack, not a task: {}",
        ack.body
    );
    let partial = get_task(&client, json!("g1"), &task_id).await.body["result"].clone();
    assert_eq!(partial["status"], "input_required", "{partial}");
    assert_eq!(
        partial["inputRequests"].as_object().map(|r| r.len()),
        Some(1),
        "{partial}"
    );
    assert!(partial["inputRequests"]["model"].is_object(), "{partial}");
    assert_eq!(upstream.requests().len(), 1, "nothing runs before every answer is in");

    let model = json!({"model": {"role": "assistant", "content": {"type": "text", "text": "ok"}, "model": "m"}});
    update(&client, "u2", &task_id, model.clone()).await;
    // Round two asks again (the API's own second step); answer it all at once.
    let again = until_status(&client, &task_id, "input_required").await;
    assert!(again["inputRequests"]["step2"].is_object(), "{again}");
    let sent = input_of(&upstream.requests()[1].header_map()).expect("X-Tengine-Input");
    assert_eq!(sent["state"], "round-1");
    assert_eq!(sent["inputResponses"]["step1"]["content"]["v"], "a");
    let mut both = model;
    both["step2"] = json!({"action": "accept", "content": {"v": "b"}});
    update(&client, "u3", &task_id, both).await;

    let done = until_done(&client, &task_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["taskId"], task_id.as_str());
    let body: Value =
        serde_json::from_str(done["result"]["content"][0]["text"].as_str().unwrap_or_default()).expect("json");
    assert_eq!(body["input"]["state"], "round-2", "{body}");
    assert_eq!(upstream.requests().len(), 3, "three rounds, three requests");
    // Answers for a task that waits for nothing are ignored.
    let late = update(&client, "u4", &task_id, json!({"step9": {}})).await;
    assert_eq!(late.body["result"]["resultType"], "complete", "{}", late.body);
}

/// An API that asks at once (within `ingress.task_input_window_ms`) is asked
/// synchronously: the first call answers an `InputRequiredResult`, not a task;
/// the re-issued call with the answers becomes the task.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_tool_whose_api_asks_at_once_asks_before_the_task_exists() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(
        ToolSpec::post("greet_user", &upstream.url(), "/ask/1")
            .field("task_support", "required")
            .timeout_ms(5000),
    )
    .await;
    let mut client = with_tasks(&app, &app.mcp_url);
    client.capabilities = json!({"extensions": {TASKS: {}}, "elicitation": {}});
    let first = client
        .request(json!(1), "tools/call", json!({"name": "greet_user", "arguments": {}}))
        .await;
    let result = &first.body["result"];
    assert_eq!(result["resultType"], "input_required", "{}", first.body);
    assert!(result.get("taskId").is_none(), "{result}");
    let second = client
        .request(
            json!(2),
            "tools/call",
            json!({"name": "greet_user", "arguments": {},
                   "inputResponses": {"step1": {"action": "accept", "content": {"v": "Alice"}}},
                   "requestState": result["requestState"]}),
        )
        .await;
    let task = &second.body["result"];
    assert_eq!(task["resultType"], "task", "{}", second.body);
    assert!(task.get("requestState").is_none(), "{task}");
    let task_id = task["taskId"].as_str().expect("taskId").to_string();
    let done = until_done(&client, &task_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        done["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("Alice"),
        "{done}"
    );
}

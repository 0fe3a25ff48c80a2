//! Operator approvals (`approval = "operator"`): a call is parked, listed for the
//! project's operators, and reaches the API only once it is approved, exactly once;
//! a rejected, expired, withdrawn or cancelled one never does. Parked calls live
//! in NATS, so they outlive the ingress that parked them; every decision is in
//! run history.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tengine_tests::{
    TestApp, ToolSpec,
    mcp::{ModernClient, Reply},
    spawn_app, spawn_app_with,
    upstream::Upstream,
};

const TASKS: &str = "io.modelcontextprotocol/tasks";

fn with_tasks(app: &TestApp, url: &str) -> ModernClient {
    let mut client = ModernClient::new(app.http.clone(), url.to_string(), app.api_key.clone());
    client.capabilities = json!({"extensions": {TASKS: {}}});
    client
}

async fn task_request(client: &ModernClient, id: Value, method: &str, task_id: &str) -> Reply {
    let body = client.body(id, method, json!({"taskId": task_id}));
    let mut headers = client.headers(&body);
    headers.push(("mcp-name".into(), task_id.into()));
    client.send(&headers, &body).await
}

async fn guarded_tool(app: &TestApp, upstream: &Upstream, name: &str) {
    app.create_tool(
        ToolSpec::post(name, &upstream.url(), "/echo")
            .field("approval", "operator")
            .field("task_support", "optional")
            .timeout_ms(5000),
    )
    .await;
}

/// The project's waiting calls, once there are `n` of them.
async fn pending(app: &TestApp, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = app
            .admin
            .get(&format!("/v1/projects/{}/approvals", app.project_id))
            .await;
        assert_eq!(status, 200, "{body}");
        let list = body["approvals"].as_array().cloned().unwrap_or_default();
        if list.len() == n {
            return list;
        }
        assert!(Instant::now() < deadline, "expected {n} waiting calls: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A run's history row once its status is `status`.
async fn run_with_status(app: &TestApp, run_id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, run) = app.admin.get(&format!("/v1/runs/{run_id}")).await;
        if code == 200 && run["status"] == status {
            return run;
        }
        assert!(Instant::now() < deadline, "run {run_id} never became {status}: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a task until it leaves `working`.
async fn until_done(client: &ModernClient, task_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let reply = task_request(client, json!(format!("poll-{n}")), "tasks/get", task_id).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let task = reply.body["result"].clone();
        if task["status"] != "working" {
            return task;
        }
        assert!(Instant::now() < deadline, "the task stayed working: {task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approved_call_runs_once_and_its_caller_gets_the_result() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    guarded_tool(&app, &upstream, "refund").await;

    // A 2025-11-25 caller waits on its request, as for any call.
    let mut session = app.session();
    session.initialize().await;
    let waiting = tokio::spawn(async move { session.call("refund", json!({"order": 42})).await });

    let list = pending(&app, 1).await;
    let parked = &list[0];
    assert_eq!(parked["tool_name"], "refund");
    assert_eq!(
        parked["arguments"],
        json!({"order": 42}),
        "operators see what would be sent"
    );
    assert_eq!(parked["api_key_id"], json!(app.api_key_id));
    let run_id = parked["run_id"].as_str().expect("run_id").to_string();
    let run = run_with_status(&app, &run_id, "awaiting_approval").await;
    assert_eq!(run["approval"]["state"], "pending", "{run}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        upstream.requests().is_empty(),
        "nothing reaches the API before approval"
    );

    // Another project's operators list their own calls only; its id is no way in.
    let other = app.admin.create_project("other").await;
    let (_, theirs) = app.admin.get(&format!("/v1/projects/{other}/approvals")).await;
    assert_eq!(theirs["approvals"], json!([]));

    let (status, decided) = app
        .admin
        .post(&format!("/v1/runs/{run_id}/approve"), json!({"note": "ticket 7"}))
        .await;
    assert_eq!(status, 200, "{decided}");
    assert_eq!(decided["decision"], "approved");
    let result = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the waiting caller is answered")
        .expect("call task");
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["_meta"]["tengine.dev/runId"], run_id.as_str());

    // Approving again, or rejecting now, finds nothing to decide: it ran once.
    let (again, body) = app.admin.post(&format!("/v1/runs/{run_id}/approve"), json!({})).await;
    assert_eq!(
        (again, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (late, body) = app
        .admin
        .post(&format!("/v1/runs/{run_id}/reject"), json!({"reason": "too late"}))
        .await;
    assert_eq!(late, 404, "{body}");
    let run = app.admin.finished_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["approval"]["state"], "approved", "{run}");
    assert_eq!(run["approval"]["by"], "admin", "{run}");
    assert_eq!(run["approval"]["reason"], "ticket 7", "{run}");
    assert_eq!(upstream.requests().len(), 1, "the API was called exactly once");
    assert_eq!(pending(&app, 0).await.len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_call_never_reaches_the_api_and_its_task_says_why_after_its_ingress_is_gone() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    guarded_tool(&app, &upstream, "wipe").await;
    let first = app.spawn_ingress(None).await;
    let client = with_tasks(&app, &format!("{}/mcp", first.base_url));

    let created = client
        .request(
            json!(1),
            "tools/call",
            json!({"name": "wipe", "arguments": {"all": true}}),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let task = &created.body["result"];
    assert_eq!(task["resultType"], "task", "a parked call waits as a task: {task}");
    assert!(
        task["statusMessage"].as_str().is_some_and(|m| m.contains("approval")),
        "{task}"
    );
    let task_id = task["taskId"].as_str().expect("taskId").to_string();
    let polled = task_request(&client, json!(2), "tasks/get", &task_id).await;
    assert_eq!(polled.body["result"]["status"], "working", "{}", polled.body);
    assert!(
        polled.body["result"]["statusMessage"]
            .as_str()
            .is_some_and(|m| m.contains("approval")),
        "{}",
        polled.body
    );
    pending(&app, 1).await;

    // The ingress that parked it goes away; the decision is taken on another.
    first.stop().await;
    let (status, body) = app.admin.post(&format!("/v1/runs/{task_id}/reject"), json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "a reason is required: {body}"
    );
    let (status, body) = app
        .admin
        .post(
            &format!("/v1/runs/{task_id}/reject"),
            json!({"reason": "x".repeat(2001)}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, decided) = app
        .admin
        .post(
            &format!("/v1/runs/{task_id}/reject"),
            json!({"reason": "not on a Friday"}),
        )
        .await;
    assert_eq!(status, 200, "{decided}");
    assert_eq!(decided["decision"], "rejected");

    let other = with_tasks(&app, &app.mcp_url);
    let done = until_done(&other, &task_id).await;
    assert_eq!(done["status"], "completed", "the model reads the refusal: {done}");
    assert_eq!(done["result"]["isError"], true, "{done}");
    let text = done["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("not on a Friday"), "{text}");
    let run = app.admin.finished_run(&task_id).await;
    assert_eq!(run["status"], "rejected", "{run}");
    assert_eq!(run["error_class"], "approval_denied", "{run}");
    assert_eq!(run["attempts"], 0, "{run}");
    assert_eq!(run["approval"]["state"], "rejected", "{run}");
    assert_eq!(run["approval"]["reason"], "not on a Friday", "{run}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(upstream.requests().is_empty(), "a rejected call never reaches the API");
    let (again, body) = app.admin.post(&format!("/v1/runs/{task_id}/approve"), json!({})).await;
    assert_eq!(again, 404, "a decided call cannot be approved after all: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undecided_call_expires_and_a_cancelled_one_is_withdrawn() {
    let app = spawn_app_with(&[("ingress.approval_ttl_secs", "2")]).await;
    let upstream = Upstream::spawn(None).await;
    guarded_tool(&app, &upstream, "deploy").await;
    let client = with_tasks(&app, &app.mcp_url);

    let expiring = client
        .request(json!(1), "tools/call", json!({"name": "deploy", "arguments": {"v": 1}}))
        .await;
    let expiring = expiring.body["result"]["taskId"].as_str().expect("task").to_string();
    let cancelled = client
        .request(json!(2), "tools/call", json!({"name": "deploy", "arguments": {"v": 2}}))
        .await;
    let cancelled = cancelled.body["result"]["taskId"].as_str().expect("task").to_string();
    pending(&app, 2).await;

    // The client cancels the second: withdrawn from the operators' list at once.
    let reply = task_request(&client, json!(3), "tasks/cancel", &cancelled).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let left = pending(&app, 1).await;
    assert_eq!(left[0]["run_id"], expiring.as_str());
    let done = until_done(&client, &cancelled).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let run = app.admin.finished_run(&cancelled).await;
    assert_eq!(run["status"], "cancelled", "{run}");

    // No one decides the first: the sweeper refuses it once it expires.
    let done = until_done(&client, &expiring).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["isError"], true, "{done}");
    let run = app.admin.finished_run(&expiring).await;
    assert_eq!(
        (run["status"].as_str(), run["error_class"].as_str()),
        (Some("rejected"), Some("approval_denied")),
        "{run}"
    );
    assert_eq!(run["approval"]["state"], "expired", "{run}");
    pending(&app, 0).await;
    let (late, body) = app.admin.post(&format!("/v1/runs/{expiring}/approve"), json!({})).await;
    assert_eq!(late, 404, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(upstream.requests().is_empty(), "neither call reached the API");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_parked_call_is_the_same_call_and_runs_once() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    guarded_tool(&app, &upstream, "pay").await;
    let client = with_tasks(&app, &app.mcp_url);
    let call = |id: i64| {
        let body = client.body(
            json!(id),
            "tools/call",
            json!({"name": "pay", "arguments": {"cents": 500}}),
        );
        let mut headers = client.headers(&body);
        headers.push(("idempotency-key".into(), "pay-order-9".into()));
        (headers, body)
    };
    let (headers, body) = call(1);
    let first = client.send(&headers, &body).await;
    let (headers, body) = call(2);
    let retry = client.send(&headers, &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let task_id = first.body["result"]["taskId"].as_str().expect("task").to_string();
    assert_eq!(
        retry.body["result"]["taskId"],
        task_id.as_str(),
        "a retry follows the parked run: {}",
        retry.body
    );
    assert_eq!(pending(&app, 1).await.len(), 1, "parked once");
    let (status, _) = app.admin.post(&format!("/v1/runs/{task_id}/approve"), json!({})).await;
    assert_eq!(status, 200);
    let done = until_done(&client, &task_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["isError"], false, "{done}");
    app.admin.finished_run(&task_id).await;
    assert_eq!(upstream.requests().len(), 1, "the API was called once");
}

#[tokio::test(flavor = "multi_thread")]
async fn approval_settings_are_checked_and_unknown_runs_are_not_found() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    let (status, body) = app
        .admin
        .try_create_tool(
            app.project_id,
            ToolSpec::post("never_waits", &upstream.url(), "/echo")
                .field("approval", "operator")
                .field("task_support", "never"),
        )
        .await;
    assert_eq!(status, 422, "an operator approval needs a task to wait in: {body}");
    assert_eq!(body["error"]["field"], "task_support", "{body}");
    let unknown = uuid::Uuid::now_v7();
    let (status, body) = app.admin.post(&format!("/v1/runs/{unknown}/approve"), json!({})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app.admin.post("/v1/runs/not-a-uuid/approve", json!({})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app.admin.get(&format!("/v1/projects/{unknown}/approvals")).await;
    assert_eq!(status, 404, "{body}");
}

//! Client approvals (`approval = "client"`): the user confirms each call before it
//! reaches the API. On revision 2026-07-28 through a multi round-trip request
//! (an `InputRequiredResult` with a form elicitation and a sealed `requestState`);
//! in a 2025-11-25 session through `elicitation/create` on the call's stream, or a
//! clear refusal when the client cannot be asked.

use std::time::Duration;

use serde_json::{Value, json};
use tengine_tests::{
    TestApp, ToolSpec,
    mcp::{ModernClient, Reply, run_id, text},
    spawn_app, spawn_app_with,
    upstream::Upstream,
};

const CONFIRM: &str = "tengine_confirm";

fn asking_client(app: &TestApp, token: &str) -> ModernClient {
    let mut client = ModernClient::new(app.http.clone(), app.mcp_url.clone(), token.to_string());
    client.capabilities = json!({"elicitation": {}});
    client
}

async fn confirmed_tool(app: &TestApp, upstream: &Upstream, name: &str) {
    app.create_tool(ToolSpec::post(name, &upstream.url(), "/echo").field("approval", "client"))
        .await;
}

fn accept(confirm: bool) -> Value {
    json!({CONFIRM: {"action": "accept", "content": {"confirm": confirm}}})
}

async fn call(client: &ModernClient, id: &str, name: &str, arguments: Value, extra: Value) -> Reply {
    let mut params = json!({"name": name, "arguments": arguments});
    if let (Value::Object(params), Value::Object(extra)) = (&mut params, extra) {
        params.extend(extra);
    }
    client.request(json!(id), "tools/call", params).await
}

/// The `requestState` of an `InputRequiredResult`, after checking what it asks.
fn asked(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let result = &reply.body["result"];
    assert_eq!(result["resultType"], "input_required", "{result}");
    let request = &result["inputRequests"][CONFIRM];
    assert_eq!(request["method"], "elicitation/create", "{result}");
    assert_eq!(request["params"]["mode"], "form", "{result}");
    assert_eq!(
        request["params"]["requestedSchema"]["properties"]["confirm"]["type"], "boolean",
        "{result}"
    );
    result["requestState"].as_str().expect("requestState").to_string()
}

fn rpc_error(reply: &Reply, code: i64, says: &str) {
    assert_eq!(reply.body["error"]["code"], code, "{}", reply.body);
    let message = reply.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "expected {says:?} in: {message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_modern_call_reaches_the_api_only_after_the_user_confirms_it_once() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    confirmed_tool(&app, &upstream, "close_account").await;
    let args = json!({"account": "acme", "reason": "asked by owner"});

    // A client that cannot show a form is told which capability the tool needs.
    let plain = ModernClient::new(app.http.clone(), app.mcp_url.clone(), app.api_key.clone());
    let reply = call(&plain, "0", "close_account", args.clone(), json!({})).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], -32021, "{}", reply.body);
    assert!(reply.body["error"]["data"]["requiredCapabilities"]["elicitation"].is_object());

    let client = asking_client(&app, &app.api_key);
    let first = call(&client, "1", "close_account", args.clone(), json!({})).await;
    let state = asked(&first);
    let message = first.body["result"]["inputRequests"][CONFIRM]["params"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("close_account") && message.contains("POST /echo") && message.contains("acme"),
        "the user sees the tool, the request and the arguments: {message}"
    );
    assert!(upstream.requests().is_empty(), "asking never calls the API");

    // Re-issued without the answer: asked again, not an error (the spec's advice).
    let again = call(
        &client,
        "2",
        "close_account",
        args.clone(),
        json!({"requestState": state}),
    )
    .await;
    asked(&again);

    let confirmed = json!({"requestState": state, "inputResponses": accept(true)});
    let done = call(&client, "3", "close_account", args.clone(), confirmed.clone()).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["result"]["resultType"], "complete", "{}", done.body);
    assert_eq!(done.body["result"]["isError"], false, "{}", done.body);
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "the confirmed call reached the API once");
    assert_eq!(
        serde_json::from_slice::<Value>(&requests[0].body).expect("json body"),
        args
    );

    // The same state again: single use.
    let replay = call(&client, "4", "close_account", args.clone(), confirmed).await;
    rpc_error(&replay, -32602, "already used");
    assert_eq!(reply_field(&replay), "requestState");

    // Altered, presented by another credential, or for other arguments: refused.
    let fresh = asked(&call(&client, "5", "close_account", args.clone(), json!({})).await);
    let mut altered: Vec<char> = fresh.chars().collect();
    let i = 6;
    altered[i] = if altered[i] == 'A' { 'B' } else { 'A' };
    let altered: String = altered.into_iter().collect();
    let reply = call(
        &client,
        "6",
        "close_account",
        args.clone(),
        json!({"requestState": altered, "inputResponses": accept(true)}),
    )
    .await;
    rpc_error(&reply, -32602, "altered");
    let other_key = app.admin.create_api_key(app.project_id, &[]).await.key;
    let other = asking_client(&app, &other_key);
    let reply = call(
        &other,
        "7",
        "close_account",
        args.clone(),
        json!({"requestState": fresh, "inputResponses": accept(true)}),
    )
    .await;
    rpc_error(&reply, -32602, "another credential");
    let reply = call(
        &client,
        "8",
        "close_account",
        json!({"account": "globex"}),
        json!({"requestState": fresh, "inputResponses": accept(true)}),
    )
    .await;
    rpc_error(&reply, -32602, "another call");
    assert_eq!(upstream.requests().len(), 1, "none of these reached the API");

    // The user says no: the model reads it, history records it, the API never sees it.
    let declined = call(
        &client,
        "9",
        "close_account",
        args.clone(),
        json!({"requestState": fresh, "inputResponses": {CONFIRM: {"action": "decline"}}}),
    )
    .await;
    assert_eq!(declined.body["result"]["isError"], true, "{}", declined.body);
    assert!(text(&declined.body["result"]).contains("declined"), "{}", declined.body);
    let run = app.admin.finished_run(&run_id(&declined.body["result"])).await;
    assert_eq!(run["status"], "rejected", "{run}");
    assert_eq!(run["error_class"], "approval_denied", "{run}");
    let unticked = asked(&call(&client, "10", "close_account", args.clone(), json!({})).await);
    let reply = call(
        &client,
        "11",
        "close_account",
        args.clone(),
        json!({"requestState": unticked, "inputResponses": accept(false)}),
    )
    .await;
    assert_eq!(reply.body["result"]["isError"], true, "{}", reply.body);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.requests().len(), 1, "declined calls never reach the API");
}

fn reply_field(reply: &Reply) -> String {
    reply.body["error"]["data"]["field"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmed_call_re_issued_with_its_key_gets_the_first_run_and_an_expired_state_asks_again() {
    // Long enough for the confirmed call and its retry on a loaded machine.
    let app = spawn_app_with(&[("ingress.input_ttl_secs", "4")]).await;
    let upstream = Upstream::spawn(None).await;
    confirmed_tool(&app, &upstream, "transfer").await;
    let client = asking_client(&app, &app.api_key);
    let args = json!({"amount": 10});

    let state = asked(&call(&client, "1", "transfer", args.clone(), json!({})).await);
    let confirmed = json!({
        "requestState": state,
        "inputResponses": accept(true),
        "_meta": {"idempotencyKey": "transfer-10"}
    });
    let first = call(&client, "2", "transfer", args.clone(), confirmed.clone()).await;
    assert_eq!(first.body["result"]["isError"], false, "{}", first.body);
    // The stream broke; the client re-issues the same call with its key.
    let retry = call(&client, "3", "transfer", args.clone(), confirmed).await;
    assert_eq!(retry.body["result"]["isError"], false, "{}", retry.body);
    assert_eq!(run_id(&retry.body["result"]), run_id(&first.body["result"]));
    assert_eq!(upstream.requests().len(), 1, "one run, one request");

    // A confirmation left too long is asked again, saying why.
    let state = asked(&call(&client, "4", "transfer", json!({"amount": 20}), json!({})).await);
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let late = call(
        &client,
        "5",
        "transfer",
        json!({"amount": 20}),
        json!({"requestState": state, "inputResponses": accept(true)}),
    )
    .await;
    asked(&late);
    let message = late.body["result"]["inputRequests"][CONFIRM]["params"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("expired"), "{message}");
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_without_elicitation_is_refused_clearly() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    confirmed_tool(&app, &upstream, "close_account").await;
    let mut session = app.session();
    session.initialize().await;
    let reply = session
        .request("tools/call", json!({"name": "close_account", "arguments": {}}))
        .await;
    assert_eq!(reply.body["error"]["code"], -32600, "{}", reply.body);
    let message = reply.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("elicitation") && message.contains("2026-07-28"),
        "{message}"
    );
    assert!(upstream.requests().is_empty());
}

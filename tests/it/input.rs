//! Input the API asks for (revision 2026-07-28 multi round-trip requests): an
//! API answers `application/vnd.tengine.input-required+json`; the client gets an
//! `InputRequiredResult` with the requests it can answer and a sealed
//! `requestState`; the re-issued call carries the answers and the API's state to
//! the API in the signed `X-Tengine-Input` header, round after round.

use serde_json::{Value, json};
use tengine_tests::{
    TestApp, ToolSpec,
    mcp::{ModernClient, Reply, text},
    signing_secret, spawn_app,
    upstream::{Upstream, input_of},
};

fn client(app: &TestApp, capabilities: Value) -> ModernClient {
    let mut client = ModernClient::new(app.http.clone(), app.mcp_url.clone(), app.api_key.clone());
    client.capabilities = capabilities;
    client
}

async fn call(client: &ModernClient, id: &str, name: &str, extra: Value) -> Reply {
    let mut params = json!({"name": name, "arguments": {"plan": "pro"}});
    if let (Value::Object(params), Value::Object(extra)) = (&mut params, extra) {
        params.extend(extra);
    }
    client.request(json!(id), "tools/call", params).await
}

fn answer(key: &str, v: &str) -> Value {
    json!({key: {"action": "accept", "content": {"v": v}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_asks_round_after_round_and_gets_the_answers_signed() {
    let app = spawn_app().await;
    let secret = signing_secret();
    let upstream = Upstream::spawn(Some(secret.clone())).await;
    app.create_tool(ToolSpec::post("onboard", &upstream.url(), "/ask/2").auth_hmac(&secret))
        .await;
    // Elicitation only: the API's sampling request is not passed on.
    let client = client(&app, json!({"elicitation": {}}));

    let first = call(&client, "1", "onboard", json!({})).await;
    let result = &first.body["result"];
    assert_eq!(result["resultType"], "input_required", "{}", first.body);
    assert_eq!(
        result["inputRequests"]["step1"]["method"], "elicitation/create",
        "{result}"
    );
    assert!(
        result["inputRequests"].get("model").is_none(),
        "undeclared sampling is not asked: {result}"
    );
    assert!(
        result["_meta"]["tengine.dev/runId"].is_string(),
        "the round is a run: {result}"
    );
    let state = result["requestState"].as_str().expect("requestState").to_string();
    assert!(
        !state.contains("round-1"),
        "the API's state is not readable by the client"
    );
    assert_eq!(input_of(&upstream.requests()[0].header_map()), None);

    let mut responses = answer("step1", "a");
    responses["ignored"] = json!({"anything": true});
    let second = call(
        &client,
        "2",
        "onboard",
        json!({"inputResponses": responses, "requestState": state}),
    )
    .await;
    let result = &second.body["result"];
    assert_eq!(result["resultType"], "input_required", "{}", second.body);
    assert!(result["inputRequests"]["step2"].is_object(), "{result}");
    let requests = upstream.requests();
    let sent = input_of(&requests[1].header_map()).expect("X-Tengine-Input");
    assert_eq!(sent["state"], "round-1");
    assert_eq!(sent["inputResponses"]["step1"]["content"]["v"], "a");
    assert_eq!(
        requests[1].signature_valid,
        Some(true),
        "{:?}",
        requests[1].signature_error
    );

    let next = result["requestState"].as_str().expect("requestState").to_string();
    let done_params = json!({"inputResponses": answer("step2", "b"), "requestState": next});
    let done = call(&client, "3", "onboard", done_params.clone()).await;
    assert_eq!(done.body["result"]["resultType"], "complete", "{}", done.body);
    assert_eq!(done.body["result"]["isError"], false, "{}", done.body);
    let body: Value = serde_json::from_str(&text(&done.body["result"])).expect("json");
    assert_eq!(body["done"], true);
    assert_eq!(body["input"]["state"], "round-2");
    assert_eq!(upstream.requests().len(), 3);

    // Single use, untampered.
    let replay = call(&client, "4", "onboard", done_params).await;
    assert_eq!(replay.body["error"]["code"], -32602, "{}", replay.body);
    let mut altered: Vec<char> = state.chars().collect();
    altered[8] = if altered[8] == 'x' { 'y' } else { 'x' };
    let altered: String = altered.into_iter().collect();
    let tampered = call(
        &client,
        "5",
        "onboard",
        json!({"inputResponses": answer("step1", "a"), "requestState": altered}),
    )
    .await;
    assert_eq!(tampered.body["error"]["code"], -32602, "{}", tampered.body);
    assert_eq!(upstream.requests().len(), 3, "refused states never reach the API");

    // Answers without a state are the client's word: passed on, with no state.
    let unsealed = call(&client, "6", "onboard", json!({"inputResponses": answer("step2", "z")})).await;
    assert_eq!(
        unsealed.body["result"]["resultType"], "input_required",
        "{}",
        unsealed.body
    );
    let requests = upstream.requests();
    let sent = input_of(&requests[3].header_map()).expect("X-Tengine-Input");
    assert_eq!(sent["state"], Value::Null, "{sent}");
    assert_eq!(sent["inputResponses"]["step2"]["content"]["v"], "z");
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_that_cannot_answer_are_told_and_asking_is_bounded() {
    let app = spawn_app().await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("survey", &upstream.url(), "/ask/50"))
        .await;

    // No capability for what the API asks.
    let unable = call(&client(&app, json!({})), "1", "survey", json!({})).await;
    assert_eq!(unable.body["result"]["isError"], true, "{}", unable.body);
    assert!(
        text(&unable.body["result"]).contains("elicitation, sampling"),
        "{}",
        unable.body
    );

    // A 2025-11-25 session cannot take part.
    let mut session = app.session();
    session.initialize().await;
    let legacy = session.call("survey", json!({"plan": "pro"})).await;
    assert_eq!(legacy["isError"], true, "{legacy}");
    assert!(text(&legacy).contains("2026-07-28"), "{legacy}");

    // An API that never stops asking is cut off after a bounded number of rounds.
    let client = client(&app, json!({"elicitation": {}, "sampling": {}}));
    let mut extra = json!({});
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds <= 10, "asking never ended");
        let reply = call(&client, &format!("r{rounds}"), "survey", extra.clone()).await;
        let result = reply.body["result"].clone();
        if result["resultType"] != "input_required" {
            assert_eq!(result["isError"], true, "{result}");
            assert!(text(&result).contains("more than 8 times"), "{result}");
            break;
        }
        let key = result["inputRequests"]
            .as_object()
            .and_then(|r| r.keys().find(|k| k.starts_with("step")).cloned())
            .expect("a step");
        extra = json!({"inputResponses": answer(&key, "x"), "requestState": result["requestState"]});
    }
    assert_eq!(rounds, 8, "seven rounds asked, the eighth refused");
}

//! The official Python MCP SDK (2.x, default mode: it probes `server/discover`
//! first and falls back to `initialize`) lists and calls a real tool.

use std::process::Stdio;

use serde_json::{Value, json};
use tengine_tests::{signing_secret, spawn_app, upstream::Upstream};

async fn python(args: &[&str]) -> Value {
    let python = std::env::var("TENGINE_TEST_PYTHON").expect(
        "TENGINE_TEST_PYTHON must point at a Python with tests/python/requirements.txt installed; \
         deploy/local/test sets it up",
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/mcp_client.py");
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        // Relative paths in the variable are taken from the workspace root.
        tokio::process::Command::new(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(python))
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the Python client finishes within 60 s")
    .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python client failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("client output is JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_lists_and_calls_a_signed_tool() {
    let app = spawn_app().await;
    let secret = signing_secret();
    let upstream = Upstream::spawn(Some(secret.clone())).await;
    app.create_tool(json!({
        "name": "greet", "description": "Greets someone",
        "input_schema": {"type": "object", "properties": {"who": {"type": "string"}}, "required": ["who"]},
        "base_url": upstream.url(), "http_method": "POST", "endpoint_path": "/greet",
        "auth_strategy": "hmac_signature", "auth_secret": secret
    }))
    .await;
    let url = app.mcp_url.clone();
    let token = app.api_key.clone();

    let listed = python(&["--url", &url, "--token", &token, "list"]).await;
    assert_eq!(listed["tools"][0]["name"], "greet", "{listed}");
    assert_eq!(listed["tools"][0]["inputSchema"]["required"], json!(["who"]));

    let called = python(&["--url", &url, "--token", &token, "call", "greet", r#"{"who": "Ada"}"#]).await;
    assert_eq!(called["isError"], false, "{called}");
    let body: Value = serde_json::from_str(called["content"][0]["text"].as_str().expect("text")).expect("json");
    assert_eq!(body["body"], json!({"who": "Ada"}));
    let run_id = called["meta"]["tengine.dev/runId"]
        .as_str()
        .expect("run id")
        .to_string();

    let received = upstream.requests();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].signature_valid, Some(true));
    let run = app.finished_run(&run_id).await;
    assert_eq!(run["status"], "succeeded");

    let unknown = python(&["--url", &url, "--token", &token, "call", "nope", "{}"]).await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    let invalid = python(&["--url", &url, "--token", &token, "call", "greet", r#"{"who": 5}"#]).await;
    assert_eq!(invalid["isError"], true, "{invalid}");
}

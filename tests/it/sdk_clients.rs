//! The official MCP SDK clients against a real cluster: Python `mcp` 2.x in its
//! default mode (it probes `server/discover` and stays on revision 2026-07-28:
//! stateless requests, `subscriptions/listen`, cancellation by closing the
//! stream) and in its legacy mode (`initialize`, 2025-11-25 sessions), and the
//! TypeScript `@modelcontextprotocol/sdk` 1.x (2025-11-25). Each lists with
//! pagination, calls a signed tool, follows progress, receives
//! `tools/list_changed` and cancels a call. The TypeScript
//! `@modelcontextprotocol/client` 2.x with `versionNegotiation: 'auto'` does the
//! same on 2026-07-28.

use std::{path::PathBuf, process::Stdio};

use serde_json::{Value, json};
use tengine_tests::{TestApp, ToolSpec, signing_secret, spawn_app_with, upstream::Upstream};

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[derive(Clone, Copy, Debug)]
enum Sdk {
    /// Python `mcp` 2.x, default ("auto") mode.
    Python,
    /// Python `mcp` 2.x with `mode="legacy"`.
    PythonLegacy,
    TypeScript,
    /// TypeScript `@modelcontextprotocol/client` 2.x, `versionNegotiation: 'auto'`.
    TypeScript2,
}

impl Sdk {
    fn command(self) -> tokio::process::Command {
        match self {
            Sdk::Python | Sdk::PythonLegacy => {
                let python = std::env::var("TENGINE_TEST_PYTHON").expect(
                    "TENGINE_TEST_PYTHON must point at a Python with tests/python/requirements.txt installed; \
                     deploy/local/test sets it up",
                );
                // Relative paths in the variable are taken from the workspace root.
                let mut cmd = tokio::process::Command::new(workspace().join(python));
                cmd.arg(workspace().join("tests/python/mcp_client.py"));
                if matches!(self, Sdk::PythonLegacy) {
                    cmd.args(["--mode", "legacy"]);
                }
                cmd
            }
            Sdk::TypeScript => {
                let client = workspace().join("tests/typescript/client.mjs");
                assert!(
                    workspace()
                        .join("tests/typescript/node_modules/@modelcontextprotocol/sdk")
                        .exists(),
                    "run `npm ci` in tests/typescript (deploy/local/test does)"
                );
                let mut cmd = tokio::process::Command::new("node");
                cmd.arg(client);
                cmd
            }
            Sdk::TypeScript2 => {
                assert!(
                    workspace()
                        .join("tests/typescript/node_modules/@modelcontextprotocol/client")
                        .exists(),
                    "run `npm ci` in tests/typescript (deploy/local/test does)"
                );
                let mut cmd = tokio::process::Command::new("node");
                cmd.arg(workspace().join("tests/typescript/client2.mjs"));
                cmd
            }
        }
    }

    async fn run(self, app: &TestApp, args: &[&str]) -> Value {
        let mut cmd = self.command();
        cmd.args(["--url", &app.mcp_url, "--token", &app.api_key])
            .args(args)
            .stdin(Stdio::null());
        let output = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("the {self:?} client finishes within 60 s"))
            .unwrap_or_else(|e| panic!("run the {self:?} client: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{self:?} client failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{self:?} client output is JSON ({e}): {stdout}"))
    }
}

async fn exercise(sdk: Sdk) {
    // A page size of 2 makes listing follow nextCursor; one worker slot lets a call queue.
    let app = spawn_app_with(&[("ingress.tools_page_size", "2"), ("worker.concurrency", "1")]).await;
    let secret = signing_secret();
    let upstream = Upstream::spawn(Some(secret.clone())).await;
    app.create_tool(
        ToolSpec::post("greet", &upstream.url(), "/greet")
            .description("Greets someone")
            .schema(json!({"type": "object", "properties": {"who": {"type": "string"}}, "required": ["who"]}))
            .auth_hmac(&secret),
    )
    .await;
    for name in ["a_one", "a_two"] {
        app.create_tool(ToolSpec::get(name, &upstream.url(), "/slow/10").description(name))
            .await;
    }
    // Long enough to keep the only worker slot busy while an SDK client starts up,
    // even on a loaded machine.
    app.create_tool(
        ToolSpec::get("slow", &upstream.url(), "/slow/6000")
            .description("slow")
            .timeout_ms(10000),
    )
    .await;

    let listed = sdk.run(&app, &["list"]).await;
    // The revision the SDK settled on (the Python client reports it).
    let expected = match sdk {
        Sdk::Python | Sdk::TypeScript2 => Some("2026-07-28"),
        Sdk::PythonLegacy => Some("2025-11-25"),
        Sdk::TypeScript => None,
    };
    if let Some(expected) = expected {
        assert_eq!(listed["protocolVersion"], expected, "{listed}");
    }
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, vec!["a_one", "a_two", "greet", "slow"], "{listed}");

    let called = sdk.run(&app, &["call", "greet", r#"{"who": "Ada"}"#]).await;
    assert_eq!(called["isError"], false, "{called}");
    let body: Value = serde_json::from_str(called["content"][0]["text"].as_str().expect("text")).expect("json");
    assert_eq!(body["body"], json!({"who": "Ada"}));
    let run_id = called["meta"]["tengine.dev/runId"]
        .as_str()
        .expect("run id")
        .to_string();
    assert_eq!(upstream.requests()[0].signature_valid, Some(true));
    assert_eq!(app.admin.finished_run(&run_id).await["status"], "succeeded");

    let invalid = sdk.run(&app, &["call", "greet", r#"{"who": 5}"#]).await;
    assert_eq!(invalid["isError"], true, "{invalid}");
    let unknown = sdk.run(&app, &["call", "nope", "{}"]).await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");

    let progress = sdk.run(&app, &["progress", "greet", r#"{"who": "Bo"}"#]).await;
    assert_eq!(progress["progress"], json!([1, 2, 3]), "{progress}");
    assert_eq!(progress["isError"], false);

    let project = app.project_id.to_string();
    let changed = sdk
        .run(&app, &["list-changed", &app.admin.base_url, &app.admin.token, &project])
        .await;
    assert_eq!(changed["listChanged"], true, "{changed}");

    // Occupy the single worker slot, then cancel a queued call: it never runs.
    let mut busy = app.session();
    busy.initialize().await;
    let occupied = tokio::spawn(async move { busy.call("slow", json!({})).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = upstream.requests().len();
    let cancelled = sdk.run(&app, &["cancel", "slow", "{}"]).await;
    assert_eq!(cancelled["cancelled"], true, "{cancelled}");
    occupied.await.expect("join");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        upstream.requests().len(),
        before,
        "the cancelled call never reached the API"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk() {
    exercise(Sdk::Python).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_in_legacy_mode() {
    exercise(Sdk::PythonLegacy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn typescript_sdk() {
    exercise(Sdk::TypeScript).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn typescript_sdk_2_in_auto_negotiation() {
    exercise(Sdk::TypeScript2).await;
}

/// Client approvals with the SDKs' own elicitation handling (Python in both
/// modes, TypeScript 2.x): on 2026-07-28 the SDK answers the
/// `InputRequiredResult` and re-issues the call; in a legacy session it answers
/// `elicitation/create` on the call's stream.
#[tokio::test(flavor = "multi_thread")]
async fn sdk_clients_confirm_calls_the_user_must_approve() {
    let app = spawn_app_with(&[]).await;
    let upstream = Upstream::spawn(None).await;
    app.create_tool(ToolSpec::post("wire_money", &upstream.url(), "/echo").field("approval", "client"))
        .await;
    // An API that asks the user twice before it answers.
    app.create_tool(ToolSpec::post("onboard", &upstream.url(), "/ask/2"))
        .await;
    for (sdk, version, refusal) in [
        (Sdk::Python, "2026-07-28", -32021),
        (Sdk::PythonLegacy, "2025-11-25", -32600),
        (Sdk::TypeScript2, "2026-07-28", -32021),
    ] {
        let before = upstream.requests().len();
        let yes = sdk
            .run(&app, &["--confirm", "yes", "call", "wire_money", r#"{"cents": 500}"#])
            .await;
        assert_eq!(yes["protocolVersion"], version, "{yes}");
        assert_eq!(yes["isError"], false, "{sdk:?}: {yes}");
        assert_eq!(upstream.requests().len(), before + 1, "{sdk:?}: confirmed, sent once");
        let run_id = yes["meta"]["tengine.dev/runId"].as_str().expect("run id").to_string();
        assert_eq!(app.admin.finished_run(&run_id).await["status"], "succeeded");

        let no = sdk
            .run(&app, &["--confirm", "no", "call", "wire_money", r#"{"cents": 900}"#])
            .await;
        assert_eq!(no["isError"], true, "{sdk:?}: {no}");
        let text = no["content"][0]["text"].as_str().unwrap_or_default();
        assert!(text.contains("declined"), "{sdk:?}: {text}");

        // A client that cannot ask its user is refused, clearly.
        let unable = sdk.run(&app, &["call", "wire_money", r#"{"cents": 1}"#]).await;
        assert_eq!(unable["error"]["code"], refusal, "{sdk:?}: {unable}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(
            upstream.requests().len(),
            before + 1,
            "{sdk:?}: only the confirmed call reached the API"
        );

        // The API's own questions, two rounds, answered by the SDK's elicitation handler
        // (2026-07-28: InputRequiredResult rounds; 2025-11-25: elicitation/create on the stream).
        let onboarded = sdk.run(&app, &["--confirm", "yes", "call", "onboard", "{}"]).await;
        assert_eq!(onboarded["isError"], false, "{sdk:?}: {onboarded}");
        let text = onboarded["content"][0]["text"].as_str().unwrap_or_default();
        let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        assert_eq!(body["done"], true, "{sdk:?}: {text}");
        assert_eq!(body["input"]["state"], "round-2", "{sdk:?}: {text}");
        assert_eq!(
            upstream.requests().len(),
            before + 4,
            "{sdk:?}: three rounds, three requests"
        );
    }
}

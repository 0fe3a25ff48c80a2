//! Signed identity: the verification examples in docs/examples (Python with PyPI
//! `standardwebhooks`, Node with npm `standardwebhooks`) run as real upstream
//! processes. A member's call through MCP verifies in both signature forms, and
//! a captured signed request replayed with its path, query, method, body or an
//! identity header changed is refused by both forms in both examples.

use std::{path::PathBuf, process::Stdio, time::Duration};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{Value, json};
use tengine_tests::{
    TestApp, ToolSpec,
    mcp::{RawSession, run_id, text},
    signing_secret, spawn_app,
    upstream::{Recorded, Upstream},
};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A member with characters outside ASCII: header values travel as UTF-8 bytes
/// and receivers must hash the bytes they received.
const MEMBER: &str = "usér-42";
const EMAIL: &str = "usér@example.com";

#[derive(Clone, Copy, Debug)]
enum Example {
    Python,
    Node,
}

/// An example upstream process; killed on drop.
struct Running {
    example: Example,
    url: String,
    _child: tokio::process::Child,
    /// The Node example runs from a copy beside a link to the test's node_modules.
    dir: Option<PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Example {
    async fn spawn(self, secret: &str) -> Running {
        let examples = workspace().join("docs/examples");
        let (mut cmd, dir) = match self {
            Example::Python => {
                let python = std::env::var("TENGINE_TEST_PYTHON").expect(
                    "TENGINE_TEST_PYTHON must point at a Python with tests/python/requirements.txt installed; \
                     deploy/local/test sets it up",
                );
                // Relative paths in the variable are taken from the workspace root.
                let mut cmd = tokio::process::Command::new(workspace().join(python));
                cmd.arg(examples.join("verify_upstream.py"));
                (cmd, None)
            }
            Example::Node => {
                let modules = workspace().join("tests/typescript/node_modules");
                assert!(
                    modules.join("standardwebhooks").exists(),
                    "run `npm ci` in tests/typescript (deploy/local/test does)"
                );
                // ES modules resolve packages from the file's own directory (not
                // NODE_PATH), as they would in a user's project.
                let dir = std::env::temp_dir().join(format!("tengine-verify-{}", Uuid::new_v4().simple()));
                std::fs::create_dir_all(&dir).expect("temp dir");
                std::fs::copy(examples.join("verify_upstream.mjs"), dir.join("verify_upstream.mjs")).expect("copy");
                std::os::unix::fs::symlink(&modules, dir.join("node_modules")).expect("link node_modules");
                let mut cmd = tokio::process::Command::new("node");
                cmd.arg(dir.join("verify_upstream.mjs"));
                (cmd, Some(dir))
            }
        };
        // Its stderr to a file of its own, not inherited: a child killed on drop can
        // leave a shared pipe non-blocking (Node does), and the harness's own output
        // to it then fails.
        let log = std::env::temp_dir().join(format!("tengine-{self:?}-example-{}.log", Uuid::new_v4().simple()));
        let stderr = std::fs::File::create(&log).expect("the example's log file");
        let mut child = cmd
            .arg("0")
            .env("SIGNING_SECRET", secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start the {self:?} example: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::time::timeout(Duration::from_secs(30), BufReader::new(stdout).lines().next_line())
            .await
            .unwrap_or_else(|_| panic!("the {self:?} example starts within 30 s"))
            .expect("read stdout")
            .unwrap_or_else(|| {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("the {self:?} example exited before listening; its stderr:\n{said}")
            });
        let started: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{self:?}: {e}: {line}"));
        let port = started["listening"].as_u64().expect("port");
        Running {
            example: self,
            url: format!("http://127.0.0.1:{port}"),
            _child: child,
            dir,
        }
    }
}

/// A customer backend's key for member assertions.
struct Backend {
    kid: String,
    private_pem: String,
    public_pem: String,
}

impl Backend {
    async fn register(app: &TestApp) -> Self {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let backend = Self {
            kid: "k1".into(),
            private_pem: secret.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string(),
            public_pem: secret.public_key().to_public_key_pem(LineEnding::LF).expect("pem"),
        };
        app.admin
            .add_member_key(app.project_id, &backend.kid, &backend.public_pem)
            .await;
        backend
    }

    /// An MCP session of a member, through `POST /v1/member-sessions`.
    async fn member_session(&self, app: &TestApp) -> RawSession {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({"sub": MEMBER, "email": EMAIL, "roles": ["admin", "billing"], "iat": now,
                            "exp": now + 120, "jti": Uuid::new_v4().to_string(), "aud": app.project_id.to_string()});
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let assertion = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ec_pem(self.private_pem.as_bytes()).expect("key"),
        )
        .expect("sign");
        let response = app
            .http
            .post(format!("{}/v1/member-sessions", app.base_url))
            .bearer_auth(&app.api_key)
            .json(&json!({"member_assertion": assertion}))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 201);
        let minted: Value = response.json().await.expect("json");
        let token = minted["token"].as_str().expect("token").to_string();
        let mut session = RawSession::new(app.http.clone(), app.mcp_url.clone(), token);
        session.initialize().await;
        session
    }
}

/// A signed tool for members: the member id in the path, a query, a JSON body,
/// and the member's identity in headers.
fn order_tool(base_url: &str, secret: &str) -> ToolSpec {
    ToolSpec::post("order", base_url, "/orders/{member.id}")
        .description("Places an order")
        .schema(json!({"type": "object", "properties": {"note": {"type": "string"}, "qty": {"type": "integer"}}}))
        .query_template(json!({"note": "{note}"}))
        .auth_hmac(secret)
        .require_member()
        .inject_member_identity()
}

/// The same with GET and no body.
fn lookup_tool(base_url: &str, secret: &str) -> ToolSpec {
    ToolSpec::get("lookup", base_url, "/lookup")
        .description("Looks up")
        .schema(json!({"type": "object", "properties": {"q": {"type": "string"}}}))
        .auth_hmac(secret)
        .require_member()
        .inject_member_identity()
}

async fn verified_through_mcp(example: Example) {
    let app = spawn_app().await;
    let secret = signing_secret();
    let upstream = example.spawn(&secret).await;
    app.create_tool(order_tool(&upstream.url, &secret)).await;
    app.create_tool(lookup_tool(&upstream.url, &secret)).await;
    let mut session = Backend::register(&app).await.member_session(&app).await;

    let result = session.call("order", json!({"note": "a b&c", "qty": 2})).await;
    let answer: Value = serde_json::from_str(&text(&result)).unwrap_or(Value::Null);
    assert_eq!(result["isError"], false, "{example:?} refused: {result}");
    assert_eq!(answer["verified"], true, "{answer}");
    assert_eq!(
        answer["checks"],
        json!({"standard_webhooks": true, "webhook_id_binding": true, "tng3": true}),
        "{answer}"
    );
    assert_eq!(answer["method"], "POST");
    assert_eq!(answer["target"], "/orders/us%C3%A9r-42?note=a+b%26c", "{answer}");
    assert_eq!(answer["request_id"], run_id(&result).as_str());
    assert_eq!(
        answer["member"],
        json!({"id": MEMBER, "email": EMAIL, "roles": "admin,billing"})
    );

    let result = session.call("lookup", json!({"q": "x"})).await;
    let answer: Value = serde_json::from_str(&text(&result)).unwrap_or(Value::Null);
    assert_eq!(result["isError"], false, "{example:?} refused a GET: {result}");
    assert_eq!(answer["verified"], true, "{answer}");
    assert_eq!(answer["target"], "/lookup?q=x", "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_example_verifies_a_member_call() {
    verified_through_mcp(Example::Python).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_example_verifies_a_member_call() {
    verified_through_mcp(Example::Node).await;
}

/// A captured request, replayed as is or changed.
#[derive(Clone)]
struct Replay {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Replay {
    fn of(captured: &Recorded) -> Self {
        // The client sets these again for the new connection.
        let hop = ["host", "content-length", "connection", "transfer-encoding"];
        Self {
            method: captured.method.clone(),
            target: captured.target(),
            headers: captured
                .headers
                .iter()
                .filter(|(k, _)| !hop.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            body: captured.body.clone(),
        }
    }

    fn with_header(mut self, name: &str, value: Option<&str>) -> Self {
        self.headers.retain(|(k, _)| k != name);
        if let Some(value) = value {
            self.headers.push((name.into(), value.into()));
        }
        self
    }

    async fn send(&self, http: &reqwest::Client, running: &Running) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).expect("method");
        let mut request = http
            .request(method, format!("{}{}", running.url, self.target))
            .body(self.body.clone());
        for (k, v) in &self.headers {
            request = request.header(
                k.as_str(),
                reqwest::header::HeaderValue::from_bytes(v.as_bytes()).expect("value"),
            );
        }
        let response = request.send().await.expect("replay");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_target_method_body_or_identity_is_refused_by_both_examples() {
    let app = spawn_app().await;
    let secret = signing_secret();
    // Capture a real signed request (the recorder checks it too).
    let recorder = Upstream::spawn(Some(secret.clone())).await;
    app.create_tool(order_tool(&recorder.url(), &secret)).await;
    let mut session = Backend::register(&app).await.member_session(&app).await;
    let result = session.call("order", json!({"note": "ship", "qty": 1})).await;
    assert_eq!(result["isError"], false, "{result}");
    let captured = recorder.requests().pop().expect("captured");
    assert_eq!(captured.header("x-tengine-member-id"), Some(MEMBER));
    let original = Replay::of(&captured);
    assert_eq!(original.target, "/orders/us%C3%A9r-42?note=ship");

    let tampered: Vec<(&str, Replay)> = vec![
        (
            "path",
            Replay {
                target: "/orders/other?note=ship".into(),
                ..original.clone()
            },
        ),
        (
            "query",
            Replay {
                target: "/orders/us%C3%A9r-42?note=ship&qty=1000".into(),
                ..original.clone()
            },
        ),
        (
            "method",
            Replay {
                method: "PUT".into(),
                ..original.clone()
            },
        ),
        (
            "body",
            Replay {
                body: br#"{"note":"ship","qty":1000}"#.to_vec(),
                ..original.clone()
            },
        ),
        (
            "member id",
            original.clone().with_header("x-tengine-member-id", Some("other")),
        ),
        (
            "member id removed",
            original.clone().with_header("x-tengine-member-id", None),
        ),
        (
            "member email",
            original
                .clone()
                .with_header("x-tengine-member-email", Some("boss@example.com")),
        ),
        (
            "member roles",
            original
                .clone()
                .with_header("x-tengine-member-roles", Some("admin,billing,owner")),
        ),
        (
            "integration id",
            original
                .clone()
                .with_header("x-tengine-integration-id", Some(&Uuid::new_v4().to_string())),
        ),
        (
            "project id",
            original
                .clone()
                .with_header("x-tengine-project-id", Some(&Uuid::new_v4().to_string())),
        ),
        (
            "request id",
            original
                .clone()
                .with_header("x-tengine-request-id", Some(&Uuid::new_v4().to_string())),
        ),
    ];
    let http = reqwest::Client::new();
    for example in [Example::Python, Example::Node] {
        let running = example.spawn(&secret).await;
        // The replay itself is faithful: unchanged, it verifies.
        let (status, answer) = original.send(&http, &running).await;
        assert_eq!(
            (status, &answer["verified"]),
            (200, &json!(true)),
            "{:?}: {answer}",
            running.example
        );
        for (what, replay) in &tampered {
            let (status, answer) = replay.send(&http, &running).await;
            assert_eq!(status, 401, "{:?} accepted a changed {what}: {answer}", running.example);
            // Each form catches it on its own: the Standard Webhooks form through
            // its signature or the webhook-id binding, and tng3.
            let checks = &answer["checks"];
            assert!(
                checks["standard_webhooks"] == false || checks["webhook_id_binding"] == false,
                "{:?}: the Standard Webhooks form missed a changed {what}: {answer}",
                running.example
            );
            assert_eq!(
                checks["tng3"], false,
                "{:?}: tng3 missed a changed {what}: {answer}",
                running.example
            );
        }
    }
}

/// A re-issued call's answers (`X-Tengine-Input`) are signed on their own line:
/// both examples verify the request as sent, and refuse it with the answers
/// changed or removed.
#[tokio::test(flavor = "multi_thread")]
async fn the_answers_of_an_input_round_are_signed_and_verified_by_both_examples() {
    let app = spawn_app().await;
    let secret = signing_secret();
    let recorder = Upstream::spawn(Some(secret.clone())).await;
    app.create_tool(ToolSpec::post("onboard", &recorder.url(), "/ask/1").auth_hmac(&secret))
        .await;
    let mut client = tengine_tests::mcp::ModernClient::new(app.http.clone(), app.mcp_url.clone(), app.api_key.clone());
    client.capabilities = json!({"elicitation": {}, "sampling": {}});
    let asked = client
        .request(json!(1), "tools/call", json!({"name": "onboard", "arguments": {}}))
        .await;
    let state = asked.body["result"]["requestState"]
        .as_str()
        .expect("asked")
        .to_string();
    let answers = json!({"step1": {"action": "accept", "content": {"v": "é"}}});
    let done = client
        .request(
            json!(2),
            "tools/call",
            json!({"name": "onboard", "arguments": {}, "inputResponses": answers, "requestState": state}),
        )
        .await;
    assert_eq!(done.body["result"]["isError"], false, "{}", done.body);
    let captured = recorder.requests().pop().expect("captured");
    assert!(captured.header("x-tengine-input").is_some());
    assert_eq!(captured.signature_valid, Some(true), "{:?}", captured.signature_error);
    let original = Replay::of(&captured);
    let other = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        r#"{"inputResponses":{"step1":{"action":"accept","content":{"v":"x"}}},"state":"round-1"}"#,
    );
    let tampered = [
        ("answers", original.clone().with_header("x-tengine-input", Some(&other))),
        ("answers removed", original.clone().with_header("x-tengine-input", None)),
    ];
    let http = reqwest::Client::new();
    for example in [Example::Python, Example::Node] {
        let running = example.spawn(&secret).await;
        let (status, answer) = original.send(&http, &running).await;
        assert_eq!(status, 200, "{example:?} refused the request as sent: {answer}");
        for (what, replay) in &tampered {
            let (status, answer) = replay.send(&http, &running).await;
            assert_eq!(status, 401, "{example:?} accepted changed {what}: {answer}");
            assert_eq!(answer["checks"]["tng3"], false, "{example:?}: {answer}");
        }
    }
}

//! One client for the admin API, used by every test: against the in-process
//! cluster (`TestApp::admin`) and against real `tengine` processes alike.
//! Requests answer `(status, body)`; the typed helpers that create something
//! assert it was created, those that change something leave the status to the test.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::tool_spec::ToolSpec;

/// Run statuses after which a run does not change.
const TERMINAL: &[&str] = &["succeeded", "failed", "rejected", "cancelled", "revoked"];

/// How long a test waits for history (a finished run, the projector catching up).
const HISTORY_WAIT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct AdminClient {
    pub http: reqwest::Client,
    /// `http://host:port`, without a trailing slash.
    pub base_url: String,
    pub token: String,
}

/// A created API key: its id, the secret (shown once), and the whole answer.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub id: Uuid,
    pub key: String,
    pub body: Value,
}

fn id_of(body: &Value) -> Uuid {
    body["id"]
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok())
        .unwrap_or_else(|| panic!("an id in {body}"))
}

impl AdminClient {
    pub fn new(http: reqwest::Client, base_url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            http,
            base_url: base_url.into(),
            token: token.into(),
        }
    }

    /// The status and the body: JSON, or the text as a JSON string when it is not JSON.
    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.request(Method::DELETE, path, None).await
    }

    pub async fn create_project(&self, name: &str) -> Uuid {
        let (status, body) = self.post("/v1/projects", json!({"name": name})).await;
        assert_eq!(status, 201, "create project: {body}");
        id_of(&body)
    }

    pub async fn patch_project(&self, project: Uuid, body: Value) -> (u16, Value) {
        self.patch(&format!("/v1/projects/{project}"), body).await
    }

    /// A key of the project's default integration; `scopes` empty for the default (`call`).
    pub async fn create_api_key(&self, project: Uuid, scopes: &[&str]) -> ApiKey {
        let mut request = json!({"name": "k"});
        if !scopes.is_empty() {
            request["scopes"] = json!(scopes);
        }
        let (status, body) = self.post(&format!("/v1/projects/{project}/api-keys"), request).await;
        assert_eq!(status, 201, "create key: {body}");
        ApiKey {
            id: id_of(&body),
            key: body["key"].as_str().expect("key").to_string(),
            body,
        }
    }

    pub async fn revoke_api_key(&self, project: Uuid, key_id: Uuid) -> (u16, Value) {
        self.delete(&format!("/v1/projects/{project}/api-keys/{key_id}")).await
    }

    /// Registers a tool; panics unless it is created.
    pub async fn create_tool(&self, project: Uuid, spec: ToolSpec) -> Value {
        let (status, body) = self.try_create_tool(project, spec).await;
        assert_eq!(status, 201, "create tool: {body}");
        body
    }

    /// Registers a tool and answers whatever the API answers (for refusals).
    pub async fn try_create_tool(&self, project: Uuid, spec: ToolSpec) -> (u16, Value) {
        self.post(&format!("/v1/projects/{project}/tools"), spec.into()).await
    }

    pub async fn patch_tool(&self, project: Uuid, name: &str, body: Value) -> (u16, Value) {
        self.patch(&format!("/v1/projects/{project}/tools/{name}"), body).await
    }

    /// Registers a backend's public key for member assertions; panics unless it is added.
    pub async fn add_member_key(&self, project: Uuid, kid: &str, public_pem: &str) {
        let (status, body) = self
            .post(
                &format!("/v1/projects/{project}/member-keys"),
                json!({"kid": kid, "public_key": public_pem}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// Waits until the run's history row reaches a terminal status.
    pub async fn finished_run(&self, run_id: &str) -> Value {
        let deadline = Instant::now() + HISTORY_WAIT;
        loop {
            let (status, run) = self.get(&format!("/v1/runs/{run_id}")).await;
            if status == 200
                && run["status"].as_str().is_some_and(|s| TERMINAL.contains(&s))
                && !run["finished_at"].is_null()
            {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} did not reach a terminal status in history: {status} {run}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the projector has applied every event in the log.
    pub async fn wait_for_projector(&self) {
        let deadline = Instant::now() + HISTORY_WAIT;
        loop {
            let (_, health) = self.get("/v1/health").await;
            if health["projector_lag_events"] == json!(0) {
                return;
            }
            assert!(Instant::now() < deadline, "the projector did not catch up: {health}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

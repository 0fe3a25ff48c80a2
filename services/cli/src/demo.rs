//! The demo: a small upstream API and the seeding of a demo project that calls it.
//! The demo tools are HMAC-signed; the demo upstream checks each signature and
//! answers 401 when it does not verify.

use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use anyhow::Context;
use axum::{
    Json, Router,
    body::Bytes,
    extract::Query,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tengine_core::signing::{self, SigningKey};

use crate::admin::AdminClient;

/// The demo tools' signing secret, derived from the master key so that the demo
/// upstream and the seeding agree without another setting.
pub fn demo_secret(master_key: &[u8; 32]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(master_key).expect("any key length");
    mac.update(b"tengine demo upstream signing secret");
    format!(
        "{}{}",
        signing::SECRET_PREFIX,
        STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn verified(headers: &HeaderMap, body: &[u8], key: &SigningKey) -> bool {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, ts) = (get(signing::HEADER_WEBHOOK_ID), get(signing::HEADER_WEBHOOK_TIMESTAMP));
    let Ok(timestamp) = ts.parse::<i64>() else { return false };
    if (chrono::Utc::now().timestamp() - timestamp).abs() > 300 {
        return false;
    }
    let expected = key.standard_webhooks(&id, timestamp, body);
    get(signing::HEADER_WEBHOOK_SIGNATURE).split(' ').any(|s| s == expected)
}

pub async fn serve_upstream(listen: SocketAddr, secret: String) -> anyhow::Result<()> {
    let key = SigningKey::parse(&secret).map_err(|e| anyhow::anyhow!(e))?;
    let echo_key = key.clone();
    let app = Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/echo",
            post(move |headers: HeaderMap, body: Bytes| {
                let key = echo_key.clone();
                async move {
                    if !verified(&headers, &body, &key) {
                        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "bad signature"}))).into_response();
                    }
                    let received: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let request_id = headers.get(signing::HEADER_REQUEST_ID).and_then(|v| v.to_str().ok());
                    Json(json!({"echo": received, "request_id": request_id, "signature": "verified"})).into_response()
                }
            }),
        )
        .route(
            "/add",
            get(move |headers: HeaderMap, Query(q): Query<BTreeMap<String, String>>| {
                let key = key.clone();
                async move {
                    if !verified(&headers, b"", &key) {
                        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "bad signature"}))).into_response();
                    }
                    let num = |k: &str| q.get(k).and_then(|v| v.parse::<f64>().ok());
                    match (num("a"), num("b")) {
                        (Some(a), Some(b)) => Json(json!({"sum": a + b})).into_response(),
                        _ => (
                            StatusCode::BAD_REQUEST,
                            Json(json!({"error": "a and b must be numbers"})),
                        )
                            .into_response(),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the demo upstream on {listen}"))?;
    tracing::info!(%listen, "demo upstream listening");
    axum::serve(listener, app).await?;
    Ok(())
}

fn demo_tools(upstream: &str, secret: &str) -> Vec<Value> {
    vec![
        json!({
            "name": "echo",
            "description": "Echoes a message back from the demo API (signed with HMAC).",
            "input_schema": {
                "type": "object",
                "properties": {"message": {"type": "string", "description": "Text to echo"}},
                "required": ["message"]
            },
            "base_url": upstream,
            "http_method": "POST",
            "endpoint_path": "/echo",
            "auth_strategy": "hmac_signature",
            "auth_secret": secret,
            "timeout_ms": 5000
        }),
        json!({
            "name": "add",
            "description": "Adds two numbers using the demo API.",
            "input_schema": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"]
            },
            "base_url": upstream,
            "http_method": "GET",
            "endpoint_path": "/add",
            "auth_strategy": "hmac_signature",
            "auth_secret": secret,
            "timeout_ms": 5000
        }),
    ]
}

fn read_env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Creates (or reuses) the demo project, its key and tools; writes the env file.
pub async fn seed(admin: &AdminClient, upstream: &str, secret: &str, env_file: &Path) -> anyhow::Result<()> {
    let previous = read_env_file(env_file);
    let mut project_id = None;
    let mut api_key = None;
    if let (Some(pid), Some(key)) = (previous.get("TENGINE_DEMO_PROJECT_ID"), previous.get("TENGINE_API_KEY"))
        && admin.get(&format!("/v1/projects/{pid}")).await.is_ok()
    {
        let keys = admin.get(&format!("/v1/projects/{pid}/api-keys")).await?;
        let live = keys["api_keys"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|k| k["revoked_at"].is_null() && k["display_prefix"].as_str().is_some_and(|p| key.starts_with(p)));
        project_id = Some(pid.clone());
        if live {
            api_key = Some(key.clone());
        }
    }
    let project_id = match project_id {
        Some(id) => id,
        None => admin.post("/v1/projects", &json!({"name": "demo"})).await?["id"]
            .as_str()
            .context("project id missing")?
            .to_string(),
    };
    let api_key = match api_key {
        Some(key) => key,
        None => admin
            .post(&format!("/v1/projects/{project_id}/api-keys"), &json!({"name": "demo"}))
            .await?["key"]
            .as_str()
            .context("key missing")?
            .to_string(),
    };
    for tool in demo_tools(upstream, secret) {
        let name = tool["name"].as_str().unwrap_or_default();
        let path = format!("/v1/projects/{project_id}/tools/{name}");
        if admin.get(&path).await.is_ok() {
            admin.put(&path, &tool).await?;
        } else {
            admin.post(&format!("/v1/projects/{project_id}/tools"), &tool).await?;
        }
    }
    let lines = [
        format!("TENGINE_MCP_URL={}/mcp", admin.base()),
        format!("TENGINE_ADMIN_URL={}", admin.base()),
        format!("TENGINE_ADMIN_TOKEN={}", admin.token()),
        format!("TENGINE_API_KEY={api_key}"),
        format!("TENGINE_DEMO_PROJECT_ID={project_id}"),
    ];
    if let Some(dir) = env_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(env_file, lines.join("\n") + "\n").with_context(|| format!("writing {}", env_file.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(env_file, std::fs::Permissions::from_mode(0o600))?;
    }
    println!("{}", lines.join("\n"));
    Ok(())
}

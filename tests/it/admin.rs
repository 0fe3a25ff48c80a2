//! The admin API: authentication, validation with field paths, tool lifecycle.

use serde_json::json;
use tengine_tests::{ADMIN_TOKEN, ToolSpec, spawn_app};

/// The spec every validation case changes one field of.
fn valid_tool() -> ToolSpec {
    ToolSpec::get("get_item", "https://api.example.com", "/items/{id}")
        .description("d")
        .schema(json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}))
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_token_is_required() {
    let app = spawn_app().await;
    // Raw requests, not the admin client: the token sent is what this tests.
    for token in [None, Some("wrong"), Some(app.api_key.as_str())] {
        let mut request = app.http.get(format!("{}/v1/projects", app.base_url));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.expect("get");
        assert_eq!(response.status().as_u16(), 401);
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let ok = app
        .http
        .get(format!("{}/v1/projects", app.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_validation_names_the_field() {
    let app = spawn_app().await;
    let path = format!("/v1/projects/{}/tools", app.project_id);
    let cases = [
        (valid_tool().field("name", "bad name"), "name"),
        (valid_tool().field("base_url", "ftp://x"), "base_url"),
        (
            valid_tool().field("base_url", "https://api.example.com/v1?x=1"),
            "base_url",
        ),
        (valid_tool().field("endpoint_path", "/items/{nope}"), "endpoint_path"),
        // Paths the URL parser would rewrite: every call would be refused.
        (
            valid_tool().field("endpoint_path", "/a/%2e%2e/items/{id}"),
            "endpoint_path",
        ),
        (valid_tool().field("endpoint_path", "/ünï/{id}"), "endpoint_path"),
        (valid_tool().schema(json!({"type": "array"})), "input_schema.type"),
        (
            valid_tool().schema(json!({"type": "object", "properties": {"id": {"type": 12}}})),
            "input_schema",
        ),
        (
            valid_tool().headers_template(json!({"Host": "evil"})),
            "headers_template.Host",
        ),
        (valid_tool().auth_hmac("plain"), "auth_secret"),
        (valid_tool().timeout_ms(1_000_000), "timeout_ms"),
    ];
    for (spec, field) in cases {
        let (status, body) = app.admin.try_create_tool(app.project_id, spec).await;
        assert_eq!(status, 422, "{field}: {body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    // Inline, not a ToolSpec: a body that is no spec at all (an unknown field, the
    // required ones missing) is refused as malformed (400), not field by field.
    let (status, body) = app.admin.post(&path, json!({"name": "x", "unexpected": 1})).await;
    assert_eq!(status, 400, "{body}");
    // Raw: the point is a body that is not JSON.
    let (status, _) = app
        .http
        .post(format!("{}{path}", app.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .body("{not json")
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .expect("post");
    assert_eq!(status, 400);
    let (status, _) = app.admin.get("/v1/projects/not-a-uuid/tools").await;
    assert_eq!(status, 400);
    let (status, _) = app
        .admin
        .get(&format!("/v1/projects/{}/tools", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_lifecycle() {
    let app = spawn_app().await;
    let base = format!("/v1/projects/{}/tools", app.project_id);
    let spec = valid_tool().auth_bearer("top-secret-value");
    let created = app.create_tool(spec.clone()).await;
    assert_eq!(created["version"], 1);
    assert_eq!(created["enabled"], true);
    let (status, dup) = app.admin.try_create_tool(app.project_id, spec).await;
    assert_eq!(status, 409, "{dup}");

    let (status, got) = app.admin.get(&format!("{base}/get_item")).await;
    assert_eq!(status, 200);
    assert!(
        !got.to_string().contains("top-secret-value"),
        "secrets are never returned"
    );

    // PUT without a secret keeps the stored one.
    let replaced = valid_tool().description("new").field("auth_strategy", "static_bearer");
    let (status, put) = app.admin.put(&format!("{base}/get_item"), replaced.into()).await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(
        (put["version"].as_i64(), put["has_auth_secret"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(put["description"], "new");

    let (status, patched) = app
        .admin
        .patch_tool(app.project_id, "get_item", json!({"enabled": false}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (patched["enabled"].as_bool(), patched["version"].as_i64()),
        (Some(false), Some(3))
    );
    let (status, _) = app
        .admin
        .patch_tool(app.project_id, "get_item", json!({"timeout_ms": 1}))
        .await;
    assert_eq!(status, 422);

    let (_, listed) = app.admin.get(&base).await;
    assert_eq!(listed["tools"].as_array().map(Vec::len), Some(1));
    let (status, _) = app.admin.delete(&format!("{base}/get_item")).await;
    assert_eq!(status, 204);
    let (status, _) = app.admin.get(&format!("{base}/get_item")).await;
    assert_eq!(status, 404);
    let (status, _) = app.admin.delete(&format!("{base}/get_item")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_are_shown_once_and_listed_without_secret() {
    let app = spawn_app().await;
    let path = format!("/v1/projects/{}/api-keys", app.project_id);
    let (status, listed) = app.admin.get(&path).await;
    assert_eq!(status, 200);
    let text = listed.to_string();
    assert!(!text.contains(&app.api_key), "the key is not listed");
    assert!(text.contains(&app.api_key[..12]), "its display prefix is");
    let stored: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT key_hash FROM api_keys")
        .fetch_all(&app.pool)
        .await
        .expect("rows");
    assert!(
        stored
            .iter()
            .all(|(h,)| h.len() == 32 && !String::from_utf8_lossy(h).contains("tengine_"))
    );
    let (status, _) = app.admin.revoke_api_key(app.project_id, uuid::Uuid::now_v7()).await;
    assert_eq!(status, 404);
}

/// Bad input to the admin API is answered in its JSON shape with what to fix:
/// page sizes outside their range (not quietly clamped), a body larger than the
/// endpoint takes (axum's own answer is plain text), a long bad id (not echoed whole).
#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_pages_oversized_bodies_and_long_ids_get_clear_json_errors() {
    let app = spawn_app().await;
    let p = app.project_id;
    for (path, max) in [
        (format!("/v1/projects/{p}/runs"), 500),
        (format!("/v1/projects/{p}/tools"), 1000),
    ] {
        for limit in ["0".to_string(), "-1".to_string(), (max + 1).to_string()] {
            let (status, body) = app.admin.get(&format!("{path}?limit={limit}")).await;
            assert_eq!(status, 400, "{path}?limit={limit}: {body}");
            assert_eq!(body["error"]["code"], "invalid_request", "{body}");
            let message = body["error"]["message"].as_str().expect("message");
            assert!(message.contains(&format!("between 1 and {max}")), "{message}");
        }
        let (status, body) = app.admin.get(&format!("{path}?limit={max}")).await;
        assert_eq!(status, 200, "{body}");
    }

    let huge = format!(r#"{{"name": "x", "description": "{}"}}"#, "a".repeat(3 << 20));
    let response = app
        .http
        .post(format!("{}/v1/projects/{p}/tools", app.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    assert!(
        body["error"]["message"].as_str().expect("message").contains("2 MiB"),
        "{body}"
    );

    let many: Vec<String> = (0..257).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)).collect();
    let (status, body) = app
        .admin
        .patch(&format!("/v1/projects/{p}"), json!({"outbound_allowlist": many}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "outbound_allowlist", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("at most 256"),
        "{body}"
    );

    let long = "z".repeat(60_000);
    let (status, body) = app.admin.get(&format!("/v1/projects/{long}/tools")).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("is not a valid project id") && message.len() < 300,
        "{message}"
    );
}

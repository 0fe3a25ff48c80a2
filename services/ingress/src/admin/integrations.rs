//! Integrations: a project's groups of API keys (each optionally limited to some
//! tools), with ready-to-paste client configuration; and keys created in one.

use std::sync::Arc;

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tengine_control::{
    api_keys,
    integrations::{self, Integration},
};
use tengine_core::domain::{FieldError, validate_name, validate_tool_name};
use utoipa::ToSchema;

use super::{
    api_keys::{CreatedKey, NewApiKey},
    auth::Admin,
    error::{ApiResult, not_found_as},
    extract::{Ids, IntegrationPath, JsonBody, OptionalJsonBody, ProjectPath},
    openapi::{AdminErrors, BadRequest, InvalidField, NotFound, TooLarge},
};
use crate::AppState;

const TAG: &str = "integrations";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIntegration {
    /// 1–200 characters, no control characters.
    name: String,
    /// Tool names the integration's keys may call; omitted or `null`: all tools.
    #[serde(default)]
    allowed_tools: Option<Vec<String>>,
}

/// Ready-to-paste client configuration for the integration's MCP endpoint.
#[derive(Serialize, ToSchema)]
pub struct ClientConfig {
    /// An `mcp.json` entry (`mcpServers`).
    pub(crate) mcp_json: Value,
    /// The Anthropic API's `mcp_servers` parameter.
    pub(crate) anthropic_mcp_servers: Value,
    /// A Python MCP client snippet.
    pub(crate) python: String,
}

/// An integration with its client configuration (`<TENGINE_API_KEY>` as the key).
#[derive(Serialize, ToSchema)]
pub struct IntegrationView {
    #[serde(flatten)]
    integration: Integration,
    client_config: ClientConfig,
}

#[derive(Serialize, ToSchema)]
pub struct IntegrationList {
    integrations: Vec<Integration>,
}

/// Client configuration for `integration`. `key` is the API key when it is being
/// shown (at creation), else a placeholder.
pub(crate) fn client_config(st: &AppState, integration: &Integration, key: Option<&str>) -> ClientConfig {
    let url = mcp_url(st);
    let key = key.unwrap_or(KEY_PLACEHOLDER);
    let name = server_name(integration);
    ClientConfig {
        mcp_json: json!({"mcpServers": {name.clone(): {"type": "http", "url": url, "headers": {"Authorization": format!("Bearer {key}")}}}}),
        anthropic_mcp_servers: json!([{"type": "url", "url": url, "name": name, "authorization_token": key}]),
        python: format!(
            "import httpx2\nfrom mcp import Client\nfrom mcp.client.streamable_http import streamable_http_client\n\n\
             async with httpx2.AsyncClient(headers={{\"Authorization\": \"Bearer {key}\"}}) as http:\n    \
             async with Client(streamable_http_client(\"{url}\", http_client=http)) as client:\n        \
             tools = await client.list_tools()\n"
        ),
    }
}

/// What a snippet shows where the key goes, except in the answer that creates it.
pub(crate) const KEY_PLACEHOLDER: &str = "<TENGINE_API_KEY>";

/// The MCP endpoint clients with an API key connect to.
pub(crate) fn mcp_url(st: &AppState) -> String {
    format!("{}/mcp", st.config.ingress.public_url.trim_end_matches('/'))
}

/// The name a client lists the integration's server under: `tengine-<slug>`.
pub(crate) fn server_name(integration: &Integration) -> String {
    let slug: String = integration
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("tengine-{slug}")
}

fn view(st: &AppState, integration: Integration) -> IntegrationView {
    IntegrationView {
        client_config: client_config(st, &integration, None),
        integration,
    }
}

/// Create an integration; answers it with its `client_config`.
#[utoipa::path(post, path = "/v1/projects/{project_id}/integrations", operation_id = "create_integration", tag = TAG, security(("admin_token" = [])),
    params(ProjectPath), request_body = NewIntegration,
    responses((status = 201, body = IntegrationView), AdminErrors, BadRequest, NotFound, InvalidField, TooLarge))]
pub async fn create(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
    JsonBody(input): JsonBody<NewIntegration>,
) -> ApiResult<(StatusCode, Json<IntegrationView>)> {
    let name = input.name.trim();
    validate_name("name", name, false)?;
    for tool in input.allowed_tools.iter().flatten() {
        validate_tool_name(tool).map_err(|e| FieldError {
            field: "allowed_tools".into(),
            message: format!("`{tool}`: {}", e.message),
        })?;
    }
    let integration = integrations::create(&st.pool, project_id, name, input.allowed_tools.as_deref())
        .await
        .map_err(not_found_as("project"))?;
    Ok((StatusCode::CREATED, Json(view(&st, integration))))
}

/// List a project's integrations.
#[utoipa::path(get, path = "/v1/projects/{project_id}/integrations", operation_id = "list_integrations", tag = TAG, security(("admin_token" = [])),
    params(ProjectPath),
    responses((status = 200, body = IntegrationList), AdminErrors, BadRequest, NotFound))]
pub async fn list(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
) -> ApiResult<Json<IntegrationList>> {
    let integrations = integrations::list(&st.pool, project_id)
        .await
        .map_err(not_found_as("project"))?;
    Ok(Json(IntegrationList { integrations }))
}

/// Read an integration, with its `client_config`.
#[utoipa::path(get, path = "/v1/projects/{project_id}/integrations/{integration_id}", operation_id = "get_integration", tag = TAG,
    security(("admin_token" = [])), params(IntegrationPath),
    responses((status = 200, body = IntegrationView), AdminErrors, BadRequest, NotFound))]
pub async fn get(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(IntegrationPath {
        project_id,
        integration_id,
    }): Ids<IntegrationPath>,
) -> ApiResult<Json<IntegrationView>> {
    let integration = integrations::get(&st.pool, project_id, integration_id)
        .await
        .map_err(not_found_as("integration"))?;
    Ok(Json(view(&st, integration)))
}

/// Delete an integration: its keys and member sessions stop working at once.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/integrations/{integration_id}", operation_id = "delete_integration", tag = TAG,
    security(("admin_token" = [])), params(IntegrationPath),
    responses((status = 204, description = "deleted"), AdminErrors, BadRequest, NotFound))]
pub async fn delete(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(IntegrationPath {
        project_id,
        integration_id,
    }): Ids<IntegrationPath>,
) -> ApiResult<StatusCode> {
    integrations::delete(&st.pool, project_id, integration_id)
        .await
        .map_err(not_found_as("integration"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create an API key in this integration; answers it with `client_config` filled in with the key.
#[utoipa::path(post, path = "/v1/projects/{project_id}/integrations/{integration_id}/api-keys", operation_id = "create_integration_key", tag = TAG,
    security(("admin_token" = [])), params(IntegrationPath),
    request_body(content = Option<NewApiKey>, description = "optional: an empty body takes the defaults; `integration_id` is the path's"),
    responses((status = 201, body = CreatedKey), AdminErrors, BadRequest, NotFound, InvalidField, TooLarge))]
pub async fn create_key(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(IntegrationPath {
        project_id,
        integration_id,
    }): Ids<IntegrationPath>,
    OptionalJsonBody(input): OptionalJsonBody<NewApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    input.checked_name()?;
    let integration = integrations::get(&st.pool, project_id, integration_id)
        .await
        .map_err(not_found_as("integration"))?;
    let scopes = input.scopes()?;
    let (record, key) = api_keys::create(&st.pool, project_id, Some(integration_id), &input.name, &scopes)
        .await
        .map_err(not_found_as("integration"))?;
    let config = client_config(&st, &integration, Some(&key));
    Ok((StatusCode::CREATED, Json(CreatedKey::new(record, key, Some(config)))))
}

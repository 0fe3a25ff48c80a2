//! Tools: create, list, read, replace, patch, delete (each change announced to
//! every open `GET /mcp` stream of the project); `render` shows the request a call
//! would send.

pub mod import;
pub mod render;

use std::sync::Arc;

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tengine_control::{StoreError, tools};
use tengine_core::domain::{AuthStrategy, FieldError, ToolDefinition, ToolSpec, validate_tool_name};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    auth::Admin,
    error::{ApiError, ApiResult},
    extract::{Ids, JsonBody, ProjectPath, QueryParams, ToolPath, page_limit},
    openapi::{AdminErrors, BadRequest, Conflict, InvalidField, NotFound, TooLarge},
    projects,
};
use crate::{AppState, arguments};

const TAG: &str = "tools";
const PAGE_DEFAULT: i64 = 100;
const PAGE_MAX: i64 = 1000;

/// Create a tool (its fields: docs/tools.md); a tool that needs a secret must bring it.
#[utoipa::path(post, path = "/v1/projects/{project_id}/tools", operation_id = "create_tool", tag = TAG, security(("admin_token" = [])),
    params(ProjectPath), request_body = ToolSpec,
    responses((status = 201, body = ToolDefinition), AdminErrors, BadRequest, NotFound, Conflict, InvalidField, TooLarge))]
pub async fn create(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
    JsonBody(spec): JsonBody<ToolSpec>,
) -> ApiResult<(StatusCode, Json<ToolDefinition>)> {
    let tool = create_tool(&st, project_id, spec).await?;
    Ok((StatusCode::CREATED, Json(tool)))
}

/// POST's work, shared with the console's tool editor (the same validation and
/// the same `list_changed` announcement).
pub(crate) async fn create_tool(st: &AppState, project_id: Uuid, spec: ToolSpec) -> ApiResult<ToolDefinition> {
    let spec = validated(st, spec)?;
    if spec.auth_strategy != AuthStrategy::None && spec.auth_secret.is_none() {
        return Err(secret_required(&spec));
    }
    projects::exists(st, project_id).await?;
    let tool = tools::create(&st.pool, &st.secrets, project_id, &spec).await?;
    tools_changed(st, project_id).await;
    Ok(tool)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ToolListQuery {
    /// The last tool name of the previous page (`next_cursor`).
    cursor: Option<String>,
    /// 1–1000, default 100.
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ToolList {
    tools: Vec<ToolDefinition>,
    /// The cursor of the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// List a project's tools in name order, disabled ones included.
#[utoipa::path(get, path = "/v1/projects/{project_id}/tools", operation_id = "list_tools", tag = TAG, security(("admin_token" = [])),
    params(ProjectPath, ToolListQuery),
    responses((status = 200, body = ToolList), AdminErrors, BadRequest, NotFound))]
pub async fn list(
    // The query string is checked first, as it always was.
    QueryParams(query): QueryParams<ToolListQuery>,
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
) -> ApiResult<Json<ToolList>> {
    projects::exists(&st, project_id).await?;
    let limit = page_limit(query.limit, PAGE_DEFAULT, PAGE_MAX)?;
    let mut tools = tools::list(
        &st.pool,
        project_id,
        false,
        query.cursor.as_deref(),
        limit.saturating_add(1),
    )
    .await?;
    let next = (tools.len() as i64 > limit).then(|| {
        tools.truncate(limit as usize);
        tools.last().map(|t| t.name.clone())
    });
    Ok(Json(ToolList {
        tools,
        next_cursor: next.flatten(),
    }))
}

/// Read a tool (never its secret: `has_auth_secret` says whether one is stored).
#[utoipa::path(get, path = "/v1/projects/{project_id}/tools/{name}", operation_id = "get_tool", tag = TAG, security(("admin_token" = [])),
    params(ToolPath),
    responses((status = 200, body = ToolDefinition), AdminErrors, BadRequest, NotFound))]
pub async fn get(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ToolPath { project_id, name }): Ids<ToolPath>,
) -> ApiResult<Json<ToolDefinition>> {
    Ok(Json(
        tools::get(&st.pool, project_id, &name).await.map_err(tool_not_found)?,
    ))
}

/// Replace a tool; bumps `version`.
///
/// Omitted fields take their defaults (so omitting `auth_strategy` drops the secret). Without
/// `auth_secret` and with the same `auth_strategy`, the stored secret is kept (and an HMAC rotation
/// overlap in progress continues); a new secret without `rotation_overlap_secs` ends any overlap.
#[utoipa::path(put, path = "/v1/projects/{project_id}/tools/{name}", operation_id = "replace_tool", tag = TAG, security(("admin_token" = [])),
    params(ToolPath), request_body = ToolSpec,
    responses((status = 200, body = ToolDefinition), AdminErrors, BadRequest, NotFound, Conflict, InvalidField, TooLarge))]
pub async fn replace(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ToolPath { project_id, name }): Ids<ToolPath>,
    JsonBody(spec): JsonBody<ToolSpec>,
) -> ApiResult<Json<ToolDefinition>> {
    replace_tool(&st, project_id, &name, spec).await.map(Json)
}

/// PUT's work, shared with the console's tool editor.
pub(crate) async fn replace_tool(
    st: &AppState,
    project_id: Uuid,
    name: &str,
    spec: ToolSpec,
) -> ApiResult<ToolDefinition> {
    let spec = validated(st, spec)?;
    let current = tools::get(&st.pool, project_id, name).await.map_err(tool_not_found)?;
    store_replacement(st, project_id, name, &current, &spec).await
}

/// Change the top-level fields given and keep the others; validated like PUT.
#[utoipa::path(patch, path = "/v1/projects/{project_id}/tools/{name}", operation_id = "patch_tool", tag = TAG, security(("admin_token" = [])),
    params(ToolPath), request_body(content = Object, description = "any top-level fields of a tool spec"),
    responses((status = 200, body = ToolDefinition), AdminErrors, BadRequest, NotFound, Conflict, InvalidField, TooLarge))]
pub async fn patch(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ToolPath { project_id, name }): Ids<ToolPath>,
    JsonBody(patch): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<ToolDefinition>> {
    apply_patch(&st, project_id, &name, patch).await.map(Json)
}

/// PATCH's work, shared with the console's enable switch (one code path: the
/// same validation, and the same `list_changed` announcement).
pub(crate) async fn apply_patch(
    st: &AppState,
    project_id: Uuid,
    name: &str,
    patch: Map<String, Value>,
) -> ApiResult<ToolDefinition> {
    let current = tools::get(&st.pool, project_id, name).await.map_err(tool_not_found)?;
    let mut document = spec_document(&current);
    for (key, value) in patch {
        document[key] = value;
    }
    let spec: ToolSpec =
        serde_json::from_value(document).map_err(|e| ApiError::bad_request(format!("invalid tool fields: {e}")))?;
    let spec = validated(st, spec)?;
    store_replacement(st, project_id, name, &current, &spec).await
}

/// Delete a tool.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/tools/{name}", operation_id = "delete_tool", tag = TAG, security(("admin_token" = [])),
    params(ToolPath),
    responses((status = 204, description = "deleted"), AdminErrors, BadRequest, NotFound))]
pub async fn delete(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ToolPath { project_id, name }): Ids<ToolPath>,
) -> ApiResult<StatusCode> {
    delete_tool(&st, project_id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// DELETE's work, shared with the console (the same `list_changed` announcement).
pub(crate) async fn delete_tool(st: &AppState, project_id: Uuid, name: &str) -> ApiResult<()> {
    validate_tool_name(name).map_err(|_| ApiError::not_found("tool"))?;
    tools::delete(&st.pool, project_id, name)
        .await
        .map_err(tool_not_found)?;
    tools_changed(st, project_id).await;
    Ok(())
}

/// Stores `spec` in place of `current` (PUT and PATCH), keeping its secret when allowed.
async fn store_replacement(
    st: &AppState,
    project_id: Uuid,
    name: &str,
    current: &ToolDefinition,
    spec: &ToolSpec,
) -> ApiResult<ToolDefinition> {
    check_secret_kept(spec, current)?;
    let tool = tools::replace(&st.pool, &st.secrets, project_id, name, spec)
        .await
        .map_err(tool_not_found)?;
    tools_changed(st, project_id).await;
    Ok(tool)
}

/// The spec checked by the tool model, and its schemas compiled.
pub(crate) fn validated(st: &AppState, spec: ToolSpec) -> ApiResult<ToolSpec> {
    let spec = spec.validate(st.config.allow_insecure_upstreams)?;
    let schemas = [
        ("input_schema", Some(&spec.input_schema)),
        ("output_schema", spec.output_schema.as_ref()),
    ];
    for (field, schema) in schemas {
        if let Some(schema) = schema {
            arguments::compiles(schema).map_err(|e| FieldError {
                field: field.into(),
                message: format!("is not a valid JSON Schema: {e}"),
            })?;
        }
    }
    Ok(spec)
}

/// Tells every ingress (and so every open GET stream of the project) that its tools changed.
async fn tools_changed(st: &AppState, project_id: Uuid) {
    // Definitions in memory are current without this (`tengine_control::freshness`);
    // it tells open MCP sessions, which send `list_changed`.
    let subject = st.topology.tools_changed_subject(project_id);
    if let Err(err) = st.nats.publish(subject, bytes::Bytes::new()).await {
        tracing::warn!(error = %err, "announcing a tool change failed");
    }
}

fn secret_required(spec: &ToolSpec) -> ApiError {
    ApiError::invalid_field(
        "auth_secret",
        format!("is required with auth_strategy `{}`", spec.auth_strategy.as_str()),
    )
}

/// A replacement that needs a secret must bring one unless it keeps the strategy
/// whose secret is stored.
fn check_secret_kept(spec: &ToolSpec, current: &ToolDefinition) -> ApiResult<()> {
    let keeps = spec.auth_strategy == current.auth_strategy && current.has_auth_secret;
    if spec.auth_strategy != AuthStrategy::None && spec.auth_secret.is_none() && !keeps {
        return Err(secret_required(spec));
    }
    Ok(())
}

pub(super) fn tool_not_found(e: StoreError) -> ApiError {
    super::error::not_found_as("tool")(e)
}

/// The writable fields of a stored tool, as a spec document (no secret).
pub(crate) fn spec_document(tool: &ToolDefinition) -> Value {
    json!({
        "name": tool.name,
        "title": tool.title,
        "description": tool.description,
        "input_schema": tool.input_schema,
        "output_schema": tool.output_schema,
        "annotations": tool.annotations,
        "response_mode": tool.response_mode,
        "base_url": tool.base_url,
        "http_method": tool.http_method,
        "endpoint_path": tool.endpoint_path,
        "headers_template": tool.headers_template,
        "query_template": tool.query_template,
        "body_template": tool.body_template,
        "auth_strategy": tool.auth_strategy,
        "timeout_ms": tool.timeout_ms,
        "retry": tool.retry,
        "require_member": tool.require_member,
        "inject_member_identity": tool.inject_member_identity,
        "task_support": tool.task_support,
        "approval": tool.approval,
        "client_capabilities": tool.client_capabilities,
        "enabled": tool.enabled,
    })
}

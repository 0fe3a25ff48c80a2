//! The admin API under `/v1`: projects, API keys, tools and run history. JSON in
//! and out; authenticated with the admin token (run reads also with a project key).

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tengine_control::{
    StoreError, api_keys, integrations, member_keys, members,
    principals::{self, ReadScope},
    projects, tools,
};
use tengine_core::{
    credentials,
    domain::{
        AuthStrategy, MEMBER_ID_MAX_BYTES, ToolDefinition, ToolSpec, validate_identifier, validate_name,
        validate_tool_name,
    },
    envelope::Caller,
    errors, storable,
};
use tengine_projector::history::{self, runs::RunFilter};
use uuid::Uuid;

use crate::{
    AppState, arguments,
    error::{ApiError, ApiResult},
    mcp::bearer,
};

const RUNS_PAGE_DEFAULT: i64 = 50;
const RUNS_PAGE_MAX: i64 = 500;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/projects", get(list_projects).post(create_project))
        .route("/v1/projects/{project_id}", get(get_project).patch(patch_project))
        .route(
            "/v1/projects/{project_id}/api-keys",
            get(list_api_keys).post(create_api_key),
        )
        .route(
            "/v1/projects/{project_id}/api-keys/{key_id}",
            axum::routing::delete(revoke_api_key),
        )
        .route("/v1/projects/{project_id}/tools", get(list_tools).post(create_tool))
        .route(
            "/v1/projects/{project_id}/tools/{name}",
            get(get_tool).put(replace_tool).patch(patch_tool).delete(delete_tool),
        )
        .route("/v1/projects/{project_id}/runs", get(list_runs))
        .route("/v1/projects/{project_id}/usage", get(usage))
        .route(
            "/v1/projects/{project_id}/integrations",
            get(list_integrations).post(create_integration),
        )
        .route(
            "/v1/projects/{project_id}/integrations/{integration_id}",
            get(get_integration).delete(delete_integration),
        )
        .route(
            "/v1/projects/{project_id}/integrations/{integration_id}/api-keys",
            axum::routing::post(create_integration_key),
        )
        .route(
            "/v1/projects/{project_id}/member-keys",
            get(list_member_keys).post(create_member_key),
        )
        .route(
            "/v1/projects/{project_id}/member-keys/{kid}",
            axum::routing::delete(delete_member_key),
        )
        .route(
            "/v1/projects/{project_id}/members/{member_id}/revoke-sessions",
            axum::routing::post(revoke_member_sessions),
        )
        .route(
            "/v1/projects/{project_id}/tools/{name}/render",
            axum::routing::post(render_tool),
        )
        .route("/v1/member-sessions", axum::routing::post(create_member_session))
        .route("/v1/runs/{run_id}", get(get_run))
}

/// Whether the request carries the admin token.
pub fn is_admin(st: &AppState, headers: &HeaderMap) -> bool {
    require_admin(st, headers).is_ok()
}

fn require_admin(st: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let expected = &st.config.admin_token;
    match bearer(headers) {
        Some(token) if !expected.is_empty() && credentials::constant_time_eq(token, expected) => Ok(()),
        _ if expected.is_empty() => Err(ApiError::new(
            errors::ADMIN_DISABLED,
            "the admin API is disabled: set TENGINE_ADMIN_TOKEN on the ingress",
        )),
        _ => Err(ApiError::unauthorized()),
    }
}

/// Who may read runs and usage: the admin (everything), or a credential of the
/// project, within its read scope (`Principal::read_scope`).
enum Reader {
    Admin,
    Project { project_id: Uuid, scope: ReadScope },
}

async fn reader(st: &AppState, headers: &HeaderMap) -> ApiResult<Reader> {
    if require_admin(st, headers).is_ok() {
        return Ok(Reader::Admin);
    }
    let found = match bearer(headers) {
        Some(token) if token.starts_with(crate::members::TOKEN_PREFIX) => {
            let (api_key_id, member) = st.members.verify(token).map_err(|_| ApiError::unauthorized())?;
            principals::authenticate_member(&st.pool, api_key_id, member).await?
        }
        Some(token) if credentials::looks_like_api_key(token) => {
            principals::authenticate_api_key(&st.pool, token).await?
        }
        _ => None,
    };
    let principal = found.ok_or_else(ApiError::unauthorized)?;
    Ok(Reader::Project {
        project_id: principal.caller.project_id,
        scope: principal.read_scope(),
    })
}

impl Reader {
    /// The reader's scope within `project_id`, or `None` when it may not read it at all.
    fn scope_in(&self, project_id: Uuid) -> Option<ReadScope> {
        match self {
            Reader::Admin => Some(ReadScope::everything()),
            Reader::Project { project_id: own, scope } => (*own == project_id).then(|| scope.clone()),
        }
    }
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("invalid query string: {}", rejection.body_text()))
}

fn parse_json<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    refuse_nul(body)?;
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A NUL (`\u0000`) cannot be stored in PostgreSQL text or JSON, and no setting
/// needs one: a request carrying one anywhere, in a value or a key, is refused
/// with the field's path.
fn refuse_nul(body: &[u8]) -> ApiResult<()> {
    // JSON can only spell a NUL `\u0000`; most bodies have none, and are not parsed twice.
    if !body.windows(6).any(|w| w == b"\\u0000") {
        return Ok(());
    }
    // Malformed JSON is reported by the parse that follows.
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    match storable::nul_path(&value) {
        Some(path) => Err(invalid_field(
            if path.is_empty() { "body" } else { &path },
            "contains a NUL character (\\u0000), which cannot be stored; remove it",
        )),
        None => Ok(()),
    }
}

fn parse_id(kind: &str, raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad_request(format!("`{raw}` is not a valid {kind} id (a UUID)")))
}

fn created(value: impl serde::Serialize) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    name: String,
}

async fn create_project(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    require_admin(&st, &headers)?;
    let input: NewProject = parse_json(&body)?;
    let name = input.name.trim();
    validate_name("name", name, false)?;
    Ok(created(projects::create(&st.pool, name).await?))
}

async fn list_projects(State(st): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    require_admin(&st, &headers)?;
    Ok(Json(json!({ "projects": projects::list(&st.pool).await? })))
}

async fn get_project(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let project = projects::get(&st.pool, project_id)
        .await
        .map_err(|_| ApiError::not_found("project"))?;
    Ok(Json(json!(project)))
}

async fn project_exists(st: &AppState, project_id: Uuid) -> ApiResult<()> {
    projects::get(&st.pool, project_id)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("project"),
            other => other.into(),
        })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewApiKey {
    #[serde(default)]
    name: String,
    #[serde(default)]
    integration_id: Option<Uuid>,
    /// `["call"]` when absent.
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

impl NewApiKey {
    fn scopes(&self) -> ApiResult<Vec<String>> {
        let scopes = self
            .scopes
            .clone()
            .unwrap_or_else(|| vec![principals::SCOPE_CALL.to_string()]);
        if scopes.is_empty() {
            return Err(invalid_field("scopes", "give at least one scope: `call` and/or `read`"));
        }
        if let Some(bad) = scopes.iter().find(|s| !principals::SCOPES.contains(&s.as_str())) {
            return Err(invalid_field(
                "scopes",
                format!(
                    "unknown scope `{bad}`: use `call` (MCP calls) and/or `read` (the project's run history and usage)"
                ),
            ));
        }
        let mut scopes = scopes;
        scopes.sort();
        scopes.dedup();
        Ok(scopes)
    }
}

async fn create_api_key(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let input: NewApiKey = if body.is_empty() {
        NewApiKey::default()
    } else {
        parse_json(&body)?
    };
    validate_name("name", &input.name, true)?;
    project_exists(&st, project_id).await?;
    let scopes = input.scopes()?;
    let (record, key) = api_keys::create(&st.pool, project_id, input.integration_id, &input.name, &scopes)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("integration"),
            other => other.into(),
        })?;
    let mut out = json!(record);
    out["key"] = json!(key);
    out["note"] = json!("store this key now: it is shown once and only its hash is kept");
    Ok(created(out))
}

async fn list_api_keys(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    project_exists(&st, project_id).await?;
    Ok(Json(json!({ "api_keys": api_keys::list(&st.pool, project_id).await? })))
}

async fn revoke_api_key(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((project_id, key_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let key_id = parse_id("API key", &key_id)?;
    api_keys::revoke(&st.pool, project_id, key_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("API key"),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

fn validated(st: &AppState, spec: ToolSpec) -> ApiResult<ToolSpec> {
    let spec = spec.validate(st.config.allow_insecure_upstreams)?;
    let schemas = [
        ("input_schema", Some(&spec.input_schema)),
        ("output_schema", spec.output_schema.as_ref()),
    ];
    for (field, schema) in schemas {
        if let Some(schema) = schema {
            arguments::compiles(schema).map_err(|e| {
                ApiError::from(tengine_core::domain::FieldError {
                    field: field.into(),
                    message: format!("is not a valid JSON Schema: {e}"),
                })
            })?;
        }
    }
    Ok(spec)
}

/// Tells every ingress (and so every open GET stream of the project) that its tools changed.
async fn tools_changed(st: &AppState, project_id: Uuid) {
    // This instance forgets at once (the next call sees the change); the others on the broadcast.
    st.catalog.forget_project(project_id);
    let subject = st.topology.tools_changed_subject(project_id);
    if let Err(err) = st.nats.publish(subject, bytes::Bytes::new()).await {
        tracing::warn!(error = %err, "announcing a tool change failed");
    }
}

fn secret_required(spec: &ToolSpec) -> ApiError {
    ApiError::from(tengine_core::domain::FieldError {
        field: "auth_secret".into(),
        message: format!("is required with auth_strategy `{}`", spec.auth_strategy.as_str()),
    })
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

fn tool_not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("tool"),
        other => other.into(),
    }
}

async fn create_tool(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let spec = validated(&st, parse_json(&body)?)?;
    if spec.auth_strategy != AuthStrategy::None && spec.auth_secret.is_none() {
        return Err(secret_required(&spec));
    }
    project_exists(&st, project_id).await?;
    let tool = tools::create(&st.pool, &st.secrets, project_id, &spec).await?;
    tools_changed(&st, project_id).await;
    Ok(created(tool))
}

#[derive(Deserialize)]
struct ToolListQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn list_tools(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
    query: Result<Query<ToolListQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(query) = query.map_err(bad_query)?;
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    project_exists(&st, project_id).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
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
    Ok(Json(json!({ "tools": tools, "next_cursor": next.flatten() })))
}

async fn get_tool(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((project_id, name)): Path<(String, String)>,
) -> ApiResult<Json<ToolDefinition>> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    Ok(Json(
        tools::get(&st.pool, project_id, &name).await.map_err(tool_not_found)?,
    ))
}

async fn replace_tool(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((project_id, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<ToolDefinition>> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let spec = validated(&st, parse_json(&body)?)?;
    let current = tools::get(&st.pool, project_id, &name).await.map_err(tool_not_found)?;
    check_secret_kept(&spec, &current)?;
    let tool = tools::replace(&st.pool, &st.secrets, project_id, &name, &spec)
        .await
        .map_err(tool_not_found)?;
    tools_changed(&st, project_id).await;
    Ok(Json(tool))
}

/// The writable fields of a stored tool, as a spec document (no secret).
fn spec_document(tool: &ToolDefinition) -> Value {
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

/// PATCH replaces the top-level fields it names and keeps the others.
async fn patch_tool(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((project_id, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<ToolDefinition>> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let patch: serde_json::Map<String, Value> = parse_json(&body)?;
    let current = tools::get(&st.pool, project_id, &name).await.map_err(tool_not_found)?;
    let mut document = spec_document(&current);
    for (key, value) in patch {
        document[key] = value;
    }
    let spec: ToolSpec =
        serde_json::from_value(document).map_err(|e| ApiError::bad_request(format!("invalid tool fields: {e}")))?;
    let spec = validated(&st, spec)?;
    check_secret_kept(&spec, &current)?;
    let tool = tools::replace(&st.pool, &st.secrets, project_id, &name, &spec)
        .await
        .map_err(tool_not_found)?;
    tools_changed(&st, project_id).await;
    Ok(Json(tool))
}

async fn delete_tool(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((project_id, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    validate_tool_name(&name).map_err(|_| ApiError::not_found("tool"))?;
    tools::delete(&st.pool, project_id, &name)
        .await
        .map_err(tool_not_found)?;
    tools_changed(&st, project_id).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct RunQuery {
    status: Option<String>,
    tool: Option<String>,
    member: Option<String>,
    integration: Option<Uuid>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: Option<i64>,
    cursor: Option<String>,
}

fn encode_run_cursor(at: DateTime<Utc>, run_id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{run_id}", at.to_rfc3339()))
}

fn decode_run_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (at, id) = raw.split_once('|')?;
    Some((
        DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
        Uuid::parse_str(id).ok()?,
    ))
}

async fn list_runs(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
    query: Result<Query<RunQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(query) = query.map_err(bad_query)?;
    let reader = reader(&st, &headers).await?;
    let project_id = parse_id("project", &project_id)?;
    let scope = reader
        .scope_in(project_id)
        .ok_or_else(|| ApiError::not_found("project"))?;
    let before = match query.cursor.as_deref() {
        Some(c) => Some(decode_run_cursor(c).ok_or_else(|| ApiError::bad_request("invalid cursor"))?),
        None => None,
    };
    let limit = query.limit.unwrap_or(RUNS_PAGE_DEFAULT).clamp(1, RUNS_PAGE_MAX);
    let filter = RunFilter {
        tool_name: query.tool,
        status: query.status,
        member_id: query.member,
        integration_id: query.integration,
        from: query.from,
        to: query.to,
        before,
        limit: limit.saturating_add(1),
    };
    let mut runs = history::runs::list(&st.pool, project_id, &scope, &filter).await?;
    let next = (runs.len() as i64 > limit).then(|| {
        runs.truncate(limit as usize);
        runs.last().map(|r| encode_run_cursor(r.accepted_at, r.run_id))
    });
    Ok(Json(json!({ "runs": runs, "next_cursor": next.flatten() })))
}

async fn get_run(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let reader = reader(&st, &headers).await?;
    let run_id = parse_id("run", &run_id)?;
    let (run, attempts) = match history::runs::get(&st.pool, run_id).await {
        Ok(found) => found,
        Err(StoreError::NotFound) => return unrecorded_run(&st, &reader, run_id).await,
        Err(other) => return Err(other.into()),
    };
    // Out of scope looks like absent: a reader learns nothing of others' runs.
    if !reader
        .scope_in(run.project_id)
        .is_some_and(|scope| run.visible_to(&scope))
    {
        return Err(ApiError::not_found("run"));
    }
    let mut out = json!(run);
    out["attempt_details"] = json!(attempts);
    out["bodies"] = json!(history::runs::bodies(&st.pool, run_id).await?);
    Ok(Json(out))
}

/// A run with no history row whose events the projector had to set aside (dead
/// letters): shown as `unrecorded`, with why.
async fn unrecorded_run(st: &AppState, reader: &Reader, run_id: Uuid) -> ApiResult<Json<Value>> {
    let Some((project_id, history_error)) = history::runs::unrecorded(&st.pool, run_id).await? else {
        return Err(ApiError::not_found("run"));
    };
    // Its integration, tool and member are unknown: only whole-project readers see it.
    let readable = match project_id {
        Some(project_id) => reader.scope_in(project_id) == Some(ReadScope::everything()),
        None => matches!(reader, Reader::Admin),
    };
    if !readable {
        return Err(ApiError::not_found("run"));
    }
    Ok(Json(json!({
        "run_id": run_id,
        "project_id": project_id,
        "status": "unrecorded",
        "history_error": history_error,
        "attempt_details": [],
        "bodies": null,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewIntegration {
    name: String,
    #[serde(default)]
    allowed_tools: Option<Vec<String>>,
}

/// Ready-to-paste client configuration for an integration. `key` is the API key
/// when it is being shown (at creation), else a placeholder.
fn client_config(st: &AppState, integration: &integrations::Integration, key: Option<&str>) -> Value {
    let url = format!("{}/mcp", st.config.ingress.public_url.trim_end_matches('/'));
    let key = key.unwrap_or("<TENGINE_API_KEY>");
    let name = format!(
        "tengine-{}",
        integration
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            })
            .collect::<String>()
    );
    json!({
        "mcp_json": {"mcpServers": {name.clone(): {"type": "http", "url": url, "headers": {"Authorization": format!("Bearer {key}")}}}},
        "anthropic_mcp_servers": [{"type": "url", "url": url, "name": name, "authorization_token": key}],
        "python": format!(
            "import httpx2\nfrom mcp import Client\nfrom mcp.client.streamable_http import streamable_http_client\n\n\
             async with httpx2.AsyncClient(headers={{\"Authorization\": \"Bearer {key}\"}}) as http:\n    \
             async with Client(streamable_http_client(\"{url}\", http_client=http)) as client:\n        \
             tools = await client.list_tools()\n"
        ),
    })
}

fn integration_json(st: &AppState, integration: &integrations::Integration, key: Option<&str>) -> Value {
    let mut out = json!(integration);
    out["client_config"] = client_config(st, integration, key);
    out
}

fn not_found_as(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found(what),
        other => other.into(),
    }
}

async fn create_integration(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let input: NewIntegration = parse_json(&body)?;
    let name = input.name.trim();
    validate_name("name", name, false)?;
    if let Some(tools) = &input.allowed_tools {
        for tool in tools {
            validate_tool_name(tool).map_err(|e| tengine_core::domain::FieldError {
                field: "allowed_tools".into(),
                message: format!("`{tool}`: {}", e.message),
            })?;
        }
    }
    let integration = integrations::create(&st.pool, project_id, name, input.allowed_tools.as_deref())
        .await
        .map_err(not_found_as("project"))?;
    Ok(created(integration_json(&st, &integration, None)))
}

async fn list_integrations(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let list = integrations::list(&st.pool, project_id)
        .await
        .map_err(not_found_as("project"))?;
    Ok(Json(json!({ "integrations": list })))
}

async fn get_integration(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((project_id, integration_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let integration_id = parse_id("integration", &integration_id)?;
    let integration = integrations::get(&st.pool, project_id, integration_id)
        .await
        .map_err(not_found_as("integration"))?;
    Ok(Json(integration_json(&st, &integration, None)))
}

async fn delete_integration(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((project_id, integration_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let integration_id = parse_id("integration", &integration_id)?;
    integrations::delete(&st.pool, project_id, integration_id)
        .await
        .map_err(not_found_as("integration"))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_integration_key(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((project_id, integration_id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let integration_id = parse_id("integration", &integration_id)?;
    let input: NewApiKey = if body.is_empty() {
        NewApiKey::default()
    } else {
        parse_json(&body)?
    };
    validate_name("name", &input.name, true)?;
    let integration = integrations::get(&st.pool, project_id, integration_id)
        .await
        .map_err(not_found_as("integration"))?;
    let scopes = input.scopes()?;
    let (record, key) = api_keys::create(&st.pool, project_id, Some(integration_id), &input.name, &scopes)
        .await
        .map_err(not_found_as("integration"))?;
    let mut out = json!(record);
    out["key"] = json!(key);
    out["note"] = json!("store this key now: it is shown once and only its hash is kept");
    out["client_config"] = client_config(&st, &integration, Some(&key));
    Ok(created(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMemberKey {
    kid: String,
    /// SPKI PEM of a P-256 public key.
    public_key: String,
}

async fn create_member_key(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let input: NewMemberKey = parse_json(&body)?;
    let field = |field: &str, message: &str| {
        ApiError::from(tengine_core::domain::FieldError {
            field: field.into(),
            message: message.into(),
        })
    };
    validate_identifier("kid", &input.kid, crate::members::MAX_KID_LEN)?;
    if !input.public_key.contains("BEGIN PUBLIC KEY")
        || jsonwebtoken::DecodingKey::from_ec_pem(input.public_key.as_bytes()).is_err()
    {
        return Err(field(
            "public_key",
            "must be a P-256 (ES256) public key in SPKI PEM (-----BEGIN PUBLIC KEY-----)",
        ));
    }
    let key = member_keys::create(&st.pool, project_id, &input.kid, &input.public_key)
        .await
        .map_err(not_found_as("project"))?;
    Ok(created(key))
}

async fn list_member_keys(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let keys = member_keys::list(&st.pool, project_id)
        .await
        .map_err(not_found_as("project"))?;
    Ok(Json(json!({ "member_keys": keys })))
}

async fn delete_member_key(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((project_id, kid)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    member_keys::delete(&st.pool, project_id, &kid)
        .await
        .map_err(not_found_as("member key"))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_member_sessions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((project_id, member_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    // Member ids come from assertions' `sub`, which refuses these too.
    validate_identifier("member_id", &member_id, MEMBER_ID_MAX_BYTES)?;
    members::revoke_sessions(&st.pool, project_id, &member_id)
        .await
        .map_err(not_found_as("project"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberSessionRequest {
    member_assertion: String,
}

/// Exchanges a member assertion for a member session; authenticated with the
/// integration's API key.
async fn create_member_session(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let principal = match bearer(&headers).filter(|t| credentials::looks_like_api_key(t)) {
        Some(token) => principals::authenticate_api_key(&st.pool, token).await?,
        None => None,
    }
    .ok_or_else(|| {
        ApiError::new(
            errors::UNAUTHORIZED,
            "send the integration's API key as `Authorization: Bearer tengine_…`",
        )
    })?;
    let input: MemberSessionRequest = parse_json(&body)?;
    let minted = st
        .members
        .exchange(&st.pool, &principal.caller, &input.member_assertion)
        .await
        .map_err(|e| match e {
            crate::members::MemberError::Invalid(message) => ApiError::new(errors::INVALID_ASSERTION, message),
            crate::members::MemberError::Store(err) => err.into(),
        })?;
    Ok(created(json!({
        "token": minted.token,
        "expires_at": minted.expires_at,
        "member": {"id": minted.member.id, "email": minted.member.email, "roles": minted.member.roles},
        "project_id": principal.caller.project_id,
        "integration_id": principal.caller.integration_id,
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RenderRequest {
    #[serde(default)]
    arguments: serde_json::Map<String, Value>,
    /// A member to render `member.*` and identity headers for.
    #[serde(default)]
    member: Option<RenderMember>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenderMember {
    id: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// The request a call would send, without sending it; secrets are redacted.
async fn render_tool(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((project_id, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let input: RenderRequest = if body.is_empty() {
        RenderRequest::default()
    } else {
        parse_json(&body)?
    };
    let tool = tools::get(&st.pool, project_id, &name).await.map_err(tool_not_found)?;
    let project = projects::get(&st.pool, project_id).await?;
    let caller = Caller {
        project_id,
        integration_id: project.default_integration_id,
        api_key_id: Uuid::nil(),
        member: input.member.map(|m| tengine_core::envelope::Member {
            id: m.id,
            email: m.email,
            roles: m.roles,
            session_issued_at: chrono::Utc::now(),
        }),
    };
    let run_id = Uuid::now_v7();
    let problems = st
        .validators
        .check(&tool, &Value::Object(input.arguments.clone()))
        .map_err(ApiError::internal)?;
    if !problems.is_empty() {
        return Err(ApiError::new(errors::INVALID_ARGUMENTS, problems.join("; ")));
    }
    let ctx = tengine_core::templates::Context {
        arguments: &input.arguments,
        reserved: tengine_core::templates::reserved_variables(&caller, run_id),
    };
    let request = tengine_core::request::render(&tool, &ctx)
        .map_err(|e| ApiError::new(errors::INVALID_ARGUMENTS, e.to_string()))?;
    let target = tengine_core::signing::request_target(&request.url);
    let signed = tengine_core::signing::Target {
        method: request.method.as_str(),
        target: &target,
        body: request.body.as_deref().unwrap_or_default(),
    };
    // Identity and webhook-id as the worker would send them (for this render's run id).
    let mut out_headers: Vec<(String, String)> = tengine_core::signing::outbound_headers(
        &caller,
        tool.inject_member_identity,
        run_id,
        chrono::Utc::now().timestamp(),
        signed,
        &[],
    )
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    out_headers.extend(request.headers.iter().cloned());
    match tool.auth_strategy {
        tengine_core::domain::AuthStrategy::None => {}
        tengine_core::domain::AuthStrategy::StaticBearer => {
            out_headers.push(("Authorization".into(), "Bearer <redacted>".into()))
        }
        tengine_core::domain::AuthStrategy::HmacSignature => {
            out_headers.push((
                tengine_core::signing::HEADER_SIGNATURE.into(),
                "tng3=<computed when sent> tng2=<computed when sent>".into(),
            ));
            out_headers.push((
                tengine_core::signing::HEADER_WEBHOOK_SIGNATURE.into(),
                "v1,<computed when sent>".into(),
            ));
        }
    }
    let body = request
        .body
        .as_ref()
        .map(|b| serde_json::from_slice::<Value>(b).unwrap_or(Value::Null));
    Ok(Json(json!({
        "method": request.method.as_str(),
        "url": request.url.as_str(),
        "headers": out_headers.into_iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "body": body,
    })))
}

/// `null` in a PATCH body removes a setting; an absent key leaves it as it is.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectPatch {
    #[serde(default)]
    outbound_allowlist: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    monthly_call_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    member_calls_per_minute: Option<Option<i64>>,
    #[serde(default)]
    store_bodies: Option<bool>,
    #[serde(default)]
    body_max_bytes: Option<i64>,
    #[serde(default)]
    redact_fields: Option<Vec<String>>,
}

const MAX_REDACT_FIELDS: usize = 64;

fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::from(tengine_core::domain::FieldError {
        field: field.into(),
        message: message.into(),
    })
}

/// Changes a project's settings: the outbound allow-list and the quotas.
async fn patch_project(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    require_admin(&st, &headers)?;
    let project_id = parse_id("project", &project_id)?;
    let patch: ProjectPatch = parse_json(&body)?;
    let mut settings = projects::ProjectSettings::default();
    if let Some(allowlist) = &patch.outbound_allowlist {
        let mut networks = Vec::with_capacity(allowlist.len());
        for raw in allowlist {
            let net = raw
                .parse::<ipnet::IpNet>()
                .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid_field(
                        "outbound_allowlist",
                        format!("`{raw}` is not an IP network (CIDR like 10.1.0.0/16) or address"),
                    )
                })?;
            networks.push(net.to_string());
        }
        settings.outbound_allowlist = Some(networks);
    }
    if let Some(limit) = patch.monthly_call_limit {
        if limit.is_some_and(|n| n < 0) {
            return Err(invalid_field(
                "monthly_call_limit",
                "must be a number of calls (0 or more), or null for no limit",
            ));
        }
        settings.monthly_call_limit = Some(limit);
    }
    if let Some(limit) = patch.member_calls_per_minute {
        let limit = limit
            .map(|n| i32::try_from(n).ok().filter(|n| *n >= 0))
            .map(|n| {
                n.ok_or_else(|| {
                    invalid_field(
                        "member_calls_per_minute",
                        "must be a number of calls per minute (0 to 2147483647), or null for no limit",
                    )
                })
            })
            .transpose()?;
        settings.member_calls_per_minute = Some(limit);
    }
    settings.store_bodies = patch.store_bodies;
    if let Some(max) = patch.body_max_bytes {
        let max = i32::try_from(max)
            .ok()
            .filter(|n| (1..=tengine_core::bodies::MAX_BODY_BYTES).contains(&i64::from(*n)))
            .ok_or_else(|| {
                invalid_field(
                    "body_max_bytes",
                    format!(
                        "must be 1 to {} (bytes kept of each body)",
                        tengine_core::bodies::MAX_BODY_BYTES
                    ),
                )
            })?;
        settings.body_max_bytes = Some(max);
    }
    if let Some(fields) = patch.redact_fields {
        if fields.len() > MAX_REDACT_FIELDS || fields.iter().any(|f| f.len() > 256 || f.split('.').any(str::is_empty)) {
            return Err(invalid_field(
                "redact_fields",
                format!(
                    "at most {MAX_REDACT_FIELDS} JSON field paths like `password` or `card.number` \
                     (non-empty keys joined by `.`, each path at most 256 bytes)"
                ),
            ));
        }
        settings.redact_fields = Some(fields);
    }
    let project = projects::update_settings(&st.pool, project_id, &settings)
        .await
        .map_err(not_found_as("project"))?;
    Ok(Json(json!(project)))
}

#[derive(Deserialize)]
struct UsageQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    /// Comma-separated: tool, member, integration, hour.
    group_by: Option<String>,
}

/// Usage of a project (hourly aggregates), grouped as asked.
async fn usage(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(project_id): Path<String>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let reader = reader(&st, &headers).await?;
    let project_id = parse_id("project", &project_id)?;
    let scope = reader
        .scope_in(project_id)
        .ok_or_else(|| ApiError::not_found("project"))?;
    let Query(query) = query.map_err(bad_query)?;
    let group_by: Vec<&str> = query
        .group_by
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect();
    if let Some(bad) = group_by
        .iter()
        .find(|g| !history::usage::GROUPS.iter().any(|(name, _)| name == *g))
    {
        return Err(ApiError::bad_request(format!(
            "group_by `{bad}` is not one of: tool, member, integration, hour"
        )));
    }
    let rows = history::usage::summed(&st.pool, project_id, &scope, query.from, query.to, &group_by).await?;
    Ok(Json(json!({ "usage": rows })))
}

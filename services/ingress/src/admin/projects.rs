//! Projects: create, list, read, and change their settings (outbound allow-list,
//! quotas, bodies in run history).

use std::sync::Arc;

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use tengine_control::projects::{self, OAuthSettings, Project, ProjectSettings};
use tengine_core::{bodies::MAX_BODY_BYTES, domain::validate_name};
use utoipa::ToSchema;

use super::{
    auth::Admin,
    error::{ApiError, ApiResult, not_found_as},
    extract::{Ids, JsonBody, ProjectPath},
    openapi::{AdminErrors, BadRequest, InvalidField, NotFound, TooLarge},
};
use crate::AppState;

const TAG: &str = "projects";
/// Dotted JSON paths a project may redact from stored bodies, at most.
const MAX_REDACT_FIELDS: usize = 64;
const MAX_REDACT_FIELD_BYTES: usize = 256;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// 1–200 characters, no control characters.
    name: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectList {
    projects: Vec<Project>,
}

/// Create a project (and its default integration).
#[utoipa::path(post, path = "/v1/projects", operation_id = "create_project", tag = TAG, security(("admin_token" = [])),
    request_body = NewProject,
    responses((status = 201, body = Project), AdminErrors, BadRequest, InvalidField, TooLarge))]
pub async fn create(
    _: Admin,
    State(st): State<Arc<AppState>>,
    JsonBody(input): JsonBody<NewProject>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    let name = input.name.trim();
    validate_name("name", name, false)?;
    Ok((StatusCode::CREATED, Json(projects::create(&st.pool, name).await?)))
}

/// List the projects.
#[utoipa::path(get, path = "/v1/projects", operation_id = "list_projects", tag = TAG, security(("admin_token" = [])),
    responses((status = 200, body = ProjectList), AdminErrors))]
pub async fn list(_: Admin, State(st): State<Arc<AppState>>) -> ApiResult<Json<ProjectList>> {
    Ok(Json(ProjectList {
        projects: projects::list(&st.pool).await?,
    }))
}

/// Read a project (`default_integration_id` is its oldest live integration).
#[utoipa::path(get, path = "/v1/projects/{project_id}", operation_id = "get_project", tag = TAG, security(("admin_token" = [])),
    params(ProjectPath),
    responses((status = 200, body = Project), AdminErrors, BadRequest, NotFound))]
pub async fn get(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
) -> ApiResult<Json<Project>> {
    let project = projects::get(&st.pool, project_id)
        .await
        .map_err(|_| ApiError::not_found("project"))?;
    Ok(Json(project))
}

/// `null` in a PATCH body removes a setting; an absent key leaves it as it is.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The settings to change; the others are kept.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectPatch {
    /// Replaces the networks (CIDR like `10.1.0.0/16`, or single addresses stored as /32 or /128) the
    /// project's tools may reach although they are private; `[]` clears it.
    #[serde(default)]
    outbound_allowlist: Option<Vec<String>>,
    /// Calls per calendar month (UTC), 0 or more; `null` for no limit.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    monthly_call_limit: Option<Option<i64>>,
    /// Calls per minute per member (per API key without a member session), 0 to 2147483647; `null`
    /// for no limit.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 2147483647)]
    member_calls_per_minute: Option<Option<i64>>,
    /// Whether run history keeps request and response bodies (redacted, capped); default `false`.
    #[serde(default)]
    store_bodies: Option<bool>,
    /// Bytes kept of each body, 1 to 1048576 (default 4096).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1048576)]
    body_max_bytes: Option<i64>,
    /// At most 64 dotted JSON paths (`password`, `card.number`) replaced by `[REDACTED]` in stored
    /// bodies; replaces the list.
    #[serde(default)]
    redact_fields: Option<Vec<String>>,
    /// MCP authorization (OAuth 2.1) for the project's resource `/mcp/{project_id}`; replaces the
    /// whole setting. See docs/oauth.md.
    #[serde(default)]
    oauth: Option<OAuthPatch>,
}

/// A project's OAuth settings.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthPatch {
    enabled: bool,
    /// The customer's login page: `https`, or `http` on a loopback host (development). Required
    /// when enabled. The browser arrives with `?tengine_login=…` appended.
    #[serde(default)]
    login_url: Option<String>,
    /// The integration OAuth-connected clients act through (its tool limits, revocation and
    /// attribution apply); the project's default integration when absent.
    #[serde(default)]
    integration_id: Option<uuid::Uuid>,
    /// Only these client_ids may be authorized (a client metadata document's URL, or an id from
    /// registration); absent or `null`: any client. At most 100.
    #[serde(default)]
    allowed_client_ids: Option<Vec<String>>,
    /// Only clients whose redirect URI has one of these hosts (`claude.ai`, `chatgpt.com`,
    /// `localhost`) may be authorized; absent or `null`: any. At most 100.
    #[serde(default)]
    allowed_redirect_hosts: Option<Vec<String>>,
}

/// Change a project's settings: the outbound allow-list, the quotas, bodies in run history.
#[utoipa::path(patch, path = "/v1/projects/{project_id}", operation_id = "patch_project", tag = TAG, security(("admin_token" = [])),
    params(ProjectPath), request_body = ProjectPatch,
    responses((status = 200, body = Project), AdminErrors, BadRequest, NotFound, InvalidField, TooLarge))]
pub async fn patch(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
    JsonBody(patch): JsonBody<ProjectPatch>,
) -> ApiResult<Json<Project>> {
    Ok(Json(update(&st, project_id, patch).await?))
}

/// Checks and applies a patch: the admin API's PATCH and the console's Settings form.
pub(crate) async fn update(st: &AppState, project_id: uuid::Uuid, patch: ProjectPatch) -> ApiResult<Project> {
    let settings = patch.settings()?;
    if let Some(integration_id) = settings.oauth.as_ref().and_then(|o| o.integration_id)
        && !tengine_control::oauth::integration_exists(&st.pool, project_id, integration_id).await?
    {
        return Err(ApiError::invalid_field(
            "oauth.integration_id",
            "is not a live integration of this project",
        ));
    }
    projects::update_settings(&st.pool, project_id, &settings)
        .await
        .map_err(not_found_as("project"))
}

impl ProjectPatch {
    /// The patch, checked, as the store's settings change.
    fn settings(self) -> ApiResult<ProjectSettings> {
        Ok(ProjectSettings {
            outbound_allowlist: self.outbound_allowlist.as_deref().map(networks).transpose()?,
            monthly_call_limit: self.monthly_call_limit.map(monthly_call_limit).transpose()?,
            member_calls_per_minute: self.member_calls_per_minute.map(member_calls_per_minute).transpose()?,
            store_bodies: self.store_bodies,
            body_max_bytes: self.body_max_bytes.map(body_max_bytes).transpose()?,
            redact_fields: self.redact_fields.map(redact_fields).transpose()?,
            oauth: self.oauth.map(oauth).transpose()?,
        })
    }
}

/// Most networks a project's outbound allow-list holds (every call's policy check reads it).
const ALLOWLIST_MAX: usize = 256;

fn networks(allowlist: &[String]) -> ApiResult<Vec<String>> {
    if allowlist.len() > ALLOWLIST_MAX {
        return Err(ApiError::invalid_field(
            "outbound_allowlist",
            format!(
                "holds at most {ALLOWLIST_MAX} networks, not {}; use wider networks",
                allowlist.len()
            ),
        ));
    }
    allowlist
        .iter()
        .map(|raw| {
            raw.parse::<ipnet::IpNet>()
                .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.to_string())
                .map_err(|_| {
                    ApiError::invalid_field(
                        "outbound_allowlist",
                        format!(
                            "`{}` is not an IP network (CIDR like 10.1.0.0/16) or address",
                            raw.chars().take(64).collect::<String>()
                        ),
                    )
                })
        })
        .collect()
}

fn monthly_call_limit(limit: Option<i64>) -> ApiResult<Option<i64>> {
    if limit.is_some_and(|n| n < 0) {
        return Err(ApiError::invalid_field(
            "monthly_call_limit",
            "must be a number of calls (0 or more), or null for no limit",
        ));
    }
    Ok(limit)
}

fn member_calls_per_minute(limit: Option<i64>) -> ApiResult<Option<i32>> {
    limit
        .map(|n| {
            i32::try_from(n).ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::invalid_field(
                    "member_calls_per_minute",
                    "must be a number of calls per minute (0 to 2147483647), or null for no limit",
                )
            })
        })
        .transpose()
}

fn body_max_bytes(max: i64) -> ApiResult<i32> {
    i32::try_from(max)
        .ok()
        .filter(|n| (1..=MAX_BODY_BYTES).contains(&i64::from(*n)))
        .ok_or_else(|| {
            ApiError::invalid_field(
                "body_max_bytes",
                format!("must be 1 to {MAX_BODY_BYTES} (bytes kept of each body)"),
            )
        })
}

fn redact_fields(fields: Vec<String>) -> ApiResult<Vec<String>> {
    let malformed = |f: &String| f.len() > MAX_REDACT_FIELD_BYTES || f.split('.').any(str::is_empty);
    if fields.len() > MAX_REDACT_FIELDS || fields.iter().any(malformed) {
        return Err(ApiError::invalid_field(
            "redact_fields",
            format!(
                "at most {MAX_REDACT_FIELDS} JSON field paths like `password` or `card.number` \
                 (non-empty keys joined by `.`, each path at most {MAX_REDACT_FIELD_BYTES} bytes)"
            ),
        ));
    }
    Ok(fields)
}

/// Longest login URL.
const MAX_LOGIN_URL_BYTES: usize = 2048;

fn oauth(patch: OAuthPatch) -> ApiResult<OAuthSettings> {
    if let Some(raw) = &patch.login_url {
        login_url(raw)?;
    } else if patch.enabled {
        return Err(ApiError::invalid_field(
            "oauth.login_url",
            "is required when OAuth is enabled: the page of your app that signs users in for Tengine",
        ));
    }
    allow_list("oauth.allowed_client_ids", patch.allowed_client_ids.as_deref())?;
    allow_list("oauth.allowed_redirect_hosts", patch.allowed_redirect_hosts.as_deref())?;
    Ok(OAuthSettings {
        enabled: patch.enabled,
        login_url: patch.login_url,
        integration_id: patch.integration_id,
        allowed_client_ids: patch.allowed_client_ids,
        allowed_redirect_hosts: patch
            .allowed_redirect_hosts
            .map(|hosts| hosts.iter().map(|h| h.to_ascii_lowercase()).collect()),
    })
}

/// Entries of an OAuth allow-list: at most 100 non-empty strings of at most 2048 bytes.
fn allow_list(field: &'static str, entries: Option<&[String]>) -> ApiResult<()> {
    let bad = |e: &String| e.is_empty() || e.len() > 2048 || e.chars().any(char::is_control);
    if entries.is_some_and(|list| list.len() > 100 || list.iter().any(bad)) {
        return Err(ApiError::invalid_field(
            field,
            "at most 100 non-empty entries of at most 2048 bytes without control characters",
        ));
    }
    Ok(())
}

fn login_url(raw: &str) -> ApiResult<()> {
    let invalid = |why: &str| ApiError::invalid_field("oauth.login_url", why.to_string());
    if raw.len() > MAX_LOGIN_URL_BYTES {
        return Err(invalid("is longer than 2048 bytes"));
    }
    let url = url::Url::parse(raw).map_err(|e| invalid(&format!("is not an absolute URL ({e})")))?;
    let loopback = crate::oauth::clients::is_loopback_host(&url);
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(invalid("must be https (http only on a loopback host, for development)")),
    }
    if url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid("must have no fragment and no credentials"));
    }
    Ok(())
}

/// 404 `not_found` naming the project when it does not exist.
pub(super) async fn exists(st: &AppState, project_id: uuid::Uuid) -> ApiResult<()> {
    projects::get(&st.pool, project_id)
        .await
        .map(|_| ())
        .map_err(not_found_as("project"))
}

//! API keys: created in an integration (the project's default one unless named),
//! shown once, listed without their secret, revoked.

use std::sync::Arc;

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use tengine_control::{
    api_keys::{self, ApiKey},
    principals,
};
use tengine_core::domain::validate_name;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    auth::Admin,
    error::{ApiError, ApiResult, not_found_as},
    extract::{ApiKeyPath, Ids, OptionalJsonBody, ProjectPath},
    integrations::ClientConfig,
    openapi::{AdminErrors, BadRequest, InvalidField, NotFound, TooLarge},
    projects,
};
use crate::AppState;

const TAG: &str = "api-keys";

/// An API key to create; every field is optional (an empty body takes the defaults).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// 0–200 characters, no control characters.
    #[serde(default)]
    pub(super) name: String,
    /// The integration the key belongs to; the project's default integration when absent.
    #[serde(default)]
    integration_id: Option<Uuid>,
    /// `call` (MCP calls, and reading the runs the key may call) and/or `read` (the whole project's
    /// run history, bodies and usage); `["call"]` when absent. A key without `call` is refused on
    /// `/mcp` (403).
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

impl NewApiKey {
    /// A key of the project's default integration (the console's form).
    pub(crate) fn in_default_integration(name: String, scopes: Vec<String>) -> Self {
        Self {
            name,
            integration_id: None,
            scopes: Some(scopes),
        }
    }

    pub(super) fn checked_name(&self) -> ApiResult<()> {
        Ok(validate_name("name", &self.name, true)?)
    }

    pub(super) fn scopes(&self) -> ApiResult<Vec<String>> {
        let scopes = self
            .scopes
            .clone()
            .unwrap_or_else(|| vec![principals::SCOPE_CALL.to_string()]);
        if scopes.is_empty() {
            return Err(ApiError::invalid_field(
                "scopes",
                "give at least one scope: `call` and/or `read`",
            ));
        }
        if let Some(bad) = scopes.iter().find(|s| !principals::SCOPES.contains(&s.as_str())) {
            return Err(ApiError::invalid_field(
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

/// A key just created: the record plus its plaintext, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    record: ApiKey,
    /// The plaintext key (`tengine_…`); only its SHA-256 is stored.
    key: String,
    note: &'static str,
    /// With the key filled in (keys created through their integration only).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_config: Option<ClientConfig>,
}

impl CreatedKey {
    pub(super) fn new(record: ApiKey, key: String, client_config: Option<ClientConfig>) -> Self {
        Self {
            record,
            key,
            note: "store this key now: it is shown once and only its hash is kept",
            client_config,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    api_keys: Vec<ApiKey>,
}

/// Create an API key (in the default integration unless `integration_id` names another).
#[utoipa::path(post, path = "/v1/projects/{project_id}/api-keys", operation_id = "create_api_key", tag = TAG, security(("admin_token" = [])),
    params(ProjectPath), request_body(content = Option<NewApiKey>, description = "optional: an empty body takes the defaults"),
    responses((status = 201, body = CreatedKey), AdminErrors, BadRequest, NotFound, InvalidField, TooLarge))]
pub async fn create(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
    OptionalJsonBody(input): OptionalJsonBody<NewApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let (record, key) = create_key(&st, project_id, &input).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey::new(record, key, None))))
}

/// Creation's work, shared with the console: the record and the plaintext key.
pub(crate) async fn create_key(st: &AppState, project_id: Uuid, input: &NewApiKey) -> ApiResult<(ApiKey, String)> {
    input.checked_name()?;
    projects::exists(st, project_id).await?;
    let scopes = input.scopes()?;
    api_keys::create(&st.pool, project_id, input.integration_id, &input.name, &scopes)
        .await
        .map_err(not_found_as("integration"))
}

/// List a project's API keys (with `display_prefix` and `revoked_at`, never the key).
#[utoipa::path(get, path = "/v1/projects/{project_id}/api-keys", operation_id = "list_api_keys", tag = TAG, security(("admin_token" = [])),
    params(ProjectPath),
    responses((status = 200, body = ApiKeyList), AdminErrors, BadRequest, NotFound))]
pub async fn list(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
) -> ApiResult<Json<ApiKeyList>> {
    projects::exists(&st, project_id).await?;
    Ok(Json(ApiKeyList {
        api_keys: api_keys::list(&st.pool, project_id).await?,
    }))
}

/// Revoke an API key: it stops working at once (its MCP and member sessions included); idempotent.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/api-keys/{key_id}", operation_id = "revoke_api_key", tag = TAG,
    security(("admin_token" = [])), params(ApiKeyPath),
    responses((status = 204, description = "revoked"), AdminErrors, BadRequest, NotFound))]
pub async fn revoke(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ApiKeyPath { project_id, key_id }): Ids<ApiKeyPath>,
) -> ApiResult<StatusCode> {
    revoke_key(&st, project_id, key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revocation's work, shared with the console.
pub(crate) async fn revoke_key(st: &AppState, project_id: Uuid, key_id: Uuid) -> ApiResult<()> {
    api_keys::revoke(&st.pool, project_id, key_id)
        .await
        .map_err(not_found_as("API key"))
}

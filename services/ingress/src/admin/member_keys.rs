//! Member keys: the public keys a project's backend signs member assertions with
//! (ES256, identified by `kid`).

use std::sync::Arc;

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use tengine_control::member_keys::{self, MemberKey};
use tengine_core::domain::validate_identifier;
use utoipa::ToSchema;

use super::{
    auth::Admin,
    error::{ApiError, ApiResult, not_found_as},
    extract::{Ids, JsonBody, MemberKeyPath, ProjectPath},
    openapi::{AdminErrors, BadRequest, Conflict, InvalidField, NotFound, TooLarge},
};
use crate::{AppState, members::MAX_KID_LEN};

const TAG: &str = "member-keys";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMemberKey {
    /// 1–128 bytes without control characters, unique in the project.
    kid: String,
    /// SPKI PEM of a P-256 public key (`-----BEGIN PUBLIC KEY-----`).
    public_key: String,
}

#[derive(Serialize, ToSchema)]
pub struct MemberKeyList {
    member_keys: Vec<MemberKey>,
}

/// Add a member key.
#[utoipa::path(post, path = "/v1/projects/{project_id}/member-keys", operation_id = "create_member_key", tag = TAG, security(("admin_token" = [])),
    params(ProjectPath), request_body = NewMemberKey,
    responses((status = 201, body = MemberKey), AdminErrors, BadRequest, NotFound, Conflict, InvalidField, TooLarge))]
pub async fn create(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
    JsonBody(input): JsonBody<NewMemberKey>,
) -> ApiResult<(StatusCode, Json<MemberKey>)> {
    let key = add_key(&st, project_id, &input.kid, &input.public_key).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// Checks and adds a member key: the admin API's POST and the console's form.
pub(crate) async fn add_key(
    st: &AppState,
    project_id: uuid::Uuid,
    kid: &str,
    public_key: &str,
) -> ApiResult<MemberKey> {
    validate_identifier("kid", kid, MAX_KID_LEN)?;
    if !public_key.contains("BEGIN PUBLIC KEY")
        || jsonwebtoken::DecodingKey::from_ec_pem(public_key.as_bytes()).is_err()
    {
        return Err(ApiError::invalid_field(
            "public_key",
            "must be a P-256 (ES256) public key in SPKI PEM (-----BEGIN PUBLIC KEY-----)",
        ));
    }
    member_keys::create(&st.pool, project_id, kid, public_key)
        .await
        .map_err(not_found_as("project"))
}

/// List a project's live member keys.
#[utoipa::path(get, path = "/v1/projects/{project_id}/member-keys", operation_id = "list_member_keys", tag = TAG, security(("admin_token" = [])),
    params(ProjectPath),
    responses((status = 200, body = MemberKeyList), AdminErrors, BadRequest, NotFound))]
pub async fn list(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
) -> ApiResult<Json<MemberKeyList>> {
    let member_keys = member_keys::list(&st.pool, project_id)
        .await
        .map_err(not_found_as("project"))?;
    Ok(Json(MemberKeyList { member_keys }))
}

/// Delete a member key: new assertions signed with it are refused.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/member-keys/{kid}", operation_id = "delete_member_key", tag = TAG,
    security(("admin_token" = [])), params(MemberKeyPath),
    responses((status = 204, description = "deleted"), AdminErrors, BadRequest, NotFound))]
pub async fn delete(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(MemberKeyPath { project_id, kid }): Ids<MemberKeyPath>,
) -> ApiResult<StatusCode> {
    remove_key(&st, project_id, &kid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes a member key: the admin API's DELETE and the console's form.
pub(crate) async fn remove_key(st: &AppState, project_id: uuid::Uuid, kid: &str) -> ApiResult<()> {
    member_keys::delete(&st.pool, project_id, kid)
        .await
        .map_err(not_found_as("member key"))
}

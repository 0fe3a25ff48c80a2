//! Members: ending every session a member holds (revocation).

use std::sync::Arc;

use axum::{extract::State, http::StatusCode};
use tengine_control::members;
use tengine_core::domain::{MEMBER_ID_MAX_BYTES, validate_identifier};

use super::{
    auth::Admin,
    error::{ApiResult, not_found_as},
    extract::{Ids, MemberPath},
    openapi::{AdminErrors, BadRequest, InvalidField, NotFound},
};
use crate::AppState;

const TAG: &str = "members";

/// End every session of a member issued up to now.
///
/// A `member_id` that no assertion could carry (over 256 bytes, or a control character) is 422.
#[utoipa::path(post, path = "/v1/projects/{project_id}/members/{member_id}/revoke-sessions", operation_id = "revoke_member_sessions", tag = TAG,
    security(("admin_token" = [])), params(MemberPath),
    responses((status = 204, description = "revoked"), AdminErrors, BadRequest, NotFound, InvalidField))]
pub async fn revoke_sessions(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(MemberPath { project_id, member_id }): Ids<MemberPath>,
) -> ApiResult<StatusCode> {
    revoke_member(&st, project_id, &member_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends a member's sessions: the admin API's POST and the console's form.
pub(crate) async fn revoke_member(st: &AppState, project_id: uuid::Uuid, member_id: &str) -> ApiResult<()> {
    // Member ids come from assertions' `sub`, which refuses these too.
    validate_identifier("member_id", member_id, MEMBER_ID_MAX_BYTES)?;
    members::revoke_sessions(&st.pool, project_id, member_id)
        .await
        .map_err(not_found_as("project"))
}

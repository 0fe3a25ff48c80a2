//! Member sessions: an integration's backend exchanges a member assertion (a JWT
//! it signed with a member key) for a member session token (`tng_mst_…`).

use std::sync::Arc;

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tengine_core::errors;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    auth::KeyHolder,
    error::{ApiError, ApiResult},
    extract::JsonBody,
    openapi::{BadRequest, InvalidField, KeyHolderErrors, TooLarge},
};
use crate::{AppState, members::MemberError};

const TAG: &str = "member-sessions";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberSessionRequest {
    /// The member assertion: a JWT (ES256) signed with one of the project's member keys.
    member_assertion: String,
}

#[derive(Serialize, ToSchema)]
pub struct MemberSession {
    /// The member session token (`tng_mst_…`), a bearer credential for `/mcp` and run reads.
    token: String,
    expires_at: DateTime<Utc>,
    member: MemberView,
    project_id: Uuid,
    integration_id: Uuid,
}

#[derive(Serialize, ToSchema)]
pub struct MemberView {
    id: String,
    email: Option<String>,
    roles: Vec<String>,
}

/// Exchange a member assertion for a member session; authenticated with the integration's API key.
#[utoipa::path(post, path = "/v1/member-sessions", operation_id = "create_member_session", tag = TAG, security(("api_key" = [])),
    request_body = MemberSessionRequest,
    responses((status = 201, body = MemberSession), KeyHolderErrors, BadRequest, InvalidField, TooLarge))]
pub async fn create(
    KeyHolder(principal): KeyHolder,
    State(st): State<Arc<AppState>>,
    JsonBody(input): JsonBody<MemberSessionRequest>,
) -> ApiResult<(StatusCode, Json<MemberSession>)> {
    let minted = st
        .members
        .exchange(&st.pool, &principal.caller, &input.member_assertion)
        .await
        .map_err(|e| match e {
            MemberError::Invalid(message) => ApiError::new(errors::INVALID_ASSERTION, message),
            MemberError::Store(err) => err.into(),
        })?;
    let session = MemberSession {
        token: minted.token,
        expires_at: minted.expires_at,
        member: MemberView {
            id: minted.member.id,
            email: minted.member.email,
            roles: minted.member.roles,
        },
        project_id: principal.caller.project_id,
        integration_id: principal.caller.integration_id,
    };
    Ok((StatusCode::CREATED, Json(session)))
}

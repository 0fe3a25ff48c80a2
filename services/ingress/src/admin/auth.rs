//! Who is asking, as extractors: `Admin` (the admin token), `Reader` (run history
//! and usage: the admin or a credential of the project, within its read scope) and
//! `KeyHolder` (an integration's API key, for the member-session exchange).
//! A handler that takes one of them runs only for that caller.

use std::sync::Arc;

use axum::{extract::FromRequestParts, http::HeaderMap, http::request::Parts};
use tengine_control::principals::{self, Principal, ReadScope};
use tengine_core::{credentials, errors};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use crate::{AppState, mcp::bearer, members};

/// The request carries the admin token: 401 `unauthorized` if not, 403
/// `admin_disabled` when no admin token is configured.
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> ApiResult<Self> {
        check_admin(st, &parts.headers).map(|()| Admin)
    }
}

/// Whether the request carries the admin token.
pub fn is_admin(st: &AppState, headers: &HeaderMap) -> bool {
    check_admin(st, headers).is_ok()
}

fn check_admin(st: &AppState, headers: &HeaderMap) -> ApiResult<()> {
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
/// project, within its read scope (`Principal::read_scope`). Anyone else: 401.
pub enum Reader {
    Admin,
    Project { project_id: Uuid, scope: ReadScope },
}

impl FromRequestParts<Arc<AppState>> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> ApiResult<Self> {
        if is_admin(st, &parts.headers) {
            return Ok(Reader::Admin);
        }
        let found = match bearer(&parts.headers) {
            Some(token) if token.starts_with(members::TOKEN_PREFIX) => {
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
}

impl Reader {
    /// The reader's scope within `project_id`, or `None` when it may not read it at all.
    pub fn scope_in(&self, project_id: Uuid) -> Option<ReadScope> {
        match self {
            Reader::Admin => Some(ReadScope::everything()),
            Reader::Project { project_id: own, scope } => (*own == project_id).then(|| scope.clone()),
        }
    }
}

/// The request carries a live API key (`Bearer tengine_…`): 401 `unauthorized` if not.
pub struct KeyHolder(pub Principal);

impl FromRequestParts<Arc<AppState>> for KeyHolder {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> ApiResult<Self> {
        let found = match bearer(&parts.headers).filter(|t| credentials::looks_like_api_key(t)) {
            Some(token) => principals::authenticate_api_key(&st.pool, token).await?,
            None => None,
        };
        found.map(KeyHolder).ok_or_else(|| {
            ApiError::new(
                errors::UNAUTHORIZED,
                "send the integration's API key as `Authorization: Bearer tengine_…`",
            )
        })
    }
}

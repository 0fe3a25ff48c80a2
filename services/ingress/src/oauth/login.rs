//! `{issuer}/login/callback`: the customer's app sends the browser back with the
//! `tengine_login` it was given and a `member_assertion` (the project's ES256
//! member assertion with one more claim, `tengine_login`, equal to it). The login
//! is spent once; then the consent page is shown.

use std::sync::Arc;

use axum::{
    Form,
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;
use tengine_control::oauth as store;
use tengine_core::{credentials::constant_time_eq, errors};
use uuid::Uuid;

use super::{CONSENT_TTL_SECS, OAuthError, PageError, after, consent, digest, enabled_project, secret};
use crate::{AppState, members};

/// Longest `tengine_login` and `member_assertion` accepted.
const MAX_LOGIN_BYTES: usize = 128;
const MAX_ASSERTION_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
pub struct Callback {
    tengine_login: Option<String>,
    member_assertion: Option<String>,
}

pub async fn callback_get(
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Query(callback): Query<Callback>,
) -> Response {
    finish(&st, project_id, callback)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn callback_post(
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Form(callback): Form<Callback>,
) -> Response {
    finish(&st, project_id, callback)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn finish(st: &AppState, project_id: Uuid, callback: Callback) -> Result<Response, PageError> {
    let project = enabled_project(st, project_id).await?;
    let (Some(login), Some(assertion)) = (callback.tengine_login, callback.member_assertion) else {
        return Err(OAuthError::invalid_request("the login callback needs tengine_login and member_assertion").into());
    };
    if login.len() > MAX_LOGIN_BYTES || assertion.len() > MAX_ASSERTION_BYTES {
        return Err(OAuthError::invalid_request("tengine_login or member_assertion is too long").into());
    }
    let unknown = || OAuthError::invalid_request("this tengine_login is unknown, expired or already used: start again");
    let authorization = store::awaiting_login(&st.pool, project_id, &digest(&login))
        .await?
        .ok_or_else(unknown)?;
    let asserted = members::check_assertion(&st.pool, project_id, &assertion)
        .await
        .map_err(|e| match e {
            members::MemberError::Store(err) => OAuthError::store(err),
            refused => OAuthError::new(errors::OAUTH_ACCESS_DENIED, refused.to_string()),
        })?;
    if !asserted
        .tengine_login
        .as_deref()
        .is_some_and(|claimed| constant_time_eq(claimed, &login))
    {
        return Err(OAuthError::new(
            errors::OAUTH_ACCESS_DENIED,
            "the member_assertion's `tengine_login` claim must equal the tengine_login of this login",
        )
        .into());
    }
    let member = json!({
        "id": asserted.member.id,
        "email": asserted.member.email,
        "roles": asserted.member.roles,
    });
    let csrf = secret("");
    if !store::logged_in(
        &st.pool,
        authorization.id,
        &member,
        &digest(&csrf),
        after(CONSENT_TTL_SECS),
    )
    .await?
    {
        return Err(unknown().into());
    }
    consent::page(st, &project, &authorization, &member, &csrf).await
}

//! `POST {issuer}/token` (authorization_code with PKCE; refresh_token, rotated on
//! every use, a reused one revoking its whole grant) and `POST {issuer}/revoke`
//! (RFC 7009). Access tokens are member session tokens bound to the grant's API
//! key and to the resource (their audience).

use std::sync::Arc;

use axum::{
    Form, Json,
    extract::{Path, State},
    http::header,
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tengine_control::oauth::{self as store, CodeUse, Grant, NewGrant, ProjectOAuth, RefreshUse};
use tengine_core::{credentials::constant_time_eq, envelope::Member};
use uuid::Uuid;

use super::{OAuthError, REFRESH_TTL_DAYS, after, digest, enabled_project, secret};
use crate::{
    AppState,
    members::{self, Binding},
};

#[derive(Debug, Default, Deserialize)]
pub struct TokenRequest {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    client_id: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    resource: Option<String>,
}

pub async fn token(
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Form(request): Form<TokenRequest>,
) -> Response {
    let answer = async {
        let project = enabled_project(&st, project_id).await?;
        match request.grant_type.as_deref() {
            Some("authorization_code") => exchange_code(&st, &project, &request).await,
            Some("refresh_token") => refresh(&st, &project, &request).await,
            _ => Err(OAuthError::new(
                tengine_core::errors::OAUTH_UNSUPPORTED_GRANT_TYPE,
                "grant_type must be authorization_code or refresh_token",
            )),
        }
    }
    .await;
    answer.unwrap_or_else(IntoResponse::into_response)
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, OAuthError> {
    value
        .as_deref()
        .filter(|v| !v.is_empty() && v.len() <= 2048)
        .ok_or_else(|| OAuthError::invalid_request(format!("{name} is required")))
}

/// The code is spent by the first attempt, right or wrong (so it cannot be
/// guessed at); a code presented again revokes what it produced.
async fn exchange_code(st: &AppState, project: &ProjectOAuth, request: &TokenRequest) -> Result<Response, OAuthError> {
    let code = required(&request.code, "code")?;
    let client_id = required(&request.client_id, "client_id")?;
    let authorization = match store::use_code(&st.pool, project.project_id, &digest(code)).await? {
        CodeUse::Fresh(authorization) => authorization,
        CodeUse::Replayed(grant) => {
            if let Some(grant) = grant {
                store::revoke_grant(&st.pool, project.project_id, grant, "code_replayed").await?;
                tracing::warn!(project = %project.project_id, grant = %grant, "oauth code replayed: grant revoked");
            }
            return Err(OAuthError::invalid_grant(
                "this authorization code was already used; what it issued is revoked",
            ));
        }
        CodeUse::Unknown => {
            return Err(OAuthError::invalid_grant(
                "the authorization code is unknown or expired",
            ));
        }
    };
    if authorization.client_id != client_id {
        return Err(OAuthError::invalid_grant("the code was issued to another client"));
    }
    if request
        .redirect_uri
        .as_deref()
        .is_some_and(|uri| uri != authorization.redirect_uri)
    {
        return Err(OAuthError::invalid_grant(
            "redirect_uri differs from the authorization request's",
        ));
    }
    let verifier = request.code_verifier.as_deref().unwrap_or_default();
    if !pkce_matches(verifier, &authorization.code_challenge) {
        return Err(OAuthError::invalid_grant(
            "code_verifier is missing or does not match the code_challenge (PKCE S256)",
        ));
    }
    check_resource(request, &authorization.resource)?;
    let member = authorization
        .member
        .as_ref()
        .ok_or_else(|| OAuthError::invalid_grant("the authorization has no member"))?;
    let grant = store::create_grant(
        &st.pool,
        &NewGrant {
            authorization_id: authorization.id,
            project_id: project.project_id,
            integration_id: project.integration_id,
            client_id,
            member_id: member["id"].as_str().unwrap_or_default(),
            member,
            resource: &authorization.resource,
        },
    )
    .await?;
    tracing::info!(project = %project.project_id, grant = %grant.id, client_id = %grant.client_id,
        member = %grant.member_id, "oauth grant created");
    issue(st, project, &grant).await
}

async fn refresh(st: &AppState, project: &ProjectOAuth, request: &TokenRequest) -> Result<Response, OAuthError> {
    let token = required(&request.refresh_token, "refresh_token")?;
    let client_id = required(&request.client_id, "client_id")?;
    let grant = match store::use_refresh_token(&st.pool, project.project_id, &digest(token)).await? {
        RefreshUse::Fresh(grant) => grant,
        RefreshUse::Reused(grant) => {
            store::revoke_grant(&st.pool, project.project_id, grant, "refresh_token_reused").await?;
            tracing::warn!(project = %project.project_id, grant = %grant, "oauth refresh token reused: grant revoked");
            return Err(OAuthError::invalid_grant(
                "this refresh token was already used: the grant is revoked, authorize again",
            ));
        }
        RefreshUse::Unknown => {
            return Err(OAuthError::invalid_grant(
                "the refresh token is unknown, expired or revoked",
            ));
        }
    };
    if grant.client_id != client_id {
        return Err(OAuthError::invalid_grant(
            "the refresh token was issued to another client",
        ));
    }
    check_resource(request, &grant.resource)?;
    issue(st, project, &grant).await
}

fn check_resource(request: &TokenRequest, granted: &str) -> Result<(), OAuthError> {
    match request.resource.as_deref() {
        Some(resource) if resource != granted => Err(OAuthError::invalid_target(
            "resource differs from the one authorized (this project's MCP endpoint)",
        )),
        _ => Ok(()),
    }
}

/// RFC 7636 §4.6: BASE64URL(SHA256(verifier)) == challenge; verifiers are 43–128 characters.
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    well_formed && constant_time_eq(&URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())), challenge)
}

#[derive(Deserialize)]
struct GrantedMember {
    id: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// A new access token and a new refresh token for the grant.
async fn issue(st: &AppState, project: &ProjectOAuth, grant: &Grant) -> Result<Response, OAuthError> {
    let member: GrantedMember = serde_json::from_value(grant.member.clone())
        .map_err(|_| OAuthError::invalid_grant("the grant's member is unreadable"))?;
    let minted = st
        .members
        .mint(
            &Binding {
                project_id: project.project_id,
                integration_id: project.integration_id,
                api_key_id: grant.api_key_id,
                audience: Some(&grant.resource),
            },
            Member {
                id: member.id,
                email: member.email,
                roles: member.roles,
                session_issued_at: chrono::Utc::now(),
            },
        )
        .map_err(|e| OAuthError::invalid_grant(e.to_string()))?;
    let refresh_token = secret("tng_ort_");
    store::store_refresh_token(
        &st.pool,
        grant.id,
        &digest(&refresh_token),
        after(REFRESH_TTL_DAYS.saturating_mul(86_400)),
    )
    .await?;
    let expires_in = minted
        .expires_at
        .signed_duration_since(chrono::Utc::now())
        .num_seconds()
        .max(0);
    Ok((
        [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")],
        Json(json!({
            "access_token": minted.token,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "refresh_token": refresh_token,
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct RevokeRequest {
    token: Option<String>,
    client_id: Option<String>,
}

/// RFC 7009: revoking an access or a refresh token revokes its grant. Always 200
/// (an unknown token, or one of another client, changes nothing).
pub async fn revoke(
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Form(request): Form<RevokeRequest>,
) -> Response {
    let answer = async {
        let project = enabled_project(&st, project_id).await?;
        let token = required(&request.token, "token")?;
        let client_id = required(&request.client_id, "client_id")?;
        if let Some(grant) = grant_of(&st, &project, token).await?
            && grant.client_id == client_id
        {
            store::revoke_grant(&st.pool, project.project_id, grant.id, "revoked").await?;
            tracing::info!(project = %project.project_id, grant = %grant.id, "oauth grant revoked by its client");
        }
        Ok::<_, OAuthError>(Json(json!({})).into_response())
    }
    .await;
    answer.unwrap_or_else(IntoResponse::into_response)
}

async fn grant_of(st: &AppState, project: &ProjectOAuth, token: &str) -> Result<Option<Grant>, OAuthError> {
    if token.starts_with(members::TOKEN_PREFIX) {
        let Ok(verified) = st.members.verify_bound(token) else {
            return Ok(None);
        };
        let grant = store::grant_by_api_key(&st.pool, verified.api_key_id).await?;
        return Ok(grant.filter(|g| g.project_id == project.project_id));
    }
    Ok(store::grant_of_refresh_token(&st.pool, project.project_id, &digest(token)).await?)
}

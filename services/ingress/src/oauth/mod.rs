//! MCP authorization (OAuth 2.1, the 2025-11-25 and 2026-07-28 revisions): each
//! project with OAuth enabled is the authorization server of its own resource
//! `{public_url}/mcp/{project_id}`, issuer `{public_url}/oauth/{project_id}`.
//!
//! The flow: a client discovers the metadata from the 401 (`metadata`), is known
//! by a Client ID Metadata Document or registers (`clients`), sends the browser to
//! `/authorize` (`authorize`), which hands it to the customer's login page; that
//! page sends it back with a member assertion (`login`); the member approves on
//! Tengine's consent page (`consent`); the client exchanges the code and later
//! its refresh tokens (`token`). Access tokens are member session tokens
//! (`tng_mst_…`) bound to the grant's API key and to the resource, so they pass
//! the same checks as any member session and die with their grant.

pub mod authorize;
pub mod clients;
pub mod consent;
pub mod errors;
pub mod login;
pub mod metadata;
pub mod token;

use std::sync::Arc;

use axum::{
    Router,
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tengine_control::oauth::ProjectOAuth;
use uuid::Uuid;

use crate::{AppState, mcp::Endpoint};
pub use errors::{OAuthError, PageError};

/// How long the customer's app has to sign its user in.
pub const LOGIN_TTL_SECS: i64 = 600;
/// How long the consent page may stay open.
pub const CONSENT_TTL_SECS: i64 = 600;
/// How long an authorization code lives (OAuth 2.1 recommends minutes at most).
pub const CODE_TTL_SECS: i64 = 60;
/// How long a refresh token lives unused (each use issues a new one).
pub const REFRESH_TTL_DAYS: i64 = 30;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/.well-known/oauth-protected-resource/mcp/{project_id}",
            get(metadata::protected_resource),
        )
        .route(
            "/.well-known/oauth-authorization-server/oauth/{project_id}",
            get(metadata::authorization_server),
        )
        .route("/oauth/{project_id}/register", post(clients::register))
        .route("/oauth/{project_id}/authorize", get(authorize::authorize))
        .route(
            "/oauth/{project_id}/login/callback",
            get(login::callback_get).post(login::callback_post),
        )
        .route("/oauth/{project_id}/consent", post(consent::decide))
        .route("/oauth/{project_id}/token", post(token::token))
        .route("/oauth/{project_id}/revoke", post(token::revoke))
}

fn base(st: &AppState) -> &str {
    st.config.ingress.public_url.trim_end_matches('/')
}

/// The MCP resource an endpoint serves (RFC 8707 / RFC 9728 `resource`).
pub fn resource_url(st: &AppState, endpoint: Endpoint) -> String {
    match endpoint {
        Some(project) => format!("{}/mcp/{project}", base(st)),
        None => format!("{}/mcp", base(st)),
    }
}

/// Where an endpoint's Protected Resource Metadata is (named by 401s).
pub fn resource_metadata_url(st: &AppState, endpoint: Endpoint) -> String {
    match endpoint {
        Some(project) => format!("{}/.well-known/oauth-protected-resource/mcp/{project}", base(st)),
        None => format!("{}/.well-known/oauth-protected-resource", base(st)),
    }
}

/// A project's authorization server identifier (RFC 8414 `issuer`).
pub fn issuer(st: &AppState, project: Uuid) -> String {
    format!("{}/oauth/{project}", base(st))
}

/// `secs` from now (saturating: the lifetimes are constants).
pub fn after(secs: i64) -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    now.checked_add_signed(chrono::Duration::seconds(secs)).unwrap_or(now)
}

/// A fresh high-entropy secret (codes, logins, refresh tokens, CSRF tokens).
pub fn secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// What is stored of a secret: its SHA-256 (a fast hash suffices for 256 random bits).
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// The project, if it exists and has OAuth enabled.
pub async fn enabled_project(st: &AppState, project_id: Uuid) -> Result<ProjectOAuth, OAuthError> {
    match tengine_control::oauth::project(&st.pool, project_id).await {
        Ok(project) if project.enabled && project.login_url.is_some() => Ok(project),
        Ok(_) | Err(tengine_control::StoreError::NotFound) => Err(OAuthError::not_found()),
        Err(err) => Err(OAuthError::store(err)),
    }
}

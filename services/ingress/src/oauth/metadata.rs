//! Discovery: Protected Resource Metadata (RFC 9728) of a project's MCP resource
//! and Authorization Server Metadata (RFC 8414) of its issuer.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    response::{IntoResponse, Response},
};
use serde_json::json;
use tengine_control::StoreError;
use uuid::Uuid;

use super::{OAuthError, enabled_project, issuer, resource_url};
use crate::AppState;

/// The resource's metadata; it names the authorization server only when the
/// project has OAuth enabled (API keys work either way).
pub async fn protected_resource(State(st): State<Arc<AppState>>, Path(project_id): Path<Uuid>) -> Response {
    let project = match tengine_control::oauth::project(&st.pool, project_id).await {
        Ok(project) => project,
        Err(StoreError::NotFound) => return OAuthError::not_found().into_response(),
        Err(err) => return OAuthError::store(err).into_response(),
    };
    let mut metadata = json!({
        "resource": resource_url(&st, Some(project_id)),
        "bearer_methods_supported": ["header"],
        "resource_name": project.name,
    });
    if project.enabled && project.login_url.is_some() {
        metadata["authorization_servers"] = json!([issuer(&st, project_id)]);
    }
    Json(metadata).into_response()
}

/// The issuer's metadata: authorization code with PKCE S256 only, public clients
/// (CIMD or dynamic registration), `iss` on the authorization response.
pub async fn authorization_server(State(st): State<Arc<AppState>>, Path(project_id): Path<Uuid>) -> Response {
    if let Err(err) = enabled_project(&st, project_id).await {
        return err.into_response();
    }
    let issuer = issuer(&st, project_id);
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "registration_endpoint": format!("{issuer}/register"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "client_id_metadata_document_supported": true,
        "authorization_response_iss_parameter_supported": true,
    }))
    .into_response()
}

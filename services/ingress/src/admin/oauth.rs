//! OAuth clients and grants of a project (see docs/oauth.md): who registered or
//! was fetched, which member consented to which client, and revoking a grant
//! (its access and refresh tokens stop at once, on every instance).

use std::sync::Arc;

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use tengine_control::oauth::{self, Client, Grant, OAuthEvent};
use utoipa::ToSchema;

use super::{
    auth::Admin,
    error::{ApiResult, not_found_as},
    extract::{Ids, OAuthGrantPath, ProjectPath},
    openapi::{AdminErrors, BadRequest, NotFound},
};
use crate::AppState;

const TAG: &str = "oauth";

#[derive(Serialize, ToSchema)]
pub struct ClientList {
    clients: Vec<Client>,
}

#[derive(Serialize, ToSchema)]
pub struct GrantList {
    grants: Vec<Grant>,
}

#[derive(Serialize, ToSchema)]
pub struct EventList {
    events: Vec<OAuthEvent>,
}

/// Events listed at most, newest first.
const MAX_EVENTS: i64 = 1000;

/// List the OAuth clients a project knows: registered (RFC 7591) or fetched (metadata documents).
#[utoipa::path(get, path = "/v1/projects/{project_id}/oauth/clients", operation_id = "list_oauth_clients", tag = TAG,
    security(("admin_token" = [])), params(ProjectPath),
    responses((status = 200, body = ClientList), AdminErrors, BadRequest, NotFound))]
pub async fn clients(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
) -> ApiResult<Json<ClientList>> {
    let clients = oauth::list_clients(&st.pool, project_id)
        .await
        .map_err(not_found_as("project"))?;
    Ok(Json(ClientList { clients }))
}

/// List a project's OAuth grants (one per member's consent to a client), revoked ones too.
#[utoipa::path(get, path = "/v1/projects/{project_id}/oauth/grants", operation_id = "list_oauth_grants", tag = TAG,
    security(("admin_token" = [])), params(ProjectPath),
    responses((status = 200, body = GrantList), AdminErrors, BadRequest, NotFound))]
pub async fn grants(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
) -> ApiResult<Json<GrantList>> {
    let grants = oauth::list_grants(&st.pool, project_id)
        .await
        .map_err(not_found_as("project"))?;
    Ok(Json(GrantList { grants }))
}

/// Revoke a grant: its access tokens and refresh tokens stop at once. Idempotent.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/oauth/grants/{grant_id}", operation_id = "revoke_oauth_grant",
    tag = TAG, security(("admin_token" = [])), params(OAuthGrantPath),
    responses((status = 204, description = "revoked"), AdminErrors, BadRequest, NotFound))]
pub async fn revoke_grant(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(OAuthGrantPath { project_id, grant_id }): Ids<OAuthGrantPath>,
) -> ApiResult<StatusCode> {
    oauth::revoke_grant(&st.pool, project_id, grant_id, "revoked")
        .await
        .map_err(not_found_as("grant"))?;
    tracing::info!(project = %project_id, grant = %grant_id, "oauth grant revoked by the admin API");
    Ok(StatusCode::NO_CONTENT)
}

/// List a project's OAuth events, newest first (at most 1000): consents given or refused, grants revoked and why.
#[utoipa::path(get, path = "/v1/projects/{project_id}/oauth/events", operation_id = "list_oauth_events", tag = TAG,
    security(("admin_token" = [])), params(ProjectPath),
    responses((status = 200, body = EventList), AdminErrors, BadRequest, NotFound))]
pub async fn events(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
) -> ApiResult<Json<EventList>> {
    let events = oauth::list_events(&st.pool, project_id, MAX_EVENTS)
        .await
        .map_err(not_found_as("project"))?;
    Ok(Json(EventList { events }))
}

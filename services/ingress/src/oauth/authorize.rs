//! `GET {issuer}/authorize`: checks the client and its redirect URI (failures are
//! shown to the person, never redirected), then the request (failures go back to
//! the client with `error`, `state` and `iss`), records it and sends the browser
//! to the customer's login page with an opaque `tengine_login`.

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use tengine_control::oauth::{self as store, NewAuthorization, ProjectOAuth};
use url::Url;
use uuid::Uuid;

use super::{
    LOGIN_TTL_SECS, OAuthError, PageError, after, clients, digest, enabled_project, issuer, resource_url, secret,
};
use crate::AppState;

const MAX_STATE_BYTES: usize = 2048;

#[derive(Debug, Default, Deserialize)]
pub struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    resource: Option<String>,
}

pub async fn authorize(
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    Query(params): Query<AuthorizeParams>,
) -> Response {
    match start(&st, project_id, &params).await {
        Ok(response) => response,
        Err(Refusal::Page(err)) => err.into_response(),
        Err(Refusal::Redirect(to)) => redirect(to.as_str()),
    }
}

enum Refusal {
    Page(PageError),
    Redirect(Url),
}

impl<E: Into<PageError>> From<E> for Refusal {
    fn from(err: E) -> Self {
        Refusal::Page(err.into())
    }
}

async fn start(st: &AppState, project_id: Uuid, params: &AuthorizeParams) -> Result<Response, Refusal> {
    let project = enabled_project(st, project_id).await?;
    let client = clients::resolve(st, &project, params.client_id.as_deref().unwrap_or_default()).await?;
    let (requested_redirect, redirect_uri) =
        chosen_redirect_uri(&client.redirect_uris, params.redirect_uri.as_deref())?;
    allowed(&project, &client.client_id, &redirect_uri)?;
    let back = |error: &str, description: &str| {
        Refusal::Redirect(with_response_params(
            &redirect_uri,
            &[
                ("error", error),
                ("error_description", description),
                ("iss", &issuer(st, project_id)),
            ],
            params.state.as_deref(),
        ))
    };
    if params.response_type.as_deref() != Some("code") {
        return Err(back("unsupported_response_type", "response_type must be `code`"));
    }
    let challenge = params.code_challenge.as_deref().unwrap_or_default();
    if params.code_challenge_method.as_deref() != Some("S256") || !valid_challenge(challenge) {
        return Err(back(
            "invalid_request",
            "PKCE is required: code_challenge (43 base64url characters) with code_challenge_method S256",
        ));
    }
    let resource = resource_url(st, Some(project_id));
    // RFC 8707 canonical URIs have no trailing slash; one is tolerated.
    if params.resource.as_deref().map(|r| r.strip_suffix('/').unwrap_or(r)) != Some(resource.as_str()) {
        return Err(back("invalid_target", "resource must be this project's MCP endpoint"));
    }
    if params.state.as_ref().is_some_and(|s| s.len() > MAX_STATE_BYTES) {
        return Err(back("invalid_request", "state is longer than 2048 bytes"));
    }
    let login = secret("tng_login_");
    store::begin(
        &st.pool,
        &NewAuthorization {
            project_id,
            client_id: &client.client_id,
            // As sent: the token request must repeat it exactly (RFC 6749 §4.1.3).
            redirect_uri: requested_redirect,
            state: params.state.as_deref(),
            code_challenge: challenge,
            resource: &resource,
            login_hash: &digest(&login),
            expires_at: after(LOGIN_TTL_SECS),
        },
    )
    .await?;
    let mut login_url = Url::parse(project.login_url.as_deref().unwrap_or_default())
        .map_err(|_| OAuthError::invalid_request("the project's login_url is not a URL"))?;
    login_url.query_pairs_mut().append_pair("tengine_login", &login);
    Ok(redirect(login_url.as_str()))
}

/// The redirect URI to answer to, as sent and parsed: the requested one if
/// registered (loopback on any port), or the only registered one when none is given.
fn chosen_redirect_uri<'a>(registered: &'a [String], requested: Option<&'a str>) -> Result<(&'a str, Url), PageError> {
    let unregistered = || {
        PageError(OAuthError::invalid_request(
            "redirect_uri is not one of the client's registered redirect URIs",
        ))
    };
    let chosen = match (requested, registered) {
        (Some(requested), _) => registered
            .iter()
            .any(|r| clients::redirect_uri_matches(r, requested))
            .then_some(requested)
            .ok_or_else(unregistered)?,
        (None, [only]) => only.as_str(),
        (None, _) => {
            return Err(PageError(OAuthError::invalid_request(
                "redirect_uri is required: the client has several",
            )));
        }
    };
    Ok((chosen, Url::parse(chosen).map_err(|_| unregistered())?))
}

/// The project's client allow-lists, if it has any.
fn allowed(project: &ProjectOAuth, client_id: &str, redirect_uri: &Url) -> Result<(), OAuthError> {
    if project
        .allowed_client_ids
        .as_ref()
        .is_some_and(|ids| !ids.iter().any(|id| id == client_id))
    {
        return Err(OAuthError::invalid_client(format!(
            "this project does not allow client `{client_id}` (oauth.allowed_client_ids)"
        )));
    }
    let host = redirect_uri.host_str().unwrap_or_default().to_ascii_lowercase();
    if project
        .allowed_redirect_hosts
        .as_ref()
        .is_some_and(|hosts| !hosts.contains(&host))
    {
        return Err(OAuthError::invalid_client(format!(
            "this project does not allow clients redirecting to `{host}` (oauth.allowed_redirect_hosts)"
        )));
    }
    Ok(())
}

/// RFC 7636 §4.2: S256 of a 43–128 character verifier is 43 base64url characters.
fn valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `uri` with the response parameters and `state` added to its query.
pub fn with_response_params(uri: &Url, params: &[(&str, &str)], state: Option<&str>) -> Url {
    let mut uri = uri.clone();
    {
        let mut query = uri.query_pairs_mut();
        for (name, value) in params {
            query.append_pair(name, value);
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
    }
    uri
}

/// 302 to `location`, never cached.
pub fn redirect(location: &str) -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, location), (header::CACHE_CONTROL, "no-store")],
    )
        .into_response()
}

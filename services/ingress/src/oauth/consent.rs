//! The consent page: the client (name and URI from its metadata, its client_id),
//! the project, the member, the tools it will be able to call; approve and deny
//! are plain submit buttons (`name="decision"`), so it works without JavaScript.
//! CSRF: the form's `csrf` field must equal the cookie set with the page and the
//! hash stored with the request; the request is decided once.

use std::sync::Arc;

use axum::{
    Form,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use maud::html;
use serde::Deserialize;
use serde_json::Value;
use tengine_control::oauth::{self as store, Authorization, ProjectOAuth};
use tengine_core::{credentials::constant_time_eq, errors};
use url::Url;
use uuid::Uuid;

use super::{
    CODE_TTL_SECS, OAuthError, PageError, after, authorize::with_response_params, digest, enabled_project,
    errors::page as html_page, issuer, secret,
};
use crate::AppState;

const CSRF_COOKIE: &str = "tengine_oauth_csrf";
/// Tools named on the page at most (the rest are counted).
const MAX_TOOLS_SHOWN: i64 = 50;

/// Renders the page for a request that awaits consent, setting the CSRF cookie.
pub async fn page(
    st: &AppState,
    project: &ProjectOAuth,
    authorization: &Authorization,
    member: &Value,
    csrf: &str,
) -> Result<Response, PageError> {
    let client = store::client(&st.pool, project.project_id, &authorization.client_id)
        .await?
        .ok_or_else(|| OAuthError::invalid_client("the client is no longer known"))?;
    let tools = tool_names(st, project).await?;
    let member_label = member["email"]
        .as_str()
        .map_or_else(|| member["id"].as_str().unwrap_or_default().to_string(), str::to_string);
    let client_name = client.client_name.as_deref().unwrap_or(&client.client_id);
    let redirect = Url::parse(&authorization.redirect_uri).ok();
    let redirect_host = redirect
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| authorization.redirect_uri.clone());
    // The CIMD draft's advice: a metadata document cannot vouch for a loopback redirect.
    let loopback = redirect.as_ref().is_some_and(super::clients::is_loopback_host);
    let body = html! {
        h1 { "Connect " (client_name) " to " (project.name) "?" }
        p { "Signed in as " strong { (member_label) } "." }
        p {
            strong { (client_name) }
            @if let Some(uri) = &client.client_uri { " (" a href=(uri) { (uri) } ")" }
            " will be able to call these tools of " strong { (project.name) } " as you:"
        }
        ul { @for tool in &tools { li { code { (tool) } } } }
        p { small { "Client ID: " code { (client.client_id) } } }
        p { "After approving you will be sent to " strong { (redirect_host) } " (" code { (authorization.redirect_uri) } ")." }
        @if loopback {
            p role="alert" { strong { "Warning: " } "this client receives the answer on this computer. Approve only if \
                you started this connection yourself, from an application you trust: any program here could \
                claim to be " (client_name) "." }
        }
        form method="post" action=(format!("{}/consent", issuer(st, project.project_id))) {
            input type="hidden" name="request" value=(authorization.id);
            input type="hidden" name="csrf" value=(csrf);
            button type="submit" name="decision" value="approve" { "Approve" }
            button type="submit" name="decision" value="deny" { "Deny" }
        }
    };
    let secure = if st.config.ingress.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    // Scoped to the consent form's path (behind a prefix too, if public_url has one).
    let issuer = issuer(st, project.project_id);
    let path = Url::parse(&issuer).map_or_else(|_| format!("/oauth/{}", project.project_id), |u| u.path().to_string());
    let cookie = format!(
        "{CSRF_COOKIE}={csrf}; Path={path}/consent; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        super::CONSENT_TTL_SECS
    );
    Ok((
        StatusCode::OK,
        [
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, "no-store".into()),
            // The page must not be framed (clickjacking the approve button).
            (header::X_FRAME_OPTIONS, "DENY".into()),
            // No `form-action`: Chromium applies it to the redirect that follows the
            // form post too, which goes to the client (another origin).
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'".into(),
            ),
        ],
        Html(html_page("Authorize access", body).into_string()),
    )
        .into_response())
}

/// The tools the integration's tokens may call (as `tools/list` would show them).
async fn tool_names(st: &AppState, project: &ProjectOAuth) -> Result<Vec<String>, PageError> {
    let integration = tengine_control::integrations::get(&st.pool, project.project_id, project.integration_id).await?;
    let tools = tengine_control::tools::list(&st.pool, project.project_id, true, None, MAX_TOOLS_SHOWN).await?;
    Ok(tools
        .into_iter()
        .map(|t| t.name)
        .filter(|name| {
            integration
                .allowed_tools
                .as_ref()
                .is_none_or(|allowed| allowed.contains(name))
        })
        .collect())
}

#[derive(Debug, Deserialize)]
pub struct Decision {
    request: Option<String>,
    csrf: Option<String>,
    decision: Option<String>,
}

/// `POST {issuer}/consent`: approve issues a code, deny answers `access_denied`;
/// either goes back to the client's redirect URI with `state` and `iss`.
pub async fn decide(
    State(st): State<Arc<AppState>>,
    Path(project_id): Path<Uuid>,
    headers: HeaderMap,
    Form(form): Form<Decision>,
) -> Response {
    decide_request(&st, project_id, &headers, form)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn decide_request(
    st: &AppState,
    project_id: Uuid,
    headers: &HeaderMap,
    form: Decision,
) -> Result<Response, PageError> {
    enabled_project(st, project_id).await?;
    let csrf = form.csrf.unwrap_or_default();
    let cookie = cookie(headers, CSRF_COOKIE).unwrap_or_default();
    if csrf.is_empty() || !constant_time_eq(&csrf, &cookie) {
        return Err(OAuthError::new(
            errors::OAUTH_CSRF,
            "the consent form's CSRF token is missing or does not match: open the page again from the start",
        )
        .into());
    }
    let id = form
        .request
        .as_deref()
        .and_then(|r| Uuid::parse_str(r).ok())
        .ok_or_else(|| OAuthError::invalid_request("the consent form names no request"))?;
    let approve = match form.decision.as_deref() {
        Some("approve") => true,
        Some("deny") => false,
        _ => return Err(OAuthError::invalid_request("decision must be `approve` or `deny`").into()),
    };
    let code = approve.then(|| secret("tng_oac_"));
    let code_hash = code.as_deref().map(digest);
    let decided = store::decide(
        &st.pool,
        project_id,
        id,
        &digest(&csrf),
        code_hash.as_deref().map(|hash| (hash, after(CODE_TTL_SECS))),
    )
    .await?
    .ok_or_else(|| OAuthError::invalid_request("this consent was already given, refused or has expired"))?;
    let iss = issuer(st, project_id);
    let redirect_uri = Url::parse(&decided.redirect_uri)
        .map_err(|_| OAuthError::invalid_request("the stored redirect_uri is not a URL"))?;
    let params: Vec<(&str, &str)> = match &code {
        Some(code) => vec![("code", code), ("iss", &iss)],
        None => vec![
            ("error", "access_denied"),
            ("error_description", "the user denied access"),
            ("iss", &iss),
        ],
    };
    let member_id = decided.member.as_ref().and_then(|m| m["id"].as_str());
    store::record_event(
        &st.pool,
        &store::Event {
            project_id,
            kind: if approve {
                store::EVENT_CONSENT_APPROVED
            } else {
                store::EVENT_CONSENT_DENIED
            },
            client_id: &decided.client_id,
            member_id,
            grant_id: None,
            reason: None,
        },
    )
    .await?;
    tracing::info!(
        project = %project_id,
        authorization = %decided.id,
        client_id = %decided.client_id,
        approved = approve,
        "oauth consent decided"
    );
    let target = with_response_params(&redirect_uri, &params, decided.state.as_deref());
    // 303: the browser follows a form POST's answer with a GET.
    Ok((
        StatusCode::SEE_OTHER,
        [(header::LOCATION, target.as_str()), (header::CACHE_CONTROL, "no-store")],
    )
        .into_response())
}

/// A cookie's value. Hand-parsed: one cookie of base64url characters, no crate needed.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

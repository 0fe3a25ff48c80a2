//! OAuth errors: RFC 6749 JSON (`error`, `error_description`) for clients, and
//! an HTML page for the browser steps where nothing may be sent back to a
//! client (an unknown client or redirect URI, a failed login, a bad consent).

use axum::{
    Json,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use maud::{DOCTYPE, Markup, html};
use serde_json::json;
use tengine_control::StoreError;
use tengine_core::errors::{self, OAuthCode};

/// An RFC 6749 §5.2 error answer, of a code of the catalogue.
#[derive(Debug)]
pub struct OAuthError {
    pub code: OAuthCode,
    pub description: String,
}

impl OAuthError {
    pub fn new(code: OAuthCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(errors::OAUTH_INVALID_REQUEST, description)
    }

    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(errors::OAUTH_INVALID_GRANT, description)
    }

    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(errors::OAUTH_INVALID_CLIENT, description)
    }

    pub fn invalid_target(description: impl Into<String>) -> Self {
        Self::new(errors::OAUTH_INVALID_TARGET, description)
    }

    pub fn not_found() -> Self {
        Self::new(
            errors::OAUTH_NOT_FOUND,
            "no project with OAuth enabled here: enable it with PATCH /v1/projects/{id} {\"oauth\": …}",
        )
    }

    /// A storage failure: logged, answered as retryable.
    pub fn store(err: StoreError) -> Self {
        tracing::error!(error = %err, "oauth storage");
        Self::new(
            errors::OAUTH_UNAVAILABLE,
            "the authorization server cannot answer right now; retry",
        )
    }

    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status).unwrap_or(StatusCode::BAD_REQUEST)
    }
}

impl From<StoreError> for OAuthError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(message) => Self::new(errors::OAUTH_UNAVAILABLE, message),
            other => Self::store(other),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.code.error, "error_description": self.description});
        (
            self.status(),
            [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")],
            Json(body),
        )
            .into_response()
    }
}

/// An error shown to the person in the browser (never redirected to a client
/// that could not be verified).
#[derive(Debug)]
pub struct PageError(pub OAuthError);

impl From<OAuthError> for PageError {
    fn from(err: OAuthError) -> Self {
        Self(err)
    }
}

impl From<StoreError> for PageError {
    fn from(err: StoreError) -> Self {
        Self(err.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let err = self.0;
        let page = page(
            "Authorization failed",
            html! {
                h1 { "Authorization failed" }
                p { "Error: " code { (err.code.error) } }
                p { (err.description) }
            },
        );
        (
            err.status(),
            [(header::CACHE_CONTROL, "no-store")],
            Html(page.into_string()),
        )
            .into_response()
    }
}

/// A complete page: no scripts, no external resources.
pub fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem}\
                         button{font-size:1rem;padding:.5rem 1.5rem;margin-right:1rem}" }
            }
            body { (body) }
        }
    }
}

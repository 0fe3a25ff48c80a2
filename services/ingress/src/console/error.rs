//! Console failures, shown as a page with a status and what to do.

use axum::{
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use maud::html;
use tengine_control::StoreError;

use super::layout;
use crate::admin::error::ApiError;

#[derive(Debug)]
pub struct ConsoleError {
    status: StatusCode,
    message: String,
}

impl ConsoleError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    /// For a lookup: not found names `what` (404); any other storage error is a
    /// logged 503, never a 404 that hides an outage.
    pub fn missing(what: &'static str) -> impl Fn(StoreError) -> Self {
        move |err| match err {
            StoreError::NotFound => Self::not_found(what),
            other => Self::from(other),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<StoreError> for ConsoleError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::not_found("page"),
            other => {
                tracing::error!(error = %other, "console storage");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "storage is unavailable; retry")
            }
        }
    }
}

impl From<ApiError> for ConsoleError {
    fn from(err: ApiError) -> Self {
        Self::new(err.status(), err.message())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let body = html! {
            main {
                h1 { "Error " (self.status.as_u16()) }
                p role="alert" { (self.message) }
            }
        };
        let mut response = (self.status, Html(layout::document("Error", None, body).into_string())).into_response();
        layout::secure_headers(response.headers_mut());
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        response
    }
}

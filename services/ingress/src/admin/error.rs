//! Errors of the admin API (`/v1`) as JSON: `{"error": {"code", "message", "field"?}}`,
//! the one place failures become answers. Codes and their statuses come from
//! `tengine_core::errors` (documented in docs/errors.md).

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;
use tengine_control::StoreError;
use tengine_core::domain::FieldError;
use tengine_core::errors::{self, AdminCode};

/// A failed admin request: a code of the catalogue (which fixes the HTTP status), a
/// message that says what to fix, and for `invalid_field` the field's path.
#[derive(Debug)]
pub struct ApiError {
    code: AdminCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    pub fn new(code: AdminCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(errors::NOT_FOUND, format!("{what} not found"))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(errors::INVALID_REQUEST, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            errors::UNAUTHORIZED,
            "send the admin token as `Authorization: Bearer <TENGINE_ADMIN_TOKEN>`",
        )
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(errors::INTERNAL, "internal error; see the server log")
    }

    /// The answer's HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The field an `invalid_field` error names.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// What the answer's `message` says.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// 422 `invalid_field` naming `field`.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::from(FieldError {
            field: field.into(),
            message: message.into(),
        })
    }
}

/// A store error with "not found" meaning `what` is not found (the store's
/// `NotFound` does not say which of the ids it was given is missing).
pub fn not_found_as(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found(what),
        other => other.into(),
    }
}

impl From<FieldError> for ApiError {
    fn from(err: FieldError) -> Self {
        let mut error = Self::new(errors::INVALID_FIELD, format!("{}: {}", err.field, err.message));
        error.field = Some(err.field);
        error
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::not_found("resource"),
            StoreError::Conflict(message) => Self::new(errors::CONFLICT, message),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut error = json!({"code": self.code.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        (status, Json(json!({ "error": error }))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

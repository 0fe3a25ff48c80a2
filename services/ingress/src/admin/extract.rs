//! What a request carries, parsed once for every handler: path ids (`Ids` of a
//! typed path struct; a UUID that does not parse is 400 `invalid_request` naming
//! the id's kind), JSON bodies (`JsonBody`, `OptionalJsonBody`: a NUL refused with
//! its path, then parsed) and query strings (`QueryParams`).

use std::collections::HashMap;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::request::Parts,
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tengine_core::{errors, storable};
use utoipa::IntoParams;
use uuid::Uuid;

use super::error::{ApiError, ApiResult};

/// A route's path parameters, as captured (percent-decoded).
pub struct PathValues(HashMap<String, String>);

impl PathValues {
    /// A parameter as text (tool names, kids and member ids are not UUIDs).
    pub fn text(&self, name: &str) -> ApiResult<String> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::internal(format!("the route has no `{name}` parameter")))
    }

    /// A parameter that is the UUID of a `kind` (named in the 400 when it is not one).
    pub fn id(&self, name: &str, kind: &str) -> ApiResult<Uuid> {
        let raw = self.text(name)?;
        Uuid::parse_str(&raw).map_err(|_| {
            // Echo enough to recognise it, not a 60 KB path back.
            let shown: String = raw.chars().take(64).collect();
            let more = if shown.len() < raw.len() { "…" } else { "" };
            ApiError::bad_request(format!("`{shown}{more}` is not a valid {kind} id (a UUID)"))
        })
    }
}

/// A typed path struct: how it is read from the route's parameters.
pub trait PathParams: Sized {
    fn parse(values: &PathValues) -> ApiResult<Self>;
}

/// The path parameters of a route as the struct `T`.
pub struct Ids<T>(pub T);

impl<S: Send + Sync, T: PathParams> FromRequestParts<S> for Ids<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        // A parameter that is not UTF-8 once percent-decoded: axum's own 400.
        let Path(values) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        T::parse(&PathValues(values))
            .map(Ids)
            .map_err(IntoResponse::into_response)
    }
}

/// `/v1/projects/{project_id}…`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProjectPath {
    /// The project's id.
    pub project_id: Uuid,
}

impl PathParams for ProjectPath {
    fn parse(values: &PathValues) -> ApiResult<Self> {
        Ok(Self {
            project_id: values.id("project_id", "project")?,
        })
    }
}

/// `/v1/projects/{project_id}/api-keys/{key_id}`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ApiKeyPath {
    /// The project's id.
    pub project_id: Uuid,
    /// The API key's id.
    pub key_id: Uuid,
}

impl PathParams for ApiKeyPath {
    fn parse(values: &PathValues) -> ApiResult<Self> {
        Ok(Self {
            project_id: values.id("project_id", "project")?,
            key_id: values.id("key_id", "API key")?,
        })
    }
}

/// `/v1/projects/{project_id}/oauth/grants/{grant_id}`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OAuthGrantPath {
    /// The project's id.
    pub project_id: Uuid,
    /// The grant's id.
    pub grant_id: Uuid,
}

impl PathParams for OAuthGrantPath {
    fn parse(values: &PathValues) -> ApiResult<Self> {
        Ok(Self {
            project_id: values.id("project_id", "project")?,
            grant_id: values.id("grant_id", "grant")?,
        })
    }
}

/// `/v1/projects/{project_id}/integrations/{integration_id}…`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IntegrationPath {
    /// The project's id.
    pub project_id: Uuid,
    /// The integration's id.
    pub integration_id: Uuid,
}

impl PathParams for IntegrationPath {
    fn parse(values: &PathValues) -> ApiResult<Self> {
        Ok(Self {
            project_id: values.id("project_id", "project")?,
            integration_id: values.id("integration_id", "integration")?,
        })
    }
}

/// `/v1/projects/{project_id}/tools/{name}…`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ToolPath {
    /// The project's id.
    pub project_id: Uuid,
    /// The tool's name.
    pub name: String,
}

impl PathParams for ToolPath {
    fn parse(values: &PathValues) -> ApiResult<Self> {
        Ok(Self {
            project_id: values.id("project_id", "project")?,
            name: values.text("name")?,
        })
    }
}

/// `/v1/projects/{project_id}/member-keys/{kid}`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MemberKeyPath {
    /// The project's id.
    pub project_id: Uuid,
    /// The member key's `kid`.
    pub kid: String,
}

impl PathParams for MemberKeyPath {
    fn parse(values: &PathValues) -> ApiResult<Self> {
        Ok(Self {
            project_id: values.id("project_id", "project")?,
            kid: values.text("kid")?,
        })
    }
}

/// `/v1/projects/{project_id}/members/{member_id}…`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MemberPath {
    /// The project's id.
    pub project_id: Uuid,
    /// The member's id (the `sub` of its assertions).
    pub member_id: String,
}

impl PathParams for MemberPath {
    fn parse(values: &PathValues) -> ApiResult<Self> {
        Ok(Self {
            project_id: values.id("project_id", "project")?,
            member_id: values.text("member_id")?,
        })
    }
}

/// `/v1/runs/{run_id}`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RunPath {
    /// The run's id (`tengine.dev/runId` of the tool result).
    pub run_id: Uuid,
}

impl PathParams for RunPath {
    fn parse(values: &PathValues) -> ApiResult<Self> {
        Ok(Self {
            run_id: values.id("run_id", "run")?,
        })
    }
}

/// A JSON request body of type `T`: 400 `invalid_request` when it is not one,
/// 422 `invalid_field` when it carries a NUL.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let body = read_body(request, state).await?;
        parse_json(&body).map(JsonBody).map_err(IntoResponse::into_response)
    }
}

/// As `JsonBody`, but an empty body is `T::default()` (every field optional).
pub struct OptionalJsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let body = read_body(request, state).await?;
        if body.is_empty() {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse_json(&body)
            .map(OptionalJsonBody)
            .map_err(IntoResponse::into_response)
    }
}

/// A request body as bytes (an OpenAPI document): too large or unreadable is
/// refused in the API's JSON shape, as for [`JsonBody`].
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        read_body(request, state).await.map(RawBody)
    }
}

/// The body's bytes; a refusal in the API's JSON shape (axum's own is plain text).
async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, Response> {
    Bytes::from_request(request, state).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                errors::PAYLOAD_TOO_LARGE,
                "the request body is larger than this endpoint accepts (2 MiB; an OpenAPI import 64 MiB)",
            )
        } else {
            ApiError::bad_request(
                "the request body could not be read: the client stopped sending it or closed the connection",
            )
        }
        .into_response()
    })
}

fn parse_json<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    refuse_nul(body)?;
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A NUL (`\u0000`) cannot be stored in PostgreSQL text or JSON, and no setting
/// needs one: a request carrying one anywhere, in a value or a key, is refused
/// with the field's path.
fn refuse_nul(body: &[u8]) -> ApiResult<()> {
    // JSON can only spell a NUL `\u0000`; most bodies have none, and are not parsed twice.
    if !body.windows(6).any(|w| w == b"\\u0000") {
        return Ok(());
    }
    // Malformed JSON is reported by the parse that follows.
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    match storable::nul_path(&value) {
        Some(path) => Err(ApiError::invalid_field(
            if path.is_empty() { "body" } else { &path },
            "contains a NUL character (\\u0000), which cannot be stored; remove it",
        )),
        None => Ok(()),
    }
}

/// A page's `limit` query parameter: `default` when absent, 400 `invalid_request`
/// outside 1..=`max` (not quietly clamped: the caller would miss rows or get fewer).
pub fn page_limit(limit: Option<i64>, default: i64, max: i64) -> ApiResult<i64> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {max}, not {n}"
        ))),
    }
}

/// The query string as `T`: 400 `invalid_request` saying what is wrong with it.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        let Query(query) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::bad_request(format!("invalid query string: {}", rejection.body_text())))?;
        Ok(QueryParams(query))
    }
}

//! Re-drive: a finished run's call run again as a new run, through the call path
//! (see `crate::calls::redrive`).

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde::{Deserialize, Serialize};
use tengine_core::errors;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    auth::Admin,
    error::{ApiError, ApiResult},
    extract::{Ids, PathParams, PathValues},
    openapi::{AdminErrors, BadRequest, NotFound, RedriveErrors},
};
use crate::{
    AppState,
    calls::{
        idempotency,
        redrive::{RedriveError, redrive as run_again},
    },
};

/// Longest `Idempotency-Key` of a re-drive (it is claimed with the run's id in front).
pub const MAX_KEY_LEN: usize = 200;

/// `/v1/projects/{project_id}/runs/{run_id}…`
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProjectRunPath {
    /// The project's id.
    pub project_id: Uuid,
    /// The run's id.
    pub run_id: Uuid,
}

impl PathParams for ProjectRunPath {
    fn parse(values: &PathValues) -> ApiResult<Self> {
        Ok(Self {
            project_id: values.id("project_id", "project")?,
            run_id: values.id("run_id", "run")?,
        })
    }
}

/// The run a re-drive started.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Redriven {
    /// The new run's id (for a retry with the same `Idempotency-Key`: the run the first request started).
    pub run_id: Uuid,
    /// The run it re-drives.
    pub redrive_of: Uuid,
    pub tool_name: String,
}

/// What a refused re-drive answers.
pub(crate) fn refused(err: RedriveError) -> ApiError {
    match err {
        RedriveError::NotFound => ApiError::not_found("run"),
        RedriveError::Unavailable(message) => ApiError::new(errors::REDRIVE_UNAVAILABLE, message),
        RedriveError::Refused(message) => ApiError::new(errors::REDRIVE_REFUSED, message),
        RedriveError::Internal(message) => ApiError::internal(message),
    }
}

/// Re-drive a finished run: its call again, as a new run.
///
/// The new run goes through the same checks as an MCP call by the original caller (tool enabled and
/// allowed, credential not revoked, arguments valid, quota, operator approval) and gets its own Run ID,
/// history (`redrive_of` names the original) and usage. It runs the arguments run history kept: only
/// projects that store bodies keep them, and a run whose arguments redaction or the size cap changed is
/// refused (409 `redrive_unavailable`). With an `Idempotency-Key` header (1-200 characters), a retry
/// answers the run the first request started instead of running it twice. The answer does not wait
/// for the new run's outcome: read it at `GET /v1/runs/{run_id}`.
#[utoipa::path(post, path = "/v1/projects/{project_id}/runs/{run_id}/redrive", operation_id = "redrive_run",
    tag = "runs", security(("admin_token" = [])), params(ProjectRunPath,
        ("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key does not run it twice")),
    responses((status = 202, body = Redriven), AdminErrors, BadRequest, NotFound, RedriveErrors))]
pub async fn redrive(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectRunPath { project_id, run_id }): Ids<ProjectRunPath>,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<Redriven>)> {
    let key = match headers.get(idempotency::HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Idempotency-Key must be 1-{MAX_KEY_LEN} visible ASCII characters"
                    ))
                })?,
        ),
    };
    let redriven = run_again(st, project_id, run_id, key).await.map_err(refused)?;
    tracing::info!(project = %project_id, original = %run_id, run = %redriven.run_id, "run re-driven");
    Ok((
        StatusCode::ACCEPTED,
        Json(Redriven {
            run_id: redriven.run_id,
            redrive_of: run_id,
            tool_name: redriven.tool_name,
        }),
    ))
}

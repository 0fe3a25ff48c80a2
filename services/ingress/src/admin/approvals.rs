//! Operator approvals: the calls of a project waiting for one, and the decision
//! on a call (approve: it runs once; reject: it never reaches the API). See
//! `crate::approvals`.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use tengine_control::projects;
use tengine_core::errors;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    auth::Admin,
    error::{ApiError, ApiResult, not_found_as},
    extract::{Ids, JsonBody, OptionalJsonBody, ProjectPath, RunPath},
    openapi::{AdminErrors, BadRequest, Conflict, InvalidField, NotFound, TooLarge},
};
use crate::{
    AppState,
    approvals::{self, DecisionError, Pending},
};

const TAG: &str = "approvals";
/// Who decides, as history records it (the admin token names no one else).
const BY: &str = "admin";
const REASON_MAX: usize = 2_000;

#[derive(Serialize, ToSchema)]
pub struct PendingList {
    approvals: Vec<Pending>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    /// Recorded with the decision.
    #[serde(default)]
    note: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    /// Why: recorded, and the caller's tool result says it.
    reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct Decided {
    run_id: Uuid,
    /// `approved` or `rejected`.
    decision: &'static str,
}

fn refused(err: DecisionError) -> ApiError {
    match err {
        DecisionError::NotFound => ApiError::not_found("call awaiting approval"),
        DecisionError::Unavailable(_) => ApiError::internal(err),
        DecisionError::Deciding | DecisionError::Expired(_) => ApiError::new(errors::CONFLICT, err.to_string()),
    }
}

fn bounded(field: &str, text: &str) -> ApiResult<()> {
    if text.len() > REASON_MAX || text.chars().any(char::is_control) {
        return Err(ApiError::from(tengine_core::domain::FieldError {
            field: field.into(),
            message: format!("at most {REASON_MAX} bytes, no control characters"),
        }));
    }
    Ok(())
}

/// List the calls of a project waiting for an operator's approval, oldest first.
#[utoipa::path(get, path = "/v1/projects/{project_id}/approvals", operation_id = "list_approvals", tag = TAG,
    security(("admin_token" = [])), params(ProjectPath),
    responses((status = 200, body = PendingList), AdminErrors, BadRequest, NotFound))]
pub async fn list(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
) -> ApiResult<Json<PendingList>> {
    projects::get(&st.pool, project_id)
        .await
        .map_err(not_found_as("project"))?;
    let approvals = st.approvals.pending(project_id).await.map_err(ApiError::internal)?;
    Ok(Json(PendingList { approvals }))
}

/// Approve a waiting call: it is queued now and runs once.
///
/// 409 when another decision is under way or the approval expired (the call was then refused).
#[utoipa::path(post, path = "/v1/runs/{run_id}/approve", operation_id = "approve_run", tag = TAG,
    security(("admin_token" = [])), params(RunPath), request_body(content = Option<Approve>),
    responses((status = 200, body = Decided), AdminErrors, BadRequest, NotFound, Conflict, InvalidField, TooLarge))]
pub async fn approve(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(RunPath { run_id }): Ids<RunPath>,
    OptionalJsonBody(input): OptionalJsonBody<Approve>,
) -> ApiResult<Json<Decided>> {
    if let Some(note) = &input.note {
        bounded("note", note)?;
    }
    approvals::approve(&st, run_id, BY, input.note).await.map_err(refused)?;
    Ok(Json(Decided {
        run_id,
        decision: "approved",
    }))
}

/// Reject a waiting call: it ends `rejected` (`approval_denied`) and never reaches the API.
#[utoipa::path(post, path = "/v1/runs/{run_id}/reject", operation_id = "reject_run", tag = TAG,
    security(("admin_token" = [])), params(RunPath), request_body = Reject,
    responses((status = 200, body = Decided), AdminErrors, BadRequest, NotFound, Conflict, InvalidField, TooLarge))]
pub async fn reject(
    _: Admin,
    State(st): State<Arc<AppState>>,
    Ids(RunPath { run_id }): Ids<RunPath>,
    JsonBody(input): JsonBody<Reject>,
) -> ApiResult<Json<Decided>> {
    bounded("reason", &input.reason)?;
    approvals::reject(&st, run_id, BY, input.reason)
        .await
        .map_err(refused)?;
    Ok(Json(Decided {
        run_id,
        decision: "rejected",
    }))
}

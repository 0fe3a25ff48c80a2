//! Run history: a project's runs (filtered, newest first, by cursor) and one run
//! with its attempts and stored bodies, each within the reader's scope.

use std::sync::Arc;

use axum::{Json, extract::State};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tengine_control::{StoreError, principals::ReadScope};
use tengine_projector::history::{
    self,
    runs::{AttemptRecord, BodiesRecord, RunFilter, RunRecord},
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    auth::Reader,
    error::{ApiError, ApiResult},
    extract::{Ids, ProjectPath, QueryParams, RunPath, page_limit},
    openapi::{BadRequest, NotFound, ReaderErrors},
};
use crate::AppState;

const TAG: &str = "runs";
const PAGE_DEFAULT: i64 = 50;
const PAGE_MAX: i64 = 500;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// `accepted`, `running`, `succeeded`, `failed`, `rejected`, `cancelled` or `revoked`.
    status: Option<String>,
    /// A tool name.
    tool: Option<String>,
    /// A member id.
    member: Option<String>,
    /// An integration id.
    integration: Option<Uuid>,
    /// Accepted at or after (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Accepted before (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// 1–500, default 50.
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RunList {
    runs: Vec<RunRecord>,
    /// The cursor of the next page; `null` on the last one.
    next_cursor: Option<String>,
}

pub(crate) fn encode_cursor(at: DateTime<Utc>, run_id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{run_id}", at.to_rfc3339()))
}

pub(crate) fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (at, id) = raw.split_once('|')?;
    Some((
        DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
        Uuid::parse_str(id).ok()?,
    ))
}

/// List a project's runs, newest first, within the reader's scope.
#[utoipa::path(get, path = "/v1/projects/{project_id}/runs", operation_id = "list_runs", tag = TAG,
    security(("admin_token" = []), ("api_key" = []), ("member_session" = [])),
    params(ProjectPath, RunQuery),
    responses((status = 200, body = RunList), ReaderErrors, BadRequest, NotFound))]
pub async fn list(
    // The query string is checked first, as it always was.
    QueryParams(query): QueryParams<RunQuery>,
    reader: Reader,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
) -> ApiResult<Json<RunList>> {
    let scope = reader
        .scope_in(project_id)
        .ok_or_else(|| ApiError::not_found("project"))?;
    let before = match query.cursor.as_deref() {
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::bad_request("invalid cursor"))?),
        None => None,
    };
    let limit = page_limit(query.limit, PAGE_DEFAULT, PAGE_MAX)?;
    let filter = RunFilter {
        tool_name: query.tool,
        status: query.status,
        member_id: query.member,
        integration_id: query.integration,
        from: query.from,
        to: query.to,
        before,
        limit: limit.saturating_add(1),
    };
    let mut runs = history::runs::list(&st.pool, project_id, &scope, &filter).await?;
    let next = (runs.len() as i64 > limit).then(|| {
        runs.truncate(limit as usize);
        runs.last().map(|r| encode_cursor(r.accepted_at, r.run_id))
    });
    Ok(Json(RunList {
        runs,
        next_cursor: next.flatten(),
    }))
}

/// A run as recorded, or one whose events were all set aside.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum RunAnswer {
    Recorded(Box<RecordedRun>),
    Unrecorded(UnrecordedRun),
}

#[derive(Serialize, ToSchema)]
pub struct RecordedRun {
    #[serde(flatten)]
    run: RunRecord,
    attempt_details: Vec<AttemptRecord>,
    /// The stored bodies when the project keeps them, else `null`.
    bodies: Option<BodiesRecord>,
}

/// A run with no history row whose events the projector had to set aside (dead
/// letters): its integration, tool and member are unknown.
#[derive(Serialize, ToSchema)]
pub struct UnrecordedRun {
    run_id: Uuid,
    project_id: Option<Uuid>,
    /// Always `unrecorded`.
    status: &'static str,
    history_error: String,
    /// Always empty.
    attempt_details: Vec<AttemptRecord>,
    /// Always `null`.
    bodies: Option<BodiesRecord>,
}

/// Read a run with its attempts and stored bodies; a run out of the reader's scope is 404.
///
/// A run whose every event was set aside as a dead letter answers `status: unrecorded` with its
/// `history_error` (to whole-project readers: the admin and `read` keys).
#[utoipa::path(get, path = "/v1/runs/{run_id}", operation_id = "get_run", tag = TAG,
    security(("admin_token" = []), ("api_key" = []), ("member_session" = [])),
    params(RunPath),
    responses((status = 200, body = RunAnswer), ReaderErrors, BadRequest, NotFound))]
pub async fn get(
    reader: Reader,
    State(st): State<Arc<AppState>>,
    Ids(RunPath { run_id }): Ids<RunPath>,
) -> ApiResult<Json<RunAnswer>> {
    let (run, attempts) = match history::runs::get(&st.pool, run_id).await {
        Ok(found) => found,
        Err(StoreError::NotFound) => return unrecorded(&st, &reader, run_id).await,
        Err(other) => return Err(other.into()),
    };
    // Out of scope looks like absent: a reader learns nothing of others' runs.
    if !reader
        .scope_in(run.project_id)
        .is_some_and(|scope| run.visible_to(&scope))
    {
        return Err(ApiError::not_found("run"));
    }
    let bodies = history::runs::bodies(&st.pool, run_id).await?;
    Ok(Json(RunAnswer::Recorded(Box::new(RecordedRun {
        run,
        attempt_details: attempts,
        bodies,
    }))))
}

/// A run with no history row whose events were dead-lettered: shown as
/// `unrecorded`, with why.
async fn unrecorded(st: &AppState, reader: &Reader, run_id: Uuid) -> ApiResult<Json<RunAnswer>> {
    let Some((project_id, history_error)) = history::runs::unrecorded(&st.pool, run_id).await? else {
        return Err(ApiError::not_found("run"));
    };
    // Its integration, tool and member are unknown: only whole-project readers see it.
    let readable = match project_id {
        Some(project_id) => reader.scope_in(project_id) == Some(ReadScope::everything()),
        None => matches!(reader, Reader::Admin),
    };
    if !readable {
        return Err(ApiError::not_found("run"));
    }
    Ok(Json(RunAnswer::Unrecorded(UnrecordedRun {
        run_id,
        project_id,
        status: "unrecorded",
        history_error,
        attempt_details: Vec::new(),
        bodies: None,
    })))
}

//! Usage: a project's hourly aggregates, summed and grouped as asked, within the
//! reader's scope.

use std::sync::Arc;

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tengine_projector::history;
use utoipa::{IntoParams, ToSchema};

use super::{
    auth::Reader,
    error::{ApiError, ApiResult},
    extract::{Ids, ProjectPath, QueryParams},
    openapi::{BadRequest, NotFound, ReaderErrors},
};
use crate::AppState;

const TAG: &str = "usage";

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// From this hour (RFC 3339, hour granularity), inclusive.
    from: Option<DateTime<Utc>>,
    /// Until this hour (RFC 3339), exclusive.
    to: Option<DateTime<Utc>>,
    /// Comma-separated, any of: `tool`, `member`, `integration`, `hour`, `day` (UTC).
    group_by: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Usage {
    /// One row per group: the group's columns, then `calls`, `successes`, `failures`,
    /// `latency_ms_sum`, `bytes_in`, `bytes_out`.
    #[schema(value_type = Vec<Object>)]
    usage: Vec<Value>,
}

/// A project's usage, summed and grouped as asked, within the reader's scope.
///
/// Built by the projector from the event log: every run is counted exactly once, when it first becomes
/// terminal (refused calls included, as failures).
#[utoipa::path(get, path = "/v1/projects/{project_id}/usage", operation_id = "usage", tag = TAG,
    security(("admin_token" = []), ("api_key" = []), ("member_session" = [])),
    params(ProjectPath, UsageQuery),
    responses((status = 200, body = Usage), ReaderErrors, BadRequest, NotFound))]
pub async fn usage(
    reader: Reader,
    State(st): State<Arc<AppState>>,
    Ids(ProjectPath { project_id }): Ids<ProjectPath>,
    query: Result<QueryParams<UsageQuery>, ApiError>,
) -> ApiResult<Json<Usage>> {
    let scope = reader
        .scope_in(project_id)
        .ok_or_else(|| ApiError::not_found("project"))?;
    // Checked after the scope, as it always was: a foreign project is 404 whatever the query.
    let QueryParams(query) = query?;
    let group_by: Vec<&str> = query
        .group_by
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect();
    if let Some(bad) = group_by
        .iter()
        .find(|g| !history::usage::GROUPS.iter().any(|(name, _)| name == *g))
    {
        let known: Vec<&str> = history::usage::GROUPS.iter().map(|(name, _)| *name).collect();
        return Err(ApiError::bad_request(format!(
            "group_by `{bad}` is not one of: {}",
            known.join(", ")
        )));
    }
    let usage = history::usage::summed(&st.pool, project_id, &scope, query.from, query.to, &group_by).await?;
    Ok(Json(Usage { usage }))
}

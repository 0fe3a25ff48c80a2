//! Runs, their attempts and their stored bodies (`runs`, `run_attempts`), and
//! runs whose events were all dead-lettered.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tengine_control::{StoreError, StoreResult, principals::ReadScope};
use uuid::Uuid;

use super::RUN_KEY;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RunRecord {
    pub run_id: Uuid,
    pub project_id: Uuid,
    pub integration_id: Uuid,
    pub api_key_id: Uuid,
    pub member_id: Option<String>,
    pub tool_name: String,
    pub status: String,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub http_status: Option<i32>,
    pub latency_ms: Option<i64>,
    pub attempts: i32,
    pub accepted_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why this history may be incomplete: an event of the run was dead-lettered
    /// by the projector (and not re-applied since). `None` normally.
    pub history_error: Option<String>,
    /// The response body's full size in bytes, as the API sent it.
    pub response_size: Option<i64>,
    /// Whether the body was larger than `worker.max_response_bytes` (only its beginning was kept).
    pub response_truncated: Option<bool>,
    /// For tools with `approval: operator`: `{"state": "pending" | "approved" | "rejected" |
    /// "expired", "expires_at", "by", "reason", "decided_at"}`.
    #[schema(value_type = Option<Object>)]
    pub approval: Option<sqlx::types::Json<serde_json::Value>>,
    /// The W3C trace id the call ran under.
    pub trace_id: Option<String>,
    /// The client's idempotency key, as it sent it.
    pub idempotency_key: Option<String>,
    /// The run this one re-drives.
    pub redrive_of: Option<Uuid>,
    /// Client retries (the same idempotency key) answered from this run, without
    /// calling the API again.
    pub client_retries: i32,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AttemptRecord {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub http_status: Option<i32>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub bytes_out: Option<i64>,
    pub bytes_in: Option<i64>,
}

impl RunRecord {
    /// Whether a reader with `scope` may see this run.
    pub fn visible_to(&self, scope: &ReadScope) -> bool {
        scope.integration_id.is_none_or(|i| i == self.integration_id)
            && scope.tools.as_ref().is_none_or(|tools| tools.contains(&self.tool_name))
            && scope
                .member_id
                .as_ref()
                .is_none_or(|m| self.member_id.as_ref() == Some(m))
    }
}

/// A run's history error, over a row source named `runs` with a `run_id`: its
/// first dead letter not re-applied (one fact, kept in the dead-letter table, so
/// re-applying the event clears it).
macro_rules! history_error_sql {
    () => {
        "(SELECT 'an event of this run could not be recorded: ' || d.error FROM projector_dead_letters d \
         WHERE d.run_id = runs.run_id AND d.reapplied_at IS NULL ORDER BY d.id LIMIT 1)"
    };
}

const RUN_COLUMNS: &str = concat!(
    "run_id, project_id, integration_id, api_key_id, member_id, tool_name, status, error_class, \
     error, http_status, latency_ms, attempts, accepted_at, started_at, finished_at, response_size, \
     response_truncated, approval, trace_id, idempotency_key, redrive_of, client_retries, ",
    history_error_sql!(),
    " AS history_error"
);

#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    pub tool_name: Option<String>,
    pub status: Option<String>,
    pub member_id: Option<String>,
    pub integration_id: Option<Uuid>,
    /// Accepted at or after.
    pub from: Option<DateTime<Utc>>,
    /// Accepted before.
    pub to: Option<DateTime<Utc>>,
    /// Keyset cursor: runs strictly older than this (accepted_at, run_id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// Runs of a project, newest first. Only the filters given are in the
/// statement: a prepared `($n IS NULL OR column = $n)` gets a generic plan
/// after a few executions, and that plan cannot use the (project, status) or
/// (project, tool) indexes, so a filter that matches few of 100,000 runs
/// would scan them all.
pub async fn list(
    pool: &PgPool,
    project_id: Uuid,
    scope: &ReadScope,
    filter: &RunFilter,
) -> StoreResult<Vec<RunRecord>> {
    let mut query =
        sqlx::QueryBuilder::<sqlx::Postgres>::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE project_id = "));
    query.push_bind(project_id);
    let texts = [
        ("tool_name", &filter.tool_name),
        ("status", &filter.status),
        ("member_id", &filter.member_id),
        ("member_id", &scope.member_id),
    ];
    for (column, value) in texts {
        if let Some(value) = value {
            query.push(format!(" AND {column} = ")).push_bind(value.clone());
        }
    }
    for integration in [filter.integration_id, scope.integration_id].into_iter().flatten() {
        query.push(" AND integration_id = ").push_bind(integration);
    }
    if let Some(tools) = &scope.tools {
        query.push(" AND tool_name = ANY(").push_bind(tools.clone()).push(")");
    }
    if let Some((at, id)) = filter.before {
        query
            .push(" AND (accepted_at, run_id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    if let Some(from) = filter.from {
        query.push(" AND accepted_at >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        query.push(" AND accepted_at < ").push_bind(to);
    }
    query
        .push(" ORDER BY accepted_at DESC, run_id DESC LIMIT ")
        .push_bind(filter.limit);
    Ok(query.build_query_as::<RunRecord>().fetch_all(pool).await?)
}

pub async fn get(pool: &PgPool, run_id: Uuid) -> StoreResult<(RunRecord, Vec<AttemptRecord>)> {
    let run = sqlx::query_as::<_, RunRecord>(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE {RUN_KEY}"))
        .bind(run_id)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)?;
    let attempts = sqlx::query_as::<_, AttemptRecord>(&format!(
        "SELECT attempt, started_at, finished_at, http_status, error_class, error, bytes_out, bytes_in \
         FROM run_attempts WHERE {RUN_KEY} ORDER BY attempt"
    ))
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    Ok((run, attempts))
}

/// Whether run history has the run at all (any status).
pub async fn in_history(pool: &PgPool, run_id: Uuid) -> StoreResult<bool> {
    Ok(
        sqlx::query_scalar::<_, i32>(&format!("SELECT 1 FROM runs WHERE {RUN_KEY}"))
            .bind(run_id)
            .fetch_optional(pool)
            .await?
            .is_some(),
    )
}

/// A run history has no row for although the projector met its events: they
/// were all dead-lettered. Returns its project (from the event or its subject,
/// if known) and the history error.
pub async fn unrecorded(pool: &PgPool, run_id: Uuid) -> StoreResult<Option<(Option<Uuid>, String)>> {
    let row: (Option<Uuid>, Option<String>) = sqlx::query_as(concat!(
        "SELECT (SELECT d.project_id FROM projector_dead_letters d WHERE d.run_id = runs.run_id \
         AND d.reapplied_at IS NULL AND d.project_id IS NOT NULL LIMIT 1), ",
        history_error_sql!(),
        " FROM (SELECT $1::uuid AS run_id) runs"
    ))
    .bind(run_id)
    .fetch_one(pool)
    .await?;
    Ok(row.1.map(|error| (row.0, error)))
}

/// A run's stored bodies (projects with `store_bodies`; `None` when none were kept).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct BodiesRecord {
    #[serde(rename = "request")]
    pub request_body: Option<String>,
    #[serde(rename = "response")]
    pub response_body: Option<String>,
    #[serde(rename = "truncated")]
    pub bodies_truncated: Option<bool>,
}

pub async fn bodies(pool: &PgPool, run_id: Uuid) -> StoreResult<Option<BodiesRecord>> {
    Ok(sqlx::query_as::<_, BodiesRecord>(&format!(
        "SELECT request_body, response_body, bodies_truncated FROM runs WHERE {RUN_KEY} \
         AND bodies_truncated IS NOT NULL"
    ))
    .bind(run_id)
    .fetch_optional(pool)
    .await?)
}

/// The runs that re-drive `run_id` (oldest first, 100 at most).
pub async fn redrives(pool: &PgPool, project_id: Uuid, run_id: Uuid) -> StoreResult<Vec<(Uuid, String)>> {
    Ok(sqlx::query_as(
        "SELECT run_id, status FROM runs WHERE redrive_of = $1 AND project_id = $2 \
         ORDER BY accepted_at, run_id LIMIT 100",
    )
    .bind(run_id)
    .bind(project_id)
    .fetch_all(pool)
    .await?)
}

/// The arguments history kept of a run (projects with `store_bodies`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeptArguments {
    /// A JSON object, redacted like the bodies.
    pub arguments: Option<String>,
    /// Redaction or the size cap changed them.
    pub arguments_altered: Option<bool>,
}

pub async fn arguments(pool: &PgPool, run_id: Uuid) -> StoreResult<KeptArguments> {
    Ok(sqlx::query_as::<_, KeptArguments>(&format!(
        "SELECT arguments, arguments_altered FROM runs WHERE {RUN_KEY}"
    ))
    .bind(run_id)
    .fetch_optional(pool)
    .await?
    .unwrap_or(KeptArguments {
        arguments: None,
        arguments_altered: None,
    }))
}

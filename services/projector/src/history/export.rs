//! The rows `tengine usage export` streams: usage (`usage_hourly`) or runs, one
//! page per query with keyset pagination, never the whole result in memory. Each
//! row comes with its keyset position (a JSON array), after which the next page
//! starts.

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use sqlx::{PgPool, Row, postgres::PgRow};
use uuid::Uuid;

/// What is exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `usage_hourly` rows (per integration, member, tool and hour).
    Usage,
    /// One row per run.
    Runs,
}

const USAGE_COLUMNS: [&str; 12] = [
    "project_id",
    "hour",
    "integration_id",
    "member_id",
    "tool_name",
    "calls",
    "successes",
    "failures",
    "latency_ms_sum",
    "latency_buckets",
    "bytes_in",
    "bytes_out",
];

const RUN_COLUMNS: [&str; 13] = [
    "run_id",
    "project_id",
    "integration_id",
    "api_key_id",
    "member_id",
    "tool_name",
    "status",
    "error_class",
    "http_status",
    "latency_ms",
    "attempts",
    "accepted_at",
    "finished_at",
];

impl Kind {
    /// The fields of a row, in order.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Kind::Usage => &USAGE_COLUMNS,
            Kind::Runs => &RUN_COLUMNS,
        }
    }

    /// How many values a keyset position of this kind has.
    pub fn key_len(self) -> usize {
        match self {
            Kind::Usage => 4,
            Kind::Runs => 2,
        }
    }
}

/// One page of rows after the cursor's position, in key order.
fn page_query(kind: Kind) -> String {
    match kind {
        Kind::Usage => format!(
            "SELECT {} FROM usage_hourly WHERE project_id = $1 AND hour >= $2 AND hour < $3 \
             AND ($4::timestamptz IS NULL OR (hour, integration_id, member_id, tool_name) > ($4, $5, $6, $7)) \
             ORDER BY hour, integration_id, member_id, tool_name LIMIT $8",
            USAGE_COLUMNS.join(", ")
        ),
        Kind::Runs => format!(
            "SELECT {} FROM runs WHERE project_id = $1 AND accepted_at >= $2 AND accepted_at < $3 \
             AND ($4::timestamptz IS NULL OR (accepted_at, run_id) > ($4, $5::uuid)) \
             ORDER BY accepted_at, run_id LIMIT $8",
            RUN_COLUMNS.join(", ")
        ),
    }
}

fn time(value: DateTime<Utc>) -> Value {
    json!(value.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// A row as a JSON object, with its keyset position.
fn decode_row(kind: Kind, row: &PgRow) -> Result<(serde_json::Map<String, Value>, Value), sqlx::Error> {
    let mut out = serde_json::Map::new();
    let key = match kind {
        Kind::Usage => {
            let hour: DateTime<Utc> = row.try_get("hour")?;
            let integration: Uuid = row.try_get("integration_id")?;
            let member: String = row.try_get("member_id")?;
            let tool: String = row.try_get("tool_name")?;
            out.insert("project_id".into(), json!(row.try_get::<Uuid, _>("project_id")?));
            out.insert("hour".into(), time(hour));
            out.insert("integration_id".into(), json!(integration));
            out.insert("member_id".into(), json!(member));
            out.insert("tool_name".into(), json!(tool));
            for column in ["calls", "successes", "failures", "latency_ms_sum"] {
                out.insert(column.into(), json!(row.try_get::<i64, _>(column)?));
            }
            out.insert(
                "latency_buckets".into(),
                json!(row.try_get::<Vec<i64>, _>("latency_buckets")?),
            );
            for column in ["bytes_in", "bytes_out"] {
                out.insert(column.into(), json!(row.try_get::<i64, _>(column)?));
            }
            json!([time(hour), integration, member, tool])
        }
        Kind::Runs => {
            let run: Uuid = row.try_get("run_id")?;
            let accepted: DateTime<Utc> = row.try_get("accepted_at")?;
            for column in ["run_id", "project_id", "integration_id", "api_key_id"] {
                out.insert(column.into(), json!(row.try_get::<Uuid, _>(column)?));
            }
            for column in ["member_id", "tool_name", "status", "error_class"] {
                out.insert(column.into(), json!(row.try_get::<Option<String>, _>(column)?));
            }
            out.insert(
                "http_status".into(),
                json!(row.try_get::<Option<i32>, _>("http_status")?),
            );
            out.insert("latency_ms".into(), json!(row.try_get::<Option<i64>, _>("latency_ms")?));
            out.insert("attempts".into(), json!(row.try_get::<i32, _>("attempts")?));
            out.insert("accepted_at".into(), time(accepted));
            let finished: Option<DateTime<Utc>> = row.try_get("finished_at")?;
            out.insert("finished_at".into(), finished.map_or(Value::Null, time));
            json!([time(accepted), run])
        }
    };
    Ok((out, key))
}

/// The pages of one kind of row (the query is built once).
pub struct Pages {
    kind: Kind,
    sql: String,
}

/// A row as a JSON object, and its keyset position.
pub type ExportRow = (serde_json::Map<String, Value>, Value);

impl Pages {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            sql: page_query(kind),
        }
    }

    /// Up to `limit` rows of `project` in `[from, to)` strictly after the keyset
    /// position `after` (a row's key; `None`: from the start), streamed in key order.
    pub fn page<'a>(
        &'a self,
        pool: &'a PgPool,
        project: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<&Value>,
        limit: i64,
    ) -> anyhow::Result<impl Stream<Item = Result<ExportRow, sqlx::Error>> + use<'a>> {
        let key = after.and_then(Value::as_array).cloned().unwrap_or_default();
        let at = |i: usize| key.get(i).and_then(Value::as_str).map(str::to_string);
        let key_time = at(0)
            .map(|t| DateTime::parse_from_rfc3339(&t).map(|t| t.with_timezone(&Utc)))
            .transpose()
            .context("the cursor's time")?;
        let kind = self.kind;
        let rows = sqlx::query(&self.sql)
            .bind(project)
            .bind(from)
            .bind(to)
            .bind(key_time)
            .bind(
                at(1)
                    .map(|s| Uuid::parse_str(&s))
                    .transpose()
                    .context("the cursor's id")?,
            )
            .bind(at(2))
            .bind(at(3))
            .bind(limit)
            .fetch(pool);
        Ok(rows.map(move |row| row.and_then(|row| decode_row(kind, &row))))
    }
}

/// The hours of `[since, until)` in which `project` has usage, in order.
pub async fn hours_with_usage(
    pool: &PgPool,
    project: Uuid,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, sqlx::Error> {
    let hours: Vec<(DateTime<Utc>,)> = sqlx::query_as(
        "SELECT DISTINCT hour FROM usage_hourly WHERE project_id = $1 AND hour >= $2 AND hour < $3 ORDER BY hour",
    )
    .bind(project)
    .bind(since)
    .bind(until)
    .fetch_all(pool)
    .await?;
    Ok(hours.into_iter().map(|(hour,)| hour).collect())
}

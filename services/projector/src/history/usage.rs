//! Hourly usage (`usage_hourly`), summed for the admin API.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, types::Json};
use tengine_control::{StoreResult, principals::ReadScope};
use uuid::Uuid;

/// Dimensions usage can be grouped by; `hour` is always available as a column.
pub const GROUPS: &[(&str, &str)] = &[
    ("tool", "tool_name"),
    ("member", "member_id"),
    ("integration", "integration_id::text"),
    ("hour", "hour::text"),
];

/// Usage of a project in `[from, to)`, summed over everything not in `group_by`.
pub async fn summed(
    pool: &PgPool,
    project_id: Uuid,
    scope: &ReadScope,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    group_by: &[&str],
) -> StoreResult<Vec<Value>> {
    let columns: Vec<(&str, &str)> = GROUPS
        .iter()
        .copied()
        .filter(|(name, _)| group_by.contains(name))
        .collect();
    let group: Vec<&str> = columns.iter().map(|(_, expr)| *expr).collect();
    let sql = format!(
        "SELECT json_build_object({fields} 'calls', sum(calls), 'successes', sum(successes), 'failures', sum(failures), \
         'latency_ms_sum', sum(latency_ms_sum), 'bytes_in', sum(bytes_in), 'bytes_out', sum(bytes_out)) \
         FROM usage_hourly WHERE project_id = $1 AND ($2::timestamptz IS NULL OR hour >= $2) \
         AND ($3::timestamptz IS NULL OR hour < $3) AND ($4::uuid IS NULL OR integration_id = $4) \
         AND ($5::text[] IS NULL OR tool_name = ANY($5)) AND ($6::text IS NULL OR member_id = $6) \
         {group_by} {order_by}",
        fields = columns
            .iter()
            .map(|(name, expr)| format!("'{name}', {expr},"))
            .collect::<String>(),
        group_by = if group.is_empty() {
            String::new()
        } else {
            format!("GROUP BY {}", group.join(", "))
        },
        order_by = if group.is_empty() {
            String::new()
        } else {
            format!("ORDER BY {}", group.join(", "))
        },
    );
    let rows: Vec<(Json<Value>,)> = sqlx::query_as(&sql)
        .bind(project_id)
        .bind(from)
        .bind(to)
        .bind(scope.integration_id)
        .bind(&scope.tools)
        .bind(&scope.member_id)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| r.0.0)
        .filter(|v| !v["calls"].is_null())
        .collect())
}

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
    ("day", "(hour AT TIME ZONE 'UTC')::date::text"),
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

/// Buckets of `usage_hourly.latency_histogram` (migration 20261201000101).
pub const LATENCY_HISTOGRAM_BUCKETS: usize = 160;
/// Each bucket's upper bound is this factor times the previous one's (ms).
const LATENCY_GROWTH: f64 = 1.1;

/// The histogram bucket of a latency: 0 up to 1 ms, then `i` for
/// `(1.1^(i-1), 1.1^i]` ms, the last bucket for anything longer.
pub fn latency_bucket(latency_ms: i64) -> usize {
    if latency_ms <= 1 {
        return 0;
    }
    // ceil(log_1.1(ms)); f64 holds every i64 latency closely enough for a bucket.
    let bucket = ((latency_ms as f64).ln() / LATENCY_GROWTH.ln()).ceil();
    if bucket >= (LATENCY_HISTOGRAM_BUCKETS - 1) as f64 {
        LATENCY_HISTOGRAM_BUCKETS - 1
    } else {
        bucket as usize
    }
}

/// Latency percentiles of a period, from the hourly histograms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Calls counted in the histograms.
    pub calls: i64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// p50 and p95 of a project's latency in `[from, now)`: the hourly histograms
/// summed bucket by bucket (one row per bucket, whatever the number of runs),
/// each percentile interpolated within its bucket. `None` without calls.
pub async fn latency_percentiles(
    pool: &PgPool,
    project_id: Uuid,
    from: Option<DateTime<Utc>>,
) -> StoreResult<Option<Percentiles>> {
    let buckets: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (t.i - 1)::bigint, sum(t.calls)::bigint FROM usage_hourly u, \
         unnest(u.latency_histogram) WITH ORDINALITY AS t(calls, i) \
         WHERE u.project_id = $1 AND ($2::timestamptz IS NULL OR u.hour >= $2) \
         GROUP BY t.i ORDER BY t.i",
    )
    .bind(project_id)
    .bind(from)
    .fetch_all(pool)
    .await?;
    Ok(percentiles(&buckets))
}

/// p50 and p95 of (bucket, calls) pairs in bucket order.
fn percentiles(buckets: &[(i64, i64)]) -> Option<Percentiles> {
    let calls: i64 = buckets.iter().map(|(_, n)| (*n).max(0)).sum();
    if calls == 0 {
        return None;
    }
    let at = |q: f64| {
        let rank = q * calls as f64;
        let mut below = 0.0;
        for (bucket, n) in buckets {
            let n = (*n).max(0) as f64;
            if n > 0.0 && below + n >= rank {
                let bucket = i32::try_from(*bucket).unwrap_or(0);
                if bucket == 0 {
                    return 1.0;
                }
                // Geometric interpolation between the bucket's bounds.
                let lower = LATENCY_GROWTH.powi(bucket - 1);
                let fraction = ((rank - below) / n).clamp(0.0, 1.0);
                return lower * LATENCY_GROWTH.powf(fraction);
            }
            below += n;
        }
        LATENCY_GROWTH.powi(LATENCY_HISTOGRAM_BUCKETS as i32 - 1)
    };
    Some(Percentiles {
        calls,
        p50_ms: at(0.5),
        p95_ms: at(0.95),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_spaced_and_capped() {
        assert_eq!(latency_bucket(-5), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 8); // 1.1^7 = 1.95 < 2 <= 1.1^8 = 2.14
        assert_eq!(latency_bucket(100), 49); // 1.1^48 = 97.0 < 100 <= 1.1^49 = 106.7
        assert_eq!(latency_bucket(i64::MAX), LATENCY_HISTOGRAM_BUCKETS - 1);
        for ms in [3, 17, 250, 999, 12_345, 300_000] {
            let b = latency_bucket(ms) as i32;
            assert!(LATENCY_GROWTH.powi(b - 1) < ms as f64 && ms as f64 <= LATENCY_GROWTH.powi(b) * 1.000_001);
        }
    }

    #[test]
    fn percentiles_fall_within_ten_percent() {
        // 90 calls of 100 ms and 10 of 1000 ms: p50 about 100, p95 about 1000.
        let mut hist = vec![0i64; LATENCY_HISTOGRAM_BUCKETS];
        hist[latency_bucket(100)] += 90;
        hist[latency_bucket(1000)] += 10;
        let pairs: Vec<(i64, i64)> = hist.iter().enumerate().map(|(i, n)| (i as i64, *n)).collect();
        let p = percentiles(&pairs).expect("calls");
        assert_eq!(p.calls, 100);
        assert!((90.0..=110.0).contains(&p.p50_ms), "{p:?}");
        assert!((900.0..=1100.0).contains(&p.p95_ms), "{p:?}");
        assert!(percentiles(&[(3, 0)]).is_none());
    }
}

//! Quotas: a monthly call limit per project and a calls-per-minute limit per member
//! (per API key for callers without a member session).
//!
//! Counters live in PostgreSQL (`quota_counters`), shared by every ingress instance.
//! One conditional upsert per limit checks and counts at once (`… DO UPDATE SET
//! calls = calls + 1 WHERE calls < limit`): PostgreSQL locks the counter row, so
//! concurrent calls on any instance are admitted exactly up to the limit. Both
//! limits are charged in one transaction, the project's month first (one lock
//! order, no deadlocks), so a call refused by one limit consumes neither. Windows
//! are fixed and computed from the database's clock, the same for all instances.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use tengine_core::{envelope::Caller, storable};

use crate::StoreResult;

/// A limit a call ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The setting's name: `monthly_call_limit` or `member_calls_per_minute`.
    pub limit: &'static str,
    pub value: i64,
    /// When the window ends and calls are admitted again.
    pub resets_at: DateTime<Utc>,
    /// Who the limit applies to, for the message (`project`, `member u1`, `API key …`).
    pub subject: String,
}

impl Exceeded {
    pub fn message(&self) -> String {
        let what = match self.limit {
            "monthly_call_limit" => format!("the project's monthly call limit ({} calls)", self.value),
            _ => format!("the rate limit of {} calls per minute for {}", self.value, self.subject),
        };
        format!(
            "quota exceeded: {what} is reached; it resets at {}",
            self.resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// Counter rows a call was charged to (to refund it if it could not be queued).
#[derive(Debug, Clone, Default)]
pub struct Charge {
    windows: Vec<(String, DateTime<Utc>)>,
}

pub enum Verdict {
    Allowed(Charge),
    Exceeded(Exceeded),
}

fn rate_scope(caller: &Caller) -> (String, String) {
    match &caller.member {
        // The member id is the caller's text: storable, like every other.
        Some(member) => (
            format!("minute:member:{}", storable::text(&member.id)),
            format!("member `{}`", member.id),
        ),
        None => (
            format!("minute:key:{}", caller.api_key_id),
            format!("API key {}", caller.api_key_id),
        ),
    }
}

/// A project's limits (monthly calls, calls per minute per member): read with the
/// caller's credential (`principals::Principal::limits`), so checking quotas adds no
/// query when none is set.
pub type Limits = (Option<i64>, Option<i32>);

/// Counts one call against the caller's limits, or says which limit it exceeds
/// (then nothing is counted). Without limits nothing is counted and no query is made.
pub async fn charge(pool: &PgPool, caller: &Caller, limits: Limits) -> StoreResult<Verdict> {
    let (monthly, per_minute) = limits;
    if monthly.is_none() && per_minute.is_none() {
        return Ok(Verdict::Allowed(Charge::default()));
    }
    let mut tx = pool.begin().await?;
    // The windows by the database's clock, the same for every instance.
    let (month, minute): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT date_trunc('month', now(), 'UTC'), date_trunc('minute', now())")
            .fetch_one(&mut *tx)
            .await?;
    let (rate_scope, rate_subject) = rate_scope(caller);
    let checks = [
        (
            "monthly_call_limit",
            monthly,
            "month".to_string(),
            month,
            month.checked_add_months(chrono::Months::new(1)).unwrap_or(month),
            "project".to_string(),
        ),
        (
            "member_calls_per_minute",
            per_minute.map(i64::from),
            rate_scope,
            minute,
            minute
                .checked_add_signed(chrono::Duration::minutes(1))
                .unwrap_or(minute),
            rate_subject,
        ),
    ];
    let mut charge = Charge::default();
    for (limit, value, scope, window, resets_at, subject) in checks {
        let Some(value) = value else { continue };
        let counted: Option<(i64,)> = if value <= 0 {
            None
        } else {
            sqlx::query_as(
                "INSERT INTO quota_counters (project_id, scope, window_start, calls) VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (project_id, scope, window_start) DO UPDATE SET calls = quota_counters.calls + 1 \
                 WHERE quota_counters.calls < $4 RETURNING calls",
            )
            .bind(caller.project_id)
            .bind(&scope)
            .bind(window)
            .bind(value)
            .fetch_optional(&mut *tx)
            .await?
        };
        if counted.is_none() {
            tx.rollback().await?;
            return Ok(Verdict::Exceeded(Exceeded {
                limit,
                value,
                resets_at,
                subject,
            }));
        }
        charge.windows.push((scope, window));
    }
    tx.commit().await?;
    Ok(Verdict::Allowed(charge))
}

/// Gives back a charge whose call was never queued (best effort).
pub async fn refund(pool: &PgPool, project_id: Uuid, charge: &Charge) {
    for (scope, window) in &charge.windows {
        let done = sqlx::query(
            "UPDATE quota_counters SET calls = calls - 1 WHERE project_id = $1 AND scope = $2 \
             AND window_start = $3 AND calls > 0",
        )
        .bind(project_id)
        .bind(scope)
        .bind(window)
        .execute(pool)
        .await;
        if let Err(err) = done {
            tracing::warn!(error = %err, %project_id, scope, "refunding a quota charge failed");
        }
    }
}

/// Drops per-minute counters of windows long past (the monthly ones are kept as a record).
pub async fn prune(pool: &PgPool) -> StoreResult<u64> {
    Ok(sqlx::query(
        "DELETE FROM quota_counters WHERE scope LIKE 'minute:%' AND window_start < now() - interval '1 hour'",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

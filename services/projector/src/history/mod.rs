//! Reading run history. The projector writes the history tables (`runs`,
//! `run_attempts`, `run_results`, `usage_hourly`, `processed_events`,
//! `projector_checkpoints`, `projector_dead_letters`); every query that reads
//! them is here too, so a column changes in one crate: the admin API, a client's
//! retry, `/v1/health` and `tengine usage export` call these functions.

pub mod export;
pub mod results;
pub mod runs;
pub mod usage;

use async_nats::jetstream;
use sqlx::PgPool;
use tengine_control::StoreResult;

/// History tables are partitioned by `day = uuid_v7_day(run_id)`: naming it lets
/// PostgreSQL read one partition instead of probing every day's index.
const RUN_KEY: &str = "run_id = $1 AND day = uuid_v7_day($1)";

/// Dead letters not re-applied yet (`dead_letters` in `/v1/health`, and a gauge).
pub async fn unresolved_dead_letters(pool: &PgPool) -> StoreResult<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM projector_dead_letters WHERE reapplied_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// The last event-log sequence applied to history.
async fn checkpoint(pool: &PgPool) -> StoreResult<i64> {
    let row: (Option<i64>,) = sqlx::query_as("SELECT max(stream_seq) FROM projector_checkpoints")
        .fetch_one(pool)
        .await?;
    Ok(row.0.unwrap_or(0))
}

/// Whether run history has stopped: an event has waited longer than `after` and
/// no batch was applied within `after` either (a projector far behind still
/// applies batches). `None` when NATS or PostgreSQL cannot be read.
pub async fn stalled(
    events: &jetstream::stream::Stream,
    events_wildcard: &str,
    pool: &PgPool,
    after: std::time::Duration,
) -> Option<bool> {
    let (applied, idle_secs): (Option<i64>, Option<f64>) = sqlx::query_as(
        "SELECT max(stream_seq), EXTRACT(EPOCH FROM now() - max(updated_at))::float8 FROM projector_checkpoints",
    )
    .fetch_one(pool)
    .await
    .ok()?;
    let applied = u64::try_from(applied.unwrap_or(0)).unwrap_or(0);
    if idle_secs.is_some_and(|idle| idle <= after.as_secs_f64()) {
        return Some(false);
    }
    let mut log = events.clone();
    if log.info().await.ok()?.state.last_sequence <= applied {
        return Some(false);
    }
    let oldest = events
        .get_first_raw_message_by_subject(events_wildcard, applied.saturating_add(1))
        .await
        .ok()?;
    let now_nanos = i128::from(chrono::Utc::now().timestamp_nanos_opt()?);
    let waited_nanos = now_nanos.saturating_sub(oldest.time.unix_timestamp_nanos());
    Some(waited_nanos > i128::try_from(after.as_nanos()).unwrap_or(i128::MAX))
}

/// Events in the log not yet applied to run history: the log's last sequence minus
/// the projector's checkpoint. `None` when either side cannot be read.
pub async fn lag(events: &jetstream::stream::Stream, pool: &PgPool) -> Option<u64> {
    let mut events = events.clone();
    let tail = events.info().await.ok()?.state.last_sequence;
    let done = checkpoint(pool).await.ok()?;
    Some(tail.saturating_sub(u64::try_from(done).unwrap_or(0)))
}

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

/// What the projector has applied: the last event-log sequence, and how long ago
/// it applied a batch (`None` before its first).
struct Applied {
    seq: u64,
    idle: Option<std::time::Duration>,
}

async fn applied(pool: &PgPool) -> StoreResult<Applied> {
    let (seq, idle_secs): (Option<i64>, Option<f64>) = sqlx::query_as(
        "SELECT max(stream_seq), EXTRACT(EPOCH FROM now() - max(updated_at))::float8 FROM projector_checkpoints",
    )
    .fetch_one(pool)
    .await?;
    Ok(Applied {
        seq: u64::try_from(seq.unwrap_or(0)).unwrap_or(0),
        idle: idle_secs.and_then(|secs| std::time::Duration::try_from_secs_f64(secs.max(0.0)).ok()),
    })
}

/// Events in the log not yet applied to run history: the log's last sequence minus
/// the projector's checkpoint. `None` when either side cannot be read.
pub async fn lag(events: &jetstream::stream::Stream, pool: &PgPool) -> Option<u64> {
    let mut events = events.clone();
    let tail = events.info().await.ok()?.state.last_sequence;
    Some(tail.saturating_sub(applied(pool).await.ok()?.seq))
}

/// Run history's progress, for the health check.
pub struct Progress {
    /// As [`lag`].
    pub lag: u64,
    /// History has stopped: an event has waited longer than the bound and no
    /// batch was applied within it either (a projector far behind still applies
    /// batches).
    pub stalled: bool,
}

/// [`Progress`], reading the log and the checkpoint once. `None` when either
/// cannot be read.
pub async fn progress(
    events: &jetstream::stream::Stream,
    events_wildcard: &str,
    pool: &PgPool,
    stalled_after: std::time::Duration,
) -> Option<Progress> {
    let mut log = events.clone();
    let tail = log.info().await.ok()?.state.last_sequence;
    let applied = applied(pool).await.ok()?;
    let lag = tail.saturating_sub(applied.seq);
    let idle = applied.idle.is_none_or(|idle| idle > stalled_after);
    let stalled =
        lag > 0 && idle && waited(events, events_wildcard, applied.seq.saturating_add(1)).await > Some(stalled_after);
    Some(Progress { lag, stalled })
}

/// How long the first event from `seq` on has been in the log.
async fn waited(events: &jetstream::stream::Stream, events_wildcard: &str, seq: u64) -> Option<std::time::Duration> {
    let oldest = events
        .get_first_raw_message_by_subject(events_wildcard, seq)
        .await
        .ok()?;
    let now_nanos = i128::from(chrono::Utc::now().timestamp_nanos_opt()?);
    let nanos = now_nanos.saturating_sub(oldest.time.unix_timestamp_nanos());
    Some(std::time::Duration::from_nanos(u64::try_from(nanos).unwrap_or(0)))
}

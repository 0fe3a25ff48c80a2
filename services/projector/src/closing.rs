//! Which hours of usage are closed: final, safe to export, never to change again.
//!
//! Hour `H` is closed once `H + 1h + usage_close_after_secs + PUBLISH_MARGIN` is
//! (a) in the past and (b) before the stream time of the first event the
//! projector has not applied. (b) uses the durable projector consumer's ack floor,
//! which JetStream keeps across every projector process; the projector acks only
//! after its transaction commits, so every event stored before that time is in
//! PostgreSQL.
//!
//! Why that is enough: a run counts in the hour it was accepted only if it
//! finished within `usage_close_after_secs` after that hour (see `count_usage`);
//! its events are stored at most `PUBLISH_MARGIN` after their own timestamps (the
//! worker's bounded publish retries, and clock skew). So every event that can
//! still change hour `H` was stored, and applied, before `H` closes; a later
//! straggler counts in a later, open hour.

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, DurationRound, TimeZone, Utc};

/// Allowance for an event being stored after its own timestamp.
pub const PUBLISH_MARGIN: Duration = Duration::from_secs(300);

/// The end of the closed hours: every hour ending at or before it is closed.
pub async fn closed_until(
    events: &jetstream::stream::Stream,
    projector_consumer: &str,
    events_subject_filter: &str,
    close_after: Duration,
) -> anyhow::Result<DateTime<Utc>> {
    let now = Utc::now();
    let mut log = events.clone();
    let tail = log
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("reading the event log's state: {e}"))?
        .state
        .last_sequence;
    // No consumer yet: nothing has been applied.
    let floor = match log.consumer_info(projector_consumer).await {
        Ok(info) => info.ack_floor.stream_sequence,
        Err(_) => 0,
    };
    let applied_through = if floor >= tail {
        now
    } else {
        let first_pending = events
            .get_first_raw_message_by_subject(events_subject_filter, floor + 1)
            .await
            .map_err(|e| anyhow::anyhow!("reading the first event not yet projected (#{}): {e}", floor + 1))?;
        let nanos = first_pending.time.unix_timestamp_nanos();
        Utc.timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    };
    let bound = now.min(applied_through)
        - chrono::Duration::from_std(close_after + PUBLISH_MARGIN).unwrap_or(chrono::Duration::days(3650));
    bound
        .duration_trunc(chrono::Duration::hours(1))
        .map_err(|e| anyhow::anyhow!("rounding {bound} to the hour: {e}"))
}

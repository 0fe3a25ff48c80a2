//! Run history is partitioned by day; retention drops whole days.
//!
//! `runs`, `run_attempts` and `processed_events` are range-partitioned on `day`,
//! the UTC date of the UUIDv7 timestamp of the row's id (run id, or event id for
//! `processed_events`), one partition `<table>_pYYYYMMDD` per day. The day is
//! fixed for a row and known from any event of the run, so upserts and lookups
//! name it (`ON CONFLICT (run_id, day)`, `WHERE run_id = $1 AND day = …`).
//!
//! There is no DEFAULT partition (its rows would escape retention). Instead every
//! projector batch first creates the partitions its rows need, in its own
//! transaction ([`ensure_partitions`]), so an insert never meets a missing
//! partition; [`maintain`] (at start and hourly) creates the next days ahead of
//! time, so that is rarely needed, and drops days past the retention.
//!
//! Partitions are created and dropped under one transaction-scoped advisory lock:
//! `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent creator of the
//! same name. Whoever also locks the history tables takes the advisory lock first
//! (see the rebuild), so the two locks are always taken in the same order.
//!
//! Dropping day `D` while the event log still holds an event of day `D` would let
//! a redelivery or a rebuild bring part of it back, and would forget that the
//! event was applied: the configuration requires the retention to exceed the
//! event log's age by a day (`Config::validate`).

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Days, NaiveDate, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The day-partitioned history tables.
pub const PARTITIONED_TABLES: [&str; 3] = ["runs", "run_attempts", "processed_events"];

/// Days created ahead of today by [`maintain`].
pub const AHEAD_DAYS: u64 = 2;

/// Maintenance waits at most this long for a table lock (DDL on a partition locks
/// its parent; a long reader such as an export must not queue every other reader
/// and writer behind the maintenance). It retries an hour later.
const LOCK_TIMEOUT: &str = "5s";

/// The UTC day of a UUIDv7's timestamp (milliseconds since the epoch in its first
/// 48 bits). Must equal the SQL function `uuid_v7_day`, which readers use.
pub fn uuid_day(id: Uuid) -> NaiveDate {
    let bytes = id.as_bytes();
    let millis = bytes[..6].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    // 48-bit milliseconds are at most ~3.3 million days: no overflow.
    DateTime::UNIX_EPOCH.date_naive() + Days::new(millis / 86_400_000)
}

/// The partition of `table` holding `day`.
pub fn partition_name(table: &str, day: NaiveDate) -> String {
    format!("{table}_p{:04}{:02}{:02}", day.year(), day.month(), day.day())
}

/// A date as PostgreSQL reads it whatever the session's DateStyle (ISO digits,
/// no sign; chrono's `Display` adds a `+` after year 9999).
fn iso(day: NaiveDate) -> String {
    format!("{:04}-{:02}-{:02}", day.year(), day.month(), day.day())
}

/// Serialises partition DDL (see the module docs). Transaction-scoped: released
/// at commit or rollback.
pub async fn lock_partitions(tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('tengine.history_partitions', 0))")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Partitions of `days` that do not exist yet, as (table, day); none when the
/// tables are not partitioned (the rebuild's scratch copies need no partitions).
async fn missing(
    tx: &mut Transaction<'_, Postgres>,
    days: &BTreeSet<NaiveDate>,
) -> Result<Vec<(&'static str, NaiveDate)>, sqlx::Error> {
    let wanted: Vec<(&'static str, NaiveDate)> = days
        .iter()
        .flat_map(|day| PARTITIONED_TABLES.map(|table| (table, *day)))
        .collect();
    let names: Vec<String> = wanted.iter().map(|(table, day)| partition_name(table, *day)).collect();
    // Unqualified names resolve like the projector's statements (search_path).
    let (partitioned, exist): (Option<bool>, Vec<bool>) = sqlx::query_as(
        "SELECT (SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('runs')), \
         ARRAY(SELECT to_regclass(n) IS NOT NULL FROM unnest($1::text[]) WITH ORDINALITY AS t(n, i) ORDER BY i)",
    )
    .bind(&names)
    .fetch_one(&mut **tx)
    .await?;
    if partitioned != Some(true) {
        return Ok(Vec::new());
    }
    Ok(wanted
        .into_iter()
        .zip(exist)
        .filter_map(|(want, exists)| (!exists).then_some(want))
        .collect())
}

/// Creates the partitions of every history table for `days` that are missing,
/// inside `tx` (call it before writing rows of those days in the same
/// transaction). Cheap when they exist: one catalog query. Returns how many it created.
pub async fn ensure_partitions(
    tx: &mut Transaction<'_, Postgres>,
    days: &BTreeSet<NaiveDate>,
) -> Result<usize, sqlx::Error> {
    if days.is_empty() || missing(tx, days).await?.is_empty() {
        return Ok(0);
    }
    lock_partitions(tx).await?;
    // Another transaction may have created some while this one waited for the lock.
    let missing = missing(tx, days).await?;
    for (table, day) in &missing {
        // A run's row is updated three or four times (running, finished, counted):
        // room on each page keeps those updates HOT (no index writes).
        let storage = if *table == "runs" {
            " WITH (fillfactor = 70)"
        } else {
            ""
        };
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} FOR VALUES FROM ('{}') TO ('{}'){storage}",
            partition_name(table, *day),
            iso(*day),
            iso(*day + Days::new(1))
        ))
        .execute(&mut **tx)
        .await?;
    }
    Ok(missing.len())
}

/// What one maintenance pass did.
#[derive(Debug, Default)]
pub struct Maintenance {
    /// Partitions checked or created ahead of time (today and the next [`AHEAD_DAYS`]).
    pub ensured_days: usize,
    /// Partitions dropped, schema-qualified where needed.
    pub dropped: Vec<String>,
}

/// Creates the partitions of today and the next [`AHEAD_DAYS`] days, and drops the
/// days that ended more than `retention_days` before `now` (0: keep everything).
/// Each drop is its own short transaction. `usage_hourly` is never touched.
pub async fn maintain(pool: &PgPool, retention_days: u32, now: DateTime<Utc>) -> Result<Maintenance, sqlx::Error> {
    let today = now.date_naive();
    let ahead: BTreeSet<NaiveDate> = (0..=AHEAD_DAYS).map(|d| today + Days::new(d)).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    ensure_partitions(&mut tx, &ahead).await?;
    tx.commit().await?;
    // Kept outcomes live as long as their idempotency keys, whatever the retention.
    sqlx::query("DELETE FROM run_results WHERE expires_at < $1")
        .bind(now)
        .execute(pool)
        .await?;
    let mut out = Maintenance {
        ensured_days: ahead.len(),
        dropped: Vec::new(),
    };
    if retention_days == 0 {
        return Ok(out);
    }
    // Day D is dropped once all of it is older than the retention: D + 1 <= cutoff.
    let cutoff = (now - chrono::Duration::days(i64::from(retention_days))).date_naive();
    // The upper bound is read from the catalog, not the name: partitions made by
    // hand are handled too, and a DEFAULT or MAXVALUE partition never matches.
    let expired: Vec<(String,)> = sqlx::query_as(
        "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = ANY($1::text[]::regclass[]) \
         AND substring(pg_get_expr(c.relpartbound, c.oid) FROM $$TO \\('([0-9-]+)'\\)$$)::date <= $2::text::date \
         ORDER BY 1",
    )
    .bind(PARTITIONED_TABLES.map(String::from).to_vec())
    .bind(iso(cutoff))
    .fetch_all(pool)
    .await?;
    for (name,) in expired {
        let mut tx = pool.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .execute(&mut *tx)
            .await?;
        lock_partitions(&mut tx).await?;
        // `name` comes from regclass output: quoted where it needs to be.
        sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        out.dropped.push(name);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_of_a_v7_id_is_its_utc_date() {
        let at = DateTime::parse_from_rfc3339("2026-03-04T23:59:59.999Z").expect("time");
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, at.timestamp() as u64, at.timestamp_subsec_nanos());
        let id = Uuid::new_v7(ts);
        assert_eq!(uuid_day(id), NaiveDate::from_ymd_opt(2026, 3, 4).expect("date"));
        assert_eq!(partition_name("runs", uuid_day(id)), "runs_p20260304");
        let next = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            at.timestamp() as u64 + 1,
            0,
        ));
        assert_eq!(uuid_day(next), NaiveDate::from_ymd_opt(2026, 3, 5).expect("date"));
    }

    #[test]
    fn dates_are_plain_iso_beyond_year_9999() {
        let far = uuid_day(Uuid::max());
        assert_eq!(iso(far), "10889-08-02");
        assert_eq!(partition_name("runs", far), "runs_p108890802");
    }
}

//! `tengine projector rebuild`: replays the whole event log into fresh tables and
//! replaces run history and usage with the result.
//!
//! 1. The tables the projector writes are created empty in a scratch schema
//!    (`rebuild_<timestamp>`, same columns and keys) and the log is replayed into
//!    them from sequence 1, with an ephemeral ordered consumer, through the same
//!    code the projector uses (`apply_batch`), so the result is what the projector
//!    would have built.
//! 2. In one transaction the live tables are locked against writes (readers keep
//!    seeing the old history), the events stored meanwhile are replayed too, and
//!    the live tables' rows are replaced by the scratch ones, checkpoint included.
//!    A projector batch blocked by the lock then finds its events already applied.
//! 3. The scratch schema is dropped.
//!
//! Events the projector set aside as dead letters are set aside again (recorded
//! once: the live dead-letter table is shared), so a rebuild never stops on them.
//!
//! The live tables are kept (rows are replaced, not the tables), so grants,
//! partitions and readers' prepared statements stay valid; partitions the
//! rebuilt rows need are created in the swap transaction. A log that no longer
//! starts at sequence 1 (events past `streams.events_max_age_secs` were dropped)
//! is refused: the rebuilt history would silently lose what they built.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tengine_core::{Config, connections::Connections};

use crate::{
    dead_letters::{self, OnTransient, Raw},
    retention,
};

/// Tables the projector writes, in the order they are replaced.
pub const PROJECTED_TABLES: [&str; 6] = [
    "runs",
    "run_attempts",
    "run_results",
    "usage_hourly",
    "processed_events",
    "projector_checkpoints",
];

#[derive(Debug, Serialize)]
pub struct Rebuilt {
    /// Events replayed.
    pub events: u64,
    /// The log's last sequence included.
    pub through_seq: u64,
    pub runs: i64,
    pub run_attempts: i64,
    pub usage_rows: i64,
}

pub async fn rebuild(config: &Config) -> anyhow::Result<Rebuilt> {
    let Connections {
        pool, topology, events, ..
    } = Connections::open(config, "tengine-rebuild", 4).await?;
    let mut log = events.clone();
    let state = log.info().await.context("reading the event log's state")?.state.clone();
    if state.messages > 0 && state.first_sequence > 1 {
        anyhow::bail!(
            "the event log no longer starts at sequence 1 (its first event is #{}: older events were dropped \
             after streams.events_max_age_secs or events_max_bytes); a rebuild would lose the history they \
             built, so the current history is kept",
            state.first_sequence
        );
    }
    let schema = format!("rebuild_{}", chrono::Utc::now().format("%Y%m%d%H%M%S%f"));
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&pool).await?;
    let result = rebuild_into(
        config,
        &pool,
        &events,
        &topology.projector_consumer(),
        &schema,
        state.last_sequence,
    )
    .await;
    if let Err(err) = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
    {
        tracing::warn!(error = %err, %schema, "dropping the scratch schema failed; drop it by hand");
    }
    result
}

async fn rebuild_into(
    config: &Config,
    pool: &PgPool,
    events: &jetstream::stream::Stream,
    consumer: &str,
    schema: &str,
    tail: u64,
) -> anyhow::Result<Rebuilt> {
    for table in PROJECTED_TABLES {
        sqlx::query(&format!(
            "CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"
        ))
        .execute(pool)
        .await
        .with_context(|| format!("creating {schema}.{table}"))?;
    }
    // The projector's statements name tables without a schema: on these
    // connections they resolve to the scratch tables, and the one table that is
    // not copied (dead letters, shared with the live projector) to the live one.
    let options = PgConnectOptions::from_str(&config.database_url)
        .context("database_url")?
        .options([("search_path", format!("{schema},public"))]);
    let scratch = PgPoolOptions::new().max_connections(2).connect_with(options).await?;
    let batch = config.projector.batch_size.max(1);

    let close_after = config.projector.usage_close_after_secs;
    let mut replayed = replay(events, &scratch, consumer, close_after, 1, tail, batch).await?;
    tracing::info!(events = replayed, through = tail, "replayed the event log; swapping");

    let mut tx = pool.begin().await?;
    // Partition DDL below needs this lock; taken before the table locks, in the
    // order the projector takes them, so the two cannot deadlock.
    retention::lock_partitions(&mut tx).await?;
    // Blocks the projector's writes (not readers) until the swap commits.
    sqlx::query(&format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        PROJECTED_TABLES.map(|t| format!("public.{t}")).join(", ")
    ))
    .execute(&mut *tx)
    .await?;
    let mut log = events.clone();
    let now_tail = log
        .info()
        .await
        .context("reading the event log's state")?
        .state
        .last_sequence;
    if now_tail > tail {
        replayed += replay(events, &scratch, consumer, close_after, tail + 1, now_tail, batch).await?;
    }
    // The scratch tables are plain tables (LIKE copies no partitioning); the live
    // ones need a partition for every day the rebuilt rows fall on.
    let days: Vec<(chrono::NaiveDate,)> = sqlx::query_as(&format!(
        "SELECT day FROM {schema}.runs UNION SELECT day FROM {schema}.run_attempts \
         UNION SELECT day FROM {schema}.processed_events"
    ))
    .fetch_all(&mut *tx)
    .await?;
    retention::ensure_partitions(&mut tx, &days.into_iter().map(|(d,)| d).collect())
        .await
        .context("creating history partitions")?;
    for table in PROJECTED_TABLES {
        sqlx::query(&format!("DELETE FROM public.{table}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("INSERT INTO public.{table} SELECT * FROM {schema}.{table}"))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("copying the rebuilt {table}"))?;
    }
    let count = |table: &str| format!("SELECT count(*) FROM public.{table}");
    let (runs,): (i64,) = sqlx::query_as(&count("runs")).fetch_one(&mut *tx).await?;
    let (run_attempts,): (i64,) = sqlx::query_as(&count("run_attempts")).fetch_one(&mut *tx).await?;
    let (usage_rows,): (i64,) = sqlx::query_as(&count("usage_hourly")).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    scratch.close().await;
    Ok(Rebuilt {
        events: replayed,
        through_seq: now_tail.max(tail),
        runs,
        run_attempts,
        usage_rows,
    })
}

/// Applies the events with sequences `from..=to` to `pool`'s tables, in order and
/// in batches, with an ephemeral ordered consumer. Returns how many were read.
async fn replay(
    events: &jetstream::stream::Stream,
    pool: &PgPool,
    consumer: &str,
    close_after_secs: u64,
    from: u64,
    to: u64,
    batch_size: usize,
) -> anyhow::Result<u64> {
    if to < from {
        return Ok(0);
    }
    let ordered = events
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from },
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating a replay consumer: {e}"))?;
    let mut messages = ordered
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("reading the event log: {e}"))?;
    let mut read = 0u64;
    let mut batch: Vec<jetstream::Message> = Vec::with_capacity(batch_size);
    let mut done = false;
    while !done {
        let next = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| anyhow::anyhow!("the event log sent nothing for 30 s before sequence {to}"))?;
        done = take(next, to, &mut batch)?;
        read += 1;
        while !done && batch.len() < batch_size {
            match messages.next().now_or_never() {
                Some(next) => {
                    done = take(next, to, &mut batch)?;
                    read += 1;
                }
                None => break,
            }
        }
        if !batch.is_empty() {
            let raw: Vec<Raw<'_>> = batch
                .iter()
                .map(|message| Raw {
                    seq: message.info().map(|i| i.stream_sequence).unwrap_or(0),
                    subject: message.subject.as_str(),
                    payload: &message.payload,
                })
                .collect();
            dead_letters::project(pool, consumer, close_after_secs, &raw, OnTransient::Fail).await?;
            batch.clear();
        }
    }
    Ok(read)
}

/// Adds a replayed message to the batch; true once it is the last one wanted.
fn take(
    message: Option<Result<jetstream::Message, jetstream::consumer::pull::OrderedError>>,
    to: u64,
    batch: &mut Vec<jetstream::Message>,
) -> anyhow::Result<bool> {
    let message = message
        .ok_or_else(|| anyhow::anyhow!("the event log ended before sequence {to}"))?
        .map_err(|e| anyhow::anyhow!("reading the event log: {e}"))?;
    let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
    batch.push(message);
    Ok(seq >= to)
}

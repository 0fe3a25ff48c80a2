//! The projector: folds the event log into run history in PostgreSQL.
//!
//! Each batch is one transaction holding the effects, the ids of the events
//! applied (an event seen twice is skipped) and the stream-sequence checkpoint;
//! messages are acked only after it commits. The merge is order-independent:
//! events of one run come from different publishers, so a `Finished` may be
//! stored before its `Accepted`, and a row never moves back from a terminal status.
//!
//! Text from callers, upstream APIs and tenants is written through
//! [`tengine_core::storable`], so no value can make a statement fail; an event
//! that still cannot be applied (or is no event at all) is set aside by
//! [`dead_letters`] and the projector goes on.

mod apply;
pub mod closing;
pub mod dead_letters;
pub mod history;
pub mod rebuild;
pub mod retention;

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use sqlx::{PgPool, Postgres, Transaction};
use tengine_core::{
    Config, Topology,
    connections::Connections,
    envelope::{EventEnvelope, RunEvent},
    prometheus,
};
use uuid::Uuid;

use crate::apply::{Grouped, count_usage};

pub struct Projector {
    config: Config,
    pool: PgPool,
    events: jetstream::stream::Stream,
    topology: Topology,
}

/// SQL rank of a status: a row only ever moves to a higher rank.
pub(crate) const STATUS_RANK: &str =
    "(CASE runs.status WHEN 'accepted' THEN 1 WHEN 'awaiting_approval' THEN 1 WHEN 'running' THEN 2 ELSE 3 END)";

impl Projector {
    pub async fn connect(config: Config) -> anyhow::Result<Arc<Self>> {
        let Connections {
            pool, topology, events, ..
        } = Connections::open(&config, "tengine-projector", config.projector.database_pool_size).await?;
        Ok(Arc::new(Self {
            config,
            pool,
            events,
            topology,
        }))
    }

    /// Events in the log not yet applied to run history (`projector_lag_events` in
    /// the ingress health; cheap enough to sample for a gauge). `None` when NATS or
    /// PostgreSQL cannot be read.
    pub async fn lag(&self) -> Option<u64> {
        history::lag(&self.events, &self.pool).await
    }

    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let consumer_name = self.topology.projector_consumer();
        let consumer = tengine_core::topology::settle(&consumer_name, || {
            self.events.create_consumer(self.topology.projector_consumer_config())
        })
        .await?;
        let batch_size = self.config.projector.batch_size.max(1);
        let batch_wait = self.config.projector.batch_wait();
        let mut messages = tengine_core::topology::pull_messages(&consumer, batch_size).await?;
        tracing::info!(consumer = %self.topology.projector_consumer(), "projector consuming");
        // Housekeeping beside the projection, at start and hourly: per-minute quota
        // counters of past windows, and history partitions (next days created ahead,
        // expired days dropped).
        let pool = self.pool.clone();
        let retention_days = self.config.projector.history_retention_days;
        let housekeeping = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                if let Err(err) = tengine_control::quotas::prune(&pool).await {
                    tracing::warn!(error = %err, "pruning quota counters failed; retrying in an hour");
                }
                match retention::maintain(&pool, retention_days, chrono::Utc::now()).await {
                    Ok(done) if !done.dropped.is_empty() => {
                        tracing::info!(dropped = ?done.dropped, retention_days, "dropped expired run history")
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "maintaining history partitions failed; retrying in an hour")
                    }
                }
            }
        });
        let _housekeeping = tengine_core::tasks::AbortOnDrop(housekeeping);
        // The lag and dead-letter gauges: the same figures as `projector_lag_events`
        // and `dead_letters` in /v1/health.
        let sampled = self.clone();
        let lag = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                if let Some(lag) = sampled.lag().await {
                    metrics::gauge!(prometheus::PROJECTOR_LAG).set(lag as f64);
                }
                if let Ok(dead) = history::unresolved_dead_letters(&sampled.pool).await {
                    metrics::gauge!(prometheus::PROJECTOR_DEAD_LETTERS).set(dead as f64);
                }
            }
        });
        let _lag = tengine_core::tasks::AbortOnDrop(lag);
        tokio::pin!(shutdown);
        loop {
            let first = tokio::select! {
                _ = &mut shutdown => break,
                next = messages.next() => next,
            };
            let mut batch = match first {
                Some(Ok(message)) => vec![message],
                Some(Err(err)) => {
                    // As in the worker: the pull request may be gone with a lost node,
                    // and the old stream would wait for its expiry; pull afresh.
                    tracing::warn!(error = %err, "pulling events failed; opening a new pull");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    match tengine_core::topology::pull_messages(&consumer, batch_size).await {
                        Ok(fresh) => messages = fresh,
                        Err(err) => tracing::warn!(error = %err, "opening a new pull failed; retrying"),
                    }
                    continue;
                }
                None => anyhow::bail!("the event stream ended"),
            };
            // Gather more for a moment: under load, a transaction per event or two
            // was most of PostgreSQL's work. (A buffered message is taken even past
            // the deadline: the timeout polls it first.) A pull error ends the batch;
            // the pull reports it again if it persists.
            let now = tokio::time::Instant::now();
            let until = now.checked_add(batch_wait).unwrap_or(now);
            while batch.len() < batch_size {
                match tokio::time::timeout_at(until, messages.next()).await {
                    Ok(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            self.apply(&batch).await;
        }
        Ok(())
    }

    /// Applies a batch (retrying transient failures until it commits; setting
    /// poison events aside), then acks it.
    async fn apply(&self, batch: &[Message]) {
        let raw: Vec<dead_letters::Raw<'_>> = batch
            .iter()
            .map(|message| dead_letters::Raw {
                seq: message.info().map(|i| i.stream_sequence).unwrap_or(0),
                subject: message.subject.as_str(),
                payload: &message.payload,
            })
            .collect();
        let consumer = self.topology.projector_consumer();
        let started = std::time::Instant::now();
        let close_after = self.config.projector.usage_close_after_secs;
        let projected = dead_letters::project(
            &self.pool,
            &consumer,
            close_after,
            &raw,
            dead_letters::OnTransient::RetryForever,
        )
        .await;
        let dead = match projected {
            Ok(dead) => dead,
            // Not with `RetryForever`; kept unacked, the batch is redelivered.
            Err(err) => {
                tracing::error!(error = %err, "projecting a batch failed");
                return;
            }
        };
        metrics::histogram!(prometheus::PROJECTOR_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(prometheus::PROJECTOR_EVENTS).increment(batch.len().saturating_sub(dead) as u64);
        for message in batch {
            if let Err(err) = message.ack().await {
                tracing::warn!(error = %err, "acking an event failed; it will be redelivered and skipped");
            }
        }
    }
}

/// Applies decoded events in one transaction. `close_after_secs` is
/// `projector.usage_close_after_secs`: the usage hour rule depends on it.
pub async fn apply_batch(
    pool: &PgPool,
    consumer: &str,
    close_after_secs: u64,
    events: &[(u64, EventEnvelope)],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    apply_events(&mut tx, consumer, close_after_secs, events).await?;
    tx.commit().await
}

/// [`apply_batch`] inside a transaction of the caller's.
pub(crate) async fn apply_events(
    tx: &mut Transaction<'_, Postgres>,
    consumer: &str,
    close_after_secs: u64,
    events: &[(u64, EventEnvelope)],
) -> Result<(), sqlx::Error> {
    // First, before any row is written: the day partitions the batch's rows go to.
    let days: std::collections::BTreeSet<chrono::NaiveDate> = events
        .iter()
        .flat_map(|(_, e)| [retention::uuid_day(e.id), retention::uuid_day(e.body.run_id())])
        .collect();
    retention::ensure_partitions(tx, &days).await?;
    // One statement marks the whole batch processed and says which events are new
    // (a statement per event was most of the projector's database time).
    let ids: Vec<Uuid> = events.iter().map(|(_, e)| e.id).collect();
    let id_days: Vec<chrono::NaiveDate> = ids.iter().map(|id| retention::uuid_day(*id)).collect();
    let mut fresh: std::collections::HashSet<Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_events (event_id, day) SELECT * FROM UNNEST($1::uuid[], $2::date[]) \
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(&ids)
    .bind(&id_days)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    let mut max_seq = 0u64;
    let mut settled = Vec::new();
    let mut grouped = Grouped::default();
    for (seq, envelope) in events {
        max_seq = max_seq.max(*seq);
        // `remove`: an event delivered twice within one batch is applied once.
        if fresh.remove(&envelope.id) {
            grouped.add(&envelope.body);
            if matches!(envelope.body, RunEvent::Finished(_) | RunEvent::Rejected { .. }) {
                settled.push(envelope.body.run_id());
            }
        }
    }
    let counted = grouped.apply(tx, close_after_secs).await?;
    let counted_runs: std::collections::HashSet<Uuid> = counted.iter().map(|c| c.run_id).collect();
    settled.retain(|run| !counted_runs.contains(run));
    count_usage(tx, &settled, close_after_secs, counted).await?;
    checkpoint(tx, consumer, max_seq).await
}

/// Moves the consumer's checkpoint to `seq` (never back; 0 leaves it).
pub(crate) async fn checkpoint(
    tx: &mut Transaction<'_, Postgres>,
    consumer: &str,
    seq: u64,
) -> Result<(), sqlx::Error> {
    if seq > 0 {
        sqlx::query(
            "INSERT INTO projector_checkpoints (consumer, stream_seq) VALUES ($1, $2) \
             ON CONFLICT (consumer) DO UPDATE SET stream_seq = GREATEST(projector_checkpoints.stream_seq, EXCLUDED.stream_seq), updated_at = now()",
        )
        .bind(consumer)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

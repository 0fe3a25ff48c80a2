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

pub mod closing;
pub mod dead_letters;
pub mod rebuild;
pub mod retention;

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::{self, Message};
use chrono::{DateTime, NaiveDate, Utc};
use futures::{FutureExt, StreamExt};
use sqlx::{PgPool, Postgres, Transaction};
use tengine_core::{
    Config, Topology,
    connections::Connections,
    envelope::{EventEnvelope, RunEvent, RunOutcome},
    prometheus, storable, store,
};
use uuid::Uuid;

pub struct Projector {
    config: Config,
    pool: PgPool,
    nats: async_nats::Client,
    events: jetstream::stream::Stream,
    topology: Topology,
}

/// SQL rank of a status: a row only ever moves to a higher rank.
const STATUS_RANK: &str = "(CASE runs.status WHEN 'accepted' THEN 1 WHEN 'running' THEN 2 ELSE 3 END)";

impl Projector {
    pub async fn connect(config: Config) -> anyhow::Result<Arc<Self>> {
        let Connections {
            pool,
            nats,
            topology,
            events,
            ..
        } = Connections::open(&config, "tengine-projector", config.projector.database_pool_size).await?;
        Ok(Arc::new(Self {
            config,
            pool,
            nats,
            events,
            topology,
        }))
    }

    pub async fn health(&self) -> bool {
        tengine_core::connections::healthy(&self.nats, &self.pool).await
    }

    /// Events in the log not yet applied to run history (`projector_lag_events` in
    /// the ingress health; cheap enough to sample for a gauge). `None` when NATS or
    /// PostgreSQL cannot be read.
    pub async fn lag(&self) -> Option<u64> {
        tengine_core::connections::projector_lag(&self.events, &self.pool).await
    }

    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let consumer_name = self.topology.projector_consumer();
        let consumer = tengine_core::topology::settle(&consumer_name, || {
            self.events.create_consumer(self.topology.projector_consumer_config())
        })
        .await?;
        let batch_size = self.config.projector.batch_size.max(1);
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
                if let Err(err) = tengine_core::quotas::prune(&pool).await {
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
                if let Ok(dead) = store::unresolved_dead_letters(&sampled.pool).await {
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
            // Take whatever else is already buffered, without waiting.
            while batch.len() < batch_size {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
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
    grouped.apply(tx).await?;
    count_usage(tx, &settled, close_after_secs).await?;
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

/// The fresh events of a batch, grouped by kind for one statement per kind
/// (statements per event were the projector's cost). Within a kind each row is
/// written once (one statement cannot touch a row twice); the merge rules are the
/// order-independent ones of the event-by-event statements they replaced.
#[derive(Default)]
struct Grouped<'a> {
    accepted: BTreeMap<Uuid, &'a RunEvent>,
    /// (run, attempt) → the AttemptStarted event.
    started: BTreeMap<(Uuid, u32), (DateTime<Utc>, NaiveDate)>,
    /// run → (earliest start, highest attempt) for the run row.
    running: BTreeMap<Uuid, (DateTime<Utc>, u32)>,
    attempt_finished: BTreeMap<(Uuid, u32), &'a RunEvent>,
    finished: BTreeMap<Uuid, &'a RunOutcome>,
    /// Rare kinds, applied one by one.
    others: Vec<&'a RunEvent>,
}

impl<'a> Grouped<'a> {
    fn add(&mut self, event: &'a RunEvent) {
        match event {
            RunEvent::Accepted { run_id, .. } => {
                self.accepted.entry(*run_id).or_insert(event);
            }
            RunEvent::AttemptStarted {
                run_id,
                attempt,
                started_at,
                ..
            } => {
                self.started
                    .entry((*run_id, *attempt))
                    .or_insert((*started_at, retention::uuid_day(*run_id)));
                let run = self.running.entry(*run_id).or_insert((*started_at, *attempt));
                run.0 = run.0.min(*started_at);
                run.1 = run.1.max(*attempt);
            }
            RunEvent::AttemptFinished { run_id, attempt, .. } => {
                self.attempt_finished.insert((*run_id, *attempt), event);
            }
            RunEvent::Finished(outcome) => {
                self.finished.insert(outcome.run_id, outcome);
            }
            RunEvent::UpstreamProgress { .. } => {}
            RunEvent::Rejected { .. } | RunEvent::CancelRequested { .. } => self.others.push(event),
        }
    }

    async fn apply(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        let attempt_no = |a: u32| i32::try_from(a).unwrap_or(i32::MAX);
        if !self.accepted.is_empty() {
            let mut rows = AcceptedRows::default();
            for event in self.accepted.values() {
                if let RunEvent::Accepted {
                    run_id,
                    caller,
                    tool_name,
                    accepted_at,
                } = event
                {
                    rows.run.push(*run_id);
                    rows.project.push(caller.project_id);
                    rows.integration.push(caller.integration_id);
                    rows.key.push(caller.api_key_id);
                    rows.tool.push(storable::owned(tool_name));
                    rows.at.push(*accepted_at);
                    rows.member.push(caller.member.as_ref().map(|m| storable::owned(&m.id)));
                    rows.day.push(retention::uuid_day(*run_id));
                }
            }
            sqlx::query(
                "INSERT INTO runs (run_id, project_id, integration_id, api_key_id, tool_name, status, accepted_at, \
                 member_id, day) \
                 SELECT r, p, i, k, t, 'accepted', a, m, d FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], \
                 $5::text[], $6::timestamptz[], $7::text[], $8::date[]) AS x(r, p, i, k, t, a, m, d) \
                 ON CONFLICT (run_id, day) DO UPDATE SET accepted_at = LEAST(runs.accepted_at, EXCLUDED.accepted_at), \
                 updated_at = now()",
            )
            .bind(&rows.run)
            .bind(&rows.project)
            .bind(&rows.integration)
            .bind(&rows.key)
            .bind(&rows.tool)
            .bind(&rows.at)
            .bind(&rows.member)
            .bind(&rows.day)
            .execute(&mut **tx)
            .await?;
        }
        if !self.started.is_empty() {
            let (mut run, mut attempt, mut at, mut day) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((r, a), (s, d)) in &self.started {
                run.push(*r);
                attempt.push(attempt_no(*a));
                at.push(*s);
                day.push(*d);
            }
            sqlx::query(
                "INSERT INTO run_attempts (run_id, attempt, started_at, day) \
                 SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[], $4::date[]) ON CONFLICT DO NOTHING",
            )
            .bind(&run)
            .bind(&attempt)
            .bind(&at)
            .bind(&day)
            .execute(&mut **tx)
            .await?;
            let (mut run, mut at, mut attempt, mut day) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (r, (s, a)) in &self.running {
                run.push(*r);
                at.push(*s);
                attempt.push(attempt_no(*a));
                day.push(retention::uuid_day(*r));
            }
            sqlx::query(&format!(
                "UPDATE runs SET status = CASE WHEN {STATUS_RANK} < 2 THEN 'running' ELSE runs.status END, \
                 started_at = COALESCE(runs.started_at, x.s), attempts = GREATEST(runs.attempts, x.a), \
                 updated_at = now() \
                 FROM UNNEST($1::uuid[], $2::timestamptz[], $3::int4[], $4::date[]) AS x(r, s, a, d) \
                 WHERE runs.run_id = x.r AND runs.day = x.d"
            ))
            .bind(&run)
            .bind(&at)
            .bind(&attempt)
            .bind(&day)
            .execute(&mut **tx)
            .await?;
        }
        if !self.attempt_finished.is_empty() {
            let mut rows = AttemptRows::default();
            for event in self.attempt_finished.values() {
                if let RunEvent::AttemptFinished {
                    run_id,
                    attempt,
                    started_at,
                    finished_at,
                    http_status,
                    error_class,
                    error,
                    bytes_out,
                    bytes_in,
                    ..
                } = event
                {
                    rows.run.push(*run_id);
                    rows.attempt.push(attempt_no(*attempt));
                    rows.started.push(*started_at);
                    rows.finished.push(*finished_at);
                    rows.http_status.push(http_status.map(i32::from));
                    rows.error_class.push(error_class.map(|c| c.as_str().to_string()));
                    rows.error.push(error.as_deref().map(storable::owned));
                    rows.bytes_out.push(i64::try_from(*bytes_out).unwrap_or(i64::MAX));
                    rows.bytes_in.push(i64::try_from(*bytes_in).unwrap_or(i64::MAX));
                    rows.day.push(retention::uuid_day(*run_id));
                }
            }
            sqlx::query(
                "INSERT INTO run_attempts (run_id, attempt, started_at, finished_at, http_status, error_class, error, \
                 bytes_out, bytes_in, day) \
                 SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[], $4::timestamptz[], $5::int4[], \
                 $6::text[], $7::text[], $8::int8[], $9::int8[], $10::date[]) \
                 ON CONFLICT (run_id, day, attempt) DO UPDATE SET finished_at = EXCLUDED.finished_at, \
                 http_status = EXCLUDED.http_status, error_class = EXCLUDED.error_class, error = EXCLUDED.error, \
                 bytes_out = EXCLUDED.bytes_out, bytes_in = EXCLUDED.bytes_in",
            )
            .bind(&rows.run)
            .bind(&rows.attempt)
            .bind(&rows.started)
            .bind(&rows.finished)
            .bind(&rows.http_status)
            .bind(&rows.error_class)
            .bind(&rows.error)
            .bind(&rows.bytes_out)
            .bind(&rows.bytes_in)
            .bind(&rows.day)
            .execute(&mut **tx)
            .await?;
        }
        for event in self.others {
            apply_event(tx, event).await?;
        }
        if !self.finished.is_empty() {
            let mut rows = FinishedRows::default();
            for outcome in self.finished.values() {
                rows.run.push(outcome.run_id);
                rows.project.push(outcome.caller.project_id);
                rows.integration.push(outcome.caller.integration_id);
                rows.key.push(outcome.caller.api_key_id);
                rows.tool.push(storable::owned(&outcome.tool_name));
                rows.status.push(outcome.status.as_str().to_string());
                rows.error_class
                    .push(outcome.error_class.map(|c| c.as_str().to_string()));
                rows.error.push(outcome.error.as_deref().map(storable::owned));
                rows.http_status
                    .push(outcome.response.as_ref().map(|r| i32::from(r.http_status)));
                rows.latency.push(i64::try_from(outcome.latency_ms).unwrap_or(i64::MAX));
                rows.attempts.push(attempt_no(outcome.attempts));
                rows.accepted.push(outcome.accepted_at);
                rows.finished.push(outcome.finished_at);
                rows.member
                    .push(outcome.caller.member.as_ref().map(|m| storable::owned(&m.id)));
                let bodies = outcome.bodies.as_ref();
                rows.request_body
                    .push(bodies.and_then(|b| b.request.as_deref()).map(storable::owned));
                rows.response_body
                    .push(bodies.and_then(|b| b.response.as_deref()).map(storable::owned));
                rows.truncated.push(outcome.bodies.as_ref().map(|b| b.truncated));
                rows.response_size.push(
                    outcome
                        .response
                        .as_ref()
                        .and_then(|r| r.size)
                        .map(|size| i64::try_from(size).unwrap_or(i64::MAX)),
                );
                rows.response_truncated
                    .push(outcome.response.as_ref().map(|r| r.truncated));
                rows.day.push(retention::uuid_day(outcome.run_id));
            }
            sqlx::query(
                "INSERT INTO runs (run_id, project_id, integration_id, api_key_id, tool_name, status, error_class, error, \
                 http_status, latency_ms, attempts, accepted_at, finished_at, member_id, request_body, response_body, \
                 bodies_truncated, day, response_size, response_truncated) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::int4[], $10::int8[], $11::int4[], $12::timestamptz[], $13::timestamptz[], \
                 $14::text[], $15::text[], $16::text[], $17::bool[], $18::date[], $19::int8[], $20::bool[]) \
                 ON CONFLICT (run_id, day) DO UPDATE SET status = EXCLUDED.status, error_class = EXCLUDED.error_class, \
                 request_body = EXCLUDED.request_body, response_body = EXCLUDED.response_body, \
                 bodies_truncated = EXCLUDED.bodies_truncated, response_size = EXCLUDED.response_size, \
                 response_truncated = EXCLUDED.response_truncated, \
                 error = EXCLUDED.error, http_status = EXCLUDED.http_status, latency_ms = EXCLUDED.latency_ms, \
                 attempts = GREATEST(runs.attempts, EXCLUDED.attempts), finished_at = EXCLUDED.finished_at, \
                 updated_at = now()",
            )
            .bind(&rows.run)
            .bind(&rows.project)
            .bind(&rows.integration)
            .bind(&rows.key)
            .bind(&rows.tool)
            .bind(&rows.status)
            .bind(&rows.error_class)
            .bind(&rows.error)
            .bind(&rows.http_status)
            .bind(&rows.latency)
            .bind(&rows.attempts)
            .bind(&rows.accepted)
            .bind(&rows.finished)
            .bind(&rows.member)
            .bind(&rows.request_body)
            .bind(&rows.response_body)
            .bind(&rows.truncated)
            .bind(&rows.day)
            .bind(&rows.response_size)
            .bind(&rows.response_truncated)
            .execute(&mut **tx)
            .await?;
            keep_results(tx, self.finished.values().copied()).await?;
        }
        Ok(())
    }
}

/// Keeps the outcomes of runs called with a client idempotency key (until their
/// `keep_result_until`), so a retry still gets them after the log rolled past.
async fn keep_results<'a>(
    tx: &mut Transaction<'_, Postgres>,
    outcomes: impl Iterator<Item = &'a RunOutcome>,
) -> Result<(), sqlx::Error> {
    let (mut run, mut project, mut until, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for outcome in outcomes {
        let Some(keep_until) = outcome.keep_result_until else {
            continue;
        };
        match tengine_core::envelope::Envelope::new(outcome.run_id, outcome.clone()).encode() {
            Ok(encoded) => {
                run.push(outcome.run_id);
                project.push(outcome.caller.project_id);
                until.push(keep_until);
                bytes.push(encoded);
            }
            Err(err) => tracing::error!(run_id = %outcome.run_id, error = %err, "encoding a kept outcome"),
        }
    }
    if run.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO run_results (run_id, project_id, expires_at, outcome) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bytea[]) \
         ON CONFLICT (run_id) DO UPDATE SET outcome = EXCLUDED.outcome, expires_at = EXCLUDED.expires_at",
    )
    .bind(&run)
    .bind(&project)
    .bind(&until)
    .bind(&bytes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Column arrays for `UNNEST`.
#[derive(Default)]
struct AcceptedRows {
    run: Vec<Uuid>,
    project: Vec<Uuid>,
    integration: Vec<Uuid>,
    key: Vec<Uuid>,
    tool: Vec<String>,
    at: Vec<DateTime<Utc>>,
    member: Vec<Option<String>>,
    day: Vec<NaiveDate>,
}

#[derive(Default)]
struct AttemptRows {
    run: Vec<Uuid>,
    attempt: Vec<i32>,
    started: Vec<DateTime<Utc>>,
    finished: Vec<DateTime<Utc>>,
    http_status: Vec<Option<i32>>,
    error_class: Vec<Option<String>>,
    error: Vec<Option<String>>,
    bytes_out: Vec<i64>,
    bytes_in: Vec<i64>,
    day: Vec<NaiveDate>,
}

#[derive(Default)]
struct FinishedRows {
    run: Vec<Uuid>,
    project: Vec<Uuid>,
    integration: Vec<Uuid>,
    key: Vec<Uuid>,
    tool: Vec<String>,
    status: Vec<String>,
    error_class: Vec<Option<String>>,
    error: Vec<Option<String>>,
    http_status: Vec<Option<i32>>,
    latency: Vec<i64>,
    attempts: Vec<i32>,
    accepted: Vec<DateTime<Utc>>,
    finished: Vec<DateTime<Utc>>,
    member: Vec<Option<String>>,
    request_body: Vec<Option<String>>,
    response_body: Vec<Option<String>>,
    truncated: Vec<Option<bool>>,
    day: Vec<NaiveDate>,
    response_size: Vec<Option<i64>>,
    response_truncated: Vec<Option<bool>>,
}

/// Upper bounds (ms) of the usage latency buckets; the last bucket is "more".
pub const LATENCY_BUCKETS_MS: [i64; 9] = [10, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

type UsageKey = (Uuid, Uuid, String, String, chrono::DateTime<chrono::Utc>);

#[derive(Default)]
struct UsageDelta {
    calls: i64,
    successes: i64,
    failures: i64,
    latency_ms_sum: i64,
    buckets: [i64; 10],
    bytes_in: i64,
    bytes_out: i64,
}

/// Counts each run once, when it first becomes terminal: the flag and the usage
/// change in the same transaction. The batch is aggregated per hour and key first,
/// so each usage row is written once per batch.
///
/// A run counts in the hour it was accepted, unless it finished more than
/// `close_after_secs` after that hour ended: that hour may already be closed and
/// exported, so the run counts in the hour it finished instead. The rule depends
/// only on the run's own times, so a rebuild yields the same hours.
async fn count_usage(
    tx: &mut Transaction<'_, Postgres>,
    runs: &[Uuid],
    close_after_secs: u64,
) -> Result<(), sqlx::Error> {
    if runs.is_empty() {
        return Ok(());
    }
    type Counted = (
        Uuid,
        Uuid,
        String,
        String,
        chrono::DateTime<chrono::Utc>,
        String,
        i64,
        i64,
        i64,
    );
    let counted: Vec<Counted> = sqlx::query_as(
        "UPDATE runs SET usage_counted = true WHERE run_id = ANY($1) AND day = ANY($3) AND NOT usage_counted \
         AND status IN ('succeeded', 'failed', 'rejected', 'cancelled', 'revoked') \
         RETURNING project_id, integration_id, COALESCE(member_id, ''), tool_name, \
         CASE WHEN COALESCE(finished_at, accepted_at) >= date_trunc('hour', accepted_at) + interval '1 hour' \
              + make_interval(secs => $2) THEN date_trunc('hour', finished_at) \
              ELSE date_trunc('hour', accepted_at) END, \
         status, COALESCE(latency_ms, 0), \
         (SELECT COALESCE(sum(bytes_in), 0)::bigint FROM run_attempts a WHERE a.run_id = runs.run_id AND a.day = runs.day), \
         (SELECT COALESCE(sum(bytes_out), 0)::bigint FROM run_attempts a WHERE a.run_id = runs.run_id AND a.day = runs.day)",
    )
    .bind(runs)
    .bind(close_after_secs as f64)
    // The runs' days, so only their partitions are searched.
    .bind(runs.iter().map(|r| retention::uuid_day(*r)).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    let mut deltas: std::collections::BTreeMap<UsageKey, UsageDelta> = std::collections::BTreeMap::new();
    for (project, integration, member, tool, hour, status, latency, bytes_in, bytes_out) in counted {
        let d = deltas.entry((project, integration, member, tool, hour)).or_default();
        d.calls += 1;
        if status == "succeeded" {
            d.successes += 1;
        } else {
            d.failures += 1;
        }
        d.latency_ms_sum += latency;
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| latency <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        d.buckets[bucket] += 1;
        d.bytes_in += bytes_in;
        d.bytes_out += bytes_out;
    }
    for ((project, integration, member, tool, hour), d) in deltas {
        sqlx::query(
            "INSERT INTO usage_hourly (project_id, integration_id, member_id, tool_name, hour, calls, successes, \
             failures, latency_ms_sum, latency_buckets, bytes_in, bytes_out) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (project_id, integration_id, member_id, tool_name, hour) DO UPDATE SET \
             calls = usage_hourly.calls + EXCLUDED.calls, successes = usage_hourly.successes + EXCLUDED.successes, \
             failures = usage_hourly.failures + EXCLUDED.failures, \
             latency_ms_sum = usage_hourly.latency_ms_sum + EXCLUDED.latency_ms_sum, \
             latency_buckets = (SELECT array_agg(a + b ORDER BY i) FROM unnest(usage_hourly.latency_buckets, \
                 EXCLUDED.latency_buckets) WITH ORDINALITY AS t(a, b, i)), \
             bytes_in = usage_hourly.bytes_in + EXCLUDED.bytes_in, bytes_out = usage_hourly.bytes_out + EXCLUDED.bytes_out",
        )
        .bind(project)
        .bind(integration)
        .bind(member)
        .bind(tool)
        .bind(hour)
        .bind(d.calls)
        .bind(d.successes)
        .bind(d.failures)
        .bind(d.latency_ms_sum)
        .bind(d.buckets.to_vec())
        .bind(d.bytes_in)
        .bind(d.bytes_out)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn apply_event(tx: &mut Transaction<'_, Postgres>, event: &RunEvent) -> Result<(), sqlx::Error> {
    // The partition key of the run's rows; the last parameter of each statement.
    let day = retention::uuid_day(event.run_id());
    match event {
        RunEvent::Rejected {
            run_id,
            caller,
            tool_name,
            accepted_at,
            error_class,
            error,
        } => {
            sqlx::query(&format!(
                "INSERT INTO runs (run_id, project_id, integration_id, api_key_id, tool_name, status, error_class, error, \
                 latency_ms, accepted_at, finished_at, member_id, day) \
                 VALUES ($1, $2, $3, $4, $5, 'rejected', $6, $7, 0, $8, $8, $9, $10) \
                 ON CONFLICT (run_id, day) DO UPDATE SET status = 'rejected', error_class = EXCLUDED.error_class, \
                 error = EXCLUDED.error, finished_at = EXCLUDED.finished_at, updated_at = now() \
                 WHERE {STATUS_RANK} < 3"
            ))
            .bind(run_id)
            .bind(caller.project_id)
            .bind(caller.integration_id)
            .bind(caller.api_key_id)
            .bind(storable::text(tool_name))
            .bind(error_class.as_str())
            .bind(storable::text(error))
            .bind(accepted_at)
            .bind(caller.member.as_ref().map(|m| storable::text(&m.id)))
            .bind(day)
            .execute(&mut **tx)
            .await?;
        }
        RunEvent::CancelRequested { run_id, .. } => {
            // Only a run still waiting becomes `cancelled`; the worker's Finished
            // (cancelled, or the real outcome if the API was called) settles it.
            sqlx::query(&format!(
                "UPDATE runs SET status = 'cancelled', updated_at = now() WHERE run_id = $1 AND day = $2 AND {STATUS_RANK} < 3"
            ))
            .bind(run_id)
            .bind(day)
            .execute(&mut **tx)
            .await?;
        }
        // The frequent kinds go through `Grouped` (one statement per kind and batch).
        RunEvent::Accepted { .. }
        | RunEvent::AttemptStarted { .. }
        | RunEvent::AttemptFinished { .. }
        | RunEvent::Finished(_)
        | RunEvent::UpstreamProgress { .. } => {}
    }
    Ok(())
}

//! The worker: pulls execution commands, performs the signed HTTP call, records the
//! outcome in the event log, replies to the waiting ingress, and only then acks.
//!
//! Redelivery is the retry mechanism across crashes: a command redelivered after
//! its `Finished` event was stored is answered from the log without calling the
//! API again; one redelivered mid-call is called again with the same request id
//! (`X-Tengine-Request-Id`, `webhook-id`, `Idempotency-Key`) so the API can dedupe.
//!
//! Nothing an API, a tool's configuration or a delivery count holds may make the
//! worker panic (a panic would leave its command for redelivery, and the API be
//! called again): arithmetic is checked or saturating, which the lint below
//! enforces, and a panic that still happens ends its run as `failed`.
#![deny(clippy::arithmetic_side_effects)]

pub mod cancellations;
mod dispatch;
pub mod outbound;

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, Message};
use backon::{ExponentialBuilder, Retryable};
use futures::{FutureExt, StreamExt};
use tengine_core::{
    Config, Topology, bus,
    bus::{BusError, EncodedEvent},
    connections::Connections,
    envelope::{CommandEnvelope, ErrorClass, ExecuteCommand, RunEvent, RunOutcome, RunStatus},
    payload, prometheus,
    secrets::SecretBox,
    telemetry::{self, TraceContext},
};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::dispatch::Refusal;

pub struct Worker {
    config: Config,
    nats: async_nats::Client,
    js: jetstream::Context,
    events: jetstream::stream::Stream,
    commands: jetstream::stream::Stream,
    topology: Topology,
    secrets: SecretBox,
    /// One pooled client per address policy (most projects share the default one).
    clients: moka::sync::Cache<tengine_core::addresses::Policy, reqwest::Client>,
    /// Cancelled runs, from a watched copy of the bucket (see `cancellations`).
    cancellations: cancellations::Cancellations,
    /// Runs this worker is executing, each with the token that aborts it.
    aborts: dispatch::Aborts,
    /// Tools, credentials and project settings in memory, current by
    /// `tengine_control::freshness` (no query per call, revocation still immediate).
    tools: tengine_control::tools::Cached,
    principals: tengine_control::principals::Principals,
    runtimes: tengine_control::projects::Runtimes,
    /// Ends the freshness listener with the worker.
    background: tokio_util::sync::CancellationToken,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.background.cancel();
    }
}

impl Worker {
    pub async fn connect(config: Config) -> anyhow::Result<Arc<Self>> {
        let secrets = config.secret_box()?;
        let Connections {
            pool,
            nats,
            js,
            topology,
            commands,
            events,
        } = Connections::open(&config, "tengine-worker", config.worker.database_pool_size).await?;
        // An outcome that cannot fit a message could never be stored (and its API
        // would be called again on every redelivery): refuse such a configuration.
        payload::check_response_limit(config.worker.max_response_bytes, payload::server_max_payload(&nats))
            .map_err(anyhow::Error::msg)?;
        let cancelled = topology.ensure_cancelled_bucket(&js, &config.streams).await?;
        let background = tokio_util::sync::CancellationToken::new();
        let cancellations = cancellations::Cancellations::start(cancelled, background.clone());
        let freshness = tengine_control::freshness::Freshness::start(pool.clone(), background.clone())
            .await
            .map_err(|e| anyhow::anyhow!("listening for control changes in PostgreSQL: {e}"))?;
        Ok(Arc::new(Self {
            tools: tengine_control::tools::Cached::new(pool.clone(), freshness.clone()),
            principals: tengine_control::principals::Principals::new(pool.clone(), freshness.clone()),
            runtimes: tengine_control::projects::Runtimes::new(pool, freshness),
            background,
            config,
            nats,
            js,
            events,
            commands,
            topology,
            secrets,
            clients: moka::sync::Cache::new(1_000),
            cancellations,
            aborts: dispatch::Aborts::default(),
        }))
    }

    /// Consumes commands until `shutdown` resolves, then lets in-flight calls finish.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let wc = &self.config.worker;
        let consumer_config = self
            .topology
            .worker_consumer_config(Duration::from_secs(wc.ack_wait_secs), wc.max_deliver);
        let consumer_name = self.topology.worker_consumer();
        let consumer = tengine_core::topology::settle(&consumer_name, || {
            self.commands.create_consumer(consumer_config.clone())
        })
        .await?;
        // The consumer may predate the configuration: trust what the server enforces.
        let max_deliver = consumer.cached_info().config.max_deliver;
        // Queue depth for /metrics, sampled from the consumer's state on the server.
        let sampler = {
            let mut consumer = consumer.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    if let Ok(info) = consumer.info().await {
                        metrics::gauge!(prometheus::QUEUE_PENDING).set(info.num_pending as f64);
                        metrics::gauge!(prometheus::QUEUE_ACK_PENDING).set(info.num_ack_pending as f64);
                    }
                }
            })
        };
        let _sampler = tengine_core::tasks::AbortOnDrop(sampler);
        // Aborts (`tasks/cancel`) reach every worker; the one running the run acts.
        // Both aborts and cancellations are noted in the copy of cancelled runs.
        let mut aborts = self
            .nats
            .subscribe(self.topology.abort_subject())
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to aborts: {e}"))?;
        let mut cancels = self
            .nats
            .subscribe(self.topology.marked_subject())
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to cancellations: {e}"))?;
        let (listening, noting) = (self.aborts.clone(), self.cancellations.clone());
        let run_id_of = |message: &async_nats::Message| {
            std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|id| id.parse::<uuid::Uuid>().ok())
        };
        let _aborts = tengine_core::tasks::AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(message) = aborts.next() => if let Some(run_id) = run_id_of(&message) {
                        noting.note(run_id);
                        listening.abort(run_id);
                    },
                    Some(message) = cancels.next() => if let Some(run_id) = run_id_of(&message) {
                        noting.note(run_id);
                    },
                    else => break,
                }
            }
        }));
        let permits = Arc::new(Semaphore::new(wc.concurrency));
        // Small batches: prefetched messages burn their ack_wait while they wait.
        let batch = wc.concurrency.min(64);
        let mut messages = tengine_core::topology::pull_messages(&consumer, batch).await?;
        tracing::info!(consumer = %self.topology.worker_consumer(), concurrency = wc.concurrency, "worker consuming");
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => permit?,
            };
            let next = tokio::select! {
                _ = &mut shutdown => break,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let worker = self.clone();
                    tokio::spawn(async move {
                        worker.handle(message, max_deliver).await;
                        drop(permit);
                    });
                }
                Some(Err(err)) => {
                    // A missed heartbeat or a failed pull request: the request may be gone
                    // on the server (a node lost, a consumer leader change), and the old
                    // stream would not ask again before its expiry. Pull afresh; commands
                    // the old request had already received come back after ack_wait.
                    drop(permit);
                    tracing::warn!(error = %err, "pulling commands failed; opening a new pull");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    match tengine_core::topology::pull_messages(&consumer, batch).await {
                        Ok(fresh) => messages = fresh,
                        Err(err) => tracing::warn!(error = %err, "opening a new pull failed; retrying"),
                    }
                }
                None => anyhow::bail!("the command stream ended"),
            }
        }
        tracing::info!("worker draining in-flight calls");
        let all = u32::try_from(wc.concurrency).unwrap_or(u32::MAX);
        let drain = Duration::from_secs(wc.ack_wait_secs);
        let _ = tokio::time::timeout(drain, permits.acquire_many(all)).await;
        Ok(())
    }

    /// One command, in a span that continues the caller's trace (the command's headers).
    async fn handle(&self, message: Message, max_deliver: i64) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        if delivered > 1 {
            metrics::counter!(prometheus::REDELIVERIES).increment(1);
        }
        let span = tracing::info_span!(
            "run",
            run_id = tracing::field::Empty,
            tool = tracing::field::Empty,
            delivered
        );
        // Read once: the span continues it, and without a tracing subscriber the
        // upstream request is still sent it (see `telemetry::inject_http`).
        let remote = telemetry::extract_nats(message.headers.as_ref());
        telemetry::adopt(&span, remote.clone());
        metrics::gauge!(prometheus::RUNS_IN_FLIGHT).increment(1.0);
        self.handle_in_span(message, max_deliver, delivered, &remote)
            .instrument(span)
            .await;
        metrics::gauge!(prometheus::RUNS_IN_FLIGHT).decrement(1.0);
    }

    async fn handle_in_span(&self, message: Message, max_deliver: i64, delivered: i64, remote: &TraceContext) {
        let command = match CommandEnvelope::decode(&message.payload) {
            Ok(envelope) => envelope.body,
            Err(err) => {
                // Nothing can ever make this message valid: take it out of the queue.
                tracing::error!(error = %err, subject = %message.subject, "terminating an undecodable command");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let span = tracing::Span::current();
        span.record("run_id", tracing::field::display(command.run_id));
        span.record("tool", command.tool_name.as_str());

        // A panic must not leave the command for redelivery: the API would be
        // called again, and the same input would likely panic again.
        let handled = AssertUnwindSafe(self.run_command(&command, &message, max_deliver, delivered, remote))
            .catch_unwind()
            .await;
        let (outcome, pending) = match handled {
            Ok(Some(finished)) => finished,
            Ok(None) => return,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, "a fault while running the command; recording the run as failed");
                let outcome = self.refused(
                    &command,
                    0,
                    Refusal::failed(
                        ErrorClass::Internal,
                        "a fault in the worker ended the run; it is not retried (see the worker's log)",
                    ),
                );
                (outcome, Vec::new())
            }
        };
        self.finish(&command, &message, outcome, pending).await;
    }

    /// The run's outcome and the attempt events still being stored; `None` when the
    /// command was settled already (a redelivery answered from the event log).
    async fn run_command(
        &self,
        command: &ExecuteCommand,
        message: &Message,
        max_deliver: i64,
        delivered: i64,
        remote: &TraceContext,
    ) -> Option<(RunOutcome, Vec<tokio::task::JoinHandle<()>>)> {
        if delivered > 1
            && let Some(outcome) =
                bus::recorded_outcome(&self.events, &self.topology, command.caller.project_id, command.run_id).await
        {
            tracing::info!("redelivered run already finished; answering from the event log");
            self.reply(command, &outcome).await;
            let _ = message.double_ack().await;
            return None;
        }

        let attempt = u32::try_from(delivered).unwrap_or(u32::MAX);
        let mut pending = Vec::new();
        let outcome = if max_deliver > 0 && delivered >= max_deliver {
            // Last delivery: record a failure instead of risking another crash loop.
            self.refused(
                command,
                attempt,
                Refusal::failed(
                    ErrorClass::DeliveryExhausted,
                    format!("the run was delivered {delivered} times without finishing; giving up"),
                ),
            )
        } else {
            self.execute(command, attempt, message, remote, &mut pending).await
        };
        Some((outcome, pending))
    }

    /// Waits for the attempt events, stores the outcome, replies, then acks.
    async fn finish(
        &self,
        command: &ExecuteCommand,
        message: &Message,
        outcome: RunOutcome,
        pending: Vec<tokio::task::JoinHandle<()>>,
    ) {
        // A run's attempt events are in the log before its outcome: the projector
        // counts a run's usage (the bytes of its attempts) when it applies the
        // outcome, so an attempt logged after it would be missing from usage.
        let settling = std::time::Instant::now();
        futures::future::join_all(pending).await;
        prometheus::stage(prometheus::WORKER_STAGE_SECONDS, "attempt_events", settling);
        let storing = std::time::Instant::now();
        // Storing may take a while (retries): the command stays ours meanwhile.
        let Some((outcome, stored)) = self.keeping_claim(message, self.store_outcome(outcome)).await else {
            // Not acked: the command is redelivered and the run completes later.
            tracing::error!("could not store the outcome; leaving the command for redelivery");
            return;
        };
        self.send_to_ingress(command, stored.bytes).await;
        prometheus::stage(prometheus::WORKER_STAGE_SECONDS, "store_outcome", storing);
        let acking = std::time::Instant::now();
        // Not confirmed by the server (no `double_ack`): a lost ack only means a
        // redelivery, which is answered from the log without calling the API.
        let acked = message.ack().await;
        prometheus::stage(prometheus::WORKER_STAGE_SECONDS, "ack", acking);
        if let Err(err) = acked {
            tracing::warn!(error = %err, "ack not sent; a redelivery will be answered from the log");
        }
        tracing::info!(
            status = outcome.status.as_str(),
            latency_ms = outcome.latency_ms,
            "run finished"
        );
    }

    /// Stores the `Finished` event and returns the outcome stored, with the event as
    /// stored (the reply). One that can never be stored (too large, not encodable)
    /// is replaced by a small failed outcome saying so: leaving its command for
    /// redelivery would call the API again, to the same end. `None` when NATS kept
    /// failing.
    async fn store_outcome(&self, outcome: RunOutcome) -> Option<(RunOutcome, EncodedEvent)> {
        let (err, size) = match self.publish_outcome(&outcome).await {
            Ok(stored) => return Some((outcome, stored)),
            Err((err, _)) if err.is_transient() => return None,
            Err(failed) => failed,
        };
        tracing::error!(error = %err, size, "the outcome can never be stored; storing a failed outcome instead");
        let small = RunOutcome {
            status: RunStatus::Failed,
            error_class: Some(ErrorClass::Internal),
            error: Some(payload::bounded_error(format!(
                "the run's outcome ({} after {} attempt(s)) could not be recorded: its event takes {size} bytes \
                 ({err})",
                outcome.status.as_str(),
                outcome.attempts
            ))),
            response: None,
            bodies: None,
            ..outcome
        };
        match self.publish_outcome(&small).await {
            Ok(stored) => Some((small, stored)),
            Err((err, _)) => {
                tracing::error!(error = %err, "storing the failed outcome failed too");
                None
            }
        }
    }

    /// Publishes a `Finished` event, encoded once, retrying what may succeed on a
    /// second try. On failure, also the event's size (0 if it could not be encoded).
    async fn publish_outcome(&self, outcome: &RunOutcome) -> Result<EncodedEvent, (BusError, usize)> {
        let project_id = outcome.caller.project_id;
        let event = EncodedEvent::new(&self.topology, project_id, RunEvent::Finished(outcome.clone()))
            .map_err(|err| (err, 0))?;
        (|| event.publish(&self.js))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(5))
                    .with_max_times(20),
            )
            .when(BusError::is_transient)
            .notify(|err, wait| tracing::warn!(error = %err, ?wait, "storing the outcome failed; retrying"))
            .await
            .map_err(|err| (err, event.bytes.len()))?;
        Ok(event)
    }

    async fn reply(&self, command: &ExecuteCommand, outcome: &RunOutcome) {
        self.notify(command, RunEvent::Finished(outcome.clone())).await;
    }

    /// Sends an event to the ingress following the call (progress and outcome);
    /// best-effort: the event log holds the truth.
    async fn notify(&self, command: &ExecuteCommand, event: RunEvent) {
        match tengine_core::envelope::Envelope::new(uuid::Uuid::now_v7(), event).encode() {
            Ok(bytes) => self.send_to_ingress(command, bytes.into()).await,
            Err(err) => tracing::error!(error = %err, "encoding a reply"),
        }
    }

    /// An attempt's start or end, or the API's progress, for an ingress that shows
    /// them (see [`ExecuteCommand::progress`]).
    async fn notify_progress(&self, command: &ExecuteCommand, event: RunEvent) {
        if command.progress {
            self.notify(command, event).await;
        }
    }

    async fn send_to_ingress(&self, command: &ExecuteCommand, envelope: bytes::Bytes) {
        let Some(reply_to) = &command.reply_to else { return };
        if let Err(err) = self.nats.publish(reply_to.clone(), envelope).await {
            tracing::warn!(error = %err, "notifying the ingress failed; it will read the event log");
        }
    }

    async fn is_cancelled(&self, command: &ExecuteCommand) -> bool {
        self.cancellations
            .is_cancelled(command.run_id, command.accepted_at)
            .await
    }

    /// Stores an attempt event in the background; the handle is awaited before the ack.
    fn log_attempt(&self, project_id: uuid::Uuid, event: RunEvent) -> tokio::task::JoinHandle<()> {
        self.log_attempt_after(
            project_id,
            event,
            Duration::ZERO,
            tokio_util::sync::CancellationToken::new(),
        )
    }

    /// Stores an attempt event after `after`, unless `cancelled` first; awaited before the ack.
    fn log_attempt_after(
        &self,
        project_id: uuid::Uuid,
        event: RunEvent,
        after: Duration,
        cancelled: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (js, topology) = (self.js.clone(), self.topology.clone());
        tokio::spawn(
            async move {
                if !after.is_zero() {
                    tokio::select! {
                        () = cancelled.cancelled() => return,
                        () = tokio::time::sleep(after) => {}
                    }
                }
                if let Err(err) = bus::publish_event(&js, &topology, project_id, event).await {
                    tracing::warn!(error = %err, "could not log an attempt event");
                }
            }
            .in_current_span(),
        )
    }

    /// Runs `work` while sending progress acks, so the command stays ours (no
    /// redelivery, no second call) however long the API or a backoff takes.
    async fn keeping_claim<T>(&self, message: &Message, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let every = Duration::from_secs(self.config.worker.ack_wait_secs.checked_div(3).unwrap_or(0).max(1));
        // Not `interval()` + a first tick: that tick waits for the timer wheel's next
        // millisecond, a delay on every call's critical path.
        let now = tokio::time::Instant::now();
        let mut progress = tokio::time::interval_at(now.checked_add(every).unwrap_or(now), every);
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = progress.tick() => {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        }
    }
}

//! The JetStream topology: every stream, consumer and subject name is defined here,
//! once. `deploy/README.md` and `schemas/README.md` describe the same layout.
//!
//! | thing | name | notes |
//! |---|---|---|
//! | commands stream | `{PREFIX}_COMMANDS` | WorkQueue; subjects `{prefix}.cmd.{project_id}.{run_id}` |
//! | events stream | `{PREFIX}_EVENTS` | Limits (the event log); subjects `{prefix}.ev.{project_id}.{run_id}.{kind}` |
//! | worker consumer | `{prefix}-worker` | durable pull on commands, explicit ack |
//! | projector consumer | `{prefix}-projector` | durable pull on events, explicit ack |
//! | run replies | `{prefix}.reply.{ingress_instance}.{run_id}` | core NATS, worker → waiting call (progress + outcome) |
//! | tool changes | `{prefix}.control.tools.{project_id}` | core NATS, admin API → open GET streams |
//! | cancellations | `{prefix}.control.cancel` | core NATS, any ingress → the one waiting on the call |
//! | aborts | `{prefix}.control.abort` | core NATS, `tasks/cancel` → every worker (cuts a request in flight) |
//! | cancelled marks | `{prefix}.control.marked` | core NATS, ingress → every worker's copy of cancelled runs |
//! | session state | KV `{PREFIX}_SESSIONS` | ended sessions and log levels (by session-id hash), watched by every ingress |
//! | cancelled runs | KV `{PREFIX}_CANCELLED` | run ids a worker must not execute; `marker.{id}`: a busy worker's freshness marker |
//! | idempotency keys | KV `{PREFIX}_IDEMPOTENCY` | client retry key → run id and argument fingerprint |

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{self, AckPolicy, DeliverPolicy},
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};
use uuid::Uuid;

use crate::config::{Config, StreamsConfig};

/// Header carrying a W3C-style content description of a message's envelope.
pub const HEADER_CONTENT_TYPE: &str = "Content-Type";
/// MessagePack content type for every message on the streams.
pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";

#[derive(Clone, Debug)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn from_config(config: &Config) -> Self {
        Self::new(config.nats_prefix.clone())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn commands_stream(&self) -> String {
        format!("{}_COMMANDS", self.prefix.to_uppercase())
    }

    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.prefix.to_uppercase())
    }

    pub fn worker_consumer(&self) -> String {
        format!("{}-worker", self.prefix)
    }

    pub fn projector_consumer(&self) -> String {
        format!("{}-projector", self.prefix)
    }

    /// One subject per run, so "is this run still queued?" is a direct lookup.
    pub fn command_subject(&self, project_id: Uuid, run_id: Uuid) -> String {
        format!("{}.cmd.{project_id}.{run_id}", self.prefix)
    }

    /// `{prefix}.ev.{project_id}.{run_id}.{kind}`: the outcome has a subject of its
    /// own, so "has this run finished?" is one direct lookup whatever came after it.
    pub fn event_subject(&self, project_id: Uuid, run_id: Uuid, kind: &str) -> String {
        format!("{}.ev.{project_id}.{run_id}.{kind}", self.prefix)
    }

    /// The project and run an event subject names (the inverse of
    /// [`Self::event_subject`]), for a message that cannot be decoded.
    pub fn event_subject_ids(subject: &str) -> Option<(Uuid, Uuid)> {
        // The prefix has no dots (`nats_prefix` is `[A-Za-z0-9_-]`).
        let mut tokens = subject.split('.').skip(1);
        if tokens.next() != Some("ev") {
            return None;
        }
        let project = Uuid::parse_str(tokens.next()?).ok()?;
        let run = Uuid::parse_str(tokens.next()?).ok()?;
        Some((project, run))
    }

    /// Every event subject: the event log's subjects.
    pub fn events_wildcard(&self) -> String {
        format!("{}.ev.>", self.prefix)
    }

    pub fn outcome_subject(&self, project_id: Uuid, run_id: Uuid) -> String {
        self.event_subject(project_id, run_id, crate::envelope::RunEvent::FINISHED_KIND)
    }

    pub fn reply_subject(&self, instance: &str, run_id: Uuid) -> String {
        format!("{}.reply.{instance}.{run_id}", self.prefix)
    }

    pub fn reply_wildcard(&self, instance: &str) -> String {
        format!("{}.reply.{instance}.*", self.prefix)
    }

    pub fn tools_changed_subject(&self, project_id: Uuid) -> String {
        format!("{}.control.tools.{project_id}", self.prefix)
    }

    pub fn tools_changed_wildcard(&self) -> String {
        format!("{}.control.tools.*", self.prefix)
    }

    pub fn cancel_subject(&self) -> String {
        format!("{}.control.cancel", self.prefix)
    }

    /// Core NATS: a client's answer to a server request of a 2025-11-25 session
    /// (`elicitation/create`), for the instance holding the call's stream; the
    /// token is a digest of the session and the request id.
    pub fn input_answer_subject(&self, token: &str) -> String {
        format!("{}.input.{token}", self.prefix)
    }

    /// Core NATS: a run to abort now, even mid-request (payload: its id). Every
    /// worker listens; the one running it aborts its attempt (`tasks/cancel`).
    pub fn abort_subject(&self) -> String {
        format!("{}.control.abort", self.prefix)
    }

    /// Core NATS: a run just marked cancelled (payload: its id), announced after its
    /// mark is stored so that workers' copies have it at once (see the worker's
    /// `cancellations`); unlike an abort it does not cut a request in flight.
    pub fn marked_subject(&self) -> String {
        format!("{}.control.marked", self.prefix)
    }

    pub fn sessions_bucket(&self) -> String {
        format!("{}_SESSIONS", self.prefix.to_uppercase())
    }

    pub fn idempotency_bucket(&self) -> String {
        format!("{}_IDEMPOTENCY", self.prefix.to_uppercase())
    }

    /// Parked commands of calls waiting for an operator's approval.
    pub fn approvals_bucket(&self) -> String {
        format!("{}_APPROVALS", self.prefix.to_uppercase())
    }

    /// The calls behind tasks (so that a task whose API asks for input can be
    /// continued) and the task's current run.
    pub fn tasks_bucket(&self) -> String {
        format!("{}_TASKS", self.prefix.to_uppercase())
    }

    pub fn cancelled_bucket(&self) -> String {
        format!("{}_CANCELLED", self.prefix.to_uppercase())
    }

    /// The bucket of cancelled runs (ingress writes, workers read); an entry only
    /// matters until the run is executed, so a day is ample.
    pub async fn ensure_cancelled_bucket(
        &self,
        js: &jetstream::Context,
        limits: &StreamsConfig,
    ) -> anyhow::Result<jetstream::kv::Store> {
        self.ensure_bucket(
            js,
            self.cancelled_bucket(),
            Duration::from_secs(86_400),
            limits.cancelled_max_bytes,
            limits.replicas,
        )
        .await
    }

    /// Creates a KV bucket if missing; entries expire after `ttl`, and a full bucket
    /// (`max_bytes`) refuses new entries rather than dropping old ones. The backing
    /// stream is created directly with the KV conventions (`KV_<bucket>`,
    /// `$KV.<bucket>.>`): async-nats' `create_key_value` cannot parse NATS 2.9's reply.
    pub async fn ensure_bucket(
        &self,
        js: &jetstream::Context,
        bucket: String,
        ttl: Duration,
        max_bytes: i64,
        replicas: usize,
    ) -> anyhow::Result<jetstream::kv::Store> {
        let config = stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            max_bytes,
            storage: StorageType::File,
            discard: DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            duplicate_window: ttl.min(Duration::from_secs(120)),
            num_replicas: replicas,
            ..Default::default()
        };
        settle(&bucket, || js.get_or_create_stream(config.clone())).await?;
        js.get_key_value(&bucket)
            .await
            .map_err(|e| anyhow::anyhow!("opening KV bucket {bucket}: {e}"))
    }

    fn commands_config(&self, limits: &StreamsConfig) -> stream::Config {
        stream::Config {
            name: self.commands_stream(),
            subjects: vec![format!("{}.cmd.>", self.prefix)],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            // A full queue refuses new calls (the client gets a clear error) rather
            // than silently dropping accepted ones.
            discard: DiscardPolicy::New,
            max_bytes: limits.commands_max_bytes,
            max_messages: limits.commands_max_msgs,
            duplicate_window: Duration::from_secs(limits.duplicate_window_secs),
            num_replicas: limits.replicas,
            ..Default::default()
        }
    }

    fn events_config(&self, limits: &StreamsConfig) -> stream::Config {
        stream::Config {
            name: self.events_stream(),
            subjects: vec![self.events_wildcard()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            max_age: Duration::from_secs(limits.events_max_age_secs),
            max_bytes: limits.events_max_bytes,
            duplicate_window: Duration::from_secs(limits.duplicate_window_secs),
            num_replicas: limits.replicas,
            ..Default::default()
        }
    }

    /// Creates the streams if missing and applies the configured limits to existing
    /// ones (idempotent; safe from every service at start-up).
    pub async fn ensure_streams(
        &self,
        js: &jetstream::Context,
        limits: &StreamsConfig,
    ) -> anyhow::Result<(stream::Stream, stream::Stream)> {
        // Create, or update an existing stream so changed limits take effect.
        for config in [self.commands_config(limits), self.events_config(limits)] {
            let name = config.name.clone();
            settle(&name, || js.create_or_update_stream(config.clone())).await?;
        }
        let commands = js
            .get_stream(self.commands_stream())
            .await
            .map_err(|e| anyhow::anyhow!("opening stream {}: {e}", self.commands_stream()))?;
        let events = js
            .get_stream(self.events_stream())
            .await
            .map_err(|e| anyhow::anyhow!("opening stream {}: {e}", self.events_stream()))?;
        Ok((commands, events))
    }

    pub fn worker_consumer_config(&self, ack_wait: Duration, max_deliver: i64) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.worker_consumer()),
            ack_policy: AckPolicy::Explicit,
            ack_wait,
            max_deliver,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        }
    }

    pub fn projector_consumer_config(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.projector_consumer()),
            ack_policy: AckPolicy::Explicit,
            // Projection is idempotent and a batch takes milliseconds: an event
            // whose ack was lost (a server restart) comes back soon.
            ack_wait: Duration::from_secs(10),
            deliver_policy: DeliverPolicy::All,
            max_ack_pending: 10_000,
            ..Default::default()
        }
    }

    /// Deletes this prefix's streams (and with them their consumers). Tests only.
    pub async fn delete_all(&self, js: &jetstream::Context) {
        for stream in self.streams() {
            let _ = js.delete_stream(stream).await;
        }
    }

    /// Every JetStream stream of this prefix, the KV buckets' own (`KV_…`) included.
    pub fn streams(&self) -> Vec<String> {
        let buckets = [
            self.sessions_bucket(),
            self.cancelled_bucket(),
            self.idempotency_bucket(),
            self.approvals_bucket(),
            self.tasks_bucket(),
        ];
        [self.commands_stream(), self.events_stream()]
            .into_iter()
            .chain(buckets.into_iter().map(|bucket| format!("KV_{bucket}")))
            .collect()
    }
}

/// How long one pull request waits on the server before the client renews it.
pub const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// Idle heartbeat of a pull request: two missed in a row end the pull.
pub const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

/// Opens a pull of up to `batch` messages per request, with idle heartbeats.
///
/// Without heartbeats a pull request that the server dropped (its consumer's
/// leader died, or moved to another node of a cluster) goes unnoticed: async-nats
/// then waits for the request's expiry plus 5 s before pulling again, and with the
/// default 30 s expiry every consumer stalls for 35 s after a node is lost. With
/// them, the stream reports a missed heartbeat within 2 × `PULL_HEARTBEAT`, and the
/// caller opens a fresh pull (see the consumers' loops).
pub async fn pull_messages(
    consumer: &consumer::Consumer<consumer::pull::Config>,
    batch: usize,
) -> anyhow::Result<consumer::pull::Stream> {
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("pulling from consumer {}: {e}", consumer.cached_info().name))
}

/// Runs a JetStream set-up request until it succeeds, for up to about a minute:
/// a server that is still starting, or a cluster still electing leaders, times
/// requests out for a while.
pub async fn settle<T, E, F, Fut>(what: &str, request: F) -> anyhow::Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    use backon::Retryable;
    request
        .retry(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(250))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(15),
        )
        .notify(|err, wait| tracing::warn!(%what, error = %err, ?wait, "JetStream set-up failed; retrying"))
        .await
        .map_err(|e| anyhow::anyhow!("setting up {what}: {e}"))
}

/// Connects to NATS with reconnects forever and a sized subscription buffer.
pub async fn connect_nats(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        // Replies to waiting calls arrive on one subscription: size it so bursts fit.
        .subscription_capacity(1 << 16)
        .event_callback(|event| async move {
            tracing::info!(%event, "nats connection event");
        })
        // A comma-separated list names several servers (a cluster).
        .connect(
            url.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .as_slice(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS at {url}: {e}"))?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_derived_from_prefix() {
        let t = Topology::new("it_ab12");
        assert_eq!(t.commands_stream(), "IT_AB12_COMMANDS");
        assert_eq!(t.events_stream(), "IT_AB12_EVENTS");
        let p = Uuid::nil();
        assert!(t.event_subject(p, p, "accepted").starts_with("it_ab12.ev."));
        let r = Uuid::now_v7();
        assert_eq!(
            Topology::event_subject_ids(&t.event_subject(p, r, "finished")),
            Some((p, r))
        );
        assert_eq!(Topology::event_subject_ids("it_ab12.cmd.x.y"), None);
        assert_eq!(Topology::event_subject_ids("it_ab12.ev.not-a-uuid.y.accepted"), None);
        assert!(t.outcome_subject(p, p).ends_with(".finished"));
        assert!(t.command_subject(p, p).starts_with("it_ab12.cmd."));
    }
}

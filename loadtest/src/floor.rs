//! The design's floor: the same path as a Tengine call with async-nats alone and
//! none of Tengine's code, measured beside Tengine in the same run so that the
//! difference is Tengine's own (issue 17 asks what bounds a missed target).
//!
//! A call: the caller stores a command in a WorkQueue stream (with a
//! `Nats-Msg-Id`, as the ingress does) and waits for its ack; a pull worker (its
//! own process) POSTs the payload to the upstream, stores one result event in a
//! second stream and waits for that ack, replies to the caller over core NATS and
//! acks the command; a log reader (its own process, the projector's part without
//! the database) acks every event. The caller plays the ingress's part without
//! the HTTP hop in front of it: that hop costs what the direct baseline costs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::mcp::Outcome;

/// The header carrying the subject the worker replies on.
const REPLY_HEADER: &str = "Floor-Reply";
/// How long a caller waits for its reply (the run's client timeout is 60 s; a
/// lost reply should show as an error well before that).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum Role {
    /// Pulls commands, calls the upstream, stores the result, replies, acks.
    Worker,
    /// Reads the result log and acks each event.
    Reader,
    /// Deletes the floor's streams.
    Teardown,
}

#[derive(clap::Args)]
pub struct FloorArgs {
    #[arg(value_enum)]
    role: Role,
    #[arg(long, env = "TENGINE_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, env = "TENGINE_NATS_PREFIX")]
    prefix: String,
    /// The upstream's URL the worker POSTs each command to.
    #[arg(long, default_value = "http://127.0.0.1:18790/call")]
    upstream: String,
    /// Commands the worker runs at once (Tengine's worker in the scenarios: 64).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

struct Names {
    commands: String,
    command_subject: String,
    events: String,
    event_subject: String,
}

/// Subjects end in a token: `all`, or the call's number when the caller asks for
/// a subject per call (as Tengine's commands and events have, one per run).
fn names(prefix: &str) -> Names {
    Names {
        commands: format!("{prefix}_FLOOR_COMMANDS"),
        command_subject: format!("{prefix}.floor.commands"),
        events: format!("{prefix}_FLOOR_EVENTS"),
        event_subject: format!("{prefix}.floor.events"),
    }
}

/// Where `run --floor` sends its calls, and how its messages look: one subject for
/// all, or one per call, and how many bytes a command carries (the worker's event
/// carries as many).
#[derive(clap::Args)]
pub struct Target {
    #[arg(long, env = "TENGINE_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The floor's streams are `{prefix}_FLOOR_*` (the floor's worker uses the same).
    #[arg(long = "nats-prefix", env = "TENGINE_NATS_PREFIX", required_if_eq("floor", "true"))]
    prefix: Option<String>,
    /// A subject per call, as Tengine's (`….commands.<n>`, `….events.<n>.finished`).
    #[arg(long = "floor-subject-per-call")]
    subject_per_call: bool,
    /// Bytes of each command (Tengine's commands and events: about 1,000).
    #[arg(long = "floor-bytes", default_value_t = 0)]
    bytes: usize,
}

/// Both streams, created if missing (file storage, one replica, as Tengine's).
async fn streams(js: &jetstream::Context, names: &Names) -> anyhow::Result<(stream::Stream, stream::Stream)> {
    let commands = js
        .get_or_create_stream(stream::Config {
            name: names.commands.clone(),
            subjects: vec![format!("{}.>", names.command_subject)],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", names.commands))?;
    let events = js
        .get_or_create_stream(stream::Config {
            name: names.events.clone(),
            subjects: vec![format!("{}.>", names.event_subject)],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", names.events))?;
    Ok((commands, events))
}

async fn durable(stream: &stream::Stream, name: &str) -> anyhow::Result<consumer::PullConsumer> {
    stream
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.to_string()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating consumer {name}: {e}"))
}

pub async fn run(args: FloorArgs) -> anyhow::Result<()> {
    let nats = async_nats::connect(&args.nats_url).await?;
    let js = jetstream::new(nats.clone());
    let names = names(&args.prefix);
    match args.role {
        Role::Teardown => {
            for name in [&names.commands, &names.events] {
                let _ = js.delete_stream(name).await;
            }
            Ok(())
        }
        Role::Reader => {
            let (_, events) = streams(&js, &names).await?;
            let consumer = durable(&events, "reader").await?;
            let mut messages = consumer.stream().max_messages_per_batch(256).messages().await?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| anyhow::anyhow!("reading events: {e}"))?;
                let _ = message.ack().await;
            }
            Ok(())
        }
        Role::Worker => worker(nats, js, names, args.upstream, args.concurrency).await,
    }
}

async fn worker(
    nats: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    upstream: String,
    concurrency: usize,
) -> anyhow::Result<()> {
    let (commands, _) = streams(&js, &names).await?;
    let consumer = durable(&commands, "worker").await?;
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let event_subject: Arc<str> = names.event_subject.into();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(concurrency.clamp(1, 64))
        .messages()
        .await?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("pulling commands: {e}"))?;
        let permit = slots.clone().acquire_owned().await?;
        let (nats, js, http, upstream, event_subject) = (
            nats.clone(),
            js.clone(),
            http.clone(),
            upstream.clone(),
            event_subject.clone(),
        );
        tokio::spawn(async move {
            let answer = match http.post(&upstream).body(message.payload.clone()).send().await {
                Ok(response) => response.bytes().await.unwrap_or_default(),
                Err(_) => Bytes::new(),
            };
            // The event: the answer and the command (Tengine's carries the call's record).
            let mut result = Vec::with_capacity(answer.len() + message.payload.len());
            result.extend_from_slice(&answer);
            result.extend_from_slice(&message.payload);
            let result = Bytes::from(result);
            let subject = match message.subject.rsplit('.').next() {
                Some("all") | None => format!("{event_subject}.all"),
                Some(n) => format!("{event_subject}.{n}.finished"),
            };
            let stored = async { js.publish(subject, result.clone()).await?.await };
            if stored.await.is_ok() {
                if let Some(reply) = message.headers.as_ref().and_then(|h| h.get(REPLY_HEADER)) {
                    let _ = nats.publish(reply.to_string(), result).await;
                }
                let _ = message.ack().await;
            }
            drop(permit);
        });
    }
    Ok(())
}

/// The caller's side: stores commands and waits for the worker's replies.
pub struct Client {
    js: jetstream::Context,
    /// What every call sends, padded once to the target's size.
    payload: Bytes,
    subject_per_call: bool,
    subject: String,
    inbox: String,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
    next: AtomicU64,
}

impl Client {
    pub async fn connect(target: &Target, mut payload: Vec<u8>) -> anyhow::Result<Self> {
        let prefix = target.prefix.as_deref().context("--floor needs TENGINE_NATS_PREFIX")?;
        let nats = async_nats::connect(&target.nats_url)
            .await
            .with_context(|| format!("connecting to {}", target.nats_url))?;
        let js = jetstream::new(nats.clone());
        let names = names(prefix);
        if payload.len() < target.bytes {
            payload.resize(target.bytes, b' ');
        }
        streams(&js, &names).await?;
        let inbox = nats.new_inbox();
        let mut replies = nats.subscribe(format!("{inbox}.*")).await?;
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>> = Arc::default();
        let routing = waiting.clone();
        // One subscription for every reply, routed by the call's number (the
        // ingress also keeps one reply subscription per process).
        tokio::spawn(async move {
            while let Some(reply) = replies.next().await {
                let Some(n) = reply.subject.rsplit('.').next().and_then(|n| n.parse::<u64>().ok()) else {
                    continue;
                };
                let sender = routing.lock().ok().and_then(|mut w| w.remove(&n));
                if let Some(sender) = sender {
                    let _ = sender.send(());
                }
            }
        });
        Ok(Self {
            js,
            payload: Bytes::from(payload),
            subject_per_call: target.subject_per_call,
            subject: names.command_subject,
            inbox,
            waiting,
            next: AtomicU64::new(1),
        })
    }

    pub async fn call(&self) -> Outcome {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, answered) = oneshot::channel();
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(n, sender);
        }
        let outcome = self.send(n, answered).await;
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.remove(&n);
        }
        outcome
    }

    async fn send(&self, n: u64, answered: oneshot::Receiver<()>) -> Outcome {
        let message = jetstream::message::PublishMessage::build()
            .payload(self.payload.clone())
            .message_id(format!("{}-{n}", self.inbox))
            .header(REPLY_HEADER, format!("{}.{n}", self.inbox));
        let subject = if self.subject_per_call {
            format!("{}.{n}", self.subject)
        } else {
            format!("{}.all", self.subject)
        };
        let Ok(ack) = self.js.send_publish(subject, message).await else {
            return Outcome::Transport;
        };
        if ack.await.is_err() {
            return Outcome::Transport;
        }
        match tokio::time::timeout(REPLY_TIMEOUT, answered).await {
            Ok(Ok(())) => Outcome::Ok,
            _ => Outcome::Transport,
        }
    }
}

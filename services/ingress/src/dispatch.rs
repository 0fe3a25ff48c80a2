//! Queues a run and follows it. Each ingress instance holds one wildcard
//! subscription on its reply subjects; a waiting call registers its run id before
//! the command is published, so a fast reply cannot be missed. Workers send the
//! outcome there, and the attempt's start and end when the caller is shown
//! progress (`ExecuteCommand::progress`). If the outcome is lost or
//! late, the event log is consulted at the deadline.
//!
//! Cancellation: `notifications/cancelled` may reach any instance, so it is
//! broadcast on `{prefix}.control.cancel`; the instance following that call marks
//! the run cancelled in a KV bucket (workers check it before calling the API).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tengine_core::{
    Topology, bus,
    envelope::{Caller, Envelope, ExecuteCommand, RunEvent, RunOutcome},
    telemetry::{self, TraceContext},
};
use tokio::sync::mpsc;
use uuid::Uuid;

/// What a followed run reports.
#[derive(Debug)]
pub enum Signal {
    /// The worker started calling the API.
    Sent,
    /// The API reported progress while answering.
    Upstream {
        progress: f64,
        total: Option<f64>,
        message: Option<String>,
    },
    /// The API answered (or the attempt failed); the outcome follows.
    Answered,
    Finished(Box<RunOutcome>),
    /// The client cancelled the call.
    Cancelled,
}

/// A call's identity within its session, for `notifications/cancelled`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallKey {
    pub session: String,
    pub request_id: String,
}

#[derive(Default)]
struct Registry {
    runs: HashMap<Uuid, mpsc::Sender<Signal>>,
    calls: HashMap<CallKey, Uuid>,
    /// Runs whose `Accepted` event waits (see [`Dispatcher::enqueue`]); their
    /// outcome coming back removes them.
    accepting: HashSet<Uuid>,
    /// The waiting `Accepted` events (with their project), oldest first, with when each is due.
    due: VecDeque<(tokio::time::Instant, Uuid, RunEvent)>,
}

/// How often the waiting `Accepted` events are looked at: one wake-up for all
/// the calls of that moment instead of a task and a timer per call, so an
/// event is stored at most this much after it fell due.
const ACCEPTED_SWEEP: Duration = Duration::from_millis(25);

#[derive(Clone)]
pub struct Dispatcher {
    nats: async_nats::Client,
    js: jetstream::Context,
    commands: jetstream::stream::Stream,
    events: jetstream::stream::Stream,
    cancelled: jetstream::kv::Store,
    topology: Topology,
    instance: String,
    registry: Arc<Mutex<Registry>>,
    /// Wakes `store_due_accepted` when an `Accepted` event starts waiting.
    accepted_waiting: Arc<tokio::sync::Notify>,
}

/// Following one run; unregisters when dropped (including on a client hang-up).
pub struct Following {
    registry: Arc<Mutex<Registry>>,
    pub run_id: Uuid,
    call: Option<CallKey>,
    rx: mpsc::Receiver<Signal>,
}

impl Drop for Following {
    fn drop(&mut self) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.runs.remove(&self.run_id);
            if let Some(call) = &self.call {
                registry.calls.remove(call);
            }
        }
    }
}

impl Following {
    /// The next signal, or `None` once `deadline` passes.
    pub async fn next(&mut self, deadline: tokio::time::Instant) -> Option<Signal> {
        tokio::time::timeout_at(deadline, self.rx.recv()).await.ok().flatten()
    }
}

fn send(registry: &Mutex<Registry>, run_id: Uuid, signal: Signal) {
    let sender = registry.lock().ok().and_then(|r| r.runs.get(&run_id).cloned());
    if let Some(sender) = sender {
        // A full channel means the follower is gone or far behind; progress is best-effort.
        let _ = sender.try_send(signal);
    }
}

impl Dispatcher {
    pub async fn start(
        nats: async_nats::Client,
        js: jetstream::Context,
        commands: jetstream::stream::Stream,
        events: jetstream::stream::Stream,
        cancelled: jetstream::kv::Store,
        topology: Topology,
    ) -> anyhow::Result<Self> {
        let instance = Uuid::now_v7().simple().to_string();
        let registry: Arc<Mutex<Registry>> = Arc::default();

        let mut replies = nats
            .subscribe(topology.reply_wildcard(&instance))
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to replies: {e}"))?;
        let reply_registry = registry.clone();
        tokio::spawn(async move {
            while let Some(message) = replies.next().await {
                let Ok(envelope) = Envelope::<RunEvent>::decode(&message.payload) else {
                    tracing::warn!(subject = %message.subject, "ignoring an undecodable reply");
                    continue;
                };
                match envelope.body {
                    RunEvent::AttemptStarted { run_id, .. } => send(&reply_registry, run_id, Signal::Sent),
                    RunEvent::AttemptFinished { run_id, .. } => send(&reply_registry, run_id, Signal::Answered),
                    RunEvent::UpstreamProgress {
                        run_id,
                        progress,
                        total,
                        message,
                    } => send(
                        &reply_registry,
                        run_id,
                        Signal::Upstream {
                            progress,
                            total,
                            message,
                        },
                    ),
                    RunEvent::Finished(outcome) => {
                        if let Ok(mut registry) = reply_registry.lock() {
                            registry.accepting.remove(&outcome.run_id);
                        }
                        send(&reply_registry, outcome.run_id, Signal::Finished(Box::new(outcome)))
                    }
                    _ => {}
                }
            }
        });

        let accepted_waiting = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(store_due_accepted(
            js.clone(),
            topology.clone(),
            Arc::downgrade(&registry),
            accepted_waiting.clone(),
        ));

        let mut cancels = nats
            .subscribe(topology.cancel_subject())
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to cancellations: {e}"))?;
        let cancel_registry = registry.clone();
        tokio::spawn(async move {
            while let Some(message) = cancels.next().await {
                let Ok(call) = serde_json::from_slice::<CallKey>(&message.payload) else {
                    continue;
                };
                let run_id = cancel_registry.lock().ok().and_then(|r| r.calls.get(&call).copied());
                if let Some(run_id) = run_id {
                    send(&cancel_registry, run_id, Signal::Cancelled);
                }
            }
        });

        Ok(Self {
            nats,
            js,
            commands,
            events,
            cancelled,
            topology,
            instance,
            registry,
            accepted_waiting,
        })
    }

    pub fn reply_subject(&self, run_id: Uuid) -> String {
        self.topology.reply_subject(&self.instance, run_id)
    }

    pub fn follow(&self, run_id: Uuid, call: Option<CallKey>) -> Following {
        let (tx, rx) = mpsc::channel(64);
        if let Ok(mut registry) = self.registry.lock() {
            registry.runs.insert(run_id, tx);
            if let Some(call) = &call {
                registry.calls.insert(call.clone(), run_id);
            }
        }
        Following {
            registry: self.registry.clone(),
            run_id,
            call,
            rx,
        }
    }

    /// Stores the command and the `Accepted` event. The call counts as accepted
    /// once this returns `Ok`. Publishing stops after `within` (the caller's
    /// idempotency lease): a later publish could race a retry's takeover.
    ///
    /// With `accepted_after` (a call whose outcome comes back here), the `Accepted`
    /// event is stored only if the run has not finished by then: the `Finished`
    /// event carries everything history needs, and the queued command stands for
    /// the run until its outcome is stored (`in_streams`), so a quick call costs one
    /// stored message less and history shows a slow one from then on.
    pub async fn enqueue(
        &self,
        command: &ExecuteCommand,
        trace: &TraceContext,
        within: Duration,
        accepted_after: Duration,
    ) -> Result<(), bus::BusError> {
        // The command carries the caller's trace to the worker in its headers.
        let mut headers = async_nats::HeaderMap::new();
        telemetry::inject_nats(&tracing::Span::current(), trace, &mut headers);
        let accepted = RunEvent::Accepted {
            run_id: command.run_id,
            caller: command.caller.clone(),
            tool_name: command.tool_name.clone(),
            accepted_at: command.accepted_at,
            origin: command.origin.clone(),
        };
        // The command's Nats-Msg-Id is the run id: publishing it again after an
        // unconfirmed attempt stores it at most once.
        // Bounded: the client must get an answer long before its own timeout.
        let queue = || async {
            if within.is_zero() {
                return Err(bus::BusError::Publish(
                    "the idempotency lease lapsed before queueing".into(),
                ));
            }
            let deadline = tengine_core::tasks::deadline_after(within.min(Duration::from_secs(3)));
            loop {
                let attempt = tokio::time::timeout_at(
                    deadline,
                    bus::publish_command(&self.js, &self.topology, command, &headers),
                )
                .await;
                match attempt {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(err)) if tengine_core::tasks::deadline_after(Duration::from_millis(200)) < deadline => {
                        tracing::warn!(error = %err, "queueing a run failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(Err(err)) => return Err(err),
                    Err(_) => return Err(bus::BusError::Publish("no acknowledgement within 3 s".into())),
                }
            }
        };
        // The Accepted event only after the command is stored: on a cluster the two
        // streams have their own leaders, so during an election one write can succeed
        // while the other fails, and an Accepted event of a call that was then refused
        // (its Rejected event may fail too) would leave the run "accepted" in history
        // forever. It is stored in the background: the call does not wait for it, and
        // if it is lost the worker's Finished event carries everything history needs.
        let run_id = command.run_id;
        let waits = !accepted_after.is_zero();
        if waits && let Ok(mut registry) = self.registry.lock() {
            registry.accepting.insert(run_id);
        }
        if let Err(err) = queue().await {
            if let Ok(mut registry) = self.registry.lock() {
                registry.accepting.remove(&run_id);
            }
            return Err(err);
        }
        let project_id = command.caller.project_id;
        if waits {
            // `store_due_accepted` stores it then, unless the outcome came back first.
            let now = tokio::time::Instant::now();
            let due = now.checked_add(accepted_after).unwrap_or(now);
            if let Ok(mut registry) = self.registry.lock() {
                registry.due.push_back((due, project_id, accepted));
            }
            self.accepted_waiting.notify_one();
            return Ok(());
        }
        let dispatcher = self.clone();
        tokio::spawn(async move { dispatcher.log(project_id, accepted).await });
        Ok(())
    }

    /// Stores an event in the log; the caller learns whether it was stored.
    pub async fn publish(&self, project_id: Uuid, event: RunEvent) -> Result<(), bus::BusError> {
        bus::publish_event(&self.js, &self.topology, project_id, event).await
    }

    /// Sends an outcome to the ingress waiting on `reply_to` (best-effort).
    pub async fn reply(&self, reply_to: &str, outcome: RunOutcome) {
        if let Ok(bytes) = Envelope::new(Uuid::now_v7(), RunEvent::Finished(outcome)).encode()
            && let Err(err) = self.nats.publish(reply_to.to_string(), bytes.into()).await
        {
            tracing::warn!(error = %err, "replying to the waiting ingress failed; it reads the event log");
        }
    }

    /// Stores an event in the log, best-effort (a failure is logged).
    pub async fn log(&self, project_id: Uuid, event: RunEvent) {
        log_event(&self.js, &self.topology, project_id, event).await
    }

    /// The outcome recorded in the event log, if the run has finished.
    pub async fn recorded(&self, project_id: Uuid, run_id: Uuid) -> Option<RunOutcome> {
        bus::recorded_outcome(&self.events, &self.topology, project_id, run_id).await
    }

    /// Broadcasts a client's cancellation to whichever instance follows the call.
    pub async fn request_cancel(&self, call: &CallKey) {
        if let Ok(payload) = serde_json::to_vec(call)
            && let Err(err) = self.nats.publish(self.topology.cancel_subject(), payload.into()).await
        {
            tracing::warn!(error = %err, "broadcasting a cancellation failed");
        }
    }

    /// Events in the log not yet applied to run history.
    pub async fn projector_lag(&self, pool: &sqlx::PgPool) -> Option<u64> {
        tengine_projector::history::lag(&self.events, pool).await
    }

    /// Run history's lag and whether it has stopped (see [`tengine_projector::history::progress`]).
    pub async fn history_progress(
        &self,
        pool: &sqlx::PgPool,
        stalled_after: Duration,
    ) -> Option<tengine_projector::history::Progress> {
        tengine_projector::history::progress(&self.events, &self.topology.events_wildcard(), pool, stalled_after).await
    }

    /// Commands in the queue: (waiting for a worker, delivered and not acked
    /// yet), from the workers' consumer; `None` when NATS cannot say.
    pub async fn queue_depth(&self) -> Option<QueueDepth> {
        let mut consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config> = self
            .commands
            .get_consumer(&self.topology.worker_consumer())
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        Some(QueueDepth {
            waiting: info.num_pending,
            in_progress: u64::try_from(info.num_ack_pending).unwrap_or(0),
        })
    }

    /// Whether the run left a trace in NATS: its command is queued, or the event
    /// log has its `Accepted` or `Finished` event. A failed lookup is an error, not
    /// "no": a retry must not take over a key on a guess.
    pub async fn in_streams(&self, project_id: Uuid, run_id: Uuid) -> Result<bool, String> {
        let queued = self.topology.command_subject(project_id, run_id);
        let mut lookups = vec![(&self.commands, queued)];
        // A parked run (operator approval) has no command queued and no Accepted yet.
        for kind in [
            RunEvent::ACCEPTED_KIND,
            RunEvent::FINISHED_KIND,
            RunEvent::AWAITING_APPROVAL_KIND,
        ] {
            lookups.push((&self.events, self.topology.event_subject(project_id, run_id, kind)));
        }
        for (stream, subject) in lookups {
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(_) => return Ok(true),
                Err(err) if matches!(err.kind(), jetstream::stream::LastRawMessageErrorKind::NoMessageFound) => {}
                Err(err) => return Err(format!("looking up {subject}: {err}")),
            }
        }
        Ok(false)
    }

    pub async fn is_cancelled(&self, run_id: Uuid) -> bool {
        matches!(self.cancelled.entry(run_id.to_string()).await, Ok(Some(_)))
    }

    /// Cancels a run and aborts it where it runs: a request in flight is cut off
    /// (the API may have received it; the run records so).
    pub async fn abort(&self, project_id: Uuid, run_id: Uuid) {
        self.cancel(project_id, run_id).await;
        if let Err(err) = self
            .nats
            .publish(self.topology.abort_subject(), run_id.to_string().into())
            .await
        {
            tracing::warn!(%run_id, error = %err, "broadcasting an abort failed; the run stops before its next attempt");
        }
    }

    /// The run as far as the streams know it while it has no outcome: its queued
    /// command, else its `Accepted` event (who called, which tool, when).
    pub async fn unfinished(&self, project_id: Uuid, run_id: Uuid) -> Option<(Caller, String, DateTime<Utc>)> {
        let queued = self.topology.command_subject(project_id, run_id);
        if let Ok(message) = self.commands.get_last_raw_message_by_subject(&queued).await
            && let Ok(command) = Envelope::<ExecuteCommand>::decode(&message.payload)
        {
            let command = command.body;
            return Some((command.caller, command.tool_name, command.accepted_at));
        }
        for kind in [RunEvent::ACCEPTED_KIND, RunEvent::AWAITING_APPROVAL_KIND] {
            let subject = self.topology.event_subject(project_id, run_id, kind);
            let Ok(message) = self.events.get_last_raw_message_by_subject(&subject).await else {
                continue;
            };
            match Envelope::<RunEvent>::decode(&message.payload).ok()?.body {
                RunEvent::Accepted {
                    caller,
                    tool_name,
                    accepted_at,
                    ..
                }
                | RunEvent::AwaitingApproval {
                    caller,
                    tool_name,
                    accepted_at,
                    ..
                } => return Some((caller, tool_name, accepted_at)),
                _ => {}
            }
        }
        None
    }

    /// Marks a run cancelled: workers that have not called the API yet skip it.
    pub async fn cancel(&self, project_id: Uuid, run_id: Uuid) {
        match self.cancelled.put(run_id.to_string(), "1".into()).await {
            // Stored: announced, so that workers' copies have it at once.
            Ok(_) => {
                if let Err(err) = self
                    .nats
                    .publish(self.topology.marked_subject(), run_id.to_string().into())
                    .await
                {
                    tracing::debug!(%run_id, error = %err, "announcing a cancellation (workers still read the mark)");
                }
            }
            Err(err) => tracing::warn!(%run_id, error = %err, "could not mark the run cancelled"),
        }
        self.log(
            project_id,
            RunEvent::CancelRequested {
                run_id,
                project_id,
                requested_at: Utc::now(),
            },
        )
        .await;
    }

    /// Polls the event log for an outcome until `deadline` (resumed streams,
    /// whose worker replies go to another instance).
    pub async fn poll_outcome(
        &self,
        project_id: Uuid,
        run_id: Uuid,
        deadline: tokio::time::Instant,
    ) -> Option<RunOutcome> {
        loop {
            if let Some(outcome) = self.recorded(project_id, run_id).await {
                return Some(outcome);
            }
            if tengine_core::tasks::deadline_after(Duration::from_millis(200)) > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Pending commands of the work queue (`Dispatcher::queue_depth`).
#[derive(Debug, Clone, Copy)]
pub struct QueueDepth {
    /// Not delivered to a worker yet.
    pub waiting: u64,
    /// Delivered, not acknowledged yet (being executed, or to be redelivered).
    pub in_progress: u64,
}

/// Stores the `Accepted` events that fell due (see [`Dispatcher::enqueue`]) for
/// the runs whose outcome has not come back: when the oldest falls due, at most
/// every [`ACCEPTED_SWEEP`]. Due times are in queueing order (one delay for all;
/// a shorter one after a longer would only be stored a little late).
async fn store_due_accepted(
    js: jetstream::Context,
    topology: Topology,
    registry: std::sync::Weak<Mutex<Registry>>,
    waiting: Arc<tokio::sync::Notify>,
) {
    loop {
        let Some(registry) = registry.upgrade() else { return };
        let now = tokio::time::Instant::now();
        let mut unfinished = Vec::new();
        let mut next_due = None;
        if let Ok(mut registry) = registry.lock() {
            while registry.due.front().is_some_and(|(due, _, _)| *due <= now) {
                let Some((_, project_id, event)) = registry.due.pop_front() else {
                    break;
                };
                if registry.accepting.remove(&event.run_id()) {
                    unfinished.push((project_id, event));
                }
            }
            next_due = registry.due.front().map(|(due, _, _)| *due);
        }
        drop(registry);
        // Concurrently: each waits for its acknowledgement.
        futures::stream::iter(unfinished)
            .for_each_concurrent(32, |(project_id, event)| log_event(&js, &topology, project_id, event))
            .await;
        match next_due {
            // Asleep while nothing waits (a permit stored by `notify_one` is not lost).
            None => waiting.notified().await,
            Some(due) => {
                let soonest = tokio::time::Instant::now().checked_add(ACCEPTED_SWEEP);
                tokio::time::sleep_until(soonest.map_or(due, |soonest| due.max(soonest))).await
            }
        }
    }
}

/// [`Dispatcher::log`], for the task that has no dispatcher of its own.
async fn log_event(js: &jetstream::Context, topology: &Topology, project_id: Uuid, event: RunEvent) {
    let run_id = event.run_id();
    if let Err(err) = bus::publish_event(js, topology, project_id, event).await {
        tracing::warn!(%run_id, error = %err, "could not log an event");
    }
}

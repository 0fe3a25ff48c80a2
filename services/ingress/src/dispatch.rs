//! Queues a run and waits for its outcome. Each ingress instance holds one
//! wildcard subscription on its reply subjects; a waiting call registers its run
//! id before the command is published, so a fast reply cannot be missed. If the
//! reply is lost or late, the event log is consulted once at the deadline.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream;
use futures::StreamExt;
use tengine_core::{
    Topology, bus,
    envelope::{Envelope, ExecuteCommand, RunEvent, RunOutcome},
};
use tokio::sync::oneshot;
use uuid::Uuid;

type Waiters = Arc<Mutex<HashMap<Uuid, oneshot::Sender<RunOutcome>>>>;

#[derive(Clone)]
pub struct Dispatcher {
    js: jetstream::Context,
    events: jetstream::stream::Stream,
    topology: Topology,
    instance: String,
    waiters: Waiters,
}

/// Removes the waiter when the call ends in any way (including a client hang-up).
pub struct Waiting {
    waiters: Waiters,
    run_id: Uuid,
    rx: Option<oneshot::Receiver<RunOutcome>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Ok(mut map) = self.waiters.lock() {
            map.remove(&self.run_id);
        }
    }
}

impl Dispatcher {
    pub async fn start(
        client: async_nats::Client,
        js: jetstream::Context,
        events: jetstream::stream::Stream,
        topology: Topology,
    ) -> anyhow::Result<Self> {
        let instance = Uuid::now_v7().simple().to_string();
        let waiters: Waiters = Arc::default();
        let mut replies = client
            .subscribe(topology.reply_wildcard(&instance))
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to replies: {e}"))?;
        let listener_waiters = waiters.clone();
        tokio::spawn(async move {
            while let Some(message) = replies.next().await {
                let Ok(envelope) = Envelope::<RunEvent>::decode(&message.payload) else {
                    tracing::warn!(subject = %message.subject, "ignoring an undecodable reply");
                    continue;
                };
                if let RunEvent::Finished(outcome) = envelope.body {
                    let sender = listener_waiters.lock().ok().and_then(|mut m| m.remove(&outcome.run_id));
                    if let Some(sender) = sender {
                        let _ = sender.send(outcome);
                    }
                }
            }
        });
        Ok(Self {
            js,
            events,
            topology,
            instance,
            waiters,
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn reply_subject(&self, run_id: Uuid) -> String {
        self.topology.reply_subject(&self.instance, run_id)
    }

    pub fn register(&self, run_id: Uuid) -> Waiting {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut map) = self.waiters.lock() {
            map.insert(run_id, tx);
        }
        Waiting {
            waiters: self.waiters.clone(),
            run_id,
            rx: Some(rx),
        }
    }

    /// Stores the command and the `Accepted` event. The call counts as accepted
    /// once this returns `Ok`.
    pub async fn enqueue(&self, command: &ExecuteCommand) -> Result<(), bus::BusError> {
        let accepted = RunEvent::Accepted {
            run_id: command.run_id,
            caller: command.caller.clone(),
            tool_name: command.tool_name.clone(),
            accepted_at: command.accepted_at,
        };
        let (queued, logged) = tokio::join!(
            bus::publish_command(&self.js, &self.topology, command),
            bus::publish_event(&self.js, &self.topology, command.caller.project_id, accepted),
        );
        queued?;
        if let Err(err) = logged {
            // The worker's Finished event carries everything the history needs.
            tracing::warn!(run_id = %command.run_id, error = %err, "could not log the Accepted event");
        }
        Ok(())
    }

    pub async fn log(&self, project_id: Uuid, event: RunEvent) {
        let run_id = event.run_id();
        if let Err(err) = bus::publish_event(&self.js, &self.topology, project_id, event).await {
            tracing::warn!(%run_id, error = %err, "could not log an event");
        }
    }

    /// Waits for the outcome until `deadline`; then looks in the event log once.
    pub async fn wait(&self, mut waiting: Waiting, project_id: Uuid, deadline: Duration) -> Option<RunOutcome> {
        let rx = waiting.rx.take()?;
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(outcome)) => Some(outcome),
            _ => bus::recorded_outcome(&self.events, &self.topology, project_id, waiting.run_id).await,
        }
    }
}

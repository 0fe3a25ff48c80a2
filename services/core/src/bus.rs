//! Publishing commands and events on JetStream, and reading a run's recorded
//! outcome back from the event log. Every publish waits for the stream's ack:
//! a call is accepted only once its command is stored.

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use uuid::Uuid;

use crate::{
    envelope::{Envelope, EnvelopeError, ExecuteCommand, RunEvent, RunOutcome},
    topology::{CONTENT_TYPE_MSGPACK, HEADER_CONTENT_TYPE, Topology},
};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The message exceeds the server's `max_payload`: publishing it again cannot help.
    #[error("the message is too large for NATS: {0}")]
    TooLarge(String),
    #[error("publishing to JetStream failed: {0}")]
    Publish(String),
}

impl BusError {
    /// Whether publishing the same message again may succeed (NATS down, no ack, a
    /// leader election) rather than fail the same way (too large, not encodable).
    pub fn is_transient(&self) -> bool {
        matches!(self, BusError::Publish(_))
    }
}

fn publish_error(err: jetstream::context::PublishError) -> BusError {
    match err.kind() {
        jetstream::context::PublishErrorKind::MaxPayloadExceeded => BusError::TooLarge(err.to_string()),
        _ => BusError::Publish(err.to_string()),
    }
}

fn message(id: Uuid, payload: Bytes) -> PublishMessage {
    PublishMessage::build()
        .payload(payload)
        .message_id(id.to_string())
        .header(HEADER_CONTENT_TYPE, CONTENT_TYPE_MSGPACK)
}

/// Queues an execution command. The run id is the `Nats-Msg-Id`, so publishing the
/// same run twice within the duplicate window stores it once.
pub async fn publish_command(
    js: &jetstream::Context,
    topology: &Topology,
    command: &ExecuteCommand,
    extra_headers: &async_nats::HeaderMap,
) -> Result<(), BusError> {
    let envelope = Envelope::new(command.run_id, command.clone());
    let mut message = message(command.run_id, Bytes::from(envelope.encode()?));
    for (name, values) in extra_headers.iter() {
        for value in values {
            message = message.header(name.clone(), value.clone());
        }
    }
    let ack = js
        .send_publish(
            topology.command_subject(command.caller.project_id, command.run_id),
            message,
        )
        .await
        .map_err(publish_error)?;
    // A duplicate ack means the command is already stored: success.
    ack.await.map_err(publish_error)?;
    Ok(())
}

/// An event encoded once. Publishing it again (a retry) sends the same `Nats-Msg-Id`,
/// so the stream keeps one copy even when an earlier try was stored and only its
/// ack was lost; the same bytes are the reply to a waiting ingress.
pub struct EncodedEvent {
    subject: String,
    id: Uuid,
    pub bytes: Bytes,
}

impl EncodedEvent {
    pub fn new(topology: &Topology, project_id: Uuid, event: RunEvent) -> Result<Self, BusError> {
        let envelope = Envelope::new(Uuid::now_v7(), event);
        Ok(Self {
            subject: topology.event_subject(project_id, envelope.body.run_id(), envelope.body.kind()),
            id: envelope.id,
            bytes: Bytes::from(envelope.encode()?),
        })
    }

    /// Appends the event to the log (once, however often it is called).
    pub async fn publish(&self, js: &jetstream::Context) -> Result<(), BusError> {
        let ack = js
            .send_publish(self.subject.clone(), message(self.id, self.bytes.clone()))
            .await
            .map_err(publish_error)?;
        // A duplicate ack means an earlier try stored it: success.
        ack.await.map_err(publish_error)?;
        Ok(())
    }
}

/// Appends an event to the log.
pub async fn publish_event(
    js: &jetstream::Context,
    topology: &Topology,
    project_id: Uuid,
    event: RunEvent,
) -> Result<(), BusError> {
    EncodedEvent::new(topology, project_id, event)?.publish(js).await
}

/// The run's outcome if the event log has it.
pub async fn recorded_outcome(
    events: &jetstream::stream::Stream,
    topology: &Topology,
    project_id: Uuid,
    run_id: Uuid,
) -> Option<RunOutcome> {
    let message = events
        .get_last_raw_message_by_subject(&topology.outcome_subject(project_id, run_id))
        .await
        .ok()?;
    match Envelope::<RunEvent>::decode(&message.payload).ok()?.body {
        RunEvent::Finished(outcome) => Some(outcome),
        _ => None,
    }
}

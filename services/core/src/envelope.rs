//! Messages on the streams: MessagePack (named fields) inside a versioned envelope.
//! `schemas/` holds the JSON Schema of each; a test keeps them equal to these types.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// Bumped on an incompatible change; readers refuse versions they do not know.
pub const ENVELOPE_VERSION: u16 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Envelope<T> {
    /// Envelope version.
    pub v: u16,
    /// Unique message id (UUIDv7); also the `Nats-Msg-Id` used for deduplication.
    pub id: Uuid,
    /// When the message was created.
    pub at: DateTime<Utc>,
    pub body: T,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message is not a valid envelope: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("message could not be encoded: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("unsupported envelope version {0} (this build reads {ENVELOPE_VERSION})")]
    Version(u16),
}

impl<T: Serialize + DeserializeOwned> Envelope<T> {
    pub fn new(id: Uuid, body: T) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            id,
            at: Utc::now(),
            body,
        }
    }

    /// MessagePack with named fields, human-readable mode: UUIDs and timestamps
    /// are strings, as the JSON Schemas in `schemas/` describe them, so readers in
    /// other languages decode them without knowing Rust's binary forms.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::with_capacity(256);
        let mut serializer = rmp_serde::Serializer::new(&mut out)
            .with_struct_map()
            .with_human_readable();
        self.serialize(&mut serializer)?;
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes).with_human_readable();
        let envelope = Self::deserialize(&mut deserializer)?;
        if envelope.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(envelope.v));
        }
        Ok(envelope)
    }
}

/// Who a run acts for: the credential that called and, with a member session,
/// the customer's end user.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Caller {
    pub project_id: Uuid,
    pub integration_id: Uuid,
    pub api_key_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Member>,
}

/// An end user of the customer, as its backend asserted it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Member {
    /// The member's external id (`sub` of the assertion).
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// When its member session was issued (revocation cut-off).
    pub session_issued_at: DateTime<Utc>,
}

/// Execution command, published by the ingress on `{prefix}.cmd.{project_id}`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ExecuteCommand {
    pub run_id: Uuid,
    pub caller: Caller,
    pub tool_id: Uuid,
    pub tool_name: String,
    /// The tool version the ingress validated the arguments against.
    pub tool_version: i64,
    pub arguments: serde_json::Map<String, serde_json::Value>,
    pub accepted_at: DateTime<Utc>,
    /// Core NATS subject on which the waiting ingress expects the result.
    pub reply_to: Option<String>,
    /// Set for calls with a client idempotency key: run history keeps the outcome
    /// until then, so a retry still gets it after the event log rolled past the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_result_until: Option<DateTime<Utc>>,
    /// A re-issued call's answers to what the API asked (revision 2026-07-28
    /// multi round-trip requests); the API receives them as `X-Tengine-Input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<CommandInput>,
    /// Where the call came from, for run history (copied into `Accepted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<RunOrigin>,
    /// Whether the waiting ingress shows the attempt's progress (the client asked
    /// for progress or log notifications): only then does the worker send it the
    /// attempt's start, end and the API's own progress. Most calls only wait for
    /// the outcome, and each of those messages wakes the ingress. Absent (an older
    /// ingress's command): sent, as before.
    #[serde(default = "shows_progress_by_default")]
    pub progress: bool,
}

fn shows_progress_by_default() -> bool {
    true
}

/// What run history shows of a call's origin; every field optional, so messages
/// of older ingresses (without it) still decode.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct RunOrigin {
    /// The W3C trace id (hex) the call ran under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The client's idempotency key, as it sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The run this one re-drives (runs it again with its arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive_of: Option<Uuid>,
}

/// The client's answers to the API's input requests, and the API's own state.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct CommandInput {
    /// The client's `inputResponses`, as it sent them.
    pub responses: serde_json::Map<String, serde_json::Value>,
    /// The `state` the API returned with its input requests, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl CommandInput {
    /// The `X-Tengine-Input` header value: base64url (unpadded) of
    /// `{"inputResponses": {...}, "state": "..."}`.
    pub fn header_value(&self) -> String {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let json = serde_json::json!({"inputResponses": self.responses, "state": self.state});
        URL_SAFE_NO_PAD.encode(json.to_string())
    }
}

impl ExecuteCommand {
    /// Whether the command fits one message of a server with `max_payload`
    /// (headers included, see [`crate::payload`]); the message says why not.
    pub fn check_fits(&self, max_payload: usize) -> Result<(), String> {
        let encoded = Envelope::new(self.run_id, self.clone())
            .encode()
            .map_err(|e| e.to_string())?
            .len()
            .saturating_add(crate::payload::COMMAND_HEADERS_BYTES);
        if encoded <= max_payload {
            return Ok(());
        }
        Err(format!(
            "the call is too large to queue: with these arguments its command takes {encoded} bytes, and the message \
             bus (NATS max_payload) takes at most {max_payload}; send smaller arguments"
        ))
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Accepted,
    Running,
    Succeeded,
    Failed,
    Rejected,
    /// The client cancelled the call before the API was called.
    Cancelled,
    /// The credential was revoked, or the tool disabled, before the API was
    /// called or before a retry (checked before every attempt).
    Revoked,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Accepted => "accepted",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Rejected => "rejected",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Revoked => "revoked",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Rejected | RunStatus::Cancelled | RunStatus::Revoked
        )
    }
}

/// Why a run or an attempt did not succeed.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The upstream answered with a non-2xx status.
    UpstreamStatus,
    /// The upstream did not answer within the tool's timeout.
    Timeout,
    /// No connection could be made (refused, DNS, TLS): nothing was sent.
    Connect,
    /// The connection failed after the request may have been sent.
    Transport,
    /// The upstream's response body was larger than the configured cap (older
    /// workers; a larger body is now kept in part, with `truncated` and `size`).
    ResponseTooLarge,
    /// The arguments did not fit the tool's schema or templates.
    InvalidArguments,
    /// The tool does not exist or is disabled.
    UnknownTool,
    /// The command was redelivered too often (a worker kept failing on it).
    DeliveryExhausted,
    /// The caller's credential or the tool stopped being valid before the call.
    Revoked,
    /// The API's address is not allowed (private, loopback, metadata) for this project.
    Forbidden,
    /// A fault inside Tengine.
    Internal,
    /// The call exceeded a quota of its project or member (refused before queueing).
    QuotaExceeded,
    /// An operator rejected the call, or its approval expired (the API was not called).
    ApprovalDenied,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::UpstreamStatus => "upstream_status",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Transport => "transport",
            ErrorClass::ResponseTooLarge => "response_too_large",
            ErrorClass::InvalidArguments => "invalid_arguments",
            ErrorClass::UnknownTool => "unknown_tool",
            ErrorClass::DeliveryExhausted => "delivery_exhausted",
            ErrorClass::Revoked => "revoked",
            ErrorClass::Forbidden => "forbidden",
            ErrorClass::Internal => "internal",
            ErrorClass::QuotaExceeded => "quota_exceeded",
            ErrorClass::ApprovalDenied => "approval_denied",
        }
    }
}

/// What the upstream answered, as much as the model gets to see.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct UpstreamResponse {
    pub http_status: u16,
    pub content_type: Option<String>,
    /// The body's first `worker.max_response_bytes` bytes (of a streamed body, the
    /// result lines among them): as text when they are UTF-8, else in base64 (see
    /// `encoding`); never converted lossily.
    pub body: String,
    /// How `body` holds the bytes; absent: `text`.
    #[serde(default, skip_serializing_if = "BodyEncoding::is_text")]
    pub encoding: BodyEncoding,
    /// Whether the API sent more than `body` holds (more than `worker.max_response_bytes`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The body's full size in bytes as the API sent it, counted before any
    /// conversion. Absent in messages of workers older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// How an `UpstreamResponse` body holds the API's bytes.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BodyEncoding {
    /// The bytes are UTF-8 and `body` is them.
    #[default]
    Text,
    /// The bytes are not UTF-8: `body` is their standard base64 (with padding).
    Base64,
}

impl BodyEncoding {
    pub fn is_text(&self) -> bool {
        *self == BodyEncoding::Text
    }
}

impl UpstreamResponse {
    /// The response for `kept`, the first bytes of a body of `size` bytes in all:
    /// text if they are UTF-8 (a character cut at the end of a truncated body is
    /// dropped), else base64. `truncated`: the API sent more than `kept` holds.
    /// The content type is bounded for the event.
    pub fn from_bytes(
        http_status: u16,
        content_type: Option<String>,
        kept: Vec<u8>,
        size: u64,
        truncated: bool,
    ) -> Self {
        use base64::Engine;
        let content_type = content_type.map(|c| crate::payload::bounded(c, crate::payload::CONTENT_TYPE_MAX_BYTES));
        let (body, encoding) = match String::from_utf8(kept) {
            Ok(text) => (text, BodyEncoding::Text),
            Err(err) => {
                let valid = err.utf8_error().valid_up_to();
                // Only an incomplete last character (`error_len` None) of a cut body is text.
                if truncated && err.utf8_error().error_len().is_none() {
                    let mut bytes = err.into_bytes();
                    bytes.truncate(valid);
                    (String::from_utf8(bytes).unwrap_or_default(), BodyEncoding::Text)
                } else {
                    (
                        base64::engine::general_purpose::STANDARD.encode(err.as_bytes()),
                        BodyEncoding::Base64,
                    )
                }
            }
        };
        Self {
            http_status,
            content_type,
            body,
            encoding,
            truncated,
            size: Some(size),
        }
    }

    /// The body's kept bytes (`None` if a base64 body does not decode).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        match self.encoding {
            BodyEncoding::Text => Some(self.body.as_bytes().to_vec()),
            BodyEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(&self.body).ok(),
        }
    }

    /// How many of the API's bytes `body` holds.
    pub fn kept_bytes(&self) -> usize {
        match self.encoding {
            BodyEncoding::Text => self.body.len(),
            // Padding aside, 4 characters hold 3 bytes.
            BodyEncoding::Base64 => {
                let padding = self.body.bytes().rev().take_while(|b| *b == b'=').count();
                (self.body.len() / 4).saturating_mul(3).saturating_sub(padding)
            }
        }
    }

    /// The content type's essence (`image/png` of `image/png; q=1`), lower case.
    pub fn essence(&self) -> String {
        self.content_type
            .as_deref()
            .and_then(|c| c.split(';').next())
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    }
}

/// Entries of the event log, on `{prefix}.ev.{project_id}.{run_id}`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    /// The ingress accepted a call and queued its command.
    Accepted {
        run_id: Uuid,
        caller: Caller,
        tool_name: String,
        accepted_at: DateTime<Utc>,
        /// From the command; absent in events of older ingresses.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<RunOrigin>,
    },
    /// The ingress refused a call before queueing it (unknown tool, bad arguments).
    Rejected {
        run_id: Uuid,
        caller: Caller,
        tool_name: String,
        accepted_at: DateTime<Utc>,
        error_class: ErrorClass,
        error: String,
    },
    AttemptStarted {
        run_id: Uuid,
        project_id: Uuid,
        attempt: u32,
        started_at: DateTime<Utc>,
    },
    AttemptFinished {
        run_id: Uuid,
        project_id: Uuid,
        attempt: u32,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        http_status: Option<u16>,
        error_class: Option<ErrorClass>,
        error: Option<String>,
        bytes_out: u64,
        bytes_in: u64,
    },
    /// The client cancelled the call (`notifications/cancelled`). The run ends as
    /// `cancelled` unless the API was already called; then its real outcome follows.
    CancelRequested {
        run_id: Uuid,
        project_id: Uuid,
        requested_at: DateTime<Utc>,
    },
    /// The call waits for an operator's approval (its tool has `approval:
    /// operator`); its command is parked until then, at most until `expires_at`.
    AwaitingApproval {
        run_id: Uuid,
        caller: Caller,
        tool_name: String,
        accepted_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    /// An operator approved or rejected a parked call, or its approval expired.
    ApprovalDecided {
        run_id: Uuid,
        project_id: Uuid,
        decision: ApprovalDecision,
        /// Who decided (`admin`), absent for an expiry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        decided_at: DateTime<Utc>,
    },
    /// Progress the API reported while answering (NDJSON or SSE lines with a
    /// `progress` field). Sent only to the waiting ingress, never logged.
    UpstreamProgress {
        run_id: Uuid,
        progress: f64,
        total: Option<f64>,
        message: Option<String>,
    },
    /// A client retried a call with its idempotency key and was answered from this
    /// run: the API was not called again. It carries what history needs to hold the
    /// run's row before its other events arrive (a quick call stores no `Accepted`).
    ClientRetried {
        run_id: Uuid,
        caller: Caller,
        tool_name: String,
        retried_at: DateTime<Utc>,
    },
    /// The run's outcome, on a subject of its own (`….finished`); carries everything needed
    /// to build its history row even if earlier events were lost.
    Finished(RunOutcome),
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct RunOutcome {
    pub run_id: Uuid,
    pub caller: Caller,
    pub tool_name: String,
    pub status: RunStatus,
    pub error_class: Option<ErrorClass>,
    pub error: Option<String>,
    pub response: Option<UpstreamResponse>,
    pub attempts: u32,
    pub accepted_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Time from acceptance to outcome.
    pub latency_ms: u64,
    /// The last attempt's bodies, redacted and capped; only for projects that store bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bodies: Option<RunBodies>,
    /// Copied from the command: history keeps this outcome until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_result_until: Option<DateTime<Utc>>,
    /// The attempt that ended the run, if it made one. History records it from
    /// here: it has no `AttemptFinished` event of its own (one stored message less
    /// per call; earlier attempts, which were retried, do have theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<Box<AttemptReport>>,
    /// Copied from the command, for history: a quick call has no `Accepted` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Box<RunOrigin>>,
}

/// One attempt's answer, as history records it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct AttemptReport {
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub http_status: Option<u16>,
    pub error_class: Option<ErrorClass>,
    pub error: Option<String>,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

impl AttemptReport {
    /// The report as the event of its own that history also reads.
    pub fn into_event(self, run_id: Uuid, project_id: Uuid) -> RunEvent {
        RunEvent::AttemptFinished {
            run_id,
            project_id,
            attempt: self.attempt,
            started_at: self.started_at,
            finished_at: self.finished_at,
            http_status: self.http_status,
            error_class: self.error_class,
            error: self.error,
            bytes_out: self.bytes_out,
            bytes_in: self.bytes_in,
        }
    }
}

/// What became of a parked call.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDecision {
    Approved,
    Rejected,
    Expired,
}

impl ApprovalDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalDecision::Approved => "approved",
            ApprovalDecision::Rejected => "rejected",
            ApprovalDecision::Expired => "expired",
        }
    }
}

/// Bodies kept in run history (projects with `store_bodies`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct RunBodies {
    /// The rendered request body, if the request had one.
    pub request: Option<String>,
    /// The response body, if the API answered.
    pub response: Option<String>,
    /// Whether either body was cut to the project's `body_max_bytes`.
    pub truncated: bool,
    /// The call's arguments (a JSON object), redacted like the bodies: what a
    /// re-drive runs again. Absent in events of older workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// Whether redaction or the size cap changed `arguments` (they cannot be re-driven).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub arguments_altered: bool,
}

impl RunEvent {
    pub const FINISHED_KIND: &'static str = "finished";
    pub const ACCEPTED_KIND: &'static str = "accepted";
    pub const AWAITING_APPROVAL_KIND: &'static str = "awaiting_approval";

    /// The last subject token of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            RunEvent::Accepted { .. } => Self::ACCEPTED_KIND,
            RunEvent::Rejected { .. } => "rejected",
            RunEvent::AttemptStarted { .. } => "attempt_started",
            RunEvent::AttemptFinished { .. } => "attempt_finished",
            RunEvent::CancelRequested { .. } => "cancel_requested",
            RunEvent::AwaitingApproval { .. } => Self::AWAITING_APPROVAL_KIND,
            RunEvent::ApprovalDecided { .. } => "approval_decided",
            RunEvent::UpstreamProgress { .. } => "upstream_progress",
            RunEvent::ClientRetried { .. } => "client_retried",
            RunEvent::Finished(_) => Self::FINISHED_KIND,
        }
    }

    pub fn run_id(&self) -> Uuid {
        match self {
            RunEvent::Accepted { run_id, .. }
            | RunEvent::Rejected { run_id, .. }
            | RunEvent::AttemptStarted { run_id, .. }
            | RunEvent::AttemptFinished { run_id, .. }
            | RunEvent::CancelRequested { run_id, .. }
            | RunEvent::AwaitingApproval { run_id, .. }
            | RunEvent::ApprovalDecided { run_id, .. }
            | RunEvent::UpstreamProgress { run_id, .. }
            | RunEvent::ClientRetried { run_id, .. } => *run_id,
            RunEvent::Finished(outcome) => outcome.run_id,
        }
    }
}

pub type CommandEnvelope = Envelope<ExecuteCommand>;
pub type EventEnvelope = Envelope<RunEvent>;

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            project_id: Uuid::now_v7(),
            integration_id: Uuid::now_v7(),
            api_key_id: Uuid::now_v7(),
            member: None,
        }
    }

    #[test]
    fn command_round_trips_with_typed_arguments() {
        let mut arguments = serde_json::Map::new();
        arguments.insert("n".into(), serde_json::json!(1.5));
        arguments.insert("tags".into(), serde_json::json!(["a", {"b": null}]));
        let cmd = Envelope::new(
            Uuid::now_v7(),
            ExecuteCommand {
                run_id: Uuid::now_v7(),
                caller: caller(),
                tool_id: Uuid::now_v7(),
                tool_name: "t".into(),
                tool_version: 3,
                arguments,
                accepted_at: Utc::now(),
                reply_to: Some("x.reply.i.r".into()),
                keep_result_until: Some(Utc::now()),
                input: Some(CommandInput {
                    responses: serde_json::json!({"k": {"action": "accept"}})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                    state: Some("s".into()),
                }),
                origin: Some(RunOrigin {
                    trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
                    idempotency_key: Some("k".into()),
                    redrive_of: Some(Uuid::now_v7()),
                }),
                progress: false,
            },
        );
        let bytes = cmd.encode().expect("encode");
        assert_eq!(Envelope::<ExecuteCommand>::decode(&bytes).expect("decode"), cmd);
    }

    /// A command of an older ingress has no `progress` field: its caller gets the
    /// attempt's progress messages, as before the field existed.
    #[test]
    fn an_older_command_without_progress_gets_progress_messages() {
        let command = ExecuteCommand {
            run_id: Uuid::now_v7(),
            caller: caller(),
            tool_id: Uuid::now_v7(),
            tool_name: "t".into(),
            tool_version: 1,
            arguments: serde_json::Map::new(),
            accepted_at: Utc::now(),
            reply_to: Some("x.reply.i.r".into()),
            keep_result_until: None,
            input: None,
            origin: None,
            progress: false,
        };
        let mut older = serde_json::to_value(&command).expect("json");
        older.as_object_mut().expect("an object").remove("progress");
        let bytes = Envelope::new(Uuid::now_v7(), older).encode().expect("encode");
        let decoded = Envelope::<ExecuteCommand>::decode(&bytes).expect("decode");
        assert!(decoded.body.progress);
        assert_eq!(decoded.body.run_id, command.run_id);
    }

    #[test]
    fn ids_are_encoded_as_strings() {
        let id = Uuid::now_v7();
        let bytes = Envelope::new(id, 1u8).encode().expect("encode");
        let needle = id.to_string();
        assert!(bytes.windows(needle.len()).any(|w| w == needle.as_bytes()));
    }

    #[test]
    fn response_bodies_keep_their_bytes() {
        let text = UpstreamResponse::from_bytes(200, None, b"hello".to_vec(), 5, false);
        assert_eq!(
            (text.body.as_str(), text.encoding, text.truncated),
            ("hello", BodyEncoding::Text, false)
        );
        let binary = UpstreamResponse::from_bytes(200, None, vec![0x89, b'P', 0xff, 0], 10, true);
        assert_eq!(binary.encoding, BodyEncoding::Base64);
        assert!(binary.truncated);
        assert_eq!(binary.bytes(), Some(vec![0x89, b'P', 0xff, 0]));
        assert_eq!(binary.kept_bytes(), 4);
        assert_eq!(binary.size, Some(10));
        // A body cut inside a character is still text, without the partial character.
        let cut = UpstreamResponse::from_bytes(200, None, "aé".as_bytes()[..2].to_vec(), 3, true);
        assert_eq!((cut.body.as_str(), cut.encoding), ("a", BodyEncoding::Text));
        // An incomplete character at the end of a whole body is not text.
        let whole = UpstreamResponse::from_bytes(200, None, "aé".as_bytes()[..2].to_vec(), 2, false);
        assert_eq!(whole.encoding, BodyEncoding::Base64);
    }

    #[test]
    fn responses_of_older_workers_still_decode() {
        #[derive(Serialize, Deserialize)]
        struct Before {
            http_status: u16,
            content_type: Option<String>,
            body: String,
        }
        let old = Envelope::new(
            Uuid::now_v7(),
            Before {
                http_status: 200,
                content_type: None,
                body: "ok".into(),
            },
        );
        let decoded = Envelope::<UpstreamResponse>::decode(&old.encode().expect("encode")).expect("decode");
        assert_eq!(decoded.body.encoding, BodyEncoding::Text);
        assert!(!decoded.body.truncated);
        assert_eq!(decoded.body.size, None);
    }

    #[test]
    fn accepted_events_and_bodies_of_older_services_still_decode() {
        // As an ingress and a worker before `origin` and the kept arguments wrote them.
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Before {
            Accepted {
                run_id: Uuid,
                caller: Caller,
                tool_name: String,
                accepted_at: DateTime<Utc>,
            },
        }
        #[derive(Serialize)]
        struct BodiesBefore {
            request: Option<String>,
            response: Option<String>,
            truncated: bool,
        }
        let old = Envelope {
            v: ENVELOPE_VERSION,
            id: Uuid::now_v7(),
            at: Utc::now(),
            body: Before::Accepted {
                run_id: Uuid::now_v7(),
                caller: caller(),
                tool_name: "t".into(),
                accepted_at: Utc::now(),
            },
        };
        let mut out = Vec::new();
        let mut serializer = rmp_serde::Serializer::new(&mut out)
            .with_struct_map()
            .with_human_readable();
        old.serialize(&mut serializer).expect("encode");
        let decoded = EventEnvelope::decode(&out).expect("decode");
        assert!(matches!(decoded.body, RunEvent::Accepted { origin: None, .. }));
        let bodies = serde_json::to_value(BodiesBefore {
            request: None,
            response: Some("ok".into()),
            truncated: false,
        })
        .expect("json");
        let bodies: RunBodies = serde_json::from_value(bodies).expect("decode");
        assert_eq!((bodies.arguments, bodies.arguments_altered), (None, false));
    }

    #[test]
    fn event_round_trips_and_version_is_checked() {
        let ev = Envelope::new(
            Uuid::now_v7(),
            RunEvent::Rejected {
                run_id: Uuid::now_v7(),
                caller: caller(),
                tool_name: "t".into(),
                accepted_at: Utc::now(),
                error_class: ErrorClass::InvalidArguments,
                error: "bad".into(),
            },
        );
        let bytes = ev.encode().expect("encode");
        assert_eq!(EventEnvelope::decode(&bytes).expect("decode"), ev);

        let mut future = ev.clone();
        future.v = 99;
        let bytes = future.encode().expect("encode");
        assert!(matches!(EventEnvelope::decode(&bytes), Err(EnvelopeError::Version(99))));
        assert!(EventEnvelope::decode(b"\xc1garbage").is_err());
    }
}

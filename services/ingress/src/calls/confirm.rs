//! Client approval (tools with `approval: client`): the user confirms each call
//! before it reaches the API.
//!
//! Revision 2026-07-28 (multi round-trip requests): the first `tools/call` is
//! answered with an `InputRequiredResult` holding one form elicitation (the tool,
//! the rendered request's method and path, the arguments) and a sealed
//! `requestState` ([`crate::request_state`]); only a re-issued call carrying that
//! state and an accepting answer runs. The state is bound to the credential, the
//! tool and its arguments, expires after `ingress.input_ttl_secs`, and is single
//! use: its nonce is spent in the idempotency bucket by the run it admitted. A
//! client that must re-issue a confirmed call (a broken stream) sends an
//! `Idempotency-Key`: the retry then follows the first run.
//!
//! 2025-11-25 sessions: the confirmation is an `elicitation/create` request on the
//! call's own stream ([`super::elicitation`]) when the client declared elicitation
//! at `initialize`; otherwise the call is refused with a clear error.

use serde_json::{Map, Value, json};
use tengine_core::{
    domain::ToolDefinition,
    envelope::{CommandInput, ErrorClass, RunStatus},
    templates,
};
use uuid::Uuid;

use super::{Call, Era, Step, Stop, idempotency};
use crate::{
    asks,
    jsonrpc::RpcError,
    request_state::{Asked, StateError, Subject},
    results,
};

/// The key of the confirmation in `inputRequests` / `inputResponses`.
pub const CONFIRM_KEY: &str = "tengine_confirm";
/// The boolean field of the confirmation form.
const CONFIRM_FIELD: &str = "confirm";
/// How much of the arguments the user is shown (the rest is cut, and says so).
const SHOWN_ARGUMENTS: usize = 1_500;

/// The multi round-trip fields of a `tools/call`.
#[derive(Default)]
pub(super) struct Input {
    pub(super) responses: Option<Value>,
    pub(super) state: Option<Value>,
}

impl Input {
    /// Takes `inputResponses` and `requestState` out of the raw params.
    pub(super) fn take(params: &mut Option<Value>) -> Self {
        let Some(Value::Object(fields)) = params else {
            return Self::default();
        };
        Self {
            responses: fields.remove("inputResponses"),
            state: fields.remove("requestState"),
        }
    }
}

/// What the user decided.
pub(super) enum Answer {
    Confirmed,
    Declined(&'static str),
}

/// Reads the user's answer to a confirmation form (an `ElicitResult`); `None`
/// when it is missing or not an answer (the user is asked again).
pub(super) fn answer(response: Option<&Value>) -> Option<Answer> {
    let response = response?;
    match response.get("action")?.as_str()? {
        "accept" => Some(
            if response
                .get("content")
                .and_then(|c| c.get(CONFIRM_FIELD))
                .and_then(Value::as_bool)
                == Some(true)
            {
                Answer::Confirmed
            } else {
                Answer::Declined("the user did not confirm the call")
            },
        ),
        "decline" => Some(Answer::Declined("the user declined the call")),
        "cancel" => Some(Answer::Declined("the user dismissed the confirmation")),
        _ => None,
    }
}

/// Whether client capabilities allow a form elicitation (an empty `elicitation`
/// object means form mode).
pub(crate) fn can_elicit_form(capabilities: &Map<String, Value>) -> bool {
    match capabilities.get("elicitation") {
        Some(Value::Object(modes)) => modes.is_empty() || modes.contains_key("form"),
        _ => false,
    }
}

/// The `elicitation/create` params asking the user to confirm this call.
pub(super) fn elicitation(tool: &ToolDefinition, arguments: &Map<String, Value>, call: &Call, note: &str) -> Value {
    let ctx = templates::Context {
        arguments,
        reserved: templates::reserved_variables(call.caller(), call.run_id),
    };
    // The arguments were rendered once already (validate); this cannot fail then.
    let request = tengine_core::request::render(tool, &ctx)
        .map(|r| match r.url.query() {
            Some(query) => format!("{} {}?{query}", r.method.as_str(), r.url.path()),
            None => format!("{} {}", r.method.as_str(), r.url.path()),
        })
        .unwrap_or_else(|_| format!("{} {}", tool.http_method.as_str(), tool.endpoint_path));
    let mut shown = Value::Object(arguments.clone()).to_string();
    if shown.len() > SHOWN_ARGUMENTS {
        let cut = (0..=SHOWN_ARGUMENTS)
            .rev()
            .find(|i| shown.is_char_boundary(*i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push_str("… (cut)");
    }
    let message = format!(
        "{note}Allow the tool `{}` to send this request to {}?\n{request}\nArguments: {shown}",
        tool.name, tool.base_url
    );
    json!({
        "mode": "form",
        "message": message,
        "requestedSchema": {
            "type": "object",
            "properties": {
                CONFIRM_FIELD: {
                    "type": "boolean",
                    "title": "Send this request",
                    "description": "Tengine sends it only if you confirm.",
                    "default": false
                }
            },
            "required": [CONFIRM_FIELD]
        }
    })
}

/// What admits a call to run, from its multi round-trip fields.
#[derive(Default)]
pub(super) struct Admission {
    /// The nonce of the state that admitted the call: spent by its run.
    pub(super) nonce: Option<String>,
    /// The client's answers to the API's input requests, for the API.
    pub(super) input: Option<CommandInput>,
    /// Rounds the call took before this one.
    pub(super) round: u32,
}

impl Call {
    /// The input step of a 2026-07-28 call: a client approval asked or checked
    /// (tools with `approval: client`), or a re-issued call's answers to the API's
    /// input requests ([`crate::asks`]) checked against their `requestState`.
    pub(super) async fn admit(
        &self,
        tool: &ToolDefinition,
        arguments: &Map<String, Value>,
        input: Input,
    ) -> Step<Admission> {
        let Era::Modern { capabilities, .. } = &self.era else {
            // Sessions are asked on the call's stream (`confirm_in_session`).
            return Ok(Admission::default());
        };
        let confirms = tool.approval == tengine_core::domain::Approval::Client;
        if confirms && !can_elicit_form(capabilities) {
            let what = format!("tool `{}` (the user confirms each call)", tool.name);
            return Err(RpcError::missing_capability(&self.id, json!({"elicitation": {"form": {}}}), &what).into());
        }
        let fingerprint = idempotency::fingerprint(&tool.name, arguments);
        let subject = Subject {
            caller: self.caller(),
            tool_id: tool.id,
            tool_version: tool.version,
            fingerprint: &fingerprint,
        };
        let responses = self.responses(input.responses)?;
        let state = match input.state {
            // A confirmation needs its sealed state: answers alone confirm nothing.
            None if confirms => return Err(self.ask(tool, arguments, &subject, "")),
            // Answers without a state are the client's word, passed on as such (the
            // API's own state only ever comes back sealed).
            None => {
                let input = (!responses.is_empty()).then_some(CommandInput { responses, state: None });
                return Ok(Admission {
                    input,
                    ..Admission::default()
                });
            }
            Some(Value::String(state)) => state,
            Some(_) => {
                return Err(self
                    .refuse_state("requestState must be the string this server returned")
                    .into());
            }
        };
        let checked = match self.st.request_states.check(&state, &subject) {
            Ok(checked) => checked,
            Err(StateError::Expired) if confirms => {
                return Err(self.ask(tool, arguments, &subject, "The earlier confirmation expired. "));
            }
            Err(StateError::ToolChanged) if confirms => {
                return Err(self.ask(tool, arguments, &subject, "The tool changed since. "));
            }
            Err(refused) => {
                return Err(self
                    .refuse_state(format!("{refused}; call the tool again without requestState"))
                    .into());
            }
        };
        match checked.asked {
            Asked::Confirmation => match answer(responses.get(CONFIRM_KEY)) {
                // Missing or unreadable: ask again (the spec's advice), with a fresh state.
                None => Err(self.ask(tool, arguments, &subject, "")),
                Some(Answer::Confirmed) => Ok(Admission {
                    nonce: Some(checked.nonce),
                    ..Admission::default()
                }),
                Some(Answer::Declined(why)) => Err(self.declined(tool, why).await),
            },
            // The API's next round (a call it asked about was confirmed before).
            Asked::Input { state, round } => Ok(Admission {
                nonce: Some(checked.nonce),
                input: Some(CommandInput { responses, state }),
                round,
            }),
        }
    }

    /// `inputResponses`: an object, bounded (they travel to the API in a header).
    fn responses(&self, responses: Option<Value>) -> Step<Map<String, Value>> {
        let responses = match responses {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(responses)) => responses,
            Some(_) => return Err(RpcError::invalid_params(&self.id, "inputResponses must be an object").into()),
        };
        let max = asks::MAX_RESPONSES_BYTES;
        if Value::Object(responses.clone()).to_string().len() > max {
            let message = format!("inputResponses take more than {max} bytes as JSON");
            return Err(RpcError::invalid_params(&self.id, message).into());
        }
        Ok(responses)
    }

    /// An `InputRequiredResult` asking the user to confirm the call.
    fn ask(&self, tool: &ToolDefinition, arguments: &Map<String, Value>, subject: &Subject<'_>, note: &str) -> Stop {
        Stop::Result(json!({
            "resultType": "input_required",
            "inputRequests": {
                CONFIRM_KEY: {"method": "elicitation/create", "params": elicitation(tool, arguments, self, note)}
            },
            "requestState": self.st.request_states.issue(subject, Asked::Confirmation),
        }))
    }

    fn refuse_state(&self, message: impl Into<String>) -> RpcError {
        let mut err = RpcError::invalid_params(&self.id, message);
        err.data = Some(json!({"field": "requestState"}));
        err
    }

    /// The user said no: in history as `rejected` / `approval_denied`, and the
    /// model reads why.
    pub(super) async fn declined(&self, tool: &ToolDefinition, why: &str) -> Stop {
        let message = format!("{why}; the API was not called");
        self.reject(&tool.name, ErrorClass::ApprovalDenied, &message).await;
        let meta = results::run_meta(self.run_id, RunStatus::Rejected, None);
        Stop::Result(results::tool_result(true, message, meta))
    }

    /// Spends a state's nonce for `run_id`: a `requestState` admits one run. Called
    /// once the call owns its key (a retry with the key follows the first run
    /// before it gets here).
    pub(super) async fn spend(&self, nonce: &str, run_id: Uuid, lease: Option<&idempotency::Lease>) -> Step<()> {
        let key = idempotency::Idempotency::key(self.caller().project_id, &format!("confirmation\n{nonce}"));
        let spent = self.st.idempotency.spend(&key, run_id).await;
        let refused = |err: RpcError| async {
            if let Some(lease) = lease {
                lease.release().await;
            }
            Stop::Error(err)
        };
        match spent {
            Ok(None) => Ok(()),
            Ok(Some(first)) if first == run_id => Ok(()),
            Ok(Some(first)) => Err(refused(self.refuse_state(format!(
                "this requestState was already used (run {first}): it admits one call; call the tool again \
                     without requestState, or re-issue with the first call's Idempotency-Key to get its outcome"
            )))
            .await),
            Err(err) => {
                tracing::error!(error = %err, "spending a confirmation");
                Err(refused(RpcError::internal(
                    &self.id,
                    "the confirmation could not be recorded right now; it was not run: retry",
                ))
                .await)
            }
        }
    }
}

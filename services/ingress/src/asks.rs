//! Input the API asks for (revision 2026-07-28 multi round-trip requests).
//!
//! An API that needs something from the user before it can finish (a form, a
//! model's answer, the client's roots) answers a call with `Content-Type:
//! application/vnd.tengine.input-required+json` and
//! `{"inputRequests": {...}, "state": "…"}`. Tengine answers the MCP client with
//! an `InputRequiredResult`: those requests the client declared capabilities
//! for, and a sealed `requestState` ([`crate::request_state`]) holding the API's
//! state, bound to the credential, the tool and the arguments, single use. When
//! the client re-issues the call with `inputResponses`, the API receives them
//! and its state in `X-Tengine-Input` (signed with the request). Each round is a
//! run of its own. A 2025-11-25 session is asked on the call's stream
//! (`calls::session_input`), a task through `tasks/update` (`crate::tasks`); a
//! caller that cannot take part gets a tool error saying so.

use serde_json::{Map, Value, json};
use tengine_core::envelope::{BodyEncoding, Caller, RunOutcome, UpstreamResponse};
use uuid::Uuid;

use crate::{
    AppState,
    request_state::{Asked, Subject},
    results,
};

/// The media type of an API's input requests.
pub const CONTENT_TYPE: &str = "application/vnd.tengine.input-required+json";
/// Rounds one call may take before Tengine stops asking.
pub const MAX_ROUNDS: u32 = 8;
/// The most `inputResponses` a re-issued call may carry (they travel in a header).
pub const MAX_RESPONSES_BYTES: usize = 16 * 1024;
const MAX_REQUESTS: usize = 16;
const MAX_KEY_LEN: usize = 100;
const MAX_STATE_BYTES: usize = 4 * 1024;

/// What an API's answer asks for.
pub struct Ask {
    /// The input requests, by key.
    pub requests: Map<String, Value>,
    /// The API's own state, for its next round.
    pub state: Option<String>,
}

/// The client capability each kind of input request needs.
pub fn capability_of(method: &str) -> Option<&'static str> {
    match method {
        "elicitation/create" => Some("elicitation"),
        "sampling/createMessage" => Some("sampling"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

/// The API's answer as an ask: `None` when it is not one.
pub fn parse(response: &UpstreamResponse) -> Option<Result<Ask, String>> {
    let media = response.content_type.as_deref()?.split(';').next()?.trim();
    media.eq_ignore_ascii_case(CONTENT_TYPE).then(|| parse_body(response))
}

fn parse_body(response: &UpstreamResponse) -> Result<Ask, String> {
    if !(200..300).contains(&response.http_status) {
        return Err(format!("it came with HTTP {}, not 2xx", response.http_status));
    }
    if response.truncated || response.encoding != BodyEncoding::Text {
        return Err("the body is larger than worker.max_response_bytes or not UTF-8".into());
    }
    let body: Value = serde_json::from_str(&response.body).map_err(|e| format!("the body is not JSON ({e})"))?;
    let requests = body
        .get("inputRequests")
        .and_then(Value::as_object)
        .filter(|r| !r.is_empty() && r.len() <= MAX_REQUESTS)
        .ok_or_else(|| format!("`inputRequests` must be an object of 1 to {MAX_REQUESTS} requests"))?;
    for (key, request) in requests {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(format!("input request keys must be 1 to {MAX_KEY_LEN} bytes"));
        }
        let method = request.get("method").and_then(Value::as_str).unwrap_or_default();
        if capability_of(method).is_none() {
            return Err(format!(
                "input request `{key}` must be elicitation/create, sampling/createMessage or roots/list"
            ));
        }
        if !request.get("params").is_none_or(Value::is_object) {
            return Err(format!("input request `{key}` has params that are not an object"));
        }
    }
    let state = match body.get("state") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_STATE_BYTES => Some(s.clone()),
        Some(_) => return Err(format!("`state` must be a string of at most {MAX_STATE_BYTES} bytes")),
    };
    Ok(Ask {
        requests: requests.clone(),
        state,
    })
}

/// The call an ask answers, to seal the next round's `requestState`: only a
/// 2026-07-28 `tools/call` answered directly has one.
///
/// It holds the call's arguments (moved out of its command once queued): the
/// digest the next `requestState` is bound to is computed only when the API
/// asks, not on every call.
#[derive(Clone)]
pub struct Asking {
    pub caller: Caller,
    pub tool_id: Uuid,
    pub tool_name: String,
    pub tool_version: i64,
    pub arguments: Map<String, Value>,
    /// The client capabilities declared on the request.
    pub capabilities: Map<String, Value>,
    /// Rounds the call has taken before this one.
    pub round: u32,
}

/// The result for a run whose API asked for input; `None` when it did not ask.
pub fn answer(st: &AppState, outcome: &RunOutcome, asking: Option<&Asking>) -> Option<Value> {
    let ask = parse(outcome.response.as_ref()?)?;
    results::count_call("input_required");
    let refuse = |text: String| Some(results::tool_result(true, text, results::outcome_meta(outcome)));
    let asking = match (ask, asking) {
        (Err(why), _) => return refuse(format!("The API's request for input is malformed: {why}.")),
        (Ok(_), None) => {
            return refuse(
                "The API asks the user for input, which cannot be given on this connection (a 2025-11-25 \
                 session whose client declared no elicitation, sampling or roots, or a resumed stream); call \
                 the tool over MCP revision 2026-07-28, or from a client that declares them."
                    .into(),
            );
        }
        (Ok(_), Some(asking)) if asking.round.saturating_add(1) >= MAX_ROUNDS => {
            return refuse(format!(
                "The API asked for input more than {MAX_ROUNDS} times; giving up."
            ));
        }
        (Ok(ask), Some(asking)) => (ask, asking),
    };
    let (ask, asking) = asking;
    // Only what the client can answer (the spec forbids asking for the rest).
    let (requests, unanswerable): (Map<String, Value>, Map<String, Value>) =
        ask.requests.into_iter().partition(|(_, request)| {
            let method = request.get("method").and_then(Value::as_str).unwrap_or_default();
            capability_of(method).is_some_and(|c| asking.capabilities.contains_key(c))
        });
    if requests.is_empty() {
        let mut needed: Vec<&str> = unanswerable
            .values()
            .filter_map(|r| capability_of(r.get("method").and_then(Value::as_str).unwrap_or_default()))
            .collect();
        needed.sort_unstable();
        needed.dedup();
        return refuse(format!(
            "The API asks the user for input that needs client capabilities this request did not declare: {}.",
            needed.join(", ")
        ));
    }
    let fingerprint = crate::calls::idempotency::fingerprint(&asking.tool_name, &asking.arguments);
    let subject = Subject {
        caller: &asking.caller,
        tool_id: asking.tool_id,
        tool_version: asking.tool_version,
        fingerprint: &fingerprint,
    };
    let asked = Asked::Input {
        state: ask.state,
        round: asking.round.saturating_add(1),
    };
    Some(json!({
        "resultType": "input_required",
        "inputRequests": requests,
        "requestState": st.request_states.issue(&subject, asked),
        "_meta": results::outcome_meta(outcome),
    }))
}

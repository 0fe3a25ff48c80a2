//! Opt-in request and response bodies in run history.
//!
//! When a project sets `store_bodies`, the worker puts the rendered request body
//! and the response body of a run's last attempt into its `Finished` event,
//! after redaction and capping, so nothing unredacted reaches run history.
//! Headers are never stored (tool secrets and signatures travel only in headers).
//!
//! Redaction: each `redact_fields` entry is a dotted path of object keys
//! (`password`, `card.number`) matched at any depth, arrays included: `card.number`
//! redacts `number` inside any object held by a `card` key. The value becomes
//! `"[REDACTED]"`. A body that is not JSON cannot be redacted field by field, so
//! when any field is configured it is replaced by a note instead of being stored.
//! A binary response body is never stored (a note gives its type and size).
//!
//! Both bodies travel in the `Finished` event, so together they get at most what
//! the event has left (`payload::bodies_budget`): each gets up to half of it,
//! and one may use what the other leaves.

use serde_json::Value;

use crate::envelope::{BodyEncoding, RunBodies, UpstreamResponse};

pub const REDACTED: &str = "[REDACTED]";
pub const NOT_JSON: &str = "[NOT STORED: the body is not JSON, and the project redacts fields]";
/// Largest `body_max_bytes` a project may set.
pub const MAX_BODY_BYTES: i64 = 1 << 20;

#[derive(Clone, Debug, Default)]
pub struct BodyPolicy {
    pub max_bytes: usize,
    /// Paths, split into their keys.
    pub redact: Vec<Vec<String>>,
}

impl BodyPolicy {
    pub fn new(max_bytes: i32, redact_fields: &[String]) -> Self {
        Self {
            max_bytes: usize::try_from(max_bytes).unwrap_or(0),
            redact: redact_fields
                .iter()
                .map(|f| f.split('.').map(str::to_string).collect())
                .collect(),
        }
    }

    /// The bodies to keep: redacted, then capped to `max_bytes` each and to
    /// `budget` bytes together. A response the API sent in part only (larger than
    /// `worker.max_response_bytes`) is flagged `truncated` too.
    pub fn capture(&self, request: Option<&[u8]>, response: Option<&UpstreamResponse>, budget: usize) -> RunBodies {
        let request = request.map(|bytes| self.redact(bytes));
        let cut_upstream = response.is_some_and(|r| r.truncated);
        let response = response.map(|r| match r.encoding {
            BodyEncoding::Text => self.redact(r.body.as_bytes()),
            BodyEncoding::Base64 => binary_note(r),
        });
        let wants = |body: &Option<String>| body.as_ref().map_or(0, |b| b.len().min(self.max_bytes));
        let (request_wants, response_wants) = (wants(&request), wants(&response));
        let request_cap = request_wants.min(budget.saturating_sub(response_wants.min(budget / 2)));
        let response_cap = response_wants.min(budget.saturating_sub(request_cap));
        let mut truncated = cut_upstream;
        let mut keep = |body: String, cap: usize| {
            let (text, cut) = cap_at(body, cap);
            truncated |= cut;
            text
        };
        let request = request.map(|b| keep(b, request_cap));
        let response = response.map(|b| keep(b, response_cap));
        RunBodies {
            request,
            response,
            truncated,
            ..RunBodies::default()
        }
    }

    /// Adds the call's arguments to `bodies` (what a re-drive runs again), redacted
    /// like the bodies, within `max_bytes` and what `budget` leaves after them.
    /// Arguments that redaction changed are kept redacted, for reading, and flagged;
    /// arguments too large are not kept, and flagged.
    pub fn keep_arguments(&self, bodies: &mut RunBodies, arguments: &serde_json::Map<String, Value>, budget: usize) {
        let original = Value::Object(arguments.clone());
        let mut redacted = original.clone();
        redact_value(&mut redacted, &self.redact, &mut Vec::new());
        let text = redacted.to_string();
        let used = [&bodies.request, &bodies.response]
            .iter()
            .map(|b| b.as_ref().map_or(0, String::len))
            .fold(0usize, usize::saturating_add);
        let room = self.max_bytes.min(budget.saturating_sub(used));
        bodies.arguments_altered = redacted != original || text.len() > room;
        bodies.arguments = (text.len() <= room).then_some(text);
    }

    fn redact(&self, bytes: &[u8]) -> String {
        if self.redact.is_empty() {
            return String::from_utf8_lossy(bytes).into_owned();
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(mut value) => {
                redact_value(&mut value, &self.redact, &mut Vec::new());
                value.to_string()
            }
            Err(_) => NOT_JSON.to_string(),
        }
    }
}

/// What is stored instead of a binary body.
fn binary_note(response: &UpstreamResponse) -> String {
    format!(
        "[NOT STORED: a binary body ({}, {} bytes)]",
        response.content_type.as_deref().unwrap_or("no content type"),
        response.size.unwrap_or(0)
    )
}

/// `text` cut to at most `max` bytes at a character boundary; whether it was cut.
fn cap_at(mut text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        // 0 is always a boundary, so this stops.
        end = end.saturating_sub(1);
    }
    text.truncate(end);
    (text, true)
}

/// Replaces every member whose key path ends with one of `paths`.
fn redact_value(value: &mut Value, paths: &[Vec<String>], keys: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, member) in map.iter_mut() {
                keys.push(key.clone());
                let hit = paths.iter().any(|p| {
                    keys.len()
                        .checked_sub(p.len())
                        .is_some_and(|from| keys[from..] == p[..])
                });
                if hit {
                    *member = Value::String(REDACTED.into());
                } else {
                    redact_value(member, paths, keys);
                }
                keys.pop();
            }
        }
        // Arrays are transparent: `card.number` reaches into `card: [{number}, …]`.
        Value::Array(items) => items.iter_mut().for_each(|item| redact_value(item, paths, keys)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_paths_at_any_depth_and_inside_arrays() {
        let policy = BodyPolicy::new(4096, &["password".into(), "card.number".into()]);
        let body = json!({"password": "p", "user": {"password": "q", "card": {"number": "4111", "cvc": "1"}},
                          "cards": [{"card": {"number": "5500"}}], "number": "keep", "items": [{"password": "r"}]});
        let kept = policy.capture(Some(body.to_string().as_bytes()), None, usize::MAX);
        let value: Value = serde_json::from_str(kept.request.as_deref().unwrap_or_default()).expect("json");
        assert_eq!(value["password"], REDACTED);
        assert_eq!(value["user"]["password"], REDACTED);
        assert_eq!(value["user"]["card"]["number"], REDACTED);
        assert_eq!(value["user"]["card"]["cvc"], "1");
        assert_eq!(value["cards"][0]["card"]["number"], REDACTED);
        assert_eq!(value["number"], "keep");
        assert_eq!(value["items"][0]["password"], REDACTED);
        assert!(!kept.truncated);
    }

    #[test]
    fn keeps_arguments_redacted_and_flags_what_cannot_be_run_again() {
        let policy = BodyPolicy::new(64, &["password".into()]);
        let args = |v: Value| v.as_object().cloned().unwrap_or_default();
        let mut kept = RunBodies::default();
        policy.keep_arguments(&mut kept, &args(json!({"q": "x"})), usize::MAX);
        assert_eq!(
            (kept.arguments.as_deref(), kept.arguments_altered),
            (Some(r#"{"q":"x"}"#), false)
        );
        policy.keep_arguments(&mut kept, &args(json!({"q": "x", "password": "p"})), usize::MAX);
        assert_eq!(kept.arguments.as_deref(), Some(r#"{"password":"[REDACTED]","q":"x"}"#));
        assert!(kept.arguments_altered);
        policy.keep_arguments(&mut kept, &args(json!({"q": "y".repeat(100)})), usize::MAX);
        assert_eq!((kept.arguments.as_deref(), kept.arguments_altered), (None, true));
        policy.keep_arguments(&mut kept, &args(json!({"q": "x"})), 4);
        assert_eq!((kept.arguments.as_deref(), kept.arguments_altered), (None, true));
    }

    #[test]
    fn caps_at_a_character_boundary_and_withholds_non_json() {
        let policy = BodyPolicy::new(5, &[]);
        let kept = policy.capture(Some("ééééé".as_bytes()), Some(&text("abc")), usize::MAX);
        assert_eq!(kept.request.as_deref(), Some("éé"));
        assert_eq!(kept.response.as_deref(), Some("abc"));
        assert!(kept.truncated);
        let policy = BodyPolicy::new(100, &["password".into()]);
        assert_eq!(
            policy
                .capture(None, Some(&text("password=x")), usize::MAX)
                .response
                .as_deref(),
            Some(NOT_JSON)
        );
    }

    fn text(body: &str) -> UpstreamResponse {
        UpstreamResponse::from_bytes(200, None, body.as_bytes().to_vec(), body.len() as u64, false)
    }

    #[test]
    fn both_bodies_share_the_budget() {
        let policy = BodyPolicy::new(1000, &[]);
        let (big, small) = ("q".repeat(800), "s".repeat(10));
        // Each gets half, then what the other leaves.
        let kept = policy.capture(Some(big.as_bytes()), Some(&text(&big)), 600);
        assert_eq!(kept.request.as_ref().map(String::len), Some(300));
        assert_eq!(kept.response.as_ref().map(String::len), Some(300));
        assert!(kept.truncated);
        let kept = policy.capture(Some(big.as_bytes()), Some(&text(&small)), 600);
        assert_eq!(kept.request.as_ref().map(String::len), Some(590));
        assert_eq!(kept.response.as_deref(), Some(small.as_str()));
        let kept = policy.capture(Some(small.as_bytes()), Some(&text(&big)), 600);
        assert_eq!(kept.response.as_ref().map(String::len), Some(590));
        let kept = policy.capture(Some(big.as_bytes()), Some(&text(&big)), 0);
        assert_eq!(
            (kept.request.as_deref(), kept.response.as_deref()),
            (Some(""), Some(""))
        );
        // Within budget and max_bytes: untouched.
        let kept = policy.capture(Some(small.as_bytes()), Some(&text(&small)), 600);
        assert!(!kept.truncated);
    }

    #[test]
    fn binary_and_upstream_truncated_responses() {
        let policy = BodyPolicy::new(1000, &[]);
        let binary = UpstreamResponse::from_bytes(200, Some("image/png".into()), vec![0xff; 10], 10, false);
        let kept = policy.capture(None, Some(&binary), 1000);
        assert_eq!(
            kept.response.as_deref(),
            Some("[NOT STORED: a binary body (image/png, 10 bytes)]")
        );
        let cut = UpstreamResponse::from_bytes(200, None, b"abc".to_vec(), 100, true);
        assert!(policy.capture(None, Some(&cut), 1000).truncated);
    }
}

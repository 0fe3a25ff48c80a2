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

use serde_json::Value;

use crate::envelope::RunBodies;

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

    /// The bodies to keep: redacted, then capped to `max_bytes` each.
    pub fn capture(&self, request: Option<&[u8]>, response: Option<&str>) -> RunBodies {
        let mut truncated = false;
        let mut keep = |bytes: &[u8]| {
            let (text, cut) = self.cap(self.redact(bytes));
            truncated |= cut;
            text
        };
        let request = request.map(&mut keep);
        let response = response.map(|r| keep(r.as_bytes()));
        RunBodies {
            request,
            response,
            truncated,
        }
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

    fn cap(&self, text: String) -> (String, bool) {
        if text.len() <= self.max_bytes {
            return (text, false);
        }
        let mut end = self.max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        (text[..end].to_string(), true)
    }
}

/// Replaces every member whose key path ends with one of `paths`.
fn redact_value(value: &mut Value, paths: &[Vec<String>], keys: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, member) in map.iter_mut() {
                keys.push(key.clone());
                let hit = paths
                    .iter()
                    .any(|p| keys.len() >= p.len() && keys[keys.len() - p.len()..] == p[..]);
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
        let kept = policy.capture(Some(body.to_string().as_bytes()), None);
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
    fn caps_at_a_character_boundary_and_withholds_non_json() {
        let policy = BodyPolicy::new(5, &[]);
        let kept = policy.capture(Some("ééééé".as_bytes()), Some("abc"));
        assert_eq!(kept.request.as_deref(), Some("éé"));
        assert_eq!(kept.response.as_deref(), Some("abc"));
        assert!(kept.truncated);
        let policy = BodyPolicy::new(100, &["password".into()]);
        assert_eq!(
            policy.capture(None, Some("password=x")).response.as_deref(),
            Some(NOT_JSON)
        );
    }
}

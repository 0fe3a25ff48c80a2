//! Text PostgreSQL can store. A `text` value may not contain NUL (U+0000: the
//! server answers SQLSTATE 22021 and the whole statement fails), nor may a
//! `jsonb` string or object key (`\u0000`). Everything Tengine writes that came
//! from a caller, an upstream API or a tenant's configuration goes through here
//! first, so one character can never make a write fail, least of all the
//! projector's, which would otherwise retry that batch forever.
//!
//! The escape is visible and documented: each NUL becomes U+2400 SYMBOL FOR NULL
//! (`␀`). Lookups apply the same mapping, so a value finds what was stored for
//! it; the only cost is that `a\0b` and `a␀b` are the same value once stored.
//! Rust strings are valid UTF-8, so NUL is the only character to escape
//! (invalid bytes were replaced when the text was decoded).

use std::borrow::Cow;

use serde_json::Value;

/// What a NUL is stored as.
pub const NUL_ESCAPE: &str = "\u{2400}";

/// `value` with every NUL escaped; borrowed (no copy) when there is none.
pub fn text(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', NUL_ESCAPE))
    } else {
        Cow::Borrowed(value)
    }
}

/// [`text`] into an owned string (for column arrays).
pub fn owned(value: &str) -> String {
    text(value).into_owned()
}

/// [`text`] of each value (for `text[]` columns).
pub fn owned_all(values: &[String]) -> Vec<String> {
    values.iter().map(|v| owned(v)).collect()
}

/// `value` with NUL escaped in every string and object key, at any depth;
/// borrowed when there is none.
pub fn json(value: &Value) -> Cow<'_, Value> {
    if nul_path(value).is_none() {
        return Cow::Borrowed(value);
    }
    Cow::Owned(escaped(value))
}

fn escaped(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(owned(s)),
        Value::Array(items) => Value::Array(items.iter().map(escaped).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (owned(k), escaped(v))).collect()),
        other => other.clone(),
    }
}

/// Where the first NUL in `value` is, as a field path (`input_schema.properties.a␀`,
/// `allowed_tools[2]`; `""` for the value itself); `None` when there is none.
/// Keys in the path are shown escaped.
pub fn nul_path(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => s.contains('\0').then(String::new),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_path(item).map(|rest| join(&format!("[{i}]"), &rest))),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let here = owned(key);
            if key.contains('\0') {
                return Some(here);
            }
            nul_path(item).map(|rest| join(&here, &rest))
        }),
        _ => None,
    }
}

fn join(head: &str, rest: &str) -> String {
    if rest.is_empty() || rest.starts_with('[') {
        format!("{head}{rest}")
    } else {
        format!("{head}.{rest}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_without_nul_is_not_copied() {
        assert!(matches!(text("plain ✓ text"), Cow::Borrowed("plain ✓ text")));
    }

    #[test]
    fn nul_becomes_the_visible_symbol() {
        assert_eq!(text("a\0b\0"), "a␀b␀");
        assert_eq!(owned("\0"), "␀");
    }

    #[test]
    fn json_strings_and_keys_are_escaped_at_any_depth() {
        let value = json!({"a\u{0}": ["x\u{0}", {"k": "v\u{0}", "n": 1}], "ok": true, "s": null});
        assert_eq!(
            json(&value).into_owned(),
            json!({"a␀": ["x␀", {"k": "v␀", "n": 1}], "ok": true, "s": null})
        );
        let clean = json!({"a": [1, "b", {"c": false}]});
        assert!(matches!(json(&clean), Cow::Borrowed(_)));
    }

    #[test]
    fn nul_path_names_the_field() {
        assert_eq!(nul_path(&json!({"a": 1})), None);
        assert_eq!(nul_path(&json!("x\u{0}")).as_deref(), Some(""));
        assert_eq!(
            nul_path(&json!({"input_schema": {"properties": {"a\u{0}b": {}}}})).as_deref(),
            Some("input_schema.properties.a␀b")
        );
        assert_eq!(
            nul_path(&json!({"allowed_tools": ["ok", "b\u{0}"]})).as_deref(),
            Some("allowed_tools[1]")
        );
        assert_eq!(
            nul_path(&json!({"x": [[{"y": "\u{0}"}]]})).as_deref(),
            Some("x[0][0].y")
        );
    }

    #[test]
    fn escaped_json_has_no_nul_left() {
        let value = json!({"\u{0}": {"\u{0}": ["\u{0}\u{0}"]}});
        assert_eq!(nul_path(&json(&value)), None);
    }
}

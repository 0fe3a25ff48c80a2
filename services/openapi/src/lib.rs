//! OpenAPI import: an OpenAPI 3.0 or 3.1 document (JSON or YAML) turned into one
//! plan per operation, the tool spec that calls it or why it cannot be one. Pure:
//! no I/O, no database; the admin API (`POST /v1/projects/{id}/tools/import`)
//! fetches, compares with the stored tools and applies.
//!
//! The document is walked as a `serde_json::Value` rather than a typed model: the
//! maintained typed crates each read one version only (`openapiv3` 3.0, `oas3`
//! 3.1), and an importer must read both and survive documents that are only
//! nearly valid (one bad operation is a skip reason, never a failed import).
//!
//! The mapping rules are in docs/openapi-import.md.

// Documents are untrusted input: no arithmetic on them may panic.
#![deny(clippy::arithmetic_side_effects)]

mod names;
mod plan;
mod schema;
mod servers;

use serde_json::Value;

pub use names::{NAME_MAX, normalize_name, unique_name};
pub use plan::{Location, Operation, Options, Outcome, Plan, PlannedTool, Source, SuggestedAuth, plan};

/// The OpenAPI major versions understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V30,
    V31,
}

/// Why a whole document is refused (an operation's problems are skip reasons instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("the document is neither JSON nor YAML: {0}")]
    Syntax(String),
    #[error(
        "this is a Swagger 2.0 document; only OpenAPI 3.0 and 3.1 are imported (convert it first, e.g. with \
         swagger2openapi or the Swagger Editor's \"Convert to OpenAPI 3\")"
    )]
    Swagger2,
    #[error("the document is not OpenAPI: it has no `openapi` version field at its top level")]
    NotOpenApi,
    #[error("OpenAPI {0} is not supported; 3.0.x and 3.1.x are")]
    Unsupported(String),
}

/// Parses a document: JSON when it starts with `{`, YAML otherwise (YAML is a
/// superset of JSON, but the JSON parser is much faster on large documents).
/// Both parsers bound nesting depth (128), so a hostile document cannot exhaust
/// the stack; YAML aliases are expanded by the parser under its own limit.
pub fn parse(bytes: &[u8]) -> Result<Value, DocumentError> {
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        serde_json::from_slice(text).map_err(|e| DocumentError::Syntax(format!("invalid JSON: {e}")))
    } else {
        serde_norway::from_slice(text).map_err(|e| DocumentError::Syntax(format!("invalid YAML: {e}")))
    }
}

/// The document's OpenAPI version, or why it is refused.
pub fn version(document: &Value) -> Result<Version, DocumentError> {
    if document.get("swagger").is_some() {
        return Err(DocumentError::Swagger2);
    }
    let Some(raw) = document.get("openapi") else {
        return Err(DocumentError::NotOpenApi);
    };
    let text = match raw {
        Value::String(s) => s.clone(),
        // A YAML `openapi: 3.0` reads as a number.
        Value::Number(n) => n.to_string(),
        _ => return Err(DocumentError::NotOpenApi),
    };
    if text == "3.0" || text.starts_with("3.0.") {
        Ok(Version::V30)
    } else if text == "3.1" || text.starts_with("3.1.") {
        Ok(Version::V31)
    } else {
        Err(DocumentError::Unsupported(text))
    }
}

#[cfg(test)]
mod tests;

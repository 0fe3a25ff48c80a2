//! Argument validation against a tool's input schema (JSON Schema, 2020-12 by
//! default) with compiled validators cached per tool version.

use std::sync::Arc;

use moka::sync::Cache;
use serde_json::Value;
use tengine_core::domain::ToolDefinition;
use uuid::Uuid;

/// At most this many schema errors are reported for one call.
const MAX_REPORTED: usize = 10;

#[derive(Clone)]
pub struct Validators {
    cache: Cache<(Uuid, i64), Arc<jsonschema::Validator>>,
}

impl Validators {
    pub fn new(capacity: u64) -> Self {
        Self {
            cache: Cache::new(capacity),
        }
    }

    /// The schema violations of `arguments`, each as `<json pointer>: <problem>`.
    pub fn check(&self, tool: &ToolDefinition, arguments: &Value) -> Result<Vec<String>, String> {
        let key = (tool.id, tool.version);
        let validator = match self.cache.get(&key) {
            Some(v) => v,
            None => {
                let compiled = jsonschema::validator_for(&tool.input_schema)
                    .map_err(|e| format!("the input schema of tool `{}` does not compile: {e}", tool.name))?;
                let compiled = Arc::new(compiled);
                self.cache.insert(key, compiled.clone());
                compiled
            }
        };
        Ok(validator
            .iter_errors(arguments)
            .take(MAX_REPORTED)
            .map(|e| {
                let path = e.instance_path().as_str().to_string();
                let path = if path.is_empty() {
                    "(arguments)".to_string()
                } else {
                    path
                };
                format!("{path}: {e}")
            })
            .collect())
    }
}

/// Registration-time check that a schema compiles.
pub fn compiles(schema: &Value) -> Result<(), String> {
    jsonschema::validator_for(schema).map(|_| ()).map_err(|e| e.to_string())
}

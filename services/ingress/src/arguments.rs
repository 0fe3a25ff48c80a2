//! Argument validation against a tool's input schema (JSON Schema, 2020-12 by
//! default) with compiled validators cached per tool version.

use std::sync::Arc;

use moka::sync::Cache;
use serde_json::Value;
use tengine_core::domain::ToolDefinition;
use uuid::Uuid;

/// At most this many schema errors are reported for one call.
const MAX_REPORTED: usize = 10;

/// Which of a tool's schemas a validator was compiled from.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
enum Side {
    Input,
    Output,
}

#[derive(Clone)]
pub struct Validators {
    cache: Cache<(Uuid, i64, Side), Arc<jsonschema::Validator>>,
}

impl Validators {
    pub fn new(capacity: u64) -> Self {
        Self {
            cache: Cache::new(capacity),
        }
    }

    fn compiled(
        &self,
        tool: &ToolDefinition,
        side: Side,
        schema: &Value,
    ) -> Result<Arc<jsonschema::Validator>, String> {
        let key = (tool.id, tool.version, side);
        if let Some(v) = self.cache.get(&key) {
            return Ok(v);
        }
        let compiled = Arc::new(
            jsonschema::validator_for(schema)
                .map_err(|e| format!("a schema of tool `{}` does not compile: {e}", tool.name))?,
        );
        self.cache.insert(key, compiled.clone());
        Ok(compiled)
    }

    fn problems(validator: &jsonschema::Validator, instance: &Value, root: &str) -> Vec<String> {
        validator
            .iter_errors(instance)
            .take(MAX_REPORTED)
            .map(|e| {
                let path = e.instance_path().as_str().to_string();
                let path = if path.is_empty() { root.to_string() } else { path };
                format!("{path}: {e}")
            })
            .collect()
    }

    /// The schema violations of `arguments`, each as `<json pointer>: <problem>`.
    pub fn check(&self, tool: &ToolDefinition, arguments: &Value) -> Result<Vec<String>, String> {
        let validator = self.compiled(tool, Side::Input, &tool.input_schema)?;
        Ok(Self::problems(&validator, arguments, "(arguments)"))
    }

    /// Why `structured` does not match the tool's output schema, if it does not.
    pub fn check_output(&self, tool: &ToolDefinition, structured: &Value) -> Option<String> {
        let schema = tool.output_schema.as_ref()?;
        match self.compiled(tool, Side::Output, schema) {
            Ok(validator) => {
                let problems = Self::problems(&validator, structured, "(structuredContent)");
                (!problems.is_empty()).then(|| {
                    format!(
                        "structuredContent does not match output_schema: {}",
                        problems.join("; ")
                    )
                })
            }
            Err(e) => Some(e),
        }
    }
}

/// The schema violations of `arguments` against a schema not yet stored (the
/// console's tool editor previews a draft; drafts are not cached).
pub fn check_draft(schema: &Value, arguments: &Value) -> Result<Vec<String>, String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| format!("input_schema does not compile: {e}"))?;
    Ok(Validators::problems(&validator, arguments, "(arguments)"))
}

/// Registration-time check that a schema compiles.
pub fn compiles(schema: &Value) -> Result<(), String> {
    jsonschema::validator_for(schema).map(|_| ()).map_err(|e| e.to_string())
}

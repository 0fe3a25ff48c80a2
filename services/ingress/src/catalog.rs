//! The tool definitions `tools/call` resolves, cached per instance.
//!
//! A tool's definition is read from PostgreSQL at most every few seconds per
//! instance instead of on every call. Changes made through the admin API drop the
//! project's entries at once on the instance that made them, and on every other
//! instance when the `{prefix}.control.tools.{project}` broadcast arrives; the
//! time-to-live bounds staleness when a broadcast is lost. A stale entry never
//! reaches an API: the worker reads the tool again right before calling and ends
//! the run `revoked` if it was disabled or deleted meanwhile. Credentials are not
//! cached here (revocation must be immediate on every request).

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tengine_control::{StoreResult, tools};
use tengine_core::domain::ToolDefinition;
use uuid::Uuid;

/// Longest a definition is served from memory without a broadcast.
const TIME_TO_LIVE: Duration = Duration::from_secs(5);
const CAPACITY: u64 = 10_000;

#[derive(Clone)]
pub struct ToolCatalog {
    tools: moka::sync::Cache<(Uuid, String), Arc<ToolDefinition>>,
}

impl Default for ToolCatalog {
    fn default() -> Self {
        Self {
            tools: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TIME_TO_LIVE)
                .support_invalidation_closures()
                .build(),
        }
    }
}

impl ToolCatalog {
    /// The tool `name` of `project_id` (unknown names are not cached: a tool
    /// created a moment ago is found at once).
    pub async fn get(&self, pool: &PgPool, project_id: Uuid, name: &str) -> StoreResult<Arc<ToolDefinition>> {
        let key = (project_id, name.to_string());
        if let Some(tool) = self.tools.get(&key) {
            return Ok(tool);
        }
        let tool = Arc::new(tools::get(pool, project_id, name).await?);
        self.tools.insert(key, tool.clone());
        Ok(tool)
    }

    /// Drops every cached tool of the project (its tools changed).
    pub fn forget_project(&self, project_id: Uuid) {
        // Only fails without `support_invalidation_closures`, which the builder sets.
        let _ = self
            .tools
            .invalidate_entries_if(move |(project, _), _| *project == project_id);
    }
}

//! API keys (`api_keys`): created in an integration, listed, revoked. The
//! plaintext is shown once; only its hash is stored.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tengine_core::{credentials, storable};
use uuid::Uuid;

use crate::{StoreError, StoreResult, error::found, projects};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub project_id: Uuid,
    pub integration_id: Uuid,
    pub name: String,
    /// What the key may do: `call` (MCP, and reading its own integration's runs),
    /// `read` (the whole project's run history and usage).
    pub scopes: Vec<String>,
    pub display_prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Creates a key in the given integration (the project's default one when `None`).
/// Returns the record and the plaintext, which is never available again.
pub async fn create(
    pool: &PgPool,
    project_id: Uuid,
    integration_id: Option<Uuid>,
    name: &str,
    scopes: &[String],
) -> StoreResult<(ApiKey, String)> {
    let project = projects::get(pool, project_id).await?;
    let integration_id = integration_id.unwrap_or(project.default_integration_id);
    let exists: Option<(Uuid,)> =
        sqlx::query_as("SELECT id FROM integrations WHERE id = $1 AND project_id = $2 AND deleted_at IS NULL")
            .bind(integration_id)
            .bind(project_id)
            .fetch_optional(pool)
            .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound);
    }
    let key = credentials::generate_api_key();
    let record = sqlx::query_as::<_, ApiKey>(
        "INSERT INTO api_keys (id, project_id, integration_id, name, key_hash, display_prefix, scopes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         RETURNING id, project_id, integration_id, name, scopes, display_prefix, created_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(project_id)
    .bind(integration_id)
    .bind(storable::text(name))
    .bind(&key.hash)
    .bind(&key.display_prefix)
    .bind(scopes)
    .fetch_one(pool)
    .await?;
    Ok((record, key.plaintext))
}

pub async fn list(pool: &PgPool, project_id: Uuid) -> StoreResult<Vec<ApiKey>> {
    projects::get(pool, project_id).await?;
    Ok(sqlx::query_as::<_, ApiKey>(
        "SELECT id, project_id, integration_id, name, scopes, display_prefix, created_at, revoked_at \
         FROM api_keys WHERE project_id = $1 ORDER BY created_at, id",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await?)
}

/// Revokes a key. Idempotent: revoking a revoked key succeeds.
pub async fn revoke(pool: &PgPool, project_id: Uuid, key_id: Uuid) -> StoreResult<()> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 AND project_id = $2")
            .bind(key_id)
            .bind(project_id)
            .execute(pool)
            .await?;
    found(done)
}

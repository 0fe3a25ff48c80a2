//! Integrations (`integrations`): a project's groups of API keys, each
//! optionally limited to some tools. Deleting one keeps its row (`deleted_at`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tengine_core::storable;
use uuid::Uuid;

use crate::{StoreError, StoreResult, error::found, projects};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Integration {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub allowed_tools: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
}

pub async fn create(
    pool: &PgPool,
    project_id: Uuid,
    name: &str,
    allowed_tools: Option<&[String]>,
) -> StoreResult<Integration> {
    projects::get(pool, project_id).await?;
    Ok(sqlx::query_as::<_, Integration>(
        "INSERT INTO integrations (id, project_id, name, allowed_tools) VALUES ($1, $2, $3, $4) \
         RETURNING id, project_id, name, allowed_tools, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(project_id)
    .bind(storable::text(name))
    .bind(allowed_tools.map(storable::owned_all))
    .fetch_one(pool)
    .await?)
}

pub async fn list(pool: &PgPool, project_id: Uuid) -> StoreResult<Vec<Integration>> {
    projects::get(pool, project_id).await?;
    Ok(sqlx::query_as::<_, Integration>(
        "SELECT id, project_id, name, allowed_tools, created_at FROM integrations \
         WHERE project_id = $1 AND deleted_at IS NULL ORDER BY created_at, id",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await?)
}

pub async fn get(pool: &PgPool, project_id: Uuid, id: Uuid) -> StoreResult<Integration> {
    sqlx::query_as::<_, Integration>(
        "SELECT id, project_id, name, allowed_tools, created_at FROM integrations \
         WHERE project_id = $1 AND id = $2 AND deleted_at IS NULL",
    )
    .bind(project_id)
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)
}

/// Deletes an integration: its keys, and member sessions minted with them, stop
/// working. A project keeps at least one integration (its default).
pub async fn delete(pool: &PgPool, project_id: Uuid, id: Uuid) -> StoreResult<()> {
    let live: (i64,) = sqlx::query_as("SELECT count(*) FROM integrations WHERE project_id = $1 AND deleted_at IS NULL")
        .bind(project_id)
        .fetch_one(pool)
        .await?;
    if live.0 <= 1 {
        get(pool, project_id, id).await?;
        return Err(StoreError::Conflict(
            "a project keeps at least one integration; create another before deleting this one".into(),
        ));
    }
    let done = sqlx::query(
        "UPDATE integrations SET deleted_at = now() WHERE project_id = $1 AND id = $2 AND deleted_at IS NULL",
    )
    .bind(project_id)
    .bind(id)
    .execute(pool)
    .await?;
    found(done)
}

//! Member keys (`member_keys`): the public keys a project's backend signs member
//! assertions with, by `kid`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tengine_core::storable;
use uuid::Uuid;

use crate::{
    StoreError, StoreResult,
    error::{found, unique_violation},
    projects,
};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct MemberKey {
    pub project_id: Uuid,
    pub kid: String,
    pub public_key: String,
    pub created_at: DateTime<Utc>,
}

pub async fn create(pool: &PgPool, project_id: Uuid, kid: &str, public_key: &str) -> StoreResult<MemberKey> {
    projects::get(pool, project_id).await?;
    sqlx::query_as::<_, MemberKey>(
        "INSERT INTO member_keys (project_id, kid, public_key) VALUES ($1, $2, $3) \
         RETURNING project_id, kid, public_key, created_at",
    )
    .bind(project_id)
    .bind(storable::text(kid))
    .bind(storable::text(public_key))
    .fetch_one(pool)
    .await
    .map_err(|e| {
        if unique_violation(&e) {
            StoreError::Conflict(format!("a member key with kid `{kid}` already exists in this project"))
        } else {
            e.into()
        }
    })
}

pub async fn list(pool: &PgPool, project_id: Uuid) -> StoreResult<Vec<MemberKey>> {
    projects::get(pool, project_id).await?;
    Ok(sqlx::query_as::<_, MemberKey>(
        "SELECT project_id, kid, public_key, created_at FROM member_keys \
         WHERE project_id = $1 AND revoked_at IS NULL ORDER BY created_at",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await?)
}

pub async fn delete(pool: &PgPool, project_id: Uuid, kid: &str) -> StoreResult<()> {
    let done = sqlx::query(
        "UPDATE member_keys SET revoked_at = now() WHERE project_id = $1 AND kid = $2 AND revoked_at IS NULL",
    )
    .bind(project_id)
    .bind(storable::text(kid))
    .execute(pool)
    .await?;
    found(done)
}

pub async fn public_key(pool: &PgPool, project_id: Uuid, kid: &str) -> StoreResult<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT public_key FROM member_keys WHERE project_id = $1 AND kid = $2 AND revoked_at IS NULL")
            .bind(project_id)
            .bind(storable::text(kid))
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| r.0))
}

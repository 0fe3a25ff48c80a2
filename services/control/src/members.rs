//! Members: assertion ids already used (`member_assertions_used`, against
//! replays) and revoked sessions (`member_revocations`, checked by
//! [`crate::principals::authenticate_member`]).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tengine_core::storable;
use uuid::Uuid;

use crate::{StoreResult, projects};

/// Records an assertion id; false when it was already used (a replay).
pub async fn use_assertion(pool: &PgPool, project_id: Uuid, jti: &str, expires_at: DateTime<Utc>) -> StoreResult<bool> {
    sqlx::query("DELETE FROM member_assertions_used WHERE expires_at < now() - interval '1 hour'")
        .execute(pool)
        .await?;
    let done = sqlx::query(
        "INSERT INTO member_assertions_used (project_id, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(project_id)
    .bind(storable::text(jti))
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends every session of a member issued up to now, and the member's OAuth
/// grants (whose refresh tokens would otherwise mint new sessions).
pub async fn revoke_sessions(pool: &PgPool, project_id: Uuid, member_id: &str) -> StoreResult<()> {
    projects::get(pool, project_id).await?;
    let grants: Vec<(Uuid,)> =
        sqlx::query_as("SELECT id FROM oauth_grants WHERE project_id = $1 AND member_id = $2 AND revoked_at IS NULL")
            .bind(project_id)
            .bind(storable::text(member_id))
            .fetch_all(pool)
            .await?;
    for (grant,) in grants {
        crate::oauth::revoke_grant(pool, project_id, grant, "member_sessions_revoked").await?;
    }
    sqlx::query(
        "INSERT INTO member_revocations (project_id, member_id, revoked_before) VALUES ($1, $2, now()) \
         ON CONFLICT (project_id, member_id) DO UPDATE SET revoked_before = now()",
    )
    .bind(project_id)
    .bind(storable::text(member_id))
    .execute(pool)
    .await?;
    Ok(())
}

//! MCP authorization (OAuth 2.1) storage: clients (`oauth_clients`), authorization
//! requests on their way from login to code (`oauth_authorizations`), grants
//! (`oauth_grants`, each with an API key its access tokens are bound to) and
//! rotating refresh tokens (`oauth_refresh_tokens`). Secrets arrive here hashed.
//! Every state change is a compare-and-set, so a code, a login or a refresh
//! token is used once even when two instances race.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use tengine_core::{credentials, storable};
use uuid::Uuid;

use crate::{StoreError, StoreResult, error::found, projects};

/// Pending authorization requests one project holds at most (unauthenticated
/// callers create them; expired ones are swept before each new one).
pub const MAX_PENDING_AUTHORIZATIONS: i64 = 10_000;
/// Clients (registered or fetched) one project holds at most.
pub const MAX_CLIENTS: i64 = 10_000;

/// What the authorization server needs of a project.
#[derive(Debug, Clone)]
pub struct ProjectOAuth {
    pub project_id: Uuid,
    pub name: String,
    pub enabled: bool,
    pub login_url: Option<String>,
    /// The integration OAuth clients act through (resolved: the default one when unset).
    pub integration_id: Uuid,
    pub outbound_allowlist: Vec<String>,
    pub allowed_client_ids: Option<Vec<String>>,
    pub allowed_redirect_hosts: Option<Vec<String>>,
}

pub async fn project(pool: &PgPool, project_id: Uuid) -> StoreResult<ProjectOAuth> {
    let project = projects::get(pool, project_id).await?;
    Ok(ProjectOAuth {
        project_id,
        name: project.name,
        enabled: project.oauth.enabled,
        login_url: project.oauth.login_url,
        integration_id: project.oauth.integration_id.unwrap_or(project.default_integration_id),
        outbound_allowlist: project.outbound_allowlist,
        allowed_client_ids: project.oauth.allowed_client_ids,
        allowed_redirect_hosts: project.oauth.allowed_redirect_hosts,
    })
}

/// Whether `integration_id` is a live integration of the project.
pub async fn integration_exists(pool: &PgPool, project_id: Uuid, integration_id: Uuid) -> StoreResult<bool> {
    let row: Option<(Uuid,)> =
        sqlx::query_as("SELECT id FROM integrations WHERE id = $1 AND project_id = $2 AND deleted_at IS NULL")
            .bind(integration_id)
            .bind(project_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.is_some())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Client {
    pub client_id: String,
    /// `registered` (RFC 7591) or `metadata_document` (its client_id is the document's URL).
    pub kind: String,
    pub client_name: Option<String>,
    pub client_uri: Option<String>,
    pub redirect_uris: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// When the metadata document was last fetched (registration time for registered clients).
    pub fetched_at: DateTime<Utc>,
}

pub const KIND_REGISTERED: &str = "registered";
pub const KIND_METADATA_DOCUMENT: &str = "metadata_document";

const CLIENT_COLUMNS: &str = "client_id, kind, client_name, client_uri, redirect_uris, created_at, fetched_at";

pub struct NewClient<'a> {
    pub client_id: &'a str,
    pub kind: &'static str,
    pub client_name: Option<&'a str>,
    pub client_uri: Option<&'a str>,
    pub redirect_uris: &'a [String],
}

pub async fn client(pool: &PgPool, project_id: Uuid, client_id: &str) -> StoreResult<Option<Client>> {
    Ok(sqlx::query_as::<_, Client>(&format!(
        "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE project_id = $1 AND client_id = $2"
    ))
    .bind(project_id)
    .bind(storable::text(client_id))
    .fetch_optional(pool)
    .await?)
}

/// Stores a client; a metadata document fetched again replaces what was cached.
/// A new client past [`MAX_CLIENTS`] (registered or fetched: both are created by
/// unauthenticated requests) is a `Conflict`.
pub async fn save_client(pool: &PgPool, project_id: Uuid, new: &NewClient<'_>) -> StoreResult<Client> {
    let known = client(pool, project_id, new.client_id).await?.is_some();
    if !known {
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM oauth_clients WHERE project_id = $1")
            .bind(project_id)
            .fetch_one(pool)
            .await?;
        if count >= MAX_CLIENTS {
            return Err(StoreError::Conflict(format!(
                "this project already knows {MAX_CLIENTS} OAuth clients"
            )));
        }
    }
    Ok(sqlx::query_as::<_, Client>(&format!(
        "INSERT INTO oauth_clients (project_id, client_id, kind, client_name, client_uri, redirect_uris) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (project_id, client_id) DO UPDATE SET client_name = EXCLUDED.client_name, \
         client_uri = EXCLUDED.client_uri, redirect_uris = EXCLUDED.redirect_uris, fetched_at = now() \
         RETURNING {CLIENT_COLUMNS}"
    ))
    .bind(project_id)
    .bind(storable::text(new.client_id))
    .bind(new.kind)
    .bind(new.client_name.map(storable::text))
    .bind(new.client_uri.map(storable::text))
    .bind(storable::owned_all(new.redirect_uris))
    .fetch_one(pool)
    .await?)
}

pub async fn list_clients(pool: &PgPool, project_id: Uuid) -> StoreResult<Vec<Client>> {
    projects::get(pool, project_id).await?;
    Ok(sqlx::query_as::<_, Client>(&format!(
        "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE project_id = $1 ORDER BY created_at, client_id LIMIT 10000"
    ))
    .bind(project_id)
    .fetch_all(pool)
    .await?)
}

/// An authorization request as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Authorization {
    pub id: Uuid,
    pub project_id: Uuid,
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub resource: String,
    pub stage: String,
    pub member: Option<Value>,
    pub grant_id: Option<Uuid>,
    pub expires_at: DateTime<Utc>,
}

const AUTHORIZATION_COLUMNS: &str = "id, project_id, client_id, redirect_uri, state, code_challenge, resource, stage, \
     member, grant_id, expires_at";

pub struct NewAuthorization<'a> {
    pub project_id: Uuid,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub state: Option<&'a str>,
    pub code_challenge: &'a str,
    pub resource: &'a str,
    pub login_hash: &'a [u8],
    pub expires_at: DateTime<Utc>,
}

/// Records a request awaiting its login; `Conflict` past [`MAX_PENDING_AUTHORIZATIONS`].
pub async fn begin(pool: &PgPool, new: &NewAuthorization<'_>) -> StoreResult<Uuid> {
    // Expired requests are of no use to anyone: swept here rather than by a job.
    sqlx::query("DELETE FROM oauth_authorizations WHERE project_id = $1 AND expires_at < now() - interval '1 day'")
        .bind(new.project_id)
        .execute(pool)
        .await?;
    let (pending,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM oauth_authorizations WHERE project_id = $1 AND expires_at > now() \
         AND stage IN ('login', 'consent', 'code')",
    )
    .bind(new.project_id)
    .fetch_one(pool)
    .await?;
    if pending >= MAX_PENDING_AUTHORIZATIONS {
        return Err(StoreError::Conflict(
            "too many authorization requests are pending".into(),
        ));
    }
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO oauth_authorizations (id, project_id, client_id, redirect_uri, state, code_challenge, resource, \
         stage, login_hash, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'login', $8, $9)",
    )
    .bind(id)
    .bind(new.project_id)
    .bind(storable::text(new.client_id))
    .bind(storable::text(new.redirect_uri))
    .bind(new.state.map(storable::text))
    .bind(storable::text(new.code_challenge))
    .bind(storable::text(new.resource))
    .bind(new.login_hash)
    .bind(new.expires_at)
    .execute(pool)
    .await?;
    Ok(id)
}

/// The request awaiting the login named by `login_hash`, if it is still live.
pub async fn awaiting_login(pool: &PgPool, project_id: Uuid, login_hash: &[u8]) -> StoreResult<Option<Authorization>> {
    Ok(sqlx::query_as::<_, Authorization>(&format!(
        "SELECT {AUTHORIZATION_COLUMNS} FROM oauth_authorizations \
         WHERE project_id = $1 AND login_hash = $2 AND stage = 'login' AND expires_at > now()"
    ))
    .bind(project_id)
    .bind(login_hash)
    .fetch_optional(pool)
    .await?)
}

/// Login done: the member is recorded and the consent's CSRF token set, once.
pub async fn logged_in(
    pool: &PgPool,
    id: Uuid,
    member: &Value,
    csrf_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE oauth_authorizations SET stage = 'consent', member = $2, csrf_hash = $3, expires_at = $4 \
         WHERE id = $1 AND stage = 'login' AND expires_at > now()",
    )
    .bind(id)
    .bind(sqlx::types::Json(storable::json(member)))
    .bind(csrf_hash)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The consent's decision, once: with a code hash it approves (the code lives
/// until `expires_at`), without one it denies. `None` unless the request awaits
/// consent under this CSRF token.
pub async fn decide(
    pool: &PgPool,
    project_id: Uuid,
    id: Uuid,
    csrf_hash: &[u8],
    code: Option<(&[u8], DateTime<Utc>)>,
) -> StoreResult<Option<Authorization>> {
    Ok(sqlx::query_as::<_, Authorization>(&format!(
        "UPDATE oauth_authorizations SET stage = CASE WHEN $4::bytea IS NULL THEN 'denied' ELSE 'code' END, \
         code_hash = $4, expires_at = COALESCE($5, expires_at) \
         WHERE id = $1 AND project_id = $2 AND csrf_hash = $3 AND stage = 'consent' AND expires_at > now() \
         RETURNING {AUTHORIZATION_COLUMNS}"
    ))
    .bind(id)
    .bind(project_id)
    .bind(csrf_hash)
    .bind(code.map(|(hash, _)| hash))
    .bind(code.map(|(_, expires)| expires))
    .fetch_optional(pool)
    .await?)
}

/// The request awaiting consent (for rendering the page).
pub async fn awaiting_consent(pool: &PgPool, project_id: Uuid, id: Uuid) -> StoreResult<Option<Authorization>> {
    Ok(sqlx::query_as::<_, Authorization>(&format!(
        "SELECT {AUTHORIZATION_COLUMNS} FROM oauth_authorizations \
         WHERE id = $1 AND project_id = $2 AND stage = 'consent' AND expires_at > now()"
    ))
    .bind(id)
    .bind(project_id)
    .fetch_optional(pool)
    .await?)
}

/// What presenting an authorization code found.
pub enum CodeUse {
    /// First use of a live code: the request, now `exchanged`.
    Fresh(Box<Authorization>),
    /// The code was exchanged before: the grant it produced (to be revoked).
    Replayed(Option<Uuid>),
    Unknown,
}

pub async fn use_code(pool: &PgPool, project_id: Uuid, code_hash: &[u8]) -> StoreResult<CodeUse> {
    let fresh = sqlx::query_as::<_, Authorization>(&format!(
        "UPDATE oauth_authorizations SET stage = 'exchanged' \
         WHERE project_id = $1 AND code_hash = $2 AND stage = 'code' AND expires_at > now() \
         RETURNING {AUTHORIZATION_COLUMNS}"
    ))
    .bind(project_id)
    .bind(code_hash)
    .fetch_optional(pool)
    .await?;
    if let Some(authorization) = fresh {
        return Ok(CodeUse::Fresh(Box::new(authorization)));
    }
    let used: Option<(Option<Uuid>,)> = sqlx::query_as(
        "SELECT grant_id FROM oauth_authorizations WHERE project_id = $1 AND code_hash = $2 AND stage = 'exchanged'",
    )
    .bind(project_id)
    .bind(code_hash)
    .fetch_optional(pool)
    .await?;
    Ok(used.map_or(CodeUse::Unknown, |(grant,)| CodeUse::Replayed(grant)))
}

/// A member's consent to a client, as the admin API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Grant {
    pub id: Uuid,
    pub project_id: Uuid,
    pub client_id: String,
    pub client_name: Option<String>,
    pub member_id: String,
    /// The member's identity as the login asserted it (`id`, `email`, `roles`).
    #[schema(value_type = Object)]
    pub member: Value,
    /// The API key (of the project's OAuth integration) its access tokens are bound to.
    pub api_key_id: Uuid,
    pub resource: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// `revoked` (admin or client), `refresh_token_reused`, `code_replayed`.
    pub revoked_reason: Option<String>,
}

const GRANT_COLUMNS: &str = "g.id, g.project_id, g.client_id, c.client_name, g.member_id, g.member, g.api_key_id, \
     g.resource, g.created_at, g.revoked_at, g.revoked_reason";
const GRANT_FROM: &str =
    "oauth_grants g LEFT JOIN oauth_clients c ON c.project_id = g.project_id AND c.client_id = g.client_id";

pub struct NewGrant<'a> {
    pub authorization_id: Uuid,
    pub project_id: Uuid,
    pub integration_id: Uuid,
    pub client_id: &'a str,
    pub member_id: &'a str,
    pub member: &'a Value,
    pub resource: &'a str,
}

/// Creates the grant and the API key it is bound to (whose plaintext nobody
/// ever sees: only member session tokens naming it are issued).
pub async fn create_grant(pool: &PgPool, new: &NewGrant<'_>) -> StoreResult<Grant> {
    let mut tx = pool.begin().await?;
    let key = credentials::generate_api_key();
    let api_key_id = Uuid::now_v7();
    let name: String = format!("oauth: {} for {}", new.client_id, new.member_id)
        .chars()
        .take(200)
        .collect();
    sqlx::query(
        "INSERT INTO api_keys (id, project_id, integration_id, name, key_hash, display_prefix, scopes) \
         VALUES ($1, $2, $3, $4, $5, $6, '{call}')",
    )
    .bind(api_key_id)
    .bind(new.project_id)
    .bind(new.integration_id)
    .bind(storable::text(&name))
    .bind(&key.hash)
    .bind("oauth grant")
    .execute(&mut *tx)
    .await?;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO oauth_grants (id, project_id, client_id, member_id, member, api_key_id, resource) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(new.project_id)
    .bind(storable::text(new.client_id))
    .bind(storable::text(new.member_id))
    .bind(sqlx::types::Json(storable::json(new.member)))
    .bind(api_key_id)
    .bind(storable::text(new.resource))
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE oauth_authorizations SET grant_id = $2 WHERE id = $1")
        .bind(new.authorization_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    grant(pool, new.project_id, id).await
}

pub async fn grant(pool: &PgPool, project_id: Uuid, id: Uuid) -> StoreResult<Grant> {
    sqlx::query_as::<_, Grant>(&format!(
        "SELECT {GRANT_COLUMNS} FROM {GRANT_FROM} WHERE g.id = $1 AND g.project_id = $2"
    ))
    .bind(id)
    .bind(project_id)
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)
}

/// The live grant whose access tokens name `api_key_id`, if any.
pub async fn grant_by_api_key(pool: &PgPool, api_key_id: Uuid) -> StoreResult<Option<Grant>> {
    Ok(sqlx::query_as::<_, Grant>(&format!(
        "SELECT {GRANT_COLUMNS} FROM {GRANT_FROM} WHERE g.api_key_id = $1"
    ))
    .bind(api_key_id)
    .fetch_optional(pool)
    .await?)
}

pub async fn list_grants(pool: &PgPool, project_id: Uuid) -> StoreResult<Vec<Grant>> {
    projects::get(pool, project_id).await?;
    Ok(sqlx::query_as::<_, Grant>(&format!(
        "SELECT {GRANT_COLUMNS} FROM {GRANT_FROM} WHERE g.project_id = $1 ORDER BY g.created_at, g.id LIMIT 10000"
    ))
    .bind(project_id)
    .fetch_all(pool)
    .await?)
}

/// Revokes a grant, its API key (so its access tokens stop at once on every
/// instance) and its refresh tokens, and records it. Idempotent: the first
/// revocation and its reason stay.
pub async fn revoke_grant(pool: &PgPool, project_id: Uuid, id: Uuid, reason: &str) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    let row: Option<(Uuid, bool, String, String)> = sqlx::query_as(
        "WITH before AS (SELECT id, revoked_at FROM oauth_grants WHERE id = $1 AND project_id = $2 FOR UPDATE) \
         UPDATE oauth_grants g SET revoked_at = COALESCE(g.revoked_at, now()), \
         revoked_reason = COALESCE(g.revoked_reason, $3) FROM before WHERE g.id = before.id \
         RETURNING g.api_key_id, before.revoked_at IS NULL, g.client_id, g.member_id",
    )
    .bind(id)
    .bind(project_id)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((api_key_id, first, client_id, member_id)) = row else {
        return Err(StoreError::NotFound);
    };
    found(
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1")
            .bind(api_key_id)
            .execute(&mut *tx)
            .await?,
    )?;
    sqlx::query("DELETE FROM oauth_refresh_tokens WHERE grant_id = $1 AND used_at IS NULL")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if first {
        insert_event(
            &mut tx,
            &Event {
                project_id,
                kind: EVENT_GRANT_REVOKED,
                client_id: &client_id,
                member_id: Some(&member_id),
                grant_id: Some(id),
                reason: Some(reason),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub const EVENT_CONSENT_APPROVED: &str = "consent_approved";
pub const EVENT_CONSENT_DENIED: &str = "consent_denied";
pub const EVENT_GRANT_REVOKED: &str = "grant_revoked";

/// Something that happened to a project's OAuth access.
pub struct Event<'a> {
    pub project_id: Uuid,
    pub kind: &'static str,
    pub client_id: &'a str,
    pub member_id: Option<&'a str>,
    pub grant_id: Option<Uuid>,
    pub reason: Option<&'a str>,
}

pub async fn record_event(pool: &PgPool, event: &Event<'_>) -> StoreResult<()> {
    let mut conn = pool.acquire().await?;
    insert_event(&mut conn, event).await
}

async fn insert_event(conn: &mut sqlx::PgConnection, event: &Event<'_>) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO oauth_events (id, project_id, kind, client_id, member_id, grant_id, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::now_v7())
    .bind(event.project_id)
    .bind(event.kind)
    .bind(storable::text(event.client_id))
    .bind(event.member_id.map(storable::text))
    .bind(event.grant_id)
    .bind(event.reason.map(storable::text))
    .execute(conn)
    .await?;
    Ok(())
}

/// An OAuth event as the admin API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OAuthEvent {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// `consent_approved`, `consent_denied` or `grant_revoked`.
    pub kind: String,
    pub client_id: String,
    pub member_id: Option<String>,
    pub grant_id: Option<Uuid>,
    /// Why a grant was revoked: `revoked` (admin API or the client), `refresh_token_reused`,
    /// `code_replayed`, `member_sessions_revoked`.
    pub reason: Option<String>,
}

/// A project's OAuth events, newest first, at most `limit`.
pub async fn list_events(pool: &PgPool, project_id: Uuid, limit: i64) -> StoreResult<Vec<OAuthEvent>> {
    projects::get(pool, project_id).await?;
    Ok(sqlx::query_as::<_, OAuthEvent>(
        "SELECT id, at, kind, client_id, member_id, grant_id, reason FROM oauth_events \
         WHERE project_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
    )
    .bind(project_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn store_refresh_token(
    pool: &PgPool,
    grant_id: Uuid,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> StoreResult<()> {
    // Used tokens are kept for reuse detection until they would have expired.
    sqlx::query("DELETE FROM oauth_refresh_tokens WHERE grant_id = $1 AND expires_at < now()")
        .bind(grant_id)
        .execute(pool)
        .await?;
    sqlx::query("INSERT INTO oauth_refresh_tokens (token_hash, grant_id, expires_at) VALUES ($1, $2, $3)")
        .bind(token_hash)
        .bind(grant_id)
        .bind(expires_at)
        .execute(pool)
        .await?;
    Ok(())
}

/// What presenting a refresh token found.
pub enum RefreshUse {
    /// First use of a live token of a live grant: the grant.
    Fresh(Box<Grant>),
    /// A token used before (its grant, to be revoked: the family dies).
    Reused(Uuid),
    /// Unknown, expired, or of a revoked grant.
    Unknown,
}

pub async fn use_refresh_token(pool: &PgPool, project_id: Uuid, token_hash: &[u8]) -> StoreResult<RefreshUse> {
    let fresh: Option<(Uuid,)> = sqlx::query_as(
        "UPDATE oauth_refresh_tokens t SET used_at = now() FROM oauth_grants g \
         WHERE t.token_hash = $1 AND t.used_at IS NULL AND t.expires_at > now() \
         AND g.id = t.grant_id AND g.project_id = $2 AND g.revoked_at IS NULL RETURNING t.grant_id",
    )
    .bind(token_hash)
    .bind(project_id)
    .fetch_optional(pool)
    .await?;
    if let Some((grant_id,)) = fresh {
        return Ok(RefreshUse::Fresh(Box::new(grant(pool, project_id, grant_id).await?)));
    }
    let used: Option<(Uuid,)> = sqlx::query_as(
        "SELECT t.grant_id FROM oauth_refresh_tokens t JOIN oauth_grants g ON g.id = t.grant_id \
         WHERE t.token_hash = $1 AND g.project_id = $2 AND t.used_at IS NOT NULL",
    )
    .bind(token_hash)
    .bind(project_id)
    .fetch_optional(pool)
    .await?;
    Ok(used.map_or(RefreshUse::Unknown, |(grant_id,)| RefreshUse::Reused(grant_id)))
}

/// The grant a refresh token (used or not) belongs to.
pub async fn grant_of_refresh_token(pool: &PgPool, project_id: Uuid, token_hash: &[u8]) -> StoreResult<Option<Grant>> {
    let row: Option<(Uuid,)> = sqlx::query_as(
        "SELECT t.grant_id FROM oauth_refresh_tokens t JOIN oauth_grants g ON g.id = t.grant_id \
         WHERE t.token_hash = $1 AND g.project_id = $2",
    )
    .bind(token_hash)
    .bind(project_id)
    .fetch_optional(pool)
    .await?;
    match row {
        Some((id,)) => Ok(Some(grant(pool, project_id, id).await?)),
        None => Ok(None),
    }
}

//! Projects (`projects`): their settings, and what the worker needs of them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tengine_core::{bodies::BodyPolicy, storable};
use uuid::Uuid;

use std::sync::Arc;

use crate::{
    StoreError, StoreResult,
    error::found,
    freshness::{FreshCache, Freshness},
};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub default_integration_id: Uuid,
    /// Networks (CIDR) the project's tools may reach although they are private.
    pub outbound_allowlist: Vec<String>,
    /// Calls per calendar month (UTC); `None`: unlimited.
    pub monthly_call_limit: Option<i64>,
    /// Calls per minute per member (per API key without a member session); `None`: unlimited.
    pub member_calls_per_minute: Option<i32>,
    /// Whether run history keeps request and response bodies (redacted, capped).
    pub store_bodies: bool,
    pub body_max_bytes: i32,
    /// JSON fields (dotted paths) replaced by "[REDACTED]" in stored bodies.
    pub redact_fields: Vec<String>,
    /// MCP authorization (OAuth 2.1) for this project's resource.
    #[sqlx(flatten)]
    pub oauth: OAuthSettings,
}

/// A project's OAuth settings: whether it is the authorization server of its MCP
/// resource, where its users sign in, and the integration OAuth clients act through.
#[derive(Debug, Clone, Default, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OAuthSettings {
    #[sqlx(rename = "oauth_enabled")]
    pub enabled: bool,
    /// The customer's login page (`?tengine_login=…` is appended).
    #[sqlx(rename = "oauth_login_url")]
    pub login_url: Option<String>,
    /// `None`: the project's default integration.
    #[sqlx(rename = "oauth_integration_id")]
    pub integration_id: Option<Uuid>,
    /// Only these client_ids may be authorized (`None`: any).
    #[sqlx(rename = "oauth_allowed_client_ids")]
    pub allowed_client_ids: Option<Vec<String>>,
    /// Only clients redirecting to these hosts may be authorized (`None`: any).
    #[sqlx(rename = "oauth_allowed_redirect_hosts")]
    pub allowed_redirect_hosts: Option<Vec<String>>,
}

/// A change of project settings: `None` leaves a setting as it is; for the
/// nullable limits, `Some(None)` removes the limit.
#[derive(Debug, Default, Clone)]
pub struct ProjectSettings {
    pub outbound_allowlist: Option<Vec<String>>,
    pub monthly_call_limit: Option<Option<i64>>,
    pub member_calls_per_minute: Option<Option<i32>>,
    pub store_bodies: Option<bool>,
    pub body_max_bytes: Option<i32>,
    pub redact_fields: Option<Vec<String>>,
    pub oauth: Option<OAuthSettings>,
}

const PROJECT_COLUMNS: &str = "p.id, p.name, p.created_at, p.outbound_allowlist, \
     p.monthly_call_limit, p.member_calls_per_minute, p.store_bodies, p.body_max_bytes, p.redact_fields, \
     p.oauth_enabled, p.oauth_login_url, p.oauth_integration_id, p.oauth_allowed_client_ids, \
     p.oauth_allowed_redirect_hosts, \
     (SELECT i.id FROM integrations i WHERE i.project_id = p.id AND i.deleted_at IS NULL \
      ORDER BY i.created_at, i.id LIMIT 1) AS default_integration_id";

pub async fn create(pool: &PgPool, name: &str) -> StoreResult<Project> {
    let mut tx = pool.begin().await?;
    let id = Uuid::now_v7();
    let integration_id = Uuid::now_v7();
    sqlx::query("INSERT INTO projects (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(storable::text(name))
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO integrations (id, project_id, name) VALUES ($1, $2, 'default')")
        .bind(integration_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    get(pool, id).await
}

pub async fn get(pool: &PgPool, id: Uuid) -> StoreResult<Project> {
    sqlx::query_as::<_, Project>(&format!("SELECT {PROJECT_COLUMNS} FROM projects p WHERE p.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)
}

pub async fn list(pool: &PgPool) -> StoreResult<Vec<Project>> {
    Ok(sqlx::query_as::<_, Project>(&format!(
        "SELECT {PROJECT_COLUMNS} FROM projects p ORDER BY p.created_at, p.id"
    ))
    .fetch_all(pool)
    .await?)
}

/// Every project's id, in order (the scheduled export's pass).
pub async fn ids(pool: &PgPool) -> StoreResult<Vec<Uuid>> {
    let projects: Vec<(Uuid,)> = sqlx::query_as("SELECT id FROM projects ORDER BY id")
        .fetch_all(pool)
        .await?;
    Ok(projects.into_iter().map(|(id,)| id).collect())
}

/// Applies the settings given, in one statement; the others keep their values.
pub async fn update_settings(pool: &PgPool, project_id: Uuid, settings: &ProjectSettings) -> StoreResult<Project> {
    let done = sqlx::query(
        "UPDATE projects SET \
         outbound_allowlist = CASE WHEN $2 THEN $3 ELSE outbound_allowlist END, \
         monthly_call_limit = CASE WHEN $4 THEN $5 ELSE monthly_call_limit END, \
         member_calls_per_minute = CASE WHEN $6 THEN $7 ELSE member_calls_per_minute END, \
         store_bodies = COALESCE($8, store_bodies), body_max_bytes = COALESCE($9, body_max_bytes), \
         redact_fields = COALESCE($10, redact_fields), \
         oauth_enabled = CASE WHEN $11 THEN $12 ELSE oauth_enabled END, \
         oauth_login_url = CASE WHEN $11 THEN $13 ELSE oauth_login_url END, \
         oauth_integration_id = CASE WHEN $11 THEN $14 ELSE oauth_integration_id END, \
         oauth_allowed_client_ids = CASE WHEN $11 THEN $15 ELSE oauth_allowed_client_ids END, \
         oauth_allowed_redirect_hosts = CASE WHEN $11 THEN $16 ELSE oauth_allowed_redirect_hosts END \
         WHERE id = $1",
    )
    .bind(project_id)
    .bind(settings.outbound_allowlist.is_some())
    .bind(storable::owned_all(
        settings.outbound_allowlist.as_deref().unwrap_or_default(),
    ))
    .bind(settings.monthly_call_limit.is_some())
    .bind(settings.monthly_call_limit.flatten())
    .bind(settings.member_calls_per_minute.is_some())
    .bind(settings.member_calls_per_minute.flatten())
    .bind(settings.store_bodies)
    .bind(settings.body_max_bytes)
    .bind(settings.redact_fields.as_deref().map(storable::owned_all))
    .bind(settings.oauth.is_some())
    .bind(settings.oauth.as_ref().is_some_and(|o| o.enabled))
    .bind(
        settings
            .oauth
            .as_ref()
            .and_then(|o| o.login_url.as_deref())
            .map(storable::text),
    )
    .bind(settings.oauth.as_ref().and_then(|o| o.integration_id))
    .bind(
        settings
            .oauth
            .as_ref()
            .and_then(|o| o.allowed_client_ids.as_deref())
            .map(storable::owned_all),
    )
    .bind(
        settings
            .oauth
            .as_ref()
            .and_then(|o| o.allowed_redirect_hosts.as_deref())
            .map(storable::owned_all),
    )
    .execute(pool)
    .await?;
    found(done)?;
    get(pool, project_id).await
}

/// What the worker needs of a project for each call.
#[derive(Debug, Clone, Default)]
pub struct ProjectRuntime {
    pub outbound_allowlist: Vec<String>,
    /// `Some` when the project stores bodies.
    pub bodies: Option<BodyPolicy>,
}

pub async fn runtime(pool: &PgPool, project_id: Uuid) -> StoreResult<ProjectRuntime> {
    let row: Option<(Vec<String>, bool, i32, Vec<String>)> = sqlx::query_as(
        "SELECT outbound_allowlist, store_bodies, body_max_bytes, redact_fields FROM projects WHERE id = $1",
    )
    .bind(project_id)
    .fetch_optional(pool)
    .await?;
    Ok(row
        .map(|(outbound_allowlist, store, max_bytes, redact)| ProjectRuntime {
            outbound_allowlist,
            bodies: store.then(|| BodyPolicy::new(max_bytes, &redact)),
        })
        .unwrap_or_default())
}

/// Projects' runtime settings in memory on every worker, current by [`crate::freshness`].
pub struct Runtimes {
    pool: PgPool,
    cache: FreshCache<Uuid, Arc<ProjectRuntime>>,
}

impl Runtimes {
    pub fn new(pool: PgPool, freshness: Freshness) -> Self {
        Self {
            pool,
            cache: FreshCache::new(freshness, 10_000),
        }
    }

    /// [`runtime`], from memory when current.
    pub async fn get(&self, project_id: Uuid) -> StoreResult<Arc<ProjectRuntime>> {
        self.cache
            .get(project_id, || async {
                Ok((Arc::new(runtime(&self.pool, project_id).await?), Some(project_id)))
            })
            .await
    }
}

//! PostgreSQL access for the control plane. Queries are
//! checked by the integration tests against a real database; we use the runtime
//! query API (not the compile-time macros) so a build needs no database.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, types::Json};
use uuid::Uuid;

use crate::{
    credentials,
    domain::{AuthStrategy, HttpMethod, ResponseMode, ToolDefinition, ToolSpec},
    envelope::{Caller, Member},
    secrets::{SecretBox, SecretError},
    storable,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// `NotFound` when a write matched no row.
fn found(done: sqlx::postgres::PgQueryResult) -> StoreResult<()> {
    if done.rows_affected() == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
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
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
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

const PROJECT_COLUMNS: &str = "p.id, p.name, p.created_at, p.outbound_allowlist, \
     p.monthly_call_limit, p.member_calls_per_minute, p.store_bodies, p.body_max_bytes, p.redact_fields, \
     (SELECT i.id FROM integrations i WHERE i.project_id = p.id AND i.deleted_at IS NULL \
      ORDER BY i.created_at, i.id LIMIT 1) AS default_integration_id";

pub async fn create_project(pool: &PgPool, name: &str) -> StoreResult<Project> {
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
    get_project(pool, id).await
}

pub async fn get_project(pool: &PgPool, id: Uuid) -> StoreResult<Project> {
    sqlx::query_as::<_, Project>(&format!("SELECT {PROJECT_COLUMNS} FROM projects p WHERE p.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)
}

pub async fn list_projects(pool: &PgPool) -> StoreResult<Vec<Project>> {
    Ok(sqlx::query_as::<_, Project>(&format!(
        "SELECT {PROJECT_COLUMNS} FROM projects p ORDER BY p.created_at, p.id"
    ))
    .fetch_all(pool)
    .await?)
}

/// Every project's id, in order (the scheduled export's pass).
pub async fn project_ids(pool: &PgPool) -> StoreResult<Vec<Uuid>> {
    let projects: Vec<(Uuid,)> = sqlx::query_as("SELECT id FROM projects ORDER BY id")
        .fetch_all(pool)
        .await?;
    Ok(projects.into_iter().map(|(id,)| id).collect())
}

/// Applies the settings given, in one statement; the others keep their values.
pub async fn update_project_settings(
    pool: &PgPool,
    project_id: Uuid,
    settings: &ProjectSettings,
) -> StoreResult<Project> {
    let done = sqlx::query(
        "UPDATE projects SET \
         outbound_allowlist = CASE WHEN $2 THEN $3 ELSE outbound_allowlist END, \
         monthly_call_limit = CASE WHEN $4 THEN $5 ELSE monthly_call_limit END, \
         member_calls_per_minute = CASE WHEN $6 THEN $7 ELSE member_calls_per_minute END, \
         store_bodies = COALESCE($8, store_bodies), body_max_bytes = COALESCE($9, body_max_bytes), \
         redact_fields = COALESCE($10, redact_fields) \
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
    .execute(pool)
    .await?;
    found(done)?;
    get_project(pool, project_id).await
}

/// What the worker needs of a project for each call.
#[derive(Debug, Clone, Default)]
pub struct ProjectRuntime {
    pub outbound_allowlist: Vec<String>,
    /// `Some` when the project stores bodies.
    pub bodies: Option<crate::bodies::BodyPolicy>,
}

pub async fn project_runtime(pool: &PgPool, project_id: Uuid) -> StoreResult<ProjectRuntime> {
    let row: Option<(Vec<String>, bool, i32, Vec<String>)> = sqlx::query_as(
        "SELECT outbound_allowlist, store_bodies, body_max_bytes, redact_fields FROM projects WHERE id = $1",
    )
    .bind(project_id)
    .fetch_optional(pool)
    .await?;
    Ok(row
        .map(|(outbound_allowlist, store, max_bytes, redact)| ProjectRuntime {
            outbound_allowlist,
            bodies: store.then(|| crate::bodies::BodyPolicy::new(max_bytes, &redact)),
        })
        .unwrap_or_default())
}

/// Creates a key in the given integration (the project's default one when `None`).
/// Returns the record and the plaintext, which is never available again.
pub async fn create_api_key(
    pool: &PgPool,
    project_id: Uuid,
    integration_id: Option<Uuid>,
    name: &str,
    scopes: &[String],
) -> StoreResult<(ApiKey, String)> {
    let project = get_project(pool, project_id).await?;
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

pub async fn list_api_keys(pool: &PgPool, project_id: Uuid) -> StoreResult<Vec<ApiKey>> {
    get_project(pool, project_id).await?;
    Ok(sqlx::query_as::<_, ApiKey>(
        "SELECT id, project_id, integration_id, name, scopes, display_prefix, created_at, revoked_at \
         FROM api_keys WHERE project_id = $1 ORDER BY created_at, id",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await?)
}

/// Revokes a key. Idempotent: revoking a revoked key succeeds.
pub async fn revoke_api_key(pool: &PgPool, project_id: Uuid, key_id: Uuid) -> StoreResult<()> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 AND project_id = $2")
            .bind(key_id)
            .bind(project_id)
            .execute(pool)
            .await?;
    found(done)
}

/// An authenticated caller and what its integration may see.
#[derive(Debug, Clone)]
pub struct Principal {
    pub caller: Caller,
    /// Tool names the integration is restricted to (`None`: all).
    pub allowed_tools: Option<Vec<String>>,
    /// The API key's scopes ([`SCOPE_CALL`], [`SCOPE_READ`]).
    pub scopes: Vec<String>,
    /// The project's quota limits as of this request (`crate::quotas::Limits`).
    pub limits: crate::quotas::Limits,
}

/// An API key scope: MCP calls (and reading the runs the key itself may call).
pub const SCOPE_CALL: &str = "call";
/// An API key scope: the whole project's run history, bodies and usage.
pub const SCOPE_READ: &str = "read";
pub const SCOPES: [&str; 2] = [SCOPE_CALL, SCOPE_READ];

/// What a reader of run history and usage may see within its project.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadScope {
    /// Only this integration's runs.
    pub integration_id: Option<Uuid>,
    /// Only these tools' runs (an integration limited by `allowed_tools`).
    pub tools: Option<Vec<String>>,
    /// Only this member's runs (member session tokens).
    pub member_id: Option<String>,
}

impl ReadScope {
    /// The admin token and `read` keys.
    pub fn everything() -> Self {
        Self::default()
    }
}

impl Principal {
    pub fn may_call(&self) -> bool {
        self.scopes.iter().any(|s| s == SCOPE_CALL)
    }

    /// What this credential may read: everything with the `read` scope; else only
    /// its own integration's runs of the tools it may call (and, in a member
    /// session, only that member's).
    pub fn read_scope(&self) -> ReadScope {
        if self.caller.member.is_none() && self.scopes.iter().any(|s| s == SCOPE_READ) {
            return ReadScope::everything();
        }
        ReadScope {
            integration_id: Some(self.caller.integration_id),
            tools: self.allowed_tools.clone(),
            member_id: self.caller.member.as_ref().map(|m| m.id.clone()),
        }
    }

    pub fn may_use(&self, tool: &ToolDefinition) -> bool {
        let allowed = self
            .allowed_tools
            .as_ref()
            .is_none_or(|names| names.contains(&tool.name));
        allowed && (!tool.require_member || self.caller.member.is_some())
    }
}

type KeyRow = (
    Uuid,
    Uuid,
    Uuid,
    Option<Vec<String>>,
    Vec<String>,
    Option<i64>,
    Option<i32>,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// A credential query: a live key with its integration and its project's quota
/// limits (one query for both), then the given joins and conditions. A static
/// string, so the hot path neither formats nor re-prepares it.
macro_rules! key_query {
    ($rest:literal) => {
        concat!(
            "SELECT k.project_id, k.integration_id, k.id, i.allowed_tools, k.scopes, p.monthly_call_limit, \
             p.member_calls_per_minute, date_trunc('month', now(), 'UTC'), date_trunc('minute', now()) \
             FROM api_keys k JOIN integrations i ON i.id = k.integration_id JOIN projects p ON p.id = k.project_id ",
            $rest
        )
    };
}

fn principal_of(row: KeyRow, member: Option<Member>) -> Principal {
    let (project_id, integration_id, api_key_id, allowed_tools, scopes, monthly, per_minute, month, minute) = row;
    Principal {
        caller: Caller {
            project_id,
            integration_id,
            api_key_id,
            member,
        },
        allowed_tools,
        scopes,
        limits: (monthly, per_minute, month, minute),
    }
}

/// The caller behind an API key, if the key exists and is live.
pub async fn authenticate_api_key(pool: &PgPool, key: &str) -> StoreResult<Option<Principal>> {
    let row: Option<KeyRow> = sqlx::query_as(key_query!(
        "WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND i.deleted_at IS NULL"
    ))
    .bind(credentials::hash_api_key(key))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| principal_of(row, None)))
}

/// The caller behind a member session, if its API key and integration are live
/// and the member's sessions were not revoked after it was issued.
pub async fn authenticate_member(pool: &PgPool, api_key_id: Uuid, member: Member) -> StoreResult<Option<Principal>> {
    let row: Option<KeyRow> = sqlx::query_as(key_query!(
        "LEFT JOIN member_revocations r ON r.project_id = k.project_id AND r.member_id = $2 \
         WHERE k.id = $1 AND k.revoked_at IS NULL AND i.deleted_at IS NULL \
         AND (r.revoked_before IS NULL OR r.revoked_before <= $3)"
    ))
    .bind(api_key_id)
    .bind(storable::text(&member.id))
    .bind(member.session_issued_at)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| principal_of(row, Some(member))))
}

/// Why a caller (as it is now, from [`current_principal`]) may not call `tool`, if so.
pub fn revocation(principal: Option<Principal>, tool: &ToolDefinition) -> Option<String> {
    match principal {
        None => Some("the credential that made the call was revoked".into()),
        Some(p) if !p.may_use(tool) => Some(format!("the caller may no longer use tool `{}`", tool.name)),
        Some(_) => None,
    }
}

/// The caller's credential as it stands now: `None` once its key, integration or
/// member session was revoked.
pub async fn current_principal(pool: &PgPool, caller: &Caller) -> StoreResult<Option<Principal>> {
    let principal = match &caller.member {
        Some(member) => authenticate_member(pool, caller.api_key_id, member.clone()).await?,
        None => {
            let row: Option<KeyRow> = sqlx::query_as(key_query!(
                "WHERE k.id = $1 AND k.revoked_at IS NULL AND i.deleted_at IS NULL"
            ))
            .bind(caller.api_key_id)
            .fetch_optional(pool)
            .await?;
            row.map(|row| principal_of(row, None))
        }
    };
    Ok(principal)
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Integration {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub allowed_tools: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
}

pub async fn create_integration(
    pool: &PgPool,
    project_id: Uuid,
    name: &str,
    allowed_tools: Option<&[String]>,
) -> StoreResult<Integration> {
    get_project(pool, project_id).await?;
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

pub async fn list_integrations(pool: &PgPool, project_id: Uuid) -> StoreResult<Vec<Integration>> {
    get_project(pool, project_id).await?;
    Ok(sqlx::query_as::<_, Integration>(
        "SELECT id, project_id, name, allowed_tools, created_at FROM integrations \
         WHERE project_id = $1 AND deleted_at IS NULL ORDER BY created_at, id",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await?)
}

pub async fn get_integration(pool: &PgPool, project_id: Uuid, id: Uuid) -> StoreResult<Integration> {
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
pub async fn delete_integration(pool: &PgPool, project_id: Uuid, id: Uuid) -> StoreResult<()> {
    let live: (i64,) = sqlx::query_as("SELECT count(*) FROM integrations WHERE project_id = $1 AND deleted_at IS NULL")
        .bind(project_id)
        .fetch_one(pool)
        .await?;
    if live.0 <= 1 {
        get_integration(pool, project_id, id).await?;
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

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MemberKey {
    pub project_id: Uuid,
    pub kid: String,
    pub public_key: String,
    pub created_at: DateTime<Utc>,
}

pub async fn create_member_key(pool: &PgPool, project_id: Uuid, kid: &str, public_key: &str) -> StoreResult<MemberKey> {
    get_project(pool, project_id).await?;
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

pub async fn list_member_keys(pool: &PgPool, project_id: Uuid) -> StoreResult<Vec<MemberKey>> {
    get_project(pool, project_id).await?;
    Ok(sqlx::query_as::<_, MemberKey>(
        "SELECT project_id, kid, public_key, created_at FROM member_keys \
         WHERE project_id = $1 AND revoked_at IS NULL ORDER BY created_at",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await?)
}

pub async fn delete_member_key(pool: &PgPool, project_id: Uuid, kid: &str) -> StoreResult<()> {
    let done = sqlx::query(
        "UPDATE member_keys SET revoked_at = now() WHERE project_id = $1 AND kid = $2 AND revoked_at IS NULL",
    )
    .bind(project_id)
    .bind(storable::text(kid))
    .execute(pool)
    .await?;
    found(done)
}

pub async fn member_key(pool: &PgPool, project_id: Uuid, kid: &str) -> StoreResult<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT public_key FROM member_keys WHERE project_id = $1 AND kid = $2 AND revoked_at IS NULL")
            .bind(project_id)
            .bind(storable::text(kid))
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| r.0))
}

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

/// Ends every session of a member issued up to now.
pub async fn revoke_member_sessions(pool: &PgPool, project_id: Uuid, member_id: &str) -> StoreResult<()> {
    get_project(pool, project_id).await?;
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

#[derive(sqlx::FromRow)]
struct ToolRow {
    id: Uuid,
    project_id: Uuid,
    name: String,
    title: Option<String>,
    description: String,
    input_schema: Json<Value>,
    output_schema: Option<Json<Value>>,
    annotations: Option<Json<crate::domain::ToolAnnotations>>,
    response_mode: String,
    base_url: String,
    http_method: String,
    endpoint_path: String,
    headers_template: Json<BTreeMap<String, String>>,
    query_template: Json<BTreeMap<String, String>>,
    body_template: Option<Json<Value>>,
    auth_strategy: String,
    auth_secret_ciphertext: Option<Vec<u8>>,
    auth_secret_previous_ciphertext: Option<Vec<u8>>,
    auth_secret_previous_expires_at: Option<DateTime<Utc>>,
    timeout_ms: i32,
    enabled: bool,
    require_member: bool,
    inject_member_identity: bool,
    retry_policy: Option<Json<crate::domain::RetryPolicy>>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const TOOL_COLUMNS: &str = "id, project_id, name, title, description, input_schema, output_schema, \
     annotations, response_mode, base_url, http_method, endpoint_path, headers_template, query_template, body_template, auth_strategy, \
     auth_secret_ciphertext, auth_secret_previous_ciphertext, auth_secret_previous_expires_at, \
     timeout_ms, enabled, require_member, inject_member_identity, retry_policy, version, \
     created_at, updated_at";

impl TryFrom<ToolRow> for ToolDefinition {
    type Error = StoreError;

    fn try_from(row: ToolRow) -> StoreResult<Self> {
        let corrupt =
            |what: &str| StoreError::Db(sqlx::Error::Decode(format!("tools.{what} has an unknown value").into()));
        Ok(ToolDefinition {
            id: row.id,
            project_id: row.project_id,
            name: row.name,
            title: row.title,
            description: row.description,
            input_schema: row.input_schema.0,
            output_schema: row.output_schema.map(|j| j.0),
            annotations: row.annotations.map(|j| j.0),
            response_mode: ResponseMode::parse(&row.response_mode).ok_or_else(|| corrupt("response_mode"))?,
            base_url: row.base_url,
            http_method: HttpMethod::parse(&row.http_method).ok_or_else(|| corrupt("http_method"))?,
            endpoint_path: row.endpoint_path,
            headers_template: row.headers_template.0,
            query_template: row.query_template.0,
            body_template: row.body_template.map(|j| j.0),
            auth_strategy: AuthStrategy::parse(&row.auth_strategy).ok_or_else(|| corrupt("auth_strategy"))?,
            has_auth_secret: row.auth_secret_ciphertext.is_some(),
            auth_secret_ciphertext: row.auth_secret_ciphertext,
            previous_secret_expires_at: row.auth_secret_previous_expires_at.filter(|at| *at > Utc::now()),
            auth_secret_previous_ciphertext: row
                .auth_secret_previous_ciphertext
                .filter(|_| row.auth_secret_previous_expires_at.is_some_and(|at| at > Utc::now())),
            timeout_ms: u64::try_from(row.timeout_ms).map_err(|_| corrupt("timeout_ms"))?,
            enabled: row.enabled,
            require_member: row.require_member,
            inject_member_identity: row.inject_member_identity,
            retry: row.retry_policy.map(|j| j.0),
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

fn unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

type ToolQuery<'q> = sqlx::query::QueryAs<'q, sqlx::Postgres, ToolRow, sqlx::postgres::PgArguments>;

/// Binds a spec's columns as `$3`…`$22`, in the one order both the INSERT and the
/// UPDATE of a tool use (`$1` and `$2` are the ids).
fn bind_spec<'q>(query: ToolQuery<'q>, spec: &'q ToolSpec, ciphertext: Option<Vec<u8>>) -> ToolQuery<'q> {
    // Tenant text, made storable like every other (the admin API already refuses
    // NUL; this keeps the rule in one place for every writer).
    let json = |value: &'q Value| Json(storable::json(value));
    let templates = |map: &'q BTreeMap<String, String>| -> Json<BTreeMap<String, String>> {
        Json(
            map.iter()
                .map(|(k, v)| (storable::owned(k), storable::owned(v)))
                .collect(),
        )
    };
    query
        .bind(storable::text(&spec.name))
        .bind(storable::text(&spec.description))
        .bind(json(&spec.input_schema))
        .bind(storable::text(&spec.base_url))
        .bind(spec.http_method.as_str())
        .bind(storable::text(&spec.endpoint_path))
        .bind(templates(&spec.headers_template))
        .bind(templates(&spec.query_template))
        .bind(spec.body_template.as_ref().map(json))
        .bind(spec.auth_strategy.as_str())
        .bind(ciphertext)
        .bind(spec.timeout_ms as i32)
        .bind(spec.enabled)
        .bind(spec.title.as_deref().map(storable::text))
        .bind(spec.output_schema.as_ref().map(json))
        .bind(spec.annotations.as_ref().map(Json))
        .bind(spec.response_mode.as_str())
        .bind(spec.require_member)
        .bind(spec.inject_member_identity)
        .bind(spec.retry.as_ref().map(Json))
}

/// Registers a tool; the spec must already be validated.
pub async fn create_tool(
    pool: &PgPool,
    secrets: &SecretBox,
    project_id: Uuid,
    spec: &ToolSpec,
) -> StoreResult<ToolDefinition> {
    get_project(pool, project_id).await?;
    let id = Uuid::now_v7();
    let ciphertext = spec.auth_secret.as_deref().map(|s| secrets.seal(id, s)).transpose()?;
    let insert = format!(
        "INSERT INTO tools (id, project_id, name, description, input_schema, base_url, http_method, \
         endpoint_path, headers_template, query_template, body_template, auth_strategy, \
         auth_secret_ciphertext, timeout_ms, enabled, title, output_schema, annotations, response_mode, \
         require_member, inject_member_identity, retry_policy) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22) \
         RETURNING {TOOL_COLUMNS}"
    );
    let row = bind_spec(
        sqlx::query_as::<_, ToolRow>(&insert).bind(id).bind(project_id),
        spec,
        ciphertext,
    )
    .fetch_one(pool)
    .await
    .map_err(|e| {
        if unique_violation(&e) {
            StoreError::Conflict(format!("a tool named `{}` already exists in this project", spec.name))
        } else {
            e.into()
        }
    })?;
    row.try_into()
}

/// Replaces a tool's definition (bumping its version). When the new spec carries no
/// `auth_secret` and keeps the same auth strategy, the stored secret is kept.
pub async fn replace_tool(
    pool: &PgPool,
    secrets: &SecretBox,
    project_id: Uuid,
    name: &str,
    spec: &ToolSpec,
) -> StoreResult<ToolDefinition> {
    let current = get_tool(pool, project_id, name).await?;
    // A new HMAC secret with an overlap keeps the current one signing for a while;
    // any other change of secret ends an overlap in progress.
    let previous: (Option<Vec<u8>>, Option<DateTime<Utc>>) = match (&spec.auth_secret, spec.rotation_overlap_secs) {
        (Some(_), Some(overlap)) if overlap > 0 && current.auth_strategy == AuthStrategy::HmacSignature => (
            current.auth_secret_ciphertext.clone(),
            Utc::now().checked_add_signed(chrono::Duration::seconds(i64::try_from(overlap).unwrap_or(0))),
        ),
        (Some(_), _) => (None, None),
        (None, _) => (
            current.auth_secret_previous_ciphertext.clone(),
            current.previous_secret_expires_at,
        ),
    };
    let ciphertext = match (&spec.auth_secret, spec.auth_strategy) {
        (Some(secret), _) => Some(secrets.seal(current.id, secret)?),
        (None, AuthStrategy::None) => None,
        (None, strategy) if strategy == current.auth_strategy => current.auth_secret_ciphertext.clone(),
        (None, _) => None,
    };
    let update = format!(
        "UPDATE tools SET name = $3, description = $4, input_schema = $5, base_url = $6, \
         http_method = $7, endpoint_path = $8, headers_template = $9, query_template = $10, \
         body_template = $11, auth_strategy = $12, auth_secret_ciphertext = $13, timeout_ms = $14, \
         enabled = $15, title = $16, output_schema = $17, annotations = $18, response_mode = $19, \
         require_member = $20, inject_member_identity = $21, retry_policy = $22, \
         auth_secret_previous_ciphertext = $23, auth_secret_previous_expires_at = $24, \
         version = version + 1, updated_at = now() \
         WHERE project_id = $1 AND id = $2 RETURNING {TOOL_COLUMNS}"
    );
    let row = bind_spec(
        sqlx::query_as::<_, ToolRow>(&update).bind(project_id).bind(current.id),
        spec,
        ciphertext,
    )
    .bind(previous.0)
    .bind(previous.1)
    .fetch_optional(pool)
    .await
    .map_err(|e| {
        if unique_violation(&e) {
            StoreError::Conflict(format!("a tool named `{}` already exists in this project", spec.name))
        } else {
            e.into()
        }
    })?
    .ok_or(StoreError::NotFound)?;
    row.try_into()
}

pub async fn delete_tool(pool: &PgPool, project_id: Uuid, name: &str) -> StoreResult<()> {
    let done = sqlx::query("DELETE FROM tools WHERE project_id = $1 AND name = $2")
        .bind(project_id)
        .bind(storable::text(name))
        .execute(pool)
        .await?;
    found(done)
}

pub async fn get_tool(pool: &PgPool, project_id: Uuid, name: &str) -> StoreResult<ToolDefinition> {
    sqlx::query_as::<_, ToolRow>(&format!(
        "SELECT {TOOL_COLUMNS} FROM tools WHERE project_id = $1 AND name = $2"
    ))
    .bind(project_id)
    .bind(storable::text(name))
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)?
    .try_into()
}

pub async fn get_tool_by_id(pool: &PgPool, tool_id: Uuid) -> StoreResult<ToolDefinition> {
    sqlx::query_as::<_, ToolRow>(&format!("SELECT {TOOL_COLUMNS} FROM tools WHERE id = $1"))
        .bind(tool_id)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
}

/// Re-encrypts every tool secret (current and previous HMAC secrets) under the
/// current master key. Returns how many tools were rewritten.
pub async fn reseal_secrets(pool: &PgPool, secrets: &SecretBox) -> StoreResult<u64> {
    type Sealed = Option<Vec<u8>>;
    // One transaction, rows locked: a concurrent PUT cannot be overwritten, and a
    // failure leaves every secret as it was.
    let mut tx = pool.begin().await?;
    let rows: Vec<(Uuid, Sealed, Sealed)> = sqlx::query_as(
        "SELECT id, auth_secret_ciphertext, auth_secret_previous_ciphertext FROM tools \
         WHERE auth_secret_ciphertext IS NOT NULL OR auth_secret_previous_ciphertext IS NOT NULL FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut rewritten: u64 = 0;
    for (id, current, previous) in rows {
        let reseal = |sealed: Option<Vec<u8>>| -> StoreResult<Option<Vec<u8>>> {
            sealed
                .map(|s| secrets.open(id, &s).and_then(|plain| secrets.seal(id, &plain)))
                .transpose()
                .map_err(StoreError::from)
        };
        sqlx::query("UPDATE tools SET auth_secret_ciphertext = $2, auth_secret_previous_ciphertext = $3 WHERE id = $1")
            .bind(id)
            .bind(reseal(current)?)
            .bind(reseal(previous)?)
            .execute(&mut *tx)
            .await?;
        rewritten = rewritten.saturating_add(1);
    }
    tx.commit().await?;
    Ok(rewritten)
}

/// Tools of a project in name order, after `after` (keyset pagination).
pub async fn list_tools(
    pool: &PgPool,
    project_id: Uuid,
    enabled_only: bool,
    after: Option<&str>,
    limit: i64,
) -> StoreResult<Vec<ToolDefinition>> {
    sqlx::query_as::<_, ToolRow>(&format!(
        "SELECT {TOOL_COLUMNS} FROM tools WHERE project_id = $1 AND ($2 = false OR enabled) \
         AND ($3::text IS NULL OR name > $3) ORDER BY name COLLATE \"C\" LIMIT $4"
    ))
    .bind(project_id)
    .bind(enabled_only)
    .bind(after.map(storable::text))
    .bind(limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(TryInto::try_into)
    .collect()
}

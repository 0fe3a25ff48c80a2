//! Tools (`tools`): registered, replaced (bumping the version), looked up by name
//! or id, listed, deleted; their secrets sealed under the master key and
//! resealed when it changes.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, types::Json};
use tengine_core::{
    domain::{
        Approval, AuthStrategy, HttpMethod, ResponseMode, RetryPolicy, TaskSupport, ToolAnnotations, ToolDefinition,
        ToolSpec,
    },
    secrets::SecretBox,
    storable,
};
use uuid::Uuid;

use crate::{
    StoreError, StoreResult,
    error::{found, unique_violation},
    freshness::{FreshCache, Freshness},
    projects,
};

#[derive(sqlx::FromRow)]
struct ToolRow {
    id: Uuid,
    project_id: Uuid,
    name: String,
    title: Option<String>,
    description: String,
    input_schema: Json<Value>,
    output_schema: Option<Json<Value>>,
    annotations: Option<Json<ToolAnnotations>>,
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
    retry_policy: Option<Json<RetryPolicy>>,
    task_support: String,
    approval: String,
    client_capabilities: Option<Json<Value>>,
    source: Option<Json<Value>>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const TOOL_COLUMNS: &str = "id, project_id, name, title, description, input_schema, output_schema, \
     annotations, response_mode, base_url, http_method, endpoint_path, headers_template, query_template, body_template, auth_strategy, \
     auth_secret_ciphertext, auth_secret_previous_ciphertext, auth_secret_previous_expires_at, \
     timeout_ms, enabled, require_member, inject_member_identity, retry_policy, task_support, approval, \
     client_capabilities, source, version, created_at, updated_at";

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
            task_support: TaskSupport::parse(&row.task_support).ok_or_else(|| corrupt("task_support"))?,
            approval: Approval::parse(&row.approval).ok_or_else(|| corrupt("approval"))?,
            client_capabilities: row.client_capabilities.map(|j| j.0),
            source: row.source.map(|j| j.0),
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

type ToolQuery<'q> = sqlx::query::QueryAs<'q, sqlx::Postgres, ToolRow, sqlx::postgres::PgArguments>;

/// Binds a spec's columns as `$3`…`$25`, in the one order both the INSERT and the
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
        .bind(spec.task_support.as_str())
        .bind(spec.approval.as_str())
        .bind(spec.client_capabilities.as_ref().map(json))
}

/// Registers a tool; the spec must already be validated.
pub async fn create(
    pool: &PgPool,
    secrets: &SecretBox,
    project_id: Uuid,
    spec: &ToolSpec,
) -> StoreResult<ToolDefinition> {
    insert(pool, secrets, project_id, spec, None).await
}

/// Registers a tool imported from `source` (see [`imported`]).
pub async fn create_imported(
    pool: &PgPool,
    secrets: &SecretBox,
    project_id: Uuid,
    spec: &ToolSpec,
    source: &Value,
) -> StoreResult<ToolDefinition> {
    insert(pool, secrets, project_id, spec, Some(source)).await
}

async fn insert(
    pool: &PgPool,
    secrets: &SecretBox,
    project_id: Uuid,
    spec: &ToolSpec,
    source: Option<&Value>,
) -> StoreResult<ToolDefinition> {
    projects::get(pool, project_id).await?;
    let id = Uuid::now_v7();
    let ciphertext = spec.auth_secret.as_deref().map(|s| secrets.seal(id, s)).transpose()?;
    let insert = format!(
        "INSERT INTO tools (id, project_id, name, description, input_schema, base_url, http_method, \
         endpoint_path, headers_template, query_template, body_template, auth_strategy, \
         auth_secret_ciphertext, timeout_ms, enabled, title, output_schema, annotations, response_mode, \
         require_member, inject_member_identity, retry_policy, task_support, approval, client_capabilities, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, \
         $23, $24, $25, $26) \
         RETURNING {TOOL_COLUMNS}"
    );
    let row = bind_spec(
        sqlx::query_as::<_, ToolRow>(&insert).bind(id).bind(project_id),
        spec,
        ciphertext,
    )
    .bind(source.map(|s| Json(storable::json(s))))
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
pub async fn replace(
    pool: &PgPool,
    secrets: &SecretBox,
    project_id: Uuid,
    name: &str,
    spec: &ToolSpec,
) -> StoreResult<ToolDefinition> {
    update(pool, secrets, project_id, name, spec, None).await
}

/// Replaces an imported tool's definition and its source (a re-import).
pub async fn replace_imported(
    pool: &PgPool,
    secrets: &SecretBox,
    project_id: Uuid,
    name: &str,
    spec: &ToolSpec,
    source: &Value,
) -> StoreResult<ToolDefinition> {
    update(pool, secrets, project_id, name, spec, Some(source)).await
}

async fn update(
    pool: &PgPool,
    secrets: &SecretBox,
    project_id: Uuid,
    name: &str,
    spec: &ToolSpec,
    source: Option<&Value>,
) -> StoreResult<ToolDefinition> {
    let current = get(pool, project_id, name).await?;
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
         task_support = $23, approval = $24, client_capabilities = $25, \
         auth_secret_previous_ciphertext = $26, auth_secret_previous_expires_at = $27, \
         source = COALESCE($28, source), version = version + 1, updated_at = now() \
         WHERE project_id = $1 AND id = $2 RETURNING {TOOL_COLUMNS}"
    );
    let row = bind_spec(
        sqlx::query_as::<_, ToolRow>(&update).bind(project_id).bind(current.id),
        spec,
        ciphertext,
    )
    .bind(previous.0)
    .bind(previous.1)
    .bind(source.map(|s| Json(storable::json(s))))
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

pub async fn delete(pool: &PgPool, project_id: Uuid, name: &str) -> StoreResult<()> {
    let done = sqlx::query("DELETE FROM tools WHERE project_id = $1 AND name = $2")
        .bind(project_id)
        .bind(storable::text(name))
        .execute(pool)
        .await?;
    found(done)
}

pub async fn get(pool: &PgPool, project_id: Uuid, name: &str) -> StoreResult<ToolDefinition> {
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

/// The tools a project imported from the API titled `api` (their `source.api`).
pub async fn imported(pool: &PgPool, project_id: Uuid, api: &str) -> StoreResult<Vec<ToolDefinition>> {
    sqlx::query_as::<_, ToolRow>(&format!(
        "SELECT {TOOL_COLUMNS} FROM tools WHERE project_id = $1 AND source->>'api' = $2"
    ))
    .bind(project_id)
    .bind(storable::text(api))
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(TryInto::try_into)
    .collect()
}

/// Every tool name of a project (an import gives new tools names nobody has).
pub async fn names(pool: &PgPool, project_id: Uuid) -> StoreResult<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT name FROM tools WHERE project_id = $1")
        .bind(project_id)
        .fetch_all(pool)
        .await?)
}

pub async fn get_by_id(pool: &PgPool, tool_id: Uuid) -> StoreResult<ToolDefinition> {
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
pub async fn list(
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

/// Tool definitions in memory on every ingress and worker, current by
/// [`crate::freshness`]: a tool disabled, changed or deleted is seen as such from
/// the moment the change answered. Unknown tools are not kept (a tool created a
/// moment ago is found at once).
pub struct Cached {
    pool: PgPool,
    by_name: FreshCache<(Uuid, String), Arc<ToolDefinition>>,
    by_id: FreshCache<Uuid, Arc<ToolDefinition>>,
}

/// Tools kept per instance at most (per index).
const KEPT: u64 = 10_000;

impl Cached {
    pub fn new(pool: PgPool, freshness: Freshness) -> Self {
        Self {
            pool,
            by_name: FreshCache::new(freshness.clone(), KEPT),
            by_id: FreshCache::new(freshness, KEPT),
        }
    }

    /// [`get`], from memory when current.
    pub async fn get(&self, project_id: Uuid, name: &str) -> StoreResult<Arc<ToolDefinition>> {
        self.by_name
            .get((project_id, name.to_string()), || async {
                Ok((Arc::new(get(&self.pool, project_id, name).await?), Some(project_id)))
            })
            .await
    }

    /// [`get_by_id`], from memory when current.
    pub async fn by_id(&self, tool_id: Uuid) -> StoreResult<Arc<ToolDefinition>> {
        self.by_id
            .get(tool_id, || async {
                let tool = get_by_id(&self.pool, tool_id).await?;
                let project = tool.project_id;
                Ok((Arc::new(tool), Some(project)))
            })
            .await
    }
}

//! Principals: the caller behind an API key or a member session, what it may
//! call and what run history it may read. One query reads the key, its
//! integration and its project's quota limits (`api_keys`, `integrations`,
//! `projects`, `member_revocations`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tengine_core::{
    credentials,
    domain::ToolDefinition,
    envelope::{Caller, Member},
    storable,
};
use uuid::Uuid;

use crate::{
    StoreResult,
    freshness::{FreshCache, Freshness},
};

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
);

/// A credential query: a live key with its integration and its project's quota
/// limits (one query for both), then the given joins and conditions. A static
/// string, so the hot path neither formats nor re-prepares it.
macro_rules! key_query {
    ($rest:literal) => {
        concat!(
            "SELECT k.project_id, k.integration_id, k.id, i.allowed_tools, k.scopes, p.monthly_call_limit, \
             p.member_calls_per_minute FROM api_keys k JOIN integrations i ON i.id = k.integration_id JOIN projects p ON p.id = k.project_id ",
            $rest
        )
    };
}

fn principal_of(row: KeyRow, member: Option<Member>) -> Principal {
    let (project_id, integration_id, api_key_id, allowed_tools, scopes, monthly, per_minute) = row;
    Principal {
        caller: Caller {
            project_id,
            integration_id,
            api_key_id,
            member,
        },
        allowed_tools,
        scopes,
        limits: (monthly, per_minute),
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

/// Why a caller (as it is now, from [`current`]) may not call `tool`, if so.
pub fn revocation(principal: Option<Principal>, tool: &ToolDefinition) -> Option<String> {
    match principal {
        None => Some("the credential that made the call was revoked".into()),
        Some(p) if !p.may_use(tool) => Some(format!("the caller may no longer use tool `{}`", tool.name)),
        Some(_) => None,
    }
}

/// The caller's credential as it stands now: `None` once its key, integration or
/// member session was revoked.
pub async fn current(pool: &PgPool, caller: &Caller) -> StoreResult<Option<Principal>> {
    let principal = match &caller.member {
        Some(member) => authenticate_member(pool, caller.api_key_id, member.clone()).await?,
        None => live_key(pool, caller.api_key_id).await?,
    };
    Ok(principal)
}

/// Credentials in memory on every ingress and worker, current by
/// [`crate::freshness`]: a revoked key, integration or member session is refused
/// from the moment its revocation answered, without a query per call.
pub struct Principals {
    pool: PgPool,
    /// Live API keys by the hash of their secret (unknown secrets are not kept:
    /// anyone can make them up).
    by_secret: FreshCache<Vec<u8>, Option<Principal>>,
    /// By key id and, for member sessions, the member and the session's issue time
    /// (the member itself is the token's, set on each use).
    by_key: FreshCache<KeyOf, Option<Principal>>,
}

/// A key id and, for a member session, the member's id and the session's issue time.
type KeyOf = (Uuid, Option<(String, DateTime<Utc>)>);

/// Credentials kept per instance at most.
const KEPT: u64 = 100_000;

impl Principals {
    pub fn new(pool: PgPool, freshness: Freshness) -> Self {
        Self {
            pool,
            by_secret: FreshCache::new(freshness.clone(), KEPT),
            by_key: FreshCache::new(freshness, KEPT),
        }
    }

    /// [`authenticate_api_key`], from memory when current.
    pub async fn api_key(&self, key: &str) -> StoreResult<Option<Principal>> {
        self.by_secret
            .get(credentials::hash_api_key(key), || async {
                let found = authenticate_api_key(&self.pool, key).await?;
                // An unknown secret has no project: not kept.
                let project = found.as_ref().map(|p| p.caller.project_id);
                Ok((found, project))
            })
            .await
    }

    /// [`authenticate_member`], from memory when current.
    pub async fn member(&self, api_key_id: Uuid, member: Member) -> StoreResult<Option<Principal>> {
        let key = (api_key_id, Some((member.id.clone(), member.session_issued_at)));
        let found = self
            .by_key
            .get(key, || async {
                let found = authenticate_member(&self.pool, api_key_id, member.clone()).await?;
                // A refusal is kept only under the project it is known for.
                let project = found.as_ref().map(|p| p.caller.project_id);
                Ok((found.map(without_member), project))
            })
            .await?;
        Ok(found.map(|p| with_member(p, member)))
    }

    /// [`current`], from memory when current.
    pub async fn current(&self, caller: &Caller) -> StoreResult<Option<Principal>> {
        let key = (
            caller.api_key_id,
            caller.member.as_ref().map(|m| (m.id.clone(), m.session_issued_at)),
        );
        let found = self
            .by_key
            .get(key, || async {
                let found = current(&self.pool, caller).await?;
                Ok((found.map(without_member), Some(caller.project_id)))
            })
            .await?;
        Ok(match (&caller.member, found) {
            (Some(member), Some(p)) => Some(with_member(p, member.clone())),
            (_, found) => found,
        })
    }
}

fn without_member(mut principal: Principal) -> Principal {
    principal.caller.member = None;
    principal
}

fn with_member(mut principal: Principal, member: Member) -> Principal {
    principal.caller.member = Some(member);
    principal
}

/// The caller behind an API key id, if the key and its integration are live.
pub async fn live_key(pool: &PgPool, api_key_id: Uuid) -> StoreResult<Option<Principal>> {
    let row: Option<KeyRow> = sqlx::query_as(key_query!(
        "WHERE k.id = $1 AND k.revoked_at IS NULL AND i.deleted_at IS NULL"
    ))
    .bind(api_key_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| principal_of(row, None)))
}

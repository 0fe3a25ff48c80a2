//! Client retries map to one run. A tools/call is identified by its idempotency
//! key: the `Idempotency-Key` header, else `params._meta.idempotencyKey`
//! (SEP-3182), else its session and JSON-RPC id. The first call claims the key
//! with an atomic KV create; a retry with the same key gets the same Run ID (it
//! waits for the run, or receives its recorded outcome, and the API is not
//! called again); the same key with other arguments is refused. Keys live for
//! `ingress.idempotency_ttl_secs` (24 h by default), far beyond JetStream's
//! duplicate window.
//!
//! The rule that keeps one key to one execution for its whole lifetime:
//! * A key is bound to one Run ID when it is first claimed, forever: a retry that
//!   takes a claim over re-queues that same run, never a new one. Every command
//!   of a key therefore carries the same `Nats-Msg-Id`, which JetStream stores at
//!   most once within its duplicate window.
//! * The claimant holds a lease on the claim (`ingress.idempotency_lease_ms`),
//!   refreshed by compare-and-set while it works (quota, queueing), and publishes
//!   only while its lease holds. Nobody takes a claim over while its lease holds,
//!   so a slow claimant (a held row lock, a slow publish) is never overtaken.
//! * Once the lease has lapsed, a retry takes the claim over only if the run left
//!   no trace: no command in the queue, no `Accepted`/`Finished` in the event
//!   log, no row in run history (which outlives the key). A run that was stored
//!   is always found by one of these: its command stays queued until its outcome
//!   is logged, and history keeps it after the log has rolled.
//! * The one exception: a run cancelled before any attempt (its client closed the
//!   stream while it was queued) never reached the API, so a retry with its key
//!   runs the call as a new run.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::kv::{self, CreateErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::jsonrpc::{RpcError, RpcResult};

pub const HEADER: &str = "idempotency-key";
pub const META_KEY: &str = "idempotencyKey";
/// Longest key a client may send.
pub const MAX_KEY_LEN: usize = 255;
/// Clock difference tolerated between ingress instances when one reads another's
/// lease (wall clocks; keep them NTP-synchronised).
pub const CLOCK_SKEW_MS: i64 = 2_000;

/// The `Idempotency-Key` header of a request, if it has a well-formed one.
pub(crate) fn from_header(headers: &axum::http::HeaderMap, id: &Value) -> RpcResult<Option<String>> {
    headers
        .get(HEADER)
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
                .map(str::to_string)
                .ok_or_else(|| {
                    RpcError::invalid_request(
                        axum::http::StatusCode::BAD_REQUEST,
                        format!("Idempotency-Key must be 1-{MAX_KEY_LEN} visible ASCII characters"),
                    )
                    .with_id(id)
                })
        })
        .transpose()
}

#[derive(Clone)]
pub struct Idempotency {
    kv: kv::Store,
    lease_ms: i64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Claim {
    run_id: Uuid,
    fingerprint: String,
    /// When the key was first claimed (unix ms).
    #[serde(default)]
    at_ms: i64,
    /// Until when (unix ms, the holder's clock) its holder may still queue the run.
    /// Claims written before leases existed read as lapsed.
    #[serde(default)]
    lease_until_ms: i64,
}

/// What a key's run left behind, as far as a retry needs to know.
pub enum Trace {
    /// Nothing anywhere (queue, event log, history).
    None,
    /// The run exists (queued, running or finished).
    Exists,
    /// The run finished `cancelled` without any attempt: it never reached the API.
    CancelledUnattempted,
}

/// What a claim attempt found.
pub enum Claimed {
    /// This call owns the key (a fresh claim, or one taken over): queue `lease.run_id`.
    Owned(Box<Lease>),
    /// A call with the same key and arguments exists: follow that run.
    Existing(Uuid),
    /// The key's first call holds its lease: it is still being queued.
    Pending(Uuid),
    /// The key was used with other arguments.
    Conflict(Uuid),
}

/// Object keys sorted at every level, so argument order does not matter.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&map[k])))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// What must match for a retry: the tool and its arguments.
pub fn fingerprint(tool: &str, arguments: &Map<String, Value>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(tool.as_bytes());
    hasher.update([0]);
    hasher.update(canonical(&Value::Object(arguments.clone())).to_string().as_bytes());
    hex::encode(hasher.finalize())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Idempotency {
    pub fn new(kv: kv::Store, lease: Duration) -> Self {
        Self {
            kv,
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// The KV key of a client-chosen key (scoped to the integration) or of a session + request id.
    pub fn key(project_id: Uuid, scope: &str) -> String {
        let digest = Sha256::digest(format!("{project_id}\n{scope}").as_bytes());
        hex::encode(&digest[..20])
    }

    /// Claims `key` for `run_id`, or finds who holds it. `traced` tells whether a
    /// run left a trace (queue, event log, history): a retry follows a run that did,
    /// waits for a holder whose lease holds, and takes over only a lapsed claim
    /// whose run left none.
    pub async fn claim<F, Fut>(&self, key: &str, run_id: Uuid, fingerprint: &str, traced: F) -> Result<Claimed, String>
    where
        F: FnOnce(Uuid) -> Fut,
        Fut: std::future::Future<Output = Result<Trace, String>>,
    {
        let fresh = Claim {
            run_id,
            fingerprint: fingerprint.to_string(),
            at_ms: now_ms(),
            lease_until_ms: now_ms().saturating_add(self.lease_ms),
        };
        let value = serde_json::to_vec(&fresh).map_err(|e| e.to_string())?;
        match self.kv.create(key, value.into()).await {
            Ok(revision) => return Ok(Claimed::Owned(Box::new(self.lease(key, fresh, revision)))),
            Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {}
            Err(err) => return Err(err.to_string()),
        }
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the idempotency record vanished; retry".to_string())?;
        let existing: Claim = serde_json::from_slice(&entry.value).map_err(|e| e.to_string())?;
        if existing.fingerprint != fingerprint {
            return Ok(Claimed::Conflict(existing.run_id));
        }
        match traced(existing.run_id).await? {
            Trace::Exists => return Ok(Claimed::Existing(existing.run_id)),
            // Its run was cancelled before it reached the API (a client closed its
            // stream): nothing happened, so the call may run now, as a new run.
            Trace::CancelledUnattempted => {
                let renewed = Claim {
                    run_id,
                    at_ms: now_ms(),
                    lease_until_ms: now_ms().saturating_add(self.lease_ms),
                    ..existing
                };
                let value = serde_json::to_vec(&renewed).map_err(|e| e.to_string())?;
                return match self.kv.update(key, value.into(), entry.revision).await {
                    Ok(revision) => Ok(Claimed::Owned(Box::new(self.lease(key, renewed, revision)))),
                    Err(_) => Ok(Claimed::Pending(existing.run_id)),
                };
            }
            Trace::None => {}
        }
        if existing.lease_until_ms.saturating_add(CLOCK_SKEW_MS) > now_ms() {
            return Ok(Claimed::Pending(existing.run_id));
        }
        // Lapsed and traceless: its holder gave up or died before the command was
        // stored. Take it over for the same run (compare-and-set: of several
        // retries, one wins).
        let taken = Claim {
            lease_until_ms: now_ms().saturating_add(self.lease_ms),
            ..existing
        };
        let value = serde_json::to_vec(&taken).map_err(|e| e.to_string())?;
        match self.kv.update(key, value.into(), entry.revision).await {
            Ok(revision) => Ok(Claimed::Owned(Box::new(self.lease(key, taken, revision)))),
            Err(_) => Ok(Claimed::Pending(taken.run_id)),
        }
    }

    /// Marks a single-use token (a confirmation's nonce) spent by `run_id`:
    /// `None` when this call spent it, else the run that spent it first. Kept as
    /// long as idempotency keys, which outlives every token's expiry.
    pub async fn spend(&self, key: &str, run_id: Uuid) -> Result<Option<Uuid>, String> {
        match self.kv.create(key, run_id.to_string().into_bytes().into()).await {
            Ok(_) => Ok(None),
            Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {
                let entry = self.kv.get(key).await.map_err(|e| e.to_string())?;
                let first = entry
                    .and_then(|bytes| std::str::from_utf8(&bytes).ok().and_then(|s| s.parse().ok()))
                    .unwrap_or(Uuid::nil());
                Ok(Some(first))
            }
            Err(err) => Err(err.to_string()),
        }
    }

    fn lease(&self, key: &str, claim: Claim, revision: u64) -> Lease {
        let state = Arc::new(LeaseState {
            revision: AtomicU64::new(revision),
            // Local monotonic-ish bound: the lease is ours until this wall time
            // minus the skew others allow for.
            valid_until_ms: AtomicI64::new(claim.lease_until_ms.saturating_sub(CLOCK_SKEW_MS)),
            lost: AtomicBool::new(false),
        });
        let refresher = tokio::spawn(refresh(
            self.kv.clone(),
            key.to_string(),
            claim.clone(),
            self.lease_ms,
            state.clone(),
        ));
        Lease {
            run_id: claim.run_id,
            key: key.to_string(),
            kv: self.kv.clone(),
            state,
            _refresher: tengine_core::tasks::AbortOnDrop(refresher),
        }
    }
}

struct LeaseState {
    revision: AtomicU64,
    valid_until_ms: AtomicI64,
    lost: AtomicBool,
}

/// A held claim. While it lives, its lease is refreshed; dropping it stops the
/// refreshing (the claim stays, and lapses).
pub struct Lease {
    pub run_id: Uuid,
    key: String,
    kv: kv::Store,
    state: Arc<LeaseState>,
    _refresher: tengine_core::tasks::AbortOnDrop,
}

impl Lease {
    /// How long this holder may still queue the run; zero once the lease is lost
    /// or lapsed. Publishing must stop by then.
    pub fn remaining(&self) -> Duration {
        if self.state.lost.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let left = self
            .state
            .valid_until_ms
            .load(Ordering::Acquire)
            .saturating_sub(now_ms());
        Duration::from_millis(u64::try_from(left).unwrap_or(0))
    }

    /// Gives the key back: the call was refused before it was queued (a quota),
    /// so the same key may be used again.
    pub async fn release(&self) {
        let revision = self.state.revision.load(Ordering::Acquire);
        // Only our own revision: a purge after a takeover would drop another's claim.
        if let Err(err) = self.kv.purge_expect_revision(&self.key, Some(revision)).await {
            tracing::warn!(error = %err, "releasing an idempotency key");
        }
    }
}

/// Keeps the lease alive until aborted; marks it lost if someone else holds the
/// claim now (its revision moved).
async fn refresh(kv: kv::Store, key: String, mut claim: Claim, lease_ms: i64, state: Arc<LeaseState>) {
    let every = Duration::from_millis(u64::try_from(lease_ms / 3).unwrap_or(1).max(1));
    loop {
        tokio::time::sleep(every).await;
        let asked_at = now_ms();
        claim.lease_until_ms = asked_at.saturating_add(lease_ms);
        let Ok(value) = serde_json::to_vec(&claim) else { return };
        let revision = state.revision.load(Ordering::Acquire);
        match kv.update(&key, value.into(), revision).await {
            Ok(next) => {
                state.revision.store(next, Ordering::Release);
                state
                    .valid_until_ms
                    .store(claim.lease_until_ms.saturating_sub(CLOCK_SKEW_MS), Ordering::Release);
            }
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                state.lost.store(true, Ordering::Release);
                return;
            }
            // A passing NATS fault: the lease runs down meanwhile; try again.
            Err(err) => tracing::warn!(error = %err, "refreshing an idempotency lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprints_ignore_key_order_only() {
        let a = json!({"x": 1, "y": {"b": 2, "a": [1, {"d": 1, "c": 2}]}});
        let b = json!({"y": {"a": [1, {"c": 2, "d": 1}], "b": 2}, "x": 1});
        let c = json!({"x": 2, "y": {"b": 2, "a": [1, {"d": 1, "c": 2}]}});
        let obj = |v: Value| v.as_object().cloned().expect("object");
        assert_eq!(fingerprint("t", &obj(a.clone())), fingerprint("t", &obj(b)));
        assert_ne!(fingerprint("t", &obj(a.clone())), fingerprint("t", &obj(c)));
        assert_ne!(fingerprint("t", &obj(a.clone())), fingerprint("u", &obj(a)));
    }

    #[test]
    fn claims_without_a_lease_read_as_lapsed() {
        let old: Claim = serde_json::from_value(json!({"run_id": Uuid::nil(), "fingerprint": "f", "at_ms": 1}))
            .expect("an old claim decodes");
        assert_eq!(old.lease_until_ms, 0);
    }
}

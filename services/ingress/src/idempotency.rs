//! Client retries map to one run. A tools/call is identified by its idempotency
//! key: the `Idempotency-Key` header, else `params._meta.idempotencyKey`
//! (SEP-3182), else its session and JSON-RPC id. The first call claims the key
//! with an atomic KV create; a retry with the same key gets the same Run ID (it
//! waits for the run, or receives its recorded outcome, and the API is not
//! called again); the same key with other arguments is refused. Keys live for
//! `ingress.idempotency_ttl_secs` (24 h by default), far beyond JetStream's
//! duplicate window.

use async_nats::jetstream::kv::{self, CreateErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const HEADER: &str = "idempotency-key";
pub const META_KEY: &str = "idempotencyKey";
/// Longest key a client may send.
pub const MAX_KEY_LEN: usize = 255;

#[derive(Clone)]
pub struct Idempotency {
    kv: kv::Store,
}

#[derive(Serialize, Deserialize)]
struct Claim {
    run_id: Uuid,
    fingerprint: String,
    /// When the claim was made (unix ms): an orphaned claim can be taken over.
    #[serde(default)]
    at_ms: i64,
}

/// How long a claim may show no trace in the event log before a retry may take
/// it over (its call failed before the command was stored, and the release failed too).
pub const ORPHAN_AFTER_MS: i64 = 5_000;

pub enum Claimed {
    /// This call owns the key: run it.
    New,
    /// A call with the same key and arguments exists: follow that run.
    Existing(Uuid),
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

impl Idempotency {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// The KV key of a client-chosen key (scoped to the integration) or of a session + request id.
    pub fn key(project_id: Uuid, scope: &str) -> String {
        let digest = Sha256::digest(format!("{project_id}\n{scope}").as_bytes());
        hex::encode(&digest[..20])
    }

    /// Claims `key` for `run_id`. `exists` tells whether a run left a trace in the
    /// event log; a claim whose run never did for ORPHAN_AFTER_MS is taken over.
    /// Gives the key back when the call it claimed was not queued.
    pub async fn release(&self, key: &str) {
        if let Err(err) = self.kv.purge(key).await {
            tracing::warn!(error = %err, "releasing an idempotency key");
        }
    }

    pub async fn claim<F, Fut>(&self, key: &str, run_id: Uuid, fingerprint: &str, exists: F) -> Result<Claimed, String>
    where
        F: Fn(Uuid) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let claim = Claim {
            run_id,
            fingerprint: fingerprint.to_string(),
            at_ms: chrono::Utc::now().timestamp_millis(),
        };
        let value = serde_json::to_vec(&claim).map_err(|e| e.to_string())?;
        match self.kv.create(key, value.into()).await {
            Ok(_) => Ok(Claimed::New),
            Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {
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
                let age = chrono::Utc::now().timestamp_millis() - existing.at_ms;
                if age > ORPHAN_AFTER_MS && !exists(existing.run_id).await {
                    // Compare-and-swap: of several retries, one takes the claim over.
                    let value = serde_json::to_vec(&claim).map_err(|e| e.to_string())?;
                    return match self.kv.update(key, value.into(), entry.revision).await {
                        Ok(_) => Ok(Claimed::New),
                        Err(_) => Err("another retry of this call is starting; retry".into()),
                    };
                }
                Ok(Claimed::Existing(existing.run_id))
            }
            Err(err) => Err(err.to_string()),
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
}

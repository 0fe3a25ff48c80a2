//! MCP session ids, signed so that any ingress instance can verify them without
//! shared state: `v1.<base64url(claims)>.<base64url(HMAC-SHA256)>`. A session is
//! bound to the credential that opened it; another credential gets 404.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

const VERSION_TAG: &str = "v1";
/// Longer ids are refused before any work is done on them.
const MAX_LEN: usize = 512;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionClaims {
    /// The API key that opened the session.
    pub k: Uuid,
    /// Negotiated protocol version.
    pub v: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Random nonce: two sessions of one key never share an id.
    pub n: String,
    /// The member the session was opened for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<String>,
}

#[derive(Clone)]
pub struct SessionCodec {
    key: [u8; 32],
    ttl_secs: i64,
}

impl SessionCodec {
    pub fn new(key: [u8; 32], ttl_secs: u64) -> Self {
        Self {
            key,
            ttl_secs: i64::try_from(ttl_secs).unwrap_or(i64::MAX),
        }
    }

    fn mac(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(payload);
        mac.finalize().into_bytes().to_vec()
    }

    pub fn issue(&self, api_key_id: Uuid, member: Option<&str>, version: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let claims = SessionClaims {
            k: api_key_id,
            v: version.to_string(),
            iat: chrono::Utc::now().timestamp(),
            n: URL_SAFE_NO_PAD.encode(nonce),
            m: member.map(str::to_string),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let signed = format!("{VERSION_TAG}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(self.mac(signed.as_bytes()));
        format!("{signed}.{sig}")
    }

    /// The claims of a valid, unexpired session opened by `api_key_id` (and `member`).
    pub fn verify(&self, id: &str, api_key_id: Uuid, member: Option<&str>) -> Option<SessionClaims> {
        if id.len() > MAX_LEN {
            return None;
        }
        let (signed, sig) = id.rsplit_once('.')?;
        let payload = signed.strip_prefix(VERSION_TAG)?.strip_prefix('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(signed.as_bytes());
        mac.verify_slice(&sig).ok()?;
        let claims: SessionClaims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let age = chrono::Utc::now().timestamp() - claims.iat;
        let same_member = claims.m.as_deref() == member;
        (claims.k == api_key_id && same_member && age <= self.ttl_secs && age >= -60).then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_and_verify() {
        let codec = SessionCodec::new([1; 32], 3600);
        let key = Uuid::now_v7();
        let id = codec.issue(key, None, "2025-11-25");
        assert!(id.chars().all(|c| c.is_ascii_graphic()));
        assert_eq!(codec.verify(&id, key, None).expect("valid").v, "2025-11-25");
        assert!(codec.verify(&id, Uuid::now_v7(), None).is_none(), "bound to its key");
        assert!(
            SessionCodec::new([2; 32], 3600).verify(&id, key, None).is_none(),
            "bound to the secret"
        );
        let mut forged = id.clone();
        forged.insert(5, 'A');
        assert!(codec.verify(&forged, key, None).is_none());
        assert!(codec.verify("garbage", key, None).is_none());
    }

    #[test]
    fn expired_sessions_are_refused() {
        let codec = SessionCodec::new([1; 32], 3600);
        let key = Uuid::now_v7();
        let claims = SessionClaims {
            k: key,
            v: "2025-11-25".into(),
            iat: chrono::Utc::now().timestamp() - 7200,
            n: "x".into(),
            m: None,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"));
        let signed = format!("v1.{payload}");
        let id = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(codec.mac(signed.as_bytes())));
        assert!(codec.verify(&id, key, None).is_none());
    }
}

/// Per-session state that must hold on every instance: ended (DELETE) and the
/// log level set with `logging/setLevel`. Every instance watches one KV bucket and
/// keeps a local map, so a change is seen everywhere within milliseconds without a
/// lookup per request. Entries expire with the session TTL.
#[derive(Clone)]
pub struct SessionStates {
    kv: async_nats::jetstream::kv::Store,
    local: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, (std::time::Instant, SessionState)>>>,
    ttl: std::time::Duration,
    /// Keys of sessions as they end: open GET streams stop without polling.
    ends: tokio::sync::broadcast::Sender<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionState {
    #[serde(default)]
    pub ended: bool,
    /// RFC 5424 level name as sent by the client.
    #[serde(default)]
    pub log_level: Option<String>,
}

/// RFC 5424 severities in MCP's spelling, least severe first.
pub const LOG_LEVELS: &[&str] = &[
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

pub fn log_level_rank(level: &str) -> Option<usize> {
    LOG_LEVELS.iter().position(|l| *l == level)
}

impl SessionStates {
    pub fn start(kv: async_nats::jetstream::kv::Store, ttl: std::time::Duration) -> Self {
        let states = Self {
            kv,
            local: Default::default(),
            ttl,
            ends: tokio::sync::broadcast::channel(1024).0,
        };
        let watcher = states.clone();
        tokio::spawn(async move { watcher.watch().await });
        states
    }

    /// KV keys are hashes: session ids are long and contain dots.
    pub fn key(session_id: &str) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(session_id.as_bytes())[..16])
    }

    pub fn get(&self, session_id: &str) -> SessionState {
        self.local
            .read()
            .ok()
            .and_then(|map| map.get(&Self::key(session_id)).map(|(_, s)| s.clone()))
            .unwrap_or_default()
    }

    /// Keys ([`Self::key`]) of sessions ending from now on, on any instance.
    pub fn ends(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.ends.subscribe()
    }

    fn remember(&self, key: String, state: SessionState) {
        if state.ended {
            // No receiver (no open stream) is fine.
            let _ = self.ends.send(key.clone());
        }
        if let Ok(mut map) = self.local.write() {
            let now = std::time::Instant::now();
            if map.len() > 4096 {
                map.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
            }
            map.insert(key, (now, state));
        }
    }

    async fn store(&self, session_id: &str, state: SessionState) -> anyhow::Result<()> {
        let key = Self::key(session_id);
        let value = serde_json::to_vec(&state)?;
        self.kv
            .put(&key, value.into())
            .await
            .map_err(|e| anyhow::anyhow!("recording session state: {e}"))?;
        self.remember(key, state);
        Ok(())
    }

    pub async fn end(&self, session_id: &str) -> anyhow::Result<()> {
        let mut state = self.get(session_id);
        state.ended = true;
        self.store(session_id, state).await
    }

    pub async fn set_log_level(&self, session_id: &str, level: &str) -> anyhow::Result<()> {
        let mut state = self.get(session_id);
        state.log_level = Some(level.to_string());
        self.store(session_id, state).await
    }

    /// Follows the bucket forever, re-subscribing after failures.
    async fn watch(&self) {
        use futures::StreamExt;
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            match self.kv.watch_with_history(">").await {
                Ok(mut entries) => {
                    delay = std::time::Duration::from_millis(100);
                    while let Some(Ok(entry)) = entries.next().await {
                        if entry.operation == async_nats::jetstream::kv::Operation::Put
                            && let Ok(state) = serde_json::from_slice::<SessionState>(&entry.value)
                        {
                            self.remember(entry.key, state);
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "watching session state failed; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
    }
}

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
    /// The client declared form elicitation at `initialize` (client approvals
    /// ask through it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub e: bool,
    /// The client declared sampling, and roots (an API's input requests may use them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub s: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub r: bool,
}

/// What a session's client can be asked, as declared at `initialize`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Askable {
    pub elicitation: bool,
    pub sampling: bool,
    pub roots: bool,
}

impl Askable {
    /// From `initialize`'s client capabilities.
    pub fn of(capabilities: &serde_json::Map<String, serde_json::Value>) -> Self {
        Self {
            elicitation: crate::calls::can_elicit_form(capabilities),
            sampling: capabilities.contains_key("sampling"),
            roots: capabilities.contains_key("roots"),
        }
    }

    pub fn any(self) -> bool {
        self.elicitation || self.sampling || self.roots
    }

    /// As client capabilities (for [`crate::asks`]).
    pub fn capabilities(self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        for (name, on) in [
            ("elicitation", self.elicitation),
            ("sampling", self.sampling),
            ("roots", self.roots),
        ] {
            if on {
                map.insert(name.into(), serde_json::json!({}));
            }
        }
        map
    }
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

    pub fn issue(&self, api_key_id: Uuid, member: Option<&str>, version: &str, askable: Askable) -> String {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let claims = SessionClaims {
            k: api_key_id,
            v: version.to_string(),
            iat: chrono::Utc::now().timestamp(),
            n: URL_SAFE_NO_PAD.encode(nonce),
            m: member.map(str::to_string),
            e: askable.elicitation,
            s: askable.sampling,
            r: askable.roots,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let signed = format!("{VERSION_TAG}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(self.mac(signed.as_bytes()));
        format!("{signed}.{sig}")
    }

    /// The claims of a session id already verified.
    fn claims(id: &str) -> Option<SessionClaims> {
        id.rsplit_once('.')
            .and_then(|(signed, _)| signed.strip_prefix(VERSION_TAG)?.strip_prefix('.'))
            .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
            .and_then(|json| serde_json::from_slice::<SessionClaims>(&json).ok())
    }

    /// What the client of a session (already verified) can be asked.
    pub fn askable(&self, id: &str) -> Askable {
        Self::claims(id).map_or(Askable::default(), |c| Askable {
            elicitation: c.e,
            sampling: c.s,
            roots: c.r,
        })
    }

    /// When a session id (already verified) stops being valid, unix seconds.
    pub fn expires_at(&self, id: &str) -> i64 {
        let claims = Self::claims(id);
        let now = chrono::Utc::now().timestamp();
        claims.map_or(now.saturating_add(self.ttl_secs), |c| {
            c.iat.saturating_add(self.ttl_secs)
        })
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
        let age = chrono::Utc::now().timestamp().saturating_sub(claims.iat);
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
        let id = codec.issue(key, None, "2025-11-25", Askable::default());
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
            e: false,
            s: false,
            r: false,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"));
        let signed = format!("v1.{payload}");
        let id = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(codec.mac(signed.as_bytes())));
        assert!(codec.verify(&id, key, None).is_none());
    }
}

/// Per-session state that must hold on every instance: ended (DELETE) and the
/// log level set with `logging/setLevel`. Every instance watches one KV bucket and
/// keeps a local copy, so a change is seen everywhere within milliseconds without a
/// lookup per request.
///
/// Bounded: an entry lives until its session's own expiry (after which the session
/// id is refused anyway), found in O(log n) through a heap ordered by expiry, and
/// at most `capacity` entries are kept (then the one expiring first goes; writes
/// are rate-limited per key, so only very many keys reach the cap).
#[derive(Clone)]
pub struct SessionStates {
    kv: async_nats::jetstream::kv::Store,
    local: std::sync::Arc<std::sync::Mutex<Expiring>>,
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
    /// When the session expires (unix seconds); entries written before this field
    /// existed are kept for a day.
    #[serde(default)]
    pub expires_at: i64,
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

/// Session states by key, and a min-heap of (expiry, key) to drop them in order.
struct Expiring {
    entries: std::collections::HashMap<String, SessionState>,
    by_expiry: std::collections::BinaryHeap<std::cmp::Reverse<(i64, String)>>,
    capacity: usize,
}

impl Expiring {
    fn new(capacity: usize) -> Self {
        Self {
            entries: Default::default(),
            by_expiry: Default::default(),
            capacity: capacity.max(1),
        }
    }

    fn insert(&mut self, key: String, mut state: SessionState, now: i64) {
        if state.expires_at == 0 {
            state.expires_at = now.saturating_add(86_400);
        }
        // Expired first, then (only if still full) the soonest to expire.
        while let Some(std::cmp::Reverse((at, _))) = self.by_expiry.peek() {
            let full = self.entries.len() >= self.capacity && !self.entries.contains_key(&key);
            if *at > now && !full {
                break;
            }
            if let Some(std::cmp::Reverse((at, old))) = self.by_expiry.pop() {
                // A key re-inserted with another expiry has a newer heap entry.
                if self.entries.get(&old).is_some_and(|s| s.expires_at == at) {
                    self.entries.remove(&old);
                    if at > now {
                        metrics::counter!(tengine_core::prometheus::SESSION_STATES_EVICTED).increment(1);
                    }
                }
            }
        }
        let expires_at = state.expires_at;
        match self.entries.insert(key.clone(), state) {
            Some(previous) if previous.expires_at == expires_at => {}
            _ => self.by_expiry.push(std::cmp::Reverse((expires_at, key))),
        }
        metrics::gauge!(tengine_core::prometheus::SESSION_STATES).set(self.entries.len() as f64);
    }

    fn get(&self, key: &str, now: i64) -> Option<&SessionState> {
        self.entries.get(key).filter(|s| s.expires_at > now)
    }
}

impl SessionStates {
    pub fn start(kv: async_nats::jetstream::kv::Store, capacity: usize) -> Self {
        let states = Self {
            kv,
            local: std::sync::Arc::new(std::sync::Mutex::new(Expiring::new(capacity))),
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
        let now = chrono::Utc::now().timestamp();
        self.local
            .lock()
            .ok()
            .and_then(|local| local.get(&Self::key(session_id), now).cloned())
            .unwrap_or_default()
    }

    /// Entries held now (for tests and the gauge).
    pub fn len(&self) -> usize {
        self.local.lock().map_or(0, |l| l.entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        if let Ok(mut local) = self.local.lock() {
            local.insert(key, state, chrono::Utc::now().timestamp());
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

    /// Ends a session that expires at `expires_at` (unix seconds) on every instance.
    pub async fn end(&self, session_id: &str, expires_at: i64) -> anyhow::Result<()> {
        let mut state = self.get(session_id);
        state.ended = true;
        state.expires_at = expires_at;
        self.store(session_id, state).await
    }

    pub async fn set_log_level(&self, session_id: &str, level: &str, expires_at: i64) -> anyhow::Result<()> {
        let mut state = self.get(session_id);
        state.log_level = Some(level.to_string());
        state.expires_at = expires_at;
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
            delay = delay.saturating_mul(2).min(std::time::Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod bounded_tests {
    use super::*;

    fn state(expires_at: i64) -> SessionState {
        SessionState {
            ended: true,
            log_level: None,
            expires_at,
        }
    }

    #[test]
    fn entries_live_until_their_sessions_expire_and_no_longer() {
        let mut local = Expiring::new(100);
        local.insert("a".into(), state(110), 100);
        local.insert("b".into(), state(200), 100);
        assert!(local.get("a", 105).is_some());
        assert!(local.get("a", 110).is_none(), "expired entries are not answered");
        local.insert("c".into(), state(300), 150);
        assert_eq!(local.entries.len(), 2, "the expired one was dropped on the next insert");
        assert!(local.get("b", 150).is_some());
    }

    #[test]
    fn a_full_map_drops_the_entry_expiring_first() {
        let mut local = Expiring::new(2);
        local.insert("late".into(), state(900), 100);
        local.insert("soon".into(), state(200), 100);
        local.insert("new".into(), state(500), 100);
        assert_eq!(local.entries.len(), 2);
        assert!(local.get("soon", 100).is_none());
        assert!(local.get("late", 100).is_some() && local.get("new", 100).is_some());
        // Updating an entry does not grow the heap.
        for _ in 0..100 {
            local.insert("new".into(), state(500), 100);
        }
        assert!(local.by_expiry.len() <= 3, "{}", local.by_expiry.len());
    }
}

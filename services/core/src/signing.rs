//! Request signing. Every upstream request carries the `X-Tengine-*` identity
//! headers; tools with `hmac_signature` are also signed twice with the same key:
//!
//! * `X-Tengine-Signature: tng2=<hex HMAC-SHA256>` over the canonical line
//!   `tng2 {timestamp} {request_id} {METHOD} {path?query} {hex sha256(body)}`
//!   (fields joined by single spaces), so the signature also pins the target.
//! * Standard Webhooks: `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
//!   verifiable by any `standardwebhooks` library with the same `whsec_` secret.
//!
//! Receivers should reject timestamps outside ±5 minutes and dedupe on the
//! request id, which stays the same on every retry of a run.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const HEADER_PROJECT_ID: &str = "X-Tengine-Project-Id";
pub const HEADER_INTEGRATION_ID: &str = "X-Tengine-Integration-Id";
pub const HEADER_REQUEST_ID: &str = "X-Tengine-Request-Id";
pub const HEADER_TIMESTAMP: &str = "X-Tengine-Timestamp";
pub const HEADER_SIGNATURE: &str = "X-Tengine-Signature";
pub const HEADER_WEBHOOK_ID: &str = "webhook-id";
pub const HEADER_WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_WEBHOOK_SIGNATURE: &str = "webhook-signature";
pub const HEADER_IDEMPOTENCY_KEY: &str = "Idempotency-Key";
pub const HEADER_MEMBER_ID: &str = "X-Tengine-Member-Id";
pub const HEADER_MEMBER_EMAIL: &str = "X-Tengine-Member-Email";
/// Comma-separated.
pub const HEADER_MEMBER_ROLES: &str = "X-Tengine-Member-Roles";

pub const SECRET_PREFIX: &str = "whsec_";
const MIN_SECRET_BYTES: usize = 16;
const MAX_SECRET_BYTES: usize = 128;

type HmacSha256 = Hmac<Sha256>;

/// The headers every upstream request carries (before auth and signatures): who
/// calls, which run (the same id on every retry), when, and — for tools with
/// `inject_member_identity` in a member session — the member.
pub fn identity_headers(
    caller: &crate::envelope::Caller,
    inject_member: bool,
    run_id: uuid::Uuid,
    timestamp: i64,
) -> Vec<(String, String)> {
    let run = run_id.to_string();
    let mut headers = vec![
        (HEADER_PROJECT_ID.to_string(), caller.project_id.to_string()),
        (HEADER_INTEGRATION_ID.to_string(), caller.integration_id.to_string()),
        (HEADER_REQUEST_ID.to_string(), run.clone()),
        (HEADER_TIMESTAMP.to_string(), timestamp.to_string()),
        (HEADER_IDEMPOTENCY_KEY.to_string(), run.clone()),
        (HEADER_WEBHOOK_ID.to_string(), run),
        (HEADER_WEBHOOK_TIMESTAMP.to_string(), timestamp.to_string()),
    ];
    if inject_member && let Some(member) = &caller.member {
        headers.push((HEADER_MEMBER_ID.to_string(), member.id.clone()));
        if let Some(email) = &member.email {
            headers.push((HEADER_MEMBER_EMAIL.to_string(), email.clone()));
        }
        headers.push((HEADER_MEMBER_ROLES.to_string(), member.roles.join(",")));
    }
    headers
}

/// An HMAC key in the Standard Webhooks `whsec_<base64>` form.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    pub fn parse(secret: &str) -> Result<Self, String> {
        let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            format!("must be a Standard Webhooks secret: `{SECRET_PREFIX}` followed by base64 of 16-128 random bytes")
        })?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| format!("the part after `{SECRET_PREFIX}` must be standard base64"))?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(format!("must decode to {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes"));
        }
        Ok(Self(key))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length")
    }

    /// `tng2=<hex>` over the canonical line.
    pub fn tng2(&self, timestamp: i64, request_id: &str, method: &str, path_and_query: &str, body: &[u8]) -> String {
        let line = canonical_line(timestamp, request_id, method, path_and_query, body);
        let mut mac = self.mac();
        mac.update(line.as_bytes());
        format!("tng2={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// `v1,<base64>` per Standard Webhooks.
    pub fn standard_webhooks(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

pub fn canonical_line(timestamp: i64, request_id: &str, method: &str, path_and_query: &str, body: &[u8]) -> String {
    format!(
        "tng2 {timestamp} {request_id} {method} {path_and_query} {}",
        hex::encode(Sha256::digest(body))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_whsec_only() {
        assert!(SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningKey::parse("whsec_!!").is_err());
        assert!(SigningKey::parse("whsec_AAAA").is_err(), "too short");
    }

    #[test]
    fn standard_webhooks_reference_vector() {
        // The example from the Standard Webhooks specification.
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let sig = key.standard_webhooks("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn tng2_covers_target_and_body() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let a = key.tng2(1, "r", "POST", "/a", b"{}");
        assert!(a.starts_with("tng2="));
        assert_ne!(a, key.tng2(1, "r", "POST", "/b", b"{}"));
        assert_ne!(a, key.tng2(1, "r", "POST", "/a", b"{ }"));
        assert_ne!(a, key.tng2(2, "r", "POST", "/a", b"{}"));
    }
}

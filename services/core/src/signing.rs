//! Request signing. Every upstream request carries the `X-Tengine-*` identity
//! headers; tools with `hmac_signature` are also signed with the same key in two
//! forms, each covering the method, the target, the body and the identity:
//!
//! * `X-Tengine-Signature: tng3=<hex> tng2=<hex>`: `tng3` is HMAC-SHA256 over
//!   `tng3 {timestamp} {hex sha256(request block)} {hex sha256(body)}`, where the
//!   request block ([`request_block`]) is the method, the path and query, and every
//!   header of [`SIGNED_HEADERS`]. `tng2` (the older line, which does not cover the
//!   identity headers) is still sent for receivers that have not moved to `tng3`.
//! * Standard Webhooks: `webhook-id: {run id}.{binding}`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
//!   verifiable by any `standardwebhooks` library with the same `whsec_` secret.
//!   The binding is base64url(sha256(request block)), so the library's signature
//!   covers the request block too; receivers compare it with the request they got.
//!   It has no timestamp: `webhook-id` is the same on every retry of a run.
//!
//! During a rotation overlap each form carries one signature per secret, new
//! first. Receivers should reject timestamps outside ±5 minutes and dedupe on the
//! request id, which stays the same on every retry of a run.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
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
/// A re-issued call's answers to what the API asked (see `CommandInput`). Signed
/// on a line of its own after [`SIGNED_HEADERS`], only when present, so blocks
/// of requests without it are unchanged.
pub const HEADER_INPUT: &str = "X-Tengine-Input";

/// The headers the request block covers, in this order (lower-cased in the block).
/// The timestamp is not among them: `tng3` covers it on its line, and the Standard
/// Webhooks form through `webhook-timestamp` (which equals it); leaving it out keeps
/// `webhook-id` the same on every attempt. Changing this list is a new version.
pub const SIGNED_HEADERS: [&str; 7] = [
    HEADER_PROJECT_ID,
    HEADER_INTEGRATION_ID,
    HEADER_REQUEST_ID,
    HEADER_IDEMPOTENCY_KEY,
    HEADER_MEMBER_ID,
    HEADER_MEMBER_EMAIL,
    HEADER_MEMBER_ROLES,
];

pub const SECRET_PREFIX: &str = "whsec_";
const MIN_SECRET_BYTES: usize = 16;
const MAX_SECRET_BYTES: usize = 128;

type HmacSha256 = Hmac<Sha256>;

/// The headers every upstream request carries (before auth and signatures): who
/// calls, which run (the same id on every retry), when, and — for tools with
/// `inject_member_identity` in a member session — the member. `webhook-id` is not
/// among them: it depends on the request ([`webhook_id`]).
pub fn identity_headers(
    caller: &crate::envelope::Caller,
    inject_member: bool,
    run_id: uuid::Uuid,
    timestamp: i64,
    input: Option<&str>,
) -> Vec<(&'static str, String)> {
    let run = run_id.to_string();
    let mut headers = vec![
        (HEADER_PROJECT_ID, caller.project_id.to_string()),
        (HEADER_INTEGRATION_ID, caller.integration_id.to_string()),
        (HEADER_REQUEST_ID, run.clone()),
        (HEADER_TIMESTAMP, timestamp.to_string()),
        (HEADER_IDEMPOTENCY_KEY, run),
        (HEADER_WEBHOOK_TIMESTAMP, timestamp.to_string()),
    ];
    if inject_member && let Some(member) = &caller.member {
        headers.push((HEADER_MEMBER_ID, member.id.clone()));
        if let Some(email) = &member.email {
            headers.push((HEADER_MEMBER_EMAIL, email.clone()));
        }
        headers.push((HEADER_MEMBER_ROLES, member.roles.join(",")));
    }
    if let Some(input) = input {
        headers.push((HEADER_INPUT, input.to_string()));
    }
    headers
}

/// What both forms sign besides the body: `{METHOD}\n{path?query}\n`, then
/// `{lower-case name}:{value}\n` for each of [`SIGNED_HEADERS`] in order, with the
/// value's bytes as sent (empty when the header is absent). `header` looks a
/// header up by name, case-insensitively. Header values cannot hold a newline, so
/// the lines cannot be confused.
pub fn request_block<'a>(method: &str, target: &str, header: impl Fn(&str) -> Option<&'a [u8]>) -> Vec<u8> {
    let mut block = format!("{method}\n{target}\n").into_bytes();
    for name in SIGNED_HEADERS {
        block.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
        block.push(b':');
        block.extend_from_slice(header(name).unwrap_or_default());
        block.push(b'\n');
    }
    if let Some(input) = header(HEADER_INPUT) {
        block.extend_from_slice(b"x-tengine-input:");
        block.extend_from_slice(input);
        block.push(b'\n');
    }
    block
}

/// The request target as sent and signed: the percent-encoded path, then `?` and
/// the query only if there is one.
pub fn request_target(url: &url::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

/// `{request id}.{base64url, unpadded, of sha256(request block)}`.
pub fn webhook_id(request_id: &str, block: &[u8]) -> String {
    format!("{request_id}.{}", URL_SAFE_NO_PAD.encode(Sha256::digest(block)))
}

/// The string `tng3` signs: `tng3 {timestamp} {hex sha256(request block)} {hex sha256(body)}`.
pub fn tng3_line(timestamp: i64, block: &[u8], body: &[u8]) -> String {
    format!(
        "tng3 {timestamp} {} {}",
        hex::encode(Sha256::digest(block)),
        hex::encode(Sha256::digest(body))
    )
}

/// Everything signing adds to one attempt of a run: the identity headers,
/// `webhook-id`, and with `keys` (new first) both forms of signature.
pub fn outbound_headers(
    caller: &crate::envelope::Caller,
    inject_member: bool,
    run_id: uuid::Uuid,
    timestamp: i64,
    request: Target<'_>,
    keys: &[SigningKey],
    input: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut headers = identity_headers(caller, inject_member, run_id, timestamp, input);
    let block = request_block(request.method, request.target, |name| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    });
    let run = run_id.to_string();
    let id = webhook_id(&run, &block);
    if !keys.is_empty() {
        // Several signatures are space-separated, as Standard Webhooks specifies.
        let ours: Vec<String> = keys
            .iter()
            .flat_map(|key| {
                [
                    key.tng3(timestamp, &block, request.body),
                    key.tng2(timestamp, &run, request.method, request.target, request.body),
                ]
            })
            .collect();
        let webhook: Vec<String> = keys
            .iter()
            .map(|key| key.standard_webhooks(&id, timestamp, request.body))
            .collect();
        headers.push((HEADER_SIGNATURE, ours.join(" ")));
        headers.push((HEADER_WEBHOOK_SIGNATURE, webhook.join(" ")));
    }
    headers.push((HEADER_WEBHOOK_ID, id));
    headers
}

/// The parts of a request that signatures pin besides its headers.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub method: &'a str,
    /// The path as sent (percent-encoded), then `?` and the query if there is one.
    pub target: &'a str,
    pub body: &'a [u8],
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

    /// `tng3=<hex>` over [`tng3_line`].
    pub fn tng3(&self, timestamp: i64, block: &[u8], body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(tng3_line(timestamp, block, body).as_bytes());
        format!("tng3={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// `tng2=<hex>` over the canonical line. Kept while receivers move to `tng3`.
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

/// The `tng2` line: it pins the method and target, not the identity headers.
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

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const RUN: &str = "0190a1b2-0000-7000-8000-000000000003";

    fn caller(member: bool) -> crate::envelope::Caller {
        crate::envelope::Caller {
            project_id: "0190a1b2-0000-7000-8000-000000000001".parse().expect("uuid"),
            integration_id: "0190a1b2-0000-7000-8000-000000000002".parse().expect("uuid"),
            api_key_id: uuid::Uuid::nil(),
            member: member.then(|| crate::envelope::Member {
                id: "user-42".into(),
                email: Some("user-42@example.com".into()),
                roles: vec!["admin".into(), "billing".into()],
                session_issued_at: chrono::Utc::now(),
            }),
        }
    }

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The test vector in docs/upstream.md, computed independently (Python: hashlib, hmac and
    /// the `standardwebhooks` package).
    #[test]
    fn tng3_and_webhook_id_test_vector() {
        let key = SigningKey::parse(SECRET).expect("key");
        let target = Target {
            method: "POST",
            target: "/orders/42?note=ship",
            body: br#"{"qty":1}"#,
        };
        let run = RUN.parse().expect("uuid");
        let headers = outbound_headers(&caller(true), true, run, 1614265330, target, &[key], None);
        let block = request_block("POST", "/orders/42?note=ship", |name| {
            header(&headers, name).map(str::as_bytes)
        });
        assert_eq!(
            String::from_utf8(block.clone()).expect("utf-8"),
            "POST\n/orders/42?note=ship\nx-tengine-project-id:0190a1b2-0000-7000-8000-000000000001\n\
             x-tengine-integration-id:0190a1b2-0000-7000-8000-000000000002\n\
             x-tengine-request-id:0190a1b2-0000-7000-8000-000000000003\n\
             idempotency-key:0190a1b2-0000-7000-8000-000000000003\nx-tengine-member-id:user-42\n\
             x-tengine-member-email:user-42@example.com\nx-tengine-member-roles:admin,billing\n"
        );
        assert_eq!(
            tng3_line(1614265330, &block, br#"{"qty":1}"#),
            "tng3 1614265330 6f5a1fa6c06479cbd03baa51c7b1e96657be51f08ad219b32498200c995ebaf9 \
             92438ddd4266b3271fcebff491a7db7f0995332bade824c704f83596b7f36f74"
        );
        assert_eq!(
            header(&headers, HEADER_SIGNATURE),
            Some(
                "tng3=8dd119470345dfec5a4ca104f0b8ff6f96a59177ba67b345e6e9b107df862532 \
                 tng2=417f352ee184624cf803cdd0a61db468fa24aad918683d3b9f8d31ef5421797f"
            )
        );
        assert_eq!(
            header(&headers, HEADER_WEBHOOK_ID),
            Some("0190a1b2-0000-7000-8000-000000000003.b1ofpsBkecvQO6pRx7HpZle-UfCK0hmzJJggDJleuvk")
        );
        assert_eq!(
            header(&headers, HEADER_WEBHOOK_SIGNATURE),
            Some("v1,zH3tSnSgRCgKLNnmD4D7pFVvzpLMhiUgFsBX1wrajhY=")
        );
        assert_eq!(header(&headers, HEADER_TIMESTAMP), Some("1614265330"));
        assert_eq!(header(&headers, HEADER_WEBHOOK_TIMESTAMP), Some("1614265330"));
    }

    #[test]
    fn absent_headers_are_empty_in_the_block() {
        let key = SigningKey::parse(SECRET).expect("key");
        let target = Target {
            method: "GET",
            target: "/lookup",
            body: b"",
        };
        let run = RUN.parse().expect("uuid");
        // A member session, but a tool without inject_member_identity.
        let headers = outbound_headers(&caller(true), false, run, 1614265330, target, &[key], None);
        assert_eq!(header(&headers, HEADER_MEMBER_ID), None);
        let signatures = header(&headers, HEADER_SIGNATURE).expect("signatures");
        assert!(
            signatures.starts_with("tng3=c25df9acb6c722dfaa8eb01965347dcfcb6e106441c98f557fb113e8ad8c1007 tng2="),
            "{signatures}"
        );
    }

    #[test]
    fn tng3_covers_method_target_body_and_every_signed_header() {
        let key = SigningKey::parse(SECRET).expect("key");
        let headers = |member: bool| identity_headers(&caller(member), true, RUN.parse().expect("uuid"), 1, None);
        let sign = |method: &str, target: &str, headers: &[(&'static str, String)], body: &[u8]| {
            let block = request_block(method, target, |name| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_bytes())
            });
            (key.tng3(1, &block, body), webhook_id(RUN, &block))
        };
        let base = headers(true);
        let original = sign("POST", "/a?x=1", &base, b"{}");
        let mut variants = vec![
            sign("PUT", "/a?x=1", &base, b"{}"),
            sign("POST", "/b?x=1", &base, b"{}"),
            sign("POST", "/a?x=2", &base, b"{}"),
            sign("POST", "/a", &base, b"{}"),
            sign("POST", "/a?x=1", &headers(false), b"{}"),
        ];
        for name in SIGNED_HEADERS {
            let changed: Vec<_> = base
                .iter()
                .map(|(n, v)| (*n, if *n == name { format!("{v}!") } else { v.clone() }))
                .collect();
            variants.push(sign("POST", "/a?x=1", &changed, b"{}"));
        }
        for (i, variant) in variants.iter().enumerate() {
            assert_ne!(variant.0, original.0, "tng3 of variant {i}");
            assert_ne!(variant.1, original.1, "webhook-id of variant {i}");
        }
        // The body and timestamp are in tng3; webhook-id stays the same (retries keep it).
        assert_ne!(sign("POST", "/a?x=1", &base, b"{ }").0, original.0);
        assert_eq!(sign("POST", "/a?x=1", &base, b"{ }").1, original.1);
        let block = request_block("POST", "/a?x=1", |_| None);
        assert_ne!(key.tng3(1, &block, b""), key.tng3(2, &block, b""));
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

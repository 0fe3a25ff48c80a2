//! Member sessions. A customer's backend signs a short-lived ES256 `member_assertion`
//! (JWT) with a key registered under a `kid`; Tengine checks it and returns a
//! `tng_mst_…` token: an HS256 JWT bound to project, integration, API key and
//! member, which MCP clients send as their bearer token.
//!
//! The token is checked on every request together with its API key, integration
//! and the member's revocation cut-off, so revocation takes effect at once.

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgPool;
use tengine_control::{StoreError, member_keys};
use tengine_core::{
    domain::{MEMBER_ID_MAX_BYTES, validate_identifier},
    envelope::Member,
};
use uuid::Uuid;

pub const TOKEN_PREFIX: &str = "tng_mst_";
/// Longest lifetime an assertion may declare (`exp - iat`).
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 300;
/// Clock skew tolerated on `iat` and `exp`.
const LEEWAY_SECS: i64 = 30;
const ISSUER: &str = "tengine";
/// Longest role name and most roles per assertion.
const MAX_ROLE_LEN: usize = 256;
const MAX_ROLES: usize = 64;
/// Longest `email` (the local part and domain limits of RFC 5321 together).
const MAX_EMAIL_LEN: usize = 320;
/// Longest `kid` (also the admin API's limit when a key is registered).
pub const MAX_KID_LEN: usize = 128;

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    iat: i64,
    exp: i64,
    jti: String,
    /// Binds an OAuth login to its authorization request (see `crate::oauth::login`).
    #[serde(default)]
    tengine_login: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TokenClaims {
    iss: String,
    sub: String,
    /// Project, integration and API key the session is bound to.
    pid: Uuid,
    iid: Uuid,
    akid: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
    iat: i64,
    exp: i64,
    jti: Uuid,
    /// The resource an OAuth access token is for (RFC 8707); absent on sessions
    /// minted with `POST /v1/member-sessions`, which serve every endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// Why an assertion or a token was refused; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Store(#[from] StoreError),
}

fn invalid(message: impl Into<String>) -> MemberError {
    MemberError::Invalid(message.into())
}

#[derive(Clone)]
pub struct MemberTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_secs: i64,
}

pub struct Minted {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub member: Member,
}

/// A checked member assertion.
pub struct Asserted {
    pub member: Member,
    /// Its `tengine_login` claim, if it has one.
    pub tengine_login: Option<String>,
}

/// What a session token is bound to.
pub struct Binding<'a> {
    pub project_id: Uuid,
    pub integration_id: Uuid,
    pub api_key_id: Uuid,
    /// The resource an OAuth access token is for.
    pub audience: Option<&'a str>,
}

/// A verified session token.
pub struct Verified {
    pub api_key_id: Uuid,
    pub member: Member,
    pub audience: Option<String>,
}

impl MemberTokens {
    /// The signing key is derived from the session secret (one secret to manage).
    pub fn new(session_secret: &[u8; 32], ttl_secs: u64) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(session_secret).expect("any key length");
        mac.update(b"tengine member session tokens");
        let key = mac.finalize().into_bytes();
        Self {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            ttl_secs: i64::try_from(ttl_secs).unwrap_or(900),
        }
    }

    /// Checks a member assertion for `caller`'s project and mints a session token.
    pub async fn exchange(
        &self,
        pool: &PgPool,
        caller: &tengine_core::envelope::Caller,
        assertion: &str,
    ) -> Result<Minted, MemberError> {
        let asserted = check_assertion(pool, caller.project_id, assertion).await?;
        self.mint(
            &Binding {
                project_id: caller.project_id,
                integration_id: caller.integration_id,
                api_key_id: caller.api_key_id,
                audience: None,
            },
            asserted.member,
        )
    }
}

/// Checks a member assertion for `project_id` (signature by a registered key,
/// audience, lifetime, claims) and spends its `jti`.
pub async fn check_assertion(pool: &PgPool, project_id: Uuid, assertion: &str) -> Result<Asserted, MemberError> {
    let header = decode_header(assertion)
        .map_err(|e| invalid(format!("member_assertion is not a JWT with a valid header ({e})")))?;
    if header.alg != Algorithm::ES256 {
        return Err(invalid(format!(
            "member_assertion must be signed with ES256 (P-256), not {:?}",
            header.alg
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| invalid("member_assertion header has no `kid` naming a registered member key"))?;
    // A registered kid never has these; refused before it is looked up or quoted.
    validate_identifier("kid", &kid, MAX_KID_LEN)
        .map_err(|e| invalid(format!("member_assertion header `kid` {}", e.message)))?;
    let pem = member_keys::public_key(pool, project_id, &kid)
        .await?
        .ok_or_else(|| invalid(format!("no member key with kid `{kid}` is registered in this project")))?;
    let key = DecodingKey::from_ec_pem(pem.as_bytes())
        .map_err(|e| invalid(format!("the registered key `{kid}` is unusable ({e})")))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.leeway = LEEWAY_SECS as u64;
    validation.set_audience(&[project_id.to_string()]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "aud", "jti"]);
    let claims = decode::<AssertionClaims>(assertion, &key, &validation)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "member_assertion has expired".to_string(),
                ErrorKind::InvalidAudience => {
                    format!("member_assertion `aud` must be this project's id ({})", project_id)
                }
                ErrorKind::InvalidSignature => {
                    "member_assertion signature does not verify with key `{kid}`".replace("{kid}", &kid)
                }
                ErrorKind::MissingRequiredClaim(claim) => format!("member_assertion lacks the `{claim}` claim"),
                other => format!("member_assertion is invalid ({other:?})"),
            })
        })?
        .claims;
    // `iat` and `exp` are the caller's numbers: no arithmetic on them may overflow.
    let now = Utc::now().timestamp();
    if claims.iat > now.saturating_add(LEEWAY_SECS) {
        return Err(invalid("member_assertion `iat` is in the future"));
    }
    let lifetime = claims.exp.checked_sub(claims.iat);
    if !lifetime.is_some_and(|l| (0..=MAX_ASSERTION_LIFETIME_SECS).contains(&l)) {
        return Err(invalid(format!(
            "member_assertion may live at most {MAX_ASSERTION_LIFETIME_SECS} s (`exp` - `iat`, not negative)"
        )));
    }
    // The member id and assertion id are stored and shown: no control characters.
    for (claim, value) in [("sub", &claims.sub), ("jti", &claims.jti)] {
        validate_identifier(claim, value, MEMBER_ID_MAX_BYTES)
            .map_err(|e| invalid(format!("`{claim}` {}", e.message)))?;
    }
    if claims.roles.len() > MAX_ROLES
        || claims
            .roles
            .iter()
            .any(|r| r.is_empty() || r.len() > MAX_ROLE_LEN || r.contains(',') || r.chars().any(char::is_control))
    {
        return Err(invalid(format!(
            "`roles` must be at most {MAX_ROLES} non-empty names of at most {MAX_ROLE_LEN} bytes, \
                 without commas or control characters"
        )));
    }
    if claims
        .email
        .as_ref()
        .is_some_and(|e| e.len() > MAX_EMAIL_LEN || e.chars().any(char::is_control))
    {
        return Err(invalid(format!(
            "`email` must be at most {MAX_EMAIL_LEN} bytes without control characters"
        )));
    }
    let expires = Utc
        .timestamp_opt(claims.exp.saturating_add(LEEWAY_SECS), 0)
        .single()
        .unwrap_or_else(Utc::now);
    if !tengine_control::members::use_assertion(pool, project_id, &claims.jti, expires).await? {
        return Err(invalid("member_assertion was already used (replayed `jti`)"));
    }
    Ok(Asserted {
        member: Member {
            id: claims.sub,
            email: claims.email,
            roles: claims.roles,
            session_issued_at: Utc::now(),
        },
        tengine_login: claims.tengine_login,
    })
}

impl MemberTokens {
    /// Mints a session token for `member` bound to `binding`.
    pub fn mint(&self, binding: &Binding<'_>, member: Member) -> Result<Minted, MemberError> {
        let issued = Utc::now();
        let expires_at = issued
            .checked_add_signed(chrono::Duration::seconds(self.ttl_secs))
            .unwrap_or(issued);
        let token_claims = TokenClaims {
            iss: ISSUER.into(),
            sub: member.id.clone(),
            pid: binding.project_id,
            iid: binding.integration_id,
            akid: binding.api_key_id,
            email: member.email.clone(),
            roles: member.roles.clone(),
            iat: issued.timestamp(),
            exp: expires_at.timestamp(),
            jti: Uuid::now_v7(),
            aud: binding.audience.map(str::to_string),
        };
        let jwt = encode(&Header::new(Algorithm::HS256), &token_claims, &self.encoding)
            .map_err(|e| invalid(format!("could not sign the session ({e})")))?;
        Ok(Minted {
            token: format!("{TOKEN_PREFIX}{jwt}"),
            expires_at,
            member: Member {
                session_issued_at: Utc.timestamp_opt(issued.timestamp(), 0).single().unwrap_or(issued),
                ..member
            },
        })
    }

    /// The API key id and member a token stands for, if its signature and lifetime hold.
    /// OAuth access tokens (which name their resource) are refused here: they
    /// serve their MCP endpoint only.
    pub fn verify(&self, token: &str) -> Result<(Uuid, Member), MemberError> {
        let verified = self.verify_bound(token)?;
        if verified.audience.is_some() {
            return Err(invalid(
                "an OAuth access token serves only the MCP endpoint it was issued for",
            ));
        }
        Ok((verified.api_key_id, verified.member))
    }

    /// [`Self::verify`] with the resource the token is for, if it names one.
    pub fn verify_bound(&self, token: &str) -> Result<Verified, MemberError> {
        let jwt = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| invalid("not a member session token"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        // `aud` (OAuth access tokens) is compared by the caller, which knows the endpoint.
        validation.validate_aud = false;
        let claims = decode::<TokenClaims>(jwt, &self.decoding, &validation)
            .map_err(|e| {
                if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) {
                    invalid("the member session has expired: mint a new one with POST /v1/member-sessions")
                } else {
                    invalid("the member session token is invalid")
                }
            })?
            .claims;
        let issued = Utc.timestamp_opt(claims.iat, 0).single().unwrap_or_else(Utc::now);
        Ok(Verified {
            api_key_id: claims.akid,
            member: Member {
                id: claims.sub,
                email: claims.email,
                roles: claims.roles,
                session_issued_at: issued,
            },
            audience: claims.aud,
        })
    }
}

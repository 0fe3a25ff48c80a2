//! The `requestState` of revision 2026-07-28's multi round-trip requests: what
//! the user was asked (a client approval's confirmation, or the API's own input
//! requests and its state), sealed so that any ingress can check it and nobody
//! can alter it.
//!
//! `c1.<base64url(claims)>.<base64url(HMAC-SHA256)>` under a key derived from the
//! session secret. The spec asks for integrity (HMAC or AEAD), not secrecy: the
//! claims name the caller's own key and tool, nothing the caller may not see.
//! The claims bind the state to the credential, the tool (and its version: a
//! changed tool is asked about again), the call's arguments and an expiry; the
//! nonce makes it single use (see `calls::confirm`).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tengine_core::envelope::Caller;
use uuid::Uuid;

const VERSION_TAG: &str = "c1";
/// Longer states are refused before any work is done on them.
pub const MAX_LEN: usize = 2_048;

/// What a confirmation covers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Confirmation {
    /// The API key and member that were asked.
    k: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<String>,
    /// The tool and the version the user saw.
    t: Uuid,
    tv: i64,
    /// Digest of the tool name and arguments (`idempotency::fingerprint`).
    f: String,
    /// Expiry, unix seconds.
    exp: i64,
    /// Makes each state single use.
    n: String,
    /// What was asked.
    #[serde(default)]
    a: Asked,
}

/// What a state's question was.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub enum Asked {
    /// Tengine's confirmation of a call to a tool with `approval: client`.
    #[default]
    #[serde(rename = "c")]
    Confirmation,
    /// The API's input requests, with the state it gave (for its next round)
    /// and how many rounds the call has taken.
    #[serde(rename = "i")]
    Input { state: Option<String>, round: u32 },
}

/// A checked state: its nonce (spent by the run it admits) and its question.
#[derive(Debug, PartialEq)]
pub struct Checked {
    pub nonce: String,
    pub asked: Asked,
}

/// Why a state is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("requestState was not issued by this server or was altered")]
    Tampered,
    #[error("requestState was issued to another credential")]
    OtherCredential,
    #[error("requestState belongs to another call (other tool or arguments)")]
    OtherCall,
    /// Not an attack: the user is asked again.
    #[error("requestState expired")]
    Expired,
    /// Not an attack either: the tool changed since the user saw it.
    #[error("the tool changed since the user confirmed")]
    ToolChanged,
}

#[derive(Clone)]
pub struct RequestStates {
    key: [u8; 32],
    ttl_secs: i64,
}

/// The call a state is checked against.
pub struct Subject<'a> {
    pub caller: &'a Caller,
    pub tool_id: Uuid,
    pub tool_version: i64,
    pub fingerprint: &'a str,
}

impl RequestStates {
    pub fn new(session_secret: &[u8; 32], ttl_secs: u64) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(session_secret).expect("HMAC takes any key length");
        mac.update(b"tengine request state v1");
        Self {
            key: mac.finalize().into_bytes().into(),
            ttl_secs: i64::try_from(ttl_secs).unwrap_or(600),
        }
    }

    fn mac(&self, signed: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(signed);
        mac
    }

    /// A fresh state for asking the user about `subject`.
    pub fn issue(&self, subject: &Subject<'_>, asked: Asked) -> String {
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let claims = Confirmation {
            k: subject.caller.api_key_id,
            m: subject.caller.member.as_ref().map(|m| m.id.clone()),
            t: subject.tool_id,
            tv: subject.tool_version,
            f: subject.fingerprint.to_string(),
            exp: chrono::Utc::now().timestamp().saturating_add(self.ttl_secs),
            n: URL_SAFE_NO_PAD.encode(nonce),
            a: asked,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{VERSION_TAG}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(self.mac(signed.as_bytes()).finalize().into_bytes());
        format!("{signed}.{sig}")
    }

    /// The state's nonce and question, if it is authentic, unexpired and about `subject`.
    pub fn check(&self, state: &str, subject: &Subject<'_>) -> Result<Checked, StateError> {
        let claims = self.open(state).ok_or(StateError::Tampered)?;
        let member = subject.caller.member.as_ref().map(|m| m.id.as_str());
        if claims.k != subject.caller.api_key_id || claims.m.as_deref() != member {
            return Err(StateError::OtherCredential);
        }
        if claims.t != subject.tool_id || claims.f != subject.fingerprint {
            return Err(StateError::OtherCall);
        }
        if claims.tv != subject.tool_version {
            return Err(StateError::ToolChanged);
        }
        if claims.exp <= chrono::Utc::now().timestamp() {
            return Err(StateError::Expired);
        }
        Ok(Checked {
            nonce: claims.n,
            asked: claims.a,
        })
    }

    fn open(&self, state: &str) -> Option<Confirmation> {
        if state.len() > MAX_LEN {
            return None;
        }
        let (signed, sig) = state.rsplit_once('.')?;
        let payload = signed.strip_prefix(VERSION_TAG)?.strip_prefix('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        self.mac(signed.as_bytes()).verify_slice(&sig).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tengine_core::envelope::Member;

    fn caller(member: Option<&str>) -> Caller {
        Caller {
            project_id: Uuid::nil(),
            integration_id: Uuid::nil(),
            api_key_id: Uuid::from_u128(7),
            member: member.map(|id| Member {
                id: id.into(),
                email: None,
                roles: Vec::new(),
                session_issued_at: chrono::Utc::now(),
            }),
        }
    }

    #[test]
    fn binds_credential_call_and_version() {
        let states = RequestStates::new(&[1; 32], 60);
        let alice = caller(Some("alice"));
        let subject = Subject {
            caller: &alice,
            tool_id: Uuid::from_u128(1),
            tool_version: 3,
            fingerprint: "f",
        };
        let state = states.issue(&subject, Asked::Confirmation);
        assert_eq!(states.check(&state, &subject).map(|c| c.asked), Ok(Asked::Confirmation));
        let asked = Asked::Input {
            state: Some("api-state".into()),
            round: 2,
        };
        let input = states.issue(&subject, asked.clone());
        assert_eq!(states.check(&input, &subject).map(|c| c.asked), Ok(asked));

        let bob = caller(Some("bob"));
        let as_bob = Subject {
            caller: &bob,
            ..subject
        };
        assert_eq!(states.check(&state, &as_bob), Err(StateError::OtherCredential));
        let other_args = Subject {
            fingerprint: "g",
            ..subject
        };
        assert_eq!(states.check(&state, &other_args), Err(StateError::OtherCall));
        let newer = Subject {
            tool_version: 4,
            ..subject
        };
        assert_eq!(states.check(&state, &newer), Err(StateError::ToolChanged));

        // One changed character of the claims, or another server's key.
        let mut altered = state.clone().into_bytes();
        altered[5] = if altered[5] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).expect("ascii");
        assert_eq!(states.check(&altered, &subject), Err(StateError::Tampered));
        let elsewhere = RequestStates::new(&[2; 32], 60);
        assert_eq!(elsewhere.check(&state, &subject), Err(StateError::Tampered));
        assert_eq!(states.check("garbage", &subject), Err(StateError::Tampered));
        assert_eq!(
            states.check(&"x".repeat(MAX_LEN + 1), &subject),
            Err(StateError::Tampered)
        );
    }

    #[test]
    fn expires() {
        let states = RequestStates::new(&[1; 32], 0);
        let anyone = caller(None);
        let subject = Subject {
            caller: &anyone,
            tool_id: Uuid::nil(),
            tool_version: 1,
            fingerprint: "f",
        };
        let state = states.issue(&subject, Asked::Confirmation);
        assert_eq!(states.check(&state, &subject), Err(StateError::Expired));
    }
}

//! Project API keys: `tengine_` + 32 random bytes (base64url). Only the SHA-256 of
//! a key is stored; a fast hash is right here because the key itself is high-entropy.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const API_KEY_PREFIX: &str = "tengine_";
/// Visible part of a key kept for listings (`tengine_AbCd…`).
const DISPLAY_CHARS: usize = 12;

pub struct NewApiKey {
    pub plaintext: String,
    pub hash: Vec<u8>,
    pub display_prefix: String,
}

pub fn generate_api_key() -> NewApiKey {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let plaintext = format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    NewApiKey {
        hash: hash_api_key(&plaintext),
        display_prefix: plaintext.chars().take(DISPLAY_CHARS).collect(),
        plaintext,
    }
}

pub fn hash_api_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// A bearer token that looks like an API key (cheap pre-check before a lookup).
pub fn looks_like_api_key(token: &str) -> bool {
    token.starts_with(API_KEY_PREFIX) && token.len() < 256
}

/// Compares two secrets without leaking where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (ha, hb) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    ha.ct_eq(&hb).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_hash_matches() {
        let a = generate_api_key();
        let b = generate_api_key();
        assert_ne!(a.plaintext, b.plaintext);
        assert!(looks_like_api_key(&a.plaintext));
        assert_eq!(hash_api_key(&a.plaintext), a.hash);
        assert!(a.plaintext.starts_with(&a.display_prefix));
        assert!(constant_time_eq("x", "x") && !constant_time_eq("x", "y"));
    }
}

//! Tool secrets at rest: XChaCha20-Poly1305 under the configured master key, with
//! the owning tool's id as associated data so a ciphertext cannot be moved to
//! another tool. Decrypted only in the worker, only for the request it signs.
//!
//! Layout: `0x01 | nonce (24 bytes) | ciphertext+tag`. The leading byte names the
//! key generation, which is what a master-key rotation will bump.

use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore},
};
use uuid::Uuid;

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// Seals with the current master key; opens with it or any previous one, so a
/// master key can be rotated: add the old key to `previous_master_keys`, deploy
/// the new `master_key`, run `tengine secrets reseal`, then drop the old key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    previous: Vec<XChaCha20Poly1305>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret ciphertext is malformed or was not made with this master key")]
    Decrypt,
    #[error("secret could not be encrypted")]
    Encrypt,
}

impl SecretBox {
    pub fn new(master_key: &[u8; 32]) -> Self {
        Self::with_previous(master_key, &[])
    }

    pub fn with_previous(master_key: &[u8; 32], previous: &[[u8; 32]]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(master_key.into()),
            previous: previous.iter().map(|k| XChaCha20Poly1305::new(k.into())).collect(),
        }
    }

    pub fn seal(&self, owner: Uuid, plaintext: &str) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Encrypt)?;
        let mut out = Vec::with_capacity(NONCE_LEN.saturating_add(ciphertext.len()).saturating_add(1));
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    pub fn open(&self, owner: Uuid, sealed: &[u8]) -> Result<String, SecretError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != FORMAT_V1 {
            return Err(SecretError::Decrypt);
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        let payload = || Payload {
            msg: ciphertext,
            aad: owner.as_bytes(),
        };
        let plaintext = std::iter::once(&self.cipher)
            .chain(&self.previous)
            .find_map(|cipher| cipher.decrypt(XNonce::from_slice(nonce), payload()).ok())
            .ok_or(SecretError::Decrypt)?;
        String::from_utf8(plaintext).map_err(|_| SecretError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let boxed = SecretBox::new(&[9u8; 32]);
        let owner = Uuid::now_v7();
        let sealed = boxed.seal(owner, "s3cret").expect("seal");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(boxed.open(owner, &sealed).expect("open"), "s3cret");
        assert!(boxed.open(Uuid::now_v7(), &sealed).is_err(), "bound to its owner");
        assert!(
            SecretBox::new(&[8u8; 32]).open(owner, &sealed).is_err(),
            "bound to the key"
        );
        assert!(boxed.open(owner, b"\x01short").is_err());
    }

    #[test]
    fn previous_keys_open_during_rotation() {
        let old = SecretBox::new(&[1u8; 32]);
        let owner = Uuid::now_v7();
        let sealed = old.seal(owner, "s").expect("seal");
        let rotated = SecretBox::with_previous(&[2u8; 32], &[[1u8; 32]]);
        assert_eq!(rotated.open(owner, &sealed).expect("old key still opens"), "s");
        let resealed = rotated.seal(owner, "s").expect("seal");
        assert!(SecretBox::new(&[2u8; 32]).open(owner, &resealed).is_ok());
        assert!(SecretBox::new(&[1u8; 32]).open(owner, &resealed).is_err());
    }
}

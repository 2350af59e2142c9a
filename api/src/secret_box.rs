//! Secrets Corral must be able to use again (a region's snapshot manager password) are stored
//! encrypted: AES-256-GCM with a key from the node's configuration, a fresh random nonce per
//! value, stored as `enc:v1:<hex of nonce ‖ ciphertext ‖ tag>`.
//!
//! Secrets Corral only has to recognise (API keys, runner tokens, region service keys) are
//! stored as SHA-256 hashes instead ([`crate::auth::hash_secret`]).
//!
//! The proposer encrypts before proposing, so the Raft log, snapshots and every replica hold
//! only ciphertext; every node must therefore be configured with the same key.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const PREFIX: &str = "enc:v1:";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretBoxError {
    #[error("the stored value is not an encrypted secret")]
    NotSealed,
    #[error("the stored secret does not decrypt with this node's key (was the key changed?)")]
    Undecryptable,
    #[error("no randomness for a nonce")]
    Random,
}

/// The node's encryption key for stored secrets.
#[derive(Clone)]
pub struct SecretBox {
    key: [u8; 32],
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// Derives the 256-bit key from configured key material of any length.
    pub fn new(key_material: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"corral secret box v1\0");
        hasher.update(key_material.as_bytes());
        SecretBox { key: hasher.finalize().into() }
    }

    fn key(&self) -> LessSafeKey {
        // 32 bytes is always a valid AES-256 key.
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.key).unwrap_or_else(|_| unreachable!("32-byte key")))
    }

    /// Encrypts `plaintext` for storage.
    pub fn seal(&self, plaintext: &str) -> Result<String, SecretBoxError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SecretBoxError::Random)?;
        let mut buffer = plaintext.as_bytes().to_vec();
        self.key()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(PREFIX), &mut buffer)
            .map_err(|_| SecretBoxError::Random)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buffer);
        Ok(format!("{PREFIX}{}", hex::encode(sealed)))
    }

    /// Decrypts a value made by [`SecretBox::seal`] with the same key.
    pub fn open(&self, stored: &str) -> Result<String, SecretBoxError> {
        let bytes = stored
            .strip_prefix(PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() >= NONCE_LEN)
            .ok_or(SecretBoxError::NotSealed)?;
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretBoxError::NotSealed)?;
        let mut buffer = sealed.to_vec();
        let plain = self
            .key()
            .open_in_place(nonce, Aad::from(PREFIX), &mut buffer)
            .map_err(|_| SecretBoxError::Undecryptable)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretBoxError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_hide_the_plaintext() {
        let sealed_box = SecretBox::new("node secrets key 1");
        let sealed = sealed_box.seal("hunter2-password").expect("seal");
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("hunter2"));
        assert_ne!(sealed, sealed_box.seal("hunter2-password").expect("seal"), "fresh nonce every time");
        assert_eq!(sealed_box.open(&sealed).as_deref(), Ok("hunter2-password"));
        assert_eq!(SecretBox::new("another key").open(&sealed), Err(SecretBoxError::Undecryptable));
        assert_eq!(sealed_box.open("hunter2-password"), Err(SecretBoxError::NotSealed));
        // Change the last character whatever it is (replacing it with a fixed one would leave
        // it unchanged when it already was that one).
        let mut tampered = sealed.clone();
        let last = tampered.pop().expect("non-empty");
        tampered.push(if last == '0' { '1' } else { '0' });
        assert_eq!(sealed_box.open(&tampered), Err(SecretBoxError::Undecryptable));
    }
}

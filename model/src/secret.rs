//! Secrets are stored as the hex SHA-256 of the secret, never the secret: API keys, runner
//! tokens and region service keys alike.

use sha2::{Digest, Sha256};

/// Hex SHA-256 of a secret, the form in which secrets are stored and compared.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

//! `Idempotency-Key` on POST requests.
//!
//! The key is scoped by who calls and what they call (`actor|METHOD path|key`) before it goes
//! into the proposal, and a digest of the request body travels with it, so that:
//! - the same request replayed with the same key returns the first result and changes nothing
//!   (`apply` keeps the result under the scoped key);
//! - the same key with a different body is refused (422 `idempotency_key_reused`).
//!
//! Secrets a POST creates (API keys, passwords) are stored only as hashes, so a replay cannot
//! read them back. When a key is given, they are instead derived as
//! HMAC-SHA256(admin key, scoped key | purpose): every node computes the same secret for the
//! same replay, and nobody without the admin key can. Without a key they are random.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use hmac::{Hmac, Mac};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ApiError;

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Longest key accepted.
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 255;

/// The request's idempotency key (if any) and what it was sent to.
#[derive(Debug, Clone)]
pub struct Idempotency {
    key: Option<String>,
    request: String,
}

#[async_trait::async_trait]
impl<S: Send + Sync> FromRequestParts<S> for Idempotency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let key = match parts.headers.get(IDEMPOTENCY_HEADER) {
            None => None,
            Some(v) => {
                let bytes = v.as_bytes();
                if bytes.is_empty() || bytes.len() > IDEMPOTENCY_KEY_MAX_LEN {
                    return Err(ApiError::bad_request(
                        "invalid_header",
                        format!("Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LEN} characters"),
                    ));
                }
                // Spaces are refused too: a proxy may trim or fold them, and the key would change.
                let k = std::str::from_utf8(bytes)
                    .ok()
                    .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
                    .ok_or_else(|| {
                        ApiError::bad_request("invalid_header", "Idempotency-Key must be visible ASCII without spaces")
                    })?;
                Some(k.to_string())
            }
        };
        Ok(Idempotency { key, request: format!("{} {}", parts.method, parts.uri.path()) })
    }
}

impl Idempotency {
    /// No key: for routes that are not POST, and for internal steps.
    pub fn none() -> Idempotency {
        Idempotency { key: None, request: String::new() }
    }

    /// A key for a second step of the same request, distinct from the first step's.
    pub fn derived(&self, step: &str) -> Idempotency {
        Idempotency { key: self.key.as_ref().map(|k| format!("{k}#{step}")), request: self.request.clone() }
    }

    /// The key as stored in the replicated state, or `None` when the client sent none.
    pub fn scoped_key(&self, actor: &str) -> Option<String> {
        self.key.as_ref().map(|k| format!("{actor}|{}|{k}", self.request))
    }

    /// Digest of the request (path and body) that carries the key.
    pub fn fingerprint<B: Serialize>(&self, body: &B) -> Option<String> {
        self.key.as_ref()?;
        let mut hasher = Sha256::new();
        hasher.update(self.request.as_bytes());
        hasher.update([0]);
        hasher.update(serde_json::to_vec(body).unwrap_or_default());
        Some(hex::encode(hasher.finalize()))
    }

    /// A new secret: derived from the scoped key when there is one, random otherwise.
    pub fn secret(&self, admin_key: &str, actor: &str, purpose: &str, prefix: &str) -> String {
        match self.scoped_key(actor) {
            Some(scoped) => derive_secret(admin_key, &scoped, purpose, prefix),
            None => random_secret(prefix),
        }
    }
}

fn derive_secret(admin_key: &str, scoped_key: &str, purpose: &str, prefix: &str) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
    let mut mac = match Hmac::<Sha256>::new_from_slice(admin_key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return random_secret(prefix),
    };
    mac.update(scoped_key.as_bytes());
    mac.update(b"|");
    mac.update(purpose.as_bytes());
    let digest = hex::encode(mac.finalize().into_bytes());
    format!("{prefix}{}", &digest[..40])
}

/// 40 random alphanumeric characters (~238 bits) after a readable prefix.
pub fn random_secret(prefix: &str) -> String {
    let body: String = rand::thread_rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect();
    format!("{prefix}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(key: Option<&str>, request: &str) -> Idempotency {
        Idempotency { key: key.map(String::from), request: request.to_string() }
    }

    #[test]
    fn derived_secrets_repeat_only_for_the_same_scope() {
        let a = with_key(Some("k1"), "POST /api/regions");
        let s1 = a.secret("admin-key-0123456789", "org1", "proxy", "prx_");
        assert_eq!(s1, a.secret("admin-key-0123456789", "org1", "proxy", "prx_"));
        assert_ne!(s1, a.secret("admin-key-0123456789", "org2", "proxy", "prx_"));
        assert_ne!(s1, a.secret("admin-key-0123456789", "org1", "ssh", "prx_"));
        assert_ne!(s1, a.secret("another-admin-key-xx", "org1", "proxy", "prx_"));
        assert!(s1.starts_with("prx_") && s1.len() == 44);
        let none = with_key(None, "POST /api/regions");
        assert_ne!(none.secret("k", "a", "p", ""), none.secret("k", "a", "p", ""));
        assert_eq!(none.scoped_key("a"), None);
        assert_eq!(none.fingerprint(&1), None);
    }

    #[test]
    fn fingerprint_depends_on_body_and_path() {
        let a = with_key(Some("k"), "POST /api/regions");
        let b = with_key(Some("k"), "POST /api/runners");
        assert_eq!(a.fingerprint(&"x"), a.fingerprint(&"x"));
        assert_ne!(a.fingerprint(&"x"), a.fingerprint(&"y"));
        assert_ne!(a.fingerprint(&"x"), b.fingerprint(&"x"));
    }
}

//! Who is calling: `Authorization: Bearer <key>`.
//!
//! - The admin key (from config) makes an [`Admin`] caller, allowed on `/api/admin/*`; on
//!   organization routes it acts on the organization named by `X-Organization-ID`.
//! - An organization API key (stored in the replicated state by the SHA-256 of the key) makes a
//!   [`Caller`] bound to that key's organization, with the key's role. A revoked or expired key
//!   is refused here; writes carry the key's hash so that `apply` refuses them too if the key
//!   went away before they committed, and linearizable reads check it again after their read
//!   barrier ([`AppState::read_as`](crate::AppState::read_as)).
//!
//! Keys are compared by hash in constant time; the key itself is never logged or stored.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
pub use corral_model::secret::hash_secret;

use corral_model::access::{self, Permission, Role};

use crate::{ApiError, AppState, ReadConsistency, Scope};

/// Header that picks the organization an admin key acts on (required with the admin key on
/// organization routes: 400 `organization_required` without it).
pub const ORGANIZATION_HEADER: &str = "x-organization-id";

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <key> header"))?;
    let value = value.to_str().map_err(|_| ApiError::unauthorized("Authorization header is not valid text"))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization header must be 'Bearer <key>'"))
}

/// Whether `key_hash` (the [`hash_secret`] of a bearer key) is the admin key's hash.
fn is_admin_key(app: &AppState, key_hash: &str) -> bool {
    constant_time_eq(key_hash.as_bytes(), app.admin_key_hash.as_bytes())
}

/// A caller acting within one organization: with one of its API keys, or the operator with
/// the admin key and `X-Organization-ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub organization_id: String,
    /// The admin key (the operator), acting for the organization.
    pub is_admin: bool,
    /// The key's role; the operator acts as an organization admin.
    pub role: Role,
    /// The hash of the organization key used (`None` for the operator). Writes carry it, so
    /// that `apply` refuses them if the key is revoked or expired before they commit.
    pub credential: Option<String>,
}

impl Caller {
    /// What `apply` checks this caller's commands against.
    pub fn scope(&self) -> Scope {
        Scope { organization_id: Some(self.organization_id.clone()), credential: self.credential.clone() }
    }

    /// 403 `forbidden`, naming the permission, unless the caller's role holds it.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        Ok(access::require(self.role, permission)?)
    }
}

#[async_trait::async_trait]
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        let key = bearer(parts)?;
        let requested = match parts.headers.get(ORGANIZATION_HEADER) {
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| ApiError::bad_request("invalid_header", "X-Organization-ID is not valid text"))?
                    .to_string(),
            ),
            None => None,
        };
        let hash = hash_secret(key);
        if is_admin_key(app, &hash) {
            // Acting for an organization nobody named would read and write an organization
            // that may not exist; say what is missing instead.
            let organization_id = requested.ok_or_else(|| {
                ApiError::bad_request(
                    "organization_required",
                    "the admin key acts on organization routes only for the organization named in \
                     X-Organization-ID; name one, or use that organization's API key",
                )
            })?;
            return Ok(Caller { organization_id, is_admin: true, role: Role::Admin, credential: None });
        }
        let now = app.now();
        let lookup = || {
            let machine = app.cluster.state().read();
            access::live_key(&machine.state, &hash, None, now).map(|k| (k.organization_id.clone(), k.role))
        };
        let mut found = lookup();
        if found.is_err() {
            // The key may have been created through another node a moment ago: catch up with
            // the leader once, then look again.
            if app.cluster.read_barrier(ReadConsistency::Linearizable).await.is_ok() {
                found = lookup();
            }
        }
        let (organization_id, role) = found?;
        if let Some(requested) = requested {
            if requested != organization_id {
                // 404-like silence about other organizations: the key simply has no access.
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this API key does not belong to the organization in X-Organization-ID",
                ));
            }
        }
        app.key_usage.seen(&hash, now);
        Ok(Caller { organization_id, is_admin: false, role, credential: Some(hash) })
    }
}

/// A caller holding the admin key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admin;

#[async_trait::async_trait]
impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        let key = bearer(parts)?;
        if is_admin_key(app, &hash_secret(key)) {
            Ok(Admin)
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this endpoint needs the admin key"))
        }
    }
}

//! Who is calling: `Authorization: Bearer <key>`.
//!
//! - The admin key (from config) makes an [`Admin`] caller, allowed on `/api/admin/*`; on
//!   organization routes it acts on the organization named by `X-Organization-ID`.
//! - An organization API key (stored in the replicated state by the SHA-256 of the key) makes a
//!   [`Caller`] bound to that key's organization.
//!
//! Keys are compared by hash in constant time; the key itself is never logged or stored.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
pub use corral_model::secret::hash_secret;

use crate::{ApiError, AppState, ReadConsistency};

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

fn is_admin_key(app: &AppState, key: &str) -> bool {
    constant_time_eq(hash_secret(key).as_bytes(), hash_secret(&app.config.admin_key).as_bytes())
}

/// A caller acting within one organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub organization_id: String,
    pub is_admin: bool,
}

impl Caller {
    /// The scope `apply` enforces for this caller's commands.
    pub fn scope(&self) -> Option<String> {
        Some(self.organization_id.clone())
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
        if is_admin_key(app, key) {
            // Acting for an organization nobody named would read and write an organization
            // that may not exist; say what is missing instead.
            let organization_id = requested.ok_or_else(|| {
                ApiError::bad_request(
                    "organization_required",
                    "the admin key acts on organization routes only for the organization named in \
                     X-Organization-ID; name one, or use that organization's API key",
                )
            })?;
            return Ok(Caller { organization_id, is_admin: true });
        }
        let hash = hash_secret(key);
        let lookup = || app.cluster.state().read().state.api_keys.get(&hash).map(|k| k.organization_id.clone());
        let mut organization_id = lookup();
        if organization_id.is_none() {
            // The key may have been created through another node a moment ago: catch up with
            // the leader once, then look again.
            if app.cluster.read_barrier(ReadConsistency::Linearizable).await.is_ok() {
                organization_id = lookup();
            }
        }
        let organization_id = organization_id.ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
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
        Ok(Caller { organization_id, is_admin: false })
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
        if is_admin_key(app, key) {
            Ok(Admin)
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this endpoint needs the admin key"))
        }
    }
}

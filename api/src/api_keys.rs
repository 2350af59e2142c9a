//! API keys of an organization: `/api/api-keys` for the organization's own callers and
//! `/api/admin/organizations/{id}/api-keys` for the operator. A key has a name (unique in its
//! organization), a role (`member` or `admin`, see [`corral_model::access`]), an optional
//! expiry, and `lastUsedAt` (recorded lazily, [`crate::key_usage`]). The key itself is shown
//! once, in the response that created it; listings show its first characters only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use corral_model::access::{Permission, Role};
use corral_model::{ApiKeyRecord, Command, Millis, Outcome, State as ModelState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{hash_secret, Admin, Caller};
use crate::extract::{ApiJson, ApiQuery, ReadParams};
use crate::idempotency::Idempotency;
use crate::{rfc3339, validate, ApiError, AppState, Scope};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/api-keys", get(list_api_keys).post(create_api_key))
        .route("/api/api-keys/:name", delete(delete_api_key))
        .route(
            "/api/admin/organizations/:organization_id/api-keys",
            get(admin_list_api_keys).post(admin_create_api_key),
        )
        .route("/api/admin/organizations/:organization_id/api-keys/:name", delete(admin_delete_api_key))
}

/// Prefix of organization API keys.
pub const ORGANIZATION_KEY_PREFIX: &str = "corral_";
/// How many leading characters of a key its listing shows (the prefix and 5 more).
pub const SHOWN_PREFIX_LEN: usize = ORGANIZATION_KEY_PREFIX.len() + 5;
/// The furthest expiry accepted: ten years.
pub const MAX_KEY_LIFETIME_MS: Millis = 10 * 366 * 24 * 60 * 60 * 1000;

/// A key's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Reads everything of the organization, works with sandboxes, manages member keys.
    Member,
    /// A member that can also change regions, runners and their credentials, and manage
    /// admin keys.
    Admin,
}

impl From<KeyRole> for Role {
    fn from(role: KeyRole) -> Role {
        match role {
            KeyRole::Member => Role::Member,
            KeyRole::Admin => Role::Admin,
        }
    }
}

impl From<Role> for KeyRole {
    fn from(role: Role) -> KeyRole {
        match role {
            Role::Member => KeyRole::Member,
            Role::Admin => KeyRole::Admin,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    #[schema(example = "ci")]
    pub name: String,
    /// Default: `member` on `/api/api-keys`, `admin` on the operator's route. A key creates
    /// keys up to its own role, and a key that expires creates keys that expire no later
    /// (by default, when it does).
    #[serde(default)]
    pub role: Option<KeyRole>,
    /// RFC 3339 time from which the key is refused; in the future (else 409 `conflict`), at
    /// most ten years ahead. Absent: the key does not expire.
    #[serde(default)]
    #[schema(example = "2030-01-01T00:00:00Z")]
    pub expires_at: Option<String>,
}

/// A key as listings show it: never the key itself.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyView {
    pub name: String,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    pub role: KeyRole,
    /// What the role allows (`read`, `write:sandboxes`, `write:api-keys`, `write:regions`,
    /// `write:runners`).
    pub permissions: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    /// Recorded lazily: may lag the latest use by about a minute.
    pub last_used_at: Option<String>,
    pub expired: bool,
}

impl ApiKeyView {
    fn new(key: &ApiKeyRecord, now: Millis) -> ApiKeyView {
        ApiKeyView {
            name: key.name.clone(),
            prefix: key.prefix.clone(),
            role: key.role.into(),
            permissions: key.role.permissions().into_iter().map(|p| p.name().to_string()).collect(),
            created_at: rfc3339(key.created_at),
            expires_at: key.expires_at.map(rfc3339),
            last_used_at: key.last_used_at.map(rfc3339),
            expired: key.expires_at.is_some_and(|expiry| expiry <= now),
        }
    }
}

/// A new API key (the key itself is shown only here).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    pub organization_id: String,
    #[serde(flatten)]
    pub key: ApiKeyView,
    pub api_key: String,
}

/// The command that creates a key for `organization_id`, with the secret it hashes.
pub(crate) fn new_key_command(
    organization_id: &str,
    name: &str,
    role: Role,
    expires_at: Option<Millis>,
    api_key: &str,
) -> Command {
    Command::CreateApiKey {
        key_hash: hash_secret(api_key),
        organization_id: organization_id.to_string(),
        name: name.to_string(),
        role,
        prefix: api_key.chars().take(SHOWN_PREFIX_LEN).collect(),
        expires_at,
    }
}

/// `expiresAt` as stored: 422 when it is no RFC 3339 time, 409 when it is not in the future
/// of `now` or more than ten years ahead.
pub fn parse_expiry(expires_at: Option<&str>, now: Millis) -> Result<Option<Millis>, ApiError> {
    let Some(text) = expires_at else { return Ok(None) };
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| ApiError::unprocessable(format!("expiresAt must be an RFC 3339 time: {e}")))?
        .timestamp_millis();
    // A well-formed time that is past (or too far ahead) is refused by the clock, not by the
    // shape of the request: 409, like every other refusal by the current state.
    let past = || ApiError::new(StatusCode::CONFLICT, "conflict", "expiresAt must be in the future");
    let at = Millis::try_from(at).map_err(|_| past())?;
    if at <= now {
        return Err(past());
    }
    if at - now > MAX_KEY_LIFETIME_MS {
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", "expiresAt must be at most ten years ahead"));
    }
    Ok(Some(at))
}

/// Validates the request, proposes the key for `organization_id` as `scope`, and answers it.
async fn create(
    app: &AppState,
    organization_id: String,
    body: CreateApiKeyRequest,
    default_role: Role,
    scope: Scope,
    idempotency: &Idempotency,
    actor: &str,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    validate::name("name", &body.name)?;
    let expires_at = parse_expiry(body.expires_at.as_deref(), app.now())?;
    let role = body.role.map_or(default_role, Role::from);
    let fingerprint = idempotency.fingerprint(&body);
    let api_key = idempotency.secret(&app.config.admin_key, actor, "organization-key", ORGANIZATION_KEY_PREFIX);
    let command = new_key_command(&organization_id, &body.name, role, expires_at, &api_key);
    let key = match app.submit(command, scope, idempotency, actor, fingerprint).await? {
        Outcome::ApiKey(key) => key,
        other => return Err(ApiError::unexpected(&other)),
    };
    let key = ApiKeyView::new(&key, app.now());
    Ok((StatusCode::CREATED, Json(CreatedApiKey { organization_id, key, api_key })))
}

fn keys_of(state: &ModelState, organization_id: &str, now: corral_model::Millis) -> Vec<ApiKeyView> {
    let mut keys: Vec<ApiKeyView> = state
        .api_keys
        .values()
        .filter(|k| k.organization_id == organization_id)
        .map(|k| ApiKeyView::new(k, now))
        .collect();
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    keys
}

/// Create an API key for the caller's organization, up to the caller's own role.
#[utoipa::path(post, path = "/api/api-keys", tag = "api-keys", request_body = CreateApiKeyRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first response")),
    responses((status = 201, body = CreatedApiKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: a role above the caller's own"),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_api_key(
    State(app): State<AppState>,
    caller: Caller,
    idempotency: Idempotency,
    ApiJson(body): ApiJson<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    caller.require(Permission::WriteApiKeys)?;
    let actor = caller.organization_id.clone();
    let mut body = body;
    if body.expires_at.is_none() {
        // A key that expires creates keys that expire with it, unless told otherwise (and
        // never later: apply refuses that).
        let own_expiry = caller
            .credential
            .as_ref()
            .and_then(|hash| app.cluster.state().read().state.api_keys.get(hash).and_then(|k| k.expires_at));
        body.expires_at = own_expiry.map(rfc3339);
    }
    create(&app, caller.organization_id.clone(), body, Role::Member, caller.scope(), &idempotency, &actor).await
}

/// List the organization's API keys (names, prefixes, roles, dates; never a key).
#[utoipa::path(get, path = "/api/api-keys", tag = "api-keys", params(ReadParams),
    responses((status = 200, body = [ApiKeyView]), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_api_keys(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    caller.require(Permission::Read)?;
    let org = caller.organization_id.clone();
    let now = app.now();
    Ok(Json(app.read_as(&caller, params.consistency, |state, _| keys_of(state, &org, now)).await?))
}

/// Revoke one of the organization's API keys: every node refuses it once the revocation
/// commits. A key revokes keys up to its own role (it may revoke itself).
#[utoipa::path(delete, path = "/api/api-keys/{name}", tag = "api-keys",
    params(("name" = String, Path, description = "Key name")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_api_key(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let command = Command::DeleteApiKey { organization_id: caller.organization_id.clone(), name };
    app.submit(command, caller.scope(), &Idempotency::none(), &caller.organization_id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create an API key for an organization (operator; any role, default `admin`).
#[utoipa::path(post, path = "/api/admin/organizations/{organization_id}/api-keys", tag = "admin",
    params(("organization_id" = String, Path, description = "Organization id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first response")),
    request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn admin_create_api_key(
    State(app): State<AppState>,
    _admin: Admin,
    idempotency: Idempotency,
    Path(organization_id): Path<String>,
    ApiJson(body): ApiJson<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    create(&app, organization_id, body, Role::Admin, Scope::operator(), &idempotency, "admin").await
}

/// List an organization's API keys (operator).
#[utoipa::path(get, path = "/api/admin/organizations/{organization_id}/api-keys", tag = "admin",
    params(("organization_id" = String, Path, description = "Organization id"), ReadParams),
    responses((status = 200, body = [ApiKeyView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn admin_list_api_keys(
    State(app): State<AppState>,
    _admin: Admin,
    Path(organization_id): Path<String>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    app.read(params.consistency, |state, _| {
        state
            .organizations
            .contains_key(&organization_id)
            .then(|| keys_of(state, &organization_id, app.now()))
            .ok_or_else(|| ApiError::not_found(format!("organization '{organization_id}' not found")))
    })
    .await?
    .map(Json)
}

/// Revoke an organization's API key (operator).
#[utoipa::path(delete, path = "/api/admin/organizations/{organization_id}/api-keys/{name}", tag = "admin",
    params(("organization_id" = String, Path, description = "Organization id"),
        ("name" = String, Path, description = "Key name")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn admin_delete_api_key(
    State(app): State<AppState>,
    _admin: Admin,
    Path((organization_id, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let command = Command::DeleteApiKey { organization_id, name };
    app.submit(command, Scope::operator(), &Idempotency::none(), "admin", None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_in_the_future_and_within_ten_years() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_expiry(None, now), Ok(None));
        assert!(parse_expiry(Some("2023-11-14T22:13:20Z"), now).is_err(), "exactly now is not the future");
        assert_eq!(parse_expiry(Some("2023-11-14T22:13:21Z"), now), Ok(Some(now + 1_000)));
        assert!(parse_expiry(Some("1969-01-01T00:00:00Z"), now).is_err());
        assert!(parse_expiry(Some("2099-01-01T00:00:00Z"), now).is_err());
        assert!(parse_expiry(Some("tomorrow"), now).is_err());
    }
}

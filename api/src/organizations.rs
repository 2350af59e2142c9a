//! `/api/admin/organizations`: the operator creates organizations and their API keys. A key
//! is shown once, in the response that created it, and stored as its SHA-256.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use corral_model::{Command, Organization, Outcome};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{hash_secret, Admin};
use crate::extract::{ApiJson, ApiQuery, ReadParams};
use crate::idempotency::Idempotency;
use crate::{rfc3339, validate, ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/admin/organizations", get(list_organizations).post(create_organization))
        .route("/api/admin/organizations/:organization_id/api-keys", post(create_api_key))
}

/// Prefix of organization API keys.
pub const ORGANIZATION_KEY_PREFIX: &str = "corral_";

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrganizationRequest {
    #[schema(example = "acme")]
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    #[schema(example = "ci")]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationView {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

impl From<&Organization> for OrganizationView {
    fn from(o: &Organization) -> Self {
        OrganizationView { id: o.id.clone(), name: o.name.clone(), created_at: rfc3339(o.created_at) }
    }
}

/// A new organization with its first API key (shown once).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedOrganization {
    #[serde(flatten)]
    pub organization: OrganizationView,
    pub api_key: String,
}

/// A new API key (shown once).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    pub organization_id: String,
    pub name: String,
    pub api_key: String,
}

/// Create an organization and its first API key (named `default`).
#[utoipa::path(post, path = "/api/admin/organizations", tag = "admin", request_body = CreateOrganizationRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first response")),
    responses((status = 201, body = CreatedOrganization), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_organization(
    State(app): State<AppState>,
    _admin: Admin,
    idempotency: Idempotency,
    ApiJson(body): ApiJson<CreateOrganizationRequest>,
) -> Result<(StatusCode, Json<CreatedOrganization>), ApiError> {
    validate::name("name", &body.name)?;
    let fingerprint = idempotency.fingerprint(&body);
    // The id is derived from the idempotency key too, so a replay's key command finds it.
    let id = match idempotency.scoped_key("admin") {
        Some(_) => idempotency.secret(&app.config.admin_key, "admin", "organization-id", "org_")[..24].to_string(),
        None => format!("org_{}", &uuid::Uuid::new_v4().simple().to_string()[..20]),
    };
    let command = Command::CreateOrganization { id, name: body.name };
    let organization = match app.submit(command, None, &idempotency, "admin", fingerprint.clone()).await? {
        Outcome::Organization(o) => o,
        other => return Err(ApiError::unexpected(&other)),
    };
    let api_key = idempotency.secret(&app.config.admin_key, "admin", "organization-key", ORGANIZATION_KEY_PREFIX);
    let key_command = Command::CreateApiKey {
        key_hash: hash_secret(&api_key),
        organization_id: organization.id.clone(),
        name: "default".into(),
    };
    // Its own idempotency scope: a replay of the whole request replays this step too.
    let key_idempotency = idempotency.derived("first-key");
    app.submit(key_command, None, &key_idempotency, "admin", fingerprint).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedOrganization { organization: OrganizationView::from(&organization), api_key }),
    ))
}

/// List organizations.
#[utoipa::path(get, path = "/api/admin/organizations", tag = "admin", params(ReadParams),
    responses((status = 200, body = [OrganizationView]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_organizations(
    State(app): State<AppState>,
    _admin: Admin,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<Vec<OrganizationView>>, ApiError> {
    let organizations = app
        .read(params.consistency, |state, _| state.organizations.values().map(OrganizationView::from).collect())
        .await?;
    Ok(Json(organizations))
}

/// Create another API key for an organization.
#[utoipa::path(post, path = "/api/admin/organizations/{organization_id}/api-keys", tag = "admin",
    params(("organization_id" = String, Path, description = "Organization id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first response")),
    request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_api_key(
    State(app): State<AppState>,
    _admin: Admin,
    idempotency: Idempotency,
    Path(organization_id): Path<String>,
    ApiJson(body): ApiJson<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    validate::name("name", &body.name)?;
    let api_key = idempotency.secret(&app.config.admin_key, "admin", "organization-key", ORGANIZATION_KEY_PREFIX);
    let fingerprint = idempotency.fingerprint(&body);
    let command = Command::CreateApiKey {
        key_hash: hash_secret(&api_key),
        organization_id: organization_id.clone(),
        name: body.name.clone(),
    };
    app.submit(command, None, &idempotency, "admin", fingerprint).await?;
    Ok((StatusCode::CREATED, Json(CreatedApiKey { organization_id, name: body.name, api_key })))
}

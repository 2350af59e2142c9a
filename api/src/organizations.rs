//! `/api/admin/organizations`: the operator creates organizations (each with a first admin
//! key, shown once and stored as its SHA-256) and sets their quotas; `/api/quota` shows an
//! organization its quota and what it uses of it. Further keys are [`crate::api_keys`]'.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use corral_model::access::{Permission, Role};
use corral_model::{Command, Organization, Outcome, Quota, QuotaUsage};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api_keys::{new_key_command, ORGANIZATION_KEY_PREFIX};
use crate::auth::{Admin, Caller};
use crate::extract::{ApiJson, ApiQuery, ReadParams};
use crate::idempotency::Idempotency;
use crate::{rfc3339, validate, ApiError, AppState, Scope};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/admin/organizations", get(list_organizations).post(create_organization))
        .route("/api/admin/organizations/:organization_id/quota", put(set_quota))
        .route("/api/quota", get(get_quota))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrganizationRequest {
    #[schema(example = "acme")]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationView {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub quota: QuotaView,
}

impl From<&Organization> for OrganizationView {
    fn from(o: &Organization) -> Self {
        OrganizationView {
            id: o.id.clone(),
            name: o.name.clone(),
            created_at: rfc3339(o.created_at),
            quota: QuotaView::from(o.quota),
        }
    }
}

/// Largest quota the operator may set on one resource (larger is "no limit": leave it out).
pub const MAX_QUOTA: u64 = u32::MAX as u64;

/// Limits on an organization's sandboxes in shared regions (custom regions have none). A
/// field absent or `null`: no limit. A sandbox counts until it is deleted (a stopped one keeps
/// its resources on its runner).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaView {
    #[serde(default, deserialize_with = "crate::extract::optional_whole_number")]
    pub cpu: Option<u64>,
    #[serde(rename = "memoryGiB", default, deserialize_with = "crate::extract::optional_whole_number")]
    pub memory_gib: Option<u64>,
    #[serde(rename = "diskGiB", default, deserialize_with = "crate::extract::optional_whole_number")]
    pub disk_gib: Option<u64>,
    #[serde(default, deserialize_with = "crate::extract::optional_whole_number")]
    pub sandboxes: Option<u64>,
}

impl From<Quota> for QuotaView {
    fn from(q: Quota) -> Self {
        QuotaView { cpu: q.cpu, memory_gib: q.memory_gib, disk_gib: q.disk_gib, sandboxes: q.sandboxes }
    }
}

impl From<QuotaView> for Quota {
    fn from(q: QuotaView) -> Self {
        Quota { cpu: q.cpu, memory_gib: q.memory_gib, disk_gib: q.disk_gib, sandboxes: q.sandboxes }
    }
}

/// What an organization's sandboxes hold in shared regions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaUsed {
    pub cpu: u64,
    #[serde(rename = "memoryGiB")]
    pub memory_gib: u64,
    #[serde(rename = "diskGiB")]
    pub disk_gib: u64,
    pub sandboxes: u64,
}

impl From<QuotaUsage> for QuotaUsed {
    fn from(u: QuotaUsage) -> Self {
        QuotaUsed {
            cpu: u.resources.cpu,
            memory_gib: u.resources.memory_gib,
            disk_gib: u.resources.disk_gib,
            sandboxes: u.sandboxes,
        }
    }
}

/// An organization's quota and its use.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaStatus {
    pub organization_id: String,
    pub quota: QuotaView,
    pub used: QuotaUsed,
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
    let organization = match app.submit(command, Scope::operator(), &idempotency, "admin", fingerprint.clone()).await? {
        Outcome::Organization(o) => o,
        other => return Err(ApiError::unexpected(&other)),
    };
    let api_key = idempotency.secret(&app.config.admin_key, "admin", "organization-key", ORGANIZATION_KEY_PREFIX);
    let key_command = new_key_command(&organization.id, "default", Role::Admin, None, &api_key);
    // Its own idempotency scope: a replay of the whole request replays this step too.
    let key_idempotency = idempotency.derived("first-key");
    app.submit(key_command, Scope::operator(), &key_idempotency, "admin", fingerprint).await?;
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

/// Set an organization's quota in shared regions (operator). It replaces the whole quota:
/// absent or `null` fields are no limit. Lowering it below the use moves nothing; it stops new
/// sandboxes until the use is under it.
#[utoipa::path(put, path = "/api/admin/organizations/{organization_id}/quota", tag = "admin",
    params(("organization_id" = String, Path, description = "Organization id")),
    request_body = QuotaView,
    responses((status = 200, body = OrganizationView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_quota(
    State(app): State<AppState>,
    _admin: Admin,
    Path(organization_id): Path<String>,
    ApiJson(body): ApiJson<QuotaView>,
) -> Result<Json<OrganizationView>, ApiError> {
    for (field, value) in
        [("cpu", body.cpu), ("memoryGiB", body.memory_gib), ("diskGiB", body.disk_gib), ("sandboxes", body.sandboxes)]
    {
        if value.is_some_and(|v| v > MAX_QUOTA) {
            return Err(ApiError::unprocessable(format!(
                "{field} must be at most {MAX_QUOTA} (leave it out for no limit)"
            )));
        }
    }
    let command = Command::SetOrganizationQuota { id: organization_id, quota: body.into() };
    match app.submit(command, Scope::operator(), &Idempotency::none(), "admin", None).await? {
        Outcome::Organization(o) => Ok(Json(OrganizationView::from(&o))),
        other => Err(ApiError::unexpected(&other)),
    }
}

/// The caller's organization's quota in shared regions and what its sandboxes use of it.
#[utoipa::path(get, path = "/api/quota", tag = "sandboxes", params(ReadParams),
    responses((status = 200, body = QuotaStatus), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_quota(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<QuotaStatus>, ApiError> {
    caller.require(Permission::Read)?;
    let org = caller.organization_id.clone();
    let status = app
        .read_as(&caller, params.consistency, |state, _| QuotaStatus {
            quota: state.organizations.get(&org).map(|o| QuotaView::from(o.quota)).unwrap_or_default(),
            used: state.quota_usage_of(&org).into(),
            organization_id: org.clone(),
        })
        .await?;
    Ok(Json(status))
}

//! `/api/regions`: custom regions of the caller's organization, plus the shared regions every
//! organization can see (and no organization can change).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use corral_model::{Command, NewRegion, Outcome, Region, RegionCredential, RegionType};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::auth::{hash_secret, Caller};
use crate::extract::{ApiJson, ApiQuery, ReadParams};
use crate::idempotency::Idempotency;
use crate::{rfc3339, validate, ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/regions", get(list_regions).post(create_region))
        .route("/api/regions/:region_id", get(get_region).patch(update_region).delete(delete_region))
        .route("/api/regions/:region_id/regenerate-proxy-api-key", post(regenerate_proxy_api_key))
        .route("/api/regions/:region_id/regenerate-ssh-gateway-api-key", post(regenerate_ssh_gateway_api_key))
        .route(
            "/api/regions/:region_id/regenerate-snapshot-manager-credentials",
            post(regenerate_snapshot_manager_credentials),
        )
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRegionRequest {
    /// Letters, digits, `.`, `_`, `-`; 1–63 characters; unique in the organization.
    #[schema(example = "my-custom-region")]
    pub name: String,
    #[schema(example = "https://proxy.example.com")]
    pub proxy_url: Option<String>,
    #[schema(example = "ssh://ssh-gateway.example.com")]
    pub ssh_gateway_url: Option<String>,
    #[schema(example = "https://snapshot-manager.example.com")]
    pub snapshot_manager_url: Option<String>,
}

/// Distinguishes "field absent" (leave as is) from "field null" (clear it).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// New service URLs; a field left out stays as it is, a field set to `null` is cleared.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateRegionRequest {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "https://new-proxy.example.com")]
    pub proxy_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "ssh://new-ssh-gateway.example.com")]
    pub ssh_gateway_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "https://new-snapshot-manager.example.com")]
    pub snapshot_manager_url: Option<Option<String>>,
}

/// A region as clients see it (no credential material).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionView {
    pub id: String,
    pub name: String,
    /// `shared`, `dedicated` or `custom`.
    #[schema(value_type = String, example = "custom")]
    pub region_type: RegionType,
    pub organization_id: String,
    pub proxy_url: Option<String>,
    pub ssh_gateway_url: Option<String>,
    pub snapshot_manager_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Region> for RegionView {
    fn from(r: &Region) -> Self {
        RegionView {
            id: r.id.clone(),
            name: r.name.clone(),
            region_type: r.region_type,
            organization_id: r.organization_id.clone(),
            proxy_url: r.proxy_url.clone(),
            ssh_gateway_url: r.ssh_gateway_url.clone(),
            snapshot_manager_url: r.snapshot_manager_url.clone(),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

/// The create response: the region (with its id) and the credentials of the services
/// configured, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedRegion {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_api_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_gateway_api_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_manager_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_manager_password: Option<String>,
    #[serde(flatten)]
    pub region: RegionView,
}

/// A regenerated API key, shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegeneratedApiKey {
    pub api_key: String,
}

/// Regenerated snapshot manager credentials, shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotManagerCredentials {
    pub username: String,
    pub password: String,
}

/// The user name Corral presents to a region's snapshot manager.
pub const SNAPSHOT_MANAGER_USERNAME: &str = "corral";

pub(crate) fn visible(region: &Region, caller: &Caller) -> bool {
    region.region_type == RegionType::Shared || region.organization_id == caller.organization_id
}

fn validate_urls(fields: [(&str, Option<&str>); 3]) -> Result<(), ApiError> {
    for (field, value) in fields {
        if let Some(v) = value {
            validate::url(field, v)?;
        }
    }
    Ok(())
}

fn region_outcome(outcome: Outcome) -> Result<Region, ApiError> {
    match outcome {
        Outcome::Region(region) => Ok(region),
        other => Err(ApiError::unexpected(&other)),
    }
}

/// Create a custom region.
#[utoipa::path(post, path = "/api/regions", tag = "regions", request_body = CreateRegionRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first response")),
    responses((status = 201, body = CreatedRegion), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_region(
    State(app): State<AppState>,
    caller: Caller,
    idempotency: Idempotency,
    ApiJson(body): ApiJson<CreateRegionRequest>,
) -> Result<(StatusCode, Json<CreatedRegion>), ApiError> {
    validate::name("name", &body.name)?;
    validate_urls([
        ("proxyUrl", body.proxy_url.as_deref()),
        ("sshGatewayUrl", body.ssh_gateway_url.as_deref()),
        ("snapshotManagerUrl", body.snapshot_manager_url.as_deref()),
    ])?;
    let actor = caller.organization_id.as_str();
    let secret = |purpose: &str, prefix: &str| idempotency.secret(&app.config.admin_key, actor, purpose, prefix);
    let proxy_api_key = body.proxy_url.as_ref().map(|_| secret("proxy-api-key", "prx_"));
    let ssh_gateway_api_key = body.ssh_gateway_url.as_ref().map(|_| secret("ssh-gateway-api-key", "ssh_"));
    let snapshot_manager_username = body.snapshot_manager_url.as_ref().map(|_| SNAPSHOT_MANAGER_USERNAME.to_string());
    let snapshot_manager_password = body.snapshot_manager_url.as_ref().map(|_| secret("snapshot-manager", ""));
    let fingerprint = idempotency.fingerprint(&body);
    let sealed_password = snapshot_manager_password.as_deref().map(|p| seal(&app, p)).transpose()?;
    let command = Command::CreateRegion(NewRegion {
        id: crate::ids::new_object_id(),
        organization_id: caller.organization_id.clone(),
        name: body.name,
        region_type: RegionType::Custom,
        proxy_url: body.proxy_url,
        ssh_gateway_url: body.ssh_gateway_url,
        snapshot_manager_url: body.snapshot_manager_url,
        proxy_api_key_hash: proxy_api_key.as_deref().map(hash_secret),
        ssh_gateway_api_key_hash: ssh_gateway_api_key.as_deref().map(hash_secret),
        snapshot_manager_username: snapshot_manager_username.clone(),
        snapshot_manager_password: sealed_password,
    });
    let outcome = app.submit(command, caller.scope(), &idempotency, actor, fingerprint).await?;
    let region = region_outcome(outcome)?;
    let created = CreatedRegion {
        proxy_api_key,
        ssh_gateway_api_key,
        snapshot_manager_username,
        snapshot_manager_password,
        region: RegionView::from(&region),
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// List the organization's regions and the shared regions.
#[utoipa::path(get, path = "/api/regions", tag = "regions", params(ReadParams),
    responses((status = 200, body = [RegionView]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_regions(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<Vec<RegionView>>, ApiError> {
    let regions = app
        .read_as(&caller, params.consistency, |state, _| {
            state.regions.values().filter(|r| visible(r, &caller)).map(RegionView::from).collect()
        })
        .await?;
    Ok(Json(regions))
}

/// Get one region.
#[utoipa::path(get, path = "/api/regions/{region_id}", tag = "regions", params(("region_id" = String, Path, description = "Region id"), ReadParams),
    responses((status = 200, body = RegionView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_region(
    State(app): State<AppState>,
    caller: Caller,
    Path(region_id): Path<String>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<RegionView>, ApiError> {
    app.read_as(&caller, params.consistency, |state, _| {
        state.regions.get(&region_id).filter(|r| visible(r, &caller)).map(RegionView::from)
    })
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::not_found(format!("region '{region_id}' not found")))
}

/// Update a custom region's service URLs.
#[utoipa::path(patch, path = "/api/regions/{region_id}", tag = "regions", params(("region_id" = String, Path, description = "Region id")),
    request_body = UpdateRegionRequest,
    responses((status = 200, body = RegionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_region(
    State(app): State<AppState>,
    caller: Caller,
    Path(region_id): Path<String>,
    ApiJson(body): ApiJson<UpdateRegionRequest>,
) -> Result<Json<RegionView>, ApiError> {
    validate_urls([
        ("proxyUrl", body.proxy_url.as_ref().and_then(|v| v.as_deref())),
        ("sshGatewayUrl", body.ssh_gateway_url.as_ref().and_then(|v| v.as_deref())),
        ("snapshotManagerUrl", body.snapshot_manager_url.as_ref().and_then(|v| v.as_deref())),
    ])?;
    let command = Command::UpdateRegionUrls {
        id: region_id,
        proxy_url: body.proxy_url.into(),
        ssh_gateway_url: body.ssh_gateway_url.into(),
        snapshot_manager_url: body.snapshot_manager_url.into(),
    };
    let outcome = app.submit(command, caller.scope(), &Idempotency::none(), &caller.organization_id, None).await?;
    Ok(Json(RegionView::from(&region_outcome(outcome)?)))
}

/// Delete a custom region (409 while runners are assigned to it).
#[utoipa::path(delete, path = "/api/regions/{region_id}", tag = "regions", params(("region_id" = String, Path, description = "Region id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_region(
    State(app): State<AppState>,
    caller: Caller,
    Path(region_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let command = Command::DeleteRegion { id: region_id };
    app.submit(command, caller.scope(), &Idempotency::none(), &caller.organization_id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Encrypts a secret Corral must be able to present again (see [`crate::secret_box`]).
fn seal(app: &AppState, secret: &str) -> Result<String, ApiError> {
    app.config.secret_box.seal(secret).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("cannot protect the new secret: {e}"))
    })
}

async fn regenerate(
    app: &AppState,
    caller: &Caller,
    idempotency: &Idempotency,
    region_id: String,
    credential: RegionCredential,
    secret: &str,
) -> Result<(), ApiError> {
    let stored = match credential {
        RegionCredential::SnapshotManager => seal(app, secret)?,
        _ => hash_secret(secret),
    };
    let command = Command::SetRegionCredential { id: region_id, credential, secret: stored };
    let fingerprint = idempotency.fingerprint(&());
    app.submit(command, caller.scope(), idempotency, &caller.organization_id, fingerprint).await.map(|_| ())
}

/// Regenerate the proxy API key (the proxy must be redeployed with it).
#[utoipa::path(post, path = "/api/regions/{region_id}/regenerate-proxy-api-key", tag = "regions",
    params(("region_id" = String, Path, description = "Region id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first key")),
    responses((status = 200, body = RegeneratedApiKey), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`conflict`: the region has no such service configured"),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn regenerate_proxy_api_key(
    State(app): State<AppState>,
    caller: Caller,
    idempotency: Idempotency,
    Path(region_id): Path<String>,
) -> Result<Json<RegeneratedApiKey>, ApiError> {
    let api_key = idempotency.secret(&app.config.admin_key, &caller.organization_id, "proxy-api-key", "prx_");
    regenerate(&app, &caller, &idempotency, region_id, RegionCredential::ProxyApiKey, &api_key).await?;
    Ok(Json(RegeneratedApiKey { api_key }))
}

/// Regenerate the SSH gateway API key.
#[utoipa::path(post, path = "/api/regions/{region_id}/regenerate-ssh-gateway-api-key", tag = "regions",
    params(("region_id" = String, Path, description = "Region id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first key")),
    responses((status = 200, body = RegeneratedApiKey), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`conflict`: the region has no such service configured"),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn regenerate_ssh_gateway_api_key(
    State(app): State<AppState>,
    caller: Caller,
    idempotency: Idempotency,
    Path(region_id): Path<String>,
) -> Result<Json<RegeneratedApiKey>, ApiError> {
    let api_key = idempotency.secret(&app.config.admin_key, &caller.organization_id, "ssh-gateway-api-key", "ssh_");
    regenerate(&app, &caller, &idempotency, region_id, RegionCredential::SshGatewayApiKey, &api_key).await?;
    Ok(Json(RegeneratedApiKey { api_key }))
}

/// Regenerate the snapshot manager credentials.
#[utoipa::path(post, path = "/api/regions/{region_id}/regenerate-snapshot-manager-credentials", tag = "regions",
    params(("region_id" = String, Path, description = "Region id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first credentials")),
    responses((status = 200, body = SnapshotManagerCredentials), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "`conflict`: the region has no such service configured"),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn regenerate_snapshot_manager_credentials(
    State(app): State<AppState>,
    caller: Caller,
    idempotency: Idempotency,
    Path(region_id): Path<String>,
) -> Result<Json<SnapshotManagerCredentials>, ApiError> {
    let password = idempotency.secret(&app.config.admin_key, &caller.organization_id, "snapshot-manager", "");
    regenerate(&app, &caller, &idempotency, region_id, RegionCredential::SnapshotManager, &password).await?;
    Ok(Json(SnapshotManagerCredentials { username: SNAPSHOT_MANAGER_USERNAME.to_string(), password }))
}

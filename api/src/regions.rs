//! `/api/regions`: custom regions of the caller's organization, plus the shared regions every
//! organization can see.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use corral_storage::model::{Command, Outcome, Proposal, Region, RegionType};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::auth::{hash_secret, Caller};
use crate::extract::{ApiJson, ApiQuery, ReadParams};
use crate::{now_millis, rfc3339, validate, ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/regions", get(list_regions).post(create_region))
        .route("/api/regions/:region_id", get(get_region))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRegionRequest {
    pub name: String,
    pub proxy_url: Option<String>,
    pub ssh_gateway_url: Option<String>,
    pub snapshot_manager_url: Option<String>,
}

/// A region as clients see it (no credential material).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegionView {
    pub id: String,
    pub name: String,
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

/// The create response: the region (with its id) and the credentials of the services configured,
/// shown this once, followed by the region's fields.
#[derive(Debug, Serialize, Deserialize)]
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

/// A random secret of 40 alphanumeric characters (~238 bits) with a readable prefix.
pub fn generate_secret(prefix: &str) -> String {
    let body: String = rand::thread_rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect();
    format!("{prefix}{body}")
}

/// The user name Corral presents to a region's snapshot manager.
pub const SNAPSHOT_MANAGER_USERNAME: &str = "corral";

fn visible(region: &Region, caller: &Caller) -> bool {
    region.region_type == RegionType::Shared || region.organization_id == caller.organization_id
}

async fn create_region(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateRegionRequest>,
) -> Result<(StatusCode, Json<CreatedRegion>), ApiError> {
    validate::name("name", &body.name)?;
    for (field, value) in [
        ("proxyUrl", &body.proxy_url),
        ("sshGatewayUrl", &body.ssh_gateway_url),
        ("snapshotManagerUrl", &body.snapshot_manager_url),
    ] {
        if let Some(v) = value {
            validate::url(field, v)?;
        }
    }
    let proxy_api_key = body.proxy_url.as_ref().map(|_| generate_secret("prx_"));
    let ssh_gateway_api_key = body.ssh_gateway_url.as_ref().map(|_| generate_secret("ssh_"));
    let snapshot_manager_username = body.snapshot_manager_url.as_ref().map(|_| SNAPSHOT_MANAGER_USERNAME.to_string());
    let snapshot_manager_password = body.snapshot_manager_url.as_ref().map(|_| generate_secret(""));
    let command = Command::CreateRegion {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: caller.organization_id.clone(),
        name: body.name,
        region_type: RegionType::Custom,
        proxy_url: body.proxy_url,
        ssh_gateway_url: body.ssh_gateway_url,
        snapshot_manager_url: body.snapshot_manager_url,
        proxy_api_key_hash: proxy_api_key.as_deref().map(hash_secret),
        ssh_gateway_api_key_hash: ssh_gateway_api_key.as_deref().map(hash_secret),
        snapshot_manager_username: snapshot_manager_username.clone(),
        snapshot_manager_password: snapshot_manager_password.clone(),
    };
    let outcome = app.cluster.propose(Proposal::new(command, now_millis())).await??;
    let Outcome::Region(region) = outcome else {
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "unexpected apply outcome"));
    };
    let created = CreatedRegion {
        proxy_api_key,
        ssh_gateway_api_key,
        snapshot_manager_username,
        snapshot_manager_password,
        region: RegionView::from(&region),
    };
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list_regions(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<Vec<RegionView>>, ApiError> {
    app.cluster.read_barrier(params.consistency).await?;
    let machine = app.cluster.state().read();
    let regions = machine.state.regions.values().filter(|r| visible(r, &caller)).map(RegionView::from).collect();
    Ok(Json(regions))
}

async fn get_region(
    State(app): State<AppState>,
    caller: Caller,
    Path(region_id): Path<String>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<RegionView>, ApiError> {
    app.cluster.read_barrier(params.consistency).await?;
    let machine = app.cluster.state().read();
    machine
        .state
        .regions
        .get(&region_id)
        .filter(|r| visible(r, &caller))
        .map(|r| Json(RegionView::from(r)))
        .ok_or_else(|| ApiError::not_found(format!("region '{region_id}' not found")))
}

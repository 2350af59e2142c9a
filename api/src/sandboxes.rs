//! `/api/sandboxes`: workloads of the caller's organization, placed by the leader's scheduler
//! on a runner of the target region.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use corral_model::{Command, Outcome, Resources, Sandbox, SandboxRequest, SandboxState};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::extract::{ApiJson, ApiQuery, ReadParams};
use crate::idempotency::Idempotency;
use crate::regions::visible;
use crate::{rfc3339, ApiError, AppState, ReadConsistency};
use corral_model::access::Permission;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/sandboxes", get(list_sandboxes).post(create_sandbox))
        .route("/api/sandboxes/:sandbox_id", get(get_sandbox).delete(delete_sandbox))
        .route("/api/sandboxes/:sandbox_id/stop", post(stop_sandbox))
        .route("/api/sandboxes/:sandbox_id/start", post(start_sandbox))
}

/// Defaults when a request leaves a resource out.
pub const DEFAULT_RESOURCES: Resources = Resources { cpu: 1, memory_gib: 1, disk_gib: 3, gpu: 0 };
/// Largest single sandbox accepted (cpu, memory GiB, disk GiB).
pub const MAX_RESOURCES: Resources = Resources { cpu: 256, memory_gib: 4096, disk_gib: 65_536, gpu: 64 };

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Region name (one of the organization's custom regions, or a shared region).
    #[schema(example = "us")]
    pub target: String,
    /// Cores; default 1.
    #[serde(default, deserialize_with = "crate::extract::optional_whole_number")]
    pub cpu: Option<u64>,
    /// Default 1.
    #[serde(rename = "memoryGiB", default, deserialize_with = "crate::extract::optional_whole_number")]
    pub memory_gib: Option<u64>,
    /// Default 3.
    #[serde(rename = "diskGiB", default, deserialize_with = "crate::extract::optional_whole_number")]
    pub disk_gib: Option<u64>,
    /// GPU devices; default 0. Only runners with free GPUs take a sandbox that asks for any.
    #[serde(default, deserialize_with = "crate::extract::optional_whole_number")]
    pub gpu: Option<u64>,
    pub labels: Option<BTreeMap<String, String>>,
    /// Placement constraint: the runner must carry every one of these tags (`PATCH
    /// /api/runners/{id}` sets them). No runner of the region with them and room: 409
    /// `no_capacity`.
    #[schema(example = json!({"zone": "a"}))]
    pub runner_tags: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxView {
    pub id: String,
    pub organization_id: String,
    pub target: String,
    pub region_id: String,
    pub runner_id: String,
    pub cpu: u64,
    #[serde(rename = "memoryGiB")]
    pub memory_gib: u64,
    #[serde(rename = "diskGiB")]
    pub disk_gib: u64,
    pub gpu: u64,
    pub labels: BTreeMap<String, String>,
    /// The tags its runner had to carry (empty: none asked for).
    pub runner_tags: BTreeMap<String, String>,
    /// `pending`, `started`, `stopped`, `error` or `destroyed`.
    #[schema(value_type = String, example = "started")]
    pub state: SandboxState,
    /// The runner it was moved away from when that runner went unresponsive or was
    /// decommissioned; `null` if it never moved.
    pub rescheduled_from: Option<String>,
    /// Why it is in state `error` (e.g. its runner is gone and no other has room yet).
    pub error_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Sandbox> for SandboxView {
    fn from(s: &Sandbox) -> Self {
        SandboxView {
            id: s.id.clone(),
            organization_id: s.organization_id.clone(),
            target: s.target.clone(),
            region_id: s.region_id.clone(),
            runner_id: s.runner_id.clone(),
            cpu: s.resources.cpu,
            memory_gib: s.resources.memory_gib,
            disk_gib: s.resources.disk_gib,
            gpu: s.resources.gpu,
            labels: s.labels.clone(),
            runner_tags: s.runner_tags.clone(),
            state: s.state,
            rescheduled_from: s.rescheduled_from.clone(),
            error_reason: s.error_reason.clone(),
            created_at: rfc3339(s.created_at),
            updated_at: rfc3339(s.updated_at),
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SandboxListParams {
    /// Only sandboxes in this state.
    #[param(value_type = Option<String>, example = "started")]
    pub state: Option<SandboxState>,
    pub region_id: Option<String>,
    pub runner_id: Option<String>,
    /// `linearizable` (default) or `stale`.
    #[serde(default)]
    #[param(value_type = Option<String>, example = "stale")]
    pub consistency: ReadConsistency,
}

fn validate_resources(body: &CreateSandboxRequest) -> Result<Resources, ApiError> {
    let resources = Resources {
        cpu: body.cpu.unwrap_or(DEFAULT_RESOURCES.cpu),
        memory_gib: body.memory_gib.unwrap_or(DEFAULT_RESOURCES.memory_gib),
        disk_gib: body.disk_gib.unwrap_or(DEFAULT_RESOURCES.disk_gib),
        gpu: body.gpu.unwrap_or(0),
    };
    if resources.gpu > MAX_RESOURCES.gpu {
        return Err(ApiError::unprocessable(format!("gpu must be at most {}", MAX_RESOURCES.gpu)));
    }
    for (field, value, max) in [
        ("cpu", resources.cpu, MAX_RESOURCES.cpu),
        ("memoryGiB", resources.memory_gib, MAX_RESOURCES.memory_gib),
        ("diskGiB", resources.disk_gib, MAX_RESOURCES.disk_gib),
    ] {
        if value == 0 || value > max {
            return Err(ApiError::unprocessable(format!("{field} must be between 1 and {max}")));
        }
    }
    if let Some(labels) = &body.labels {
        crate::validate::labels("labels", labels)?;
    }
    if let Some(tags) = &body.runner_tags {
        crate::validate::labels("runnerTags", tags)?;
    }
    Ok(resources)
}

/// Create a sandbox on a runner of the target region.
#[utoipa::path(post, path = "/api/sandboxes", tag = "sandboxes", request_body = CreateSandboxRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first sandbox")),
    responses((status = 201, body = SandboxView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "unknown target region"), (status = 413, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`no_capacity`: no runner of the region has room"),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_sandbox(
    State(app): State<AppState>,
    caller: Caller,
    idempotency: Idempotency,
    ApiJson(body): ApiJson<CreateSandboxRequest>,
) -> Result<(StatusCode, Json<SandboxView>), ApiError> {
    let resources = validate_resources(&body)?;
    caller.require(Permission::WriteSandboxes)?;
    // The caller's own custom region of that name first, then a shared one.
    let region_id = {
        let machine = app.cluster.state().read();
        let state = &machine.state;
        state
            .region_by_name(&caller.organization_id, &body.target)
            .or_else(|| state.region_by_name("", &body.target).filter(|r| visible(r, &caller)))
            .map(|r| r.id.clone())
    };
    let region_id = match region_id {
        Some(id) => id,
        None => {
            // The region may have been created through another node a moment ago.
            app.cluster.read_barrier(ReadConsistency::Linearizable).await?;
            let machine = app.cluster.state().read();
            machine
                .state
                .region_by_name(&caller.organization_id, &body.target)
                .or_else(|| machine.state.region_by_name("", &body.target))
                .map(|r| r.id.clone())
                .ok_or_else(|| ApiError::not_found(format!("target region '{}' not found", body.target)))?
        }
    };
    let request = SandboxRequest {
        sandbox_id: crate::ids::new_object_id(),
        organization_id: caller.organization_id.clone(),
        target: body.target.clone(),
        region_id,
        resources,
        labels: body.labels.clone().unwrap_or_default(),
        runner_tags: body.runner_tags.clone().unwrap_or_default(),
        idempotency_key: idempotency.scoped_key(&caller.organization_id),
        credential: caller.credential.clone(),
    };
    let sandbox = app.cluster.create_sandbox(request).await??;
    Ok((StatusCode::CREATED, Json(SandboxView::from(&*sandbox))))
}

/// List the organization's sandboxes.
#[utoipa::path(get, path = "/api/sandboxes", tag = "sandboxes", params(SandboxListParams),
    responses((status = 200, body = [SandboxView]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_sandboxes(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<SandboxListParams>,
) -> Result<Json<Vec<SandboxView>>, ApiError> {
    let org = caller.organization_id.as_str();
    let sandboxes = app
        .read_as(&caller, params.consistency, |state, _| {
            state
                .sandboxes
                .values()
                .filter(|s| s.organization_id == org)
                .filter(|s| params.state.is_none_or(|st| s.state == st))
                .filter(|s| params.region_id.as_ref().is_none_or(|r| &s.region_id == r))
                .filter(|s| params.runner_id.as_ref().is_none_or(|r| &s.runner_id == r))
                .map(|s| SandboxView::from(&**s))
                .collect()
        })
        .await?;
    Ok(Json(sandboxes))
}

/// Get one sandbox.
#[utoipa::path(get, path = "/api/sandboxes/{sandbox_id}", tag = "sandboxes",
    params(("sandbox_id" = String, Path, description = "Sandbox id"), ReadParams),
    responses((status = 200, body = SandboxView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_sandbox(
    State(app): State<AppState>,
    caller: Caller,
    Path(sandbox_id): Path<String>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<SandboxView>, ApiError> {
    let org = caller.organization_id.as_str();
    app.read_as(&caller, params.consistency, |state, _| {
        state.sandboxes.get(sandbox_id.as_str()).filter(|s| s.organization_id == org).map(|s| SandboxView::from(&**s))
    })
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::not_found(format!("sandbox '{sandbox_id}' not found")))
}

async fn set_state(app: &AppState, caller: &Caller, id: String, state: SandboxState) -> Result<SandboxView, ApiError> {
    let command = Command::SetSandboxState { id, state };
    match app.submit(command, caller.scope(), &Idempotency::none(), &caller.organization_id, None).await? {
        Outcome::Sandbox(s) => Ok(SandboxView::from(&*s)),
        other => Err(ApiError::unexpected(&other)),
    }
}

/// Stop a sandbox (it keeps its reservation on the runner).
#[utoipa::path(post, path = "/api/sandboxes/{sandbox_id}/stop", tag = "sandboxes",
    params(("sandbox_id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = SandboxView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`conflict`: the sandbox is destroyed; `no_capacity`: its runner has no room to start it"),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn stop_sandbox(
    State(app): State<AppState>,
    caller: Caller,
    Path(sandbox_id): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    Ok(Json(set_state(&app, &caller, sandbox_id, SandboxState::Stopped).await?))
}

/// Start a stopped sandbox again, on the runner it is reserved on.
#[utoipa::path(post, path = "/api/sandboxes/{sandbox_id}/start", tag = "sandboxes",
    params(("sandbox_id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = SandboxView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`conflict`: the sandbox is destroyed; `no_capacity`: its runner has no room to start it"),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn start_sandbox(
    State(app): State<AppState>,
    caller: Caller,
    Path(sandbox_id): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    Ok(Json(set_state(&app, &caller, sandbox_id, SandboxState::Started).await?))
}

/// Delete a sandbox and free its resources.
#[utoipa::path(delete, path = "/api/sandboxes/{sandbox_id}", tag = "sandboxes",
    params(("sandbox_id" = String, Path, description = "Sandbox id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_sandbox(
    State(app): State<AppState>,
    caller: Caller,
    Path(sandbox_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let command = Command::DeleteSandbox { id: sandbox_id };
    app.submit(command, caller.scope(), &Idempotency::none(), &caller.organization_id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

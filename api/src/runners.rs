//! Runners: `/api/runners` (custom runners, scoped to the caller's organization, only in its
//! custom regions) and `/api/admin/runners` (the operator's view across the platform, with
//! the full configuration and `RunnerFull` responses).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use corral_model::health::HealthTable;
use corral_model::{
    Command, FieldUpdate, NewRunner, Outcome, Resources, Runner, RunnerState, State as ReplicatedState,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{hash_secret, Admin, Caller};
use crate::extract::{ApiJson, ApiQuery};
use crate::idempotency::Idempotency;
use crate::{rfc3339, validate, ApiError, AppState, Scope};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/runners", get(list_runners).post(create_runner))
        .route("/api/runners/:runner_id", get(get_runner).patch(update_runner).delete(delete_runner))
        .route("/api/runners/:runner_id/scheduling", patch(update_scheduling))
        .route("/api/runners/:runner_id/draining", patch(update_draining))
        .route("/api/runners/:runner_id/regenerate-token", post(regenerate_token))
        .route("/api/admin/runners", get(admin_list_runners).post(admin_create_runner))
        .route(
            "/api/admin/runners/:runner_id",
            get(admin_get_runner).patch(admin_update_runner).delete(admin_delete_runner),
        )
        .route("/api/admin/runners/:runner_id/scheduling", patch(admin_update_scheduling))
        .route("/api/admin/runners/:runner_id/draining", patch(admin_update_draining))
        .route("/api/admin/runners/:runner_id/state", patch(admin_set_state))
        .route("/api/admin/runners/:runner_id/regenerate-token", post(admin_regenerate_token))
}

/// Prefix of runner tokens Corral generates.
pub const RUNNER_TOKEN_PREFIX: &str = "crl_";
/// The runner API versions an operator may declare.
pub const API_VERSIONS: [&str; 2] = ["0", "2"];
/// Largest capacity an operator may declare for a runner (each of cpu, memory GiB, disk GiB).
pub const MAX_RUNNER_CAPACITY: u64 = u32::MAX as u64;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRunnerRequest {
    #[schema(example = "my-custom-runner")]
    pub name: String,
    #[schema(example = "region_12345")]
    pub region_id: String,
    /// Tags that sandboxes' `runnerTags` constraints match against.
    #[schema(example = json!({"zone": "a"}))]
    pub tags: Option<BTreeMap<String, String>>,
    /// At most this many sandboxes on the runner at once (stopped ones count); none: no limit.
    #[serde(default, deserialize_with = "crate::extract::optional_whole_number")]
    pub max_sandboxes: Option<u64>,
}

/// The runner's id and its token, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedRunner {
    pub id: String,
    pub api_key: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminCreateRunnerRequest {
    #[schema(example = "runner-1")]
    pub name: String,
    /// Any region's id; the shared regions' ids are their names.
    #[schema(example = "us")]
    pub region_id: String,
    /// The token the runner will authenticate with; stored only as a hash.
    pub api_key: String,
    /// `"0"` or `"2"`.
    #[schema(example = "2")]
    pub api_version: String,
    pub domain: Option<String>,
    pub api_url: Option<String>,
    pub proxy_url: Option<String>,
    #[serde(default, deserialize_with = "crate::extract::optional_whole_number")]
    pub cpu: Option<u64>,
    #[serde(rename = "memoryGiB", default, deserialize_with = "crate::extract::optional_whole_number")]
    pub memory_gib: Option<u64>,
    #[serde(rename = "diskGiB", default, deserialize_with = "crate::extract::optional_whole_number")]
    pub disk_gib: Option<u64>,
    /// GPU devices. With any of cpu, memoryGiB, diskGiB or gpu given, the capacity is the
    /// operator's and the agent's reports no longer change it; with none, the runner takes
    /// the capacity its agent reports from the host.
    #[serde(default, deserialize_with = "crate::extract::optional_whole_number")]
    pub gpu: Option<u64>,
    /// Tags that sandboxes' `runnerTags` constraints match against.
    #[schema(example = json!({"zone": "a"}))]
    pub tags: Option<BTreeMap<String, String>>,
    /// At most this many sandboxes on the runner at once (stopped ones count); none: no limit.
    #[serde(default, deserialize_with = "crate::extract::optional_whole_number")]
    pub max_sandboxes: Option<u64>,
}

/// A change to a runner's placement settings; fields left out stay as they are.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateRunnerRequest {
    /// Replaces the runner's tags whole (`{}` removes them all).
    #[schema(example = json!({"zone": "a", "gpu": "a100"}))]
    pub tags: Option<BTreeMap<String, String>>,
    /// A number sets the limit, `null` removes it. Lowering it below what the runner holds
    /// stops new placements and moves nothing.
    #[serde(default, deserialize_with = "crate::extract::nullable_whole_number")]
    #[schema(value_type = Option<u64>, example = 20)]
    pub max_sandboxes: Option<Option<u64>>,
}

/// Largest `maxSandboxes`.
pub const MAX_SANDBOXES_LIMIT: u64 = 1_000_000;

/// Tags are validated as labels are; a sandbox limit is 1 to [`MAX_SANDBOXES_LIMIT`].
fn validate_placement_settings(
    tags: Option<&BTreeMap<String, String>>,
    max_sandboxes: Option<u64>,
) -> Result<(), ApiError> {
    if let Some(tags) = tags {
        validate::labels("tags", tags)?;
    }
    if max_sandboxes.is_some_and(|m| m == 0 || m > MAX_SANDBOXES_LIMIT) {
        return Err(ApiError::unprocessable(format!("maxSandboxes must be between 1 and {MAX_SANDBOXES_LIMIT}")));
    }
    Ok(())
}

fn update_command(runner_id: String, body: UpdateRunnerRequest) -> Result<Command, ApiError> {
    validate_placement_settings(body.tags.as_ref(), body.max_sandboxes.flatten())?;
    Ok(Command::UpdateRunner { id: runner_id, tags: body.tags, max_sandboxes: FieldUpdate::from(body.max_sandboxes) })
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulingRequest {
    pub schedulable: bool,
}

/// Start (`true`) or end (`false`) draining a runner.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainingRequest {
    pub draining: bool,
}

/// An operator's override of a runner's state (e.g. `disabled` for maintenance, `ready` to
/// admit a runner by hand).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunnerStateRequest {
    #[schema(value_type = String, example = "ready")]
    pub state: RunnerState,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunnerListParams {
    /// Only runners of this region.
    pub region_id: Option<String>,
    /// `linearizable` (default) or `stale`.
    #[serde(default)]
    #[param(value_type = Option<String>, example = "stale")]
    pub consistency: crate::ReadConsistency,
}

/// cpu in cores, memory and disk in GiB, GPUs in devices.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesView {
    pub cpu: u64,
    #[serde(rename = "memoryGiB")]
    pub memory_gib: u64,
    #[serde(rename = "diskGiB")]
    pub disk_gib: u64,
    pub gpu: u64,
}

impl From<Resources> for ResourcesView {
    fn from(r: Resources) -> Self {
        ResourcesView { cpu: r.cpu, memory_gib: r.memory_gib, disk_gib: r.disk_gib, gpu: r.gpu }
    }
}

/// Latest usage reported by the runner, in percent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    pub current_cpu_usage_percentage: f64,
    pub current_memory_usage_percentage: f64,
    pub current_disk_usage_percentage: f64,
}

/// A runner (the custom runner endpoints' view).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerView {
    pub id: String,
    pub name: String,
    pub region_id: String,
    /// `initializing`, `ready`, `unresponsive`, `disabled` or `decommissioned`.
    #[schema(value_type = String, example = "initializing")]
    pub state: RunnerState,
    pub schedulable: bool,
    /// A draining runner takes no new sandboxes; those on it keep running.
    pub draining: bool,
    pub api_version: String,
    pub domain: Option<String>,
    pub api_url: Option<String>,
    pub proxy_url: Option<String>,
    pub capacity: ResourcesView,
    pub allocated: ResourcesView,
    /// What sandboxes' `runnerTags` constraints match against.
    pub tags: BTreeMap<String, String>,
    /// At most this many sandboxes at once; `null`: no limit.
    pub max_sandboxes: Option<u64>,
    /// `null` until the runner has reported its health.
    pub usage: Option<UsageView>,
    /// 0–100, higher is more available. From allocation until the runner reports usage.
    pub availability_score: u8,
    pub current_snapshot_count: u64,
    pub started_sandboxes: u64,
    /// Runner software version; `null` until it has reported.
    pub version: Option<String>,
    pub last_checked_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// The admin view: a runner plus its token hint, region type and organization.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerFull {
    #[serde(flatten)]
    pub runner: RunnerView,
    /// A recognisable fragment of the token; the token itself is never stored.
    pub api_key_hint: String,
    #[schema(value_type = String, example = "custom")]
    pub region_type: corral_model::RegionType,
    pub organization_id: String,
}

/// Availability from allocation alone: 100 × the smallest free fraction of cpu, memory and
/// disk; 0 for a runner with no declared capacity.
pub fn allocation_score(capacity: Resources, allocated: Resources) -> u8 {
    let free = |cap: u64, used: u64| if cap == 0 { 0.0 } else { 1.0 - (used.min(cap) as f64 / cap as f64) };
    let score = free(capacity.cpu, allocated.cpu)
        .min(free(capacity.memory_gib, allocated.memory_gib))
        .min(free(capacity.disk_gib, allocated.disk_gib));
    (score * 100.0).round() as u8
}

impl From<&Runner> for RunnerView {
    fn from(r: &Runner) -> Self {
        RunnerView {
            id: r.id.clone(),
            name: r.name.clone(),
            region_id: r.region_id.clone(),
            state: r.state,
            schedulable: r.schedulable,
            draining: r.draining,
            api_version: r.api_version.clone(),
            domain: r.domain.clone(),
            api_url: r.api_url.clone(),
            proxy_url: r.proxy_url.clone(),
            capacity: r.capacity.into(),
            allocated: r.allocated.into(),
            tags: r.tags.clone(),
            max_sandboxes: r.max_sandboxes,
            usage: None,
            availability_score: allocation_score(r.capacity, r.allocated),
            current_snapshot_count: 0,
            started_sandboxes: r.started_sandboxes,
            version: None,
            last_checked_at: None,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

/// A runner's view with the latest health report this node has for it: usage, version,
/// snapshot count, when it last reported, and an availability score that also counts usage.
pub fn runner_view(r: &Runner, health: &HealthTable) -> RunnerView {
    let mut view = RunnerView::from(r);
    if let Some(entry) = health.get(&r.id) {
        let report = &entry.report;
        view.usage = Some(UsageView {
            current_cpu_usage_percentage: f64::from(report.cpu_pct),
            current_memory_usage_percentage: f64::from(report.memory_pct),
            current_disk_usage_percentage: f64::from(report.disk_pct),
        });
        let usage_score = (100.0 - report.max_usage_pct()).round().clamp(0.0, 100.0) as u8;
        view.availability_score = view.availability_score.min(usage_score);
        view.current_snapshot_count = report.snapshot_count;
        view.version = Some(report.version.clone());
        view.last_checked_at = Some(rfc3339(report.received_at));
    }
    view
}

fn runner_full(state: &ReplicatedState, health: &HealthTable, r: &Runner) -> RunnerFull {
    let region_type =
        state.regions.get(&r.region_id).map(|g| g.region_type).unwrap_or(corral_model::RegionType::Custom);
    RunnerFull {
        runner: runner_view(r, health),
        api_key_hint: r.api_key_hint.clone(),
        region_type,
        organization_id: r.organization_id.clone(),
    }
}

/// `dtn_…7890`: enough to tell tokens apart, far too little to use one.
pub fn token_hint(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    if chars.len() < 12 {
        return "…".to_string();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

fn runner_outcome(outcome: Outcome) -> Result<Runner, ApiError> {
    match outcome {
        Outcome::Runner(runner) => Ok(runner),
        other => Err(ApiError::unexpected(&other)),
    }
}

/// The body of a scheduling PATCH is optional: none (an empty body, or JSON `null`) toggles.
fn scheduling_body(body: &Bytes) -> Result<Option<bool>, ApiError> {
    if matches!(body.trim_ascii(), b"" | b"null") {
        return Ok(None);
    }
    crate::extract::require_object(body)?;
    serde_json::from_slice::<SchedulingRequest>(body).map(|r| Some(r.schedulable)).map_err(|e| {
        let message = format!("expected {{\"schedulable\": true|false}}: {e}");
        // Malformed JSON is 400 on every route; well-formed JSON of the wrong shape is 422.
        if e.is_syntax() || e.is_eof() {
            ApiError::bad_request("malformed_json", message)
        } else {
            ApiError::unprocessable(message)
        }
    })
}

/// Register a runner in one of the organization's custom regions.
#[utoipa::path(post, path = "/api/runners", tag = "runners", request_body = CreateRunnerRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first response")),
    responses((status = 201, body = CreatedRunner), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_runner(
    State(app): State<AppState>,
    caller: Caller,
    idempotency: Idempotency,
    ApiJson(body): ApiJson<CreateRunnerRequest>,
) -> Result<(StatusCode, Json<CreatedRunner>), ApiError> {
    validate::name("name", &body.name)?;
    validate_placement_settings(body.tags.as_ref(), body.max_sandboxes)?;
    let actor = caller.organization_id.as_str();
    let api_key = idempotency.secret(&app.config.admin_key, actor, "runner-token", RUNNER_TOKEN_PREFIX);
    let fingerprint = idempotency.fingerprint(&body);
    let command = Command::CreateRunner(NewRunner {
        id: crate::ids::new_object_id(),
        region_id: body.region_id,
        name: body.name,
        api_key_hash: hash_secret(&api_key),
        api_key_hint: token_hint(&api_key),
        api_version: "2".into(),
        domain: None,
        api_url: None,
        proxy_url: None,
        capacity: Resources::default(),
        tags: body.tags.unwrap_or_default(),
        max_sandboxes: body.max_sandboxes,
    });
    let runner = runner_outcome(app.submit(command, caller.scope(), &idempotency, actor, fingerprint).await?)?;
    Ok((StatusCode::CREATED, Json(CreatedRunner { id: runner.id, api_key })))
}

/// List the organization's runners.
#[utoipa::path(get, path = "/api/runners", tag = "runners", params(RunnerListParams),
    responses((status = 200, body = [RunnerView]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_runners(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<RunnerListParams>,
) -> Result<Json<Vec<RunnerView>>, ApiError> {
    let org = caller.organization_id.as_str();
    let runners = app
        .read_as(&caller, params.consistency, |state, health| {
            runners_of(state, Some(org), params.region_id.as_deref()).map(|r| runner_view(r, health)).collect()
        })
        .await?;
    Ok(Json(runners))
}

/// Get one of the organization's runners.
#[utoipa::path(get, path = "/api/runners/{runner_id}", tag = "runners",
    params(("runner_id" = String, Path, description = "Runner id"), crate::extract::ReadParams),
    responses((status = 200, body = RunnerView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_runner(
    State(app): State<AppState>,
    caller: Caller,
    Path(runner_id): Path<String>,
    ApiQuery(params): ApiQuery<crate::extract::ReadParams>,
) -> Result<Json<RunnerView>, ApiError> {
    let org = caller.organization_id.as_str();
    app.read_as(&caller, params.consistency, |state, health| {
        runner_of(state, Some(org), &runner_id).map(|r| runner_view(r, health))
    })
    .await?
    .map(Json)
}

/// Mark a runner schedulable or not; with no body, toggle.
#[utoipa::path(patch, path = "/api/runners/{runner_id}/scheduling", tag = "runners",
    params(("runner_id" = String, Path, description = "Runner id")), request_body(content = Option<SchedulingRequest>, description = "Optional: without a body the flag is toggled"),
    responses((status = 200, body = RunnerView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_scheduling(
    State(app): State<AppState>,
    caller: Caller,
    Path(runner_id): Path<String>,
    body: Bytes,
) -> Result<Json<RunnerView>, ApiError> {
    let command = Command::SetRunnerSchedulable { id: runner_id, schedulable: scheduling_body(&body)? };
    let outcome = app.submit(command, caller.scope(), &Idempotency::none(), &caller.organization_id, None).await?;
    Ok(Json(runner_view(&runner_outcome(outcome)?, &app.cluster.health().read())))
}

/// Start or end draining one of the organization's runners: a draining runner takes no new
/// sandboxes, and those on it keep running.
#[utoipa::path(patch, path = "/api/runners/{runner_id}/draining", tag = "runners",
    params(("runner_id" = String, Path, description = "Runner id")), request_body = DrainingRequest,
    responses((status = 200, body = RunnerView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_draining(
    State(app): State<AppState>,
    caller: Caller,
    Path(runner_id): Path<String>,
    ApiJson(body): ApiJson<DrainingRequest>,
) -> Result<Json<RunnerView>, ApiError> {
    let command = Command::SetRunnerDraining { id: runner_id, draining: body.draining };
    let outcome = app.submit(command, caller.scope(), &Idempotency::none(), &caller.organization_id, None).await?;
    Ok(Json(runner_view(&runner_outcome(outcome)?, &app.cluster.health().read())))
}

/// Change one of the organization's runners' tags or sandbox limit.
#[utoipa::path(patch, path = "/api/runners/{runner_id}", tag = "runners", request_body = UpdateRunnerRequest,
    params(("runner_id" = String, Path, description = "Runner id")),
    responses((status = 200, body = RunnerView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_runner(
    State(app): State<AppState>,
    caller: Caller,
    Path(runner_id): Path<String>,
    ApiJson(body): ApiJson<UpdateRunnerRequest>,
) -> Result<Json<RunnerView>, ApiError> {
    let command = update_command(runner_id, body)?;
    let outcome = app.submit(command, caller.scope(), &Idempotency::none(), &caller.organization_id, None).await?;
    Ok(Json(runner_view(&runner_outcome(outcome)?, &app.cluster.health().read())))
}

/// Delete one of the organization's runners (409 while it has sandboxes).
#[utoipa::path(delete, path = "/api/runners/{runner_id}", tag = "runners", params(("runner_id" = String, Path, description = "Runner id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_runner(
    State(app): State<AppState>,
    caller: Caller,
    Path(runner_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let command = Command::DeleteRunner { id: runner_id };
    app.submit(command, caller.scope(), &Idempotency::none(), &caller.organization_id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a runner with its full configuration (operator).
#[utoipa::path(post, path = "/api/admin/runners", tag = "admin", request_body = AdminCreateRunnerRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first response")),
    responses((status = 201, body = RunnerFull), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn admin_create_runner(
    State(app): State<AppState>,
    _admin: Admin,
    idempotency: Idempotency,
    ApiJson(body): ApiJson<AdminCreateRunnerRequest>,
) -> Result<(StatusCode, Json<RunnerFull>), ApiError> {
    validate::name("name", &body.name)?;
    if !API_VERSIONS.contains(&body.api_version.as_str()) {
        return Err(ApiError::unprocessable("apiVersion must be \"0\" or \"2\""));
    }
    validate::token("apiKey", &body.api_key)?;
    validate_placement_settings(body.tags.as_ref(), body.max_sandboxes)?;
    for (field, value) in
        [("cpu", body.cpu), ("memoryGiB", body.memory_gib), ("diskGiB", body.disk_gib), ("gpu", body.gpu)]
    {
        if value.is_some_and(|v| v > MAX_RUNNER_CAPACITY) {
            return Err(ApiError::unprocessable(format!("{field} must be at most {MAX_RUNNER_CAPACITY}")));
        }
    }
    for (field, value) in [("apiUrl", &body.api_url), ("proxyUrl", &body.proxy_url)] {
        if let Some(v) = value {
            validate::url(field, v)?;
        }
    }
    if let Some(domain) = &body.domain {
        validate::domain("domain", domain)?;
    }
    // The token is hashed before it leaves this handler; the fingerprint covers the rest.
    let fingerprint = idempotency.fingerprint(&(&body.name, &body.region_id, hash_secret(&body.api_key)));
    let command = Command::CreateRunner(NewRunner {
        id: crate::ids::new_object_id(),
        region_id: body.region_id,
        name: body.name,
        api_key_hash: hash_secret(&body.api_key),
        api_key_hint: token_hint(&body.api_key),
        api_version: body.api_version,
        domain: body.domain,
        api_url: body.api_url,
        proxy_url: body.proxy_url,
        capacity: Resources {
            cpu: body.cpu.unwrap_or(0),
            memory_gib: body.memory_gib.unwrap_or(0),
            disk_gib: body.disk_gib.unwrap_or(0),
            gpu: body.gpu.unwrap_or(0),
        },
        tags: body.tags.unwrap_or_default(),
        max_sandboxes: body.max_sandboxes,
    });
    let runner = runner_outcome(app.submit(command, Scope::operator(), &idempotency, "admin", fingerprint).await?)?;
    Ok((StatusCode::CREATED, Json(app.read_local(|state, health| runner_full(state, health, &runner)))))
}

/// List all runners, optionally of one region (operator).
#[utoipa::path(get, path = "/api/admin/runners", tag = "admin", params(RunnerListParams),
    responses((status = 200, body = [RunnerFull]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn admin_list_runners(
    State(app): State<AppState>,
    _admin: Admin,
    ApiQuery(params): ApiQuery<RunnerListParams>,
) -> Result<Json<Vec<RunnerFull>>, ApiError> {
    let runners = app
        .read(params.consistency, |state, health| {
            runners_of(state, None, params.region_id.as_deref()).map(|r| runner_full(state, health, r)).collect()
        })
        .await?;
    Ok(Json(runners))
}

/// Get any runner with full details (operator).
#[utoipa::path(get, path = "/api/admin/runners/{runner_id}", tag = "admin",
    params(("runner_id" = String, Path, description = "Runner id"), crate::extract::ReadParams),
    responses((status = 200, body = RunnerFull), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn admin_get_runner(
    State(app): State<AppState>,
    _admin: Admin,
    Path(runner_id): Path<String>,
    ApiQuery(params): ApiQuery<crate::extract::ReadParams>,
) -> Result<Json<RunnerFull>, ApiError> {
    app.read(params.consistency, |state, health| {
        runner_of(state, None, &runner_id).map(|r| runner_full(state, health, r))
    })
    .await?
    .map(Json)
}

/// Mark any runner schedulable or not; with no body, toggle (operator).
#[utoipa::path(patch, path = "/api/admin/runners/{runner_id}/scheduling", tag = "admin",
    params(("runner_id" = String, Path, description = "Runner id")), request_body(content = Option<SchedulingRequest>, description = "Optional: without a body the flag is toggled"),
    responses((status = 200, body = RunnerFull), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn admin_update_scheduling(
    State(app): State<AppState>,
    _admin: Admin,
    Path(runner_id): Path<String>,
    body: Bytes,
) -> Result<Json<RunnerFull>, ApiError> {
    let command = Command::SetRunnerSchedulable { id: runner_id, schedulable: scheduling_body(&body)? };
    let runner = runner_outcome(app.submit(command, Scope::operator(), &Idempotency::none(), "admin", None).await?)?;
    Ok(Json(app.read_local(|state, health| runner_full(state, health, &runner))))
}

/// Start or end draining any runner (operator).
#[utoipa::path(patch, path = "/api/admin/runners/{runner_id}/draining", tag = "admin",
    params(("runner_id" = String, Path, description = "Runner id")), request_body = DrainingRequest,
    responses((status = 200, body = RunnerFull), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn admin_update_draining(
    State(app): State<AppState>,
    _admin: Admin,
    Path(runner_id): Path<String>,
    ApiJson(body): ApiJson<DrainingRequest>,
) -> Result<Json<RunnerFull>, ApiError> {
    let command = Command::SetRunnerDraining { id: runner_id, draining: body.draining };
    let runner = runner_outcome(app.submit(command, Scope::operator(), &Idempotency::none(), "admin", None).await?)?;
    Ok(Json(app.read_local(|state, health| runner_full(state, health, &runner))))
}

/// Change any runner's tags or sandbox limit (operator).
#[utoipa::path(patch, path = "/api/admin/runners/{runner_id}", tag = "admin", request_body = UpdateRunnerRequest,
    params(("runner_id" = String, Path, description = "Runner id")),
    responses((status = 200, body = RunnerFull), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn admin_update_runner(
    State(app): State<AppState>,
    _admin: Admin,
    Path(runner_id): Path<String>,
    ApiJson(body): ApiJson<UpdateRunnerRequest>,
) -> Result<Json<RunnerFull>, ApiError> {
    let command = update_command(runner_id, body)?;
    let runner = runner_outcome(app.submit(command, Scope::operator(), &Idempotency::none(), "admin", None).await?)?;
    Ok(Json(app.read_local(|state, health| runner_full(state, health, &runner))))
}

/// Set a runner's state (operator): `ready`, `unresponsive`, `disabled`, `decommissioned`.
#[utoipa::path(patch, path = "/api/admin/runners/{runner_id}/state", tag = "admin",
    params(("runner_id" = String, Path, description = "Runner id")), request_body = RunnerStateRequest,
    responses((status = 200, body = RunnerFull), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`conflict`: a decommissioned runner stays decommissioned"),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn admin_set_state(
    State(app): State<AppState>,
    _admin: Admin,
    Path(runner_id): Path<String>,
    ApiJson(body): ApiJson<RunnerStateRequest>,
) -> Result<Json<RunnerFull>, ApiError> {
    let command = Command::SetRunnerState { id: runner_id, state: body.state };
    let runner = runner_outcome(app.submit(command, Scope::operator(), &Idempotency::none(), "admin", None).await?)?;
    Ok(Json(app.read_local(|state, health| runner_full(state, health, &runner))))
}

/// Delete any runner (operator; 409 while it has sandboxes).
#[utoipa::path(delete, path = "/api/admin/runners/{runner_id}", tag = "admin", params(("runner_id" = String, Path, description = "Runner id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn admin_delete_runner(
    State(app): State<AppState>,
    _admin: Admin,
    Path(runner_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.submit(Command::DeleteRunner { id: runner_id }, Scope::operator(), &Idempotency::none(), "admin", None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces runner `runner_id`'s token for `scope`: the command with the new token.
fn new_token(app: &AppState, idempotency: &Idempotency, actor: &str, runner_id: String) -> (Command, String) {
    let api_key = idempotency.secret(&app.config.admin_key, actor, "runner-token", RUNNER_TOKEN_PREFIX);
    let command = Command::SetRunnerToken {
        id: runner_id,
        api_key_hash: hash_secret(&api_key),
        api_key_hint: token_hint(&api_key),
    };
    (command, api_key)
}

/// Give one of the organization's runners a new token (shown once). The old token stops
/// working at once and the agent's live session is closed: restart the agent with the new one.
#[utoipa::path(post, path = "/api/runners/{runner_id}/regenerate-token", tag = "runners",
    params(("runner_id" = String, Path, description = "Runner id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first token")),
    responses((status = 200, body = CreatedRunner), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn regenerate_token(
    State(app): State<AppState>,
    caller: Caller,
    idempotency: Idempotency,
    Path(runner_id): Path<String>,
) -> Result<Json<CreatedRunner>, ApiError> {
    let actor = caller.organization_id.as_str();
    let (command, api_key) = new_token(&app, &idempotency, actor, runner_id);
    let fingerprint = idempotency.fingerprint(&());
    let runner = runner_outcome(app.submit(command, caller.scope(), &idempotency, actor, fingerprint).await?)?;
    Ok(Json(CreatedRunner { id: runner.id, api_key }))
}

/// Give any runner a new token (operator; shown once). The old token stops working at once
/// and the agent's live session is closed.
#[utoipa::path(post, path = "/api/admin/runners/{runner_id}/regenerate-token", tag = "admin",
    params(("runner_id" = String, Path, description = "Runner id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first token")),
    responses((status = 200, body = CreatedRunner), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn admin_regenerate_token(
    State(app): State<AppState>,
    _admin: Admin,
    idempotency: Idempotency,
    Path(runner_id): Path<String>,
) -> Result<Json<CreatedRunner>, ApiError> {
    let (command, api_key) = new_token(&app, &idempotency, "admin", runner_id);
    let fingerprint = idempotency.fingerprint(&());
    let runner = runner_outcome(app.submit(command, Scope::operator(), &idempotency, "admin", fingerprint).await?)?;
    Ok(Json(CreatedRunner { id: runner.id, api_key }))
}

/// The runners visible to `scope` (an organization; `None`: the operator, every runner),
/// optionally of one region.
fn runners_of<'a>(
    state: &'a ReplicatedState,
    scope: Option<&'a str>,
    region_id: Option<&'a str>,
) -> impl Iterator<Item = &'a Runner> + 'a {
    state
        .runners
        .values()
        .filter(move |r| scope.is_none_or(|org| r.organization_id == org))
        .filter(move |r| region_id.is_none_or(|g| r.region_id == g))
}

/// One runner visible to `scope`, or 404 (another organization's runner is not found either).
fn runner_of<'a>(state: &'a ReplicatedState, scope: Option<&str>, runner_id: &str) -> Result<&'a Runner, ApiError> {
    state
        .runners
        .get(runner_id)
        .filter(|r| scope.is_none_or(|org| r.organization_id == org))
        .ok_or_else(|| ApiError::not_found(format!("runner '{runner_id}' not found")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_and_hints() {
        let cap = Resources { cpu: 4, memory_gib: 8, disk_gib: 100, gpu: 0 };
        assert_eq!(allocation_score(cap, Resources::default()), 100);
        assert_eq!(allocation_score(cap, Resources { cpu: 2, memory_gib: 2, disk_gib: 10, gpu: 0 }), 50);
        assert_eq!(allocation_score(Resources::default(), Resources::default()), 0);
        assert_eq!(token_hint("dtn_1234567890"), "dtn_…7890");
        assert_eq!(token_hint("short"), "…");
    }

    #[test]
    fn scheduling_body_is_optional() {
        assert_eq!(scheduling_body(&Bytes::from_static(b"")).ok(), Some(None));
        assert_eq!(scheduling_body(&Bytes::from_static(b" null ")).ok(), Some(None));
        assert!(scheduling_body(&Bytes::from_static(b"[true]")).is_err(), "only an object sets the flag");
        assert_eq!(scheduling_body(&Bytes::from_static(b"{\"schedulable\":false}")).ok(), Some(Some(false)));
        assert!(scheduling_body(&Bytes::from_static(b"{\"schedulable\":1}")).is_err());
        let malformed =
            scheduling_body(&Bytes::from_static(b"{\"schedulable\": tru")).err().map(|e| (e.status, e.code));
        assert_eq!(malformed, Some((StatusCode::BAD_REQUEST, "malformed_json")), "malformed JSON is 400");
        let shape = scheduling_body(&Bytes::from_static(b"{\"schedulable\": 1}")).err().map(|e| e.status);
        assert_eq!(shape, Some(StatusCode::UNPROCESSABLE_ENTITY), "the wrong shape is 422");
        assert!(scheduling_body(&Bytes::from_static(b"{\"other\":true}")).is_err());
    }
}

//! # corral-api
//!
//! Owns Corral's REST surface under `/api`: routes, request and response types (JSON in
//! camelCase, as in the product's seed documents), validation, authentication of callers,
//! idempotency keys, the OpenAPI document (`/api/openapi.json`, generated from the handlers'
//! annotations) with a browsable page at `/docs`, and the mapping of every error to
//! `{"error": "...", "code": "..."}` with its HTTP status (in [`error`], and nowhere else).
//!
//! The API talks to the cluster only through the [`cluster::ClusterHandle`] trait, which the
//! node implements: propose a command, wait for a read barrier, read the shared state.
//! Organization isolation is enforced twice: reads filter by the caller's organization here,
//! and every write carries the caller's scope, which `apply` checks (objects of another
//! organization are "not found", never "forbidden", so ids do not leak).
//!
//! Every read handler goes through [`AppState::read`] (read barrier, then a view of the state
//! and health table under their locks); every write through [`AppState::submit`]. The domain
//! types, `apply` and the invariants are `corral-model`'s.
//!
//! Never: depend on `corral-node`, `corral-net` or `corral-storage` (no RocksDB, no
//! tonic/quinn); block while holding the state's read lock; echo a secret back except in the
//! response that created it.

#![forbid(unsafe_code)]

pub mod api_keys;
pub mod auth;
pub mod cluster;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod http_server;
pub mod idempotency;
pub mod ids;
pub mod key_usage;
pub mod openapi;
pub mod organizations;
pub mod rate_limit;
pub mod regions;
pub mod runners;
pub mod sandboxes;
pub mod secret_box;
pub mod telemetry;
pub mod validate;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use corral_model::access::{authorize, live_key};
use corral_model::{Command, Millis, Outcome, Proposal};

pub use cluster::{
    ClusterError, ClusterHandle, ClusterStatus, GossipMemberStatus, MemberChange, MemberStatus, ReadConsistency,
    StateHash,
};
pub use error::{ApiError, ErrorBody};
use idempotency::Idempotency;

/// The system's wall clock in milliseconds since the Unix epoch ([`ApiConfig::clock`] of a
/// node outside the simulation reads it).
pub fn now_millis() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

/// The API's configuration (a part of the node's config).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Bearer key for `/api/admin/*`; on organization routes it acts for the organization
    /// named by `X-Organization-ID`. Also the HMAC key for secrets derived from idempotency
    /// keys, so every node must share it.
    pub admin_key: String,
    /// Largest request body accepted; larger gets 413.
    pub max_body_bytes: usize,
    /// Per-key request rate on this node; `None` turns limiting off.
    pub rate_limit: Option<rate_limit::RateLimit>,
    /// Encrypts the secrets Corral stores and must use again (same key on every node).
    pub secret_box: secret_box::SecretBox,
    /// The wall clock (milliseconds since the Unix epoch) this node stamps into the
    /// proposals it builds and checks key expiry against (`apply` never reads a clock):
    /// [`now_millis`] on a node, the simulated clock in the simulation.
    pub clock: fn() -> Millis,
}

/// Shared by every handler: one `Arc` around [`AppStateParts`] (axum clones the state for
/// each request and extractor, so one reference count to touch rather than one per part).
#[derive(Clone)]
pub struct AppState(Arc<AppStateParts>);

/// What [`AppState`] shares (reached through its `Deref`).
pub struct AppStateParts {
    pub cluster: Arc<dyn ClusterHandle>,
    pub config: ApiConfig,
    /// Uses of organization keys seen on this node, recorded lazily ([`key_usage`]).
    pub key_usage: key_usage::KeyUsage,
    /// The hash of [`ApiConfig::admin_key`], computed once: every request's bearer key is
    /// hashed once and compared with it ([`auth`]).
    admin_key_hash: String,
}

impl std::ops::Deref for AppState {
    type Target = AppStateParts;

    fn deref(&self) -> &AppStateParts {
        &self.0
    }
}

/// On whose behalf a command is proposed: `apply` treats objects of other organizations as
/// not found, and refuses the command if the key it carries was revoked, expired or lacks the
/// permission.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// `None`: the operator, across organizations.
    pub organization_id: Option<String>,
    /// The hash of the organization key the caller used; `None` for the operator.
    pub credential: Option<String>,
}

impl Scope {
    /// The operator (the admin key) or the system.
    pub fn operator() -> Scope {
        Scope::default()
    }
}

impl AppState {
    /// Builds the handlers' state from the cluster and the API's configuration.
    pub fn new(cluster: Arc<dyn ClusterHandle>, config: ApiConfig) -> AppState {
        let admin_key_hash = auth::hash_secret(&config.admin_key);
        AppState(Arc::new(AppStateParts { cluster, config, key_usage: key_usage::KeyUsage::default(), admin_key_hash }))
    }

    /// The wall clock ([`ApiConfig::clock`]), in milliseconds since the Unix epoch.
    pub fn now(&self) -> Millis {
        (self.config.clock)()
    }

    /// Proposes `command` for a caller acting in `scope` and returns its outcome, mapping
    /// rejections and cluster errors to API errors. A caller with an organization key is
    /// checked here first, against this node's state (403 without a Raft round trip), and
    /// again by `apply`.
    pub async fn submit(
        &self,
        command: Command,
        scope: Scope,
        idempotency: &Idempotency,
        actor: &str,
        fingerprint: Option<String>,
    ) -> Result<Outcome, ApiError> {
        let at = self.now();
        if let Some(credential) = &scope.credential {
            let machine = self.cluster.state().read();
            authorize(&machine.state, credential, scope.organization_id.as_deref(), &command, at)?;
        }
        let mut proposal = Proposal::scoped(command, at, scope.organization_id);
        proposal.credential = scope.credential;
        proposal.idempotency_key = idempotency.scoped_key(actor);
        proposal.fingerprint = fingerprint;
        Ok(self.cluster.propose(proposal).await??)
    }

    /// [`AppState::read`] for an organization caller: after the barrier, the caller's key is
    /// checked again on the state the read sees, so a key revoked before a linearizable read
    /// began is refused on every node.
    pub async fn read_as<T>(
        &self,
        caller: &auth::Caller,
        consistency: ReadConsistency,
        view: impl FnOnce(&corral_model::State, &corral_model::health::HealthTable) -> T,
    ) -> Result<T, ApiError> {
        let checked = self
            .read(consistency, |state, health| {
                if let Some(credential) = &caller.credential {
                    live_key(state, credential, Some(&caller.organization_id), self.now())?;
                }
                Ok::<T, corral_model::Rejection>(view(state, health))
            })
            .await?;
        Ok(checked?)
    }

    /// Waits until the local state may be read with `consistency`, then runs `view` over the
    /// state and this node's health table (both locks held only for `view`, never across an
    /// await). Every read handler goes through here.
    pub async fn read<T>(
        &self,
        consistency: ReadConsistency,
        view: impl FnOnce(&corral_model::State, &corral_model::health::HealthTable) -> T,
    ) -> Result<T, ApiError> {
        self.cluster.read_barrier(consistency).await?;
        Ok(self.read_local(view))
    }

    /// [`AppState::read`] of the local state as it is now (after a write this node just
    /// committed, whose effects it has applied).
    pub fn read_local<T>(&self, view: impl FnOnce(&corral_model::State, &corral_model::health::HealthTable) -> T) -> T {
        let machine = self.cluster.state().read();
        let health = self.cluster.health().read();
        view(&machine.state, &health)
    }
}

/// The whole REST router.
pub fn router(cluster: Arc<dyn ClusterHandle>, config: ApiConfig) -> Router {
    router_for(AppState::new(cluster, config))
}

/// The whole REST router over handlers' state the node keeps a handle on (to record key use).
pub fn router_for(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let limiter = state.config.rate_limit.map(rate_limit::RateLimiter::new);
    let router = Router::new()
        .merge(regions::routes())
        .merge(api_keys::routes())
        .merge(runners::routes())
        .merge(sandboxes::routes())
        .merge(organizations::routes())
        .merge(openapi::routes())
        .merge(dashboard::routes())
        .route("/api/admin/cluster", get(cluster_status).options(cluster_status_preflight))
        .route("/api/admin/cluster/hash", get(state_hash).options(cluster_status_preflight))
        .route("/api/admin/cluster/members", axum::routing::post(add_member))
        .route("/api/admin/cluster/members/:node_id", axum::routing::delete(remove_member))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(error::json_errors))
        .route_layer(axum::middleware::from_fn(telemetry::track))
        .with_state(state);
    match limiter {
        Some(limiter) => router.layer(axum::middleware::from_fn_with_state(limiter, rate_limit::enforce)),
        None => router,
    }
}

/// For load balancers and probes: 200 when this node knows a leader and has applied close to
/// its log's end, 503 with the reason otherwise.
pub async fn readyz(State(app): State<AppState>) -> Result<&'static str, ApiError> {
    app.cluster
        .readiness()
        .await
        .map(|()| "ready")
        .map_err(|reason| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason))
}

/// This node's view of the Raft cluster.
#[utoipa::path(get, path = "/api/admin/cluster", tag = "admin",
    responses((status = 200, body = ClusterStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cluster_status(State(app): State<AppState>, _admin: auth::Admin) -> impl IntoResponse {
    // The dashboard served by one node reads every member's status: allowed from any origin,
    // as the admin key it needs travels in a header (no cookie), never implicitly.
    ([(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], Json(app.cluster.status().await))
}

/// The hash of this node's replica and the applied index it covers: equal on every member
/// that has applied the same index. It reads the whole state on a blocking thread (about a
/// second per million objects) and holds up this node's applying meanwhile, so it is asked
/// for on purpose (`corral ctl cluster hash`, convergence checks), never polled.
#[utoipa::path(get, path = "/api/admin/cluster/hash", tag = "admin",
    responses((status = 200, body = StateHash), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 500, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn state_hash(State(app): State<AppState>, _admin: auth::Admin) -> Result<impl IntoResponse, ApiError> {
    let hash = app.cluster.state_hash().await?;
    Ok(([(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], Json(hash)))
}

/// CORS preflight for [`cluster_status`] and [`state_hash`] from a dashboard served by
/// another member.
pub async fn cluster_status_preflight() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "authorization, x-organization-id"),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
}

/// A node to add to the cluster.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddMemberRequest {
    #[serde(deserialize_with = "extract::whole_number")]
    pub node_id: u64,
    /// host:port of the new node's gRPC listener.
    pub raft_addr: String,
    /// host:port of its REST listener.
    pub api_addr: String,
}

/// Add a node: it joins as a learner, catches up, and is promoted to voter.
#[utoipa::path(post, path = "/api/admin/cluster/members", tag = "admin", request_body = AddMemberRequest,
    responses((status = 200, body = [MemberStatus]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_member(
    State(app): State<AppState>,
    _admin: auth::Admin,
    extract::ApiJson(body): extract::ApiJson<AddMemberRequest>,
) -> Result<Json<Vec<MemberStatus>>, ApiError> {
    if body.node_id == 0 {
        return Err(ApiError::unprocessable("nodeId must be at least 1"));
    }
    for (field, addr) in [("raftAddr", &body.raft_addr), ("apiAddr", &body.api_addr)] {
        let valid = addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(ApiError::unprocessable(format!("{field} must be host:port")));
        }
    }
    let change = MemberChange::Add { node_id: body.node_id, raft_addr: body.raft_addr, api_addr: body.api_addr };
    Ok(Json(app.cluster.change_membership(change).await?))
}

/// Remove a node from the cluster (stop its process afterwards).
#[utoipa::path(delete, path = "/api/admin/cluster/members/{node_id}", tag = "admin",
    params(("node_id" = u64, Path, description = "Node id")),
    responses((status = 200, body = [MemberStatus]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_member(
    State(app): State<AppState>,
    _admin: auth::Admin,
    axum::extract::Path(node_id): axum::extract::Path<u64>,
) -> Result<Json<Vec<MemberStatus>>, ApiError> {
    Ok(Json(app.cluster.change_membership(MemberChange::Remove { node_id }).await?))
}

/// RFC 3339 rendering of a stored timestamp.
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

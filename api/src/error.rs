//! The one place where errors become HTTP responses: `{"error": "...", "code": "..."}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use corral_model::Rejection;
use serde::Serialize;

use crate::cluster::ClusterError;

/// An error as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// Every error response's body.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// What went wrong, for programs (e.g. `not_found`, `already_exists`, `no_leader`).
    pub code: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// `apply` returned an outcome of another kind than the command implies: a bug.
    pub fn unexpected(outcome: &corral_model::Outcome) -> Self {
        tracing::error!(?outcome, "unexpected apply outcome");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "unexpected apply outcome")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.message, code: self.code.to_string() };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let message = rejection.to_string();
        match rejection {
            Rejection::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            Rejection::DuplicateName { .. } | Rejection::DuplicateId { .. } => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", message)
            }
            Rejection::RegionHasRunners { .. } => ApiError::new(StatusCode::CONFLICT, "region_has_runners", message),
            Rejection::RunnerHasSandboxes { .. } => {
                ApiError::new(StatusCode::CONFLICT, "runner_has_sandboxes", message)
            }
            // The fleet's state refuses the request: a definite answer, so a 4xx. 5xx stays
            // for answers whose outcome the client cannot know (no leader, timeout).
            Rejection::InsufficientCapacity { .. }
            | Rejection::RunnerNotSchedulable { .. }
            | Rejection::NoCapacity { .. } => ApiError::new(StatusCode::CONFLICT, "no_capacity", message),
            Rejection::IdempotencyKeyReused => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", message)
            }
            Rejection::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let message = e.to_string();
        match e {
            ClusterError::NoLeader => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message),
            ClusterError::Timeout => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", message),
            ClusterError::Overloaded => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message),
            ClusterError::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
            ClusterError::Internal(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

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
        // Answers worth retrying soon say when: the leader's queue was full, or a leader is
        // being elected.
        let retry_soon =
            self.status == StatusCode::SERVICE_UNAVAILABLE && matches!(self.code, "overloaded" | "no_leader");
        let body = ErrorBody { error: self.message, code: self.code.to_string() };
        let mut response = (self.status, axum::Json(body)).into_response();
        if retry_soon {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
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
            | Rejection::RunnerTagsMismatch { .. }
            | Rejection::RunnerNotSchedulable { .. }
            | Rejection::NoCapacity { .. } => ApiError::new(StatusCode::CONFLICT, "no_capacity", message),
            Rejection::IdempotencyKeyReused => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", message)
            }
            Rejection::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            Rejection::QuotaExceeded { .. } => ApiError::new(StatusCode::CONFLICT, "quota_exceeded", message),
            Rejection::Unauthorized(_) => ApiError::unauthorized(message),
            Rejection::Forbidden { .. } => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
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

/// How much of a plain-text error body [`json_errors`] reads to quote it.
const PLAIN_ERROR_BYTES_MAX: usize = 4_096;

/// Middleware: an error that one of axum's own extractors answered in plain text (a path
/// segment that is not UTF-8, a body over the limit read as raw bytes) becomes the API's JSON
/// error, with a code for its status, so every error a client sees is `{"error","code"}`.
pub async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), PLAIN_ERROR_BYTES_MAX).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    ApiError::new(status, plain_error_code(status), message).into_response()
}

/// The code of an error that arrived without one, by its status.
fn plain_error_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

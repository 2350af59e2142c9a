//! Request extractors that turn axum's rejections into Corral's error shape.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::{ApiError, ReadConsistency};

/// `axum::Json` with Corral's errors: 400 malformed JSON, 413 too large, 415 not JSON,
/// 422 well-formed JSON of the wrong shape (not an object, missing or unknown fields, wrong
/// types). Every request body is an object: serde would also read a struct from an array of
/// its fields in order, which no client means and which could clear fields by position.
pub struct ApiJson<T>(pub T);

#[async_trait::async_trait]
impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large")
            } else {
                ApiError::bad_request("bad_body", rejection.body_text())
            }
        })?;
        require_object(&bytes)?;
        axum::Json::<T>::from_bytes(&bytes).map(|axum::Json(value)| ApiJson(value)).map_err(json_rejection)
    }
}

/// `application/json`, or another `application/…+json` type, with any parameters.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// 422 unless the body is a JSON object (400 if it is not JSON at all).
pub fn require_object(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return Ok(());
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Ok(_) => Err(ApiError::unprocessable("the request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request("malformed_json", format!("the request body is not valid JSON: {e}"))),
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let text = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => ApiError::unprocessable(text),
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("malformed_json", text),
        other => ApiError::bad_request("bad_body", other.body_text()),
    }
}

/// For optional counts (`cpu`, `memoryGiB`, `diskGiB`): JSON has one number type, and JSON
/// Schema calls `2.0` an integer, so a whole number written with a fraction part is accepted.
pub fn optional_whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<serde_json::Number>::deserialize(d)?.map(|n| whole_number_of(&n)).transpose()
}

/// An optional count that may also be `null`: absent is `None` (keep), `null` is
/// `Some(None)` (clear), a number `Some(Some(n))`.
pub fn nullable_whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    optional_whole_number(d).map(Some)
}

/// A required count, as [`optional_whole_number`].
pub fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    whole_number_of(&serde_json::Number::deserialize(d)?)
}

fn whole_number_of<E: serde::de::Error>(n: &serde_json::Number) -> Result<u64, E> {
    /// Above 2^53 a float no longer says which integer it means.
    const EXACT_FLOAT_LIMIT: f64 = 9_007_199_254_740_992.0;
    n.as_u64()
        .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && (0.0..=EXACT_FLOAT_LIMIT).contains(f)).map(|f| f as u64))
        .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Other(&n.to_string()), &"a whole number >= 0"))
}

/// Query parameters every read accepts.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// `linearizable` (default) or `stale` (this node's state, possibly behind).
    #[serde(default)]
    #[param(value_type = Option<String>, example = "stale")]
    pub consistency: ReadConsistency,
}

/// `axum::extract::Query` with Corral's errors (400 `invalid_query`).
pub struct ApiQuery<T>(pub T);

#[async_trait::async_trait]
impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", rejection.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Counts {
        #[serde(default, deserialize_with = "optional_whole_number")]
        cpu: Option<u64>,
        #[serde(deserialize_with = "whole_number")]
        node: u64,
    }

    #[test]
    fn whole_numbers_may_carry_a_zero_fraction() {
        let parse = |s: &str| serde_json::from_str::<Counts>(s).map(|c| (c.cpu, c.node)).ok();
        assert_eq!(parse(r#"{"cpu": 2.0, "node": 3}"#), Some((Some(2), 3)));
        assert_eq!(parse(r#"{"cpu": null, "node": 1e2}"#), Some((None, 100)));
        assert_eq!(parse(r#"{"node": 18446744073709551615}"#), Some((None, u64::MAX)));
        assert_eq!(parse(r#"{"cpu": 1.5, "node": 1}"#), None);
        assert_eq!(parse(r#"{"cpu": -1, "node": 1}"#), None);
        assert_eq!(parse(r#"{"cpu": -0.0, "node": 1}"#).map(|c| c.0), Some(Some(0)));
        assert_eq!(parse(r#"{"node": 1e300}"#), None);
        assert_eq!(parse(r#"{"node": "1"}"#), None);
    }

    #[test]
    fn bodies_must_be_objects() {
        assert!(require_object(b"  {\"a\": 1}").is_ok());
        assert_eq!(require_object(b"[null, null]").map_err(|e| e.status), Err(StatusCode::UNPROCESSABLE_ENTITY));
        assert_eq!(require_object(b"null").map_err(|e| e.status), Err(StatusCode::UNPROCESSABLE_ENTITY));
        assert_eq!(require_object(b"[nul").map_err(|e| e.status), Err(StatusCode::BAD_REQUEST));
        assert_eq!(require_object(b"").map_err(|e| e.status), Err(StatusCode::BAD_REQUEST));
    }
}

//! Per-key rate limiting: a token bucket per bearer key on each node, answering 429 with
//! `Retry-After` when a key's bucket is empty.
//!
//! Buckets are keyed by a hash of the key (the key itself is never kept). A node-local limit
//! is what Consul and Nomad do: behind a load balancer the cluster-wide allowance is the
//! per-node rate times the number of nodes, which is plain to reason about and needs no
//! coordination. Requests without a bearer key are not limited here; they are refused by
//! authentication at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// A key's allowance: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

/// One key's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub updated: Instant,
}

impl Bucket {
    pub fn full(limit: RateLimit, now: Instant) -> Self {
        Bucket { tokens: limit.burst, updated: now }
    }

    /// Refills for the time since the last call and takes one token; on refusal, how long
    /// until one is there.
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second).min(limit.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / limit.per_second.max(f64::MIN_POSITIVE)))
        }
    }

    /// Whether it has refilled completely by `now` (and so can be forgotten).
    fn is_full(&self, limit: RateLimit, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.updated).as_secs_f64() * limit.per_second >= limit.burst
    }
}

/// Buckets beyond this many trigger a sweep of the full ones, bounding memory under a flood of
/// distinct keys.
const SWEEP_ABOVE: usize = 100_000;

/// The node's buckets.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<[u8; 16], Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Arc<Self> {
        Arc::new(RateLimiter { limit, buckets: Mutex::new(HashMap::new()) })
    }

    /// Takes a token for `key` at `now`.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= SWEEP_ABOVE && !buckets.contains_key(&id) {
            let limit = self.limit;
            buckets.retain(|_, b| !b.is_full(limit, now));
        }
        buckets.entry(id).or_insert_with(|| Bucket::full(self.limit, now)).take(self.limit, now)
    }
}

/// Middleware: 429 when the caller's key is over its rate.
pub async fn enforce(State(limiter): State<Arc<RateLimiter>>, request: Request, next: Next) -> Response {
    let key = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    if let Some(key) = key {
        if let Err(wait) = limiter.check(key, Instant::now()) {
            metrics::counter!("corral_api_rate_limited_total").increment(1);
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("this API key is over its rate limit; retry in {seconds} s"),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limit = RateLimit { per_second: 10.0, burst: 3.0 };
        let t0 = Instant::now();
        let mut bucket = Bucket::full(limit, t0);
        for _ in 0..3 {
            assert!(bucket.take(limit, t0).is_ok());
        }
        let wait = bucket.take(limit, t0).expect_err("burst spent");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO, "{wait:?}");
        assert!(bucket.take(limit, t0 + Duration::from_millis(100)).is_ok(), "one token after 1/rate");
        assert!(bucket.take(limit, t0 + Duration::from_millis(100)).is_err());
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.take(limit, later).is_ok());
        }
        assert!(bucket.take(limit, later).is_err());
    }

    #[test]
    fn keys_have_separate_buckets() {
        let limiter = RateLimiter::new(RateLimit { per_second: 1.0, burst: 1.0 });
        let now = Instant::now();
        assert!(limiter.check("key-a", now).is_ok());
        assert!(limiter.check("key-a", now).is_err());
        assert!(limiter.check("key-b", now).is_ok(), "another key is not affected");
    }
}

//! Endpoint failover. [`NodeLink`] owns the list of node endpoints and the one QUIC connection
//! that the sessions of an agent process (or of one group of simulated runners) share: it dials
//! the endpoints in turn, with jittered exponential backoff while none answers, and rotates to the
//! next endpoint when a session reports the connection broken. It never speaks the runner
//! protocol; the sessions open their streams on the connection it hands out.

use std::time::Duration;

use anyhow::Context;
use corral_net::quic::{client_endpoint, ALPN_RUNNER, SERVER_NAME};
use corral_net::tls::ClusterTls;
use quinn::{Connection, Endpoint};
use rand::Rng;
use tokio::sync::watch;

use super::AgentError;

/// A connection to one of the endpoints, shared by the sessions of one agent process (or one
/// group of simulated runners), re-dialled on the next endpoint when it breaks.
pub struct NodeLink {
    endpoint: Endpoint,
    endpoints: Vec<String>,
    current: tokio::sync::Mutex<(usize, Option<Connection>)>,
}

/// A node silent this long is taken for gone (QUIC's idle timeout; keep-alives go every
/// quarter of it) and the agent moves to the next endpoint. It must be well under the
/// cluster's `runner_silence_ms`; the leader's health monitor counts a runner's silence from
/// this long after it saw the runner's node go (`health_monitor::HealthWatch`), so that a
/// runner whose node died has the whole silence to reconnect elsewhere.
pub(crate) const NODE_SILENCE: Duration = Duration::from_millis(2_500);

impl NodeLink {
    /// Dials `endpoints` presenting the runner certificate in `tls`.
    pub fn new(endpoints: Vec<String>, tls: &ClusterTls) -> Result<NodeLink, AgentError> {
        if endpoints.is_empty() {
            return Err(AgentError::NoEndpoints);
        }
        let endpoint = client_endpoint(tls, ALPN_RUNNER, NODE_SILENCE)?;
        Ok(NodeLink { endpoint, endpoints, current: tokio::sync::Mutex::new((0, None)) })
    }

    /// The live connection, dialling endpoints in turn (with backoff) until one answers.
    pub(super) async fn connection(&self, stop: &watch::Receiver<bool>) -> Option<(Connection, String)> {
        let mut current = self.current.lock().await;
        let mut backoff = Duration::from_millis(200);
        loop {
            if *stop.borrow() {
                return None;
            }
            let name = self.endpoints[current.0 % self.endpoints.len()].clone();
            if let Some(c) = current.1.as_ref().filter(|c| c.close_reason().is_none()) {
                return Some((c.clone(), name));
            }
            match self.dial(&name).await {
                Ok(c) => {
                    tracing::info!(endpoint = %name, "connected");
                    current.1 = Some(c.clone());
                    return Some((c, name));
                }
                Err(e) => {
                    tracing::warn!(endpoint = %name, error = %e, "cannot reach node; trying the next");
                    current.0 += 1;
                    current.1 = None;
                    let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
                    tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Called when `failed` broke: the next caller dials the next endpoint.
    pub(super) async fn failed(&self, failed: &Connection) {
        let mut current = self.current.lock().await;
        if current.1.as_ref().is_some_and(|c| c.stable_id() == failed.stable_id()) {
            current.0 += 1;
            current.1 = None;
        }
    }

    async fn dial(&self, name: &str) -> anyhow::Result<Connection> {
        let addr = tokio::net::lookup_host(name).await?.next().context("resolves to no address")?;
        let connecting = self.endpoint.connect(addr, SERVER_NAME)?;
        Ok(tokio::time::timeout(Duration::from_secs(3), connecting).await.context("timed out")??)
    }
}

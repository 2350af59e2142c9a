//! The QUIC accept loop: one UDP endpoint per node, each connection routed by its ALPN and
//! the role its certificate names (runner sessions or gossip).

use std::sync::Arc;
use std::time::Duration;

use crate::{gossip, quic, runner_session, tls};

/// Accepts QUIC connections until `stop`, handing runner connections to their sessions and
/// node connections to gossip.
pub async fn serve_quic(
    endpoint: quinn::Endpoint,
    gossip: gossip::Gossip,
    directory: Arc<dyn runner_session::RunnerDirectory>,
    sessions: runner_session::SessionConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming { Some(i) => i, None => return },
            _ = stop.wait_for(|s| *s) => {
                endpoint.close(0u32.into(), b"node stopping");
                return;
            }
        };
        let gossip = gossip.clone();
        let directory = directory.clone();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match tokio::time::timeout(Duration::from_secs(5), incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "quic handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "quic handshake timed out");
                    return;
                }
            };
            // The handshake proved the certificate comes from the cluster CA; its role must
            // also fit the protocol, so a runner's certificate cannot gossip.
            let role = quic::peer_role(&connection);
            match (quic::negotiated_alpn(&connection).as_deref(), role) {
                (Some(quic::ALPN_RUNNER), Some(tls::Role::Runner)) => {
                    runner_session::serve_runner_connection(connection, directory, sessions).await
                }
                (Some(quic::ALPN_GOSSIP), Some(tls::Role::Node)) => gossip.serve_connection(connection).await,
                (Some(quic::ALPN_RUNNER | quic::ALPN_GOSSIP), _) => {
                    tracing::warn!(%remote, ?role, "quic peer's certificate does not fit its protocol");
                    metrics::counter!("corral_tls_refused_total", "transport" => "quic").increment(1);
                    connection.close(3u32.into(), b"certificate role does not fit the protocol")
                }
                _ => connection.close(2u32.into(), b"unknown protocol"),
            }
        });
    }
}

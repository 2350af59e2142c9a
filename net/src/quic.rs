//! The QUIC endpoint (quinn on rustls) every node opens on the UDP port of its Raft address.
//! Runner sessions and node-to-node gossip share it and are told apart by ALPN
//! ([`ALPN_RUNNER`], [`ALPN_GOSSIP`]). Messages on streams are length-prefixed frames
//! ([`write_frame`], [`read_frame`]) in postcard, each at most [`MAX_FRAME_BYTES`].
//!
//! TLS is mutual and rooted in the cluster CA ([`crate::tls`]): a node presents its node
//! certificate as server and, when it dials a peer for gossip, as client; a runner agent
//! presents its runner certificate. [`peer_role`] tells the accept loop which one connected,
//! and a connection whose ALPN does not match its certificate's role is closed. Runners still
//! prove which runner they are with their token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, RecvStream, SendStream, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;

use crate::tls::{ClusterTls, Role};
use serde::Serialize;

pub const ALPN_RUNNER: &[u8] = b"corral-runner/1";
pub const ALPN_GOSSIP: &[u8] = b"corral-gossip/1";
/// Largest frame on a runner or gossip stream.
pub const MAX_FRAME_BYTES: usize = 4 << 20;
/// The server name clients ask for; every node certificate names it.
pub const SERVER_NAME: &str = crate::tls::NODE_NAME;

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("tls setup: {0}")]
    Tls(String),
    #[error("cannot open the QUIC endpoint on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read: {0}")]
    Read(String),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(#[from] postcard::Error),
}

fn transport(idle_timeout: Duration) -> Result<TransportConfig, QuicError> {
    let mut t = TransportConfig::default();
    // One runner session is one bidirectional stream, so a simulator multiplexes thousands of
    // runners on a connection.
    t.max_concurrent_bidi_streams(VarInt::from_u32(20_000));
    t.max_concurrent_uni_streams(VarInt::from_u32(1_024));
    t.max_idle_timeout(Some(idle_timeout.try_into().map_err(|e| QuicError::Tls(format!("idle timeout: {e}")))?));
    t.keep_alive_interval(Some(idle_timeout / 4));
    t.datagram_receive_buffer_size(Some(1 << 20));
    Ok(t)
}

/// Client-side TLS for `alpn`: trusts only the cluster CA, presents `tls`'s certificate.
pub fn client_config(tls: &ClusterTls, alpn: &[u8], idle_timeout: Duration) -> Result<quinn::ClientConfig, QuicError> {
    let mut tls = tls.client_config().map_err(|e| QuicError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport(idle_timeout)?));
    Ok(config)
}

/// The node's endpoint: serves both ALPNs and dials peers with the gossip ALPN.
pub fn node_endpoint(addr: SocketAddr, tls: &ClusterTls, idle_timeout: Duration) -> Result<Endpoint, QuicError> {
    let mut server_tls = tls.server_config().map_err(|e| QuicError::Tls(e.to_string()))?;
    server_tls.alpn_protocols = vec![ALPN_RUNNER.to_vec(), ALPN_GOSSIP.to_vec()];
    server_tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(server_tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport(idle_timeout)?));
    let mut endpoint = Endpoint::server(server, addr).map_err(|source| QuicError::Bind { addr, source })?;
    endpoint.set_default_client_config(client_config(tls, ALPN_GOSSIP, idle_timeout)?);
    Ok(endpoint)
}

/// An endpoint that only dials (runner agents), presenting `tls`'s certificate.
pub fn client_endpoint(tls: &ClusterTls, alpn: &[u8], idle_timeout: Duration) -> Result<Endpoint, QuicError> {
    let addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut endpoint = Endpoint::client(addr).map_err(|source| QuicError::Bind { addr, source })?;
    endpoint.set_default_client_config(client_config(tls, alpn, idle_timeout)?);
    Ok(endpoint)
}

/// The role of the certificate the peer presented (verified against the cluster CA by the
/// handshake), if any.
pub fn peer_role(connection: &quinn::Connection) -> Option<Role> {
    let chain = connection.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().and_then(crate::tls::peer_role)
}

/// The ALPN a connection negotiated.
pub fn negotiated_alpn(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
}

/// Writes one frame: a 4-byte big-endian length, then the postcard encoding.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, message: &T) -> Result<(), FrameError> {
    let body = postcard::to_allocvec(message)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    send.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the peer finished the stream between frames.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(FrameError::Read(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| FrameError::Read(e.to_string()))?;
    Ok(Some(postcard::from_bytes(&body)?))
}

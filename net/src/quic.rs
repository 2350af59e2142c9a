//! The QUIC endpoint (quinn on rustls) every node opens on the UDP port of its Raft address.
//! Runner sessions and node-to-node gossip share it and are told apart by ALPN
//! ([`ALPN_RUNNER`], [`ALPN_GOSSIP`]). Messages on streams are length-prefixed frames
//! ([`write_frame`], [`read_frame`]) in postcard, each at most [`MAX_FRAME_BYTES`].
//!
//! TLS: QUIC always encrypts. Until the cluster CA lands (the security issue), each node
//! presents a certificate it generates at start, and clients do not verify the server's
//! identity ([`UnverifiedServer`]); runners prove who they are with their token, and the data
//! on the wire is encrypted either way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, RecvStream, SendStream, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub const ALPN_RUNNER: &[u8] = b"corral-runner/1";
pub const ALPN_GOSSIP: &[u8] = b"corral-gossip/1";
/// Largest frame on a runner or gossip stream.
pub const MAX_FRAME_BYTES: usize = 4 << 20;
/// The server name clients ask for; certificates are issued for it.
pub const SERVER_NAME: &str = "corral-node";

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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and key the endpoint presents.
pub struct ServerIdentity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    /// A fresh self-signed certificate for [`SERVER_NAME`].
    pub fn generate() -> Result<Self, QuicError> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        Ok(ServerIdentity {
            cert_chain: vec![certified.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der())),
        })
    }
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

/// Client-side TLS for `alpn`.
pub fn client_config(alpn: &[u8], idle_timeout: Duration) -> Result<quinn::ClientConfig, QuicError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UnverifiedServer(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport(idle_timeout)?));
    Ok(config)
}

/// The node's endpoint: serves both ALPNs and dials peers with the gossip ALPN.
pub fn node_endpoint(
    addr: SocketAddr,
    identity: ServerIdentity,
    idle_timeout: Duration,
) -> Result<Endpoint, QuicError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain, identity.key)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN_RUNNER.to_vec(), ALPN_GOSSIP.to_vec()];
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport(idle_timeout)?));
    let mut endpoint = Endpoint::server(server, addr).map_err(|source| QuicError::Bind { addr, source })?;
    endpoint.set_default_client_config(client_config(ALPN_GOSSIP, idle_timeout)?);
    Ok(endpoint)
}

/// An endpoint that only dials (runner agents).
pub fn client_endpoint(alpn: &[u8], idle_timeout: Duration) -> Result<Endpoint, QuicError> {
    let addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut endpoint = Endpoint::client(addr).map_err(|source| QuicError::Bind { addr, source })?;
    endpoint.set_default_client_config(client_config(alpn, idle_timeout)?);
    Ok(endpoint)
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

/// Accepts any server certificate while still checking the handshake signatures. Stands in
/// until nodes get certificates from a cluster CA; see the module doc.
#[derive(Debug)]
pub struct UnverifiedServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

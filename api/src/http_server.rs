//! The REST listener: HTTPS (rustls) or, when asked for, plain HTTP; HTTP/1.1 and HTTP/2.
//!
//! It bounds what one client can hold: connections beyond [`HttpServerConfig::max_connections`]
//! are closed at accept; a TLS handshake and a request's headers must arrive within their
//! timeouts (no slowloris); headers are capped in size (431 for HTTP/1, a stream reset for
//! HTTP/2). Bodies are capped by the router ([`crate::ApiConfig::max_body_bytes`], 413). On
//! stop it stops accepting, lets in-flight requests finish (up to `drain_timeout`), then
//! returns.
//!
//! [`serve`] takes a `TcpListener`; [`serve_on`] takes any [`Accept`], the connections of a
//! listener that is not the host's (the simulation's TCP).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Where the REST server's connections come from: a listener.
pub trait Accept: Send + 'static {
    type Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection and a name of its remote end (for logs).
    fn accept(&mut self) -> impl std::future::Future<Output = std::io::Result<(Self::Connection, String)>> + Send;
}

impl Accept for TcpListener {
    type Connection = tokio::net::TcpStream;

    async fn accept(&mut self) -> std::io::Result<(Self::Connection, String)> {
        let (stream, remote) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, remote.to_string()))
    }
}

/// Limits and TLS of the REST listener.
#[derive(Clone)]
pub struct HttpServerConfig {
    /// HTTPS with this configuration; `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_connections: usize,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// A connection must complete its TLS handshake within this ...
    pub handshake_timeout: Duration,
    /// ... and send each request's headers within this.
    pub header_read_timeout: Duration,
    /// On stop, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        Self {
            tls: None,
            max_connections: 4_096,
            max_header_bytes: 16 * 1024,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Builds a TLS server configuration for REST from a certificate chain and key in PEM files.
pub fn https_config(cert: &std::path::Path, key: &std::path::Path) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `app` on `listener` until `stop` turns true, then drains.
pub async fn serve(listener: TcpListener, app: Router, config: HttpServerConfig, stop: watch::Receiver<bool>) {
    serve_on(listener, app, config, stop).await;
}

/// Serves `app` on the connections `listener` accepts until `stop` turns true, then drains.
pub async fn serve_on<A: Accept>(
    mut listener: A,
    app: Router,
    config: HttpServerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        // hyper's floor for the read buffer is 8 KiB.
        .max_buf_size(config.max_header_bytes.max(8 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(20));

    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // The guard `wait_for` returns is dropped inside, never held across an await.
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("corral_http_connections_refused_total").increment(1);
            tracing::debug!(%remote, "api connection limit reached; closing");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let handshake_timeout = config.handshake_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let result = match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            metrics::counter!("corral_http_tls_handshake_failures_total").increment(1);
                            tracing::debug!(%remote, error = %e, "api tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "api tls handshake timed out");
                            return;
                        }
                    };
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    watcher.watch(connection.into_owned()).await
                }
                None => {
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "api connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout = ?config.drain_timeout, "api requests still in flight after the drain timeout");
    }
}

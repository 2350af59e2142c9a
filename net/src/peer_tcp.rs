//! TCP between nodes: every gRPC connection, dialled or accepted, gives up on a peer that
//! leaves its data unacknowledged for [`PEER_TCP_USER_TIMEOUT`] (Linux `TCP_USER_TIMEOUT`).
//!
//! Why: across a partition, the kernel retransmits what a connection had in flight with an
//! exponential backoff (200 ms, 400 ms, 800 ms, 1.6 s, 3.2 s…). When the partition heals, the
//! connection stays silent until its next retransmission, which after a 3 s cut comes about
//! 3 s later, and every RPC multiplexed on it (heartbeats, votes, pre-votes) waits with it. A
//! 10-minute chaos run's logs point to that: the rejoined node's peers could not reach it for
//! 1–2 s after the heal, so a fault that then hit another node left no majority and writes
//! stopped for 2.5–3 s. With the timeout the kernel drops such a connection while the cut
//! lasts, tonic dials a fresh one on the next call, and the first call after the heal gets
//! through at once.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;

/// How long data sent to a peer may stay unacknowledged before the kernel drops the
/// connection. A live peer's kernel acknowledges within milliseconds even when the process
/// is overloaded (acknowledgements are the kernel's, not the process's), and a leader sends
/// every heartbeat (100 ms by default), so ten heartbeats without an acknowledgement means
/// the path is cut or the peer is stopped with a full receive buffer; either way a fresh
/// connection is what is wanted when it comes back. Also the bound on how long a connection
/// can lag after a partition shorter than this heals (its next retransmission is clamped to
/// it).
pub const PEER_TCP_USER_TIMEOUT: Duration = Duration::from_secs(1);

/// Sets [`PEER_TCP_USER_TIMEOUT`] on a connection to or from a peer.
pub fn bound_unacknowledged(stream: &TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(stream).set_tcp_user_timeout(Some(PEER_TCP_USER_TIMEOUT))
}

/// A byte stream between two nodes: a TCP connection, or the simulation's simulated one.
pub trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PeerStream for T {}

/// A dial in progress.
pub type Dialing = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn PeerStream>>> + Send>>;

/// How a node opens connections to its peers' gRPC ports, when not over the host's TCP: the
/// seam through which the simulation (`corral-sim`) runs the real gRPC client and server over
/// its simulated network. A dial to a port where nothing listens fails with
/// `ConnectionRefused`, as TCP's does (the election driver reads that as "the leader is dead").
pub trait PeerDialer: Send + Sync + 'static {
    /// Opens a connection to `authority` (`host:port`, as in the peer's Raft address).
    fn dial(&self, authority: &str) -> Dialing;
}

/// The `host:port` a peer URI (`scheme://host:port`) names.
pub(crate) fn authority(uri: &Uri) -> std::io::Result<&str> {
    uri.authority().map(|a| a.as_str()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("peer address {uri} names no host"))
    })
}

/// Dials the peer `uri` names (`scheme://host:port`): TCP with no Nagle delay and the
/// unacknowledged-data bound. tonic layers TLS and the connect timeout over this.
pub(crate) async fn dial(uri: Uri) -> std::io::Result<TokioIo<TcpStream>> {
    let stream = TcpStream::connect(authority(&uri)?).await?;
    stream.set_nodelay(true)?;
    bound_unacknowledged(&stream)?;
    Ok(TokioIo::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dialled_connections_carry_the_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accept = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        let dialled = dial(format!("http://{addr}").parse().expect("uri")).await.expect("dial");
        let timeout = socket2::SockRef::from(dialled.inner()).tcp_user_timeout().expect("getsockopt");
        assert_eq!(timeout, Some(PEER_TCP_USER_TIMEOUT));
        assert!(dialled.inner().nodelay().expect("nodelay"));
        let accepted = accept.await.expect("join").expect("accept");
        assert_eq!(socket2::SockRef::from(&accepted).tcp_user_timeout().expect("getsockopt"), None);
        bound_unacknowledged(&accepted).expect("set");
        assert_eq!(
            socket2::SockRef::from(&accepted).tcp_user_timeout().expect("getsockopt"),
            Some(PEER_TCP_USER_TIMEOUT)
        );
    }

    #[tokio::test]
    async fn an_address_without_a_host_is_an_error_not_a_panic() {
        let err = dial(Uri::from_static("/no-host")).await.expect_err("no host");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}

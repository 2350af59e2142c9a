//! Simulated TCP under the nodes' real gRPC clients and servers. Each node's `PeerClients`
//! dials through a [`SimDialer`] and its tonic server accepts the [`SimStream`]s a dial hands
//! to its listener, so openraft's RPCs, forwarded writes, placements, read indexes, pre-votes
//! and probes run through tonic, HTTP/2, deadlines and reconnects as in `corral serve`; only
//! the bytes cross the [`Fabric`] instead of the kernel.
//!
//! What a connection does, per direction, in order (one writer's bytes are a segment):
//! - a segment arrives after the link's latency, never before the one sent before it;
//! - a cut link, a lost segment (link loss) or a peer that is down leaves it unacknowledged:
//!   it is retransmitted after 200 ms, 400 ms, … and when it has been unacknowledged for
//!   [`PEER_TCP_USER_TIMEOUT`] the connection is dropped (what `corral serve` sets on every
//!   peer connection); a one-way cut of the return path delivers the data but not the
//!   acknowledgements, with the same outcome;
//! - a peer that restarted meanwhile answers with a reset: the connection ends at once;
//! - a paused node's traffic, both ways, waits until it resumes (its kernel still
//!   acknowledges, so no timeout runs);
//! - a crashed node's own ends go silent: nothing it still sends arrives.
//!
//! A dial crosses the link like a SYN: refused after a round trip when nothing listens at a
//! node that is down behind a working link (a dead leader's closed port), retried every
//! second while the link is cut or the SYN is lost (tonic's connect timeout gives up first).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use corral_net::peer_tcp::PEER_TCP_USER_TIMEOUT;
use corral_net::{Dialing, PeerDialer, PeerStream};
use corral_raft_types::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::network::{Fabric, Port, SegmentFate, Syn};

/// Bytes a connection buffers in each direction (the sockets' buffers).
const SOCKET_BUFFER: usize = 256 * 1024;
/// Segments in flight per direction.
const SEGMENTS_IN_FLIGHT: usize = 64;
/// Linux's smallest retransmission timeout; doubled at each retry.
const FIRST_RETRANSMISSION: Duration = Duration::from_millis(200);
/// Linux's first SYN retransmission timeout.
const SYN_RETRANSMISSION: Duration = Duration::from_secs(1);
/// Connections a node's listener holds before its server accepts them.
pub const ACCEPT_BACKLOG: usize = 64;

/// A node and one of its lives (its incarnation): a connection belongs to one life.
pub type Life = (NodeId, u64);

/// One end of a simulated connection, as tonic's client or server holds it.
pub struct SimStream(DuplexStream);

impl AsyncRead for SimStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for SimStream {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// How one life of a node dials its peers (given to its `PeerClients`).
pub struct SimDialer {
    pub from: Life,
    pub fabric: Fabric,
}

impl PeerDialer for SimDialer {
    fn dial(&self, authority: &str) -> Dialing {
        let (fabric, from, to) = (self.fabric.clone(), self.from, crate::node::node_of(authority));
        let authority = authority.to_string();
        Box::pin(async move {
            let to = to.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{authority} is not a simulated node"))
            })?;
            let stream = connect(&fabric, from, to, Port::Raft).await?;
            Ok(Box::new(stream) as Box<dyn PeerStream>)
        })
    }
}

/// Opens a connection from `from` to `port` of node `to`.
pub async fn connect(fabric: &Fabric, from: Life, to: NodeId, port: Port) -> io::Result<SimStream> {
    loop {
        // A paused process does not dial.
        fabric.wait_unpaused(from.0, from.0).await;
        tokio::time::sleep(fabric.latency()).await;
        match fabric.syn(from, to, port) {
            Syn::Listening(server, accept) => {
                let (client_end, server_end) = open(fabric, from, server);
                // The server's process takes it from its backlog; a full backlog drops the SYN.
                if accept.try_send(server_end).is_ok() {
                    tokio::time::sleep(fabric.latency()).await;
                    return Ok(client_end);
                }
                tokio::time::sleep(SYN_RETRANSMISSION).await;
            }
            Syn::Refused => {
                tokio::time::sleep(fabric.latency()).await;
                return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
            }
            Syn::Lost => tokio::time::sleep(SYN_RETRANSMISSION).await,
        }
    }
}

/// A connection between two lives: its two ends, and the tasks that carry each direction.
fn open(fabric: &Fabric, a: Life, b: Life) -> (SimStream, SimStream) {
    let (end_a, wire_a) = tokio::io::duplex(SOCKET_BUFFER);
    let (end_b, wire_b) = tokio::io::duplex(SOCKET_BUFFER);
    let (sent_by_a, to_a) = tokio::io::split(wire_a);
    let (sent_by_b, to_b) = tokio::io::split(wire_b);
    let closed = watch::Sender::new(false);
    tokio::spawn(direction(fabric.clone(), (a, b), sent_by_a, to_b, closed.clone()));
    tokio::spawn(direction(fabric.clone(), (b, a), sent_by_b, to_a, closed));
    (SimStream(end_a), SimStream(end_b))
}

enum Segment {
    Data(Instant, Vec<u8>),
    /// The writer closed its end.
    Fin(Instant),
}

/// Carries `from`'s bytes to `to` until the connection closes; closing it (either
/// direction) drops both ends' wires, so both ends read EOF and fail to write.
async fn direction(
    fabric: Fabric,
    (from, to): (Life, Life),
    mut sent: ReadHalf<DuplexStream>,
    received: WriteHalf<DuplexStream>,
    closed: watch::Sender<bool>,
) {
    let (segments, queued) = mpsc::channel(SEGMENTS_IN_FLIGHT);
    let take = async move {
        loop {
            let mut bytes = Vec::with_capacity(16 * 1024);
            let segment = match sent.read_buf(&mut bytes).await {
                Ok(0) | Err(_) => Segment::Fin(Instant::now()),
                Ok(_) => Segment::Data(Instant::now(), bytes),
            };
            let fin = matches!(segment, Segment::Fin(_));
            if segments.send(segment).await.is_err() || fin {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let mut closing = closed.subscribe();
    tokio::select! {
        _ = closing.wait_for(|c| *c) => {}
        _ = take => {}
        _ = deliver(&fabric, (from, to), queued, received) => {}
    }
    closed.send_replace(true);
}

/// Delivers the segments in order; returns when the connection must close.
async fn deliver(
    fabric: &Fabric,
    (from, to): (Life, Life),
    mut queued: mpsc::Receiver<Segment>,
    mut received: WriteHalf<DuplexStream>,
) {
    let mut last = Instant::now();
    // Since when data delivered here has gone unacknowledged (the return path is cut).
    let mut unacknowledged_since: Option<Instant> = None;
    loop {
        let next = match unacknowledged_since {
            None => queued.recv().await,
            Some(since) => tokio::select! {
                next = queued.recv() => next,
                _ = tokio::time::sleep_until(since + PEER_TCP_USER_TIMEOUT) => {
                    if fabric.acknowledgements_cut(from, to) {
                        return;
                    }
                    unacknowledged_since = None;
                    continue;
                }
            },
        };
        let Some(segment) = next else { return };
        let (sent_at, bytes) = match segment {
            Segment::Data(at, bytes) => (at, Some(bytes)),
            Segment::Fin(at) => (at, None),
        };
        let arrival = (sent_at + fabric.latency()).max(last);
        tokio::time::sleep_until(arrival).await;
        let first_try = Instant::now();
        let mut retransmission = FIRST_RETRANSMISSION;
        loop {
            fabric.wait_unpaused(from.0, to.0).await;
            match fabric.segment_fate(from, to) {
                SegmentFate::Delivered => {
                    unacknowledged_since = None;
                    break;
                }
                SegmentFate::DeliveredUnacknowledged => {
                    unacknowledged_since.get_or_insert(first_try);
                    break;
                }
                // A dead process sends nothing more; its peer is not told.
                SegmentFate::SenderGone => std::future::pending::<()>().await,
                SegmentFate::Reset => return,
                SegmentFate::Unacknowledged => {
                    let waited = first_try.elapsed();
                    if waited + retransmission >= PEER_TCP_USER_TIMEOUT {
                        tokio::time::sleep(PEER_TCP_USER_TIMEOUT.saturating_sub(waited)).await;
                        return;
                    }
                    tokio::time::sleep(retransmission).await;
                    retransmission *= 2;
                }
            }
        }
        last = Instant::now();
        if segment_printing() != SegmentPrinting::Off {
            println!(
                "segment {from:?} -> {to:?}: {}",
                bytes.as_ref().map_or_else(|| "FIN".to_string(), |b| describe(b))
            );
        }
        match bytes {
            Some(bytes) => {
                if received.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            None => return,
        }
    }
}

/// What to print of every segment delivered, read once from `CORRAL_SIM_SEGMENTS` (`1`: its
/// length and digest, `bytes`: its bytes too): where two runs of a seed part, the first
/// segment that differs in length or order says which connection and which message (the REST
/// responses' contents differ anyway: they carry the host's date and random request ids).
#[derive(Clone, Copy, PartialEq, Eq)]
enum SegmentPrinting {
    Off,
    Digest,
    Bytes,
}

fn segment_printing() -> SegmentPrinting {
    static PRINTING: std::sync::OnceLock<SegmentPrinting> = std::sync::OnceLock::new();
    *PRINTING.get_or_init(|| match std::env::var_os("CORRAL_SIM_SEGMENTS") {
        Some(v) if v == "1" => SegmentPrinting::Digest,
        Some(v) if v == "bytes" => SegmentPrinting::Bytes,
        _ => SegmentPrinting::Off,
    })
}

/// A segment's length and a digest of its bytes (and the bytes, escaped, with `=bytes`).
fn describe(bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    match segment_printing() {
        SegmentPrinting::Bytes => {
            format!("{} bytes, digest {:016x} {}", bytes.len(), hasher.finish(), bytes.escape_ascii())
        }
        _ => format!("{} bytes, digest {:016x}", bytes.len(), hasher.finish()),
    }
}

//! # corral-net
//!
//! How Corral nodes talk to each other and to runner agents. Transport only: every decision
//! is the node's (through the traits defined here) or the model's.
//!
//! Over gRPC (tonic + prost, mutual TLS from the cluster CA):
//! - [`raft_network`]: openraft's network ([`GrpcNetworkFactory`], one [`GrpcPeer`] per
//!   target) carrying AppendEntries, Vote and InstallSnapshot;
//! - [`leader_ops`]: what a follower asks of the leader (forwarded writes, read index, sandbox
//!   placement, campaign, membership), as wire types and the [`LeaderService`] trait the node
//!   implements;
//! - [`grpc_server`]: the service peers call ([`raft_transport_server`]): Raft RPCs into the
//!   local `openraft::Raft`, leader operations into the node's [`LeaderService`];
//! - [`peer_clients`]: the client side ([`PeerClients`]), one channel per peer;
//! - [`leader_stream`]: a follower's sandbox requests and proposals to the leader over one
//!   long-lived stream per leader and kind ([`PlacementStreams`], [`WriteStreams`]), answers
//!   matched by id;
//! - [`peer_tcp`]: the TCP under both sides, which drops a connection whose data a peer has
//!   left unacknowledged for a second (so a healed partition does not leave it in
//!   retransmission backoff), and the [`PeerDialer`] seam through which the simulation runs
//!   the same clients and service over its simulated TCP;
//! - [`liveness`]: when a leader was last heard from and when followers last acknowledged
//!   this node as leader ([`RaftLiveness`], recorded on AppendEntries), for pre-vote and
//!   leader fencing.
//!
//! Over QUIC (quinn + rustls, one UDP endpoint per node, see [`quic`]):
//! - [`runner_session`]: runner agents' sessions (health reports in, assignments out), asking
//!   the node through the [`runner_session::RunnerDirectory`] trait;
//! - [`gossip`]: node liveness by SWIM (`foca`) and the spread of runner health;
//! - [`accept`]: the accept loop ([`serve_quic`]) that routes each connection by its ALPN.
//! - [`tls`]: the cluster CA's material and the roles certificates carry.
//!
//! openraft messages travel in a `bytes` field (see `proto/raft.proto`) in Corral's binary
//! encoding (`corral_model::codec`, MessagePack): the wire format is then exactly openraft's
//! serde types, with no hand-kept mirror of them, except a snapshot chunk, whose data goes as
//! one byte string (`raft_network::SnapshotChunk`).
//!
//! Invariants: every outgoing call has a deadline; every message is size-limited.
//! Never depends on: `corral-node`, `corral-api`, `corral-storage` (no RocksDB), axum.

// tonic::Status and openraft's errors are large by design; they are not ours to shrink.
#![allow(clippy::result_large_err)]
#![forbid(unsafe_code)]

use std::time::Duration;

pub mod accept;
pub mod gossip;
pub mod grpc_server;
pub mod leader_ops;
pub mod leader_stream;
pub mod liveness;
pub mod peer_clients;
pub mod peer_tcp;
pub mod quic;
pub mod raft_network;
pub mod runner_session;
pub mod tls;

pub use accept::serve_quic;
pub use grpc_server::{
    raft_transport_server, unguarded_raft_transport, GuardedRaftTransport, RaftTransportService, UnguardedRaftTransport,
};
pub use leader_ops::{
    CommittedWrite, ForwardError, LeaderService, LeadershipProbe, LogPosition, MembershipChange, MembershipChanged,
    PlacementReply, PreVoteReply, PreVoteRequest, ProbeReply,
};
pub use leader_stream::{LeaderStreams, PlacementStreams, WriteStreams};
pub use liveness::RaftLiveness;
pub use peer_clients::PeerClients;
pub use peer_tcp::{Dialing, PeerDialer, PeerStream};
pub use raft_network::{GrpcNetworkFactory, GrpcPeer};

pub mod pb {
    tonic::include_proto!("corral.raft.v1");
}

/// Largest gRPC message accepted or sent. Snapshot chunks are cut well below this by openraft
/// (`snapshot_max_chunk_size`); AppendEntries batches are bounded by `max_payload_entries`.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long a connection attempt to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

thread_local! {
    /// Set on a simulation's thread: (the simulated instant the wall clock started at, the
    /// wall-clock reading then).
    static SIMULATED_WALL_CLOCK: std::cell::Cell<Option<(tokio::time::Instant, corral_model::Millis)>> =
        const { std::cell::Cell::new(None) };
}

/// Wall-clock milliseconds since the Unix epoch, for stamping soft state (health reports'
/// receipt, gossip incarnations) and, in the node, proposals. The model never reads a clock.
/// On a thread that [`simulate_wall_clock`] set up, the reading follows tokio's (paused,
/// simulated) clock instead, so that a simulation's proposals carry the same times on
/// every run of a seed.
pub fn now_millis() -> corral_model::Millis {
    if let Some((origin, at_origin)) = SIMULATED_WALL_CLOCK.with(std::cell::Cell::get) {
        return at_origin + origin.elapsed().as_millis() as corral_model::Millis;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as corral_model::Millis)
        .unwrap_or(0)
}

/// From now on, [`now_millis`] on this thread reads `start` plus the time tokio's clock has
/// advanced since this call (`None`: the real wall clock again). For the simulation only.
pub fn simulate_wall_clock(start: Option<corral_model::Millis>) {
    SIMULATED_WALL_CLOCK.with(|c| c.set(start.map(|at| (tokio::time::Instant::now(), at))));
}

/// Errors of this crate's client calls.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    #[error("invalid peer address '{addr}': {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("rpc to {addr} failed: {status}")]
    Rpc { addr: String, status: String },
    #[error("bad message from {addr}: {reason}")]
    Decode { addr: String, reason: String },
    /// The peer runs a build without this call (a cluster in the middle of an upgrade).
    #[error("peer {addr} does not serve this call: {what}")]
    Unsupported { addr: String, what: String },
}

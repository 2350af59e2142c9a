//! # corral-net
//!
//! Owns how Corral nodes talk to each other over gRPC (tonic + prost):
//! - the openraft network ([`GrpcNetworkFactory`], one [`GrpcPeer`] per target) carrying
//!   AppendEntries, Vote and InstallSnapshot;
//! - `ForwardWrite`, with which a follower hands a client's proposal to the leader, and
//!   `ReadIndex`, with which a follower learns the leader's linearizable read point;
//! - `PlaceSandbox`, with which a follower hands a sandbox request to the leader's scheduler;
//! - the server side of all of them ([`raft_transport_server`]), which calls into the local
//!   `openraft::Raft` and the node's [`SandboxPlacement`].
//!
//! and over QUIC (quinn + rustls, one UDP endpoint per node, see [`quic`]):
//! - [`runner_session`]: runner agents' sessions (health reports in, assignments out);
//! - [`gossip`]: node liveness by SWIM (`foca`) and the spread of runner health;
//! - [`serve_quic`]: the accept loop that routes each connection by its ALPN.
//!
//! openraft messages travel as JSON in a `bytes` field (see `proto/raft.proto`): the wire
//! format is then exactly openraft's serde types, with no hand-kept mirror of them.
//!
//! Invariants: every outgoing call has a deadline; every message is size-limited.
//! Never: depend on `corral-node` or `corral-api`.

// tonic::Status and openraft's errors are large by design; they are not ours to shrink.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_storage::model::{Proposal, Rejection, Sandbox, SandboxRequest};
use corral_storage::{ApplyResponse, CorralNode, NodeId, Raft, TypeConfig};
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

pub mod gossip;
pub mod quic;
pub mod runner_session;
pub mod tls;

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

pub mod pb {
    tonic::include_proto!("corral.raft.v1");
}

use pb::raft_transport_client::RaftTransportClient;
use pb::raft_transport_server::{RaftTransport, RaftTransportServer};
use pb::Payload;

/// Largest gRPC message accepted or sent. Snapshot chunks are cut well below this by openraft
/// (`snapshot_max_chunk_size`); AppendEntries batches are bounded by `max_payload_entries`.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long a connection attempt to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Errors of this crate's client calls.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid peer address '{addr}': {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("rpc to {addr} failed: {status}")]
    Rpc { addr: String, status: String },
    #[error("bad message from {addr}: {reason}")]
    Decode { addr: String, reason: String },
}

/// Why the leader side of ForwardWrite/ReadIndex could not serve a request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("this node is not the leader (leader: {leader_id:?})")]
    NotLeader { leader_id: Option<NodeId>, leader: Option<CorralNode> },
    #[error("raft is unavailable: {0}")]
    Unavailable(String),
    #[error("the scheduler queue is full; retry shortly")]
    Overloaded,
}

/// A change to the Raft membership, executed by the leader.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add as a learner, wait until it has caught up, then promote it to voter.
    Add { node_id: NodeId, node: CorralNode },
    /// Remove from the voters and from the cluster.
    Remove { node_id: NodeId },
}

/// The membership after a change: voter ids, and every member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MembershipChanged {
    pub log_index: u64,
    pub voters: Vec<NodeId>,
    pub members: Vec<(NodeId, CorralNode)>,
}

/// A failed client write (or membership change) as the forwarding node needs to see it.
fn client_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, CorralNode>>) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ForwardError::NotLeader { leader_id: f.leader_id, leader: f.leader_node }
        }
        other => ForwardError::Unavailable(other.to_string()),
    }
}

/// Runs a membership change on the local Raft, which must be the leader.
pub async fn change_membership_on_leader(
    raft: &Raft,
    change: MembershipChange,
) -> Result<MembershipChanged, ForwardError> {
    let reply = match change {
        MembershipChange::Add { node_id, node } => {
            raft.add_learner(node_id, node, true).await.map_err(client_write_error)?;
            let mut voters: std::collections::BTreeSet<NodeId> =
                raft.metrics().borrow().membership_config.membership().voter_ids().collect();
            voters.insert(node_id);
            raft.change_membership(voters, false).await.map_err(client_write_error)?
        }
        MembershipChange::Remove { node_id } => {
            let mut voters: std::collections::BTreeSet<NodeId> =
                raft.metrics().borrow().membership_config.membership().voter_ids().collect();
            if !voters.remove(&node_id) {
                return Err(ForwardError::Unavailable(format!("node {node_id} is not a voter")));
            }
            if voters.is_empty() {
                return Err(ForwardError::Unavailable("cannot remove the last voter".into()));
            }
            raft.change_membership(voters, false).await.map_err(client_write_error)?
        }
    };
    let membership = reply.membership.clone().unwrap_or_default();
    Ok(MembershipChanged {
        log_index: reply.log_id.index,
        voters: membership.voter_ids().collect(),
        members: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
    })
}

/// The leader's scheduler, as the gRPC server sees it (implemented by the node).
#[tonic::async_trait]
pub trait SandboxPlacement: Send + Sync + 'static {
    /// Places one sandbox (batched with others) and returns once the placement is applied.
    async fn place(&self, request: SandboxRequest) -> Result<Result<Sandbox, Rejection>, ForwardError>;
}

/// A proposal committed and applied by the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommittedWrite {
    pub log_index: u64,
    pub response: ApplyResponse,
}

/// Proposes on the local Raft, which must be the leader.
pub async fn write_on_leader(raft: &Raft, proposal: Proposal) -> Result<CommittedWrite, ForwardError> {
    raft.client_write(proposal)
        .await
        .map(|reply| CommittedWrite { log_index: reply.log_id.index, response: reply.data })
        .map_err(client_write_error)
}

/// The leader's read index: confirms leadership with a quorum and returns the log index a
/// reader must have applied before serving a linearizable read.
pub async fn read_index_on_leader(raft: &Raft) -> Result<u64, ForwardError> {
    match raft.get_read_log_id().await {
        Ok((read_log_id, _applied)) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            Err(ForwardError::NotLeader { leader_id: f.leader_id, leader: f.leader_node })
        }
        Err(e) => Err(ForwardError::Unavailable(e.to_string())),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Payload, tonic::Status> {
    serde_json::to_vec(value).map(|json| Payload { json }).map_err(|e| tonic::Status::internal(format!("encode: {e}")))
}

fn decode_request<T: DeserializeOwned>(payload: &Payload) -> Result<T, tonic::Status> {
    serde_json::from_slice(&payload.json).map_err(|e| tonic::Status::invalid_argument(format!("decode: {e}")))
}

/// The gRPC service a node serves to its peers.
pub struct RaftTransportService {
    raft: Raft,
    placement: Arc<dyn SandboxPlacement>,
}

/// The gRPC service with its peer check in front.
pub type GuardedRaftTransport = tonic::service::interceptor::InterceptedService<
    RaftTransportServer<RaftTransportService>,
    fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
>;

/// Builds the tonic service for `raft` and the local scheduler, with message size limits. Every
/// call must come from a peer whose certificate names a node ([`tls::peer_role`]): the TLS
/// handshake already proved the certificate comes from the cluster CA, and this refuses a
/// runner's certificate from the same CA. Serve it with [`tls::ClusterTls::grpc_server`].
pub fn raft_transport_server(raft: Raft, placement: Arc<dyn SandboxPlacement>) -> GuardedRaftTransport {
    let server = RaftTransportServer::new(RaftTransportService { raft, placement })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::service::interceptor::InterceptedService::new(server, require_node_peer)
}

/// Admits a gRPC call only from a node of this cluster.
fn require_node_peer(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let role = request.peer_certs().and_then(|chain| chain.first().and_then(tls::peer_role));
    if role == Some(tls::Role::Node) {
        Ok(request)
    } else {
        metrics::counter!("corral_tls_refused_total", "transport" => "grpc").increment(1);
        Err(tonic::Status::permission_denied("peer is not a node of this cluster"))
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftTransportService {
    async fn append_entries(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode_request(request.get_ref())?;
        let reply = self.raft.append_entries(rpc).await;
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn vote(&self, request: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = decode_request(request.get_ref())?;
        let reply = self.raft.vote(rpc).await;
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_request(request.get_ref())?;
        let reply = self.raft.install_snapshot(rpc).await;
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn forward_write(&self, request: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let proposal: Proposal = decode_request(request.get_ref())?;
        let reply = write_on_leader(&self.raft, proposal).await;
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn read_index(&self, _request: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let reply = read_index_on_leader(&self.raft).await;
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn trigger_election(
        &self,
        _request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let reply: Result<(), ForwardError> =
            self.raft.trigger().elect().await.map_err(|e| ForwardError::Unavailable(e.to_string()));
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn change_membership(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let change: MembershipChange = decode_request(request.get_ref())?;
        let reply = change_membership_on_leader(&self.raft, change).await;
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn place_sandbox(&self, request: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let sandbox: SandboxRequest = decode_request(request.get_ref())?;
        let reply = self.placement.place(sandbox).await;
        Ok(tonic::Response::new(encode(&reply)?))
    }
}

/// A pool of lazily connected channels to peers, keyed by address. tonic channels reconnect
/// on their own, so one per peer is kept for the life of the node.
///
/// With TLS ([`PeerClients::with_tls`]) every channel is mutual TLS from the cluster CA; the
/// default, plaintext, is only for single-process tests that never dial a peer.
#[derive(Clone, Default)]
pub struct PeerClients {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl PeerClients {
    pub fn with_tls(tls: &tls::ClusterTls) -> Self {
        Self { channels: Arc::default(), tls: Some(tls.grpc_client()) }
    }

    fn client(&self, addr: &str) -> Result<RaftTransportClient<Channel>, NetError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let bad =
                    |e: tonic::transport::Error| NetError::BadAddress { addr: addr.to_string(), reason: e.to_string() };
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(bad)?;
                if let Some(tls) = &self.tls {
                    endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
                }
                let endpoint = endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5));
                let channel = endpoint.connect_lazy();
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    async fn call<Req: Serialize, Reply: DeserializeOwned>(
        &self,
        addr: &str,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Reply, NetError> {
        let mut client = self.client(addr)?;
        let json = serde_json::to_vec(request)
            .map_err(|e| NetError::Decode { addr: addr.to_string(), reason: e.to_string() })?;
        let mut request = tonic::Request::new(Payload { json });
        request.set_timeout(timeout);
        let reply = match method {
            Method::AppendEntries => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::InstallSnapshot => client.install_snapshot(request).await,
            Method::ForwardWrite => client.forward_write(request).await,
            Method::ReadIndex => client.read_index(request).await,
            Method::PlaceSandbox => client.place_sandbox(request).await,
            Method::TriggerElection => client.trigger_election(request).await,
            Method::ChangeMembership => client.change_membership(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable => NetError::Unreachable { addr: addr.to_string(), reason: status.to_string() },
            _ => NetError::Rpc { addr: addr.to_string(), status: status.to_string() },
        })?;
        serde_json::from_slice(&reply.get_ref().json)
            .map_err(|e| NetError::Decode { addr: addr.to_string(), reason: e.to_string() })
    }

    /// Sends `proposal` to the leader at `addr`; returns once it is committed and applied there.
    pub async fn forward_write(
        &self,
        addr: &str,
        proposal: &Proposal,
        timeout: Duration,
    ) -> Result<Result<CommittedWrite, ForwardError>, NetError> {
        self.call(addr, Method::ForwardWrite, proposal, timeout).await
    }

    /// Hands a sandbox request to the scheduler of the leader at `addr`.
    pub async fn place_sandbox(
        &self,
        addr: &str,
        request: &SandboxRequest,
        timeout: Duration,
    ) -> Result<Result<Result<Sandbox, Rejection>, ForwardError>, NetError> {
        self.call(addr, Method::PlaceSandbox, request, timeout).await
    }

    /// Asks the node at `addr` to campaign for leadership now.
    pub async fn trigger_election(&self, addr: &str, timeout: Duration) -> Result<Result<(), ForwardError>, NetError> {
        self.call(addr, Method::TriggerElection, &(), timeout).await
    }

    /// Hands a membership change to the leader at `addr`.
    pub async fn change_membership(
        &self,
        addr: &str,
        change: &MembershipChange,
        timeout: Duration,
    ) -> Result<Result<MembershipChanged, ForwardError>, NetError> {
        self.call(addr, Method::ChangeMembership, change, timeout).await
    }

    /// Asks the leader at `addr` for a read index.
    pub async fn read_index(&self, addr: &str, timeout: Duration) -> Result<Result<u64, ForwardError>, NetError> {
        self.call(addr, Method::ReadIndex, &(), timeout).await
    }
}

#[derive(Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
    ForwardWrite,
    ReadIndex,
    PlaceSandbox,
    TriggerElection,
    ChangeMembership,
}

/// openraft's network factory over [`PeerClients`].
#[derive(Clone, Default)]
pub struct GrpcNetworkFactory {
    pub clients: PeerClients,
}

impl GrpcNetworkFactory {
    /// Peers are dialed with mutual TLS from the cluster CA.
    pub fn with_tls(tls: &tls::ClusterTls) -> Self {
        Self { clients: PeerClients::with_tls(tls) }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcPeer;

    async fn new_client(&mut self, target: NodeId, node: &CorralNode) -> Self::Network {
        GrpcPeer { target, addr: node.raft_addr.clone(), clients: self.clients.clone() }
    }
}

/// The connection to one Raft peer.
pub struct GrpcPeer {
    target: NodeId,
    addr: String,
    clients: PeerClients,
}

impl GrpcPeer {
    async fn raft_call<Req, Reply, E>(
        &self,
        method: Method,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, CorralNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Reply: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<Reply, RaftError<NodeId, E>> =
            self.clients.call(&self.addr, method, request, option.hard_ttl()).await.map_err(|e| match e {
                NetError::Unreachable { .. } | NetError::BadAddress { .. } => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, CorralNode, RaftError<NodeId>>> {
        self.raft_call(Method::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, CorralNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.raft_call(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, CorralNode, RaftError<NodeId>>> {
        self.raft_call(Method::Vote, &rpc, &option).await
    }
}

//! openraft's network over [`PeerClients`]: one [`GrpcPeer`] per target, carrying
//! AppendEntries, Vote and InstallSnapshot.

use corral_model::codec;
use corral_raft_types::{CorralNode, NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::liveness::RaftLiveness;
use crate::peer_clients::{Method, PeerClients};
use crate::{tls, NetError};

/// openraft's network factory over [`PeerClients`].
#[derive(Clone, Default)]
pub struct GrpcNetworkFactory {
    pub clients: PeerClients,
    /// Followers' acknowledgements of this node's leadership are recorded here.
    pub liveness: RaftLiveness,
}

impl GrpcNetworkFactory {
    /// Peers are dialed with mutual TLS from the cluster CA.
    pub fn with_tls(tls: &tls::ClusterTls, liveness: RaftLiveness) -> Self {
        Self { clients: PeerClients::with_tls(tls), liveness }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcPeer;

    async fn new_client(&mut self, target: NodeId, node: &CorralNode) -> Self::Network {
        GrpcPeer {
            target,
            addr: node.raft_addr.clone(),
            clients: self.clients.clone(),
            liveness: self.liveness.clone(),
        }
    }
}

/// The connection to one Raft peer.
pub struct GrpcPeer {
    target: NodeId,
    addr: String,
    clients: PeerClients,
    liveness: RaftLiveness,
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
        self.raft_result(self.clients.call(&self.addr, method, request, option.hard_ttl()).await)
    }

    fn raft_result<Reply, E>(
        &self,
        reply: Result<Result<Reply, RaftError<NodeId, E>>, NetError>,
    ) -> Result<Reply, RPCError<NodeId, CorralNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
    {
        let reply = reply.map_err(|e| match e {
            NetError::Unreachable { .. } | NetError::BadAddress { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            _ => RPCError::Network(NetworkError::new(&e)),
        })?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// The most one AppendEntries message may carry. An entry holds a batch of up to a thousand
/// commands, so `max_payload_entries` alone does not bound a message: a lagging follower could
/// be sent hundreds of megabytes in one call, over the gRPC limit and the call timeout. This
/// keeps each call a few tens of milliseconds of transfer, far below `MAX_MESSAGE_BYTES`.
pub const APPEND_ENTRIES_BUDGET_BYTES: usize = 8 * 1024 * 1024;

/// `None` when `bytes` for `entries` entries fit in `budget`; otherwise how many entries to send
/// instead (the same average entry size, at least one: a single entry is never split, and the
/// gRPC limit is far above the largest entry the leader builds).
pub fn entries_that_fit(entries: usize, bytes: usize, budget: usize) -> Option<u64> {
    if bytes <= budget || entries <= 1 {
        return None;
    }
    let fitting = (entries as u128 * budget as u128 / bytes as u128) as u64;
    Some(fitting.max(1))
}

/// How long openraft waits before it retries a follower after an error.
const REPLICATION_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// What openraft sees while this leader is fenced or handing off: the follower is unreachable
/// (it backs off and retries later).
pub fn replication_stopped<E: std::error::Error>() -> RPCError<NodeId, CorralNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
        "this leader stopped replicating (fenced, or handing off)",
    )))
}

impl RaftNetwork<TypeConfig> for GrpcPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, CorralNode, RaftError<NodeId>>> {
        if self.liveness.replication_stopped() {
            return Err(replication_stopped());
        }
        let entries = rpc.entries.len();
        let body = codec::encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Some(hint) = entries_that_fit(entries, body.len(), APPEND_ENTRIES_BUDGET_BYTES) {
            // openraft resends fewer entries at once (for the next few calls) and retries now.
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint)));
        }
        let term = rpc.vote.leader_id().term;
        let sent = tokio::time::Instant::now();
        let reply: AppendEntriesResponse<NodeId> = self
            .raft_result(self.clients.call_encoded(&self.addr, Method::AppendEntries, body, option.hard_ttl()).await)?;
        self.liveness.record_append_reply(self.target, term, sent, &reply);
        let kind = if entries == 0 { "commit_or_heartbeat" } else { "entries" };
        metrics::histogram!("corral_raft_append_entries_round_trip_seconds", "kind" => kind)
            .record(sent.elapsed().as_secs_f64());
        Ok(reply)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, CorralNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        if self.liveness.replication_stopped() {
            return Err(replication_stopped());
        }
        let (leader_vote, sent) = (rpc.vote, tokio::time::Instant::now());
        let chunk = SnapshotChunk::from(rpc);
        let reply: InstallSnapshotResponse<NodeId> = self.raft_call(Method::InstallSnapshot, &chunk, &option).await?;
        self.liveness.record_snapshot_reply(self.target, &leader_vote, sent, &reply);
        Ok(reply)
    }

    /// Retry soon: a replication that was stopped (fence, hand-off) resumes within a heartbeat
    /// or so once it may, instead of openraft's default 500 ms.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(REPLICATION_RETRY))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, CorralNode, RaftError<NodeId>>> {
        self.raft_call(Method::Vote, &rpc, &option).await
    }
}

/// openraft's `InstallSnapshotRequest` as it travels: the same fields, with the snapshot's
/// bytes as one byte string (serde writes a `Vec<u8>` as a list of numbers, which in JSON
/// took about 3.5 bytes per byte of snapshot).
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotChunk {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, CorralNode>,
    offset: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    done: bool,
}

impl From<InstallSnapshotRequest<TypeConfig>> for SnapshotChunk {
    fn from(rpc: InstallSnapshotRequest<TypeConfig>) -> Self {
        SnapshotChunk { vote: rpc.vote, meta: rpc.meta, offset: rpc.offset, data: rpc.data, done: rpc.done }
    }
}

impl From<SnapshotChunk> for InstallSnapshotRequest<TypeConfig> {
    fn from(chunk: SnapshotChunk) -> Self {
        InstallSnapshotRequest {
            vote: chunk.vote,
            meta: chunk.meta,
            offset: chunk.offset,
            data: chunk.data,
            done: chunk.done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::entries_that_fit;

    #[test]
    fn a_message_over_the_budget_asks_for_as_many_entries_as_fit() {
        assert_eq!(entries_that_fit(1_000, 100, 8), Some(80));
        assert_eq!(entries_that_fit(10, 5_000, 10_000), None);
        assert_eq!(entries_that_fit(64, 64 << 20, 8 << 20), Some(8));
        assert_eq!(entries_that_fit(3, 30 << 20, 8 << 20), Some(1), "never fewer than one");
        assert_eq!(entries_that_fit(1, 30 << 20, 8 << 20), None, "one entry is sent whole");
    }
}

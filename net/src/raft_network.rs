//! openraft's network over [`PeerClients`]: one [`GrpcPeer`] per target, carrying
//! AppendEntries, Vote and InstallSnapshot.

use corral_raft_types::{CorralNode, NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::peer_clients::{Method, PeerClients};
use crate::{tls, NetError};

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

//! [`PeerService`]: what a node answers to its peers' gRPC calls (net's [`LeaderService`]):
//! forwarded writes and sandbox placements, read indexes, pre-votes, campaigns and membership
//! changes, each on the node's own handles. `corral serve` builds it from its
//! [`crate::cluster::RaftCluster`]; the simulation (`corral-sim`) builds it from the same
//! handles and serves it over its simulated network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use corral_model::{Proposal, SandboxRequest};
use corral_net::{
    CommittedWrite, ForwardError, LeaderService, MembershipChange, MembershipChanged, PeerClients, PlacementReply,
    PreVoteReply, PreVoteRequest, RaftLiveness,
};
use corral_raft_types::{NodeId, Raft};

use crate::election::{LastLogReader, Timing};
use crate::leader::Leader;
use crate::scheduler::Scheduler;

/// The node's side of its peers' calls.
pub struct PeerService {
    pub node_id: NodeId,
    pub raft: Raft,
    pub leader: Leader,
    pub scheduler: Scheduler,
    /// When this node last heard from a leader (for pre-votes).
    pub liveness: RaftLiveness,
    pub last_log: LastLogReader,
    pub election: Timing,
    /// How a pre-vote's answer checks whether the old leader's port refuses connections.
    pub clients: PeerClients,
    /// Set while the node shuts down: it grants no pre-vote.
    pub draining: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl LeaderService for PeerService {
    async fn read_index(&self) -> Result<u64, ForwardError> {
        Ok(self.leader.read_index().await?)
    }

    async fn place_sandbox(&self, request: SandboxRequest) -> PlacementReply {
        Ok(self.scheduler.place(request).await?)
    }

    async fn write_one(&self, proposal: Proposal) -> Result<CommittedWrite, ForwardError> {
        Ok(self.leader.write(proposal).await?)
    }

    async fn pre_vote(&self, request: PreVoteRequest) -> PreVoteReply {
        let voter = crate::election::Voter {
            node_id: self.node_id,
            raft: &self.raft,
            leader: &self.leader,
            liveness: &self.liveness,
            last_log: &self.last_log,
            timing: &self.election,
            link: &self.clients,
            draining: self.draining.load(Ordering::Relaxed),
        };
        crate::election::answer_pre_vote(&voter, &request).await
    }

    async fn campaign(&self) -> Result<(), ForwardError> {
        Ok(self.leader.campaign().await?)
    }

    async fn change_membership(&self, change: MembershipChange) -> Result<MembershipChanged, ForwardError> {
        Ok(self.leader.change_membership(change).await?)
    }
}

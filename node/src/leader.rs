//! [`Leader`]: the operations only the leader performs, on this node's Raft. Each answers
//! [`LeaderError::NotLeader`] (with the leader, when known) on a node that does not lead, so
//! the caller can go there instead. The scheduler commits through it; the node's handle
//! ([`crate::cluster::RaftCluster`]) runs these locally or forwards them to the leader.

use std::collections::BTreeSet;

use corral_model::Proposal;
use corral_net::{CommittedWrite, ForwardError, MembershipChange, MembershipChanged};
use corral_raft_types::{CorralNode, NodeId, Raft};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

/// Why a leader operation could not run here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaderError {
    #[error("this node is not the leader (leader: {leader_id:?})")]
    NotLeader { leader_id: Option<NodeId>, leader: Option<CorralNode> },
    #[error("raft is unavailable: {0}")]
    Unavailable(String),
    #[error("the scheduler queue is full; retry shortly")]
    Overloaded,
}

/// What a follower receives over gRPC when the leader could not serve it.
impl From<LeaderError> for ForwardError {
    fn from(e: LeaderError) -> Self {
        match e {
            LeaderError::NotLeader { leader_id, leader } => ForwardError::NotLeader { leader_id, leader },
            LeaderError::Unavailable(msg) => ForwardError::Unavailable(msg),
            LeaderError::Overloaded => ForwardError::Overloaded,
        }
    }
}

/// The leader operations on this node's Raft; cheap to clone.
#[derive(Clone)]
pub struct Leader {
    raft: Raft,
}

impl Leader {
    pub fn new(raft: Raft) -> Self {
        Leader { raft }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Whether this node leads, as far as its metrics say now.
    pub fn leads(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(m.id)
    }

    /// `Some(NotLeader)` when this node does not lead (as far as its metrics say now).
    pub fn not_leader(&self) -> Option<LeaderError> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader != Some(m.id)).then(|| LeaderError::NotLeader {
            leader_id: m.current_leader,
            leader: m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned()),
        })
    }

    /// Commits `proposal` and returns what `apply` answered, with the entry's index.
    pub async fn write(&self, proposal: Proposal) -> Result<CommittedWrite, LeaderError> {
        self.raft
            .client_write(proposal)
            .await
            .map(|reply| CommittedWrite { log_index: reply.log_id.index, response: reply.data })
            .map_err(client_write_error)
    }

    /// The read index: confirms leadership with a quorum and returns the log index a reader
    /// must have applied before serving a linearizable read.
    pub async fn read_index(&self) -> Result<u64, LeaderError> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(LeaderError::NotLeader { leader_id: f.leader_id, leader: f.leader_node })
            }
            Err(e) => Err(LeaderError::Unavailable(e.to_string())),
        }
    }

    /// Starts an election on this node now (asked by a leader handing off before it stops).
    pub async fn campaign(&self) -> Result<(), LeaderError> {
        self.raft.trigger().elect().await.map_err(|e| LeaderError::Unavailable(e.to_string()))
    }

    /// Adds a node (as a learner, then, once caught up, a voter) or removes a voter.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<MembershipChanged, LeaderError> {
        let voters = || -> BTreeSet<NodeId> {
            self.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
        };
        let reply = match change {
            MembershipChange::Add { node_id, node } => {
                self.raft.add_learner(node_id, node, true).await.map_err(client_write_error)?;
                let mut voters = voters();
                voters.insert(node_id);
                self.raft.change_membership(voters, false).await.map_err(client_write_error)?
            }
            MembershipChange::Remove { node_id } => {
                let mut voters = voters();
                if !voters.remove(&node_id) {
                    return Err(LeaderError::Unavailable(format!("node {node_id} is not a voter")));
                }
                if voters.is_empty() {
                    return Err(LeaderError::Unavailable("cannot remove the last voter".into()));
                }
                self.raft.change_membership(voters, false).await.map_err(client_write_error)?
            }
        };
        let membership = reply.membership.clone().unwrap_or_default();
        Ok(MembershipChanged {
            log_index: reply.log_id.index,
            voters: membership.voter_ids().collect(),
            members: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        })
    }
}

/// A failed client write (or membership change) as the caller needs to see it.
fn client_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, CorralNode>>) -> LeaderError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            LeaderError::NotLeader { leader_id: f.leader_id, leader: f.leader_node }
        }
        other => LeaderError::Unavailable(other.to_string()),
    }
}

//! The leader operations a follower asks of the leader over gRPC, as types on the wire and as
//! the [`LeaderService`] trait the gRPC server calls. The node implements the trait (its
//! leader handle and scheduler); this crate only carries the calls.

use corral_model::{ApplyResult, Proposal, Rejection, SandboxRequest, SharedSandbox};
use corral_raft_types::{CorralNode, NodeId};
use serde::{Deserialize, Serialize};

/// Why the leader side of ForwardWrites/ReadIndex could not serve a request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("this node is not the leader (leader: {leader_id:?})")]
    NotLeader { leader_id: Option<NodeId>, leader: Option<CorralNode> },
    #[error("raft is unavailable: {0}")]
    Unavailable(String),
    #[error("the leader's queue is full; retry shortly")]
    Overloaded,
}

/// A pre-vote (asked of every voter before a node campaigns): would the voter elect `candidate`
/// now? Asking changes nothing on the voter, so a node that was cut off, paused or is behind
/// can ask as often as it likes without raising any term.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The candidate's last log entry as (term, index); `None` for an empty log.
    pub last_log: Option<(u64, u64)>,
    /// The node whose leadership wrote that entry (`None` from nodes older than this field).
    #[serde(default)]
    pub last_log_leader: Option<NodeId>,
    /// The leader the candidate found dead: its Raft port refused a connection, so no process
    /// listens there. A voter that also finds that port closed, and has not heard from a
    /// leader for a few heartbeats, need not wait out the whole lease.
    #[serde(default)]
    pub leader_down: Option<NodeId>,
}

/// A log entry's position as openraft orders logs when it grants a vote: by the leadership
/// that wrote it, (term, node), then by index. openraft 0.9's leader ids are (term, node), so
/// two nodes can lead one after the other in one term, and (term, index) alone would rank a
/// log wrongly against openraft's own judgement.
pub type LogPosition = (u64, NodeId, u64);

impl PreVoteRequest {
    /// Where the candidate's log ends ([`LogPosition`]); a request from an older node that
    /// does not send the leader counts as written by node 0.
    pub fn last_log_position(&self) -> Option<LogPosition> {
        self.last_log.map(|(term, index)| (term, self.last_log_leader.unwrap_or(0), index))
    }
}

/// A fenced leader's question to a voter: do you still follow `leader` in `term`? The voter
/// answers from its Raft metrics, touching nothing and counting nothing as leader contact, so
/// a leader that lost its acknowledgements only to load learns it still leads, while its
/// followers' election timers keep running as if it were silent.
///
/// A follower asks its leader the same question about the leader itself (`leader` is the
/// asked node): `Follows` means it still leads `term` and this follower's messages reach it,
/// so a leader behind a one-way cut (deaf) is found without waiting for it to fence.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeadershipProbe {
    pub term: u64,
    pub leader: NodeId,
}

/// A voter's answer to a [`LeadershipProbe`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ProbeReply {
    /// The voter follows the asking leader in its term.
    Follows,
    /// The voter knows a higher term than the probe's.
    HigherTerm(u64),
    /// Neither (same term, no leader or another one known; or a lower term).
    Other,
}

/// A voter's answer to a [`PreVoteRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PreVoteReply {
    pub granted: bool,
    /// Why not, when refused (for logs).
    pub reason: String,
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

/// A proposal committed and applied by the leader: the index of the entry that carried it
/// (with the proposals coalesced with it) and what `apply` answered to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommittedWrite {
    pub log_index: u64,
    pub response: ApplyResult,
}

/// A sandbox placement as the leader answers it.
pub type PlacementReply = Result<Result<SharedSandbox, Rejection>, ForwardError>;

/// What the leader serves to its followers, implemented by the node. Every method but
/// [`LeaderService::campaign`] acts on this node's Raft as leader and answers
/// [`ForwardError::NotLeader`] when it does not lead; `campaign` is asked of a follower.
#[tonic::async_trait]
pub trait LeaderService: Send + Sync + 'static {
    /// Commits one proposal from a follower (coalesced with the leader's own into shared
    /// entries).
    async fn write_one(&self, proposal: Proposal) -> Result<CommittedWrite, ForwardError>;
    /// Commits a follower's batch of proposals and answers each on its own, in order: queued
    /// one by one, back to back, so the leader's coalescer joins them into few entries.
    async fn write_batch(&self, proposals: Vec<Proposal>) -> Vec<Result<CommittedWrite, ForwardError>> {
        futures::future::join_all(proposals.into_iter().map(|p| self.write_one(p))).await
    }
    /// Confirms leadership with a quorum and returns the log index a linearizable reader must
    /// have applied.
    async fn read_index(&self) -> Result<u64, ForwardError>;
    /// Places one sandbox request from a follower.
    async fn place_sandbox(&self, request: SandboxRequest) -> PlacementReply;
    /// Places a follower's batch of sandbox requests, all at once; answers each, in order.
    async fn place_sandboxes(&self, requests: Vec<SandboxRequest>) -> Vec<PlacementReply> {
        futures::future::join_all(requests.into_iter().map(|r| self.place_sandbox(r))).await
    }
    /// Answers a pre-vote (asked of any voter).
    async fn pre_vote(&self, request: PreVoteRequest) -> PreVoteReply;
    /// Campaigns for leadership now (a leader hands off to this node before it stops).
    async fn campaign(&self) -> Result<(), ForwardError>;
    /// Runs a membership change.
    async fn change_membership(&self, change: MembershipChange) -> Result<MembershipChanged, ForwardError>;
}

//! What the API needs from the cluster, as a trait the node implements. The API never sees
//! openraft or gRPC; it proposes, waits for a read barrier, and reads the shared state.

use corral_model::health::SharedHealth;
use corral_model::{ApplyResult, Proposal, Rejection, SandboxRequest, SharedSandbox};
use corral_raft_types::SharedState;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("the cluster has no leader right now; retry shortly")]
    NoLeader,
    #[error("the cluster did not answer in time; the request may or may not have been applied")]
    Timeout,
    #[error("the cluster is unavailable: {0}")]
    Unavailable(String),
    #[error("the leader's queue is full; retry shortly")]
    Overloaded,
    #[error("internal error: {0}")]
    Internal(String),
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read started (read index).
    #[default]
    Linearizable,
    /// The serving node's local state, possibly behind.
    Stale,
}

/// One member of the Raft cluster, as reported by `GET /api/admin/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub node_id: u64,
    pub raft_addr: String,
    pub api_addr: String,
    pub voter: bool,
}

/// This node's view of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub node_id: u64,
    pub leader_id: Option<u64>,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub snapshots_built: u64,
    pub snapshots_installed: u64,
    pub members: Vec<MemberStatus>,
    /// Liveness of every node as this node's gossip (SWIM) sees it.
    pub gossip: Vec<GossipMemberStatus>,
    /// Runners this node holds a health report for.
    pub runners_reporting: u64,
}

/// A digest of this node's replica, as `GET /api/admin/cluster/hash` reports it: replicas
/// that have applied the same index must have the same hash. Computing it reads the whole
/// state (a second or more with a million objects), so it is its own call, never part of the
/// status that dashboards and scripts poll.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateHash {
    pub node_id: u64,
    /// The last log index applied to the state the hash covers.
    pub applied_index: Option<u64>,
    /// SHA-256 of the canonical encoding of the replicated state (see `State::hash`).
    pub state_hash: String,
}

/// One node as gossip sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GossipMemberStatus {
    pub node_id: u64,
    pub addr: String,
    /// `alive`, `suspect` or `down`.
    pub liveness: String,
}

/// A membership change asked for through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Add as a learner, wait for it to catch up, promote to voter.
    Add {
        node_id: u64,
        raft_addr: String,
        api_addr: String,
    },
    Remove {
        node_id: u64,
    },
}

/// The node-side handle the API drives.
#[async_trait::async_trait]
pub trait ClusterHandle: Send + Sync + 'static {
    /// Commits `proposal` through Raft (forwarding to the leader if needed) and returns what
    /// `apply` returned for it.
    async fn propose(&self, proposal: Proposal) -> Result<ApplyResult, ClusterError>;

    /// Hands a sandbox request to the leader's scheduler and returns the placed sandbox (or
    /// why it could not be placed) once the placement is applied.
    async fn create_sandbox(&self, request: SandboxRequest) -> Result<Result<SharedSandbox, Rejection>, ClusterError>;

    /// Returns once the local state may be read with the given consistency.
    async fn read_barrier(&self, consistency: ReadConsistency) -> Result<(), ClusterError>;

    /// Runs a membership change on the leader (forwarding if needed); returns the members after.
    async fn change_membership(&self, change: MemberChange) -> Result<Vec<MemberStatus>, ClusterError>;

    /// `Ok` when this node can serve: it knows a leader and its state machine is caught up
    /// with its log (cheap: called by load balancers every second).
    async fn readiness(&self) -> Result<(), String>;

    /// The local replica of the state.
    fn state(&self) -> &SharedState;

    /// This node's table of the latest health report per runner (soft state from gossip).
    fn health(&self) -> &SharedHealth;

    /// This node's view of the cluster (cheap: no pass over the state).
    async fn status(&self) -> ClusterStatus;

    /// The hash of this node's replica and the index it covers, computed off the async
    /// runtime (it reads the whole state).
    async fn state_hash(&self) -> Result<StateHash, ClusterError>;
}

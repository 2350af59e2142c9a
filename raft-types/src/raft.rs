//! openraft's type configuration for Corral: what a log entry carries ([`Proposal`]), what
//! applying it answers ([`ApplyResponse`]) and how members are addressed ([`CorralNode`]).
//! Types only: the storage crate implements openraft's storage traits over them, the net crate
//! its network, the node runs `Raft`.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use corral_model::{ApplyResult, Proposal};

pub type NodeId = u64;

/// A cluster member's addresses, as stored in Raft membership.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CorralNode {
    /// host:port of the node's gRPC (Raft) listener.
    pub raft_addr: String,
    /// host:port of the node's REST listener.
    pub api_addr: String,
}

impl fmt::Display for CorralNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// The state machine's reply to one applied entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplyResponse(pub ApplyResult);

openraft::declare_raft_types!(
    /// openraft types for Corral.
    pub TypeConfig:
        D = Proposal,
        R = ApplyResponse,
        NodeId = NodeId,
        Node = CorralNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

//! # corral-storage
//!
//! Owns Corral's replicated state and how it is kept on disk.
//!
//! - [`model`]: the data model (Region, Runner, Sandbox, Organization), the [`model::Command`]
//!   enum and the pure, deterministic [`model::apply`]. Nothing in `model` does I/O.
//! - `store` (feature `rocksdb`, on by default): the openraft log store (`LogStore`) and state
//!   machine (`StateMachineStore`) on one RocksDB database with three column families: `log`
//!   (entries by index), `meta` (vote, committed, last purged) and `state` (the latest snapshot
//!   of the state machine).
//! - [`runner_journal`]: per runner, which sandboxes changed in what order (replica-local), so
//!   runner sessions send changes without diffing a runner's whole set.
//! - [`shared`]: the state machine's in-memory data and the handle readers share.
//! - [`health`]: runner health reports and the per-node table of the latest one per runner
//!   (soft state: spread by gossip, never written to Raft).
//! - [`TypeConfig`]: the openraft type configuration every other crate uses.
//!
//! Invariants: a log append is acknowledged to openraft only after RocksDB has synced it (when
//! `fsync` is on); the state machine's in-memory [`model::State`] is exactly the fold of
//! `apply` over the applied entries, and it is what snapshots carry.
//!
//! Never: depend on `corral-node`, `corral-api` or `corral-net`; read a clock inside `apply`.

// openraft and tonic fix the error types; their size is not ours to shrink.
#![allow(clippy::result_large_err)]

pub mod health;
pub mod model;
pub mod runner_journal;
pub mod shared;
#[cfg(feature = "rocksdb")]
pub mod store;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use shared::{MachineData, SharedState};
#[cfg(feature = "rocksdb")]
pub use store::{open_storage, LogStore, StateMachineStore, StorageConfig, StorageError};

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
pub struct ApplyResponse(pub model::ApplyResult);

openraft::declare_raft_types!(
    /// openraft types for Corral.
    pub TypeConfig:
        D = model::Proposal,
        R = ApplyResponse,
        NodeId = NodeId,
        Node = CorralNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

//! The state machine's in-memory data and the handle readers share: storage applies to it,
//! the API and the node read it.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::{LogId, StoredMembership};

use crate::raft::{CorralNode, NodeId};
use corral_model::State;

/// The state machine's data, shared between openraft (which applies to it) and readers
/// (the REST API). Lock holders never await.
#[derive(Debug, Default)]
pub struct MachineData {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, CorralNode>,
    pub state: State,
    /// Index of the newest snapshot this node built or installed.
    pub snapshot_index: Option<u64>,
    pub snapshots_built: u64,
    pub snapshots_installed: u64,
    /// How long the newest snapshot this node built took (encode + write), in seconds.
    pub last_snapshot_build_seconds: f64,
    /// The weight of the commands applied since this process opened the store (one per object
    /// a command may change, `Command::weight`), and how much of it the newest snapshot
    /// covers: their difference is what a restart would replay. A log entry carries a batch
    /// of up to a thousand proposals, a placement command a batch of sandboxes, so this, not
    /// the entry count, decides when to build the next snapshot.
    pub commands_applied: u64,
    pub commands_at_snapshot: u64,
}

impl MachineData {
    /// Commands applied that the newest snapshot does not cover.
    pub fn commands_since_snapshot(&self) -> u64 {
        self.commands_applied.saturating_sub(self.commands_at_snapshot)
    }
}

/// Cheap-to-clone handle on the state machine's data.
#[derive(Debug, Clone, Default)]
pub struct SharedState(Arc<RwLock<MachineData>>);

impl SharedState {
    /// Read access; hold it briefly and never across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, MachineData> {
        // A poisoned lock means a panic inside apply, which already aborted the node's
        // invariants; serving the data is still better than taking the node down.
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Write access if nobody holds the lock now.
    pub fn try_write(&self) -> Option<std::sync::RwLockWriteGuard<'_, MachineData>> {
        match self.0.try_write() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Write access, for the state machine (apply, snapshot install); never across an await.
    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, MachineData> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

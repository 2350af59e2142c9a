//! Holds back a log purge that runs ahead of the snapshot that covers it.
//!
//! When a follower receives a snapshot, openraft 0.9 hands the snapshot to the state machine
//! (which decodes and stores it, seconds for a large state) and, without waiting for that,
//! tells the log store to purge every entry the snapshot covers. A crash in between left a
//! node whose stored snapshot was older than its purge point: on restart openraft had to
//! replay entries that no longer existed ("Failed to get log entries"), and the node could not
//! start again. Found by a 30-minute chaos run (stop 27).
//!
//! The gate keeps the rule that the log is purged only up to a durable snapshot: while a
//! snapshot is being received, a purge beyond the stored snapshot is held, and the state
//! machine runs it once the snapshot that covers it is stored. A crash before then loses
//! nothing: the old snapshot and the whole log are still there. A purge with no snapshot
//! stream under way (openraft's storage suite, which purges without snapshots) runs as asked.

use std::sync::{Arc, Mutex, MutexGuard};

use openraft::{LogId, StorageError};

use corral_raft_types::NodeId;

type RaftResult<T> = Result<T, StorageError<NodeId>>;

#[derive(Debug, Default)]
struct GateState {
    /// A snapshot stream has begun and its install has not ended.
    receiving: bool,
    /// The last log id of the snapshot on disk.
    stored: Option<LogId<NodeId>>,
    /// The furthest purge held back, to run once a stored snapshot covers it.
    held: Option<LogId<NodeId>>,
}

impl GateState {
    fn covers(&self, upto: LogId<NodeId>) -> bool {
        self.stored.is_some_and(|stored| stored.index >= upto.index)
    }
}

/// Shared by a node's log store and state machine (cheap to clone; clones are one gate).
/// Purges run under its lock, so a held purge and a later one never interleave.
#[derive(Debug, Clone, Default)]
pub(crate) struct PurgeGate(Arc<Mutex<GateState>>);

impl PurgeGate {
    /// A gate for a store whose snapshot on disk ends at `stored`.
    pub(crate) fn new(stored: Option<LogId<NodeId>>) -> PurgeGate {
        PurgeGate(Arc::new(Mutex::new(GateState { stored, ..GateState::default() })))
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A snapshot stream began (`begin_receiving_snapshot`).
    pub(crate) fn begin_receiving(&self) {
        self.lock().receiving = true;
    }

    /// openraft's purge up to `upto`: `purge` runs now, unless a snapshot is being received
    /// and the stored one does not cover `upto`; then it is held. Returns whether it ran.
    pub(crate) fn purge(
        &self,
        upto: LogId<NodeId>,
        purge: impl FnOnce(LogId<NodeId>) -> RaftResult<()>,
    ) -> RaftResult<bool> {
        let mut gate = self.lock();
        if gate.receiving && !gate.covers(upto) {
            gate.held = gate.held.max(Some(upto));
            tracing::info!(upto = upto.index, stored = ?gate.stored.map(|s| s.index), "log purge held until the snapshot is stored");
            return Ok(false);
        }
        purge(upto)?;
        Ok(true)
    }

    /// The snapshot ending at `last` is on disk (`installed`: the end of a received one).
    /// A held purge it covers runs now, through `purge`.
    pub(crate) fn snapshot_stored(
        &self,
        last: Option<LogId<NodeId>>,
        installed: bool,
        purge: impl FnOnce(LogId<NodeId>) -> RaftResult<()>,
    ) -> RaftResult<()> {
        let mut gate = self.lock();
        gate.stored = gate.stored.max(last);
        if installed {
            gate.receiving = false;
        }
        match gate.held {
            Some(held) if gate.covers(held) => {
                gate.held = None;
                tracing::info!(upto = held.index, "held log purge runs: its snapshot is stored");
                purge(held)
            }
            _ => Ok(()),
        }
    }

    /// The install of a received snapshot failed: nothing it would have covered is purged.
    pub(crate) fn install_failed(&self) {
        let mut gate = self.lock();
        gate.receiving = false;
        gate.held = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn at(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn record(ran: &mut Vec<u64>) -> impl FnOnce(LogId<NodeId>) -> RaftResult<()> + '_ {
        move |upto| {
            ran.push(upto.index);
            Ok(())
        }
    }

    #[test]
    fn a_purge_past_the_stored_snapshot_waits_for_the_install_and_no_purge_otherwise_waits() {
        let gate = PurgeGate::new(Some(at(10)));
        let mut ran = Vec::new();
        assert!(gate.purge(at(20), record(&mut ran)).expect("purge"), "no stream: runs as asked");
        gate.begin_receiving();
        assert!(gate.purge(at(8), record(&mut ran)).expect("purge"), "covered: runs");
        assert!(!gate.purge(at(30), record(&mut ran)).expect("purge"), "ahead of the snapshot: held");
        assert!(!gate.purge(at(25), record(&mut ran)).expect("purge"), "held");
        gate.snapshot_stored(Some(at(29)), false, record(&mut ran)).expect("build");
        assert_eq!(ran, vec![20, 8], "a snapshot short of the held purge releases nothing");
        gate.snapshot_stored(Some(at(30)), true, record(&mut ran)).expect("install");
        assert_eq!(ran, vec![20, 8, 30], "the install releases the furthest purge held");
        assert!(gate.purge(at(40), record(&mut ran)).expect("purge"), "the stream ended");
    }

    #[test]
    fn a_failed_install_drops_the_held_purge() {
        let gate = PurgeGate::new(None);
        gate.begin_receiving();
        assert!(!gate.purge(at(5), |_| panic!("must not run")).expect("purge"));
        gate.install_failed();
        gate.snapshot_stored(Some(at(9)), false, |_| panic!("dropped")).expect("build");
    }
}

//! Keeps the log's purge point behind the snapshot on disk.
//!
//! When a follower receives a snapshot, openraft 0.9 hands the snapshot to the state machine
//! (which decodes and stores it, seconds for a large state) and, without waiting for that,
//! tells the log store to purge every entry the snapshot covers. It also counts the snapshot
//! as committed at once, so entries after it may be appended meanwhile. A crash before the
//! snapshot was stored left a node whose purge point was past its stored snapshot (or whose
//! log had a hole between its old entries and the new ones): on restart openraft had to replay
//! entries that no longer existed ("Failed to get log entries"), and the node could not start
//! again. Found by a 30-minute chaos run (stop 27).
//!
//! The gate keeps one rule: the log is purged only up to a snapshot on disk.
//! - Once this store has begun receiving a snapshot, a purge beyond the stored snapshot waits
//!   until a snapshot that covers it is stored. openraft runs the purge on its core task, so
//!   the node appends nothing meanwhile: no hole either. The install it waits for was queued
//!   to the state machine's own task before the purge, and that task never waits on the core.
//!   A failed install fails the waiting purge (openraft treats both as fatal).
//! - A store that never received a snapshot purges as asked (openraft's storage suite purges
//!   with no snapshot at all; in a node, only a received snapshot moves the purge point past
//!   the stored one).
//! - A snapshot is stored only if it is newer than the one on disk: a build that captured an
//!   older state must not overwrite a snapshot installed meanwhile (the log may already be
//!   purged up to the newer one).

use std::sync::{Arc, Mutex, MutexGuard};

use openraft::{LogId, StorageError, StorageIOError};
use tokio::sync::watch;

use corral_raft_types::NodeId;

type RaftResult<T> = Result<T, StorageError<NodeId>>;

#[derive(Debug, Default)]
struct GateState {
    /// This store has begun receiving a snapshot (it stays set: a second stream may open
    /// before the first one's install ends).
    received_snapshots: bool,
    /// The last log id of the snapshot on disk.
    stored: Option<LogId<NodeId>>,
    /// An install failed; purges waiting for it fail too.
    install_failed: bool,
}

impl GateState {
    fn covers(&self, upto: LogId<NodeId>) -> bool {
        self.stored.is_some_and(|stored| stored.index >= upto.index)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a snapshot install failed; the log is not purged past the snapshot on disk")]
struct InstallFailed;

/// Shared by a node's log store and state machine (cheap to clone; clones are one gate).
/// Its state lock is held only for moments: openraft purges on its core task, which must not
/// wait for a snapshot write (seconds for a large state). Snapshot writes take turns on a lock
/// of their own, and a purge needs only the point stored before the write began (a write
/// replaces the snapshot on disk whole, with a newer one).
#[derive(Debug, Clone)]
pub(crate) struct PurgeGate {
    state: Arc<Mutex<GateState>>,
    /// Held while a snapshot is put in place (an install also writes it under it; a build
    /// encodes and writes a temporary file before): a build and an install never publish at once.
    writing: Arc<Mutex<()>>,
    /// Bumped whenever a snapshot is stored or an install fails: waiting purges look again.
    changed: Arc<watch::Sender<u64>>,
}

impl PurgeGate {
    /// A gate for a store whose snapshot on disk ends at `stored`.
    pub(crate) fn new(stored: Option<LogId<NodeId>>) -> PurgeGate {
        PurgeGate {
            state: Arc::new(Mutex::new(GateState { stored, ..GateState::default() })),
            writing: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A snapshot stream began (`begin_receiving_snapshot`).
    pub(crate) fn begin_receiving(&self) {
        self.lock().received_snapshots = true;
    }

    /// openraft's purge up to `upto`: runs `purge` once the rules above allow it.
    pub(crate) async fn purge(
        &self,
        upto: LogId<NodeId>,
        purge: impl FnOnce(LogId<NodeId>) -> RaftResult<()>,
    ) -> RaftResult<()> {
        let mut waited = false;
        loop {
            let mut changed = self.changed.subscribe();
            {
                let gate = self.lock();
                if !gate.received_snapshots || gate.covers(upto) {
                    if waited {
                        tracing::info!(upto = upto.index, "log purge runs: the snapshot that covers it is stored");
                    }
                    return purge(upto);
                }
                if gate.install_failed {
                    return Err(StorageIOError::write_logs(&InstallFailed).into());
                }
                if !waited {
                    tracing::info!(upto = upto.index, stored = ?gate.stored.map(|s| s.index), "log purge waits until the snapshot is stored");
                }
            }
            waited = true;
            // The sender lives as long as the gate; an error cannot happen while we hold it.
            let _ = changed.changed().await;
        }
    }

    /// Stores the snapshot ending at `last` with `save`, unless the one on disk is newer.
    /// Returns whether it was stored.
    pub(crate) fn store_snapshot(
        &self,
        last: Option<LogId<NodeId>>,
        save: impl FnOnce() -> RaftResult<()>,
    ) -> RaftResult<bool> {
        let _writing = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let stored = self.lock().stored;
        if stored.map(|s| s.index) > last.map(|l| l.index) {
            tracing::info!(
                index = ?last.map(|l| l.index),
                stored = ?stored.map(|s| s.index),
                "snapshot not stored: a newer one is on disk"
            );
            return Ok(false);
        }
        save()?;
        self.lock().stored = last;
        self.changed.send_modify(|version| *version += 1);
        Ok(true)
    }

    /// The install of a received snapshot failed: purges waiting for it fail.
    pub(crate) fn install_failed(&self) {
        self.lock().install_failed = true;
        self.changed.send_modify(|version| *version += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn at(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn a_purge_past_the_stored_snapshot_waits_for_a_snapshot_that_covers_it() {
        runtime().block_on(async {
            let gate = PurgeGate::new(Some(at(10)));
            let purged = Arc::new(AtomicU64::new(0));
            let record = |purged: &Arc<AtomicU64>| {
                let purged = purged.clone();
                move |upto: LogId<NodeId>| {
                    purged.store(upto.index, Ordering::SeqCst);
                    Ok(())
                }
            };
            gate.purge(at(20), record(&purged)).await.expect("purge");
            assert_eq!(purged.load(Ordering::SeqCst), 20, "a store that never received a snapshot purges as asked");

            gate.begin_receiving();
            gate.purge(at(8), record(&purged)).await.expect("purge");
            assert_eq!(purged.load(Ordering::SeqCst), 8, "covered by the stored snapshot: at once");

            let waiting = tokio::spawn({
                let (gate, record) = (gate.clone(), record(&purged));
                async move { gate.purge(at(30), record).await }
            });
            tokio::task::yield_now().await;
            assert!(gate.store_snapshot(Some(at(29)), || Ok(())).expect("store"));
            tokio::task::yield_now().await;
            assert_eq!(purged.load(Ordering::SeqCst), 8, "a snapshot short of the purge point releases nothing");
            assert!(!waiting.is_finished());
            assert!(gate.store_snapshot(Some(at(30)), || Ok(())).expect("store"));
            waiting.await.expect("join").expect("purge");
            assert_eq!(purged.load(Ordering::SeqCst), 30, "released once a snapshot covers it");
        });
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let gate = PurgeGate::new(Some(at(10)));
        assert!(gate.store_snapshot(Some(at(30)), || Ok(())).expect("store"));
        assert!(!gate.store_snapshot(Some(at(20)), || panic!("must not be written")).expect("store"));
        assert!(gate.store_snapshot(Some(at(30)), || Ok(())).expect("store"), "the same point may be rewritten");
    }

    #[test]
    fn a_failed_install_fails_the_waiting_purge() {
        runtime().block_on(async {
            let gate = PurgeGate::new(None);
            gate.begin_receiving();
            let waiting = tokio::spawn({
                let gate = gate.clone();
                async move { gate.purge(at(5), |_| panic!("must not run")).await }
            });
            tokio::task::yield_now().await;
            gate.install_failed();
            assert!(waiting.await.expect("join").is_err());
        });
    }
}

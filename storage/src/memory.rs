//! The log store on a simulated disk, for the simulation (`corral-sim`) and tests: the same
//! openraft contract as [`crate::LogStore`], with durability modelled instead of delegated
//! to RocksDB.
//!
//! A [`MemDisk`] is one node's disk; it outlives the node's processes. It keeps two images of
//! the log: what a read sees now (`visible`), and what would survive a power loss (`synced`).
//! Like the RocksDB store, an append is visible at once and reported durable (openraft's
//! `LogFlushed` callback) only when a sync covers it: the disk's syncer task makes every
//! write before it durable, `sync_delay` after the first one waiting (an fsync's latency, in
//! the simulation's time), then completes the callbacks in order. Votes and snapshots are
//! durable when written, as the RocksDB store syncs them; `committed` and truncations are
//! not, as there.
//!
//! [`MemDisk::crash`] is a power loss: every unsynced write is gone, waiting callbacks are
//! dropped, and every store opened before it fails from then on (the process that held them
//! is dead). [`open_memory`] then starts the node again on what survived.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, LogId, OptionalSend, RaftLogReader, SnapshotMeta, StorageError as RaftStorageError, StorageIOError, Vote,
};

use corral_model::injected::{injected, InjectedBug};
use corral_raft_types::{CorralNode, NodeId, SharedState, TypeConfig};

use crate::purge_gate::PurgeGate;
use crate::store::{SnapshotFile, StateMachineStore};
use crate::StorageError;

type RaftResult<T> = Result<T, RaftStorageError<NodeId>>;

/// One image of the log's files.
#[derive(Clone, Default)]
struct LogImage {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// A write that is visible but not yet durable.
#[derive(Clone)]
enum Unsynced {
    Append(Vec<Entry<TypeConfig>>),
    TruncateFrom(u64),
    Committed(Option<LogId<NodeId>>),
}

impl LogImage {
    fn apply(&mut self, write: &Unsynced) {
        match write {
            Unsynced::Append(entries) => {
                // A purge (durable at once) may have overtaken an append still unsynced.
                let purged = self.last_purged.map(|p| p.index);
                for e in entries.iter().filter(|e| purged.is_none_or(|p| e.log_id.index > p)) {
                    self.entries.insert(e.log_id.index, e.clone());
                }
            }
            Unsynced::TruncateFrom(index) => {
                self.entries.split_off(index);
            }
            Unsynced::Committed(c) => self.committed = *c,
        }
    }

    fn purge(&mut self, log_id: LogId<NodeId>) {
        self.last_purged = Some(log_id);
        self.entries = self.entries.split_off(&(log_id.index + 1));
    }
}

#[derive(Default)]
struct DiskImage {
    /// Bumped by every crash: stores opened before it refuse to work.
    generation: u64,
    visible: LogImage,
    synced: LogImage,
    unsynced: Vec<Unsynced>,
    /// Callbacks waiting for the next sync, in append order.
    waiting: Vec<LogFlushed<TypeConfig>>,
    snapshot: Option<(SnapshotMeta<NodeId, CorralNode>, Vec<u8>)>,
    snapshots_built: u64,
    /// Whether a syncer is due to run.
    sync_scheduled: bool,
}

/// One node's simulated disk (cheap to clone; clones are the same disk).
#[derive(Clone)]
pub struct MemDisk {
    image: Arc<Mutex<DiskImage>>,
    sync_delay: Duration,
}

impl MemDisk {
    /// An empty disk whose syncs take `sync_delay`.
    pub fn new(sync_delay: Duration) -> MemDisk {
        MemDisk { image: Arc::default(), sync_delay }
    }

    fn lock(&self) -> MutexGuard<'_, DiskImage> {
        self.image.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Power loss: unsynced writes vanish, waiting callbacks are dropped, stores opened
    /// before now stop working. Returns how many unsynced writes were lost.
    pub fn crash(&self) -> usize {
        let mut image = self.lock();
        image.generation += 1;
        image.visible = image.synced.clone();
        image.waiting.clear();
        image.sync_scheduled = false;
        std::mem::take(&mut image.unsynced).len()
    }

    /// The vote on the disk (votes are durable when written).
    pub fn vote(&self) -> Option<Vote<NodeId>> {
        self.lock().synced.vote
    }

    /// The last log id that a power loss now would keep.
    pub fn synced_last_log_id(&self) -> Option<LogId<NodeId>> {
        let image = self.lock();
        image.synced.entries.values().next_back().map(|e| e.log_id).or(image.synced.last_purged)
    }

    pub(crate) fn save_snapshot(&self, meta: &SnapshotMeta<NodeId, CorralNode>, data: &[u8]) -> RaftResult<()> {
        self.lock().snapshot = Some((meta.clone(), data.to_vec()));
        Ok(())
    }

    /// Purges the log up to `upto`, durable at once, as the RocksDB store syncs its purge point.
    pub(crate) fn purge_log(&self, upto: LogId<NodeId>) -> RaftResult<()> {
        let mut image = self.lock();
        image.visible.purge(upto);
        image.synced.purge(upto);
        Ok(())
    }

    pub(crate) fn snapshot(&self) -> Option<(SnapshotMeta<NodeId, CorralNode>, Vec<u8>)> {
        self.lock().snapshot.clone()
    }

    pub(crate) fn next_snapshot_number(&self) -> u64 {
        let mut image = self.lock();
        image.snapshots_built += 1;
        image.snapshots_built
    }

    /// Makes every write so far durable and completes the callbacks waiting, if the disk was
    /// not crashed since `generation`.
    fn sync(&self, generation: u64) {
        let waiting = {
            let mut image = self.lock();
            if image.generation != generation {
                return;
            }
            image.sync_scheduled = false;
            let unsynced = std::mem::take(&mut image.unsynced);
            for write in &unsynced {
                image.synced.apply(write);
            }
            std::mem::take(&mut image.waiting)
        };
        for callback in waiting {
            callback.log_io_completed(Ok(()));
        }
    }
}

/// The log store on a [`MemDisk`], as opened by one incarnation of a node.
#[derive(Clone)]
pub struct MemLogStore {
    disk: MemDisk,
    generation: u64,
    /// Keeps purges behind the stored snapshot, as on RocksDB.
    gate: PurgeGate,
}

#[derive(Debug, thiserror::Error)]
#[error("the disk was crashed after this store was opened")]
struct Crashed;

impl MemLogStore {
    fn image(&self) -> Result<MutexGuard<'_, DiskImage>, StorageIOError<NodeId>> {
        let image = self.disk.lock();
        if image.generation != self.generation {
            return Err(StorageIOError::write_logs(&Crashed));
        }
        Ok(image)
    }

    /// The id of the last log entry a read sees now (the last purged one when the log is
    /// empty after a snapshot), as `get_log_state` gives it.
    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        let image = self.disk.lock();
        image.visible.entries.values().next_back().map(|e| e.log_id).or(image.visible.last_purged)
    }

    fn write(&self, write: Unsynced) -> RaftResult<()> {
        let mut image = self.image()?;
        image.visible.apply(&write);
        image.unsynced.push(write);
        Ok(())
    }
}

/// Opens the node's stores on `disk` (after a crash: on what survived): the log store, the
/// state machine (loaded from the disk's snapshot), and the shared state readers use.
pub fn open_memory(disk: &MemDisk) -> Result<(MemLogStore, StateMachineStore, SharedState), StorageError> {
    let generation = disk.lock().generation;
    let shared = SharedState::default();
    let snapshots = SnapshotFile::Memory(disk.clone());
    let gate = PurgeGate::new(StateMachineStore::restore(&snapshots, &shared)?);
    let log = MemLogStore { disk: disk.clone(), generation, gate: gate.clone() };
    Ok((log, StateMachineStore::new(snapshots, shared.clone(), gate), shared))
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> RaftResult<Vec<Entry<TypeConfig>>> {
        let image = self.image()?;
        Ok(image.visible.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> RaftResult<LogState<TypeConfig>> {
        let image = self.image()?;
        let last_purged_log_id = image.visible.last_purged;
        let last_log_id = image.visible.entries.values().next_back().map(|e| e.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> RaftResult<()> {
        let mut image = self.image()?;
        image.visible.vote = Some(*vote);
        image.synced.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> RaftResult<Option<Vote<NodeId>>> {
        Ok(self.image()?.visible.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> RaftResult<()> {
        self.write(Unsynced::Committed(committed))
    }

    async fn read_committed(&mut self) -> RaftResult<Option<LogId<NodeId>>> {
        Ok(self.image()?.visible.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> RaftResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let start_syncer = {
            let mut image = self.image()?;
            let write = Unsynced::Append(entries.into_iter().collect());
            image.visible.apply(&write);
            image.unsynced.push(write);
            if injected(InjectedBug::FlushBeforeFsync) {
                drop(image);
                callback.log_io_completed(Ok(()));
                false
            } else {
                image.waiting.push(callback);
                !std::mem::replace(&mut image.sync_scheduled, true)
            }
        };
        if start_syncer {
            let disk = self.disk.clone();
            let generation = self.generation;
            tokio::spawn(async move {
                tokio::time::sleep(disk.sync_delay).await;
                disk.sync(generation);
            });
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> RaftResult<()> {
        self.write(Unsynced::TruncateFrom(log_id.index))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> RaftResult<()> {
        drop(self.image()?);
        self.gate.purge(log_id, |upto| self.disk.purge_log(upto)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload: EntryPayload::Blank }
    }

    fn indexes(store: &MemLogStore) -> Vec<u64> {
        store.disk.lock().visible.entries.keys().copied().collect()
    }

    #[test]
    fn a_crash_keeps_what_was_synced_and_loses_the_rest_and_the_old_store() {
        let disk = MemDisk::new(Duration::ZERO);
        let (log, _sm, _shared) = open_memory(&disk).expect("open");
        log.write(Unsynced::Append(vec![blank(1, 1), blank(1, 2)])).expect("append");
        disk.sync(log.generation);
        log.write(Unsynced::Append(vec![blank(1, 3)])).expect("append");
        log.write(Unsynced::TruncateFrom(2)).expect("truncate");
        assert_eq!(indexes(&log), vec![1]);
        assert_eq!(disk.crash(), 2);
        let (reopened, _sm, _shared) = open_memory(&disk).expect("reopen");
        assert_eq!(indexes(&reopened), vec![1, 2], "the synced entries survive, the unsynced truncate does not");
        assert_eq!(disk.synced_last_log_id().map(|l| l.index), Some(2));
        assert!(log.write(Unsynced::Committed(None)).is_err(), "a store from before the crash is dead");
        disk.sync(log.generation);
        assert_eq!(indexes(&reopened), vec![1, 2], "a sync from before the crash does nothing");
    }

    #[test]
    fn a_purge_is_durable_and_not_undone_by_an_older_unsynced_append() {
        let disk = MemDisk::new(Duration::ZERO);
        let (log, _sm, _shared) = open_memory(&disk).expect("open");
        log.write(Unsynced::Append(vec![blank(1, 1), blank(1, 2), blank(1, 3)])).expect("append");
        {
            let mut image = disk.lock();
            let purge_at = LogId::new(CommittedLeaderId::new(1, 1), 2);
            image.visible.purge(purge_at);
            image.synced.purge(purge_at);
        }
        disk.sync(log.generation);
        disk.crash();
        let (reopened, _sm, _shared) = open_memory(&disk).expect("reopen");
        assert_eq!(indexes(&reopened), vec![3]);
    }

    #[test]
    fn a_purge_ahead_of_a_received_snapshot_waits_until_the_snapshot_is_stored() {
        use openraft::storage::RaftStateMachine;
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async {
            let disk = MemDisk::new(Duration::ZERO);
            let (log, mut sm, _shared) = open_memory(&disk).expect("open");
            log.write(Unsynced::Append(vec![blank(1, 1), blank(1, 2)])).expect("append");
            disk.sync(log.generation);
            sm.begin_receiving_snapshot().await.expect("begin receiving");
            let snapshot_end = LogId::new(CommittedLeaderId::new(1, 1), 9);
            let spawn_purge = |log: &MemLogStore| {
                let mut log = log.clone();
                tokio::spawn(async move { log.purge(snapshot_end).await })
            };
            let purge = spawn_purge(&log);
            tokio::task::yield_now().await;
            assert!(!purge.is_finished(), "the purge waits for the snapshot");
            purge.abort();
            disk.crash();
            let (log, mut sm, _shared) = open_memory(&disk).expect("reopen");
            assert_eq!(indexes(&log), vec![1, 2], "a crash before the install leaves the log whole");

            sm.begin_receiving_snapshot().await.expect("begin receiving");
            let purge = spawn_purge(&log);
            tokio::task::yield_now().await;
            assert_eq!(indexes(&log), vec![1, 2], "nothing purged before the install");
            let meta = SnapshotMeta {
                last_log_id: Some(snapshot_end),
                last_membership: openraft::StoredMembership::default(),
                snapshot_id: "test".to_string(),
            };
            let data = corral_model::State::default().encode().expect("encode");
            sm.install_snapshot(&meta, Box::new(std::io::Cursor::new(data))).await.expect("install");
            purge.await.expect("join").expect("purge");
            assert_eq!(indexes(&log), Vec::<u64>::new(), "purged once the snapshot is stored");
            let mut log = log;
            assert_eq!(log.get_log_state().await.expect("state").last_purged_log_id, Some(snapshot_end));
        });
    }
}

//! The openraft log store and state machine on RocksDB.
//!
//! One database, three column families:
//! - `log`: key = log index as 8 big-endian bytes (so iteration order is index order),
//!   value = the `Entry` in Corral's binary encoding (`corral_model::codec`; entries written
//!   before it are JSON and still read).
//! - `meta`: `vote`, `committed`, `last_purged` (the same encoding).
//! - `state`: `snapshot_meta` and `snapshot_data`, where nodes before stop 30 kept their
//!   snapshot (still read when the file below is absent).
//!
//! The snapshot (meta and encoded [`State`]) is a file of its own, `corral-snapshot` in the
//! database's directory (RocksDB leaves files it did not name alone): written to a temporary
//! file, synced and renamed over the old one, so the disk always holds one whole snapshot. In
//! RocksDB, a snapshot of 150 MB went through the WAL as one write that every log append queued
//! behind (RocksDB has one write queue) for the second or more the write and its sync took,
//! stalling openraft's core on the leader under load; and then through memtable, flush and
//! compaction, three more copies.
//!
//! Group commit: [`RaftLogStorage::append`] writes its entries to RocksDB unsynced (so they are
//! readable at once, as openraft requires) and hands openraft's "flushed" callback to the log
//! syncer, a thread of its own ([`LogSyncer`]). The syncer takes every callback waiting, makes
//! the WAL durable with one `fsync` (`flush_wal(true)`, which covers every write before it), and
//! only then completes them, in order. openraft's core loop never waits on the disk, and appends
//! that arrive while an fsync runs share the next one. Nothing is reported flushed before it is
//! on disk, so nothing is acknowledged before it is.
//!
//! The state machine lives in memory ([`SharedState`]) and is rebuilt on start from the last
//! snapshot plus a replay of the committed log that follows it (openraft does the replay, from
//! `read_committed`). Log entries are MessagePack, a self-describing format, because openraft's
//! types use `#[serde(flatten)]`, which bincode or postcard cannot decode.

use std::fmt::Debug;
use std::io::{Cursor, Write};
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError as RaftStorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

use corral_model::codec::{self, CodecError};
use corral_model::state::ReplicatedView;
use corral_model::State;
use corral_raft_types::{ApplyResponse, CorralNode, NodeId, SharedState, TypeConfig};

use crate::direct_file::{direct_io_in, SnapshotWriter};
use crate::purge_gate::PurgeGate;
use crate::recent::RecentEntries;

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const CF_STATE: &str = "state";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// The snapshot's file, in the database's directory.
const SNAPSHOT_FILE: &str = "corral-snapshot";
const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"snapshot_data";

type RaftResult<T> = Result<T, RaftStorageError<NodeId>>;

/// How the store treats durability.
#[derive(Debug, Clone, Copy)]
pub struct StorageConfig {
    /// Sync the RocksDB WAL before acknowledging a log append, vote or snapshot. Turning this
    /// off trades durability of the last few writes on power loss for throughput.
    pub fsync: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { fsync: true }
    }
}

/// Errors opening the store (crate boundary; openraft's own error type covers the rest).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("stored snapshot is unreadable: {0}")]
    CorruptSnapshot(String),
    #[error("cannot start the log syncer thread: {0}")]
    Syncer(#[from] std::io::Error),
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily, StorageIOError<NodeId>> {
    db.cf_handle(name).ok_or_else(|| StorageIOError::read(&MissingColumnFamily(name.to_string())))
}

#[derive(Debug, thiserror::Error)]
#[error("column family '{0}' is missing")]
struct MissingColumnFamily(String);

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn write_options(config: StorageConfig) -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(config.fsync);
    opts
}

/// Opens (or creates) the database under `dir` and returns the two openraft halves plus the
/// shared state handle readers use.
pub fn open_storage(
    dir: &Path,
    config: StorageConfig,
) -> Result<(LogStore, StateMachineStore, SharedState), StorageError> {
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    // Memtable flushes and compactions write past the page cache too (see `direct_file`):
    // under load they wrote the log a second time at the same cost per byte as snapshots.
    // What they write is read back rarely (the newest entries are served from memory).
    let direct_io = direct_io_in(dir);
    db_opts.set_use_direct_io_for_flush_and_compaction(direct_io);
    let cfs = [CF_LOG, CF_META, CF_STATE].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = Arc::new(DB::open_cf_descriptors(&db_opts, dir, cfs)?);

    let shared = SharedState::default();
    let snapshots = SnapshotFile::Rocks { db: db.clone(), config, direct_io };
    let gate = PurgeGate::new(StateMachineStore::restore(&snapshots, &shared)?);
    let syncer = LogSyncer::start(&db, config)?;
    let log = LogStore { db, config, syncer, gate: gate.clone(), recent: Arc::default() };
    Ok((log, StateMachineStore::new(snapshots, shared.clone(), gate), shared))
}

/// The Raft log and hard state (vote, committed) in RocksDB.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    config: StorageConfig,
    syncer: LogSyncer,
    /// Keeps purges behind the stored snapshot (see [`PurgeGate`]).
    gate: PurgeGate,
    /// The newest entries, decoded ([`RecentEntries`]). Every write to the `log` column family
    /// happens under this lock, with the matching change here.
    recent: Arc<Mutex<RecentEntries>>,
}

/// How many appends may wait for the syncer; a full queue makes `append` wait (backpressure on
/// openraft), never drops one.
const SYNC_QUEUE: usize = 4_096;

/// One append waiting to be made durable.
struct PendingSync {
    entries: usize,
    callback: LogFlushed<TypeConfig>,
}

/// The group-commit thread's queue (see the module doc). Cheap to clone; the thread stops when
/// the last clone is dropped.
#[derive(Clone)]
struct LogSyncer {
    queue: tokio::sync::mpsc::Sender<PendingSync>,
}

impl LogSyncer {
    fn start(db: &Arc<DB>, config: StorageConfig) -> std::io::Result<LogSyncer> {
        let (queue, pending) = tokio::sync::mpsc::channel(SYNC_QUEUE);
        // A weak handle: the stores own the database, so it closes when they are dropped, on
        // their thread, never left open for RocksDB's static destructors at process exit.
        let db = Arc::downgrade(db);
        std::thread::Builder::new().name("corral-log-sync".into()).spawn(move || sync_forever(&db, config, pending))?;
        Ok(LogSyncer { queue })
    }
}

/// The syncer thread: one fsync per group of waiting appends, then their callbacks in order.
fn sync_forever(db: &Weak<DB>, config: StorageConfig, mut pending: tokio::sync::mpsc::Receiver<PendingSync>) {
    let mut group = Vec::new();
    while let Some(first) = pending.blocking_recv() {
        group.push(first);
        while let Ok(next) = pending.try_recv() {
            group.push(next);
        }
        let started = Instant::now();
        let synced = match db.upgrade() {
            Some(db) if config.fsync => db.flush_wal(true).map_err(|e| e.to_string()),
            Some(_) => Ok(()),
            None => Err("the database is closed".to_string()),
        };
        metrics::histogram!("corral_raft_fsync_duration_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("corral_raft_appends_per_fsync").record(group.len() as f64);
        let entries: usize = group.iter().map(|p| p.entries).sum();
        metrics::histogram!("corral_raft_entries_per_fsync").record(entries as f64);
        for waiting in group.drain(..) {
            let result = match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(format!("log fsync failed: {e}"))),
            };
            waiting.callback.log_io_completed(result);
        }
        if let Err(e) = synced {
            tracing::error!(error = %e, "log fsync failed; the appends waiting on it were reported failed");
        }
    }
}

impl LogStore {
    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageIOError<NodeId>> {
        let meta = cf(&self.db, CF_META)?;
        let Some(bytes) = self.db.get_cf(meta, key).map_err(|e| StorageIOError::read(&e))? else {
            return Ok(None);
        };
        codec::decode(&bytes).map(Some).map_err(|e| StorageIOError::read(&e))
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageIOError<NodeId>> {
        let meta = cf(&self.db, CF_META)?;
        let bytes = codec::encode(value).map_err(|e| StorageIOError::write(&e))?;
        self.db.put_cf_opt(meta, key, bytes, &write_options(self.config)).map_err(|e| StorageIOError::write(&e))
    }

    /// Deletes the log up to `upto` and records the purge point. The point is recorded first:
    /// a crash between the two steps leaves extra entries, which get_log_state tolerates, never
    /// a gap.
    fn delete_through(&self, upto: LogId<NodeId>) -> RaftResult<()> {
        self.put_meta(KEY_LAST_PURGED, &upto)?;
        let log = cf(&self.db, CF_LOG)?;
        let mut recent = self.recent();
        self.db
            .delete_range_cf(log, index_key(0), index_key(upto.index.saturating_add(1)))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        recent.purge_through(upto.index);
        Ok(())
    }

    fn recent(&self) -> MutexGuard<'_, RecentEntries> {
        // The lock guards no invariant a panic could break halfway: clear what it keeps.
        self.recent.lock().unwrap_or_else(|poisoned| {
            let mut recent = poisoned.into_inner();
            recent.clear();
            recent
        })
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageIOError<NodeId>> {
        let log = cf(&self.db, CF_LOG)?;
        let Some(item) = self.db.iterator_cf(log, IteratorMode::End).next() else {
            return Ok(None);
        };
        let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
        let entry: Entry<TypeConfig> = codec::decode(&value).map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(Some(entry.log_id))
    }
}

impl LogStore {
    /// Writes `entries` in one RocksDB batch, synced when `fsync` is on: an append with its
    /// own fsync, as before group commit. Public so the benchmark can measure it without
    /// openraft.
    pub fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<(), StorageIOError<NodeId>> {
        self.write_log(entries, &write_options(self.config)).map(|_| ())
    }

    /// Writes `entries` to the log in one RocksDB batch with `options`, keeps them among the
    /// recent entries, and says how many there were.
    fn write_log(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
        options: &WriteOptions,
    ) -> Result<usize, StorageIOError<NodeId>> {
        let log = cf(&self.db, CF_LOG)?;
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut batch = WriteBatch::default();
        for entry in &entries {
            let bytes = codec::encode(entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.put_cf(log, index_key(entry.log_id.index), bytes);
        }
        let count = entries.len();
        let mut recent = self.recent();
        self.db.write_opt(batch, options).map_err(|e| StorageIOError::write_logs(&e))?;
        for entry in entries {
            recent.appended(entry);
        }
        Ok(count)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> RaftResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        if let Some(entries) = self.recent().read(start, &range) {
            metrics::counter!("corral_raft_log_reads_total", "from" => "memory").increment(1);
            return Ok(entries);
        }
        metrics::counter!("corral_raft_log_reads_total", "from" => "rocksdb").increment(1);
        let log = cf(&self.db, CF_LOG)?;
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(log, IteratorMode::From(&index_key(start), Direction::Forward)) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = key.as_ref().try_into().map(u64::from_be_bytes).map_err(|e| StorageIOError::read_logs(&e))?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> = codec::decode(&value).map_err(|e| StorageIOError::read_logs(&e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> RaftResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(KEY_LAST_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> RaftResult<()> {
        self.put_meta(KEY_VOTE, vote).map_err(|e| RaftStorageError::IO { source: e })
    }

    async fn read_vote(&mut self) -> RaftResult<Option<Vote<NodeId>>> {
        Ok(self.get_meta(KEY_VOTE)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> RaftResult<()> {
        // Not synced: losing it only means replaying less on restart; the leader re-sends it.
        let meta = cf(&self.db, CF_META)?;
        let bytes = codec::encode(&committed).map_err(|e| StorageIOError::write(&e))?;
        self.db.put_cf(meta, KEY_COMMITTED, bytes).map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> RaftResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> RaftResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Written unsynced (readable now); the syncer makes it durable and then calls back.
        let written = self.write_log(entries, &WriteOptions::default());
        let entries = match written {
            Ok(count) => count,
            Err(e) => {
                // openraft must hear of the outcome either way; the error is also returned.
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                return Err(e.into());
            }
        };
        if corral_model::injected::injected(corral_model::injected::InjectedBug::FlushBeforeFsync) {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        if let Err(refused) = self.syncer.queue.send(PendingSync { entries, callback }).await {
            let e = std::io::Error::other("the log syncer has stopped");
            refused.0.callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(StorageIOError::write_logs(&e).into());
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> RaftResult<()> {
        let log = cf(&self.db, CF_LOG)?;
        let mut recent = self.recent();
        self.db
            .delete_range_cf(log, index_key(log_id.index), index_key(u64::MAX))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        recent.truncate_from(log_id.index);
        // delete_range does not cover u64::MAX itself; no real log reaches it.
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> RaftResult<()> {
        self.gate.purge(log_id, |upto| self.delete_through(upto)).await
    }
}

/// The state machine: applies committed entries to the shared [`State`] and keeps the latest
/// snapshot in the `state` column family.
#[derive(Clone)]
pub struct StateMachineStore {
    snapshots: SnapshotFile,
    shared: SharedState,
    /// Shared with the log store: a purge waits for the snapshot that covers it.
    gate: PurgeGate,
}

/// A snapshot as stored: its meta and the encoded state.
type StoredSnapshot = (SnapshotMeta<NodeId, CorralNode>, Vec<u8>);

/// Where the data of a snapshot being saved comes from.
enum SnapshotBody<'a> {
    /// Encoded already: a snapshot received from the leader.
    Encoded(&'a [u8]),
    /// A view of this node's state, encoded as it is written: a build never holds its
    /// encoding in memory. A buffer of the snapshot's size cost a build as much CPU faulting
    /// in its pages as the encoding itself, and its size again in peak memory. Dropped once
    /// written, before the sync: while a view lives, `apply` copies the nodes it changes.
    View(ReplicatedView),
}

impl SnapshotBody<'_> {
    fn write_to<W: Write>(self, out: &mut W) -> std::io::Result<()> {
        match self {
            SnapshotBody::Encoded(data) => out.write_all(data),
            SnapshotBody::View(view) => view.encode_to(out).map_err(|e| match e {
                CodecError::Write(e) => e,
                other => std::io::Error::other(other),
            }),
        }
    }
}

/// Where the state machine keeps its latest snapshot: the `state` column family, or the
/// simulated disk of [`crate::memory`].
#[derive(Clone)]
pub(crate) enum SnapshotFile {
    /// `direct_io`: whether the database's directory takes `O_DIRECT` writes ([`direct_io_in`]).
    Rocks {
        db: Arc<DB>,
        config: StorageConfig,
        direct_io: bool,
    },
    Memory(crate::memory::MemDisk),
}

/// A snapshot written but not yet in place: [`SnapshotFile::stage`] writes it (outside the
/// gate's write lock, for a build: encoding a large state takes seconds, and an install or the
/// purge waiting for it must not wait for that), [`SnapshotFile::publish`] puts it in place.
enum StagedSnapshot {
    /// A synced temporary file in the database's directory, and its data's size in bytes.
    File {
        temporary: std::path::PathBuf,
        bytes: u64,
    },
    Memory(Vec<u8>),
}

/// The temporary file a build stages its snapshot in; an install writes its own.
const BUILD_TEMPORARY: &str = "build.tmp";
/// The temporary file an install stages a received snapshot in.
const INSTALL_TEMPORARY: &str = "tmp";

impl SnapshotFile {
    /// Writes the snapshot `meta` of `body` to the temporary file named `temporary` (beside
    /// the snapshot file), synced, or for the simulated disk into memory.
    fn stage(
        &self,
        meta: &SnapshotMeta<NodeId, CorralNode>,
        body: SnapshotBody<'_>,
        temporary: &str,
    ) -> RaftResult<StagedSnapshot> {
        let signature = || Some(meta.signature());
        let (db, config, direct_io) = match self {
            SnapshotFile::Rocks { db, config, direct_io } => (db, *config, *direct_io),
            SnapshotFile::Memory(_) => {
                let mut data = Vec::new();
                body.write_to(&mut data).map_err(|e| StorageIOError::write_snapshot(signature(), &e))?;
                return Ok(StagedSnapshot::Memory(data));
            }
        };
        let meta_bytes = codec::encode(meta).map_err(|e| StorageIOError::write_snapshot(signature(), &e))?;
        let temporary = db.path().join(format!("{SNAPSHOT_FILE}.{temporary}"));
        let bytes = stage_snapshot_file(&temporary, &meta_bytes, body, config.fsync, direct_io)
            .map_err(|e| StorageIOError::write_snapshot(signature(), &e))?;
        Ok(StagedSnapshot::File { temporary, bytes })
    }

    /// A staged snapshot that will not be published (a newer one is on disk).
    fn discard(staged: StagedSnapshot) {
        if let StagedSnapshot::File { temporary, .. } = staged {
            // Left behind, it is only overwritten by the next build.
            let _ = std::fs::remove_file(temporary);
        }
    }

    /// Writes the snapshot `meta` of `body` and puts it in place; returns the data's size.
    fn save(&self, meta: &SnapshotMeta<NodeId, CorralNode>, body: SnapshotBody<'_>) -> RaftResult<u64> {
        let staged = self.stage(meta, body, INSTALL_TEMPORARY)?;
        self.publish(meta, &staged)
    }

    /// Puts `staged` in place of the snapshot on disk; returns the data's size in bytes.
    fn publish(&self, meta: &SnapshotMeta<NodeId, CorralNode>, staged: &StagedSnapshot) -> RaftResult<u64> {
        let signature = || Some(meta.signature());
        let (db, config, temporary, written) = match (self, staged) {
            (SnapshotFile::Rocks { db, config, .. }, StagedSnapshot::File { temporary, bytes }) => {
                (db, *config, temporary, *bytes)
            }
            (SnapshotFile::Memory(disk), StagedSnapshot::Memory(data)) => {
                disk.save_snapshot(meta, data)?;
                return Ok(data.len() as u64);
            }
            _ => {
                let e = std::io::Error::other("a snapshot staged for another kind of store");
                return Err(StorageIOError::write_snapshot(signature(), &e).into());
            }
        };
        publish_snapshot_file(db.path(), temporary, config.fsync)
            .map_err(|e| StorageIOError::write_snapshot(signature(), &e))?;
        // A snapshot that an older node kept in RocksDB is superseded: drop it (the file wins
        // on load, so a crash before this delete is harmless).
        let state_cf = cf(db, CF_STATE)?;
        let legacy = db.get_pinned_cf(state_cf, KEY_SNAPSHOT_META);
        if legacy.map_err(|e| StorageIOError::write_snapshot(signature(), &e))?.is_some() {
            let mut batch = WriteBatch::default();
            batch.delete_cf(state_cf, KEY_SNAPSHOT_META);
            batch.delete_cf(state_cf, KEY_SNAPSHOT_DATA);
            db.write(batch).map_err(|e| StorageIOError::write_snapshot(signature(), &e))?;
        }
        Ok(written)
    }

    fn load(&self) -> RaftResult<Option<StoredSnapshot>> {
        let db = match self {
            SnapshotFile::Rocks { db, .. } => db,
            SnapshotFile::Memory(disk) => return Ok(disk.snapshot()),
        };
        let (meta, data) = match read_snapshot_file(db.path()).map_err(|e| StorageIOError::read_snapshot(None, &e))? {
            Some(stored) => stored,
            None => {
                let state_cf = cf(db, CF_STATE)?;
                let meta =
                    db.get_cf(state_cf, KEY_SNAPSHOT_META).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
                let data =
                    db.get_cf(state_cf, KEY_SNAPSHOT_DATA).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
                let (Some(meta), Some(data)) = (meta, data) else {
                    return Ok(None);
                };
                (meta, data)
            }
        };
        let meta = codec::decode(&meta).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some((meta, data)))
    }

    /// Whether encoding and decoding go to a blocking thread. The simulated disk keeps them
    /// on the runtime: its states are small, and a thread outside the simulation's one
    /// runtime would make its timing depend on the host.
    fn off_runtime(&self) -> bool {
        matches!(self, SnapshotFile::Rocks { .. })
    }
}

/// Writes a snapshot file to `temporary`: the meta's length (8 bytes, little-endian), the
/// meta, the data; synced with `fsync`, and past the page cache with `direct_io`
/// ([`SnapshotWriter`]). Returns the data's size in bytes. [`publish_snapshot_file`] then
/// renames it over the old one, so a crash leaves the old snapshot or the new one, whole.
fn stage_snapshot_file(
    temporary: &Path,
    meta: &[u8],
    body: SnapshotBody<'_>,
    fsync: bool,
    direct_io: bool,
) -> std::io::Result<u64> {
    let mut file = SnapshotWriter::create(temporary, direct_io)?;
    file.write_all(&(meta.len() as u64).to_le_bytes())?;
    file.write_all(meta)?;
    let mut counted = CountingWriter { inner: &mut file, written: 0 };
    body.write_to(&mut counted)?;
    let written = counted.written;
    let file = file.finish()?;
    if fsync {
        file.sync_all()?;
    }
    Ok(written)
}

/// Renames the staged file `temporary` over the snapshot file in `dir` and syncs the
/// directory (with `fsync`).
fn publish_snapshot_file(dir: &Path, temporary: &Path, fsync: bool) -> std::io::Result<()> {
    std::fs::rename(temporary, dir.join(SNAPSHOT_FILE))?;
    if fsync {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A writer that counts the bytes it passes on.
struct CountingWriter<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads [`stage_snapshot_file`]'s file, once published, in `dir`: `None` if there is none.
fn read_snapshot_file(dir: &Path) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut bytes = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let torn = || std::io::Error::new(std::io::ErrorKind::InvalidData, "the snapshot file is cut short");
    let header: [u8; 8] = bytes.get(..8).and_then(|h| h.try_into().ok()).ok_or_else(torn)?;
    let meta_len = usize::try_from(u64::from_le_bytes(header)).map_err(|_| torn())?;
    let data_at = meta_len.checked_add(8).filter(|end| *end <= bytes.len()).ok_or_else(torn)?;
    let data = bytes.split_off(data_at);
    let meta = bytes.split_off(8);
    Ok(Some((meta, data)))
}

/// Runs `work` on a blocking thread when `off_runtime`, else here.
async fn run_blocking<T: Send + 'static>(
    off_runtime: bool,
    work: impl FnOnce() -> RaftResult<T> + Send + 'static,
) -> RaftResult<T> {
    if !off_runtime {
        return work();
    }
    tokio::task::spawn_blocking(work).await.map_err(|e| StorageIOError::write_snapshot(None, &e))?
}

/// How much nicer than the node's other threads a snapshot build runs (Linux nice levels;
/// 10 gives it about a tenth of a busy core's share against a thread at the default).
const SNAPSHOT_BUILD_NICENESS: i32 = 10;

/// Runs `work` (a snapshot build) on a thread of its own at a lower CPU priority when
/// `off_runtime`, else here. A build is background work that only has to finish before the
/// log grows much further; on a busy machine it used to take a core from the requests for a
/// second or more, which is where the slowest requests waited. A thread of its own because an
/// unprivileged process cannot raise a thread's priority back, so a pooled thread would stay
/// slow for whatever ran on it next. Without the priority (an error from `setpriority`) it
/// runs all the same.
async fn run_in_background<T: Send + 'static>(
    off_runtime: bool,
    work: impl FnOnce() -> RaftResult<T> + Send + 'static,
) -> RaftResult<T> {
    if !off_runtime {
        return work();
    }
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("corral-snapshot".into())
        .spawn(move || {
            if let Err(e) =
                rustix::process::setpriority_process(Some(rustix::thread::gettid()), SNAPSHOT_BUILD_NICENESS)
            {
                tracing::debug!(error = %e, "the snapshot build runs at the default priority");
            }
            // The receiver is gone only if the build was abandoned; nothing to tell then.
            let _ = done.send(work());
        })
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
    result.await.map_err(|e| StorageIOError::write_snapshot(None, &e))?
}

/// How often `apply` yields and tries the state's lock again before it sleeps between tries.
const APPLY_YIELDS_BEFORE_SLEEP: u32 = 16;

impl StateMachineStore {
    /// A state machine on `shared` whose snapshots go to `snapshots`.
    pub(crate) fn new(snapshots: SnapshotFile, shared: SharedState, gate: PurgeGate) -> Self {
        StateMachineStore { snapshots, shared, gate }
    }

    /// `shared` loaded from the snapshot in `snapshots`, if there is one; returns where that
    /// snapshot ends.
    pub(crate) fn restore(
        snapshots: &SnapshotFile,
        shared: &SharedState,
    ) -> Result<Option<LogId<NodeId>>, StorageError> {
        let stored = snapshots.load().map_err(|e| StorageError::CorruptSnapshot(e.to_string()))?;
        let mut last = None;
        if let Some((meta, data)) = stored {
            last = meta.last_log_id;
            let state = State::decode(&data).map_err(|e| StorageError::CorruptSnapshot(e.to_string()))?;
            let mut machine = shared.write();
            machine.last_applied = meta.last_log_id;
            machine.membership = meta.last_membership.clone();
            machine.snapshot_index = meta.last_log_id.map(|l| l.index);
            machine.state = state;
        }
        Ok(last)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> RaftResult<Snapshot<TypeConfig>> {
        let started = std::time::Instant::now();
        // The encoding (seconds of CPU with a million objects) and the write run on a thread of
        // their own at a lower priority, off the runtime that serves heartbeats and requests
        // (`run_in_background`). Under the read lock it
        // only takes the state's replicated view (O(1): persistent maps) with the index and
        // membership it covers; `apply` goes on while the view is encoded (see
        // ARCHITECTURE.md, "Snapshots").
        let nanos = match &self.snapshots {
            SnapshotFile::Rocks { .. } => {
                SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
            }
            // The simulation's ids must not depend on the host's clock.
            SnapshotFile::Memory(disk) => u128::from(disk.next_snapshot_number()),
        };
        let store = self.clone();
        let (meta, bytes, commands_covered) =
            run_in_background(self.snapshots.off_runtime(), move || -> RaftResult<_> {
                let (view, last_log_id, last_membership, commands_covered) = {
                    let machine = store.shared.read();
                    let view = machine.state.replicated_view();
                    (view, machine.last_applied, machine.membership.clone(), machine.commands_applied)
                };
                // The id only has to be unique per snapshot; the build time makes it so across restarts.
                let snapshot_id = match last_log_id {
                    Some(l) => format!("{}-{}-{nanos}", l.leader_id, l.index),
                    None => format!("empty-{nanos}"),
                };
                let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
                // Encoded as it is written (`SnapshotBody::View`), staged outside the gate's
                // write lock, and put in place under it unless a newer snapshot reached the
                // disk meanwhile.
                let staged = store.snapshots.stage(&meta, SnapshotBody::View(view), BUILD_TEMPORARY)?;
                let mut bytes = 0;
                let published = store.gate.store_snapshot(meta.last_log_id, || {
                    bytes = store.snapshots.publish(&meta, &staged)?;
                    Ok(())
                })?;
                if !published {
                    SnapshotFile::discard(staged);
                }
                Ok((meta, bytes, commands_covered))
            })
            .await?;
        let last_log_id = meta.last_log_id;
        {
            let mut machine = self.shared.write();
            machine.snapshot_index = last_log_id.map(|l| l.index);
            machine.snapshots_built += 1;
            machine.last_snapshot_build_seconds = started.elapsed().as_secs_f64();
            machine.commands_at_snapshot = commands_covered;
        }
        tracing::info!(
            index = ?last_log_id.map(|l| l.index),
            bytes,
            total_ms = started.elapsed().as_millis() as u64,
            "built snapshot"
        );
        // Without its data: openraft 0.9 keeps only the meta of a snapshot it had built
        // (`sm::worker`, `Response::BuildSnapshot(snap.meta)`), and what it sends a follower
        // comes from `get_current_snapshot`, which reads the file.
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(Vec::new())) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> RaftResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, CorralNode>)> {
        let machine = self.shared.read();
        Ok((machine.last_applied, machine.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> RaftResult<Vec<ApplyResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut refused = 0u32;
        let mut machine = loop {
            if let Some(machine) = self.shared.try_write() {
                break machine;
            }
            // Readers hold the lock briefly; try again soon. Never a blocking `write()` here:
            // a writer waiting on the std `RwLock` holds up every later reader (it prefers
            // writers), and with them the threads that serve heartbeats and requests. A long
            // reader (a walk over every object) gets a millisecond's sleep between tries, not
            // a worker spinning on yields.
            refused += 1;
            if refused < APPLY_YIELDS_BEFORE_SLEEP {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        let started = std::time::Instant::now();
        let mut replies = Vec::new();
        for entry in entries {
            machine.last_applied = Some(entry.log_id);
            let results = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(batch) => {
                    machine.commands_applied += batch.0.iter().map(|p| p.command.weight()).sum::<u64>();
                    batch.0.iter().map(|proposal| corral_model::apply(&mut machine.state, proposal)).collect()
                }
                EntryPayload::Membership(membership) => {
                    machine.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
            };
            replies.push(ApplyResponse(results));
        }
        metrics::histogram!("corral_raft_apply_seconds").record(started.elapsed().as_secs_f64());
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> RaftResult<Box<Cursor<Vec<u8>>>> {
        self.gate.begin_receiving();
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, CorralNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> RaftResult<()> {
        let data = snapshot.into_inner();
        // Decoding and writing a large snapshot take seconds: on a blocking thread, not on
        // the runtime that serves heartbeats.
        let store = self.clone();
        let signature = meta.signature();
        let owned_meta = meta.clone();
        let stored = run_blocking(self.snapshots.off_runtime(), move || -> RaftResult<State> {
            let state = State::decode(&data).map_err(|e| StorageIOError::read_snapshot(Some(signature), &e))?;
            // Only once this is on disk may the log lose what the snapshot covers (the gate
            // holds openraft's purge until then).
            store.gate.store_snapshot(owned_meta.last_log_id, || {
                store.snapshots.save(&owned_meta, SnapshotBody::Encoded(&data)).map(|_| ())
            })?;
            Ok(state)
        })
        .await;
        let mut state = match stored {
            Ok(state) => state,
            Err(e) => {
                self.gate.install_failed();
                return Err(e);
            }
        };
        let mut machine = self.shared.write();
        state.carry_local_from(&machine.state);
        machine.state = state;
        machine.last_applied = meta.last_log_id;
        machine.membership = meta.last_membership.clone();
        machine.snapshot_index = meta.last_log_id.map(|l| l.index);
        machine.snapshots_installed += 1;
        machine.commands_at_snapshot = machine.commands_applied;
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> RaftResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.snapshots.load()?.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

#[cfg(test)]
mod snapshot_file_tests {
    use super::*;

    #[test]
    fn the_snapshot_file_round_trips_and_a_torn_one_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read_snapshot_file(dir.path()).expect("read").is_none(), "no file yet");
        let temporary = dir.path().join("staged");
        let write = |meta: &[u8], data: &[u8], direct_io: bool| -> std::io::Result<()> {
            stage_snapshot_file(&temporary, meta, SnapshotBody::Encoded(data), true, direct_io)?;
            publish_snapshot_file(dir.path(), &temporary, true)
        };
        write(b"{meta}", b"the state", false).expect("write");
        write(b"{newer}", b"the newer state", true).expect("rewrite");
        let (meta, data) = read_snapshot_file(dir.path()).expect("read").expect("a snapshot");
        assert_eq!((meta.as_slice(), data.as_slice()), (&b"{newer}"[..], &b"the newer state"[..]));
        let path = dir.path().join(SNAPSHOT_FILE);
        let bytes = std::fs::read(&path).expect("bytes");
        for cut in [3, 10] {
            std::fs::write(&path, &bytes[..cut]).expect("cut");
            assert!(read_snapshot_file(dir.path()).is_err(), "cut at {cut} bytes");
        }
    }

    #[tokio::test]
    async fn a_snapshot_kept_in_rocksdb_by_an_older_node_is_read_then_replaced_by_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StorageConfig::default();
        let meta = |index: u64| SnapshotMeta::<NodeId, CorralNode> {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s{index}"),
        };
        {
            let (_log, _machine, _shared) = open_storage(dir.path(), config).expect("open");
        }
        {
            // What a node before the snapshot file wrote.
            let db = DB::open_cf(&Options::default(), dir.path(), [CF_LOG, CF_META, CF_STATE]).expect("db");
            let state_cf = db.cf_handle(CF_STATE).expect("state cf");
            let data = State::default().encode().expect("encode");
            db.put_cf(state_cf, KEY_SNAPSHOT_META, serde_json::to_vec(&meta(7)).expect("meta")).expect("put");
            db.put_cf(state_cf, KEY_SNAPSHOT_DATA, data).expect("put");
        }
        let (log, mut machine, shared) = open_storage(dir.path(), config).expect("reopen");
        assert_eq!(shared.read().last_applied.map(|l| l.index), Some(7), "restored from RocksDB");
        let snapshot = machine.get_current_snapshot().await.expect("current").expect("a snapshot");
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(7));
        let built = machine.build_snapshot().await.expect("build");
        assert!(dir.path().join(SNAPSHOT_FILE).exists(), "written to the file");
        let SnapshotFile::Rocks { db, .. } = &machine.snapshots else { panic!("a RocksDB store") };
        let state_cf = cf(db, CF_STATE).expect("state cf");
        assert!(db.get_cf(state_cf, KEY_SNAPSHOT_DATA).expect("get").is_none(), "the old copy is gone");
        drop((log, machine, shared, snapshot));
        let (_log, _machine, shared) = open_storage(dir.path(), config).expect("reopen");
        assert_eq!(shared.read().last_applied, built.meta.last_log_id, "restored from the file");
    }
}

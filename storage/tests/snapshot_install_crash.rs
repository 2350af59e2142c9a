//! A crash while a received snapshot is being installed must leave a store that opens and
//! replays: openraft 0.9 asks for the log purge before the install has stored the snapshot
//! (a 30-minute chaos run left a node that could not restart: "Failed to get log entries").

use std::io::Cursor;
use std::path::Path;

use corral_model::State;
use corral_raft_types::{NodeId, TypeConfig};
use corral_storage::{open_storage, LogStore, StateMachineStore, StorageConfig};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, SnapshotMeta, StoredMembership};

fn at(index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(3, 1), index)
}

fn open(dir: &Path) -> (LogStore, StateMachineStore) {
    let (log, sm, _shared) = open_storage(dir, StorageConfig { fsync: true }).expect("open the store");
    (log, sm)
}

fn snapshot_at(index: u64) -> (SnapshotMeta<NodeId, corral_raft_types::CorralNode>, Box<Cursor<Vec<u8>>>) {
    let meta = SnapshotMeta {
        last_log_id: Some(at(index)),
        last_membership: StoredMembership::default(),
        snapshot_id: format!("test-{index}"),
    };
    let data = State::default().encode().expect("encode an empty state");
    (meta, Box::new(Cursor::new(data)))
}

fn spawn_purge(log: &LogStore, upto: u64) -> tokio::task::JoinHandle<Result<(), openraft::StorageError<NodeId>>> {
    let mut log = log.clone();
    tokio::spawn(async move { log.purge(at(upto)).await })
}

async fn log_bounds(log: &mut LogStore) -> (Option<u64>, Option<u64>, Vec<u64>) {
    let state = log.get_log_state().await.expect("log state");
    let indexes = log.try_get_log_entries(0..u64::MAX).await.expect("entries").iter().map(|e| e.log_id.index).collect();
    (state.last_purged_log_id.map(|l| l.index), state.last_log_id.map(|l| l.index), indexes)
}

#[test]
fn a_crash_before_the_received_snapshot_is_stored_purges_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (log, _sm) = open(dir.path());
            let entries = (1..=5).map(|i| Entry::<TypeConfig> { log_id: at(i), payload: EntryPayload::Blank });
            log.write_entries(entries).expect("append 1..=5");
        }

        // A snapshot up to 20 arrives; openraft asks for the purge before the install has run
        // (the purge waits: openraft's core task would stand still meanwhile); crash.
        {
            let (log, mut sm) = open(dir.path());
            sm.begin_receiving_snapshot().await.expect("begin receiving");
            let purge = spawn_purge(&log, 20);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(!purge.is_finished(), "the purge waits for the snapshot");
            purge.abort();
            // The task (and its store handle) is gone once the handle reports it cancelled.
            assert!(purge.await.is_err_and(|e| e.is_cancelled()));
        }
        let (mut log, mut sm) = open(dir.path());
        assert_eq!(
            log_bounds(&mut log).await,
            (None, Some(5), vec![1, 2, 3, 4, 5]),
            "the log the old snapshot needs is all there"
        );
        assert!(sm.get_current_snapshot().await.expect("snapshot").is_none());

        // The same again, and this time the install completes: then the purge runs.
        sm.begin_receiving_snapshot().await.expect("begin receiving");
        let purge = spawn_purge(&log, 20);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(log_bounds(&mut log).await.2, vec![1, 2, 3, 4, 5], "nothing purged before the install");
        let (meta, data) = snapshot_at(20);
        sm.install_snapshot(&meta, data).await.expect("install");
        purge.await.expect("join").expect("purge");
        drop((log, sm));

        let (mut log, mut sm) = open(dir.path());
        assert_eq!(log_bounds(&mut log).await, (Some(20), Some(20), vec![]), "purged once the snapshot was stored");
        let stored = sm.get_current_snapshot().await.expect("snapshot").expect("a snapshot");
        assert_eq!(stored.meta.last_log_id, Some(at(20)));
    });
}

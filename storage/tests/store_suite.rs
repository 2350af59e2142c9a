//! openraft's own storage compliance suite, run against Corral's RocksDB log store and state
//! machine (real files in a temporary directory).

use corral_raft_types::TypeConfig;
use corral_storage::{open_memory, open_storage, LogStore, MemDisk, MemLogStore, StateMachineStore, StorageConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};

struct RocksBuilder {
    fsync: bool,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm, _shared) = open_storage(dir.path(), StorageConfig { fsync: self.fsync })
            .map_err(|e| StorageIOError::write(&std::io::Error::other(e.to_string())))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(RocksBuilder { fsync: false }) {
        panic!("storage suite failed: {e}");
    }
}

/// The same with fsync on: every append's callback goes through the group-commit syncer.
#[test]
fn openraft_storage_suite_with_group_commit() {
    if let Err(e) = Suite::test_all(RocksBuilder { fsync: true }) {
        panic!("storage suite (fsync on) failed: {e}");
    }
}

struct MemBuilder;

impl StoreBuilder<TypeConfig, MemLogStore, StateMachineStore, ()> for MemBuilder {
    async fn build(&self) -> Result<((), MemLogStore, StateMachineStore), StorageError<u64>> {
        let disk = MemDisk::new(std::time::Duration::from_millis(1));
        let (log, sm, _shared) =
            open_memory(&disk).map_err(|e| StorageIOError::write(&std::io::Error::other(e.to_string())))?;
        Ok(((), log, sm))
    }
}

/// The simulated disk passes the same suite.
#[test]
fn openraft_storage_suite_on_the_simulated_disk() {
    if let Err(e) = Suite::test_all(MemBuilder) {
        panic!("storage suite (simulated disk) failed: {e}");
    }
}

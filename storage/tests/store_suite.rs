//! openraft's own storage compliance suite, run against Corral's RocksDB log store and state
//! machine (real files in a temporary directory).

use corral_raft_types::TypeConfig;
use corral_storage::{open_storage, LogStore, StateMachineStore, StorageConfig};
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

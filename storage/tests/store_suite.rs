//! openraft's own storage compliance suite, run against Corral's RocksDB log store and state
//! machine (real files in a temporary directory).

use corral_raft_types::TypeConfig;
use corral_storage::{open_storage, LogStore, StateMachineStore, StorageConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm, _shared) = open_storage(dir.path(), StorageConfig { fsync: false })
            .map_err(|e| StorageIOError::write(&std::io::Error::other(e.to_string())))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(RocksBuilder) {
        panic!("storage suite failed: {e}");
    }
}

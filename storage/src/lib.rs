//! # corral-storage
//!
//! The RocksDB adapter for openraft, and nothing else: the domain it stores is
//! `corral-model`'s.
//!
//! - [`store`]: the openraft log store ([`LogStore`]) and state machine
//!   ([`StateMachineStore`]) on one RocksDB database with three column families: `log`
//!   (entries by index), `meta` (vote, committed, last purged) and `state` (where nodes
//!   before stop 30 kept their snapshot); the latest snapshot of the state machine is a file
//!   beside them, `corral-snapshot`, replaced whole by a rename. The state machine applies with `corral_model::apply` to the
//!   in-memory [`corral_raft_types::SharedState`].
//! - [`memory`]: the same log store on a simulated disk ([`MemDisk`]) that tells synced from
//!   unsynced writes and can lose the unsynced ones in a crash; the simulation runs on it.
//!
//! - [`recent`]: the log's newest entries kept decoded in memory, so that openraft's reads
//!   right after a write (apply, replication) neither seek RocksDB nor decode.
//!
//! - `direct_file`: snapshot files written past the page cache (`O_DIRECT`) where the file
//!   system allows it, and the probe that turns the same on for RocksDB's flushes.
//!
//! - `purge_gate`: the log is purged only up to a stored snapshot, even while a received
//!   snapshot is still being installed (openraft 0.9 asks for the purge without waiting), and
//!   an older snapshot never replaces a newer one on disk.
//!
//! Invariants: a log append is acknowledged to openraft only after RocksDB has synced it (when
//! `fsync` is on); the state machine's in-memory `State` is exactly the fold of `apply` over
//! the applied entries, and it is what snapshots carry.
//!
//! Never: depend on `corral-net`, `corral-api` or `corral-node`; decide anything about the
//! domain (that is `corral-model`'s `apply`).

// openraft fixes the error types; their size is not ours to shrink.
#![allow(clippy::result_large_err)]
#![forbid(unsafe_code)]

mod direct_file;
pub mod memory;
mod purge_gate;
pub mod recent;
pub mod store;

pub use memory::{open_memory, MemDisk, MemLogStore};
pub use store::{open_storage, LogStore, StateMachineStore, StorageConfig, StorageError};

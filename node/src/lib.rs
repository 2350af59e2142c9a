//! # corral-node
//!
//! Wires Corral together and owns the `corral` binary:
//! - [`config`]: the one typed `NodeConfig` (TOML file → `CORRAL_*` env → flags);
//! - [`serve`]: one node — RocksDB storage, openraft, the gRPC server for peers, the REST
//!   server for clients, bootstrap and graceful shutdown;
//! - [`cluster`]: `RaftCluster`, the API's `ClusterHandle` on openraft (leader forwarding,
//!   read index);
//! - [`dev`]: `corral dev`, a local 3-node cluster of real processes.
//!
//! This is the only crate that depends on all the others; none depends on it.

pub mod cluster;
pub mod config;
pub mod dev;
pub mod serve;

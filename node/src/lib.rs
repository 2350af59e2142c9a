//! # corral-node
//!
//! Wires Corral together and owns the `corral` binary:
//! - [`config`]: the one typed `NodeConfig` (TOML file → `CORRAL_*` env → flags);
//! - [`serve`]: one node — RocksDB storage, openraft, the gRPC server for peers, the REST
//!   server for clients, bootstrap and graceful shutdown;
//! - [`cluster`]: `RaftCluster`, the API's `ClusterHandle` on openraft (leader forwarding,
//!   read index);
//! - [`scheduler`] and [`placement`]: the leader's batched scheduler and its pure placement
//!   core;
//! - [`health`]: the runner directory behind runner sessions and the leader's health monitor
//!   (`ready` ↔ `unresponsive` from reports and silence);
//! - [`runner_agent`]: `corral runner`, the runner agent (and `--simulate N` for scale tests);
//! - [`dev`]: `corral dev`, a local 3-node cluster of real processes;
//! - [`certs`]: `corral certs`, the cluster CA and node/runner certificates (mutual TLS);
//! - [`ctl`]: `corral ctl`, the REST client for every API operation;
//! - [`shared_regions`]: the leader makes sure the shared regions exist;
//! - [`telemetry`]: the Prometheus recorder and the gauges fed from Raft and the state.
//!
//! This is the only crate that depends on all the others; none depends on it.

pub mod certs;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod dev;
pub mod health;
pub mod placement;
pub mod runner_agent;
pub mod scheduler;
pub mod serve;
pub mod shared_regions;
pub mod telemetry;

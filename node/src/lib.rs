//! # corral-node
//!
//! Wires Corral together and owns the `corral` binary:
//! - [`config`]: the one typed `NodeConfig` (TOML file → `CORRAL_*` env → flags);
//! - [`serve`]: one node — RocksDB storage, openraft, the gRPC server for peers, the REST
//!   server for clients, bootstrap and graceful shutdown;
//! - [`leader`]: [`leader::Leader`], the operations only the leader performs (commit a
//!   proposal, read index, campaign, membership) on this node's Raft; proposals are coalesced
//!   into few Raft entries and reads share read-index rounds;
//! - [`coalescer`]: [`coalescer::Coalescer`], the one batching primitive (bounded queue,
//!   batches as call slots free up, one answer per request);
//! - [`forwarder`]: [`forwarder::Forwarder`], a follower's batched calls to the leader;
//! - [`cluster`]: [`cluster::RaftCluster`], the node's one handle on the cluster: runs leader
//!   operations locally or forwards them to the leader over gRPC; implements api's
//!   `ClusterHandle`;
//! - [`peer_service`]: [`peer_service::PeerService`], the node's answers to its peers' gRPC
//!   calls (net's `LeaderService`);
//! - [`scheduler`]: the leader's batched scheduler over the model's placement core;
//! - [`runner_directory`]: the node's side of runner sessions (net's `RunnerDirectory`);
//! - [`health_monitor`]: the leader's loop that commits the model's health verdict
//!   (`ready` ↔ `unresponsive` from reports and silence);
//! - [`rescheduler`]: the leader's loop that moves sandboxes off runners unresponsive for
//!   `reschedule_after_ms` or decommissioned (the model's `plan_reschedules`);
//! - [`runner_agent`]: `corral runner`, the runner agent (and `--simulate N` for scale tests);
//! - [`dev`]: `corral dev`, a local 3-node cluster of real processes;
//! - [`certs`]: `corral certs`, the cluster CA and node/runner certificates (mutual TLS);
//! - [`ctl`]: `corral ctl`, the REST client for every API operation;
//! - [`shared_regions`]: the leader makes sure the shared regions exist;
//! - [`telemetry`]: the Prometheus recorder and the gauges fed from Raft and the state.
//!
//! This is the only crate that depends on all the others; none depends on it but `benches`
//! and `sim`, which run it in-process. Domain decisions are the model's;
//! this crate does the I/O around them (time, randomness, Raft, sockets).

pub mod certs;
pub mod cluster;
pub mod coalescer;
pub mod compaction;
pub mod config;
pub mod ctl;
pub mod dev;
pub mod election;
pub mod forwarder;
pub mod health_monitor;
pub mod leader;
pub mod peer_service;
pub mod rescheduler;
pub mod runner_agent;
pub mod runner_directory;
pub mod scheduler;
pub mod serve;
pub mod shared_regions;
pub mod telemetry;

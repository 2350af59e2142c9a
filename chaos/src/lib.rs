//! # corral-chaos
//!
//! Proves failover the way Jepsen and etcd's robustness tests do: real `corral serve`
//! processes, real faults, a recorded client history, and checkers that cannot be fooled.
//!
//! - [`cluster`]: N nodes, each in a network namespace of its own on a bridge (loopback ports
//!   without root), haproxy in front; kill, pause, restart, wipe, and nftables partitions.
//! - [`nemesis`]: the seeded fault schedule (`--seed` replays it).
//! - [`workload`]: concurrent clients through haproxy and straight to nodes, recording every
//!   operation (region and runner registers, sandbox creations) in a [`history::History`].
//! - [`check`]: the checkers — linearizability (Wing–Gong search with memoization and a step
//!   budget), lost writes against each node's final state, double placement / missing sandboxes
//!   / over-capacity runners, convergence of state hashes.
//! - [`report`]: availability per fault, the JSON report, the summary and the SVG timeline.
//! - [`run`]: one run from start to verdict; `src/main.rs` is its command line.
//!
//! The crate uses the node only as a process (the `corral` binary) and the API's types.

pub mod check;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod report;
pub mod run;
pub mod workload;

/// Why a run could not produce a verdict (a verdict with violations is not an error).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("setup: {0}")]
    Setup(String),
    #[error("command failed: {0}")]
    Command(String),
    #[error("the cluster did not recover: {0}")]
    NoRecovery(String),
    #[error("reading final state: {0}")]
    Final(String),
}

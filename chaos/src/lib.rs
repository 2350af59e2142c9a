//! # corral-chaos
//!
//! The fault-injection harness of the chaos issue, built up in parts. What exists now:
//! - [`history`]: a recorded client history (invoke/complete times, ok / fail / unknown);
//! - [`check`]: the checkers — linearizability of register histories (Wing–Gong search with
//!   memoization and a step budget), lost writes against each node's final state, double
//!   placement / missing sandboxes / over-capacity runners, and convergence of state hashes.
//!
//! Still to come (see the issue): starting real `corral serve` processes in network
//! namespaces behind haproxy, the seeded nemesis and the workload that records histories.
//! The crate depends on the node only as a process.

pub mod check;
pub mod history;

//! # corral-chaos
//!
//! Will own the fault-injection harness (issue "Chaos: prove failover under faults"): real
//! `corral serve` processes behind haproxy, a seeded nemesis (kill, pause, partition), a
//! recorded client history and its checkers. Nothing is implemented yet; the crate exists so
//! the workspace has the layout of DESIGN.md. It depends on the node only as a process.

//! # corral-benches
//!
//! Will own the criterion benchmarks (placement core, `apply` of a placement batch, RocksDB
//! log append) and the `loadgen` binary (issue "Sandboxes and the leader's batched scheduler").
//! Nothing is implemented yet; the crate exists so the workspace has the layout of DESIGN.md.

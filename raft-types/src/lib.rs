//! # corral-raft-types
//!
//! Where Corral's domain meets openraft, and nothing else:
//!
//! - [`raft`]: openraft's type configuration ([`TypeConfig`]): a log entry carries a
//!   [`ProposalBatch`] (the [`corral_model::Proposal`]s the leader coalesced), applying it
//!   answers an [`ApplyResponse`] (one result per proposal), members are [`CorralNode`]s.
//! - [`shared`]: the state machine's in-memory data ([`MachineData`]: the domain
//!   [`corral_model::State`] plus openraft's applied log id and membership) and the handle
//!   ([`SharedState`]) that storage applies through and the API and node read through.
//! - [`runtime`]: openraft's tokio runtime whose random numbers (election timeouts) a thread
//!   can seed, so that the simulation replays a seed exactly.
//!
//! Why a crate of its own: openraft depends on tokio unconditionally, and corral-model must
//! stay pure (no tokio in its dependency tree). storage, net, api and node depend on this
//! crate; the model, fuzz targets and the model's benches do not.
//!
//! Never depends on: RocksDB, tonic, quinn, axum, or any Corral crate but corral-model.

#![forbid(unsafe_code)]

pub mod raft;
pub mod runtime;
pub mod shared;

pub use raft::{commit_notice_delay_us, COMMIT_NOTICE_DELAY_US};
pub use raft::{ApplyResponse, CorralNode, NodeId, ProposalBatch, Raft, TypeConfig};
pub use shared::{MachineData, SharedState};

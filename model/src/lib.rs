//! # corral-model
//!
//! Corral's replicated domain, pure: what the cluster agrees on and how it changes.
//!
//! - [`types`]: Region, Runner, Sandbox, Organization, API keys, resources, states.
//! - [`command`]: [`Command`], everything that changes the state, and [`Proposal`], a command
//!   with the time, scope and idempotency key its proposer chose.
//! - [`outcome`]: what `apply` answers, an [`Outcome`] or a [`Rejection`] (a value every
//!   replica computes alike).
//! - [`state`]: [`State`] with its derived indexes, canonical encoding, hash and
//!   [`State::validate`] (the invariants).
//! - [`apply`](mod@apply): [`apply()`], one committed proposal into the state, one file per entity.
//! - [`placement`]: the one capacity rule ([`placement::fits`]), eligibility, and the ranked
//!   per-region index the leader's scheduler places with.
//! - [`health`]: runner health reports, the per-node table of the latest one per runner, and
//!   the leader's verdict ([`health::health_verdict`]).
//! - [`runner_journal`] and [`assignment`]: which sandboxes changed on a runner, and the diff a
//!   runner session sends.
//! - [`secret`]: how secrets are stored (hashed).
//! - [`access`]: key roles, the permission each command needs, and [`access::authorize`], the
//!   check the API makes before proposing and `apply` makes again.
//! - [`quota`]: organization quotas in shared regions and [`quota::admits`], their one rule.
//! - [`injected`]: the test-only injected bugs (feature `injected-bugs`, never in a default
//!   build) that control runs switch on to prove a checker fires.
//!
//! Architecture invariants: nothing here does I/O, awaits, reads a clock or draws an unseeded
//! random number; time, ids and randomness are arguments. `apply` is deterministic, so replicas
//! that apply the same log have equal [`State::hash`]es. Replica-local counters (the runner
//! epoch, journal positions) live inside the state they describe, never in a global.
//!
//! Never depends on: tokio (not even through another crate: openraft's type configuration and
//! the shared state handle are corral-raft-types'), openraft, RocksDB, tonic, quinn, axum, or any
//! other Corral crate.

#![forbid(unsafe_code)]

pub mod access;
pub mod apply;
pub mod assignment;
pub mod codec;
pub mod command;
pub mod health;
pub mod injected;
pub mod outcome;
pub mod placement;
pub mod quota;
pub mod runner_journal;
pub mod secret;
pub mod state;
pub mod types;

pub use access::{Permission, Role};
pub use apply::{admit_to_quota, apply, recorded_placement};
pub use command::{
    Command, FieldUpdate, KeyUse, NewRegion, NewRunner, Placement, Proposal, RegionCredential, Reschedule,
    SandboxRequest,
};
pub use outcome::{ApplyResult, Outcome, Rejection};
pub use quota::{Quota, QuotaUsage};
pub use state::{IdempotencyRecord, LocalEpoch, State, IDEMPOTENCY_RECORDS_MAX, IDEMPOTENCY_TTL_MS};
pub use types::{
    ApiKeyRecord, CapacitySource, Millis, ObjectKind, Organization, Region, RegionType, Resources, Runner, RunnerState,
    Sandbox, SandboxState, SharedSandbox,
};

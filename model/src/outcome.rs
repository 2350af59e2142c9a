//! What `apply` answers: an [`Outcome`] or a [`Rejection`]. A rejection is a value that every
//! replica computes alike, not an error of the node.

use serde::{Deserialize, Serialize};

use crate::access::Role;
use crate::types::{ApiKeyRecord, ObjectKind, Organization, Region, Runner, RunnerState, SharedSandbox};

/// Why `apply` refused a command. A rejected command changes nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("a {kind} named '{name}' already exists")]
    DuplicateName { kind: ObjectKind, name: String },
    #[error("a {kind} with id '{id}' already exists")]
    DuplicateId { kind: ObjectKind, id: String },
    #[error("{kind} '{id}' not found")]
    NotFound { kind: ObjectKind, id: String },
    #[error("region '{region_id}' has {runners} runner(s) assigned; delete them first")]
    RegionHasRunners { region_id: String, runners: usize },
    #[error("runner '{runner_id}' has {sandboxes} sandbox(es); delete them first")]
    RunnerHasSandboxes { runner_id: String, sandboxes: usize },
    #[error("runner '{runner_id}' has not enough free capacity")]
    InsufficientCapacity { runner_id: String },
    /// The runner's tags no longer match the placement's constraint (they changed after the
    /// scheduler chose it); the scheduler places again.
    #[error("runner '{runner_id}' does not carry the tags the sandbox asks for")]
    RunnerTagsMismatch { runner_id: String },
    #[error("runner '{runner_id}' does not accept sandboxes (state {state:?}, schedulable {schedulable}, draining {draining})")]
    RunnerNotSchedulable {
        runner_id: String,
        state: RunnerState,
        schedulable: bool,
        /// Absent in records written before draining existed: not draining.
        #[serde(default)]
        draining: bool,
    },
    #[error("no runner in region '{region_id}' has room for the sandbox")]
    NoCapacity { region_id: String },
    #[error("organization '{organization_id}' is over its {limit} quota in shared regions: {used} in use, {asked} asked, limit {quota}")]
    QuotaExceeded { organization_id: String, limit: String, quota: u64, used: u64, asked: u64 },
    /// The API key was revoked, expired, or belongs elsewhere (checked again on apply).
    #[error("{0}")]
    Unauthorized(String),
    #[error("this API key's role '{role}' lacks the permission '{permission}'")]
    Forbidden { permission: String, role: Role },
    #[error("the Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// The request is well formed but the current state does not allow it (a region without
    /// that service, a decommissioned runner, a destroyed sandbox, a token already in use).
    /// Records written before the rename say `Invalid`.
    #[error("{0}")]
    #[serde(alias = "Invalid")]
    Conflict(String),
}

/// What a successful `apply` returns to the proposer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Raft's own entries (blank, membership) carry no command.
    None,
    Organization(Organization),
    ApiKey(ApiKeyRecord),
    Region(Region),
    Runner(Runner),
    Sandbox(SharedSandbox),
    Placed(Vec<Result<SharedSandbox, Rejection>>),
    /// Ids of the runners a [`Command::RecordRunnerHealth`] moved.
    RunnersChanged(Vec<String>),
    Deleted {
        kind: ObjectKind,
        id: String,
    },
    /// Keys a [`Command::RecordApiKeyUse`](crate::Command::RecordApiKeyUse) moved.
    KeysTouched(usize),
}

/// The result of applying one log entry, as returned by the state machine to openraft.
pub type ApplyResult = Result<Outcome, Rejection>;

//! What changes replicated state: [`Command`], wrapped in a [`Proposal`] by the node that
//! proposes it (which stamps the time, the scope and the idempotency key).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::access::Role;
use crate::quota::Quota;
use crate::types::{CapacitySource, Millis, RegionType, Resources, RunnerState, SandboxState};

/// One sandbox placement decided by the leader's scheduler.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub sandbox_id: String,
    pub organization_id: String,
    pub target: String,
    pub region_id: String,
    pub runner_id: String,
    pub resources: Resources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Tags the runner must carry; `apply` re-checks them, as it re-checks capacity.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runner_tags: BTreeMap<String, String>,
    /// The client's scoped idempotency key for this one sandbox: a placement whose key was
    /// applied before returns that first sandbox and places nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The hash of the organization API key that asked for it (`None`: the operator's key);
    /// `apply` refuses the placement if that key was revoked or expired meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// One sandbox of a rescheduling round.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Reschedule {
    pub sandbox_id: String,
    pub from_runner_id: String,
    /// Where it goes; `None`: no runner of its region can take it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_runner_id: Option<String>,
}

/// A request to create a sandbox, as it travels to the leader's scheduler.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SandboxRequest {
    /// Chosen by the node that received the request.
    pub sandbox_id: String,
    pub organization_id: String,
    /// The region name the client asked for.
    pub target: String,
    pub region_id: String,
    pub resources: Resources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Placement constraint: the runner must carry every one of these tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runner_tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The hash of the organization API key that asked (see [`Placement::credential`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A use of an organization API key that a node saw.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyUse {
    pub key_hash: String,
    pub at: Millis,
}

/// A change to an optional field. (Not `Option<Option<T>>`: JSON, which carries proposals
/// through the log and between nodes, cannot tell `Some(None)` from `None`.)
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub enum FieldUpdate<T> {
    #[default]
    Keep,
    Clear,
    Set(T),
}

impl<T: Clone> FieldUpdate<T> {
    /// Applies the change to `field`.
    pub fn apply_to(&self, field: &mut Option<T>) {
        match self {
            FieldUpdate::Keep => {}
            FieldUpdate::Clear => *field = None,
            FieldUpdate::Set(v) => *field = Some(v.clone()),
        }
    }
}

impl<T> From<Option<Option<T>>> for FieldUpdate<T> {
    /// Absent → keep, `null` → clear, value → set.
    fn from(v: Option<Option<T>>) -> Self {
        match v {
            None => FieldUpdate::Keep,
            Some(None) => FieldUpdate::Clear,
            Some(Some(v)) => FieldUpdate::Set(v),
        }
    }
}

/// Which of a region's service credentials to replace.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionCredential {
    ProxyApiKey,
    SshGatewayApiKey,
    SnapshotManager,
}

/// A region to create, as [`Command::CreateRegion`] carries it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NewRegion {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub region_type: RegionType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_gateway_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_manager_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_api_key_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_gateway_api_key_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_manager_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_manager_password: Option<String>,
}

impl NewRegion {
    /// A region with no services configured (and so no credentials).
    pub fn new(
        id: impl Into<String>,
        organization_id: impl Into<String>,
        name: impl Into<String>,
        region_type: RegionType,
    ) -> Self {
        NewRegion {
            id: id.into(),
            organization_id: organization_id.into(),
            name: name.into(),
            region_type,
            proxy_url: None,
            ssh_gateway_url: None,
            snapshot_manager_url: None,
            proxy_api_key_hash: None,
            ssh_gateway_api_key_hash: None,
            snapshot_manager_username: None,
            snapshot_manager_password: None,
        }
    }
}

/// A runner to create, as [`Command::CreateRunner`] carries it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NewRunner {
    pub id: String,
    pub region_id: String,
    pub name: String,
    pub api_key_hash: String,
    pub api_key_hint: String,
    pub api_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    pub capacity: Resources,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sandboxes: Option<u64>,
}

impl NewRunner {
    /// A runner of API version 2 with the given token hash and capacity, and no URLs.
    pub fn new(
        id: impl Into<String>,
        region_id: impl Into<String>,
        name: impl Into<String>,
        api_key_hash: impl Into<String>,
        capacity: Resources,
    ) -> Self {
        NewRunner {
            id: id.into(),
            region_id: region_id.into(),
            name: name.into(),
            api_key_hash: api_key_hash.into(),
            api_key_hint: String::new(),
            api_version: "2".into(),
            domain: None,
            api_url: None,
            proxy_url: None,
            capacity,
            tags: BTreeMap::new(),
            max_sandboxes: None,
        }
    }
}

/// Everything that changes replicated state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    CreateOrganization {
        id: String,
        name: String,
    },
    /// Fields absent in entries from before roles and expiry: an admin key without expiry.
    CreateApiKey {
        key_hash: String,
        organization_id: String,
        name: String,
        #[serde(default)]
        role: Role,
        #[serde(default)]
        prefix: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<Millis>,
    },
    /// Revokes the organization's key of that name.
    DeleteApiKey {
        organization_id: String,
        name: String,
    },
    /// Uses of keys seen by a node since it last recorded them (`last_used_at` only moves on).
    RecordApiKeyUse {
        uses: Vec<KeyUse>,
    },
    /// Replaces the organization's quota (all `None`: no limits).
    SetOrganizationQuota {
        id: String,
        quota: Quota,
    },
    /// Serialized exactly as the struct variant it replaced (`{"CreateRegion": {fields}}`), so
    /// logs written before read the same.
    CreateRegion(NewRegion),
    UpdateRegionUrls {
        id: String,
        proxy_url: FieldUpdate<String>,
        ssh_gateway_url: FieldUpdate<String>,
        snapshot_manager_url: FieldUpdate<String>,
    },
    /// Replaces one credential; `secret` is a hash for API keys and the password for the
    /// snapshot manager (username stays).
    SetRegionCredential {
        id: String,
        credential: RegionCredential,
        secret: String,
    },
    DeleteRegion {
        id: String,
    },
    /// The runner belongs to its region's organization.
    CreateRunner(NewRunner),
    /// `None` toggles.
    SetRunnerSchedulable {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schedulable: Option<bool>,
    },
    SetRunnerState {
        id: String,
        state: RunnerState,
    },
    /// A draining runner takes no new placements; its sandboxes keep running.
    SetRunnerDraining {
        id: String,
        draining: bool,
    },
    /// A runner's capacity: from its agent (taken only while the operator has not set one) or
    /// from the operator. Never below what is allocated on the runner.
    SetRunnerCapacity {
        id: String,
        capacity: Resources,
        source: CapacitySource,
    },
    /// An operator's or owner's change to a runner's placement settings: its tags (replaced
    /// whole when given) and its sandbox limit.
    UpdateRunner {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tags: Option<BTreeMap<String, String>>,
        #[serde(default)]
        max_sandboxes: FieldUpdate<u64>,
    },
    DeleteRunner {
        id: String,
    },
    /// A new token for the runner: the old one stops working at once (its agent's session is
    /// closed by the node that holds it).
    SetRunnerToken {
        id: String,
        api_key_hash: String,
        api_key_hint: String,
    },
    /// One Raft entry for a whole scheduler batch; each placement succeeds or fails alone.
    PlaceSandboxes {
        placements: Vec<Placement>,
    },
    SetSandboxState {
        id: String,
        state: SandboxState,
    },
    /// The leader's rescheduling round: each sandbox on a runner that has been `unresponsive`
    /// for at least `unresponsive_for_ms` (0: never), or is `decommissioned`, moves to the
    /// runner chosen for it, or, with none chosen (no room anywhere), stays and is marked
    /// `error` if it was started. `apply` re-checks all of it: a runner that came back keeps
    /// its sandboxes.
    RescheduleSandboxes {
        moves: Vec<Reschedule>,
        unresponsive_for_ms: u64,
    },
    DeleteSandbox {
        id: String,
    },
    /// The leader's verdict from runner health reports: runners that report become `ready`,
    /// silent ones `unresponsive`. Only those two moves are made (`initializing`/`unresponsive`
    /// → `ready`, `ready` → `unresponsive`); a runner an operator disabled or decommissioned,
    /// or one deleted meanwhile, is left alone.
    RecordRunnerHealth {
        reporting: Vec<String>,
        silent: Vec<String>,
    },
}

impl Command {
    /// How many objects the command may change: one, or one per item of a batch command. A
    /// restart replays commands since the last snapshot, and this is their cost; the node
    /// builds a snapshot once the weight applied since the last one reaches its threshold.
    pub fn weight(&self) -> u64 {
        let items = match self {
            Command::PlaceSandboxes { placements } => placements.len(),
            Command::RescheduleSandboxes { moves, .. } => moves.len(),
            Command::RecordApiKeyUse { uses } => uses.len(),
            Command::RecordRunnerHealth { reporting, silent } => reporting.len() + silent.len(),
            _ => 1,
        };
        items.max(1) as u64
    }
}

/// What a node proposes to Raft: a command plus what the proposer chose for it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub command: Command,
    /// Proposer's wall clock; `apply` uses it as the object's timestamp.
    pub at: Millis,
    /// Already scoped by the caller (e.g. `organization/key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Digest of the request that carried the idempotency key; a replay with another request
    /// under the same key is refused instead of answered with the first result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The organization the caller acts for; `None` for the operator (admin key) and the
    /// system. `apply` treats objects of other organizations as not found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The hash of the organization API key the caller used (`None`: the operator's key or the
    /// system). `apply` refuses the command if that key was revoked, expired, or lacks the
    /// permission, whatever the proposing node believed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl Proposal {
    pub fn new(command: Command, at: Millis) -> Self {
        Proposal { command, at, idempotency_key: None, fingerprint: None, scope: None, credential: None }
    }

    pub fn scoped(command: Command, at: Millis, scope: Option<String>) -> Self {
        Proposal { scope, ..Proposal::new(command, at) }
    }
}

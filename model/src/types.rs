//! The replicated domain's objects: regions, runners, sandboxes, organizations and their keys.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::access::Role;
use crate::quota::Quota;

/// Milliseconds since the Unix epoch, chosen by the proposer.
pub type Millis = u64;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RegionType {
    Shared,
    Dedicated,
    Custom,
}

impl RegionType {
    /// Every variant, for documents and metrics that list the values.
    pub const ALL: [RegionType; 3] = [RegionType::Shared, RegionType::Dedicated, RegionType::Custom];

    /// The name the API and metrics use (as serialized).
    pub fn label(self) -> &'static str {
        match self {
            RegionType::Shared => "shared",
            RegionType::Dedicated => "dedicated",
            RegionType::Custom => "custom",
        }
    }
}

/// A named group of runners. Service credentials are kept only as hashes, except the snapshot
/// manager password, which Corral itself must be able to present.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub id: String,
    pub name: String,
    pub region_type: RegionType,
    pub organization_id: String,
    pub proxy_url: Option<String>,
    pub ssh_gateway_url: Option<String>,
    pub snapshot_manager_url: Option<String>,
    pub proxy_api_key_hash: Option<String>,
    pub ssh_gateway_api_key_hash: Option<String>,
    pub snapshot_manager_username: Option<String>,
    pub snapshot_manager_password: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RunnerState {
    Initializing,
    Ready,
    Unresponsive,
    Disabled,
    Decommissioned,
}

impl RunnerState {
    /// Every variant, for documents and metrics that list the values.
    pub const ALL: [RunnerState; 5] = [
        RunnerState::Initializing,
        RunnerState::Ready,
        RunnerState::Unresponsive,
        RunnerState::Disabled,
        RunnerState::Decommissioned,
    ];

    /// The name the API and metrics use (as serialized).
    pub fn label(self) -> &'static str {
        match self {
            RunnerState::Initializing => "initializing",
            RunnerState::Ready => "ready",
            RunnerState::Unresponsive => "unresponsive",
            RunnerState::Disabled => "disabled",
            RunnerState::Decommissioned => "decommissioned",
        }
    }
}

/// cpu in cores, memory and disk in GiB, GPUs in devices.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resources {
    pub cpu: u64,
    pub memory_gib: u64,
    pub disk_gib: u64,
    /// Absent in entries written before GPUs were counted: none.
    #[serde(default)]
    pub gpu: u64,
}

impl Resources {
    /// Every resource of `self` at most that of `other`; the capacity rule is
    /// [`crate::placement::fits`].
    pub(crate) fn fits_within(&self, other: &Resources) -> bool {
        self.cpu <= other.cpu
            && self.memory_gib <= other.memory_gib
            && self.disk_gib <= other.disk_gib
            && self.gpu <= other.gpu
    }

    pub fn is_zero(&self) -> bool {
        *self == Resources::default()
    }

    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu: self.cpu.saturating_add(other.cpu),
            memory_gib: self.memory_gib.saturating_add(other.memory_gib),
            disk_gib: self.disk_gib.saturating_add(other.disk_gib),
            gpu: self.gpu.saturating_add(other.gpu),
        }
    }

    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu: self.cpu.saturating_sub(other.cpu),
            memory_gib: self.memory_gib.saturating_sub(other.memory_gib),
            disk_gib: self.disk_gib.saturating_sub(other.disk_gib),
            gpu: self.gpu.saturating_sub(other.gpu),
        }
    }
}

/// Who set a runner's capacity.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum CapacitySource {
    /// Not set by the operator: the runner's agent reports its host's totals and the runner
    /// takes them (a runner created without capacity starts here, at zero).
    #[default]
    Agent,
    /// Set through the admin API; reports from the agent no longer change it.
    Operator,
}

impl CapacitySource {
    /// Who set a runner's capacity when nobody said: a runner created with a capacity has the
    /// operator's, one created without waits for its agent's.
    pub fn for_capacity(capacity: Resources) -> CapacitySource {
        if capacity.is_zero() {
            CapacitySource::Agent
        } else {
            CapacitySource::Operator
        }
    }
}

impl Runner {
    /// Who set this runner's capacity.
    pub fn capacity_source(&self) -> CapacitySource {
        self.capacity_source.unwrap_or_else(|| CapacitySource::for_capacity(self.capacity))
    }
}

/// A machine in a region. Health (usage, availability score) is soft state that travels by
/// gossip, not through Raft; only the state changes that matter are committed here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Runner {
    pub id: String,
    pub name: String,
    pub region_id: String,
    pub organization_id: String,
    pub state: RunnerState,
    /// When `state` last changed; 0 in entries from before it was kept (then `updated_at`
    /// stands in, see [`Runner::state_since`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub state_changed_at: Millis,
    pub schedulable: bool,
    /// Takes no new placements; what runs on it keeps running (absent in older entries: not
    /// draining).
    #[serde(default)]
    pub draining: bool,
    pub api_version: String,
    pub domain: Option<String>,
    pub api_url: Option<String>,
    pub proxy_url: Option<String>,
    pub capacity: Resources,
    /// Who set `capacity`: the runner's agent (from its host) or the operator, whose word wins.
    /// Absent in entries written before it existed; `State::decode` fills it in with the rule
    /// `apply` uses on create ([`CapacitySource::for_capacity`]), so a replica that loads an
    /// old snapshot and one that replays the old log hold the same value.
    #[serde(default)]
    pub capacity_source: Option<CapacitySource>,
    /// What placement constraints match against: a sandbox's `runner_tags` must all be here
    /// with equal values. Empty (and absent from the encoding, so older states hash alike)
    /// when none were set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// At most this many sandboxes (any not destroyed: a stopped one keeps its place, as it
    /// keeps its resources) are on the runner at once; `None`: no limit. Lowering it below
    /// what the runner holds stops new placements and moves nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sandboxes: Option<u64>,
    pub allocated: Resources,
    pub started_sandboxes: u64,
    pub api_key_hash: String,
    /// A recognisable fragment of the token (`dtn_…7890`) for operators; never the token.
    pub api_key_hint: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

fn is_zero(n: &Millis) -> bool {
    *n == 0
}

impl Runner {
    /// Since when the runner has been in its state.
    pub fn state_since(&self) -> Millis {
        if self.state_changed_at == 0 {
            self.updated_at
        } else {
            self.state_changed_at
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Pending,
    Started,
    Stopped,
    Error,
    Destroyed,
}

impl SandboxState {
    /// Every variant, for documents and metrics that list the values.
    pub const ALL: [SandboxState; 5] = [
        SandboxState::Pending,
        SandboxState::Started,
        SandboxState::Stopped,
        SandboxState::Error,
        SandboxState::Destroyed,
    ];

    /// The name the API and metrics use (as serialized).
    pub fn label(self) -> &'static str {
        match self {
            SandboxState::Pending => "pending",
            SandboxState::Started => "started",
            SandboxState::Stopped => "stopped",
            SandboxState::Error => "error",
            SandboxState::Destroyed => "destroyed",
        }
    }
}

/// A sandbox as the state holds it and `apply` answers it: behind an `Arc`, so that the answer
/// to a placement shares the state's copy instead of cloning its five strings and two maps on
/// every replica, and a leaf of the sandbox map holds 16 pointers instead of 16 sandboxes
/// (4.5 KB, half of it empty when ids arrive in order, and copied whole on every split).
/// Encoded exactly as a [`Sandbox`] (serde's `rc`). Change one with [`Arc::make_mut`].
pub type SharedSandbox = Arc<Sandbox>;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    pub organization_id: String,
    pub target: String,
    pub region_id: String,
    pub runner_id: String,
    pub resources: Resources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The placement constraint it was created with: tags its runner must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runner_tags: BTreeMap<String, String>,
    pub state: SandboxState,
    /// The runner it was moved away from, when it was rescheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescheduled_from: Option<String>,
    /// Why it is in state `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub created_at: Millis,
    /// Limits on its sandboxes in shared regions (absent: none, as in entries from before
    /// quotas existed).
    #[serde(default, skip_serializing_if = "Quota::is_unlimited")]
    pub quota: Quota,
}

/// An organization's bearer key, stored by the hash of the key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub key_hash: String,
    pub organization_id: String,
    /// Unique within the organization (keys are revoked by name).
    pub name: String,
    pub created_at: Millis,
    /// Absent in entries from before roles: admin, which is what such a key could do.
    #[serde(default, skip_serializing_if = "Role::is_admin")]
    pub role: Role,
    /// The key's first characters, for people to tell keys apart; never enough to use it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Refused from this time on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
    /// When a node last saw it used, recorded lazily (at most about once a minute per key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Millis>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Organization,
    ApiKey,
    Region,
    Runner,
    Sandbox,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ObjectKind::Organization => "organization",
            ObjectKind::ApiKey => "api key",
            ObjectKind::Region => "region",
            ObjectKind::Runner => "runner",
            ObjectKind::Sandbox => "sandbox",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_serialized_names() {
        for state in RunnerState::ALL {
            assert_eq!(serde_json::to_value(state).ok(), Some(state.label().into()));
        }
        for state in SandboxState::ALL {
            assert_eq!(serde_json::to_value(state).ok(), Some(state.label().into()));
        }
        for region_type in RegionType::ALL {
            assert_eq!(serde_json::to_value(region_type).ok(), Some(region_type.label().into()));
        }
    }
}

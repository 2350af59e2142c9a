//! The replicated data model and its pure, deterministic `apply`.
//!
//! Every replica feeds the same committed [`Proposal`]s, in the same order, into [`apply`] and
//! therefore reaches the same [`State`]; [`State::hash`] lets tests check that across nodes.
//! `apply` never reads a clock, a random number generator or the network: ids, timestamps and
//! secrets' hashes arrive inside the proposal, chosen once by the proposing node.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::runner_journal::RunnerJournals;

/// Milliseconds since the Unix epoch, chosen by the proposer.
pub type Millis = u64;

/// Wall-clock milliseconds, for proposers and for stamping soft state; never read inside
/// [`apply`], which takes time only from the proposal.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

/// How many idempotency records are kept; the oldest are dropped first. Bounded so that a
/// client that sends a fresh key with every request cannot grow the state without limit.
pub const IDEMPOTENCY_RECORDS_MAX: usize = 100_000;
/// Idempotency records older than this (relative to the newest proposal) are dropped.
pub const IDEMPOTENCY_TTL_MS: Millis = 24 * 60 * 60 * 1000;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RegionType {
    Shared,
    Dedicated,
    Custom,
}

impl RegionType {
    /// Every variant, for documents that list the accepted values.
    pub const ALL: [RegionType; 3] = [RegionType::Shared, RegionType::Dedicated, RegionType::Custom];
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
    /// Every variant, for documents that list the accepted values.
    pub const ALL: [RunnerState; 5] = [
        RunnerState::Initializing,
        RunnerState::Ready,
        RunnerState::Unresponsive,
        RunnerState::Disabled,
        RunnerState::Decommissioned,
    ];
}

/// cpu in cores, memory and disk in GiB.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resources {
    pub cpu: u64,
    pub memory_gib: u64,
    pub disk_gib: u64,
}

impl Resources {
    pub fn fits_within(&self, other: &Resources) -> bool {
        self.cpu <= other.cpu && self.memory_gib <= other.memory_gib && self.disk_gib <= other.disk_gib
    }

    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu: self.cpu.saturating_add(other.cpu),
            memory_gib: self.memory_gib.saturating_add(other.memory_gib),
            disk_gib: self.disk_gib.saturating_add(other.disk_gib),
        }
    }

    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu: self.cpu.saturating_sub(other.cpu),
            memory_gib: self.memory_gib.saturating_sub(other.memory_gib),
            disk_gib: self.disk_gib.saturating_sub(other.disk_gib),
        }
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
    pub schedulable: bool,
    pub api_version: String,
    pub domain: Option<String>,
    pub api_url: Option<String>,
    pub proxy_url: Option<String>,
    pub capacity: Resources,
    pub allocated: Resources,
    pub started_sandboxes: u64,
    pub api_key_hash: String,
    /// A recognisable fragment of the token (`dtn_…7890`) for operators; never the token.
    pub api_key_hint: String,
    pub created_at: Millis,
    pub updated_at: Millis,
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
    /// Every variant, for documents that list the accepted values.
    pub const ALL: [SandboxState; 5] = [
        SandboxState::Pending,
        SandboxState::Started,
        SandboxState::Stopped,
        SandboxState::Error,
        SandboxState::Destroyed,
    ];
}

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
    pub state: SandboxState,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub created_at: Millis,
}

/// An organization's bearer key, stored by the hash of the key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub key_hash: String,
    pub organization_id: String,
    pub name: String,
    pub created_at: Millis,
}

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
    /// The client's scoped idempotency key for this one sandbox: a placement whose key was
    /// applied before returns that first sandbox and places nothing.
    #[serde(default)]
    pub idempotency_key: Option<String>,
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
    #[serde(default)]
    pub idempotency_key: Option<String>,
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

/// Everything that changes replicated state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    CreateOrganization {
        id: String,
        name: String,
    },
    CreateApiKey {
        key_hash: String,
        organization_id: String,
        name: String,
    },
    CreateRegion {
        id: String,
        organization_id: String,
        name: String,
        region_type: RegionType,
        proxy_url: Option<String>,
        ssh_gateway_url: Option<String>,
        snapshot_manager_url: Option<String>,
        proxy_api_key_hash: Option<String>,
        ssh_gateway_api_key_hash: Option<String>,
        snapshot_manager_username: Option<String>,
        snapshot_manager_password: Option<String>,
    },
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
    CreateRunner {
        id: String,
        region_id: String,
        name: String,
        api_key_hash: String,
        api_key_hint: String,
        api_version: String,
        domain: Option<String>,
        api_url: Option<String>,
        proxy_url: Option<String>,
        capacity: Resources,
    },
    /// `None` toggles.
    SetRunnerSchedulable {
        id: String,
        schedulable: Option<bool>,
    },
    SetRunnerState {
        id: String,
        state: RunnerState,
    },
    DeleteRunner {
        id: String,
    },
    /// One Raft entry for a whole scheduler batch; each placement succeeds or fails alone.
    PlaceSandboxes {
        placements: Vec<Placement>,
    },
    SetSandboxState {
        id: String,
        state: SandboxState,
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

/// What a node proposes to Raft: a command plus what the proposer chose for it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub command: Command,
    /// Proposer's wall clock; `apply` uses it as the object's timestamp.
    pub at: Millis,
    /// Already scoped by the caller (e.g. `organization/key`).
    pub idempotency_key: Option<String>,
    /// Digest of the request that carried the idempotency key; a replay with another request
    /// under the same key is refused instead of answered with the first result.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// The organization the caller acts for; `None` for the operator (admin key) and the
    /// system. `apply` treats objects of other organizations as not found.
    #[serde(default)]
    pub scope: Option<String>,
}

impl Proposal {
    pub fn new(command: Command, at: Millis) -> Self {
        Proposal { command, at, idempotency_key: None, fingerprint: None, scope: None }
    }

    pub fn scoped(command: Command, at: Millis, scope: Option<String>) -> Self {
        Proposal { scope, ..Proposal::new(command, at) }
    }
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
    #[error("runner '{runner_id}' does not accept sandboxes (state {state:?}, schedulable {schedulable})")]
    RunnerNotSchedulable { runner_id: String, state: RunnerState, schedulable: bool },
    #[error("no runner in region '{region_id}' has room for the sandbox")]
    NoCapacity { region_id: String },
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
    Sandbox(Sandbox),
    Placed(Vec<Result<Sandbox, Rejection>>),
    /// Ids of the runners a [`Command::RecordRunnerHealth`] moved.
    RunnersChanged(Vec<String>),
    Deleted {
        kind: ObjectKind,
        id: String,
    },
}

/// The result of applying one log entry, as returned by the state machine to openraft.
pub type ApplyResult = Result<Outcome, Rejection>;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub at: Millis,
    pub fingerprint: Option<String>,
    pub result: ApplyResult,
}

/// The whole replicated state. Ordered maps make its serialization canonical, so the hash of
/// the encoding is equal on replicas with equal state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub organizations: BTreeMap<String, Organization>,
    pub api_keys: BTreeMap<String, ApiKeyRecord>,
    pub regions: BTreeMap<String, Region>,
    pub runners: BTreeMap<String, Runner>,
    pub sandboxes: BTreeMap<String, Sandbox>,
    pub idempotency: BTreeMap<String, IdempotencyRecord>,
    /// The newest proposal time seen; drives idempotency expiry deterministically.
    pub clock: Millis,
    /// Derived from the maps above; not serialized, rebuilt by [`State::decode`].
    #[serde(skip)]
    pub region_names: BTreeMap<(String, String), String>,
    /// Index: (region id, runner name) → runner id.
    #[serde(skip)]
    pub runner_names: BTreeMap<(String, String), String>,
    /// Index: runner id → the sandboxes on it that are not destroyed, with their state (what
    /// runner sessions diff against without touching the big sandbox map).
    #[serde(skip)]
    pub runner_sandboxes: BTreeMap<String, BTreeMap<String, SandboxState>>,
    /// Index: runner token hash → runner id (runner agents authenticate by token).
    #[serde(skip)]
    pub runner_keys: BTreeMap<String, String>,
    /// Index: idempotency records by (time, key), oldest first, for expiry.
    #[serde(skip)]
    pub idempotency_by_age: BTreeSet<(Millis, String)>,
    /// Bumped by every applied command that may change a runner's eligibility or allocation.
    /// Local only (not serialized, not hashed): the scheduler uses it to know whether its
    /// cached placement index still matches the state.
    #[serde(skip)]
    pub runner_epoch: LocalEpoch,
    /// Per runner, which sandboxes changed in what order. Local only, like `runner_epoch`.
    #[serde(skip)]
    pub runner_journals: RunnerJournals,
}

/// A replica-local change counter. Two states are equal whatever their epochs: the counter
/// says how a replica got to its state, not what the state is.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalEpoch(pub u64);

impl PartialEq for LocalEpoch {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for LocalEpoch {}

impl State {
    /// The canonical encoding (used for snapshots and the state hash).
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Decodes [`State::encode`]'s output and rebuilds the derived indexes.
    pub fn decode(bytes: &[u8]) -> Result<State, serde_json::Error> {
        let mut state: State = serde_json::from_slice(bytes)?;
        state.rebuild_indexes();
        Ok(state)
    }

    fn rebuild_indexes(&mut self) {
        self.region_names =
            self.regions.values().map(|r| ((r.organization_id.clone(), r.name.clone()), r.id.clone())).collect();
        self.runner_names =
            self.runners.values().map(|r| ((r.region_id.clone(), r.name.clone()), r.id.clone())).collect();
        self.runner_keys = self.runners.values().map(|r| (r.api_key_hash.clone(), r.id.clone())).collect();
        self.idempotency_by_age = self.idempotency.iter().map(|(k, r)| (r.at, k.clone())).collect();
        self.runner_sandboxes.clear();
        for s in self.sandboxes.values().filter(|s| s.state != SandboxState::Destroyed) {
            self.runner_sandboxes.entry(s.runner_id.clone()).or_default().insert(s.id.clone(), s.state);
        }
        self.runner_journals.rebuild(
            self.runner_sandboxes
                .iter()
                .flat_map(|(runner, ids)| ids.keys().map(move |id| (runner.as_str(), id.as_str()))),
        );
    }

    /// SHA-256 over the canonical JSON encoding, hex encoded.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        // Serializing BTreeMaps and plain structs to a writer cannot fail.
        if let Err(e) = serde_json::to_writer(HashWriter(&mut hasher), self) {
            return format!("unhashable:{e}");
        }
        hex::encode(hasher.finalize())
    }

    pub fn region_by_name(&self, organization_id: &str, name: &str) -> Option<&Region> {
        self.region_names.get(&(organization_id.to_string(), name.to_string())).and_then(|id| self.regions.get(id))
    }

    pub fn runners_in_region<'a>(&'a self, region_id: &'a str) -> impl Iterator<Item = &'a Runner> + 'a {
        self.runner_names
            .range((region_id.to_string(), String::new())..)
            .take_while(move |((r, _), _)| r == region_id)
            .filter_map(|(_, id)| self.runners.get(id))
    }

    /// Checks the invariants `apply` keeps; used by tests and debug assertions.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut allocated: BTreeMap<&str, Resources> = BTreeMap::new();
        for s in self.sandboxes.values() {
            if s.state == SandboxState::Destroyed {
                continue;
            }
            let a = allocated.entry(s.runner_id.as_str()).or_default();
            *a = a.saturating_add(&s.resources);
            if !self.runners.contains_key(&s.runner_id) {
                return Err(format!("sandbox {} is on missing runner {}", s.id, s.runner_id));
            }
        }
        for r in self.runners.values() {
            let a = allocated.get(r.id.as_str()).copied().unwrap_or_default();
            if a != r.allocated {
                return Err(format!("runner {} allocation {:?} != sum of sandboxes {:?}", r.id, r.allocated, a));
            }
            if !r.allocated.fits_within(&r.capacity) {
                return Err(format!("runner {} over capacity: {:?} > {:?}", r.id, r.allocated, r.capacity));
            }
            if !self.regions.contains_key(&r.region_id) {
                return Err(format!("runner {} is in missing region {}", r.id, r.region_id));
            }
        }
        if self.region_names.len() != self.regions.len() {
            return Err("region name index out of step".into());
        }
        if self.runner_names.len() != self.runners.len() {
            return Err("runner name index out of step".into());
        }
        Ok(())
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Applies one committed proposal. Pure: the result depends only on `state` and `proposal`.
/// A proposal whose idempotency key was applied before returns the first result unchanged.
pub fn apply(state: &mut State, proposal: &Proposal) -> ApplyResult {
    state.clock = state.clock.max(proposal.at);
    expire_idempotency(state);
    if let Some(key) = &proposal.idempotency_key {
        if let Some(record) = state.idempotency.get(key) {
            if record.fingerprint.is_some()
                && proposal.fingerprint.is_some()
                && record.fingerprint != proposal.fingerprint
            {
                return Err(Rejection::IdempotencyKeyReused);
            }
            return record.result.clone();
        }
    }
    let result = apply_command(state, &proposal.command, proposal.at, proposal.scope.as_deref());
    if touches_runners(&proposal.command) {
        state.runner_epoch.0 = state.runner_epoch.0.wrapping_add(1);
    }
    debug_assert_eq!(state.check_invariants(), Ok(()), "after {:?}", proposal.command);
    if let Some(key) = &proposal.idempotency_key {
        let record =
            IdempotencyRecord { at: proposal.at, fingerprint: proposal.fingerprint.clone(), result: result.clone() };
        state.idempotency.insert(key.clone(), record);
        state.idempotency_by_age.insert((proposal.at, key.clone()));
    }
    result
}

fn expire_idempotency(state: &mut State) {
    let horizon = state.clock.saturating_sub(IDEMPOTENCY_TTL_MS);
    while let Some((at, key)) = state.idempotency_by_age.first().cloned() {
        if at >= horizon && state.idempotency.len() < IDEMPOTENCY_RECORDS_MAX {
            break;
        }
        state.idempotency_by_age.pop_first();
        state.idempotency.remove(&key);
    }
}

fn not_found(kind: ObjectKind, id: &str) -> Rejection {
    Rejection::NotFound { kind, id: id.to_string() }
}

fn touches_runners(command: &Command) -> bool {
    !matches!(
        command,
        Command::CreateOrganization { .. }
            | Command::CreateApiKey { .. }
            | Command::CreateRegion { .. }
            | Command::UpdateRegionUrls { .. }
            | Command::SetRegionCredential { .. }
            | Command::DeleteRegion { .. }
    )
}

/// Whether an object owned by `owner` is visible to a caller acting for `scope`.
fn in_scope(scope: Option<&str>, owner: &str) -> bool {
    scope.is_none_or(|org| org == owner)
}

fn owned_region<'a>(state: &'a mut State, id: &str, scope: Option<&str>) -> Result<&'a mut Region, Rejection> {
    state
        .regions
        .get_mut(id)
        .filter(|r| in_scope(scope, &r.organization_id))
        .ok_or_else(|| not_found(ObjectKind::Region, id))
}

fn owned_runner<'a>(state: &'a mut State, id: &str, scope: Option<&str>) -> Result<&'a mut Runner, Rejection> {
    state
        .runners
        .get_mut(id)
        .filter(|r| in_scope(scope, &r.organization_id))
        .ok_or_else(|| not_found(ObjectKind::Runner, id))
}

fn apply_command(state: &mut State, command: &Command, at: Millis, scope: Option<&str>) -> ApplyResult {
    match command {
        Command::CreateOrganization { id, name } => {
            if state.organizations.contains_key(id) {
                return Err(Rejection::DuplicateId { kind: ObjectKind::Organization, id: id.clone() });
            }
            if state.organizations.values().any(|o| &o.name == name) {
                return Err(Rejection::DuplicateName { kind: ObjectKind::Organization, name: name.clone() });
            }
            let org = Organization { id: id.clone(), name: name.clone(), created_at: at };
            state.organizations.insert(id.clone(), org.clone());
            Ok(Outcome::Organization(org))
        }
        Command::CreateApiKey { key_hash, organization_id, name } => {
            if !state.organizations.contains_key(organization_id) {
                return Err(not_found(ObjectKind::Organization, organization_id));
            }
            if state.api_keys.contains_key(key_hash) {
                return Err(Rejection::DuplicateId { kind: ObjectKind::ApiKey, id: name.clone() });
            }
            let record = ApiKeyRecord {
                key_hash: key_hash.clone(),
                organization_id: organization_id.clone(),
                name: name.clone(),
                created_at: at,
            };
            state.api_keys.insert(key_hash.clone(), record.clone());
            Ok(Outcome::ApiKey(record))
        }
        Command::CreateRegion {
            id,
            organization_id,
            name,
            region_type,
            proxy_url,
            ssh_gateway_url,
            snapshot_manager_url,
            proxy_api_key_hash,
            ssh_gateway_api_key_hash,
            snapshot_manager_username,
            snapshot_manager_password,
        } => {
            if state.regions.contains_key(id) {
                return Err(Rejection::DuplicateId { kind: ObjectKind::Region, id: id.clone() });
            }
            let name_key = (organization_id.clone(), name.clone());
            if state.region_names.contains_key(&name_key) {
                return Err(Rejection::DuplicateName { kind: ObjectKind::Region, name: name.clone() });
            }
            let region = Region {
                id: id.clone(),
                name: name.clone(),
                region_type: *region_type,
                organization_id: organization_id.clone(),
                proxy_url: proxy_url.clone(),
                ssh_gateway_url: ssh_gateway_url.clone(),
                snapshot_manager_url: snapshot_manager_url.clone(),
                proxy_api_key_hash: proxy_api_key_hash.clone(),
                ssh_gateway_api_key_hash: ssh_gateway_api_key_hash.clone(),
                snapshot_manager_username: snapshot_manager_username.clone(),
                snapshot_manager_password: snapshot_manager_password.clone(),
                created_at: at,
                updated_at: at,
            };
            state.region_names.insert(name_key, id.clone());
            state.regions.insert(id.clone(), region.clone());
            Ok(Outcome::Region(region))
        }
        Command::UpdateRegionUrls { id, proxy_url, ssh_gateway_url, snapshot_manager_url } => {
            let region = owned_region(state, id, scope)?;
            proxy_url.apply_to(&mut region.proxy_url);
            ssh_gateway_url.apply_to(&mut region.ssh_gateway_url);
            snapshot_manager_url.apply_to(&mut region.snapshot_manager_url);
            region.updated_at = at;
            Ok(Outcome::Region(region.clone()))
        }
        Command::SetRegionCredential { id, credential, secret } => {
            let region = owned_region(state, id, scope)?;
            let (configured, service) = match credential {
                RegionCredential::ProxyApiKey => (region.proxy_url.is_some(), "proxy"),
                RegionCredential::SshGatewayApiKey => (region.ssh_gateway_url.is_some(), "SSH gateway"),
                RegionCredential::SnapshotManager => (region.snapshot_manager_url.is_some(), "snapshot manager"),
            };
            if !configured {
                return Err(Rejection::Conflict(format!("region '{id}' has no {service} configured")));
            }
            match credential {
                RegionCredential::ProxyApiKey => region.proxy_api_key_hash = Some(secret.clone()),
                RegionCredential::SshGatewayApiKey => region.ssh_gateway_api_key_hash = Some(secret.clone()),
                RegionCredential::SnapshotManager => region.snapshot_manager_password = Some(secret.clone()),
            }
            region.updated_at = at;
            Ok(Outcome::Region(region.clone()))
        }
        Command::DeleteRegion { id } => {
            let Some(region) = state.regions.get(id).filter(|r| in_scope(scope, &r.organization_id)) else {
                return Err(not_found(ObjectKind::Region, id));
            };
            let runners = state.runners_in_region(id).count();
            if runners > 0 {
                return Err(Rejection::RegionHasRunners { region_id: id.clone(), runners });
            }
            let name_key = (region.organization_id.clone(), region.name.clone());
            state.region_names.remove(&name_key);
            state.regions.remove(id);
            Ok(Outcome::Deleted { kind: ObjectKind::Region, id: id.clone() })
        }
        Command::CreateRunner {
            id,
            region_id,
            name,
            api_key_hash,
            api_key_hint,
            api_version,
            domain,
            api_url,
            proxy_url,
            capacity,
        } => {
            let region = state.regions.get(region_id).ok_or_else(|| not_found(ObjectKind::Region, region_id))?;
            if scope.is_some() {
                // Shared regions are visible to every organization, so say why, not "not found".
                if region.region_type == RegionType::Shared {
                    return Err(Rejection::Conflict(format!(
                        "region '{region_id}' is a shared region; runners can be added only to custom regions"
                    )));
                }
                if !in_scope(scope, &region.organization_id) {
                    return Err(not_found(ObjectKind::Region, region_id));
                }
                if region.region_type != RegionType::Custom {
                    return Err(Rejection::Conflict(format!(
                        "region '{region_id}' is not a custom region; runners can be added only to custom regions"
                    )));
                }
            }
            let organization_id = region.organization_id.clone();
            if state.runners.contains_key(id) {
                return Err(Rejection::DuplicateId { kind: ObjectKind::Runner, id: id.clone() });
            }
            let name_key = (region_id.clone(), name.clone());
            if state.runner_names.contains_key(&name_key) {
                return Err(Rejection::DuplicateName { kind: ObjectKind::Runner, name: name.clone() });
            }
            // A runner agent is known by its token alone, so no two runners may share one.
            if state.runner_keys.contains_key(api_key_hash) {
                return Err(Rejection::Conflict(
                    "another runner already uses this token; each runner needs its own".into(),
                ));
            }
            let runner = Runner {
                id: id.clone(),
                name: name.clone(),
                region_id: region_id.clone(),
                organization_id,
                state: RunnerState::Initializing,
                schedulable: true,
                api_version: api_version.clone(),
                domain: domain.clone(),
                api_url: api_url.clone(),
                proxy_url: proxy_url.clone(),
                capacity: *capacity,
                allocated: Resources::default(),
                started_sandboxes: 0,
                api_key_hash: api_key_hash.clone(),
                api_key_hint: api_key_hint.clone(),
                created_at: at,
                updated_at: at,
            };
            state.runner_names.insert(name_key, id.clone());
            state.runner_keys.insert(runner.api_key_hash.clone(), id.clone());
            state.runners.insert(id.clone(), runner.clone());
            Ok(Outcome::Runner(runner))
        }
        Command::SetRunnerSchedulable { id, schedulable } => {
            let runner = owned_runner(state, id, scope)?;
            runner.schedulable = schedulable.unwrap_or(!runner.schedulable);
            runner.updated_at = at;
            Ok(Outcome::Runner(runner.clone()))
        }
        Command::SetRunnerState { id, state: new_state } => {
            let runner = owned_runner(state, id, scope)?;
            if runner.state == RunnerState::Decommissioned && *new_state != RunnerState::Decommissioned {
                return Err(Rejection::Conflict(format!("runner '{id}' is decommissioned")));
            }
            runner.state = *new_state;
            runner.updated_at = at;
            Ok(Outcome::Runner(runner.clone()))
        }
        Command::RecordRunnerHealth { reporting, silent } => {
            let mut changed = Vec::new();
            for (ids, from, to) in [
                (reporting, &[RunnerState::Initializing, RunnerState::Unresponsive][..], RunnerState::Ready),
                (silent, &[RunnerState::Ready][..], RunnerState::Unresponsive),
            ] {
                for id in ids {
                    if let Some(runner) = state.runners.get_mut(id).filter(|r| from.contains(&r.state)) {
                        runner.state = to;
                        runner.updated_at = at;
                        changed.push(id.clone());
                    }
                }
            }
            Ok(Outcome::RunnersChanged(changed))
        }
        Command::DeleteRunner { id } => {
            let Some(runner) = state.runners.get(id).filter(|r| in_scope(scope, &r.organization_id)) else {
                return Err(not_found(ObjectKind::Runner, id));
            };
            let sandboxes = state.runner_sandboxes.get(id).map_or(0, BTreeMap::len);
            if sandboxes > 0 {
                return Err(Rejection::RunnerHasSandboxes { runner_id: id.clone(), sandboxes });
            }
            let name_key = (runner.region_id.clone(), runner.name.clone());
            state.runner_names.remove(&name_key);
            if state.runner_keys.get(&runner.api_key_hash) == Some(id) {
                let key_hash = runner.api_key_hash.clone();
                state.runner_keys.remove(&key_hash);
            }
            state.runners.remove(id);
            state.runner_sandboxes.remove(id);
            state.runner_journals.forget(id);
            Ok(Outcome::Deleted { kind: ObjectKind::Runner, id: id.clone() })
        }
        Command::PlaceSandboxes { placements } => {
            let results = placements.iter().map(|p| place_idempotent(state, p, at)).collect();
            Ok(Outcome::Placed(results))
        }
        Command::SetSandboxState { id, state: new_state } => {
            if !state.sandboxes.get(id).is_some_and(|s| in_scope(scope, &s.organization_id)) {
                return Err(not_found(ObjectKind::Sandbox, id));
            }
            set_sandbox_state(state, id, *new_state, at)
        }
        Command::DeleteSandbox { id } => {
            let current = state
                .sandboxes
                .get(id)
                .filter(|s| in_scope(scope, &s.organization_id))
                .ok_or_else(|| not_found(ObjectKind::Sandbox, id))?;
            if current.state != SandboxState::Destroyed {
                set_sandbox_state(state, id, SandboxState::Destroyed, at)?;
            }
            state.sandboxes.remove(id);
            Ok(Outcome::Deleted { kind: ObjectKind::Sandbox, id: id.clone() })
        }
    }
}

/// The result a placement's idempotency key recorded, if any.
pub fn recorded_placement(state: &State, key: &str) -> Option<Result<Sandbox, Rejection>> {
    state.idempotency.get(key).map(|record| match &record.result {
        Ok(Outcome::Sandbox(sandbox)) => Ok(sandbox.clone()),
        Ok(_) => Err(Rejection::IdempotencyKeyReused),
        Err(e) => Err(e.clone()),
    })
}

fn place_idempotent(state: &mut State, p: &Placement, at: Millis) -> Result<Sandbox, Rejection> {
    let Some(key) = &p.idempotency_key else {
        return place_one(state, p, at);
    };
    if let Some(first) = recorded_placement(state, key) {
        return first;
    }
    let result = place_one(state, p, at);
    // Only successes are remembered: a failed placement changed nothing, and a retry may fit.
    if let Ok(sandbox) = &result {
        let record = IdempotencyRecord { at, fingerprint: None, result: Ok(Outcome::Sandbox(sandbox.clone())) };
        state.idempotency.insert(key.clone(), record);
        state.idempotency_by_age.insert((at, key.clone()));
    }
    result
}

/// Re-checks capacity on apply: whatever a stale leader decided, a runner is never overcommitted.
fn place_one(state: &mut State, p: &Placement, at: Millis) -> Result<Sandbox, Rejection> {
    if state.sandboxes.contains_key(&p.sandbox_id) {
        return Err(Rejection::DuplicateId { kind: ObjectKind::Sandbox, id: p.sandbox_id.clone() });
    }
    let runner = state.runners.get_mut(&p.runner_id).ok_or_else(|| not_found(ObjectKind::Runner, &p.runner_id))?;
    if runner.region_id != p.region_id {
        return Err(Rejection::Conflict(format!("runner '{}' is not in region '{}'", runner.id, p.region_id)));
    }
    if runner.state != RunnerState::Ready || !runner.schedulable {
        return Err(Rejection::RunnerNotSchedulable {
            runner_id: runner.id.clone(),
            state: runner.state,
            schedulable: runner.schedulable,
        });
    }
    let after = runner.allocated.saturating_add(&p.resources);
    if !after.fits_within(&runner.capacity) {
        return Err(Rejection::InsufficientCapacity { runner_id: runner.id.clone() });
    }
    runner.allocated = after;
    runner.started_sandboxes += 1;
    runner.updated_at = at;
    state.runner_sandboxes.entry(p.runner_id.clone()).or_default().insert(p.sandbox_id.clone(), SandboxState::Started);
    state.runner_journals.record(&p.runner_id, &p.sandbox_id, false);
    let sandbox = Sandbox {
        id: p.sandbox_id.clone(),
        organization_id: p.organization_id.clone(),
        target: p.target.clone(),
        region_id: p.region_id.clone(),
        runner_id: p.runner_id.clone(),
        resources: p.resources,
        labels: p.labels.clone(),
        state: SandboxState::Started,
        created_at: at,
        updated_at: at,
    };
    state.sandboxes.insert(sandbox.id.clone(), sandbox.clone());
    Ok(sandbox)
}

/// Moves a sandbox between states, keeping the runner's allocation and started count in step:
/// a started sandbox holds its resources and counts as started; a stopped one holds its
/// resources (it may be started again on the same runner) but is not counted; a destroyed one
/// holds nothing.
fn set_sandbox_state(state: &mut State, id: &str, new_state: SandboxState, at: Millis) -> ApplyResult {
    let sandbox = state.sandboxes.get(id).ok_or_else(|| not_found(ObjectKind::Sandbox, id))?;
    let old_state = sandbox.state;
    if old_state == SandboxState::Destroyed && new_state != SandboxState::Destroyed {
        return Err(Rejection::Conflict(format!("sandbox '{id}' is destroyed")));
    }
    let runner_id = sandbox.runner_id.clone();
    let resources = sandbox.resources;
    let runner = state.runners.get_mut(&runner_id).ok_or_else(|| not_found(ObjectKind::Runner, &runner_id))?;
    let was_started = old_state == SandboxState::Started;
    let is_started = new_state == SandboxState::Started;
    if was_started && !is_started {
        runner.started_sandboxes = runner.started_sandboxes.saturating_sub(1);
    }
    if !was_started && is_started {
        runner.started_sandboxes += 1;
    }
    if new_state == SandboxState::Destroyed && old_state != SandboxState::Destroyed {
        runner.allocated = runner.allocated.saturating_sub(&resources);
        if let Some(ids) = state.runner_sandboxes.get_mut(&runner_id) {
            ids.remove(id);
            if ids.is_empty() {
                state.runner_sandboxes.remove(&runner_id);
            }
        }
    } else if let Some(indexed) = state.runner_sandboxes.get_mut(&runner_id).and_then(|ids| ids.get_mut(id)) {
        *indexed = new_state;
    }
    state.runner_journals.record(&runner_id, id, new_state == SandboxState::Destroyed);
    runner.updated_at = at;
    let sandbox = state.sandboxes.get_mut(id).ok_or_else(|| not_found(ObjectKind::Sandbox, id))?;
    sandbox.state = new_state;
    sandbox.updated_at = at;
    Ok(Outcome::Sandbox(sandbox.clone()))
}

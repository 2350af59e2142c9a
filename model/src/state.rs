//! [`State`], the whole replicated state, with its derived indexes, its canonical encoding
//! and hash, and [`State::validate`], the invariants `apply` keeps.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{self, CodecError};
use crate::outcome::ApplyResult;
use crate::placement::fits;
use crate::quota::{counts_against_quota, QuotaUsage};
use crate::runner_journal::RunnerJournals;
use crate::types::{
    ApiKeyRecord, CapacitySource, Millis, Organization, Region, Resources, Runner, SandboxState, SharedSandbox,
};

/// How many idempotency records are kept; the oldest are dropped first. Bounded so that a
/// client that sends a fresh key with every request cannot grow the state without limit.
pub const IDEMPOTENCY_RECORDS_MAX: usize = 100_000;
/// Idempotency records older than this (relative to the newest proposal) are dropped.
pub const IDEMPOTENCY_TTL_MS: Millis = 24 * 60 * 60 * 1000;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub at: Millis,
    pub fingerprint: Option<String>,
    pub result: ApplyResult,
}

/// A replicated collection by id: a persistent ordered map, so that a copy of the whole state
/// (a snapshot, a hash) costs O(1) under the lock and is then encoded without it, while
/// `apply` goes on (it copies a node of 16 entries the first time it changes one that a copy
/// still shares). Ordered, so the encoding stays canonical.
pub type ReplicatedMap<V, K = String> = imbl::OrdMap<K, V>;

/// The hasher of the indexes keyed by ids the cluster makes itself (sandbox and runner ids):
/// foldhash with a fixed seed. Its resistance to crafted keys, SipHash's reason to be, buys
/// nothing for keys no client picks, and a fixed seed walks an index in the same order in
/// every process (the standard hasher is seeded per process). On 36-byte ids foldhash costs
/// about what SipHash did (2.0 % of the nodes' samples creating sandboxes, against 2.3 %).
pub type IdHasher = foldhash::fast::FixedState;

/// A hash map keyed by cluster-made ids ([`IdHasher`]).
pub type IdMap<K, V> = HashMap<K, V, IdHasher>;

/// The sandboxes on one runner that are not destroyed, with their state. Hashed: when
/// sandbox ids were random (version-4 UUIDs, still in states made before time-ordered ids),
/// an ordered map of tens of thousands of them cost a cache miss per comparison (4 % of the
/// nodes' CPU creating sandboxes with 20 runners). Walks that must be ordered sort the ids
/// first. Keyed by the [`SharedId`] the runner journals hold too.
pub type RunnerSandboxes = IdMap<SharedId, SandboxState>;

/// A sandbox id as the sandbox map's key: `runner_sandboxes` and the runner journal (twice)
/// share that one allocation of each id instead of four copies (about 150 bytes and three
/// allocations fewer per sandbox, on every replica).
pub type SharedId = std::sync::Arc<str>;

/// The whole replicated state. Ordered maps make its serialization canonical, so the hash of
/// the encoding is equal on replicas with equal state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub organizations: ReplicatedMap<Organization>,
    pub api_keys: ReplicatedMap<ApiKeyRecord>,
    pub regions: ReplicatedMap<Region>,
    pub runners: ReplicatedMap<Runner>,
    /// Keyed by the [`SharedId`] that the runner index and journal share (the encoding is
    /// the same as a `String` key's).
    pub sandboxes: ReplicatedMap<SharedSandbox, SharedId>,
    pub idempotency: ReplicatedMap<IdempotencyRecord>,
    /// The newest proposal time seen; drives idempotency expiry deterministically.
    pub clock: Millis,
    /// Derived from the maps above; not serialized, rebuilt by [`State::decode`].
    /// Index: (organization id, region name) → region id. Hashed: only looked up, never
    /// walked in order, and a lookup in an ordered map of random ids costs a cache miss per
    /// comparison (a quarter of a region creation's CPU with 250,000 regions).
    #[serde(skip)]
    pub region_names: HashMap<(String, String), String>,
    /// Index: (region id, runner name) → runner id.
    #[serde(skip)]
    pub runner_names: BTreeMap<(String, String), String>,
    /// Index: runner id → the sandboxes on it that are not destroyed, with their state (what
    /// runner sessions diff against without touching the big sandbox map).
    #[serde(skip)]
    pub runner_sandboxes: BTreeMap<String, RunnerSandboxes>,
    /// Index: runner token hash → runner id (runner agents authenticate by token). Hashed,
    /// like `region_names`.
    #[serde(skip)]
    pub runner_keys: HashMap<String, String>,
    /// Index: organization id → what its sandboxes hold in shared regions, which its quota
    /// limits ([`crate::quota`]).
    #[serde(skip)]
    pub quota_usage: BTreeMap<String, QuotaUsage>,
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
    /// The snapshot encoding ([`crate::codec`]).
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        self.replicated_view().encode()
    }

    /// A copy of the replicated part of the state (what [`State::encode`] writes), taken in
    /// O(1): the collections are persistent maps. Take it under the state's lock, then encode
    /// or hash it after releasing the lock, so that `apply` does not wait for the encoding.
    pub fn replicated_view(&self) -> ReplicatedView {
        ReplicatedView {
            organizations: self.organizations.clone(),
            api_keys: self.api_keys.clone(),
            regions: self.regions.clone(),
            runners: self.runners.clone(),
            sandboxes: self.sandboxes.clone(),
            idempotency: self.idempotency.clone(),
            clock: self.clock,
        }
    }

    /// How many organizations, regions, runners and sandboxes the state holds (what a
    /// snapshot's size grows with).
    pub fn object_count(&self) -> u64 {
        (self.organizations.len() + self.regions.len() + self.runners.len() + self.sandboxes.len()) as u64
    }

    /// Decodes [`State::encode`]'s output (or a JSON snapshot from before the binary
    /// encoding) and rebuilds the derived indexes.
    pub fn decode(bytes: &[u8]) -> Result<State, CodecError> {
        let mut state: State = codec::decode(bytes)?;
        state.rebuild_indexes();
        Ok(state)
    }

    /// Carries the replica-local counters over from `previous`, the state this one replaces
    /// on a snapshot install: the runner epoch moves on (the scheduler's cached indexes are
    /// stale) and journal positions continue, so no runner session's cursor looks current.
    pub fn carry_local_from(&mut self, previous: &State) {
        self.runner_epoch = LocalEpoch(previous.runner_epoch.0.wrapping_add(1));
        self.runner_journals.continue_after(previous.runner_journals.last_position());
        self.rebuild_journals();
    }

    fn rebuild_indexes(&mut self) {
        let without_source: Vec<String> =
            self.runners.iter().filter(|(_, r)| r.capacity_source.is_none()).map(|(id, _)| id.clone()).collect();
        for id in without_source {
            if let Some(runner) = self.runners.get_mut(&id) {
                runner.capacity_source = Some(CapacitySource::for_capacity(runner.capacity));
            }
        }
        self.region_names =
            self.regions.values().map(|r| ((r.organization_id.clone(), r.name.clone()), r.id.clone())).collect();
        self.runner_names =
            self.runners.values().map(|r| ((r.region_id.clone(), r.name.clone()), r.id.clone())).collect();
        self.runner_keys = self.runners.values().map(|r| (r.api_key_hash.clone(), r.id.clone())).collect();
        self.idempotency_by_age = self.idempotency.iter().map(|(k, r)| (r.at, k.clone())).collect();
        self.runner_sandboxes.clear();
        // Keyed by clones of the map's keys, as `apply` keys them.
        for (id, s) in self.sandboxes.iter().filter(|(_, s)| s.state != SandboxState::Destroyed) {
            self.runner_sandboxes.entry(s.runner_id.clone()).or_default().insert(id.clone(), s.state);
        }
        self.quota_usage = self.derive_quota_usage();
        self.rebuild_journals();
    }

    /// What each organization's sandboxes hold in shared regions, counted from the sandboxes.
    fn derive_quota_usage(&self) -> BTreeMap<String, QuotaUsage> {
        let mut usage: BTreeMap<String, QuotaUsage> = BTreeMap::new();
        for s in self.sandboxes.values().filter(|s| s.state != SandboxState::Destroyed) {
            if self.regions.get(&s.region_id).is_some_and(counts_against_quota) {
                usage.entry(s.organization_id.clone()).or_default().add(s.resources);
            }
        }
        usage
    }

    /// What `organization_id`'s sandboxes hold in shared regions now.
    pub fn quota_usage_of(&self, organization_id: &str) -> QuotaUsage {
        self.quota_usage.get(organization_id).copied().unwrap_or_default()
    }

    /// Records every sandbox afresh, runner by runner and in id order on each (the order of
    /// the sandbox map, grouped: `runner_sandboxes` is hashed).
    fn rebuild_journals(&mut self) {
        let mut by_runner: BTreeMap<&str, Vec<&SharedId>> = BTreeMap::new();
        for (id, s) in self.sandboxes.iter().filter(|(_, s)| s.state != SandboxState::Destroyed) {
            by_runner.entry(s.runner_id.as_str()).or_default().push(id);
        }
        self.runner_journals
            .rebuild(by_runner.iter().flat_map(|(runner, ids)| ids.iter().map(move |id| (*runner, *id))));
    }

    /// SHA-256 over the canonical JSON encoding, hex encoded.
    pub fn hash(&self) -> String {
        self.replicated_view().hash()
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

    /// Checks the invariants `apply` keeps (allocations are the sum of their sandboxes and
    /// within capacity, references resolve, indexes match); used by tests after every apply
    /// and by a debug assertion in `apply`.
    pub fn validate(&self) -> Result<(), String> {
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
            if !fits(r.capacity, Resources::default(), r.allocated) {
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
        let mut usage = self.quota_usage.clone();
        usage.retain(|_, u| *u != QuotaUsage::default());
        if usage != self.derive_quota_usage() {
            return Err("quota usage index out of step with the sandboxes".into());
        }
        Ok(())
    }
}

/// The replicated part of a [`State`] at one moment ([`State::replicated_view`]): the fields
/// `State` serializes, in the same order and under the same names, so that its encoding is
/// byte for byte the state's, and [`State::decode`] reads it.
#[derive(Serialize, Clone, Debug)]
pub struct ReplicatedView {
    organizations: ReplicatedMap<Organization>,
    api_keys: ReplicatedMap<ApiKeyRecord>,
    regions: ReplicatedMap<Region>,
    runners: ReplicatedMap<Runner>,
    sandboxes: ReplicatedMap<SharedSandbox, SharedId>,
    idempotency: ReplicatedMap<IdempotencyRecord>,
    clock: Millis,
}

impl ReplicatedView {
    /// The snapshot encoding, as [`State::encode`].
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }

    /// [`ReplicatedView::encode`] written to `out` as it goes: a snapshot of hundreds of
    /// megabytes streams to its file instead of first filling (and faulting in) a buffer
    /// of its size.
    pub fn encode_to<W: std::io::Write + ?Sized>(&self, out: &mut W) -> Result<(), CodecError> {
        codec::encode_to(out, self)
    }

    /// The SHA-256 of the view's canonical JSON encoding, hex, as [`State::hash`].
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        // Serializing ordered maps and plain structs to a writer cannot fail.
        if let Err(e) = serde_json::to_writer(HashWriter(&mut hasher), self) {
            return format!("unhashable:{e}");
        }
        hex::encode(hasher.finalize())
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

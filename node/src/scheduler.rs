//! The leader's batched scheduler.
//!
//! Sandbox requests (local, or forwarded by followers over gRPC) wait in a bounded queue. One
//! loop takes a batch — whatever waits, up to `max_batch` requests — places each with the
//! placement core over the current state, and proposes ONE `PlaceSandboxes` Raft entry for
//! the whole batch. Each caller gets its own sandbox (or rejection) once the entry is applied.
//! There is no gathering timer: requests pile up while an entry is in flight, so the batch
//! size follows the load, and the next entry leaves as soon as the last is applied, in time to
//! carry the commit index that the leader holds back for it (`COMMIT_NOTICE_DELAY_US` in
//! corral-raft-types; with a 1-ms gathering wait, half the entries missed it and waited for a
//! commit-only AppendEntries round trip). `apply` re-checks every placement, so a decision made
//! on a stale view is rejected, never overcommitted.
//!
//! Only the leader places: on a node that is not leader every request is answered
//! `NotLeader`, and the node that forwarded it retries at the new leader; requests carry the
//! client's idempotency key, so a retry of a placement that did commit returns that sandbox.
//! A full queue answers `Overloaded` (HTTP 503) at once instead of buffering without bound.

use std::collections::HashMap;
use std::time::Duration;

use corral_model::access::authorize_placement;
use corral_model::health::SharedHealth;
use corral_model::placement::{usage_headroom, RegionPlacementIndex};
use corral_model::{
    admit_to_quota, recorded_placement, Command, ObjectKind, Outcome, Placement, Proposal, QuotaUsage, Rejection,
    SandboxRequest, SharedSandbox, State,
};
use corral_raft_types::SharedState;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::leader::{Leader, LeaderError};

/// Scheduler limits.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Requests waiting for placement; beyond this callers get `Overloaded`.
    pub queue_capacity: usize,
    /// Most requests in one Raft entry.
    pub max_batch: usize,
    /// Seed of the generator that picks among the best runners (`None`: from the OS). The
    /// seed in use is logged at start, so a run's choices can be replayed.
    pub seed: Option<u64>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { queue_capacity: 16_384, max_batch: 1_024, seed: None }
    }
}

/// What a caller gets: the sandbox or why not (`Ok(Err)`), or why the cluster could not say.
pub type Reply = Result<Result<SharedSandbox, Rejection>, LeaderError>;

/// A request waiting in the queue, with where its answer goes.
pub struct Pending {
    pub request: SandboxRequest,
    pub reply: oneshot::Sender<Reply>,
}

impl Pending {
    /// A request and the receiver of its answer.
    pub fn new(request: SandboxRequest) -> (Pending, oneshot::Receiver<Reply>) {
        let (reply, answer) = oneshot::channel();
        (Pending { request, reply }, answer)
    }
}

/// Handle for submitting requests; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    queue: mpsc::Sender<Pending>,
}

impl Scheduler {
    /// Starts the scheduling loop on the current runtime.
    /// Reported usage in `health` caps runners' scores.
    pub fn start(leader: Leader, shared: SharedState, health: SharedHealth, config: SchedulerConfig) -> Scheduler {
        let (queue, rx) = mpsc::channel(config.queue_capacity);
        let seed = config.seed.unwrap_or_else(rand::random);
        tracing::info!(seed, "scheduler placement seed (set scheduler_seed to replay)");
        let rng = rand::rngs::StdRng::seed_from_u64(seed);
        tokio::spawn(run(leader, shared, IndexCache::with_health(health), config, rng, rx));
        Scheduler { queue }
    }

    /// Places one sandbox (batched with others) and returns once the placement is applied. A
    /// full queue answers `Overloaded` at once.
    pub async fn place(&self, request: SandboxRequest) -> Reply {
        let (pending, answer) = Pending::new(request);
        self.queue.try_send(pending).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LeaderError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => LeaderError::Unavailable("scheduler stopped".into()),
        })?;
        answer.await.map_err(|_| LeaderError::Unavailable("scheduler dropped the request".into()))?
    }
}

async fn run(
    leader: Leader,
    shared: SharedState,
    mut cache: IndexCache,
    config: SchedulerConfig,
    mut rng: rand::rngs::StdRng,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(config.max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < config.max_batch {
            let Ok(next) = rx.try_recv() else { break };
            batch.push(next);
        }
        metrics::gauge!("corral_scheduler_queue_depth").set(rx.len() as f64);
        metrics::histogram!("corral_scheduler_batch_size").record(batch.len() as f64);
        let started = std::time::Instant::now();
        schedule_batch(&leader, &shared, &mut batch, &mut rng, &mut cache).await;
        metrics::histogram!("corral_scheduler_batch_duration_seconds").record(started.elapsed().as_secs_f64());
        batch.clear();
    }
}

/// How many times one request is placed before its last rejection is returned: a placement
/// `apply` rejects because the runner changed under it (unschedulable, full, deleted) is
/// placed again on the fresh state.
pub const MAX_PLACEMENT_ATTEMPTS: u32 = 3;

/// The scheduler's placement indexes, kept across batches while nothing but its own
/// placements changed the runners: rebuilding a region's index costs ~1.7 ms at 10,000
/// runners (see the `index_build` benchmark), which would otherwise be paid every batch.
/// With a health table, runners' reported usage caps their scores; as usage moves without
/// Raft, indexes are then also rebuilt once they are [`USAGE_REFRESH`] old.
#[derive(Default)]
pub struct IndexCache {
    indexes: HashMap<String, RegionPlacementIndex>,
    /// `State::runner_epoch` the indexes match.
    epoch: u64,
    health: Option<SharedHealth>,
    built_at: Option<Instant>,
}

/// How stale reported usage may be in a cached index.
pub const USAGE_REFRESH: Duration = Duration::from_secs(1);

impl IndexCache {
    pub fn with_health(health: SharedHealth) -> Self {
        IndexCache { health: Some(health), ..IndexCache::default() }
    }

    fn sync(&mut self, state: &State) {
        let usage_stale = self.health.is_some() && self.built_at.is_none_or(|t| t.elapsed() > USAGE_REFRESH);
        if self.epoch != state.runner_epoch.0 || usage_stale {
            self.indexes.clear();
            self.epoch = state.runner_epoch.0;
            self.built_at = Some(Instant::now());
        }
    }

    fn build(&self, state: &State, region_id: &str) -> RegionPlacementIndex {
        match &self.health {
            Some(health) => {
                let table = health.read();
                RegionPlacementIndex::for_region_with_usage(state, region_id, |id| {
                    table.get(id).map(|e| usage_headroom(&e.report))
                })
            }
            None => RegionPlacementIndex::for_region(state, region_id),
        }
    }
}

/// A request together with the placement decided for it.
pub struct Planned {
    pending: Pending,
    placement: Placement,
}

/// Places one batch and answers every request in it.
async fn schedule_batch(
    leader: &Leader,
    shared: &SharedState,
    batch: &mut Vec<Pending>,
    rng: &mut rand::rngs::StdRng,
    cache: &mut IndexCache,
) {
    // A new leader may hold committed entries it has not applied yet (a sandbox deleted just
    // before the old leader died): planning on that state would answer `no_capacity` wrongly.
    let ready = match leader.not_leader() {
        Some(e) => Err(e),
        None => leader.wait_caught_up().await,
    };
    if let Err(e) = ready {
        for p in batch.drain(..) {
            let _ = p.reply.send(Err(e.clone()));
        }
        return;
    }
    let planned = plan(&shared.read().state, batch.drain(..), rng, cache);
    commit_and_retry(leader, shared, planned, rng, cache).await;
}

/// Decides every placement of a batch on one consistent view of the state. Replays of an
/// idempotency key and requests no runner can hold are answered here and not planned.
pub fn plan(
    state: &State,
    batch: impl IntoIterator<Item = Pending>,
    rng: &mut impl Rng,
    cache: &mut IndexCache,
) -> Vec<Planned> {
    cache.sync(state);
    let mut planned = Vec::new();
    // What this batch already planned per organization, for the quota check (apply checks
    // again; this answers over-quota requests without a Raft entry or a cache rebuild).
    let mut planned_quota: HashMap<String, QuotaUsage> = HashMap::new();
    let now = corral_net::now_millis().max(state.clock);
    for pending in batch {
        let request = &pending.request;
        // As in apply: a revoked or expired key gets nothing, not even a recorded answer.
        if let Err(rejection) = authorize_placement(state, request.credential.as_deref(), &request.organization_id, now)
        {
            let _ = pending.reply.send(Ok(Err(rejection)));
            continue;
        }
        if let Some(first) = request.idempotency_key.as_deref().and_then(|k| recorded_placement(state, k)) {
            let _ = pending.reply.send(Ok(first));
            continue;
        }
        let organization = request.organization_id.as_str();
        let already = planned_quota.get(organization).copied().unwrap_or_default();
        let counted = match admit_to_quota(state, organization, &request.region_id, request.resources, &already) {
            Ok(counted) => counted,
            Err(rejection) => {
                metrics::counter!("corral_scheduler_placements_total", "outcome" => "over_quota").increment(1);
                let _ = pending.reply.send(Ok(Err(rejection)));
                continue;
            }
        };
        if !cache.indexes.contains_key(&request.region_id) {
            let built = cache.build(state, &request.region_id);
            cache.indexes.insert(request.region_id.clone(), built);
        }
        let Some(index) = cache.indexes.get_mut(&request.region_id) else { continue };
        match index.place_matching(request.resources, &request.runner_tags, rng) {
            Some(runner_id) => {
                let placement = Placement {
                    sandbox_id: request.sandbox_id.clone(),
                    organization_id: request.organization_id.clone(),
                    target: request.target.clone(),
                    region_id: request.region_id.clone(),
                    runner_id: runner_id.to_string(),
                    resources: request.resources,
                    labels: request.labels.clone(),
                    runner_tags: request.runner_tags.clone(),
                    idempotency_key: request.idempotency_key.clone(),
                    credential: request.credential.clone(),
                };
                if counted {
                    planned_quota.entry(organization.to_string()).or_default().add(request.resources);
                }
                planned.push(Planned { pending, placement });
            }
            None => {
                metrics::counter!("corral_scheduler_placements_total", "outcome" => "no_capacity").increment(1);
                let region_id = request.region_id.clone();
                let _ = pending.reply.send(Ok(Err(Rejection::NoCapacity { region_id })));
            }
        }
    }
    planned
}

/// Whether `apply` rejected a placement because the runner changed after it was planned.
fn changed_under_us(rejection: &Rejection) -> bool {
    matches!(
        rejection,
        Rejection::RunnerNotSchedulable { .. }
            | Rejection::InsufficientCapacity { .. }
            | Rejection::RunnerTagsMismatch { .. }
            | Rejection::NotFound { kind: ObjectKind::Runner, .. }
    )
}

/// Proposes the planned placements as ONE Raft entry, answers each request, and places again
/// (on the state after the entry) those `apply` rejected because their runner changed.
/// The cache stays valid only when the entry was the one change to the runners since the plan
/// and every placement in it was applied as planned.
pub async fn commit_and_retry(
    leader: &Leader,
    shared: &SharedState,
    mut planned: Vec<Planned>,
    rng: &mut impl Rng,
    cache: &mut IndexCache,
) {
    let mut attempt = 1;
    while !planned.is_empty() {
        let planned_epoch = cache.epoch;
        // Until the entry is known to have applied exactly as planned, the cache is suspect.
        cache.epoch = u64::MAX;
        let (pendings, placements): (Vec<Pending>, Vec<Placement>) =
            planned.into_iter().map(|p| (p.pending, p.placement)).unzip();
        let proposal = Proposal::new(Command::PlaceSandboxes { placements }, corral_net::now_millis());
        let results = match leader.write(proposal).await {
            Ok(committed) => match committed.response {
                Ok(Outcome::Placed(results)) if results.len() == pendings.len() => results,
                other => {
                    tracing::error!(?other, "PlaceSandboxes applied with an unexpected outcome");
                    for p in pendings {
                        let _ = p.reply.send(Err(LeaderError::Unavailable("unexpected apply outcome".into())));
                    }
                    return;
                }
            },
            Err(e) => {
                for p in pendings {
                    let _ = p.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        if results.iter().all(Result::is_ok) && shared.read().state.runner_epoch.0 == planned_epoch.wrapping_add(1) {
            cache.epoch = planned_epoch.wrapping_add(1);
        }
        let mut again = Vec::new();
        for (pending, result) in pendings.into_iter().zip(results) {
            let outcome = match &result {
                Ok(_) => "placed",
                Err(r) if changed_under_us(r) && attempt < MAX_PLACEMENT_ATTEMPTS => "retried",
                Err(_) => "rejected",
            };
            metrics::counter!("corral_scheduler_placements_total", "outcome" => outcome).increment(1);
            match result {
                Err(rejection) if changed_under_us(&rejection) && attempt < MAX_PLACEMENT_ATTEMPTS => {
                    tracing::debug!(%rejection, "placement rejected on apply; placing again");
                    again.push(pending);
                }
                result => {
                    let _ = pending.reply.send(Ok(result));
                }
            }
        }
        attempt += 1;
        planned = if again.is_empty() { Vec::new() } else { plan(&shared.read().state, again, rng, cache) };
    }
}

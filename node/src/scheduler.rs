//! The leader's batched scheduler.
//!
//! Sandbox requests (local, or forwarded by followers over gRPC) wait in a bounded queue. One
//! loop drains a batch — up to `max_batch` requests, or whatever arrives within `max_wait`
//! of the first — places each with the placement core over the current state, and proposes
//! ONE `PlaceSandboxes` Raft entry for the whole batch. Each caller gets its own sandbox (or
//! rejection) once the entry is applied. `apply` re-checks every placement, so a decision made
//! on a stale view is rejected, never overcommitted.
//!
//! Only the leader places: on a node that is not leader every request is answered
//! `NotLeader`, and the node that forwarded it retries at the new leader; requests carry the
//! client's idempotency key, so a retry of a placement that did commit returns that sandbox.
//! A full queue answers `Overloaded` (HTTP 503) at once instead of buffering without bound.

use std::collections::HashMap;
use std::time::Duration;

use corral_net::{write_on_leader, ForwardError, SandboxPlacement};
use corral_storage::model::{
    recorded_placement, Command, Outcome, Placement, Proposal, Rejection, Sandbox, SandboxRequest,
};
use corral_storage::{Raft, SharedState};
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::placement::RegionPlacementIndex;

/// Scheduler limits.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Requests waiting for placement; beyond this callers get `Overloaded`.
    pub queue_capacity: usize,
    /// Most requests in one Raft entry.
    pub max_batch: usize,
    /// How long a batch waits for more requests after its first.
    pub max_wait: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { queue_capacity: 16_384, max_batch: 1_024, max_wait: Duration::from_millis(1) }
    }
}

type Reply = Result<Result<Sandbox, Rejection>, ForwardError>;

struct Pending {
    request: SandboxRequest,
    reply: oneshot::Sender<Reply>,
}

/// Handle for submitting requests; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    queue: mpsc::Sender<Pending>,
}

impl Scheduler {
    /// Starts the scheduling loop on the current runtime.
    pub fn start(raft: Raft, shared: SharedState, config: SchedulerConfig) -> Scheduler {
        let (queue, rx) = mpsc::channel(config.queue_capacity);
        tokio::spawn(run(raft, shared, config, rx));
        Scheduler { queue }
    }
}

#[tonic::async_trait]
impl SandboxPlacement for Scheduler {
    async fn place(&self, request: SandboxRequest) -> Reply {
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Pending { request, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ForwardError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ForwardError::Unavailable("scheduler stopped".into()),
        })?;
        answer.await.map_err(|_| ForwardError::Unavailable("scheduler dropped the request".into()))?
    }
}

async fn run(raft: Raft, shared: SharedState, config: SchedulerConfig, mut rx: mpsc::Receiver<Pending>) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut batch: Vec<Pending> = Vec::with_capacity(config.max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = Instant::now() + config.max_wait;
        while batch.len() < config.max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                },
            }
        }
        schedule_batch(&raft, &shared, &mut batch, &mut rng).await;
        batch.clear();
    }
}

/// Places one batch and answers every request in it.
async fn schedule_batch(raft: &Raft, shared: &SharedState, batch: &mut Vec<Pending>, rng: &mut rand::rngs::StdRng) {
    let leader = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        (m.current_leader == Some(m.id)).then_some(()).ok_or_else(|| ForwardError::NotLeader {
            leader_id: m.current_leader,
            leader: m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned()),
        })
    };
    if let Err(not_leader) = leader {
        for p in batch.drain(..) {
            let _ = p.reply.send(Err(not_leader.clone()));
        }
        return;
    }

    // Decide every placement on one consistent view; answer replays and hopeless requests now.
    let mut placements: Vec<Placement> = Vec::with_capacity(batch.len());
    let mut waiting: Vec<oneshot::Sender<Reply>> = Vec::with_capacity(batch.len());
    {
        let machine = shared.read();
        let state = &machine.state;
        let mut indexes: HashMap<String, RegionPlacementIndex> = HashMap::new();
        for p in batch.drain(..) {
            let request = p.request;
            if let Some(first) = request.idempotency_key.as_deref().and_then(|k| recorded_placement(state, k)) {
                let _ = p.reply.send(Ok(first));
                continue;
            }
            let index = indexes
                .entry(request.region_id.clone())
                .or_insert_with(|| RegionPlacementIndex::build(state.runners_in_region(&request.region_id)));
            match index.place(request.resources, rng) {
                Some(runner_id) => {
                    placements.push(Placement {
                        sandbox_id: request.sandbox_id,
                        organization_id: request.organization_id,
                        target: request.target,
                        region_id: request.region_id,
                        runner_id: runner_id.to_string(),
                        resources: request.resources,
                        labels: request.labels,
                        idempotency_key: request.idempotency_key,
                    });
                    waiting.push(p.reply);
                }
                None => {
                    let _ = p.reply.send(Ok(Err(Rejection::NoCapacity { region_id: request.region_id })));
                }
            }
        }
    }
    if placements.is_empty() {
        return;
    }

    let proposal = Proposal::new(Command::PlaceSandboxes { placements }, corral_api::now_millis());
    match write_on_leader(raft, proposal).await {
        Ok(committed) => match committed.response.0 {
            Ok(Outcome::Placed(results)) if results.len() == waiting.len() => {
                for (reply, result) in waiting.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            other => {
                tracing::error!(?other, "PlaceSandboxes applied with an unexpected outcome");
                for reply in waiting {
                    let _ = reply.send(Err(ForwardError::Unavailable("unexpected apply outcome".into())));
                }
            }
        },
        Err(e) => {
            for reply in waiting {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

//! The simulation's clients. Each goes to a node that is up (as through a load balancer) and
//! takes the node's own path to the leader, as `RaftCluster` does: on the leader, its leader
//! handle; elsewhere, its forwarder, which calls the leader it knows over gRPC (on the
//! simulated TCP). Writes are coalesced and carry an idempotency key, so a retry after a lost
//! answer applies at most once; a read takes a read index from the leader and waits until
//! the node has applied it.
//!
//! - register clients write and read the proxy URL of a few regions (one register each),
//!   recorded as a Jepsen-style history for the linearizability and lost-write checks;
//! - sandbox clients ask the leader's scheduler for sandboxes and delete them again;
//! - an operator changes the runners' capacity, and the health monitor ([`crate::fleet`])
//!   marks runners whose agents die unresponsive and back, so that the scheduler plans on a
//!   view that a concurrent change makes stale (what `apply`'s re-checks exist for).

use std::time::Duration;

use corral_chaos::history::{Call, Outcome};
use corral_model::{ApplyResult, CapacitySource, Command, FieldUpdate, Proposal, Resources, SandboxRequest};
use corral_net::{ForwardError, NetError};
use corral_node::forwarder::Forwarder;
use corral_node::leader::LeaderError;
use corral_raft_types::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::world::{Handles, World};

/// How long a client keeps retrying one operation.
const OPERATION_DEADLINE: Duration = Duration::from_secs(2);
/// One attempt's limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(600);

pub const ORGANIZATION: &str = "org-sim";
pub const POOL_REGION: &str = "pool";
pub const RUNNERS: [&str; 3] = ["runner-a", "runner-b", "runner-c"];

pub fn register_key(i: usize) -> String {
    format!("register-{i}")
}

/// The register value a region's proxy URL holds.
pub fn register_value(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches(".sim").to_string()
}

fn proxy_url(value: &str) -> String {
    format!("http://{value}.sim")
}

/// What one attempt at the leader gave.
enum Attempt<T> {
    Done(T),
    /// Go to this node next (the leader as the asked node knows it).
    Redirect(Option<NodeId>),
    /// Lost, timed out, or refused for now: try again.
    Retry,
}

/// Runs an operation on the leader as node `via` sees it: `local` on `via`'s own handles when
/// it leads, else `remote` through its forwarder to the leader's address.
async fn at_leader<T, L, LF, R, RF>(world: &World, via: NodeId, op: &(L, R)) -> Attempt<T>
where
    L: Fn(Handles) -> LF,
    LF: std::future::Future<Output = Result<T, LeaderError>>,
    R: Fn(Forwarder, String) -> RF,
    RF: std::future::Future<Output = Result<Result<T, ForwardError>, NetError>>,
{
    let Some(node) = world.node(via) else { return Attempt::Retry };
    let leader_id = node.raft.metrics().borrow().current_leader;
    let Some(leader_id) = leader_id else { return Attempt::Redirect(None) };
    let (local, remote) = op;
    if leader_id == via {
        return match tokio::time::timeout(ATTEMPT_TIMEOUT, local(node)).await {
            Ok(Ok(value)) => Attempt::Done(value),
            Ok(Err(LeaderError::NotLeader { leader_id, .. })) => Attempt::Redirect(leader_id),
            _ => Attempt::Retry,
        };
    }
    match remote(node.forwarder.clone(), crate::node::member(leader_id).raft_addr).await {
        Ok(Ok(value)) => Attempt::Done(value),
        Ok(Err(ForwardError::NotLeader { leader_id, .. })) => Attempt::Redirect(leader_id),
        _ => Attempt::Retry,
    }
}

/// A node that is up, chosen at random (the load balancer).
fn any_node(world: &World, rng: &mut StdRng) -> Option<NodeId> {
    let up: Vec<NodeId> = world.up().into_iter().map(|(id, _)| id).collect();
    up.choose(rng).copied()
}

/// Runs `op` (local, remote: see [`at_leader`]) on the leader, reached through a node that is
/// up, until it is answered or the deadline passes; `None`: no answer. Retrying is safe:
/// every write carries an idempotency key.
async fn until_answered<T, L, LF, R, RF>(world: &World, rng: &mut StdRng, op: (L, R)) -> Option<T>
where
    L: Fn(Handles) -> LF,
    LF: std::future::Future<Output = Result<T, LeaderError>>,
    R: Fn(Forwarder, String) -> RF,
    RF: std::future::Future<Output = Result<Result<T, ForwardError>, NetError>>,
{
    let deadline = tokio::time::Instant::now() + OPERATION_DEADLINE;
    let mut via = any_node(world, rng);
    while tokio::time::Instant::now() < deadline {
        let Some(node) = via.or_else(|| any_node(world, rng)) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        match at_leader(world, node, &op).await {
            Attempt::Done(answer) => return Some(answer),
            Attempt::Redirect(Some(leader)) if world.node(leader).is_some() => via = Some(leader),
            Attempt::Redirect(_) | Attempt::Retry => {
                via = any_node(world, rng);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(10..40))).await;
            }
        }
    }
    None
}

/// Proposes `proposal` until it is answered or the deadline passes; `None`: no answer.
pub async fn write(world: &World, rng: &mut StdRng, proposal: Proposal) -> Option<ApplyResult> {
    let local = |node: Handles| {
        let p = proposal.clone();
        async move { node.leader.write(p).await }
    };
    let remote = |forwarder: Forwarder, leader: String| {
        let p = proposal.clone();
        async move { forwarder.write(leader, p, ATTEMPT_TIMEOUT).await }
    };
    until_answered(world, rng, (local, remote)).await.map(|c| c.response)
}

/// A linearizable read on node `via`: the leader's read index, then the node's own state
/// once it has applied that far. `None`: it could not be served.
async fn read_register(world: &World, via: NodeId, key: &str) -> Option<Option<String>> {
    let local = |node: Handles| async move { node.leader.read_index().await };
    let remote =
        |forwarder: Forwarder, leader: String| async move { forwarder.read_index(leader, ATTEMPT_TIMEOUT).await };
    let index = match at_leader(world, via, &(local, remote)).await {
        Attempt::Done(index) => index,
        _ => return None,
    };
    let deadline = tokio::time::Instant::now() + ATTEMPT_TIMEOUT;
    loop {
        let node = world.node(via)?;
        {
            let machine = node.shared.read();
            if machine.last_applied.map_or(0, |l| l.index) >= index {
                return Some(machine.state.regions.get(key).and_then(|r| r.proxy_url.as_deref()).map(register_value));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One register client until `stop`.
pub async fn register_client(client: u64, keys: usize, world: World, seed: u64, mut stop: watch::Receiver<bool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut written = 0u64;
    while !*stop.borrow() {
        let key = register_key(rng.gen_range(0..keys));
        let invoke = world.now();
        if rng.gen_bool(0.5) {
            written += 1;
            let value = format!("c{client}-{written}");
            let command = Command::UpdateRegionUrls {
                id: key.clone(),
                proxy_url: FieldUpdate::Set(proxy_url(&value)),
                ssh_gateway_url: FieldUpdate::Keep,
                snapshot_manager_url: FieldUpdate::Keep,
            };
            let mut proposal = Proposal::new(command, corral_net::now_millis());
            proposal.idempotency_key = Some(format!("sim/register/{client}/{written}"));
            let outcome = match write(&world, &mut rng, proposal).await {
                Some(Ok(_)) => Outcome::Ok,
                Some(Err(_)) => Outcome::Fail,
                None => Outcome::Unknown,
            };
            world.push_op(client, Call::Write { key, value }, invoke, outcome, None);
        } else if let Some(via) = any_node(&world, &mut rng) {
            match read_register(&world, via, &key).await {
                Some(seen) => world.push_op(client, Call::Read { key }, invoke, Outcome::Ok, Some(seen)),
                None => world.push_op(client, Call::Read { key }, invoke, Outcome::Fail, None),
            };
        }
        let pause = Duration::from_millis(rng.gen_range(5..60));
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Asks the leader's scheduler for a sandbox until answered or the deadline passes;
/// `Some(true)`: placed.
async fn place(world: &World, rng: &mut StdRng, request: SandboxRequest) -> Option<bool> {
    let local = |node: Handles| {
        let r = request.clone();
        async move { node.scheduler.place(r).await }
    };
    let remote = |forwarder: Forwarder, leader: String| {
        let r = request.clone();
        async move { forwarder.place(leader, r, ATTEMPT_TIMEOUT).await }
    };
    until_answered(world, rng, (local, remote)).await.map(|p| p.is_ok())
}

/// One sandbox client until `stop`: creates sandboxes in the pool region and deletes them.
pub async fn sandbox_client(client: u64, world: World, seed: u64, mut stop: watch::Receiver<bool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut live: Vec<(String, String)> = Vec::new();
    let mut made = 0u64;
    while !*stop.borrow() {
        if live.len() >= 6 || (!live.is_empty() && rng.gen_bool(0.35)) {
            let (sandbox_id, request) = live.swap_remove(rng.gen_range(0..live.len()));
            world.mark_deleted(&request);
            let mut proposal = Proposal::new(Command::DeleteSandbox { id: sandbox_id }, corral_net::now_millis());
            proposal.idempotency_key = Some(format!("sim/delete/{request}"));
            let _ = write(&world, &mut rng, proposal).await;
        } else {
            made += 1;
            let request = format!("sim-sandbox-{client}-{made}");
            let cpu = rng.gen_range(1..=2);
            let sandbox_request = SandboxRequest {
                sandbox_id: request.clone(),
                organization_id: ORGANIZATION.into(),
                target: POOL_REGION.into(),
                region_id: POOL_REGION.into(),
                resources: Resources { cpu, memory_gib: 1, disk_gib: 1, gpu: 0 },
                labels: [("request".to_string(), request.clone())].into_iter().collect(),
                runner_tags: Default::default(),
                idempotency_key: Some(format!("sim/place/{request}")),
                credential: None,
            };
            let placed = place(&world, &mut rng, sandbox_request).await;
            world.push_sandbox(crate::world::SandboxOp {
                request: request.clone(),
                acknowledged: placed == Some(true),
                deleted: false,
            });
            if placed != Some(false) {
                live.push((request.clone(), request));
            }
        }
        let pause = Duration::from_millis(rng.gen_range(5..50));
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// The operator: now and then a runner's capacity changes.
pub async fn operator(world: World, seed: u64, mut stop: watch::Receiver<bool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !*stop.borrow() {
        let runner = RUNNERS[rng.gen_range(0..RUNNERS.len())];
        let cpu = rng.gen_range(2..=8);
        let command = Command::SetRunnerCapacity {
            id: runner.into(),
            capacity: Resources { cpu, memory_gib: 64, disk_gib: 640, gpu: 0 },
            source: CapacitySource::Operator,
        };
        let outcome = write(&world, &mut rng, Proposal::new(command, corral_net::now_millis())).await;
        world.trace(&format!("capacity {runner} cpu={cpu} {}", matches!(outcome, Some(Ok(_)))));
        let pause = Duration::from_millis(rng.gen_range(50..300));
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

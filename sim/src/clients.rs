//! The simulation's clients. Each goes to a node that is up (as through a load balancer).
//!
//! - register clients write and read the proxy URL of a few regions (one register each)
//!   through the nodes' REST API ([`crate::rest`]: `PATCH` and `GET /api/regions/{id}`, a
//!   linearizable read), recorded as a Jepsen-style history for the linearizability and
//!   lost-write checks;
//! - sandbox clients ask the leader's scheduler for sandboxes and delete them again, and
//! - an operator changes the runners' capacity, one layer under REST: they take the node's own
//!   path to the leader, as `RaftCluster` does (on the leader, its leader handle; elsewhere,
//!   its forwarder, which calls the leader it knows over gRPC on the simulated TCP), with an
//!   idempotency key on every write, so a retry after a lost answer applies at most once.
//!   The health monitor ([`crate::fleet`])
//!   marks runners whose agents die unresponsive and back, so that the scheduler plans on a
//!   view that a concurrent change makes stale (what `apply`'s re-checks exist for).

use std::time::Duration;

use corral_chaos::history::{Call, Outcome};
use corral_model::{ApplyResult, CapacitySource, Command, Proposal, Resources, SandboxRequest};
use corral_net::{ForwardError, NetError};
use corral_node::forwarder::Forwarder;
use corral_node::leader::LeaderError;
use corral_raft_types::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use hyper::{Method, StatusCode};

use crate::network::Fabric;
use crate::rest::{self, Reply};
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

/// Sends one request to a node that is up, trying others while no connection can be opened
/// (nothing was sent), for at most `within`. `None`: nothing was sent in that time; else the
/// node that took it and its reply (never [`Reply::NotSent`]).
async fn send_to_some_node(
    world: &World,
    fabric: &Fabric,
    rng: &mut StdRng,
    (method, path, body): (Method, &str, Option<&str>),
    within: Duration,
) -> Option<(NodeId, Reply)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        if let Some(node) = any_node(world, rng) {
            let body = body.map(str::to_string);
            match rest::call(fabric, node, method.clone(), path, body, ORGANIZATION, left).await {
                Reply::NotSent => {}
                reply => return Some((node, reply)),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..40))).await;
    }
}

/// Sets a register (a region's proxy URL) with `PATCH /api/regions/{key}` on a node that is
/// up. That route takes no idempotency key, so a request that was sent is never sent again:
/// without an answer (or with a 5xx) its outcome is unknown; only a request that never left
/// (no connection) is tried on another node. The region exists and the URL is valid, so a
/// 4xx is a wrong answer (it fails the run).
async fn write_register(world: &World, fabric: &Fabric, rng: &mut StdRng, key: &str, value: &str) -> Outcome {
    let body = serde_json::json!({ "proxyUrl": proxy_url(value) }).to_string();
    let path = format!("/api/regions/{key}");
    let request = (Method::PATCH, path.as_str(), Some(body.as_str()));
    match send_to_some_node(world, fabric, rng, request, OPERATION_DEADLINE).await {
        None => Outcome::Fail,
        Some((_, Reply::Answered(status, _))) if status.is_success() => Outcome::Ok,
        // A rejection: nothing was applied (a retry inside the node under its idempotency
        // key would have answered what the first attempt did).
        Some((node, Reply::Answered(status, body))) if status.is_client_error() => {
            let body = String::from_utf8_lossy(&body);
            world.wrong_answer(format!("PATCH {path} on node {node}: {status} {body}"));
            Outcome::Fail
        }
        Some(_) => Outcome::Unknown,
    }
}

/// A linearizable read (the default) of a register with `GET /api/regions/{key}` on a node
/// that is up. `None`: no answer (none came, or a 5xx). A 4xx, a body that is not JSON or one
/// without its `proxyUrl` field is a wrong answer (it fails the run; the field is never taken
/// for "unset").
async fn read_register(world: &World, fabric: &Fabric, rng: &mut StdRng, key: &str) -> Option<Option<String>> {
    let path = format!("/api/regions/{key}");
    match send_to_some_node(world, fabric, rng, (Method::GET, &path, None), ATTEMPT_TIMEOUT).await? {
        (node, Reply::Answered(status, body)) => match register_read(status, &body) {
            Ok(read) => read,
            Err(wrong) => {
                world.wrong_answer(format!("GET {path} on node {node}: {wrong}"));
                None
            }
        },
        (_, Reply::NoAnswer | Reply::NotSent) => None,
    }
}

/// What an answer to `GET /api/regions/{id}` says of the register: `Ok(Some(value))` a read
/// (`None`: unset), `Ok(None)` no answer (a 5xx), `Err` an answer the API must never give.
fn register_read(status: StatusCode, body: &[u8]) -> Result<Option<Option<String>>, String> {
    let text = || String::from_utf8_lossy(body).into_owned();
    if status.is_server_error() {
        return Ok(None);
    }
    if status != StatusCode::OK {
        return Err(format!("{status} {}", text()));
    }
    let view: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON ({e}): {}", text()))?;
    match view.get("proxyUrl") {
        Some(serde_json::Value::String(url)) => Ok(Some(Some(register_value(url)))),
        Some(serde_json::Value::Null) => Ok(Some(None)),
        _ => Err(format!("no proxyUrl string or null in {}", text())),
    }
}

/// One register client until `stop`, over the nodes' REST API.
pub async fn register_client(
    client: u64,
    keys: usize,
    world: World,
    fabric: Fabric,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut written = 0u64;
    while !*stop.borrow() {
        let key = register_key(rng.gen_range(0..keys));
        let invoke = world.now();
        if rng.gen_bool(0.5) {
            written += 1;
            let value = format!("c{client}-{written}");
            let outcome = write_register(&world, &fabric, &mut rng, &key, &value).await;
            world.push_op(client, Call::Write { key, value }, invoke, outcome, None);
        } else {
            match read_register(&world, &fabric, &mut rng, &key).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_answer_without_its_field_is_wrong_never_unset() {
        let ok = |body: &str| register_read(StatusCode::OK, body.as_bytes());
        assert_eq!(ok(r#"{"id":"r","proxyUrl":"http://c0-1.sim"}"#), Ok(Some(Some("c0-1".to_string()))));
        assert_eq!(ok(r#"{"id":"r","proxyUrl":null}"#), Ok(Some(None)));
        assert!(ok(r#"{"id":"r","proxy_url":"http://c0-1.sim"}"#).is_err(), "a renamed field");
        assert!(ok(r#"{"id":"r"}"#).is_err(), "a missing field");
        assert!(ok("not json").is_err());
        assert!(register_read(StatusCode::NOT_FOUND, b"{}").is_err(), "the region exists");
        assert_eq!(register_read(StatusCode::SERVICE_UNAVAILABLE, b"{}"), Ok(None), "no answer, not wrong");
    }
}

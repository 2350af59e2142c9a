//! One seed's run (see the crate doc for its phases).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use corral_chaos::check::{check_converged, check_final_state, check_linearizable, check_placements};
use corral_chaos::check::{PlacedSandbox, RunnerCapacity, Violation};
use corral_model::{Command, NewRegion, NewRunner, Proposal, RegionType, Resources, SandboxState, State};
use corral_raft_types::{NodeId, ProposalBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::clients::{self, register_key, register_value, ORGANIZATION, POOL_REGION, RUNNERS};
use crate::fleet;
use crate::invariants::Invariants;
use crate::nemesis::{self, Fault, FaultKind, Profile};
use crate::network::{Fabric, Faults};
use crate::node::{bootstrap, SimNode};
use crate::world::World;

/// How a run is shaped (the seed draws the rest).
#[derive(Debug, Clone)]
pub struct Options {
    /// Simulated time with faults.
    pub safety: Duration,
    /// Bound on the recovery after the faults are healed.
    pub liveness: Duration,
    /// Nodes (`None`: the seed picks 3 or 5).
    pub nodes: Option<usize>,
    /// Register keys the clients share.
    pub keys: usize,
    /// Steps of the linearizability search per key before it reports inconclusive.
    pub search_budget: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            safety: Duration::from_secs(15),
            liveness: Duration::from_secs(10),
            nodes: None,
            keys: 4,
            search_budget: 2_000_000,
        }
    }
}

/// What one seed's run found.
#[derive(Debug, Clone)]
pub struct SeedReport {
    pub seed: u64,
    pub nodes: usize,
    pub fault_kinds: Vec<FaultKind>,
    /// Faults injected (each a line: when, what).
    pub faults: Vec<String>,
    /// Everything that went wrong; empty for a passing seed.
    pub violations: Vec<String>,
    /// Hash of every event of the run, in order: equal for two runs of one seed.
    pub trace_hash: String,
    pub events: u64,
    pub operations: usize,
    pub acknowledged_writes: usize,
    pub steps: u64,
    /// Messages sent and lost by the simulated network.
    pub messages: (u64, u64),
    /// Unsynced writes lost in crashes.
    pub unsynced_lost: usize,
    /// Runner agents the runner nemesis killed.
    pub agent_kills: usize,
    /// Runners committed `unresponsive` while their agent kept reporting (when, which): a
    /// figure of merit for runner liveness under faults, not a safety violation.
    pub false_demotions: Vec<String>,
}

impl SeedReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs one seed on a fresh single-threaded runtime with a paused clock. The injected bug
/// (builds with the `injected-bugs` feature only) is whatever the process switched on.
pub fn run_seed(seed: u64, options: &Options) -> SeedReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            let mut report = SeedReport::empty(seed);
            report.violations.push(format!("cannot build the runtime: {e}"));
            return report;
        }
    };
    corral_raft_types::runtime::seed_thread_rng(seed);
    let report = runtime.block_on(async {
        // 2026-01-01T00:00:00Z: the proposals' wall clock starts here on every run.
        corral_net::simulate_wall_clock(Some(1_767_225_600_000));
        let report = simulate(seed, options).await;
        corral_net::simulate_wall_clock(None);
        report
    });
    corral_raft_types::runtime::unseed_thread_rng();
    // Tasks still parked (openraft's, of nodes shut down) are dropped with the runtime.
    runtime.shutdown_background();
    report
}

impl SeedReport {
    /// A report of nothing yet.
    fn empty(seed: u64) -> SeedReport {
        SeedReport {
            seed,
            nodes: 0,
            fault_kinds: Vec::new(),
            faults: Vec::new(),
            violations: Vec::new(),
            trace_hash: String::new(),
            events: 0,
            operations: 0,
            acknowledged_writes: 0,
            steps: 0,
            messages: (0, 0),
            unsynced_lost: 0,
            agent_kills: 0,
            false_demotions: Vec::new(),
        }
    }
}

struct Sim {
    seed: u64,
    rng: StdRng,
    fabric: Fabric,
    world: World,
    nodes: Vec<SimNode>,
    unsynced_lost: usize,
}

impl Sim {
    fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn node_mut(&mut self, id: NodeId) -> Option<&mut SimNode> {
        self.nodes.iter_mut().find(|n| n.id == id)
    }

    async fn start(&mut self, id: NodeId) -> Result<(), String> {
        let (fabric, world, seed) = (self.fabric.clone(), self.world.clone(), self.seed);
        let node = self.node_mut(id).ok_or_else(|| format!("no node {id}"))?;
        if node.running.is_some() {
            return Ok(());
        }
        let handles = node.start(&fabric, &world, seed).await?;
        world.set_up(id, handles);
        world.trace(&format!("start {id}"));
        Ok(())
    }

    async fn crash(&mut self, id: NodeId) {
        let (fabric, world) = (self.fabric.clone(), self.world.clone());
        world.set_down(id);
        let lost = match self.node_mut(id) {
            Some(node) => node.crash(&fabric).await,
            None => 0,
        };
        self.unsynced_lost += lost;
        world.trace(&format!("crash {id} lost {lost}"));
    }

    fn leader(&self) -> Option<NodeId> {
        self.world.up().into_iter().find_map(|(id, h)| {
            let m = h.raft.metrics();
            let m = m.borrow();
            (m.current_leader == Some(id)).then_some(id)
        })
    }

    /// Injects `fault` (undone by [`Sim::heal`]).
    async fn inject(&mut self, fault: &Fault, profile: &Profile) {
        let ids = self.ids();
        match fault.kind {
            FaultKind::Partition => {
                let mut faults = self.fabric.faults();
                for a in &fault.nodes {
                    for b in ids.iter().filter(|b| !fault.nodes.contains(b)) {
                        faults.cut.insert((*a, *b));
                        faults.cut.insert((*b, *a));
                    }
                }
                self.fabric.set_faults(faults);
            }
            FaultKind::OneWay => {
                let mut faults = self.fabric.faults();
                for a in &fault.nodes {
                    for b in ids.iter().filter(|b| *b != a) {
                        faults.cut.insert(if fault.outbound { (*a, *b) } else { (*b, *a) });
                    }
                }
                self.fabric.set_faults(faults);
            }
            FaultKind::Pause => {
                for n in &fault.nodes {
                    self.fabric.set_paused(*n, true);
                }
            }
            FaultKind::Crash | FaultKind::CrashMajority => {
                for n in fault.nodes.clone() {
                    self.crash(n).await;
                }
            }
            FaultKind::Loss => {
                let mut faults = self.fabric.faults();
                faults.loss = profile.loss;
                self.fabric.set_faults(faults);
            }
            FaultKind::Latency => {
                let mut faults = self.fabric.faults();
                faults.latency_ms = profile.latency_ms;
                self.fabric.set_faults(faults);
            }
        }
    }

    /// Heals every fault: links, pauses, and restarts every node that is down.
    async fn heal(&mut self) -> Result<(), String> {
        self.fabric.set_faults(Faults { latency_ms: (1, 3), ..Faults::default() });
        for id in self.ids() {
            self.fabric.set_paused(id, false);
        }
        for id in self.ids() {
            self.start(id).await?;
        }
        self.world.trace("healed");
        Ok(())
    }
}

/// Writes `command` until it is applied on every node (setup, before any fault). Straight
/// through openraft on the leader rather than the node's write path, so that a build with an
/// injected bug still sets up and the bug is left to the checkers to find.
async fn setup_write(sim: &mut Sim, command: Command) -> Result<(), String> {
    let what = format!("{command:?}");
    for _ in 0..50 {
        let Some(leader) = sim.leader().and_then(|id| sim.world.node(id)) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let proposal = Proposal::new(command.clone(), corral_net::now_millis());
        match leader.raft.client_write(ProposalBatch::from(proposal)).await {
            Ok(reply) => match reply.data.0.into_iter().next() {
                Some(Ok(_)) => {
                    let settled = converge(sim, Duration::from_secs(10)).await;
                    return settled.map(|_| ()).map_err(|e| format!("setup {what}: {e}"));
                }
                Some(Err(rejection)) => return Err(format!("setup {what}: {rejection}")),
                None => return Err(format!("setup {what}: no answer in the entry")),
            },
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Err(format!("setup {what}: no leader answered"))
}

async fn setup(sim: &mut Sim, options: &Options) -> Result<(), String> {
    setup_write(sim, Command::CreateOrganization { id: ORGANIZATION.into(), name: ORGANIZATION.into() }).await?;
    for i in 0..options.keys {
        let key = register_key(i);
        setup_write(sim, Command::CreateRegion(NewRegion::new(&key, ORGANIZATION, &key, RegionType::Custom))).await?;
    }
    setup_write(sim, Command::CreateRegion(NewRegion::new(POOL_REGION, ORGANIZATION, POOL_REGION, RegionType::Custom)))
        .await?;
    for runner in RUNNERS {
        let capacity = Resources { cpu: 4, memory_gib: 64, disk_gib: 640, gpu: 0 };
        let token = format!("token-hash-{runner}");
        setup_write(sim, Command::CreateRunner(NewRunner::new(runner, POOL_REGION, runner, token, capacity))).await?;
    }
    let reporting = RUNNERS.iter().map(|r| r.to_string()).collect();
    setup_write(sim, Command::RecordRunnerHealth { reporting, silent: Vec::new() }).await
}

/// The register values and sandboxes a node holds, for the end checks.
fn final_view(state: &State) -> (HashMap<String, String>, Vec<PlacedSandbox>, Vec<RunnerCapacity>) {
    let registers = state
        .regions
        .values()
        .filter_map(|r| r.proxy_url.as_deref().map(|url| (r.id.clone(), register_value(url))))
        .collect();
    let sandboxes = state
        .sandboxes
        .values()
        .map(|s| PlacedSandbox {
            id: s.id.clone(),
            runner_id: s.runner_id.clone(),
            request: s.labels.get("request").cloned(),
            resources: [s.resources.cpu, s.resources.memory_gib, s.resources.disk_gib],
            destroyed: s.state == SandboxState::Destroyed,
            rescheduled: s.rescheduled_from.is_some(),
        })
        .collect();
    let runners = state
        .runners
        .values()
        .map(|r| RunnerCapacity {
            id: r.id.clone(),
            capacity: [r.capacity.cpu, r.capacity.memory_gib, r.capacity.disk_gib],
            allocated: [r.allocated.cpu, r.allocated.memory_gib, r.allocated.disk_gib],
        })
        .collect();
    (registers, sandboxes, runners)
}

/// Waits until every node is up, one leader is known to all, and all have applied the same
/// index with the same state; `Err` with what was missing at the deadline.
async fn converge(sim: &Sim, within: Duration) -> Result<BTreeMap<NodeId, String>, String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let up = sim.world.up();
        let leaders: BTreeSet<Option<NodeId>> =
            up.iter().map(|(_, h)| h.raft.metrics().borrow().current_leader).collect();
        let applied: BTreeSet<u64> =
            up.iter().map(|(_, h)| h.shared.read().last_applied.map_or(0, |l| l.index)).collect();
        let hashes: BTreeMap<NodeId, String> = up.iter().map(|(id, h)| (*id, h.shared.read().state.hash())).collect();
        let distinct: BTreeSet<&String> = hashes.values().collect();
        let all_up = up.len() == sim.nodes.len();
        if all_up && leaders.len() == 1 && !leaders.contains(&None) && applied.len() == 1 && distinct.len() == 1 {
            return Ok(hashes);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "after {} s: {} of {} nodes up, leaders {leaders:?}, applied indexes {applied:?}, {} distinct states",
                within.as_secs(),
                up.len(),
                sim.nodes.len(),
                distinct.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn simulate(seed: u64, options: &Options) -> SeedReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let node_count = options.nodes.unwrap_or(if rng.gen_bool(0.5) { 3 } else { 5 });
    let profile = Profile::draw(&mut rng);
    let fabric = Fabric::new(seed);
    let world = World::new();
    let nodes =
        (1..=node_count as NodeId).map(|id| SimNode::new(id, Duration::from_millis(rng.gen_range(1..=5)))).collect();
    let mut sim = Sim { seed, rng, fabric, world: world.clone(), nodes, unsynced_lost: 0 };
    let mut report = SeedReport::empty(seed);
    report.nodes = node_count;
    report.fault_kinds = profile.kinds.clone();
    world.trace(&format!("seed {seed} nodes {node_count} profile {profile:?}"));

    for id in sim.ids() {
        if let Err(e) = sim.start(id).await {
            report.violations.push(e);
            return report;
        }
    }
    if let Err(e) = bootstrap(&sim.nodes).await {
        report.violations.push(e);
        return report;
    }
    if let Err(e) = setup(&mut sim, options).await {
        report.violations.push(e);
        return report;
    }

    // Clients and the invariant checker.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for client in 0..3u64 {
        let seed = seed.wrapping_add(100 + client);
        let fabric = sim.fabric.clone();
        tasks.push(tokio::spawn(clients::register_client(
            client,
            options.keys,
            world.clone(),
            fabric,
            seed,
            stop_rx.clone(),
        )));
    }
    for client in 0..2u64 {
        let seed = seed.wrapping_add(200 + client);
        tasks.push(tokio::spawn(clients::sandbox_client(client, world.clone(), seed, stop_rx.clone())));
    }
    tasks.push(tokio::spawn(clients::operator(world.clone(), seed.wrapping_add(300), stop_rx.clone())));
    // Runner agents report until the end; the runner nemesis kills some during the safety
    // phase (in most seeds).
    let (agents_stop, agents_stop_rx) = watch::channel(false);
    let (runner_nemesis_stop, runner_nemesis_stop_rx) = watch::channel(false);
    let mut agents = Vec::new();
    for (i, runner) in RUNNERS.iter().enumerate() {
        let seed = seed.wrapping_add(400 + i as u64);
        let (fabric, world, stop) = (sim.fabric.clone(), world.clone(), agents_stop_rx.clone());
        agents.push(tokio::spawn(fleet::agent(runner, fabric, world, seed, stop)));
    }
    let runner_nemesis = sim.rng.gen_bool(0.7).then(|| {
        let (world, seed) = (world.clone(), seed.wrapping_add(500));
        tokio::spawn(fleet::runner_nemesis(&RUNNERS, world, seed, runner_nemesis_stop_rx))
    });
    let checker = {
        let world = world.clone();
        let disks: Vec<(NodeId, corral_storage::MemDisk)> = sim.nodes.iter().map(|n| (n.id, n.disk.clone())).collect();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut invariants = Invariants::default();
            loop {
                let hash_states = invariants.steps % 10 == 0;
                invariants.step(&world, &disks, hash_states);
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            invariants.step(&world, &disks, true);
            invariants
        })
    };

    // Safety phase: faults one after another.
    let safety_end = tokio::time::Instant::now() + options.safety;
    while tokio::time::Instant::now() < safety_end {
        let (ids, leader) = (sim.ids(), sim.leader());
        let fault = nemesis::draw(&profile, &mut sim.rng, &ids, leader);
        let line = format!(
            "{:?} {:?}{} for {} ms",
            fault.kind,
            fault.nodes,
            if fault.kind == FaultKind::OneWay {
                if fault.outbound {
                    " (mute)"
                } else {
                    " (deaf)"
                }
            } else {
                ""
            },
            fault.lasts.as_millis()
        );
        world.trace(&format!("fault {line}"));
        report.faults.push(format!("{:.1} s: {line}", world.now() as f64 / 1e9));
        sim.inject(&fault, &profile).await;
        tokio::time::sleep(fault.lasts).await;
        if let Err(e) = sim.heal().await {
            report.violations.push(e);
            break;
        }
        let gap = Duration::from_millis(sim.rng.gen_range(100..500));
        tokio::time::sleep(gap).await;
    }

    // Liveness phase: healed; a write must commit, runner health settle (agents that live
    // `ready`, agents killed for good `unresponsive`) and the nodes converge.
    let _ = runner_nemesis_stop.send(true);
    if let Some(task) = runner_nemesis {
        let _ = task.await;
    }
    if let Err(e) = sim.heal().await {
        report.violations.push(e);
    }
    let probe = Command::UpdateRegionUrls {
        id: register_key(0),
        proxy_url: corral_model::FieldUpdate::Keep,
        ssh_gateway_url: corral_model::FieldUpdate::Keep,
        snapshot_manager_url: corral_model::FieldUpdate::Keep,
    };
    let liveness_start = tokio::time::Instant::now();
    let mut committed = false;
    while !committed && liveness_start.elapsed() < options.liveness {
        let proposal = Proposal::new(probe.clone(), corral_net::now_millis());
        committed = matches!(clients::write(&world, &mut sim.rng, proposal).await, Some(Ok(_)));
    }
    if !committed {
        // What each node's Raft says, for reading the replay.
        for (id, node) in world.up() {
            let m = node.raft.metrics().borrow().clone();
            world.trace(&format!(
                "raft {id}: {:?} vote {} leader {:?} last log {:?} applied {:?}",
                m.state,
                m.vote,
                m.current_leader,
                m.last_log_index,
                m.last_applied.map(|l| l.index)
            ));
        }
        report
            .violations
            .push(format!("liveness: no write committed within {} s of healing", options.liveness.as_secs()));
    }
    let health_settled = loop {
        let settled = fleet::settled(&world, &RUNNERS);
        if settled.is_ok() || liveness_start.elapsed() >= options.liveness {
            break settled;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Err(e) = health_settled {
        report
            .violations
            .push(format!("liveness: runner health not settled {} s after healing: {e}", options.liveness.as_secs()));
    }
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let left = options.liveness.saturating_sub(liveness_start.elapsed()).max(Duration::from_secs(2));
    let converged = converge(&sim, left).await;
    match checker.await {
        Ok(invariants) => {
            report.steps = invariants.steps;
            report.violations.extend(invariants.violations);
        }
        Err(e) => report.violations.push(format!("the invariant checker failed: {e}")),
    }
    let hashes = match converged {
        Ok(hashes) => hashes,
        Err(e) => {
            report.violations.push(format!("liveness: did not converge: {e}"));
            BTreeMap::new()
        }
    };
    for what in world.wrong_answers() {
        report.violations.push(format!("wrong answer from the API: {what}"));
    }
    for v in check_converged(&hashes) {
        report.violations.push(format!("{v:?}"));
    }

    // End checks on the history and every node's final state.
    let (history, sandboxes) = world.take_history();
    report.operations = history.ops.len();
    report.acknowledged_writes = history
        .ops
        .iter()
        .filter(|o| {
            o.outcome == corral_chaos::history::Outcome::Ok
                && matches!(o.call, corral_chaos::history::Call::Write { .. })
        })
        .count();
    let acknowledged: Vec<String> =
        sandboxes.iter().filter(|s| s.acknowledged && !s.deleted).map(|s| s.request.clone()).collect();
    let mut finals = Vec::new();
    let mut violations: Vec<Violation> = check_linearizable(&history, options.search_budget);
    for (id, handles) in world.up() {
        let (registers, placed, runners) = final_view(&handles.shared.read().state);
        violations.extend(check_placements(id, &placed, &runners, &acknowledged));
        finals.push((id, registers));
    }
    violations.extend(check_final_state(&history, &finals, options.search_budget));
    report.violations.extend(violations.iter().map(|v| format!("{v:?}")));
    let _ = agents_stop.send(true);
    for agent in agents {
        let _ = agent.await;
    }
    report.agent_kills = world.agent_kills();
    for (at, runner) in world.false_demotions(fleet::SILENCE) {
        let line = format!("{:.1} s: {runner}", at as f64 / 1e9);
        world.trace(&format!("false demotion {line}"));
        report.false_demotions.push(line);
    }
    report.messages = sim.fabric.counts();
    report.unsynced_lost = sim.unsynced_lost;
    for v in &report.violations {
        world.trace(&format!("violation {v}"));
    }
    let (trace_hash, events) = world.trace_hash();
    report.trace_hash = trace_hash;
    report.events = events;
    for node in &sim.nodes {
        if let Some((raft, stop, servers)) = &node.running {
            let _ = stop.send(true);
            servers.abort();
            let _ = raft.shutdown().await;
        }
    }
    report
}

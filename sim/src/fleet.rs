//! Runner health in the simulation: agents that report, gossip that spreads the reports, and
//! the node's own health monitor that turns silence into `unresponsive` and reports back into
//! `ready`.
//!
//! - **Agents** (one per runner, outside the cluster like real runner machines): every
//!   [`REPORT_INTERVAL`] an agent reports to the node its session is on; the report lands in
//!   that node's health table (a crashed node takes none, a paused one none until it resumes).
//!   Unacknowledged for [`AGENT_IDLE`] (the agent's QUIC idle timeout), it connects to another
//!   node that is up. The runner nemesis kills an agent for a while, or for good.
//! - **Gossip**: every [`GOSSIP_INTERVAL`] a node sends its table to every peer over the
//!   simulated network (cuts, loss, latency and pauses apply); a peer unheard for
//!   [`SUSPECT_AFTER`] counts as not alive, as SWIM would suspect it.
//! - **Monitor**: every [`MONITOR_INTERVAL`] each node runs the rounds of
//!   `corral_node::health_monitor::HealthWatch`, the code `corral serve` runs, and a leader
//!   commits the entries through its leader handle.
//!
//! The timing is `corral serve`'s scaled to the 15-second safety phase: a 3 s silence where a
//! node's default is 10 s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_model::health::{HealthReport, SharedHealth};
use corral_model::{Proposal, RunnerState};
use corral_node::health_monitor::{moved_runners, HealthWatch};
use corral_raft_types::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::network::Fabric;
use crate::world::World;

/// How long a ready runner may be silent before the leader marks it `unresponsive`.
pub const SILENCE: Duration = Duration::from_secs(3);
pub const MONITOR_INTERVAL: Duration = Duration::from_millis(250);
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
/// A peer unheard for this long is not alive (SWIM: a probe period and its timeout).
pub const SUSPECT_AFTER: Duration = Duration::from_secs(1);
/// An agent whose reports go unacknowledged this long moves to another node.
pub const AGENT_IDLE: Duration = Duration::from_millis(2_500);

/// One node's soft health state (lost when it crashes): its table, and when it last heard
/// gossip from each peer.
#[derive(Clone, Default)]
pub struct NodeHealth {
    pub table: SharedHealth,
    heard: Arc<Mutex<BTreeMap<NodeId, Instant>>>,
}

impl NodeHealth {
    fn heard_from(&self, peer: NodeId, now: Instant) {
        self.heard.lock().unwrap_or_else(|p| p.into_inner()).insert(peer, now);
    }

    /// When each peer's latest gossip arrived here (a runner's silence is measured on its
    /// relay's clock, as in `corral serve`).
    fn delivered(&self) -> std::collections::HashMap<u64, std::time::Instant> {
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard.iter().map(|(id, at)| (*id, at.into_std())).collect()
    }

    /// Every node this one knows, with whether gossip counts it alive now.
    fn relays(&self, own: NodeId, now: Instant) -> Vec<(u64, bool)> {
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let peers = heard.iter().map(|(id, at)| (*id, now.saturating_duration_since(*at) <= SUSPECT_AFTER));
        std::iter::once((own, true)).chain(peers).collect()
    }
}

/// A node's gossip: its table to every other node that is up, every [`GOSSIP_INTERVAL`].
pub async fn gossip(from: NodeId, health: NodeHealth, fabric: Fabric, world: World, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(GOSSIP_INTERVAL) => {}
        }
        let reports: Vec<HealthReport> = health.table.read().iter().map(|e| e.report.clone()).collect();
        for (to, _) in world.up().into_iter().filter(|(id, _)| *id != from) {
            let (fabric, world, reports) = (fabric.clone(), world.clone(), reports.clone());
            tokio::spawn(async move {
                let deliver = async {
                    if let Some(peer) = world.node(to) {
                        let now = Instant::now();
                        let mut table = peer.health.table.write();
                        for report in reports {
                            table.merge(report, now.into_std());
                        }
                        drop(table);
                        peer.health.heard_from(from, now);
                    }
                };
                fabric.carry(from, to, deliver).await;
            });
        }
    }
}

/// A node's health monitor: [`HealthWatch`] rounds; on the leader, the entries are committed
/// through its leader handle (and recorded for the false-demotion count).
pub async fn monitor(id: NodeId, fabric: Fabric, world: World, mut stop: watch::Receiver<bool>) {
    let mut watch = HealthWatch::default();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(MONITOR_INTERVAL) => {}
        }
        // A paused node's tasks go on running here (only its traffic waits); a stopped
        // process would find its timer late when it resumes, and `corral serve`'s monitor
        // takes that as a stall.
        if fabric.is_paused(id) {
            watch.stalled();
            continue;
        }
        let Some(node) = world.node(id) else { continue };
        let now = Instant::now();
        let commands = {
            let machine = node.shared.read();
            let table = node.health.table.read();
            let relays = node.health.relays(id, now);
            let delivered = node.health.delivered();
            watch.round(now.into_std(), relays, &delivered, node.leader.leads(), Some(SILENCE), &machine.state, &table)
        };
        for command in commands {
            let (ready, silent) = moved_runners(&command);
            let (ready, unresponsive, silent) = (ready.len(), silent.len(), silent.to_vec());
            // As `corral serve`'s monitor does: relays are still watched while the entry commits.
            let write = node.leader.write(Proposal::new(command, corral_net::now_millis()));
            tokio::pin!(write);
            let committed = loop {
                tokio::select! {
                    result = &mut write => break result.is_ok(),
                    _ = tokio::time::sleep(MONITOR_INTERVAL) => {
                        watch.observe_relays(Instant::now().into_std(), node.health.relays(id, Instant::now()));
                    }
                }
            };
            world.trace(&format!("health on {id}: ready {ready} unresponsive {unresponsive} committed {committed}"));
            if committed {
                for runner in silent {
                    world.demoted(&runner);
                }
            }
        }
    }
}

/// One runner's agent: reports every [`REPORT_INTERVAL`] while alive.
pub async fn agent(runner: &'static str, fabric: Fabric, world: World, seed: u64, mut stop: watch::Receiver<bool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut session: Option<(NodeId, Instant)> = None;
    let mut seq = 0u64;
    // Agents start out of step with each other.
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1_000))).await;
    loop {
        let now = Instant::now();
        if world.agent_is_dead(runner) {
            session = None;
        } else {
            let stale = session.is_none_or(|(_, acked)| now.saturating_duration_since(acked) > AGENT_IDLE);
            if stale {
                let up: Vec<NodeId> = world.up().into_iter().map(|(id, _)| id).collect();
                session = up.choose(&mut rng).map(|id| (*id, now));
                if let Some((id, _)) = session {
                    world.trace(&format!("agent {runner} connects to {id}"));
                }
            }
            if let Some((id, _)) = session {
                seq += 1;
                let report = HealthReport {
                    runner_id: runner.to_string(),
                    seq,
                    cpu_pct: rng.gen_range(5.0..60.0),
                    memory_pct: rng.gen_range(5.0..60.0),
                    disk_pct: rng.gen_range(5.0..60.0),
                    version: "sim".into(),
                    snapshot_count: 0,
                    started_sandboxes: 0,
                    measured_at: corral_net::now_millis(),
                    via_node: id,
                    received_at: corral_net::now_millis(),
                };
                if let Some(node) = world.node(id).filter(|_| !fabric.is_paused(id)) {
                    node.health.table.write().merge(report, now.into_std());
                    session = Some((id, now));
                }
            }
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tokio::time::sleep(REPORT_INTERVAL) => {}
        }
    }
}

/// The runner nemesis (safety phase): now and then kills one agent for 2–8 s, or for good
/// (then the runner must end `unresponsive`).
pub async fn runner_nemesis(
    runners: &'static [&'static str],
    world: World,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let pause = Duration::from_millis(rng.gen_range(1_000..5_000));
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let Some(runner) = runners.choose(&mut rng).copied() else { return };
        if world.agent_is_dead(runner) {
            continue;
        }
        world.agent_died(runner);
        if rng.gen_bool(0.2) {
            world.trace(&format!("agent {runner} killed for good"));
            continue;
        }
        let lasts = Duration::from_millis(rng.gen_range(2_000..8_000));
        world.trace(&format!("agent {runner} killed for {} ms", lasts.as_millis()));
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            _ = tokio::time::sleep(lasts) => {}
        }
        world.agent_revived(runner);
        if *stop.borrow() {
            return;
        }
    }
}

/// What runner health settled to: `Ok` when, on every node that is up, each runner with a
/// live agent is `ready` and each whose agent is dead is `unresponsive`.
pub fn settled(world: &World, runners: &[&str]) -> Result<(), String> {
    let mut wrong = Vec::new();
    for (id, node) in world.up() {
        let machine = node.shared.read();
        for runner in runners {
            let expected = if world.agent_is_dead(runner) { RunnerState::Unresponsive } else { RunnerState::Ready };
            match machine.state.runners.get(*runner).map(|r| r.state) {
                Some(state) if state == expected => {}
                other => wrong.push(format!("{runner} on node {id}: {other:?}, expected {expected:?}")),
            }
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

//! One simulated node: openraft with Corral's state machine on a simulated disk, Corral's
//! leader handle (the coalescing write path and read index) and its scheduler, all on the
//! simulation's runtime. A crash loses what the disk had not synced; a restart opens the
//! node again on what survived, as a new incarnation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corral_model::health::SharedHealth;
use corral_node::leader::{Leader, PROPOSAL_BATCHING};
use corral_node::scheduler::{Scheduler, SchedulerConfig};
use corral_raft_types::{CorralNode, NodeId, Raft, SharedState};
use corral_storage::{open_memory, MemDisk};

use crate::network::{Fabric, SimNetwork};

/// openraft's timing in the simulation: Corral's heartbeat, and openraft's own randomized
/// election timer (seeded by the simulation).
fn raft_config() -> Result<openraft::Config, String> {
    let config = openraft::Config {
        cluster_name: "corral-sim".into(),
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(300),
        max_in_snapshot_log_to_keep: 50,
        max_payload_entries: 64,
        install_snapshot_timeout: 2_000,
        ..Default::default()
    };
    config.validate().map_err(|e| e.to_string())
}

/// A running incarnation of a node.
pub struct Running {
    pub raft: Raft,
    pub leader: Leader,
    pub shared: SharedState,
    pub scheduler: Scheduler,
}

pub struct SimNode {
    pub id: NodeId,
    pub disk: MemDisk,
    pub running: Option<Running>,
    /// Incremented at every start.
    pub incarnation: u64,
}

pub fn member(id: NodeId) -> CorralNode {
    CorralNode { raft_addr: format!("sim-node-{id}:8901"), api_addr: format!("sim-node-{id}:8801") }
}

impl SimNode {
    pub fn new(id: NodeId, sync_delay: Duration) -> SimNode {
        SimNode { id, disk: MemDisk::new(sync_delay), running: None, incarnation: 0 }
    }

    /// Starts (or restarts) the node on its disk.
    pub async fn start(&mut self, fabric: &Fabric, seed: u64) -> Result<(), String> {
        let (log, state_machine, shared) = open_memory(&self.disk).map_err(|e| e.to_string())?;
        let network = SimNetwork { from: self.id, fabric: fabric.clone() };
        let raft = Raft::new(self.id, Arc::new(raft_config()?), network, log, state_machine)
            .await
            .map_err(|e| format!("node {}: raft did not start: {e}", self.id))?;
        let leader = Leader::new(raft.clone(), shared.clone(), PROPOSAL_BATCHING);
        let scheduler_seed = seed.wrapping_mul(31).wrapping_add(self.id * 1_000 + self.incarnation);
        let scheduler = Scheduler::start(
            leader.clone(),
            shared.clone(),
            SharedHealth::default(),
            SchedulerConfig { seed: Some(scheduler_seed), ..SchedulerConfig::default() },
        );
        fabric.set_up(self.id, raft.clone());
        self.incarnation += 1;
        self.running = Some(Running { raft, leader, shared, scheduler });
        Ok(())
    }

    /// Power loss: the node stops at once and its disk keeps only what was synced.
    pub async fn crash(&mut self, fabric: &Fabric) -> usize {
        fabric.set_down(self.id);
        let lost = self.disk.crash();
        if let Some(running) = self.running.take() {
            // Its stores already fail; shutting openraft down ends its tasks.
            let _ = running.raft.shutdown().await;
        }
        lost
    }
}

/// Bootstraps the cluster from node 1 with every node as a voter.
pub async fn bootstrap(nodes: &[SimNode]) -> Result<(), String> {
    let members: BTreeMap<NodeId, CorralNode> = nodes.iter().map(|n| (n.id, member(n.id))).collect();
    let first = nodes.first().and_then(|n| n.running.as_ref()).ok_or("node 1 is not running")?;
    first.raft.initialize(members).await.map_err(|e| format!("initialize: {e}"))
}

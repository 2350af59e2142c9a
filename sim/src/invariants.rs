//! The invariants checked at every step of a run, on every node that is up.

use std::collections::{BTreeMap, BTreeSet};

use corral_model::placement::fits;
use corral_model::{Resources, SandboxState, State};
use corral_raft_types::NodeId;
use corral_storage::MemDisk;
use openraft::ServerState;

use crate::world::World;

/// What the checker remembers between steps.
///
/// On leaders: Corral's log ids use openraft 0.9's default leader ids, `(term, node)`, under
/// which two nodes may lead one after the other in the same term (the higher node id's vote
/// supersedes the lower one's), so "one leader per term" is not the invariant of this
/// protocol. What is checked instead is what makes it safe: a node's vote, read from its disk,
/// never goes back (across crashes too), and a node that leads with leader id `(t, n)` holds
/// the votes of a majority, every one of them at `(t, n)` or later.
#[derive(Default)]
pub struct Invariants {
    /// Each node's highest vote seen on its disk: (term, node voted for).
    votes: BTreeMap<NodeId, (u64, NodeId)>,
    /// Leader ids already reported.
    leaders: BTreeSet<(u64, NodeId)>,
    /// Last applied index per (node, incarnation).
    applied: BTreeMap<(NodeId, u64), u64>,
    /// The state hash first seen at each applied index.
    hashes: BTreeMap<u64, (NodeId, String)>,
    pub violations: Vec<String>,
    pub steps: u64,
}

/// Capacity and allocation of every runner: no runner over capacity, each runner's
/// allocation the sum of its live sandboxes, no sandbox on a runner that does not exist.
pub fn check_runners(state: &State) -> Result<(), String> {
    let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
    for s in state.sandboxes.values().filter(|s| s.state != SandboxState::Destroyed) {
        if !state.runners.contains_key(&s.runner_id) {
            return Err(format!("sandbox {} is on missing runner {}", s.id, s.runner_id));
        }
        let total = used.entry(s.runner_id.as_str()).or_default();
        *total = total.saturating_add(&s.resources);
    }
    for r in state.runners.values() {
        if !fits(r.capacity, Resources::default(), r.allocated) {
            return Err(format!("runner {} over capacity: {:?} > {:?}", r.id, r.allocated, r.capacity));
        }
        let sum = used.get(r.id.as_str()).copied().unwrap_or_default();
        if sum != r.allocated {
            return Err(format!("runner {} allocation {:?} != its sandboxes {:?}", r.id, r.allocated, sum));
        }
    }
    Ok(())
}

impl Invariants {
    fn violation(&mut self, world: &World, what: String) {
        if self.violations.contains(&what) {
            return;
        }
        world.trace(&format!("violation {what}"));
        if self.violations.len() < 50 {
            self.violations.push(what);
        }
    }

    /// One step: reads every node that is up. `hash_states` also compares state hashes
    /// (costlier; done every few steps).
    pub fn step(&mut self, world: &World, disks: &[(NodeId, MemDisk)], hash_states: bool) {
        self.steps += 1;
        let mut on_disk = BTreeMap::new();
        for (id, disk) in disks {
            let Some(vote) = disk.vote() else { continue };
            let now = (vote.leader_id.term, vote.leader_id.node_id);
            on_disk.insert(*id, now);
            match self.votes.insert(*id, now) {
                Some(before) if before > now => {
                    self.violation(world, format!("node {id}'s vote went back from {before:?} to {now:?}"));
                }
                _ => {}
            }
        }
        for (id, node) in world.up() {
            let (state, vote) = {
                let m = node.raft.metrics();
                let m = m.borrow();
                (m.state, m.vote)
            };
            let leader_id = (vote.leader_id.term, vote.leader_id.node_id);
            if state == ServerState::Leader && vote.committed && leader_id.1 == id {
                let backing = on_disk.values().filter(|v| **v >= leader_id).count();
                if backing <= disks.len() / 2 {
                    let what = format!("node {id} leads as {leader_id:?} with the votes of only {backing} nodes");
                    self.violation(world, what);
                }
                if self.leaders.insert(leader_id) {
                    world.trace(&format!("leader {id} term {}", leader_id.0));
                }
            }
            let machine = node.shared.read();
            let index = machine.last_applied.map_or(0, |l| l.index);
            let before = self.applied.insert((id, node.incarnation), index);
            if let Some(before) = before.filter(|b| *b > index) {
                drop(machine);
                self.violation(world, format!("node {id} applied index went back from {before} to {index}"));
                continue;
            }
            if let Err(e) = check_runners(&machine.state) {
                drop(machine);
                self.violation(world, format!("node {id} at index {index}: {e}"));
                continue;
            }
            if hash_states && index > 0 {
                let hash = machine.state.hash();
                drop(machine);
                match self.hashes.get(&index) {
                    Some((other, seen)) if *seen != hash => {
                        let what = format!("nodes {other} and {id} differ at applied index {index}");
                        self.violation(world, what);
                    }
                    Some(_) => {}
                    None => {
                        self.hashes.insert(index, (id, hash));
                    }
                }
            }
        }
    }
}

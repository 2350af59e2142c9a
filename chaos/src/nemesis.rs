//! The seeded nemesis: which fault comes next, on whom, for how long. A pure function of the
//! seed, so `--seed` replays the same schedule. Targets are roles ("the leader", "the k-th
//! follower") resolved against the cluster when the fault starts, the way Jepsen's nemeses
//! pick their victims.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL, then start again with its data after the hold.
    Kill,
    /// SIGSTOP for the hold, then SIGCONT.
    Pause,
    /// SIGTERM (graceful drain), then start again.
    Restart,
    /// Remove from the membership, SIGKILL, delete its data, start empty and add it back: it
    /// rejoins by snapshot. The cluster's membership changes twice during the fault.
    Wipe,
    /// Cut one node off from every other node, both ways.
    Isolate,
    /// Split into a minority and a majority, both ways.
    Split,
    /// One node stops hearing the others (its own packets still go out).
    OneWay,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Restart,
        FaultKind::Wipe,
        FaultKind::Isolate,
        FaultKind::Split,
        FaultKind::OneWay,
    ];

    pub fn is_partition(self) -> bool {
        matches!(self, FaultKind::Isolate | FaultKind::Split | FaultKind::OneWay)
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Restart => "restart",
            FaultKind::Wipe => "wipe",
            FaultKind::Isolate => "isolate",
            FaultKind::Split => "split",
            FaultKind::OneWay => "one-way",
        }
    }

    /// Relative frequency.
    fn weight(self) -> u32 {
        match self {
            FaultKind::Kill => 24,
            FaultKind::Pause => 14,
            FaultKind::Restart => 10,
            FaultKind::Wipe => 8,
            FaultKind::Isolate => 16,
            FaultKind::Split => 14,
            FaultKind::OneWay => 14,
        }
    }
}

/// Who a fault hits, as a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Whoever leads when the fault starts (any node when none does).
    Leader,
    /// The k-th (mod their count) node that does not lead.
    Follower(u32),
    /// The k-th (mod their count) node.
    Any(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFault {
    pub kind: FaultKind,
    pub target: Target,
    /// How long the fault lasts before it is healed.
    pub hold_ms: u64,
    /// Quiet time after the cluster has recovered, before the next fault.
    pub gap_ms: u64,
}

/// The schedule: an endless, seeded sequence of faults.
pub struct Nemesis {
    rng: StdRng,
    kinds: Vec<FaultKind>,
}

impl Nemesis {
    /// `partitions`: whether partition faults are possible (network namespaces).
    pub fn new(seed: u64, partitions: bool) -> Nemesis {
        let kinds = FaultKind::ALL.into_iter().filter(|k| partitions || !k.is_partition()).collect();
        Nemesis { rng: StdRng::seed_from_u64(seed), kinds }
    }

    pub fn next_fault(&mut self) -> PlannedFault {
        let total: u32 = self.kinds.iter().map(|k| k.weight()).sum();
        let mut roll = self.rng.gen_range(0..total);
        let mut kind = self.kinds[0];
        for k in &self.kinds {
            if roll < k.weight() {
                kind = *k;
                break;
            }
            roll -= k.weight();
        }
        let pick = self.rng.gen_range(0..1000);
        let target = match kind {
            // Killing, pausing and cutting off the leader is what forces failovers.
            FaultKind::Kill | FaultKind::Pause | FaultKind::Isolate | FaultKind::OneWay | FaultKind::Restart => {
                if self.rng.gen_bool(0.6) {
                    Target::Leader
                } else {
                    Target::Any(pick)
                }
            }
            // Removing the leader from the membership is its own kind of test; a wipe takes a
            // follower so the remove/add pair runs under a stable leader most of the time.
            FaultKind::Wipe => Target::Follower(pick),
            FaultKind::Split => Target::Any(pick),
        };
        let hold_ms = match kind {
            FaultKind::Wipe | FaultKind::Restart => 500,
            _ => self.rng.gen_range(1_000..4_000),
        };
        let gap_ms = self.rng.gen_range(500..2_000);
        PlannedFault { kind, target, hold_ms, gap_ms }
    }
}

/// The node a target names, given who leads now.
pub fn resolve(target: Target, leader: Option<u64>, nodes: &[u64]) -> Option<u64> {
    if nodes.is_empty() {
        return None;
    }
    match target {
        Target::Leader => leader.filter(|l| nodes.contains(l)).or(Some(nodes[0])),
        Target::Any(k) => Some(nodes[k as usize % nodes.len()]),
        Target::Follower(k) => {
            let followers: Vec<u64> = nodes.iter().copied().filter(|n| Some(*n) != leader).collect();
            if followers.is_empty() {
                None
            } else {
                Some(followers[k as usize % followers.len()])
            }
        }
    }
}

/// The two sides of a split: a minority of `(n-1)/2` nodes starting at the k-th, and the rest.
pub fn split_sides(nodes: &[u64], k: u32) -> (Vec<u64>, Vec<u64>) {
    let n = nodes.len();
    let minority = (n.saturating_sub(1) / 2).max(1);
    let start = k as usize % n.max(1);
    let small: Vec<u64> = (0..minority).map(|i| nodes[(start + i) % n]).collect();
    let large = nodes.iter().copied().filter(|x| !small.contains(x)).collect();
    (small, large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a: Vec<_> = {
            let mut n = Nemesis::new(7, true);
            (0..50).map(|_| n.next_fault()).collect()
        };
        let b: Vec<_> = {
            let mut n = Nemesis::new(7, true);
            (0..50).map(|_| n.next_fault()).collect()
        };
        let c: Vec<_> = {
            let mut n = Nemesis::new(8, true);
            (0..50).map(|_| n.next_fault()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
        let kinds: std::collections::BTreeSet<_> = a.iter().map(|f| f.kind).collect();
        assert!(kinds.len() >= 5, "{kinds:?}");
    }

    #[test]
    fn without_namespaces_there_are_no_partitions() {
        let mut n = Nemesis::new(1, false);
        assert!((0..200).all(|_| !n.next_fault().kind.is_partition()));
    }

    #[test]
    fn targets_resolve_against_the_leader() {
        let nodes = [1, 2, 3];
        assert_eq!(resolve(Target::Leader, Some(2), &nodes), Some(2));
        assert_eq!(resolve(Target::Leader, None, &nodes), Some(1));
        assert_eq!(resolve(Target::Follower(0), Some(1), &nodes), Some(2));
        assert_eq!(resolve(Target::Follower(1), Some(1), &nodes), Some(3));
        assert_eq!(resolve(Target::Any(4), Some(1), &nodes), Some(2));
        assert_eq!(split_sides(&nodes, 1), (vec![2], vec![1, 3]));
        assert_eq!(split_sides(&[1, 2, 3, 4, 5], 4), (vec![5, 1], vec![2, 3, 4]));
    }
}

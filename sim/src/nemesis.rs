//! The nemesis: faults drawn from the seed, swarm-style (each seed enables its own subset of
//! fault kinds and its own link-loss and latency ranges, so that seeds explore different
//! mixes rather than the same average).

use std::collections::BTreeSet;
use std::time::Duration;

use corral_raft_types::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// The nodes split in two groups that cannot talk.
    Partition,
    /// One node's messages out, or in, are lost (its peers' are not).
    OneWay,
    /// One node's traffic waits, both ways, and is delivered late (a stopped process).
    Pause,
    /// One node loses power: what its disk had not synced is gone; it restarts later.
    Crash,
    /// A majority loses power at once (a rack): the case that only synced logs survive.
    CrashMajority,
    /// Every link loses a share of its messages.
    Loss,
    /// Every link gets slow.
    Latency,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Partition,
        FaultKind::OneWay,
        FaultKind::Pause,
        FaultKind::Crash,
        FaultKind::CrashMajority,
        FaultKind::Loss,
        FaultKind::Latency,
    ];
}

/// What this seed's nemesis may do.
#[derive(Debug, Clone)]
pub struct Profile {
    pub kinds: Vec<FaultKind>,
    /// Loss probability of a `Loss` fault.
    pub loss: f64,
    /// Latency range of a `Latency` fault (ms).
    pub latency_ms: (u64, u64),
    /// Chance that a node fault picks the leader.
    pub target_leader: f64,
}

impl Profile {
    pub fn draw(rng: &mut StdRng) -> Profile {
        let mut kinds: Vec<FaultKind> = FaultKind::ALL.into_iter().filter(|_| rng.gen_bool(0.6)).collect();
        if kinds.is_empty() {
            kinds.push(*FaultKind::ALL.choose(rng).unwrap_or(&FaultKind::Crash));
        }
        let low = rng.gen_range(5..30);
        Profile {
            kinds,
            loss: rng.gen_range(0.02..0.30),
            latency_ms: (low, low + rng.gen_range(5..60)),
            target_leader: rng.gen_range(0.3..0.9),
        }
    }
}

/// One fault to inject, fully drawn.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    /// The nodes it hits (one group of a partition; the node of a node fault).
    pub nodes: BTreeSet<NodeId>,
    /// For `OneWay`: true when the node cannot send (mute), false when it cannot hear (deaf).
    pub outbound: bool,
    /// How long it lasts.
    pub lasts: Duration,
}

/// Draws the next fault. `leader` is the leader now, if any.
pub fn draw(profile: &Profile, rng: &mut StdRng, nodes: &[NodeId], leader: Option<NodeId>) -> Fault {
    let kind = *profile.kinds.choose(rng).unwrap_or(&FaultKind::Crash);
    let pick_one = |rng: &mut StdRng| match leader {
        Some(l) if rng.gen_bool(profile.target_leader) => l,
        _ => *nodes.choose(rng).unwrap_or(&1),
    };
    let majority = nodes.len() / 2 + 1;
    let chosen: BTreeSet<NodeId> = match kind {
        FaultKind::Partition => {
            let size = rng.gen_range(1..=nodes.len() / 2);
            let mut group = BTreeSet::from([pick_one(rng)]);
            for n in nodes.choose_multiple(rng, nodes.len()) {
                if group.len() >= size {
                    break;
                }
                group.insert(*n);
            }
            group
        }
        FaultKind::CrashMajority => nodes.choose_multiple(rng, majority).copied().collect(),
        FaultKind::Loss | FaultKind::Latency => BTreeSet::new(),
        FaultKind::OneWay | FaultKind::Pause | FaultKind::Crash => BTreeSet::from([pick_one(rng)]),
    };
    Fault { kind, nodes: chosen, outbound: rng.gen_bool(0.5), lasts: Duration::from_millis(rng.gen_range(300..1_500)) }
}

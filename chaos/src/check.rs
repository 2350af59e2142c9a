//! Checkers over a recorded [`History`] and the nodes' final states. Each is a pure function,
//! tested against histories known to be good and known to be broken (`tests/checkers.rs`).
//!
//! **Linearizability** of registers (one per key; registers compose, so each key is checked
//! alone). The search is Wing–Gong's with Lowe's memoization, as in Knossos and Porcupine: an
//! operation may be linearized next when it was invoked before every still-open acknowledged
//! operation completed; a configuration (operations linearized so far, register value) that
//! already failed is never explored again. Failed operations are dropped; an operation with an
//! unknown outcome may be linearized anywhere after its invocation, or never. A search that
//! exceeds its step budget reports [`Violation::Inconclusive`] rather than passing.
//!
//! **Lost writes**: each node's final value of every key is checked as one more read after
//! everything else; an acknowledged write that the final state contradicts is reported.
//!
//! **Placements**: no client request produced two sandboxes, every acknowledged sandbox exists,
//! and no runner holds more than its capacity, on every node.
//!
//! **Convergence**: all nodes report the same state hash after healing.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::history::{Call, History, Nanos, Op, Outcome};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Violation {
    /// No order of the key's operations explains what the clients saw (e.g. a stale read).
    NotLinearizable { key: String, ops: Vec<u64> },
    /// The search ran out of budget: neither proven nor refuted.
    Inconclusive { key: String, ops: usize },
    /// The lost-write search for one node's final value ran out of budget: neither proven
    /// nor refuted (never counted as a pass).
    FinalStateInconclusive { key: String, node: u64 },
    /// A node's final state contradicts acknowledged writes on the key.
    LostWrite { key: String, node: u64, final_value: Option<String> },
    /// One client request produced more than one sandbox.
    DoublePlacement { request: String, node: u64, sandboxes: Vec<String> },
    /// An acknowledged sandbox is missing.
    MissingSandbox { request: String, node: u64 },
    /// A runner holds more than its capacity.
    OverCapacity { runner: String, node: u64 },
    /// A runner's allocation is not the sum of the sandboxes on it: a sandbox is charged to
    /// two runners (a move that did not free the old one) or to none.
    AllocationMismatch { runner: String, node: u64, allocated: [u64; 3], sandboxes: [u64; 3] },
    /// A sandbox names a runner its region does not have.
    UnknownRunner { sandbox: String, runner: String, node: u64 },
    /// Nodes disagree on the state after healing.
    Diverged { hashes: BTreeMap<u64, String> },
    /// After healing, the nodes did not reach one leader, applied index and state hash in
    /// time (the hashes as they stood; `Diverged` too when they differ).
    NotConverged { reason: String, hashes: BTreeMap<u64, String> },
    /// A secret the harness handed to the cluster (an organization key, a runner token) is
    /// in clear in a node's log or data directory.
    SecretLeaked { secret_hint: String, file: String },
    /// After a fault was healed, the cluster did not agree on a leader again in time.
    NotRecovered { fault: usize, fault_kind: String },
}

/// The register's values, interned so a configuration hashes cheaply.
type Value = Option<u32>;

struct KeyOps<'a> {
    ops: Vec<&'a Op>,
    /// Interned value written (writes) or read (reads); `None` for delete / absent.
    values: Vec<Value>,
}

fn intern(table: &mut HashMap<String, u32>, v: &str) -> u32 {
    let next = table.len() as u32;
    *table.entry(v.to_string()).or_insert(next)
}

fn key_ops<'a>(ops: impl Iterator<Item = &'a Op>) -> KeyOps<'a> {
    let mut table = HashMap::new();
    let mut kept = Vec::new();
    let mut values = Vec::new();
    for op in ops {
        match (&op.call, op.outcome) {
            (_, Outcome::Fail) => continue,
            // A read without an answer says nothing.
            (Call::Read { .. }, Outcome::Unknown) => continue,
            (Call::Read { .. }, Outcome::Ok) => {
                let Some(seen) = &op.read else { continue };
                values.push(seen.as_deref().map(|v| intern(&mut table, v)));
            }
            (Call::Write { value, .. }, _) => values.push(Some(intern(&mut table, value))),
            (Call::Delete { .. }, _) => values.push(None),
        }
        kept.push(op);
    }
    KeyOps { ops: kept, values }
}

/// Whether one key's operations are linearizable; `None` when the budget ran out.
fn linearizable(key: &KeyOps<'_>, budget: &mut u64) -> Option<bool> {
    let n = key.ops.len();
    let words = n.div_ceil(64).max(1);
    let mut done = vec![0u64; words];
    let mut failed: HashSet<(Vec<u64>, Value, bool)> = HashSet::new();
    let must = key.ops.iter().filter(|o| o.complete.is_some()).count();
    search(key, &mut done, 0, must, None, false, &mut failed, budget)
}

/// Depth-first search for a linearization (Wing & Gong, with Lowe's memo of configurations
/// already proven dead).
///
/// An operation with an unknown outcome (a timed-out write or delete) may have taken effect
/// at any point after its invocation, or never. It matters only if a read observes it, so the
/// search places it only immediately before a read of its value (`observe`): if a history
/// has a linearization, it has one where every unknown write is either left out or directly
/// followed by a read that returns its value (the op after it in any linearization is such a
/// read, a write that hides it, or nothing). Without this, a few timed-out writes on a busy
/// key multiply the configurations beyond any budget.
#[allow(clippy::too_many_arguments)]
fn search(
    key: &KeyOps<'_>,
    done: &mut Vec<u64>,
    done_ok: usize,
    must: usize,
    state: Value,
    observe: bool,
    failed: &mut HashSet<(Vec<u64>, Value, bool)>,
    budget: &mut u64,
) -> Option<bool> {
    if done_ok == must {
        return Some(true);
    }
    if *budget == 0 {
        return None;
    }
    *budget -= 1;
    if failed.contains(&(done.clone(), state, observe)) {
        return Some(false);
    }
    let is_done = |done: &Vec<u64>, i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    // Every open acknowledged operation completes by `horizon`; whatever comes next in the
    // order must have been invoked by then.
    let horizon: Nanos = (0..key.ops.len())
        .filter(|&i| !is_done(done, i))
        .filter_map(|i| key.ops[i].complete)
        .min()
        .unwrap_or(Nanos::MAX);
    for i in 0..key.ops.len() {
        if is_done(done, i) || key.ops[i].invoke > horizon {
            continue;
        }
        let op = key.ops[i];
        let (next, next_observe) = match op.call {
            Call::Read { .. } => {
                if key.values[i] != state {
                    continue;
                }
                (state, false)
            }
            Call::Write { .. } | Call::Delete { .. } if observe => continue,
            Call::Write { .. } | Call::Delete { .. } => (key.values[i], op.complete.is_none()),
        };
        done[i / 64] |= 1 << (i % 64);
        let ok = usize::from(op.complete.is_some());
        let result = search(key, done, done_ok + ok, must, next, next_observe, failed, budget);
        done[i / 64] &= !(1 << (i % 64));
        match result {
            Some(true) => return Some(true),
            None => return None,
            Some(false) => {}
        }
    }
    failed.insert((done.clone(), state, observe));
    Some(false)
}

fn by_key(history: &History) -> BTreeMap<&str, Vec<&Op>> {
    let mut keys: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        keys.entry(op.call.key()).or_default().push(op);
    }
    keys
}

/// Checks every key's register history; `budget` bounds the search steps per key.
pub fn check_linearizable(history: &History, budget: u64) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (key, ops) in by_key(history) {
        let ids = ops.iter().map(|o| o.id).collect();
        let prepared = key_ops(ops.into_iter());
        let mut left = budget;
        match linearizable(&prepared, &mut left) {
            Some(true) => {}
            Some(false) => violations.push(Violation::NotLinearizable { key: key.to_string(), ops: ids }),
            None => violations.push(Violation::Inconclusive { key: key.to_string(), ops: prepared.ops.len() }),
        }
    }
    violations
}

/// Checks each node's final value of every key the history touched, as a read after
/// everything else. Keys whose history alone is not proven linearizable are left to
/// [`check_linearizable`], which reports them (not linearizable, or inconclusive); a final
/// read whose search runs out of budget is reported inconclusive, never passed.
pub fn check_final_state(history: &History, finals: &[(u64, HashMap<String, String>)], budget: u64) -> Vec<Violation> {
    let end = history.ops.iter().filter_map(|o| o.complete.max(Some(o.invoke))).max().unwrap_or(0) + 1;
    let mut violations = Vec::new();
    for (key, ops) in by_key(history) {
        let mut left = budget;
        if linearizable(&key_ops(ops.iter().copied()), &mut left) != Some(true) {
            continue;
        }
        for (node, state) in finals {
            let final_read = Op {
                id: u64::MAX,
                client: u64::MAX,
                call: Call::Read { key: key.to_string() },
                invoke: end,
                complete: Some(end + 1),
                outcome: Outcome::Ok,
                read: Some(state.get(key).cloned()),
                detail: Some(format!("final state of node {node}")),
            };
            let mut with_final = ops.clone();
            with_final.push(&final_read);
            let mut left = budget;
            match linearizable(&key_ops(with_final.into_iter()), &mut left) {
                Some(true) => {}
                Some(false) => violations.push(Violation::LostWrite {
                    key: key.to_string(),
                    node: *node,
                    final_value: state.get(key).cloned(),
                }),
                None => violations.push(Violation::FinalStateInconclusive { key: key.to_string(), node: *node }),
            }
        }
    }
    violations
}

/// A sandbox as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedSandbox {
    pub id: String,
    pub runner_id: String,
    /// The client request that created it (the harness labels every request).
    pub request: Option<String>,
    /// cpu, memory GiB, disk GiB.
    pub resources: [u64; 3],
    pub destroyed: bool,
    /// Moved off another runner (`rescheduledFrom`).
    #[serde(default)]
    pub rescheduled: bool,
}

/// A runner's capacity as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerCapacity {
    pub id: String,
    pub capacity: [u64; 3],
    /// What the runner says is allocated on it.
    pub allocated: [u64; 3],
}

/// Checks one node's sandboxes against the acknowledged requests and the runners' capacity.
pub fn check_placements(
    node: u64,
    sandboxes: &[PlacedSandbox],
    runners: &[RunnerCapacity],
    acknowledged: &[String],
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut by_request: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for s in sandboxes {
        if let Some(r) = &s.request {
            by_request.entry(r.as_str()).or_default().push(s.id.clone());
        }
    }
    for (request, ids) in &by_request {
        if ids.len() > 1 {
            violations.push(Violation::DoublePlacement { request: request.to_string(), node, sandboxes: ids.clone() });
        }
    }
    for request in acknowledged {
        if !by_request.contains_key(request.as_str()) {
            violations.push(Violation::MissingSandbox { request: request.clone(), node });
        }
    }
    let mut used: HashMap<&str, [u64; 3]> = HashMap::new();
    for s in sandboxes.iter().filter(|s| !s.destroyed) {
        let u = used.entry(s.runner_id.as_str()).or_default();
        for (total, r) in u.iter_mut().zip(s.resources) {
            *total += r;
        }
    }
    for runner in runners {
        let sum = used.get(runner.id.as_str()).copied().unwrap_or_default();
        if sum.iter().zip(runner.capacity).any(|(used, cap)| *used > cap) {
            violations.push(Violation::OverCapacity { runner: runner.id.clone(), node });
        }
        if sum != runner.allocated {
            violations.push(Violation::AllocationMismatch {
                runner: runner.id.clone(),
                node,
                allocated: runner.allocated,
                sandboxes: sum,
            });
        }
    }
    let known: HashSet<&str> = runners.iter().map(|r| r.id.as_str()).collect();
    for s in sandboxes.iter().filter(|s| !s.destroyed && !known.contains(s.runner_id.as_str())) {
        violations.push(Violation::UnknownRunner { sandbox: s.id.clone(), runner: s.runner_id.clone(), node });
    }
    violations
}

/// All nodes must agree on the state hash.
pub fn check_converged(hashes: &BTreeMap<u64, String>) -> Vec<Violation> {
    let distinct: HashSet<&String> = hashes.values().collect();
    if distinct.len() > 1 {
        vec![Violation::Diverged { hashes: hashes.clone() }]
    } else {
        Vec::new()
    }
}

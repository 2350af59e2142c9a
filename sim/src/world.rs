//! What the clients and the invariant checker see of the cluster: the handles of the nodes
//! that are up, and the run's record (history, sandboxes, trace hash).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use corral_chaos::history::{Call, History, Nanos, Outcome};
use corral_net::RaftLiveness;
use corral_node::election::{LastLogReader, Timing};
use corral_node::forwarder::Forwarder;
use corral_node::leader::Leader;
use corral_node::scheduler::Scheduler;
use corral_raft_types::{NodeId, Raft, SharedState};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::fleet::NodeHealth;

/// A node that is up, as its clients and its peers reach it.
#[derive(Clone)]
pub struct Handles {
    pub raft: Raft,
    pub leader: Leader,
    pub scheduler: Scheduler,
    /// Its batched calls to the leader over gRPC, as `corral serve`'s.
    pub forwarder: Forwarder,
    pub shared: SharedState,
    pub incarnation: u64,
    /// What its election driver and pre-vote answers read.
    pub liveness: RaftLiveness,
    pub last_log: LastLogReader,
    pub timing: Timing,
    /// Its runner health table and gossip view.
    pub health: NodeHealth,
}

/// A sandbox creation as the clients saw it.
#[derive(Debug, Clone)]
pub struct SandboxOp {
    /// The request's label (its idempotency key).
    pub request: String,
    pub acknowledged: bool,
    /// A delete of it was sent (whatever came back).
    pub deleted: bool,
}

#[derive(Default)]
struct Record {
    history: History,
    sandboxes: Vec<SandboxOp>,
    /// Per runner, when its agent was killed and (if it was) revived.
    agent_deaths: BTreeMap<String, Vec<(Nanos, Option<Nanos>)>>,
    /// Runners committed `unresponsive`, and when.
    demotions: Vec<(Nanos, String)>,
    trace: Sha256,
    events: u64,
    /// Answers the API must never give (a read without its field, a refused write).
    wrong_answers: Vec<String>,
}

/// Shared by the clients, the nemesis and the checker (cheap to clone).
#[derive(Clone)]
pub struct World {
    up: Arc<Mutex<BTreeMap<NodeId, Handles>>>,
    record: Arc<Mutex<Record>>,
    start: Instant,
    /// Print every traced event (`CORRAL_SIM_TRACE=1`, for reading a replay).
    print: bool,
}

impl World {
    pub fn new() -> World {
        let print = std::env::var_os("CORRAL_SIM_TRACE").is_some_and(|v| v == "1");
        World { up: Arc::default(), record: Arc::default(), start: Instant::now(), print }
    }

    pub fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }

    fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn nodes(&self) -> MutexGuard<'_, BTreeMap<NodeId, Handles>> {
        self.up.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_up(&self, id: NodeId, handles: Handles) {
        self.nodes().insert(id, handles);
    }

    pub fn set_down(&self, id: NodeId) {
        self.nodes().remove(&id);
    }

    pub fn node(&self, id: NodeId) -> Option<Handles> {
        self.nodes().get(&id).cloned()
    }

    pub fn up(&self) -> Vec<(NodeId, Handles)> {
        self.nodes().iter().map(|(id, h)| (*id, h.clone())).collect()
    }

    /// Adds an event to the run's trace hash (and counts it).
    pub fn trace(&self, event: &str) {
        let at = self.now();
        if self.print {
            println!("{:>10.3} s  {event}", at as f64 / 1e9);
        }
        let mut record = self.record();
        record.trace.update(at.to_le_bytes());
        record.trace.update(event.as_bytes());
        record.trace.update([0]);
        record.events += 1;
    }

    /// Records a finished register operation; returns its id.
    pub fn push_op(
        &self,
        client: u64,
        call: Call,
        invoke: Nanos,
        outcome: Outcome,
        read: Option<Option<String>>,
    ) -> u64 {
        let complete = (outcome != Outcome::Unknown).then(|| self.now());
        self.trace(&format!("op c{client} {call:?} {outcome:?} {read:?}"));
        let mut record = self.record();
        let id = record.history.push(client, call, invoke, complete, outcome);
        if let Some(op) = record.history.ops.last_mut() {
            op.read = read;
        }
        id
    }

    pub fn push_sandbox(&self, op: SandboxOp) {
        self.trace(&format!("sandbox {} acked={}", op.request, op.acknowledged));
        self.record().sandboxes.push(op);
    }

    pub fn mark_deleted(&self, request: &str) {
        self.trace(&format!("sandbox {request} deleted"));
        if let Some(op) = self.record().sandboxes.iter_mut().find(|s| s.request == request) {
            op.deleted = true;
        }
    }

    pub fn agent_died(&self, runner: &str) {
        let now = self.now();
        self.record().agent_deaths.entry(runner.to_string()).or_default().push((now, None));
    }

    pub fn agent_revived(&self, runner: &str) {
        let now = self.now();
        self.trace(&format!("agent {runner} revived"));
        if let Some(death) = self.record().agent_deaths.get_mut(runner).and_then(|d| d.last_mut()) {
            death.1.get_or_insert(now);
        }
    }

    /// Whether `runner`'s agent is dead now (killed and not revived since).
    pub fn agent_is_dead(&self, runner: &str) -> bool {
        self.record().agent_deaths.get(runner).and_then(|d| d.last()).is_some_and(|(_, revived)| revived.is_none())
    }

    pub fn agent_kills(&self) -> usize {
        self.record().agent_deaths.values().map(Vec::len).sum()
    }

    /// The leader committed `runner` unresponsive.
    pub fn demoted(&self, runner: &str) {
        let now = self.now();
        self.record().demotions.push((now, runner.to_string()));
    }

    /// Demotions of runners whose agent was alive throughout the `silence` before: the
    /// runner kept reporting, so only the cluster can have lost its reports.
    pub fn false_demotions(&self, silence: std::time::Duration) -> Vec<(Nanos, String)> {
        let record = self.record();
        let window = silence.as_nanos() as Nanos;
        record
            .demotions
            .iter()
            .filter(|(at, runner)| {
                let deaths = record.agent_deaths.get(runner).map(Vec::as_slice).unwrap_or_default();
                let from = at.saturating_sub(window);
                !deaths.iter().any(|(died, revived)| *died <= *at && revived.is_none_or(|r| r >= from))
            })
            .cloned()
            .collect()
    }

    /// Records an answer the API must never give (it fails the run).
    pub fn wrong_answer(&self, what: String) {
        self.trace(&format!("wrong answer: {what}"));
        self.record().wrong_answers.push(what);
    }

    /// The wrong answers recorded so far.
    pub fn wrong_answers(&self) -> Vec<String> {
        self.record().wrong_answers.clone()
    }

    /// Takes the history and the sandbox operations recorded so far.
    pub fn take_history(&self) -> (History, Vec<SandboxOp>) {
        let mut record = self.record();
        (std::mem::take(&mut record.history), std::mem::take(&mut record.sandboxes))
    }

    /// The trace hash so far, and how many events it covers.
    pub fn trace_hash(&self) -> (String, u64) {
        let record = self.record();
        (hex::encode(record.trace.clone().finalize()), record.events)
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

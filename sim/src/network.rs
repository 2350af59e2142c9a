//! The simulated network: openraft's RPCs between in-process nodes, through a [`Fabric`] that
//! the nemesis reconfigures. Every decision (drop, delay) is drawn from the fabric's seeded
//! generator, and every delay is a tokio sleep on the simulation's paused clock.
//!
//! A message from `a` to `b` is lost when the link `a → b` is cut, when either node is down,
//! or with the link-loss probability; lost messages surface as openraft's `Unreachable` after
//! the delay a real timeout would take. A reply travels `b → a` and can be lost the same way
//! after the call ran on `b` (the one-way cut that lets requests in and no answers out).
//! A paused node's traffic, both ways, waits until it resumes and is then delivered late.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use corral_net::RaftLiveness;
use corral_raft_types::{CorralNode, NodeId, Raft, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

/// How long a lost message takes to be reported (an RPC timeout).
const LOST_AFTER: Duration = Duration::from_millis(100);
/// openraft's pause before it retries a follower that did not answer (Corral's is 100 ms).
const REPLICATION_RETRY: Duration = Duration::from_millis(100);

/// The network's current faults.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Links `(from, to)` that lose every message.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Probability that a message on any link is lost.
    pub loss: f64,
    /// Extra one-way latency, drawn per message from this range (milliseconds).
    pub latency_ms: (u64, u64),
}

struct FabricState {
    rng: StdRng,
    /// The Raft handle of each node that is up, and where its transport records contact.
    up: BTreeMap<NodeId, (Raft, RaftLiveness)>,
    faults: Faults,
    messages: u64,
    lost: u64,
}

/// The simulated network shared by every node (cheap to clone).
#[derive(Clone)]
pub struct Fabric {
    state: Arc<Mutex<FabricState>>,
    /// Nodes that are paused: their traffic waits.
    paused: watch::Sender<BTreeSet<NodeId>>,
}

/// What the fabric decided for one message.
enum Route {
    Lost,
    Deliver { delay: Duration, to: (Raft, RaftLiveness) },
}

impl Fabric {
    pub fn new(seed: u64) -> Fabric {
        let state = FabricState {
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
            up: BTreeMap::new(),
            faults: Faults { latency_ms: (1, 3), ..Faults::default() },
            messages: 0,
            lost: 0,
        };
        Fabric { state: Arc::new(Mutex::new(state)), paused: watch::Sender::new(BTreeSet::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, FabricState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_up(&self, id: NodeId, raft: Raft, liveness: RaftLiveness) {
        self.lock().up.insert(id, (raft, liveness));
    }

    pub fn set_down(&self, id: NodeId) {
        self.lock().up.remove(&id);
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn set_paused(&self, id: NodeId, paused: bool) {
        self.paused.send_modify(|p| {
            if paused {
                p.insert(id);
            } else {
                p.remove(&id);
            }
        });
    }

    pub fn is_paused(&self, id: NodeId) -> bool {
        self.paused.borrow().contains(&id)
    }

    /// (messages sent, messages lost) so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.messages, s.lost)
    }

    /// Waits while `a` or `b` is paused.
    async fn wait_unpaused(&self, a: NodeId, b: NodeId) {
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|p| !p.contains(&a) && !p.contains(&b)).await;
    }

    fn route(&self, from: NodeId, to: NodeId) -> Route {
        let mut s = self.lock();
        s.messages += 1;
        let (low, high) = s.faults.latency_ms;
        let delay = Duration::from_millis(if high > low { s.rng.gen_range(low..=high) } else { low });
        let loss = s.faults.loss;
        let dropped = loss > 0.0 && s.rng.gen_bool(loss.min(1.0));
        let target = s.up.get(&to).cloned();
        match target {
            Some(raft) if !dropped && !s.faults.cut.contains(&(from, to)) && s.up.contains_key(&from) => {
                Route::Deliver { delay, to: raft }
            }
            _ => {
                s.lost += 1;
                Route::Lost
            }
        }
    }

    /// Whether a connection attempt `from → to` is refused: only when the link works and
    /// nothing runs at `to` (a crashed node); a paused or cut-off node's port is not refused
    /// (the attempt hangs until its timeout, which the caller applies).
    pub async fn connection_refused(&self, from: NodeId, to: NodeId) -> bool {
        let (cut, down, delay) = {
            let s = self.lock();
            let (low, _) = s.faults.latency_ms;
            (s.faults.cut.contains(&(from, to)) || s.faults.cut.contains(&(to, from)), !s.up.contains_key(&to), low)
        };
        if cut || !down {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(delay * 2)).await;
        true
    }

    /// Carries one Raft RPC `from → to` and its reply back, or loses it.
    async fn call<Reply, F, Fut>(&self, from: NodeId, to: NodeId, run: F) -> Result<Reply, Lost>
    where
        F: FnOnce((Raft, RaftLiveness)) -> Fut,
        Fut: std::future::Future<Output = Reply>,
    {
        self.wait_unpaused(from, to).await;
        let (delay, raft) = match self.route(from, to) {
            Route::Lost => {
                tokio::time::sleep(LOST_AFTER).await;
                return Err(Lost);
            }
            Route::Deliver { delay, to } => (delay, to),
        };
        tokio::time::sleep(delay).await;
        let reply = run(raft).await;
        self.reply(from, to).await?;
        Ok(reply)
    }

    /// Carries the reply of a call that ran on `to` back to `from`, or loses it.
    async fn reply(&self, from: NodeId, to: NodeId) -> Result<(), Lost> {
        self.wait_unpaused(from, to).await;
        match self.route(to, from) {
            Route::Lost => {
                tokio::time::sleep(LOST_AFTER).await;
                Err(Lost)
            }
            Route::Deliver { delay, .. } => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
        }
    }

    /// Carries a node-to-node request that is not Raft's (a forwarded write, a read index)
    /// `from → to`, runs `request` there, and carries its answer back; `None` when lost.
    pub async fn carry<T>(&self, from: NodeId, to: NodeId, request: impl std::future::Future<Output = T>) -> Option<T> {
        if from == to {
            return Some(request.await);
        }
        self.wait_unpaused(from, to).await;
        match self.route(from, to) {
            Route::Lost => {
                tokio::time::sleep(LOST_AFTER).await;
                return None;
            }
            Route::Deliver { delay, .. } => tokio::time::sleep(delay).await,
        }
        let answer = request.await;
        self.reply(from, to).await.ok()?;
        Some(answer)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("message lost")]
struct Lost;

/// openraft's network factory for one node.
#[derive(Clone)]
pub struct SimNetwork {
    pub from: NodeId,
    pub fabric: Fabric,
    /// The node's record of acknowledgements (and its fence), as the gRPC transport keeps it.
    pub liveness: RaftLiveness,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimPeer;

    async fn new_client(&mut self, target: NodeId, _node: &CorralNode) -> SimPeer {
        SimPeer { from: self.from, to: target, fabric: self.fabric.clone(), liveness: self.liveness.clone() }
    }
}

/// One node's connection to one peer.
pub struct SimPeer {
    from: NodeId,
    to: NodeId,
    fabric: Fabric,
    liveness: RaftLiveness,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, CorralNode, RaftError<NodeId, E>>>;

impl SimPeer {
    // openraft's `RaftNetwork` methods return its `RPCError` unboxed; this builds that value.
    #[allow(clippy::result_large_err)]
    fn answer<T, E: std::error::Error>(&self, reply: Result<Result<T, RaftError<NodeId, E>>, Lost>) -> RpcResult<T, E> {
        match reply {
            Err(lost) => Err(RPCError::Unreachable(Unreachable::new(&lost))),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.to, e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for SimPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        if self.liveness.replication_stopped() {
            return Err(corral_net::raft_network::replication_stopped());
        }
        let term = rpc.vote.leader_id().term;
        let sent = tokio::time::Instant::now();
        let reply = self
            .fabric
            .call(self.from, self.to, |(raft, target)| async move {
                let reply = raft.append_entries(rpc).await;
                target.record_append_received(term, &reply);
                reply
            })
            .await;
        if let Ok(Ok(answer)) = &reply {
            self.liveness.record_append_reply(self.to, term, sent, answer);
        }
        self.answer(reply)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        if self.liveness.replication_stopped() {
            return Err(corral_net::raft_network::replication_stopped());
        }
        let (leader_vote, sent) = (rpc.vote, tokio::time::Instant::now());
        let reply = self
            .fabric
            .call(self.from, self.to, |(raft, target)| async move {
                let reply = raft.install_snapshot(rpc).await;
                target.record_snapshot_received(&leader_vote, &reply);
                reply
            })
            .await;
        if let Ok(Ok(answer)) = &reply {
            self.liveness.record_snapshot_reply(self.to, &leader_vote, sent, answer);
        }
        self.answer(reply)
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, _option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        let reply = self.fabric.call(self.from, self.to, |(raft, _)| async move { raft.vote(rpc).await }).await;
        self.answer(reply)
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(REPLICATION_RETRY))
    }
}

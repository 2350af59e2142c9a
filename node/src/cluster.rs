//! [`RaftCluster`]: the node's one handle on the cluster. Everything that must happen on the
//! leader (propose, read index, place a sandbox, change membership) goes through it: run on
//! the local [`Leader`] when this node leads, forwarded over gRPC otherwise. The API reaches it
//! through its `ClusterHandle` trait, peers through its [`RaftCluster::peer_service`] (net's
//! `LeaderService`), and the node's own tasks (health monitor, shared regions) call its methods directly.
//!
//! Writes go to the leader: proposed locally when this node leads, otherwise forwarded over
//! gRPC, coalesced with the writes waiting beside them ([`Forwarder`]). Every proposal carries an idempotency key (the client's, or one made up here), so
//! retrying after a leader change can never apply a command twice.
//! Linearizable reads take a read index from the leader and wait for the local state machine
//! to reach it.

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use corral_api::{
    ClusterError, ClusterHandle, ClusterStatus, GossipMemberStatus, MemberChange, MemberStatus, ReadConsistency,
    StateHash,
};
use corral_model::health::SharedHealth;
use corral_model::{ApplyResult, Proposal, Rejection, SandboxRequest, SharedSandbox};
use corral_net::gossip::Gossip;
use corral_net::{ForwardError, MembershipChange, NetError, PeerClients, RaftLiveness};
use corral_raft_types::{CorralNode, NodeId, Raft, SharedState};
use openraft::ServerState;
use tokio::time::Instant;

use crate::forwarder::Forwarder;
use crate::leader::{Leader, LeaderError};

/// How far the applied index may trail the local log for the node to report ready.
const READY_MAX_LAG: u64 = 1_000;
/// Pause between attempts while a leader is being elected.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

pub struct RaftCluster {
    pub node_id: NodeId,
    pub raft: Raft,
    pub leader: Leader,
    pub shared: SharedState,
    pub clients: PeerClients,
    /// Writes, placements and read-index requests to the leader, coalesced.
    pub forwarder: Forwarder,
    pub scheduler: crate::scheduler::Scheduler,
    pub request_timeout: Duration,
    /// Set on SIGTERM: the node reports not ready so load balancers move away before it stops.
    pub draining: Arc<AtomicBool>,
    pub health: SharedHealth,
    /// Runner health gossip over QUIC (`None` where there is none: the simulation carries
    /// health reports itself); only its members' liveness is read here, for the status.
    pub gossip: Option<Gossip>,
    /// When this node last heard from a leader (for pre-votes).
    pub liveness: RaftLiveness,
    pub election: crate::election::Timing,
    pub last_log: crate::election::LastLogReader,
    /// One state hash at a time: each reads the whole state (see [`RaftCluster::state_hash`]).
    pub hashing: tokio::sync::Mutex<()>,
    /// The idempotency keys of proposals that come without one.
    pub auto_keys: AutoKeys,
}

/// Makes the idempotency keys of the proposals that arrive without one (`auto/`, the node,
/// a nonce drawn once per process start, a counter): unique across nodes and restarts, and
/// cheaper than a random key per proposal. The simulation draws the nonce from its seed, so
/// that the keys, which the replicated state keeps, are the same on every run.
#[derive(Debug)]
pub struct AutoKeys {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl AutoKeys {
    /// Keys under a random nonce (`corral serve`).
    pub fn random(node_id: NodeId) -> AutoKeys {
        AutoKeys::with_nonce(node_id, &uuid::Uuid::new_v4().simple().to_string())
    }

    /// Keys under `nonce`, which must not repeat across the node's starts.
    pub fn with_nonce(node_id: NodeId, nonce: &str) -> AutoKeys {
        AutoKeys { prefix: format!("auto/{node_id}/{nonce}/"), next: Default::default() }
    }

    pub fn next(&self) -> String {
        format!("{}{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// How long a membership change may take (adding a node waits for it to catch up).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

enum Target {
    Local,
    Remote(CorralNode),
}

impl RaftCluster {
    /// Before a planned shutdown (SIGTERM): if this node leads, hand leadership to a voter
    /// that has the whole log, so that the write gap is a fraction of a second instead of an
    /// election timeout. openraft 0.9 has no transfer call, so:
    /// 1. stop admitting writes (they wait here for the successor and are forwarded to it);
    /// 2. wait until no batch is with Raft any more, everything proposed is applied here and a
    ///    voter has matched the last entry;
    /// 3. stop sending (heartbeats and entries), so every voter's vote lease runs out;
    /// 4. after one vote lease, if the log did not grow meanwhile (else back to 2), ask that
    ///    voter to campaign: its log is the longest, so it wins, and this node steps down on
    ///    seeing the higher term. Works with any cluster size.
    ///
    /// A successor whose log is behind would lose, raise the term on every retry and cost an
    /// election (a 30-minute chaos run saw 5.1 s once: a batch appended after the choice).
    pub async fn hand_off_leadership(&self, timeout: Duration) {
        let others = self.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v != self.node_id);
        if !self.leader.leads() || !others {
            return;
        }
        let started = Instant::now();
        let deadline = started + timeout;
        self.leader.set_handing_off(true);
        let moved = self.hand_off(deadline).await;
        if !moved {
            // Leading on beats refusing every write until the process is gone: the cluster
            // then elects once this node's port closes (a few heartbeats).
            self.liveness.stop_replication(false);
            self.raft.runtime_config().heartbeat(true);
            self.leader.set_handing_off(false);
        }
        metrics::histogram!("corral_raft_handoff_seconds", "outcome" => if moved { "moved" } else { "timed_out" })
            .record(started.elapsed().as_secs_f64());
        tracing::info!(moved, elapsed_ms = started.elapsed().as_millis() as u64, "leadership hand-off");
    }

    /// The steps of [`hand_off_leadership`](Self::hand_off_leadership); true once another node
    /// leads.
    async fn hand_off(&self, deadline: Instant) -> bool {
        if !self.leader.wait_for_no_batch_in_flight(deadline).await {
            tracing::warn!("writes still with Raft at the deadline");
            return false;
        }
        let (successor, addr) = loop {
            let Some((successor, addr, last)) = self.caught_up_voter(deadline).await else {
                tracing::warn!("no voter caught up in time");
                return false;
            };
            self.raft.runtime_config().heartbeat(false);
            self.liveness.stop_replication(true);
            // AppendEntries already on the wire arrive within a few ms; after one vote lease
            // and half a heartbeat of margin, no voter refuses a vote for having just heard
            // from this node (and if one does, the successor is asked again below).
            tokio::time::sleep(self.election.vote_lease + self.election.heartbeat / 2).await;
            // An entry appended since the successor matched the log (openraft's own, or one
            // the metrics showed late) would make it lose: replicate it and choose again.
            if self.raft.metrics().borrow().last_log_index == last {
                break (successor, addr);
            }
            tracing::info!(successor, "the log grew after the successor was chosen; choosing again");
            self.liveness.stop_replication(false);
            self.raft.runtime_config().heartbeat(true);
        };
        tracing::info!(successor, "handing leadership off before shutdown");
        // Asked again every few heartbeats: a vote can time out on a loaded machine.
        let mut metrics = self.raft.metrics();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return false;
            }
            match self.clients.trigger_election(&addr, remaining).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the successor could not campaign"),
                Err(e) => tracing::warn!(error = %e, "the successor could not be asked to campaign"),
            }
            let retry = Instant::now() + self.election.heartbeat * 4;
            loop {
                if metrics.borrow_and_update().current_leader.is_some_and(|l| l != self.node_id) {
                    return true;
                }
                match tokio::time::timeout_at(retry.min(deadline), metrics.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return false,
                    Err(_) => break,
                }
            }
        }
    }

    /// A voter (not this node) whose log matches this leader's last entry, once everything
    /// this leader proposed is applied, with that last index; `None` at `deadline`.
    async fn caught_up_voter(&self, deadline: Instant) -> Option<(NodeId, String, Option<u64>)> {
        let mut metrics = self.raft.metrics();
        loop {
            let found = {
                let m = metrics.borrow_and_update();
                let last = m.last_log_index;
                let membership = m.membership_config.membership();
                let applied = m.last_applied.map(|l| l.index) >= last;
                m.replication
                    .iter()
                    .flatten()
                    .filter(|(id, matched)| **id != self.node_id && matched.map(|l| l.index) >= last && applied)
                    .filter(|(id, _)| membership.voter_ids().any(|v| v == **id))
                    .find_map(|(id, _)| membership.get_node(id).map(|n| (*id, n.raft_addr.clone(), last)))
            };
            if found.is_some() {
                return found;
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// The current leader, waiting (until `deadline`) for one to be elected.
    async fn leader(&self, deadline: Instant) -> Result<Target, ClusterError> {
        let mut metrics = self.raft.metrics();
        loop {
            let found = {
                let m = metrics.borrow_and_update();
                m.current_leader.map(|id| (id, m.membership_config.membership().get_node(&id).cloned()))
            };
            match found {
                Some((id, _)) if id == self.node_id => return Ok(Target::Local),
                Some((_, Some(node))) => return Ok(Target::Remote(node)),
                _ => {}
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClusterError::Unavailable("raft is shutting down".into())),
                Err(_) => return Err(ClusterError::NoLeader),
            }
        }
    }

    /// Waits before the next attempt: until the known leader changes, or `RETRY_PAUSE`,
    /// whichever comes first; gives up with `last` when the deadline would pass, and at once
    /// when Raft has shut down.
    async fn pause_or_give_up(&self, deadline: Instant, last: ClusterError) -> Result<(), ClusterError> {
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(last);
        }
        let mut metrics = self.raft.metrics();
        let leader_now = metrics.borrow_and_update().current_leader;
        let shut_down = matches!(
            tokio::time::timeout(RETRY_PAUSE, metrics.wait_for(|m| m.current_leader != leader_now)).await,
            Ok(Err(_))
        );
        // Raft has shut down: nothing will change, and not pausing would retry in a busy loop
        // (the simulation found one in requests in flight on a node that crashed).
        if shut_down {
            return Err(ClusterError::Unavailable("raft has shut down".into()));
        }
        Ok(())
    }

    /// Resolves when this node's view of the leader is no longer `target` (a new leader was
    /// elected while an attempt at `target` was waiting). Never, once Raft has shut down:
    /// resolving then would retry the same leader at once, over and over (the simulation
    /// found that busy loop in requests still in flight on a node that crashed).
    async fn leader_moved_from(&self, target: Option<NodeId>) {
        let mut metrics = self.raft.metrics();
        if metrics.wait_for(|m| m.current_leader.is_some() && m.current_leader != target).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Proposes through the leader, retrying (safely, under one idempotency key) while the
    /// leader changes, until the request timeout.
    async fn propose_with_retries(&self, mut proposal: Proposal) -> Result<ApplyResult, ClusterError> {
        if proposal.idempotency_key.is_none() {
            proposal.idempotency_key = Some(self.auto_keys.next());
        }
        let deadline = Instant::now() + self.request_timeout;
        let committed = self
            .on_leader(
                deadline,
                true,
                || self.leader.write(proposal.clone()),
                |node, timeout| self.forwarder.write(node.raft_addr, proposal.clone(), timeout),
            )
            .await?;
        Ok(committed.response)
    }

    /// Runs one request on the leader — `local` when this node leads, `remote` (over gRPC)
    /// otherwise — retrying while leadership moves, until `deadline`. Retrying is safe for
    /// every caller: proposals carry an idempotency key, sandbox requests theirs, reads and
    /// membership changes are idempotent. `Unavailable` answers are retried only when
    /// `retry_unavailable` (a membership change refused by the leader is final).
    async fn on_leader<T, L, LF, R, RF>(
        &self,
        deadline: Instant,
        retry_unavailable: bool,
        local: L,
        remote: R,
    ) -> Result<T, ClusterError>
    where
        L: Fn() -> LF,
        LF: std::future::Future<Output = Result<T, LeaderError>>,
        R: Fn(CorralNode, Duration) -> RF,
        RF: std::future::Future<Output = Result<Result<T, ForwardError>, NetError>>,
    {
        // A leader named by a `NotLeader` answer, tried next even when this node has not
        // heard of it yet.
        let mut hint: Option<(NodeId, CorralNode)> = None;
        let mut followed_hint = false;
        loop {
            let from_hint = hint.is_some();
            let target = match hint.take() {
                Some((id, node)) if id != self.node_id => (Some(id), Target::Remote(node)),
                _ => match self.leader(deadline).await? {
                    Target::Local => (Some(self.node_id), Target::Local),
                    Target::Remote(node) => (self.raft.metrics().borrow().current_leader, Target::Remote(node)),
                },
            };
            let attempt = match target.1 {
                // A fenced leader (no quorum acknowledged it within the lease) cannot commit:
                // answer at once, the client retries elsewhere or later.
                Target::Local if self.leader.is_fenced() => return Err(ClusterError::NoLeader),
                Target::Local => Ok(local().await.map_err(ForwardError::from)),
                Target::Remote(node) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    tokio::select! {
                        attempt = remote(node, remaining) => attempt,
                        // The leader changed while waiting: retry there (safe, see above).
                        () = self.leader_moved_from(target.0), if !from_hint => {
                            metrics::counter!("corral_forward_retargeted_total").increment(1);
                            continue;
                        }
                    }
                }
            };
            let last = match attempt {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(ForwardError::Overloaded)) => return Err(ClusterError::Overloaded),
                Ok(Err(ForwardError::NotLeader { leader_id, leader })) => {
                    // Follow one hint at once; another `NotLeader` right after waits a pause,
                    // so two nodes with stale views cannot bounce a request between them.
                    if let (Some(id), Some(node), false) = (leader_id, leader, followed_hint) {
                        if Some(id) != target.0 {
                            hint = Some((id, node));
                            followed_hint = true;
                            continue;
                        }
                    }
                    followed_hint = false;
                    ClusterError::NoLeader
                }
                Ok(Err(ForwardError::Unavailable(msg))) if retry_unavailable => ClusterError::Unavailable(msg),
                Ok(Err(ForwardError::Unavailable(msg))) => return Err(ClusterError::Unavailable(msg)),
                Err(e) => net_error(e),
            };
            if matches!(last, ClusterError::Timeout) {
                return Err(last);
            }
            self.pause_or_give_up(deadline, last).await?;
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ClusterError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| ClusterError::Timeout)
    }
}

fn net_error(e: NetError) -> ClusterError {
    match e {
        NetError::Unreachable { .. } => ClusterError::NoLeader,
        NetError::Rpc { status, .. } if status.contains("Timeout expired") || status.contains("deadline") => {
            ClusterError::Timeout
        }
        other => ClusterError::Unavailable(other.to_string()),
    }
}

impl RaftCluster {
    /// Commits `proposal` through the leader (forwarding when needed, retrying under one
    /// idempotency key while leadership moves) and returns what `apply` answered.
    pub async fn propose(&self, proposal: Proposal) -> Result<ApplyResult, ClusterError> {
        let started = std::time::Instant::now();
        let result = self.propose_with_retries(proposal).await;
        let outcome = if result.is_ok() { "committed" } else { "failed" };
        metrics::histogram!("corral_raft_proposal_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// `Ok` when this node can serve: it knows a leader and, as a follower, heard from it
    /// within the lease, its state machine is caught up, and it is not draining for shutdown.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining for shutdown".into());
        }
        if self.leader.is_fenced() {
            return Err("this leader lost its quorum's acknowledgement (fenced)".into());
        }
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader.is_none() {
            return Err("no known leader".into());
        }
        // A follower cut off from its leader still names it (openraft keeps the leader until
        // a vote changes) but could only hold requests until they time out: it leaves the
        // load balancer after the same lease that fences a leader.
        if m.state != ServerState::Leader {
            let silence = self.liveness.since_leader_contact(tokio::time::Instant::now());
            if silence > self.election.lease {
                return Err(format!("heard from no leader for {} ms", silence.as_millis()));
            }
        }
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let last = m.last_log_index.unwrap_or(0);
        if applied + READY_MAX_LAG < last {
            return Err(format!("applied index {applied} lags the log ({last})"));
        }
        Ok(())
    }

    /// `Err(why)` when runner sessions do not belong on this node now: it has been a fenced
    /// leader for an election timeout (a fence that load caused lifts sooner), or it is a
    /// member that has heard from no leader for five election timeouts (cut off from the
    /// majority; on an overloaded machine AppendEntries gaps of a few seconds happen, and
    /// moving every runner of a node costs more than a late report). What its runners report
    /// would reach no leader and they would be marked `unresponsive`; closed sessions
    /// reconnect to another node.
    pub fn serves_runners(&self) -> Result<(), String> {
        if self.leader.fenced_for().is_some_and(|f| f > self.election.election_timeout) {
            return Err("this leader lost its quorum (fenced)".into());
        }
        let (leads, member) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader, m.membership_config.membership().get_node(&self.node_id).is_some())
        };
        let silence = self.liveness.since_leader_contact(tokio::time::Instant::now());
        if member && !leads && silence > self.election.election_timeout * 5 {
            return Err(format!("this node has heard from no leader for {} ms", silence.as_millis()));
        }
        Ok(())
    }

    /// Runs a membership change on the leader; returns the members after it.
    pub async fn change_membership(&self, change: MemberChange) -> Result<Vec<MemberStatus>, ClusterError> {
        let change = match change {
            MemberChange::Add { node_id, raft_addr, api_addr } => {
                MembershipChange::Add { node_id, node: CorralNode { raft_addr, api_addr } }
            }
            MemberChange::Remove { node_id } => MembershipChange::Remove { node_id },
        };
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        let changed = self
            .on_leader(
                deadline,
                false,
                || self.leader.change_membership(change.clone()),
                |node, timeout| {
                    let change = &change;
                    async move { self.clients.change_membership(&node.raft_addr, change, timeout).await }
                },
            )
            .await?;
        Ok(changed
            .members
            .into_iter()
            .map(|(id, node)| MemberStatus {
                node_id: id,
                raft_addr: node.raft_addr,
                api_addr: node.api_addr,
                voter: changed.voters.contains(&id),
            })
            .collect())
    }

    /// Hands a sandbox request to the leader's scheduler; returns once it is applied.
    pub async fn create_sandbox(
        &self,
        request: SandboxRequest,
    ) -> Result<Result<SharedSandbox, Rejection>, ClusterError> {
        // Safe to retry: the request keeps its sandbox id and idempotency key.
        let deadline = Instant::now() + self.request_timeout;
        self.on_leader(
            deadline,
            true,
            || self.scheduler.place(request.clone()),
            |node, timeout| self.forwarder.place(node.raft_addr, request.clone(), timeout),
        )
        .await
    }

    /// Returns once the local state may be read with `consistency`.
    pub async fn read_barrier(&self, consistency: ReadConsistency) -> Result<(), ClusterError> {
        if consistency == ReadConsistency::Stale {
            return Ok(());
        }
        let deadline = Instant::now() + self.request_timeout;
        let index = self
            .on_leader(
                deadline,
                true,
                || self.leader.read_index(),
                |node, timeout| self.forwarder.read_index(node.raft_addr, timeout),
            )
            .await?;
        self.wait_applied(index, deadline).await
    }

    /// The hash of this node's replica with the index it covers, both taken under one lock.
    /// Hashing encodes the whole state (about a second per million objects), so it runs on
    /// a blocking thread, one request at a time, never on the runtime that serves heartbeats
    /// and runner sessions.
    pub async fn state_hash(&self) -> Result<StateHash, ClusterError> {
        let _one_at_a_time = self.hashing.lock().await;
        let shared = self.shared.clone();
        let node_id = self.node_id;
        tokio::task::spawn_blocking(move || {
            // The view and its index under the lock (O(1)); the hashing after it, without.
            let (view, applied_index) = {
                let machine = shared.read();
                (machine.state.replicated_view(), machine.last_applied.map(|l| l.index))
            };
            StateHash { node_id, applied_index, state_hash: view.hash() }
        })
        .await
        .map_err(|e| ClusterError::Internal(format!("state hash: {e}")))
    }

    /// This node's view of the cluster. Cheap (no pass over the state): dashboards and
    /// scripts poll it every second.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                node_id: *id,
                raft_addr: node.raft_addr.clone(),
                api_addr: node.api_addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let machine = self.shared.read();
        ClusterStatus {
            node_id: self.node_id,
            leader_id: m.current_leader,
            role: role.to_string(),
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: machine.last_applied.map(|l| l.index),
            snapshot_index: machine.snapshot_index,
            purged_index: m.purged.map(|l| l.index),
            snapshots_built: machine.snapshots_built,
            snapshots_installed: machine.snapshots_installed,
            members,
            gossip: self
                .gossip
                .iter()
                .flat_map(Gossip::members)
                .map(|g| GossipMemberStatus {
                    node_id: g.node_id,
                    addr: g.addr.to_string(),
                    liveness: g.liveness.label().to_string(),
                })
                .collect(),
            runners_reporting: self.health.read().len() as u64,
        }
    }
}

#[async_trait::async_trait]
impl ClusterHandle for RaftCluster {
    async fn propose(&self, proposal: Proposal) -> Result<ApplyResult, ClusterError> {
        RaftCluster::propose(self, proposal).await
    }

    async fn create_sandbox(&self, request: SandboxRequest) -> Result<Result<SharedSandbox, Rejection>, ClusterError> {
        RaftCluster::create_sandbox(self, request).await
    }

    async fn read_barrier(&self, consistency: ReadConsistency) -> Result<(), ClusterError> {
        RaftCluster::read_barrier(self, consistency).await
    }

    async fn change_membership(&self, change: MemberChange) -> Result<Vec<MemberStatus>, ClusterError> {
        RaftCluster::change_membership(self, change).await
    }

    async fn readiness(&self) -> Result<(), String> {
        RaftCluster::readiness(self)
    }

    fn state(&self) -> &SharedState {
        &self.shared
    }

    fn health(&self) -> &SharedHealth {
        &self.health
    }

    async fn status(&self) -> ClusterStatus {
        RaftCluster::status(self)
    }

    async fn state_hash(&self) -> Result<StateHash, ClusterError> {
        RaftCluster::state_hash(self).await
    }
}

impl RaftCluster {
    /// What this node answers to its peers' gRPC calls, over the same handles.
    pub fn peer_service(&self) -> crate::peer_service::PeerService {
        crate::peer_service::PeerService {
            node_id: self.node_id,
            raft: self.raft.clone(),
            leader: self.leader.clone(),
            scheduler: self.scheduler.clone(),
            liveness: self.liveness.clone(),
            last_log: self.last_log.clone(),
            election: self.election,
            clients: self.clients.clone(),
            draining: self.draining.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AutoKeys;

    #[test]
    fn automatic_idempotency_keys_never_repeat_within_a_start_or_across_starts() {
        let first_start = AutoKeys::random(1);
        let (a, b) = (first_start.next(), first_start.next());
        assert_ne!(a, b);
        assert!(a.starts_with("auto/1/"), "{a}");
        let second_start = AutoKeys::random(1);
        assert_ne!(second_start.next(), a, "a restart draws a new nonce");
        // The simulation's nonce comes from its seed: the same keys on every run.
        assert_eq!(AutoKeys::with_nonce(2, "5eed").next(), AutoKeys::with_nonce(2, "5eed").next());
    }
}

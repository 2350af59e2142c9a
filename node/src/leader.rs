//! [`Leader`]: the operations only the leader performs, on this node's Raft. Each answers
//! [`LeaderError::NotLeader`] (with the leader, when known) on a node that does not lead, so
//! the caller can go there instead. The scheduler commits through it; the node's handle
//! ([`crate::cluster::RaftCluster`]) runs these locally or forwards them to the leader.
//!
//! Batching: proposals (the node's own, forwarded ones, the scheduler's placements) wait in
//! one bounded queue and are coalesced into one Raft entry ([`ProposalBatch`]) per call to
//! `client_write`, with a few entries in flight ([`crate::coalescer`]); each proposal gets its
//! own result back. A full queue answers [`LeaderError::Overloaded`] at once. Read-index
//! requests are coalesced the same way: one leadership round answers every read that was
//! waiting before it started.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_model::injected::{injected, InjectedBug};
use corral_model::Proposal;
use corral_net::{CommittedWrite, ForwardError, MembershipChange, MembershipChanged};
use corral_raft_types::{CorralNode, NodeId, ProposalBatch, Raft, SharedState, TypeConfig};

use crate::coalescer::{CoalesceError, Coalescer, CoalescerConfig};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;

/// Why a leader operation could not run here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaderError {
    #[error("this node is not the leader (leader: {leader_id:?})")]
    NotLeader { leader_id: Option<NodeId>, leader: Option<CorralNode> },
    #[error("raft is unavailable: {0}")]
    Unavailable(String),
    #[error("the leader's queue is full; retry shortly")]
    Overloaded,
}

impl From<CoalesceError> for LeaderError {
    fn from(e: CoalesceError) -> Self {
        match e {
            CoalesceError::Full => LeaderError::Overloaded,
            CoalesceError::Stopped => LeaderError::Unavailable("the proposal queue has stopped".into()),
        }
    }
}

/// How proposals are coalesced into Raft entries (the default; the node's config may change
/// the queue's depth). Beside a running entry, a new one waits for 32 proposals, for a
/// running one to commit, or for half an entry's average time (the coalescer's patience): with
/// no such floor, half the entries under load held one proposal.
pub const PROPOSAL_BATCHING: CoalescerConfig =
    CoalescerConfig { queue_capacity: 16_384, max_batch: 1_024, max_in_flight: 4, min_batch_while_busy: 32 };

/// Read-index rounds: every waiting read shares the next one; a second round starts beside a
/// running one only for 16 reads (or once the oldest has waited half a round).
const READ_INDEX_BATCHING: CoalescerConfig =
    CoalescerConfig { queue_capacity: 65_536, max_batch: 65_536, max_in_flight: 2, min_batch_while_busy: 16 };

/// What a follower receives over gRPC when the leader could not serve it.
impl From<LeaderError> for ForwardError {
    fn from(e: LeaderError) -> Self {
        match e {
            LeaderError::NotLeader { leader_id, leader } => ForwardError::NotLeader { leader_id, leader },
            LeaderError::Unavailable(msg) => ForwardError::Unavailable(msg),
            LeaderError::Overloaded => ForwardError::Overloaded,
        }
    }
}

/// The leader operations on this node's Raft; cheap to clone.
#[derive(Clone)]
pub struct Leader {
    raft: Raft,
    /// This node's state machine (what a build with injected bugs answers from early).
    applied: SharedState,
    /// Set by the election driver while this leader has no fresh quorum acknowledgement
    /// (check-quorum): it then acts as if it did not lead.
    fenced: Arc<AtomicBool>,
    /// Since when it is fenced.
    fenced_since: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    /// Set while this leader hands off before a shutdown ([`Leader::set_handing_off`]).
    handing_off: Arc<AtomicBool>,
    /// Proposal batches handed to Raft and not answered yet. A hand-off waits until there are
    /// none, so that no entry is appended after it chose its successor by the log.
    batches_in_flight: Arc<AtomicUsize>,
    proposals: Coalescer<Proposal, Result<CommittedWrite, LeaderError>>,
    read_indexes: Coalescer<(), Result<u64, LeaderError>>,
    /// The last term in which this node, leading, had applied every entry committed before
    /// the term began ([`Leader::wait_caught_up`]); 0: none yet.
    caught_up_term: Arc<AtomicU64>,
}

impl Leader {
    /// The leader operations on `raft`, with proposals batched as `batching` says. Starts the
    /// batching tasks on the current tokio runtime.
    pub fn new(raft: Raft, applied: SharedState, batching: CoalescerConfig) -> Self {
        let r = raft.clone();
        let state = applied.clone();
        let handing_off = Arc::new(AtomicBool::new(false));
        let stop_admitting = handing_off.clone();
        let batches_in_flight = Arc::new(AtomicUsize::new(0));
        let counter = batches_in_flight.clone();
        let proposals = Coalescer::start("proposals", batching, move |batch: Vec<Proposal>| {
            let raft = r.clone();
            let state = state.clone();
            // Counted before the flag is read, and the hand-off sets the flag before it reads
            // the count (both sequentially consistent): either this batch sees the hand-off
            // and is refused, or the hand-off sees this batch and waits for its answer.
            let in_flight = InFlight::enter(&counter);
            let handing_off = stop_admitting.load(Ordering::SeqCst);
            async move {
                let _in_flight = in_flight;
                if handing_off {
                    let count = batch.len();
                    return vec![Err(LeaderError::NotLeader { leader_id: None, leader: None }); count];
                }
                if injected(InjectedBug::AckBeforeCommit) {
                    return answer_before_commit(&raft, &state, batch).await;
                }
                commit_batch(&raft, batch).await
            }
        });
        let r = raft.clone();
        let read_indexes = Coalescer::start("read_index", READ_INDEX_BATCHING, move |waiting: Vec<()>| {
            let raft = r.clone();
            async move { vec![read_index_round(&raft).await; waiting.len()] }
        });
        Leader {
            raft,
            applied,
            fenced: Arc::new(AtomicBool::new(false)),
            fenced_since: Arc::default(),
            handing_off,
            batches_in_flight,
            proposals,
            read_indexes,
            caught_up_term: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Returns once this leader's state holds every entry committed before its term began,
    /// which a new leader's may not: a follower learns of a commit only with the leader's next
    /// AppendEntries (later still when the leader holds the index back, see
    /// `corral_raft_types::COMMIT_NOTICE_DELAY_US`), so it can take over with committed
    /// entries unapplied, and learns they are committed only once its own first entry commits.
    /// Decisions taken outside `apply` on the state (the scheduler's plan, which answers
    /// `no_capacity` or over-quota on it) wait for this; `apply` itself needs no wait. Costs one
    /// read-index round per term, then nothing.
    pub async fn wait_caught_up(&self) -> Result<(), LeaderError> {
        let term = self.raft.metrics().borrow().current_term;
        if self.caught_up_term.load(Ordering::SeqCst) == term {
            return Ok(());
        }
        let index = self.read_index().await?;
        self.raft
            .wait(Some(CATCH_UP_TIMEOUT))
            .applied_index_at_least(Some(index), "a new leader applies what earlier leaders committed")
            .await
            .map_err(|e| LeaderError::Unavailable(format!("this leader has not caught up: {e}")))?;
        self.caught_up_term.store(term, Ordering::SeqCst);
        Ok(())
    }

    /// Fences this leader (it answers `NotLeader` with no leader known, so callers retry) or
    /// lifts the fence.
    pub fn set_fenced(&self, fenced: bool) {
        let mut since = self.fenced_since.lock().unwrap_or_else(|p| p.into_inner());
        *since = fenced.then(|| since.unwrap_or_else(tokio::time::Instant::now));
        self.fenced.store(fenced, Ordering::Relaxed);
    }

    /// How long this leader has been fenced without a break (`None`: it is not).
    pub fn fenced_for(&self) -> Option<std::time::Duration> {
        self.fenced_since.lock().unwrap_or_else(|p| p.into_inner()).map(|since| since.elapsed())
    }

    /// Whether this node leads in Raft's eyes but has lost its quorum's acknowledgement.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Set while this leader hands leadership off before shutting down: like a fence, it
    /// admits nothing (`NotLeader`, no leader known), but callers wait for the successor
    /// instead of failing, since one is a moment away.
    pub fn set_handing_off(&self, handing_off: bool) {
        self.handing_off.store(handing_off, Ordering::SeqCst);
    }

    /// Waits (polling, until `deadline`) until no proposal batch is with Raft: after
    /// [`set_handing_off`](Self::set_handing_off), the log then grows no more by a client's
    /// write. False at the deadline.
    pub async fn wait_for_no_batch_in_flight(&self, deadline: tokio::time::Instant) -> bool {
        while self.batches_in_flight.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        true
    }

    pub fn is_handing_off(&self) -> bool {
        self.handing_off.load(Ordering::Relaxed)
    }

    /// Fenced or handing off: leads in Raft's eyes, but admits nothing.
    fn stands_aside(&self) -> bool {
        self.is_fenced() || self.handing_off.load(Ordering::Relaxed)
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Whether this node leads, as far as its metrics say now.
    pub fn leads(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(m.id) && !self.stands_aside()
    }

    /// `Some(NotLeader)` when this node does not lead (as far as its metrics say now).
    pub fn not_leader(&self) -> Option<LeaderError> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.current_leader == Some(m.id) && self.stands_aside() {
            return Some(LeaderError::NotLeader { leader_id: None, leader: None });
        }
        (m.current_leader != Some(m.id)).then(|| LeaderError::NotLeader {
            leader_id: m.current_leader,
            leader: m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned()),
        })
    }

    /// Commits `proposal` (in one entry with the proposals waiting beside it) and returns what
    /// `apply` answered to it, with the entry's index. A full queue answers `Overloaded` at
    /// once.
    pub async fn write(&self, proposal: Proposal) -> Result<CommittedWrite, LeaderError> {
        if let Some(not_leader) = self.not_leader() {
            return Err(not_leader);
        }
        self.proposals.call(proposal).await?
    }

    /// The read index: confirms leadership with a quorum and returns the log index a reader
    /// must have applied before serving a linearizable read. Reads waiting together share
    /// one round, which starts after each of them asked.
    pub async fn read_index(&self) -> Result<u64, LeaderError> {
        if let Some(not_leader) = self.not_leader() {
            return Err(not_leader);
        }
        if injected(InjectedBug::ReadWithoutReadIndex) {
            return Ok(self.applied.read().last_applied.map_or(0, |l| l.index));
        }
        self.read_indexes.call(()).await?
    }

    /// Starts an election on this node now (asked by a leader handing off before it stops).
    pub async fn campaign(&self) -> Result<(), LeaderError> {
        self.raft.trigger().elect().await.map_err(|e| LeaderError::Unavailable(e.to_string()))
    }

    /// Adds a node (as a learner, then, once caught up, a voter) or removes a voter.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<MembershipChanged, LeaderError> {
        let voters = || -> BTreeSet<NodeId> {
            self.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
        };
        let reply = match change {
            MembershipChange::Add { node_id, node } => {
                self.raft.add_learner(node_id, node, true).await.map_err(client_write_error)?;
                let mut voters = voters();
                voters.insert(node_id);
                self.raft.change_membership(voters, false).await.map_err(client_write_error)?
            }
            MembershipChange::Remove { node_id } => {
                let mut voters = voters();
                if !voters.remove(&node_id) {
                    return Err(LeaderError::Unavailable(format!("node {node_id} is not a voter")));
                }
                if voters.is_empty() {
                    return Err(LeaderError::Unavailable("cannot remove the last voter".into()));
                }
                self.raft.change_membership(voters, false).await.map_err(client_write_error)?
            }
        };
        let membership = reply.membership.clone().unwrap_or_default();
        Ok(MembershipChanged {
            log_index: reply.log_id.index,
            voters: membership.voter_ids().collect(),
            members: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        })
    }
}

/// One proposal batch with Raft, counted until dropped (answered, or the request given up).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long [`Leader::wait_caught_up`] waits for this node to apply up to its read index.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Commits a batch of proposals as one entry; one answer per proposal, in order.
async fn commit_batch(raft: &Raft, batch: Vec<Proposal>) -> Vec<Result<CommittedWrite, LeaderError>> {
    let count = batch.len();
    metrics::histogram!("corral_raft_commands_per_entry").record(count as f64);
    let started = std::time::Instant::now();
    let written = client_write_while_leading(raft, ProposalBatch::from(batch)).await;
    metrics::histogram!("corral_raft_entry_commit_seconds").record(started.elapsed().as_secs_f64());
    match written {
        Ok(reply) if reply.data.0.len() == count => {
            let log_index = reply.log_id.index;
            reply.data.0.into_iter().map(|response| Ok(CommittedWrite { log_index, response })).collect()
        }
        Ok(reply) => {
            tracing::error!(sent = count, answered = reply.data.0.len(), "an entry applied with a wrong answer count");
            vec![Err(LeaderError::Unavailable("the entry applied with a wrong answer count".into())); count]
        }
        Err(e) => vec![Err(e); count],
    }
}

/// How long a batch may still wait for openraft's answer once the leadership it was proposed
/// in has ended (openraft answers when the entry commits or is truncated; a second covers a
/// new leader committing it).
const ANSWER_AFTER_LEADERSHIP_ENDED: Duration = Duration::from_secs(1);

/// `client_write`, given up on (as `Unavailable`: outcome unknown) when the leadership it was
/// proposed in has ended and no answer came within [`ANSWER_AFTER_LEADERSHIP_ENDED`].
///
/// Why: openraft does not always answer a write whose leader stepped down. The simulation
/// (seed 665 of `corral-sim`, while its gRPC seam was being built) found a node that led, lost
/// leadership with four batches in flight, caught up from the new leader and later led again:
/// the four `client_write` calls never returned, so its proposal queue (four batches in
/// flight) never moved again and every write to it timed out, while reads worked. Giving up is
/// safe: every proposal carries an idempotency key, so a caller's retry applies it at most
/// once and answers what the first attempt did if that one committed.
async fn client_write_while_leading(
    raft: &Raft,
    batch: ProposalBatch,
) -> Result<ClientWriteResponse<TypeConfig>, LeaderError> {
    let mut metrics = raft.metrics();
    let proposed_in = metrics.borrow().vote;
    let write = raft.client_write(batch);
    tokio::pin!(write);
    tokio::select! {
        answer = &mut write => return answer.map_err(client_write_error),
        _ = metrics.wait_for(|m| m.vote != proposed_in) => {}
    }
    match tokio::time::timeout(ANSWER_AFTER_LEADERSHIP_ENDED, write).await {
        Ok(answer) => answer.map_err(client_write_error),
        Err(_) => Err(LeaderError::Unavailable(
            "the leadership ended before this write's entry was answered; its outcome is unknown (a retry with \
             the same idempotency key is safe)"
                .into(),
        )),
    }
}

/// The injected bug `ack-before-commit`: hands the batch to Raft and answers at once with
/// what `apply` gives on a copy of the applied state, as if it had committed.
async fn answer_before_commit(
    raft: &Raft,
    applied: &SharedState,
    batch: Vec<Proposal>,
) -> Vec<Result<CommittedWrite, LeaderError>> {
    let mut state = applied.read().state.clone();
    let answers = batch
        .iter()
        .map(|p| Ok(CommittedWrite { log_index: 0, response: corral_model::apply(&mut state, p) }))
        .collect();
    match raft.client_write_ff(ProposalBatch::from(batch)).await {
        Ok(_committed_later) => answers,
        Err(e) => answers.iter().map(|_| Err(LeaderError::Unavailable(e.to_string()))).collect(),
    }
}

/// One leadership round for the reads waiting on it.
async fn read_index_round(raft: &Raft) -> Result<u64, LeaderError> {
    match raft.get_read_log_id().await {
        Ok((read_log_id, _applied)) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            Err(LeaderError::NotLeader { leader_id: f.leader_id, leader: f.leader_node })
        }
        Err(e) => Err(LeaderError::Unavailable(e.to_string())),
    }
}

/// A failed client write (or membership change) as the caller needs to see it.
fn client_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, CorralNode>>) -> LeaderError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            LeaderError::NotLeader { leader_id: f.leader_id, leader: f.leader_node }
        }
        other => LeaderError::Unavailable(other.to_string()),
    }
}

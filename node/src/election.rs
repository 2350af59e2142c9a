//! Elections with pre-vote, and leader fencing (check-quorum), on top of openraft 0.9.
//!
//! openraft 0.9 campaigns on its own timer: a follower waits its leader lease
//! (`election_timeout_max`) plus a random election timeout, then raises its term whatever its
//! peers think. That is slow (3–4 s with etcd-like timeouts), and with short timeouts a node
//! that was paused, cut off or is behind would raise the term and depose a healthy leader.
//! So openraft's election timer is switched off (`runtime_config().elect(false)`) and this
//! driver decides instead:
//!
//! - **Pre-vote.** A voter that has not heard from a leader for its election timeout (random
//!   in `[election_timeout, 1.5 × election_timeout)`) first asks every voter whether it would
//!   elect it ([`judge_pre_vote`]): a voter says yes only if it has not heard from a leader
//!   for the lease itself (and is not a leader holding its quorum), and the candidate's log is
//!   at least as up to date as its own. Only with a majority of yeses does the node campaign
//!   (`trigger().elect()`). Asking changes nothing on the voters, so a stalled, lagging or
//!   rejoining node never raises the term. Granting a pre-vote restarts a voter's own wait
//!   (the candidate is about to campaign; two campaigns at once would split the vote), and a
//!   voter that refuses a candidate only because its own log is ahead, having been silent
//!   for the lease itself, asks for pre-votes at once ([`outruns_candidate`]): a follower
//!   with a shorter log then no longer costs the rest of the other's election timeout.
//!
//! - **A dead leader, fast.** Silence alone cannot tell a dead leader from a slow one, which
//!   is why the lease is long. A port that refuses connections can: after a few heartbeats of
//!   silence ([`Timing::suspect_after`], plus jitter) a follower tries to connect to its
//!   leader's Raft port, and if that is refused (nothing listens: the process is gone) it asks
//!   for pre-votes naming the dead leader. A voter that finds the port closed too, and has
//!   itself heard nothing for `suspect_after`, grants without waiting out the lease. A paused,
//!   overloaded or cut-off leader's port does not refuse (its kernel accepts, or the packets
//!   vanish), so only a real crash takes this path.
//! - **Fencing.** A leader whose followers' acknowledgements ([`quorum_ack_age`]) are older
//!   than the lease is fenced: it answers writes and reads with `NotLeader` (no leader known:
//!   503 `no_leader`, retryable), fails `/readyz`, stops demoting runners and sends nothing
//!   more to its followers (no heartbeats, no AppendEntries: `RaftLiveness::stop_replication`),
//!   so that behind a one-way cut they stop hearing from it and elect. Each heartbeat it asks
//!   the voters whether they still follow it (`ProbeLeadership`: answered from their Raft
//!   metrics, no contact for their timers): the fence lifts when a majority does (only the
//!   acknowledgements were slow, as under load) or one knows a higher term (a successor exists;
//!   openraft then steps down). A follower that its leader has been probing for
//!   [`Timing::fence_patience`] (five heartbeats; a fence that load caused lifts within two or
//!   three) knows that leader is fenced and sends nothing else, as a deaf leader (one that
//!   sends but hears nothing) does until the cut heals: it asks for pre-votes at once, and a
//!   voter probed that long grants as if the lease had passed.
//! - **A deaf leader, directly.** Behind a one-way cut towards the leader, its messages keep
//!   arriving (and its connections deliver what they had queued for a second or more after it
//!   fences), so silence from it starts late. Each follower therefore asks its leader every
//!   heartbeat, on a call of its own, whether it still leads (`probe_leader`); a follower's
//!   silence, and a voter's in judging a pre-vote, is the older of "the leader's last message"
//!   and "the leader's last answer" ([`RaftLiveness::since_two_way_contact`]). A deaf leader
//!   is then elected away one election timeout after the cut, like a silent one. The answer
//!   rides on no AppendEntries: openraft 0.9 drops those after one heartbeat interval, which
//!   under load made an earlier design (stamps echoed on AppendEntries) elect a live leader away.
//! - **No campaign against a quicker candidate.** A pre-vote round takes a moment; if this node
//!   voted for another candidate or learned of a leader meanwhile, it does not campaign
//!   (doing so would only depose the leader just elected).
//!
//! Timing (see [`Timing::from_config`]): the lease is the election timeout less one heartbeat
//! interval, so a candidate's own silence (at least the election timeout) exceeds the lease
//! the voters check, with a heartbeat of slack for the other followers' last contact.
//! openraft still enforces its own vote lease (`election_timeout_max`) on every voter; it is
//! set short ([`Timing::vote_lease`], 1.5 heartbeats) because the pre-vote is the real guard,
//! and a short one lets a leader that hands off (SIGTERM) have its successor elected a moment
//! after it stops sending.
//!
//! The decisions are pure functions of what the node observed ([`judge_pre_vote`],
//! [`quorum_ack_age`], [`election_timeout`]); [`run`] does the I/O.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
// tokio's clock: the real one in a node, the simulated one in corral-sim.
use tokio::time::Instant;

use corral_net::{
    LeadershipProbe, LogPosition, NetError, PeerClients, PreVoteReply, PreVoteRequest, ProbeReply, RaftLiveness,
};
use corral_raft_types::{NodeId, Raft, TypeConfig};
use openraft::storage::RaftLogStorage;
use openraft::{ServerState, StorageError, Vote};
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::leader::Leader;

/// The election timing, from the node's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often a leader heartbeats.
    pub heartbeat: Duration,
    /// A follower's silence before it asks for pre-votes is drawn from `[min, 1.5 × min)`.
    pub election_timeout: Duration,
    /// A voter grants a pre-vote only after this much silence from a leader; a leader is
    /// fenced when its quorum's acknowledgements are older than this.
    pub lease: Duration,
    /// How long a pre-vote round may take.
    pub pre_vote_timeout: Duration,
    /// Silence after which a follower checks whether its leader's port still listens (drawn
    /// from `[suspect_after, suspect_after + heartbeat)`), and the least silence a voter needs
    /// to grant a pre-vote that names a dead leader.
    pub suspect_after: Duration,
    /// openraft's vote lease (`election_timeout_max`): a voter refuses votes this long after
    /// its last AppendEntries.
    pub vote_lease: Duration,
    /// How long a leader must have been probing its followers (fenced, and its fence not
    /// lifted by their answers) before they elect without waiting out their silence. Under
    /// load, the probes' answers lift a fence within 50–220 ms (measured with 10,000 runners
    /// at 256 connections); a deaf leader's never arrive.
    pub fence_patience: Duration,
    /// How long a campaign may stay undecided before this node asks for pre-votes again
    /// (drawn from `[candidate_retry, candidate_retry + heartbeat)`): the vote lease plus a
    /// heartbeat, so a voter that refused only because the old leader's last message had just
    /// arrived (openraft's vote lease) grants the second time. A campaign that a majority
    /// answered ends well within this (a round trip); one left undecided would otherwise wait
    /// a whole election timeout. A 10-minute chaos run lost 1.3 s that way behind a one-way
    /// cut: a message the deaf leader had queued reached a voter 96 ms before the vote request,
    /// so that voter's 150 ms lease still had 54 ms to run when it was asked.
    pub candidate_retry: Duration,
}

impl Timing {
    /// `election_timeout_ms` must be at least three heartbeats (the config checks it).
    pub fn from_config(heartbeat_ms: u64, election_timeout_ms: u64) -> Timing {
        let heartbeat = Duration::from_millis(heartbeat_ms);
        let election_timeout = Duration::from_millis(election_timeout_ms);
        let quarter = (heartbeat / 4).max(Duration::from_millis(1));
        Timing {
            heartbeat,
            election_timeout,
            lease: election_timeout.saturating_sub(heartbeat),
            pre_vote_timeout: election_timeout / 2,
            suspect_after: heartbeat * 2,
            vote_lease: heartbeat + quarter * 2,
            fence_patience: heartbeat * 5,
            candidate_retry: heartbeat * 2 + quarter * 2,
        }
    }

    /// openraft's `(election_timeout_min, election_timeout_max)` in ms: its timer is off, so
    /// only the maximum matters (the vote lease); openraft wants `heartbeat < min < max`.
    pub fn openraft_election_timeouts_ms(&self) -> (u64, u64) {
        let max = self.vote_lease.as_millis() as u64;
        let heartbeat = self.heartbeat.as_millis() as u64;
        (heartbeat + (max - heartbeat) / 2, max)
    }
}

/// What a voter knows when it judges a pre-vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterView {
    /// This voter leads and its quorum acknowledged it within the lease (not fenced, not
    /// draining).
    pub leads_with_quorum: bool,
    /// Silence from any leader, as this voter saw it: the older of its leader's last message
    /// and its leader's last answer to this voter's probes (a leader hears from none: its
    /// silence counts from before it won, so only `leads_with_quorum` keeps it refusing).
    pub since_leader_contact: Duration,
    /// Where this voter's log ends, as openraft orders logs.
    pub last_log: Option<LogPosition>,
    /// The request named a dead leader and this voter found that leader's port closed too.
    pub confirms_leader_down: bool,
    /// How long this voter's leader has been fenced, as its probes tell (zero if it is not).
    pub leader_fenced_for: Duration,
}

/// Whether a voter would elect `request.candidate` now: `Ok`, or why not.
pub fn judge_pre_vote(view: &VoterView, request: &PreVoteRequest, timing: &Timing) -> Result<(), String> {
    if view.leads_with_quorum {
        return Err("this voter leads with a quorum".into());
    }
    // A leader both found dead needs only a few heartbeats of silence; any other, the lease.
    let enough_silence = if view.confirms_leader_down { timing.suspect_after } else { timing.lease };
    let leader_fenced = view.leader_fenced_for >= timing.fence_patience;
    if view.since_leader_contact < enough_silence && !leader_fenced {
        return Err(format!("in touch with a leader {} ms ago", view.since_leader_contact.as_millis()));
    }
    // Ordered as openraft orders logs when it votes (with the leader of the last entry): a
    // candidate that wins pre-votes must then be able to win the vote, or the voters that
    // granted refuse the others (seed 51 of `corral-sim` with the read-index bug injected, while
    // its gRPC seam was being built: a longer log of leader (5, 2) against (5, 3), and no leader for 14 s).
    if request.last_log_position() < view.last_log {
        return Err(format!(
            "the candidate's log {:?} is behind this voter's {:?}",
            request.last_log_position(),
            view.last_log
        ));
    }
    Ok(())
}

/// How old the leader's quorum acknowledgement is: the newest time by which a majority of
/// `voters` (the leader counting itself, always fresh) had acknowledged it. `acks` holds the
/// other voters' last acknowledgements in this term; a voter that has not acknowledged yet
/// counts from `leader_since` (the leader's grace period after winning).
pub fn quorum_ack_age(now: Instant, leader_since: Instant, acks: &[Option<Instant>], voters: usize) -> Duration {
    let needed_from_others = (voters / 2 + 1).saturating_sub(1);
    if needed_from_others == 0 {
        return Duration::ZERO;
    }
    let mut times: Vec<Instant> = acks.iter().map(|a| a.unwrap_or(leader_since).max(leader_since)).collect();
    times.sort_unstable_by(|a, b| b.cmp(a));
    match times.get(needed_from_others - 1) {
        Some(t) => now.saturating_duration_since(*t),
        None => now.saturating_duration_since(leader_since),
    }
}

/// A fresh random election timeout in `[timing.election_timeout, 1.5 × election_timeout)`.
///
/// Raft's usual range is `[T, 2T)`; half of that spread is enough here because a granted
/// pre-vote restarts the voter's wait (two followers rarely campaign at once), and the
/// upper end is what a leader that is paused or cut off costs (a 5-minute chaos run, seed 7,
/// with `[T, 2T)` put the p99 of such outages at 2.7 s).
pub fn election_timeout(timing: &Timing, rng: &mut impl Rng) -> Duration {
    let min = timing.election_timeout.as_millis() as u64;
    Duration::from_millis(rng.gen_range(min..(min + min / 2).max(min + 1)))
}

/// Whether a voter that refuses `request` should ask for pre-votes itself at once: it
/// refuses only because the candidate's log is behind its own, and it has heard from no
/// leader for the lease either, so the cluster wants a leader and this voter is one that a
/// majority can elect.
pub fn outruns_candidate(view: &VoterView, request: &PreVoteRequest, timing: &Timing) -> bool {
    let leaderless = view.since_leader_contact >= timing.lease || view.leader_fenced_for >= timing.fence_patience;
    !view.leads_with_quorum && leaderless && request.last_log_position() < view.last_log
}

/// Reads this node's last log entry, (term, index), from its log store.
pub type LastLogReader = std::sync::Arc<dyn Fn() -> BoxFuture<'static, Option<LogPosition>> + Send + Sync>;

/// A log id as a [`LogPosition`].
pub fn log_position(log_id: &openraft::LogId<NodeId>) -> LogPosition {
    (log_id.leader_id.term, log_id.leader_id.node_id, log_id.index)
}

/// How the driver reaches the other voters: gRPC in a node ([`PeerClients`]), the simulated
/// network in corral-sim.
pub trait ElectionLink: Send + Sync + 'static {
    /// Asks voter `to` (at `addr`) whether it would elect the candidate now.
    fn pre_vote<'a>(
        &'a self,
        to: NodeId,
        addr: &'a str,
        request: &'a PreVoteRequest,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<PreVoteReply, NetError>>;
    /// Asks voter `to` whether it still follows this leader.
    fn probe_leadership<'a>(
        &'a self,
        to: NodeId,
        addr: &'a str,
        probe: &'a LeadershipProbe,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ProbeReply, NetError>>;
    /// Whether node `to`'s Raft port refuses connections (its process is gone).
    fn refuses_connections<'a>(&'a self, to: NodeId, addr: &'a str, timeout: Duration) -> BoxFuture<'a, bool>;
}

impl ElectionLink for PeerClients {
    fn pre_vote<'a>(
        &'a self,
        _to: NodeId,
        addr: &'a str,
        request: &'a PreVoteRequest,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<PreVoteReply, NetError>> {
        Box::pin(PeerClients::pre_vote(self, addr, request, timeout))
    }

    fn probe_leadership<'a>(
        &'a self,
        _to: NodeId,
        addr: &'a str,
        probe: &'a LeadershipProbe,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ProbeReply, NetError>> {
        Box::pin(PeerClients::probe_leadership(self, addr, probe, timeout))
    }

    fn refuses_connections<'a>(&'a self, _to: NodeId, addr: &'a str, timeout: Duration) -> BoxFuture<'a, bool> {
        Box::pin(PeerClients::refuses_connections(self, addr, timeout))
    }
}

/// The vote a node restarts with, given the one it stored: a vote that had made it leader
/// (committed, for itself) becomes a vote in the next term for no one (node id 0, the lowest:
/// every candidate's vote in that term orders above it); any other stays.
///
/// Why: openraft restores a node whose stored vote made it leader as leader of that same
/// term at once. A leader sends entries before its own copy is synced, so after a power loss
/// it can come back without entries its followers hold, and it would then write different
/// entries at the same indexes in the same term (breaking Raft's log matching), and serve
/// reads from a commit index it lost (the stale read `corral-sim` found: seed 902, while its
/// gRPC seam was being built). Now it is a follower that must win an election, whose first entry
/// commits before it serves reads. Why not its own vote a term later: openraft 0.9 orders
/// votes by (term, node), so that vote would outrank a leader the others elected meanwhile in
/// that term (when this node's id is higher), and its refusals would depose that leader.
/// Should a node 0 exist, this is a vote granted to it that it never asked for, which elects
/// no one. The vote still only grows.
pub fn vote_to_restart_with(stored: Option<Vote<NodeId>>, node_id: NodeId) -> Option<Vote<NodeId>> {
    let stored = stored?;
    let led = stored.is_committed() && stored.leader_id().voted_for() == Some(node_id);
    led.then(|| Vote::new(stored.leader_id().term + 1, 0))
}

/// Before openraft starts on `store`: replaces a stored vote that had made this node leader
/// ([`vote_to_restart_with`]). Returns the vote written, if any.
pub async fn never_resume_leadership<S: RaftLogStorage<TypeConfig>>(
    store: &mut S,
    node_id: NodeId,
) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
    let Some(vote) = vote_to_restart_with(store.read_vote().await?, node_id) else { return Ok(None) };
    store.save_vote(&vote).await?;
    tracing::info!(%vote, "restarted after leading: a follower of the next term instead of resuming leadership");
    Ok(Some(vote))
}

/// What the driver needs besides Raft.
pub struct Driver {
    pub node_id: NodeId,
    pub raft: Raft,
    pub leader: Leader,
    pub liveness: RaftLiveness,
    pub link: Arc<dyn ElectionLink>,
    pub timing: Timing,
    pub last_log: LastLogReader,
    /// Seed of the timers' jitter (`None`: from the OS); the simulation sets it.
    pub seed: Option<u64>,
}

/// What a voter consults to answer a pre-vote (the node's gRPC handler and the simulation
/// both answer through [`answer_pre_vote`]).
pub struct Voter<'a> {
    pub node_id: NodeId,
    pub raft: &'a Raft,
    pub leader: &'a Leader,
    pub liveness: &'a RaftLiveness,
    pub last_log: &'a LastLogReader,
    pub timing: &'a Timing,
    pub link: &'a dyn ElectionLink,
    /// The node is shutting down (it refuses to keep leading).
    pub draining: bool,
}

/// A voter's answer to a pre-vote: gathers its view, then [`judge_pre_vote`].
pub async fn answer_pre_vote(voter: &Voter<'_>, request: &PreVoteRequest) -> PreVoteReply {
    let (leads, own_leader) = {
        let m = voter.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader, m.current_leader)
    };
    let view = VoterView {
        leads_with_quorum: leads && !voter.leader.is_fenced() && !voter.draining,
        since_leader_contact: voter.liveness.since_two_way_contact(Instant::now()),
        last_log: (voter.last_log)().await,
        leader_fenced_for: voter.liveness.leader_fenced_for(Instant::now()),
        confirms_leader_down: match request.leader_down {
            // Only this voter's own leader (or none, after a failed election) may be declared
            // dead here: a voter that follows a live leader refuses.
            Some(down) if down != voter.node_id && !leads && own_leader.is_none_or(|l| l == down) => {
                leader_refuses_connections(voter.link, voter.raft, down, voter.timing.heartbeat / 2).await
            }
            _ => false,
        },
    };
    match judge_pre_vote(&view, request, voter.timing) {
        Ok(()) => {
            voter.liveness.record_pre_vote_granted(Instant::now());
            PreVoteReply { granted: true, reason: String::new() }
        }
        Err(reason) => {
            if outruns_candidate(&view, request, voter.timing) {
                voter.liveness.request_campaign();
            }
            PreVoteReply { granted: false, reason }
        }
    }
}

/// Runs elections and fencing on this node until `stop`. Switches openraft's own election
/// timer off first.
pub async fn run(driver: Driver, stop: watch::Receiver<bool>) {
    driver.raft.runtime_config().elect(false);
    tokio::join!(elect(&driver, stop.clone()), probe_leader(&driver, stop));
}

/// Probes in flight to the leader at most: one per heartbeat, each waiting up to an election
/// timeout, so ten while the leader is deaf.
const MAX_LEADER_PROBES_IN_FLIGHT: usize = 16;

/// A follower's "do you hear me" probes: each heartbeat it asks its leader whether it still
/// leads the term ([`LeadershipProbe`] naming the leader itself; answered from the leader's
/// Raft metrics, on its own gRPC call and deadline, not riding on AppendEntries, whose answers
/// openraft 0.9 drops after one heartbeat interval). An answer records when the probe was
/// sent ([`RaftLiveness::leader_answered`]), and a follower's silence is then the older of
/// "heard from the leader" and "the leader heard me" ([`RaftLiveness::since_two_way_contact`]).
async fn probe_leader(driver: &Driver, mut stop: watch::Receiver<bool>) {
    use futures::StreamExt;
    let timing = driver.timing;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut every = tokio::time::interval(timing.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            Some((term, sent, reply)) = in_flight.next(), if !in_flight.is_empty() => {
                let outcome = match reply {
                    Ok(ProbeReply::Follows) => {
                        driver.liveness.leader_answered(term, sent);
                        metrics::histogram!("corral_raft_leader_probe_seconds")
                            .record(Instant::now().saturating_duration_since(sent).as_secs_f64());
                        "answered"
                    }
                    Ok(ProbeReply::HigherTerm(_)) => "higher_term",
                    Ok(ProbeReply::Other) => "not_leader",
                    Err(_) => "unanswered",
                };
                metrics::counter!("corral_raft_leader_probes_total", "outcome" => outcome).increment(1);
                continue;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        if in_flight.len() >= MAX_LEADER_PROBES_IN_FLIGHT {
            continue;
        }
        let target = {
            let m = driver.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let voter = membership.voter_ids().any(|v| v == driver.node_id);
            match m.current_leader {
                Some(leader) if voter && m.state == ServerState::Follower && leader != driver.node_id => {
                    membership.get_node(&leader).map(|n| (m.current_term, leader, n.raft_addr.clone()))
                }
                _ => None,
            }
        };
        let Some((term, leader, addr)) = target else { continue };
        in_flight.push(async move {
            let probe = LeadershipProbe { term, leader };
            let sent = Instant::now();
            let reply = driver.link.probe_leadership(leader, &addr, &probe, timing.election_timeout).await;
            (term, sent, reply)
        });
    }
}

/// The election and fencing loop of [`run`].
async fn elect(driver: &Driver, mut stop: watch::Receiver<bool>) {
    let timing = driver.timing;
    let tick = (timing.heartbeat / 2).max(Duration::from_millis(5));
    let mut rng = driver.seed.map_or_else(rand::rngs::StdRng::from_entropy, rand::rngs::StdRng::seed_from_u64);
    let mut timeout = election_timeout(&timing, &mut rng);
    let mut suspect_after = suspicion_delay(&timing, &mut rng);
    let mut fence_wait = fence_wait(&timing, &mut rng);
    let mut candidate_retry = candidate_retry(&timing, &mut rng);
    let mut last_attempt = Instant::now();
    let mut last_probe = Instant::now();
    let mut leading_since: Option<(u64, Instant)> = None;
    // Whether this driver fenced the leader (a hand-off fences it too, and is not undone here).
    let mut fenced_here = false;
    let mut last_leader: Option<NodeId> = None;
    // This node's vote and when it last changed: granting a vote restarts the wait, as in
    // Raft, so that a voter does not campaign against the candidate it just elected before
    // that leader's first heartbeat arrives.
    let mut last_vote = None;
    let mut vote_changed_at = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        let (state, term, voters, current_leader, vote) = {
            let m = driver.raft.metrics();
            let m = m.borrow();
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            (m.state, m.current_term, voters, m.current_leader, m.vote)
        };
        if last_vote != Some(vote) {
            last_vote = Some(vote);
            vote_changed_at = now;
        }
        if state == ServerState::Leader {
            // Acknowledgements count from winning, or from the last time the fence lifted.
            let since = match leading_since {
                Some((t, since)) if t == term => since,
                _ => {
                    leading_since = Some((term, now));
                    now
                }
            };
            last_attempt = now;
            if driver.leader.is_handing_off() {
                // The hand-off owns replication and admission until the node stops.
                continue;
            }
            if fenced_here {
                // Fenced: nothing is sent, so no acknowledgement comes. Probe the voters each
                // heartbeat (a probe is no contact for their election timers): a majority that
                // still follows means only the acknowledgements were slow (load): lift the
                // fence. A higher term means a successor exists: send again, so that openraft
                // learns of it and steps down, but go on refusing writes until it has.
                if now.saturating_duration_since(last_probe) >= timing.heartbeat {
                    last_probe = now;
                    let outcome = probe_round(driver, term, &voters).await;
                    metrics::counter!("corral_raft_fence_probes_total", "outcome" => outcome.label()).increment(1);
                    match outcome {
                        FenceProbe::StillLeads => {
                            fenced_here = false;
                            leading_since = Some((term, Instant::now()));
                            set_fence(driver, false, Duration::ZERO, &timing);
                        }
                        FenceProbe::HigherTerm => {
                            driver.raft.runtime_config().heartbeat(true);
                            driver.liveness.stop_replication(false);
                        }
                        FenceProbe::NoQuorum => {}
                    }
                }
                continue;
            }
            let others: Vec<NodeId> = voters.iter().copied().filter(|v| *v != driver.node_id).collect();
            let acks = driver.liveness.acks_in_term(term, others.iter().copied());
            let age = quorum_ack_age(now, since, &acks, voters.len());
            metrics::histogram!("corral_raft_quorum_ack_age_seconds").record(age.as_secs_f64());
            if age > timing.lease {
                fenced_here = true;
                set_fence(driver, true, age, &timing);
            }
            continue;
        }
        leading_since = None;
        if fenced_here {
            fenced_here = false;
            set_fence(driver, false, Duration::ZERO, &timing);
        }
        if let Some(leader) = current_leader.filter(|l| *l != driver.node_id) {
            last_leader = Some(leader);
        }
        if !voters.contains(&driver.node_id) {
            continue;
        }
        // Silence (both ways) from any leader, a vote this node cast, or a pre-vote it granted.
        let since_vote_or_grant = now
            .saturating_duration_since(vote_changed_at)
            .min(driver.liveness.since_pre_vote_granted(now).unwrap_or(Duration::MAX));
        let leader_silence = driver.liveness.since_two_way_contact(now).min(since_vote_or_grant);
        let silence = leader_silence.min(now.saturating_duration_since(last_attempt));
        // Only what arrives from the leader: a dead leader's port is worth checking when it
        // has gone quiet, not when only its answers are late.
        let heard_silence = driver
            .liveness
            .since_leader_contact(now)
            .min(since_vote_or_grant)
            .min(now.saturating_duration_since(last_attempt));
        // A candidate whose log is behind this node's asked it for a pre-vote: campaign now.
        let retry_allowed = now.saturating_duration_since(last_attempt) >= timing.heartbeat;
        let leader_fenced_for = driver.liveness.leader_fenced_for(now);
        let outrun = driver.liveness.take_campaign_request()
            && (leader_silence >= timing.lease || leader_fenced_for >= timing.fence_patience)
            && retry_allowed;
        // Its leader has been fenced (probing, sending nothing else) for a while: a deaf
        // leader, which the others would otherwise wait out their whole silence for.
        // Not right after granting another candidate's pre-vote: that one is about to campaign.
        let no_fresh_grant = driver.liveness.since_pre_vote_granted(now).is_none_or(|d| d >= timing.heartbeat * 2);
        let leader_fenced = leader_fenced_for >= fence_wait
            && now.saturating_duration_since(vote_changed_at) >= fence_wait
            && no_fresh_grant
            && retry_allowed;
        // This node campaigned and no majority has decided it yet (refused or unanswered): ask
        // again after the vote lease rather than a whole election timeout.
        let campaign_stalled = state == ServerState::Candidate
            && now.saturating_duration_since(last_attempt) >= candidate_retry
            && no_fresh_grant;
        let mut leader_down = None;
        if heard_silence >= suspect_after && now.saturating_duration_since(last_probe) >= timing.heartbeat {
            if let Some(leader) = last_leader.filter(|l| voters.contains(l)) {
                last_probe = now;
                if leader_refuses_connections(driver.link.as_ref(), &driver.raft, leader, timing.heartbeat).await {
                    leader_down = Some(leader);
                }
            }
        }
        if silence < timeout && leader_down.is_none() && !outrun && !leader_fenced && !campaign_stalled {
            continue;
        }
        last_attempt = now;
        timeout = election_timeout(&timing, &mut rng);
        suspect_after = suspicion_delay(&timing, &mut rng);
        fence_wait = self::fence_wait(&timing, &mut rng);
        candidate_retry = self::candidate_retry(&timing, &mut rng);
        if pre_vote_round(driver, &voters, leader_down).await {
            let reason = match (leader_down, outrun, leader_fenced) {
                (Some(_), _, _) => "leader_down",
                (None, true, _) => "candidate_behind",
                (None, false, true) => "leader_fenced",
                (None, false, false) if campaign_stalled => "campaign_stalled",
                // The leader's messages still arrive, but it has not answered this node.
                (None, false, false) if heard_silence < timeout => "leader_deaf",
                (None, false, false) => "silence",
            };
            // The round took a while: if this node voted meanwhile (another candidate was
            // quicker) or a leader appeared, campaigning would only depose it.
            let (vote_now, leader_now) = {
                let m = driver.raft.metrics();
                let m = m.borrow();
                (m.vote, m.current_leader)
            };
            if vote_now != vote || leader_now.is_some_and(|l| Some(l) != current_leader) {
                tracing::info!(
                    term,
                    ?leader_now,
                    "pre-vote won, but this node voted or found a leader meanwhile; not campaigning"
                );
                continue;
            }
            tracing::info!(
                term,
                silence_ms = silence.as_millis() as u64,
                ?leader_down,
                reason,
                "pre-vote won; campaigning"
            );
            metrics::counter!("corral_raft_campaigns_total", "reason" => reason).increment(1);
            if let Err(e) = driver.raft.trigger().elect().await {
                tracing::warn!(error = %e, "raft stopped; no more elections");
                return;
            }
        }
    }
}

/// How long a follower lets its leader stay fenced before it asks for pre-votes:
/// `[fence_patience, fence_patience + 2 heartbeats)`, jittered so that the followers of a deaf
/// leader, which all see its probes at once, rarely campaign together.
fn fence_wait(timing: &Timing, rng: &mut impl Rng) -> Duration {
    jittered(timing.fence_patience, timing.heartbeat * 2, rng)
}

/// When an undecided campaign asks again: `[candidate_retry, candidate_retry + heartbeat)`,
/// jittered so that two stalled candidates rarely ask at once.
fn candidate_retry(timing: &Timing, rng: &mut impl Rng) -> Duration {
    jittered(timing.candidate_retry, timing.heartbeat, rng)
}

/// When a silent follower checks its leader's port: `[suspect_after, suspect_after +
/// heartbeat)`, so that two followers that lost the same leader rarely campaign at once.
fn suspicion_delay(timing: &Timing, rng: &mut impl Rng) -> Duration {
    jittered(timing.suspect_after, timing.heartbeat, rng)
}

/// `base` plus a whole number of milliseconds drawn from `[0, spread)` (at least 1 ms wide).
fn jittered(base: Duration, spread: Duration, rng: &mut impl Rng) -> Duration {
    let spread_ms = spread.as_millis().max(1) as u64;
    base + Duration::from_millis(rng.gen_range(0..spread_ms))
}

/// Whether `leader`'s Raft port refuses connections (its process is gone), as far as this
/// node's membership says where it listens.
pub async fn leader_refuses_connections(
    link: &dyn ElectionLink,
    raft: &Raft,
    leader: NodeId,
    timeout: Duration,
) -> bool {
    let addr = raft.metrics().borrow().membership_config.membership().get_node(&leader).map(|n| n.raft_addr.clone());
    match addr {
        Some(addr) => link.refuses_connections(leader, &addr, timeout).await,
        None => false,
    }
}

fn set_fence(driver: &Driver, fenced: bool, age: Duration, timing: &Timing) {
    driver.leader.set_fenced(fenced);
    // A fenced leader sends nothing, heartbeats or entries, so that followers it can still
    // reach stop hearing from it and elect.
    driver.raft.runtime_config().heartbeat(!fenced);
    driver.liveness.stop_replication(fenced);
    metrics::gauge!("corral_raft_fenced").set(if fenced { 1.0 } else { 0.0 });
    if fenced {
        metrics::counter!("corral_raft_fenced_total").increment(1);
        tracing::warn!(
            ack_age_ms = age.as_millis() as u64,
            lease_ms = timing.lease.as_millis() as u64,
            "no quorum acknowledged this leader within the lease: fenced (no writes, not ready, nothing sent)"
        );
    } else {
        tracing::info!("leader fence lifted");
    }
}

/// What a fenced leader's probe round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FenceProbe {
    /// A majority (this node included) still follows it in its term.
    StillLeads,
    /// A voter knows a higher term: a successor was elected.
    HigherTerm,
    /// Neither: stay fenced.
    NoQuorum,
}

impl FenceProbe {
    fn label(self) -> &'static str {
        match self {
            FenceProbe::StillLeads => "still_leads",
            FenceProbe::HigherTerm => "higher_term",
            FenceProbe::NoQuorum => "no_quorum",
        }
    }
}

/// Asks every other voter whether it still follows this leader in `term`.
async fn probe_round(driver: &Driver, term: u64, voters: &BTreeSet<NodeId>) -> FenceProbe {
    let probe = LeadershipProbe { term, leader: driver.node_id };
    let addrs = voter_addrs(driver, voters, None);
    let asks = addrs.iter().map(|(id, addr)| driver.link.probe_leadership(*id, addr, &probe, driver.timing.heartbeat));
    let replies = futures::future::join_all(asks).await;
    if replies.iter().any(|r| matches!(r, Ok(ProbeReply::HigherTerm(_)))) {
        return FenceProbe::HigherTerm;
    }
    let follows = 1 + replies.iter().filter(|r| matches!(r, Ok(ProbeReply::Follows))).count();
    if follows > voters.len() / 2 {
        FenceProbe::StillLeads
    } else {
        FenceProbe::NoQuorum
    }
}

/// The other voters' Raft addresses, `skip` left out.
fn voter_addrs(driver: &Driver, voters: &BTreeSet<NodeId>, skip: Option<NodeId>) -> Vec<(NodeId, String)> {
    let m = driver.raft.metrics();
    let m = m.borrow();
    let membership = m.membership_config.membership();
    voters
        .iter()
        .filter(|id| **id != driver.node_id && Some(**id) != skip)
        .filter_map(|id| membership.get_node(id).map(|n| (*id, n.raft_addr.clone())))
        .collect()
}

/// Asks every other voter; true when a majority (this node included) would elect it. Returns
/// as soon as the answers decide it: a voter that is cut off or paused (often the old leader)
/// would otherwise hold the round for the whole `pre_vote_timeout`.
async fn pre_vote_round(driver: &Driver, voters: &BTreeSet<NodeId>, leader_down: Option<NodeId>) -> bool {
    use futures::StreamExt;
    let last_log = (driver.last_log)().await;
    let request = PreVoteRequest {
        candidate: driver.node_id,
        last_log: last_log.map(|(term, _, index)| (term, index)),
        last_log_leader: last_log.map(|(_, leader, _)| leader),
        leader_down,
    };
    let addrs = voter_addrs(driver, voters, leader_down);
    let mut asks: futures::stream::FuturesUnordered<_> = addrs
        .iter()
        .map(|(id, addr)| {
            let request = &request;
            async move {
                let reply = driver.link.pre_vote(*id, addr, request, driver.timing.pre_vote_timeout).await;
                (*id, reply)
            }
        })
        .collect();
    let majority = voters.len() / 2 + 1;
    let mut granted = 1; // this node: its silence already passed its election timeout
    let mut unanswered = addrs.len();
    // Why each voter said no, for the log line of a lost round (rare: once per attempt).
    let mut refusals: Vec<(NodeId, String)> = Vec::new();
    while let Some((id, reply)) = asks.next().await {
        unanswered -= 1;
        match reply {
            Ok(PreVoteReply { granted: true, .. }) => granted += 1,
            Ok(PreVoteReply { reason, .. }) => refusals.push((id, reason)),
            Err(e) => refusals.push((id, format!("unanswered: {e}"))),
        }
        if granted >= majority || granted + unanswered < majority {
            break;
        }
    }
    let won = granted >= majority;
    if !won {
        tracing::info!(?refusals, last_log = ?request.last_log, "pre-vote lost");
    }
    metrics::counter!("corral_raft_pre_votes_total", "outcome" => if won { "won" } else { "lost" }).increment(1);
    won
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rank_by_the_leadership_that_wrote_them_as_openraft_ranks_them() {
        // Node 2 led term 5 up to index 193; then node 3 led term 5 (openraft's leader ids are
        // (term, node)) and this voter holds its entries up to 191.
        let view = VoterView {
            leads_with_quorum: false,
            since_leader_contact: Duration::from_secs(1),
            last_log: Some((5, 3, 191)),
            confirms_leader_down: false,
            leader_fenced_for: Duration::ZERO,
        };
        let longer_but_older =
            PreVoteRequest { candidate: 2, last_log: Some((5, 193)), last_log_leader: Some(2), leader_down: None };
        assert!(judge_pre_vote(&view, &longer_but_older, &timing()).is_err());
        assert!(outruns_candidate(&view, &longer_but_older, &timing()));
        let same = PreVoteRequest { last_log: Some((5, 191)), last_log_leader: Some(3), ..longer_but_older };
        assert_eq!(judge_pre_vote(&view, &same, &timing()), Ok(()));
    }

    #[test]
    fn a_node_that_led_restarts_with_a_vote_of_the_next_term_below_any_leader_of_it() {
        let mut led = Vote::new(4, 2);
        led.commit();
        let restarted = vote_to_restart_with(Some(led), 2).expect("rewritten");
        assert_eq!(restarted, Vote::new(5, 0));
        assert!(restarted > led, "the vote only grows");
        let mut new_leader = Vote::new(5, 1);
        new_leader.commit();
        assert!(new_leader > restarted, "a leader the others elected in term 5 outranks it");
        // It followed node 3, voted without a leader being elected, or never voted.
        assert_eq!(vote_to_restart_with(Some(led), 3), None);
        assert_eq!(vote_to_restart_with(Some(Vote::new(4, 2)), 2), None);
        assert_eq!(vote_to_restart_with(None, 2), None);
    }

    /// Heartbeat 50 ms, election timeout 250 ms: lease 200 ms, suspicion after 100 ms.
    fn timing() -> Timing {
        Timing::from_config(50, 250)
    }

    /// A candidate whose last entry was written by node 1's leadership.
    fn request(last_log: Option<(u64, u64)>) -> PreVoteRequest {
        PreVoteRequest { candidate: 2, last_log, last_log_leader: last_log.map(|_| 1), leader_down: None }
    }

    #[test]
    fn a_voter_that_heard_from_its_leader_within_the_lease_refuses() {
        let view = VoterView {
            leads_with_quorum: false,
            since_leader_contact: Duration::from_millis(60),
            last_log: Some((3, 1, 10)),
            confirms_leader_down: false,
            leader_fenced_for: Duration::ZERO,
        };
        assert!(judge_pre_vote(&view, &request(Some((3, 10))), &timing()).is_err());
        let silent = VoterView { since_leader_contact: Duration::from_millis(250), ..view };
        assert_eq!(judge_pre_vote(&silent, &request(Some((3, 10))), &timing()), Ok(()));
    }

    #[test]
    fn a_leader_both_found_dead_needs_only_the_suspicion_silence() {
        let view = VoterView {
            leads_with_quorum: false,
            since_leader_contact: Duration::from_millis(120),
            last_log: Some((3, 1, 10)),
            confirms_leader_down: false,
            leader_fenced_for: Duration::ZERO,
        };
        let dead = PreVoteRequest { leader_down: Some(1), ..request(Some((3, 10))) };
        assert!(judge_pre_vote(&view, &dead, &timing()).is_err(), "this voter's probe found the port open");
        let confirmed = VoterView { confirms_leader_down: true, ..view.clone() };
        assert_eq!(judge_pre_vote(&confirmed, &dead, &timing()), Ok(()));
        let recent = VoterView { since_leader_contact: Duration::from_millis(60), ..confirmed.clone() };
        assert!(judge_pre_vote(&recent, &dead, &timing()).is_err(), "heard from a leader (a new one) just now");
        let behind = PreVoteRequest { leader_down: Some(1), ..request(Some((3, 9))) };
        assert!(judge_pre_vote(&confirmed, &behind, &timing()).is_err(), "the log check still holds");
    }

    #[test]
    fn openraft_gets_a_short_vote_lease_within_its_rules() {
        let timing = Timing::from_config(100, 1_000);
        assert_eq!(timing.vote_lease, Duration::from_millis(150));
        assert_eq!(timing.openraft_election_timeouts_ms(), (125, 150));
        let tiny = Timing::from_config(1, 3);
        let (min, max) = tiny.openraft_election_timeouts_ms();
        assert!(1 < min && min < max, "({min}, {max})");
    }

    #[test]
    fn a_stalled_campaign_asks_again_once_the_vote_lease_has_passed() {
        for (heartbeat, election) in [(100, 1_000), (50, 250), (1, 3)] {
            let timing = Timing::from_config(heartbeat, election);
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            for _ in 0..100 {
                let retry = candidate_retry(&timing, &mut rng);
                assert!(retry >= timing.vote_lease + timing.heartbeat, "{retry:?} for {timing:?}");
                assert!(retry < timing.vote_lease + timing.heartbeat * 3, "{retry:?} for {timing:?}");
            }
        }
        let defaults = Timing::from_config(100, 1_000);
        assert!(defaults.candidate_retry + defaults.heartbeat < defaults.election_timeout);
    }

    #[test]
    fn a_leader_holding_its_quorum_refuses_and_a_fenced_one_grants() {
        let leader = VoterView {
            leads_with_quorum: true,
            since_leader_contact: Duration::from_secs(9),
            last_log: Some((3, 1, 10)),
            confirms_leader_down: false,
            leader_fenced_for: Duration::ZERO,
        };
        assert!(judge_pre_vote(&leader, &request(Some((3, 10))), &timing()).is_err());
        let fenced = VoterView { leads_with_quorum: false, ..leader };
        assert_eq!(judge_pre_vote(&fenced, &request(Some((3, 12))), &timing()), Ok(()));
    }

    #[test]
    fn a_candidate_behind_the_voters_log_is_refused_by_term_then_index() {
        let view = VoterView {
            leads_with_quorum: false,
            since_leader_contact: Duration::from_secs(1),
            last_log: Some((4, 1, 7)),
            confirms_leader_down: false,
            leader_fenced_for: Duration::ZERO,
        };
        assert!(judge_pre_vote(&view, &request(Some((4, 6))), &timing()).is_err(), "same term, shorter");
        assert!(judge_pre_vote(&view, &request(Some((3, 90))), &timing()).is_err(), "older term, longer");
        assert!(judge_pre_vote(&view, &request(None), &timing()).is_err(), "empty log");
        assert_eq!(judge_pre_vote(&view, &request(Some((5, 1))), &timing()), Ok(()), "newer term wins");
        assert_eq!(judge_pre_vote(&view, &request(Some((4, 7))), &timing()), Ok(()), "equal");
    }

    #[test]
    fn the_quorum_ack_age_is_the_majoritys_oldest_fresh_ack() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let now = t0 + ms(1_000);
        // 3 voters: the leader plus the fresher of two followers.
        assert_eq!(quorum_ack_age(now, t0, &[Some(t0 + ms(900)), Some(t0 + ms(100))], 3), ms(100));
        // 5 voters: the leader plus the two freshest of four.
        let acks = [Some(t0 + ms(950)), None, Some(t0 + ms(500)), Some(t0 + ms(990))];
        assert_eq!(quorum_ack_age(now, t0, &acks, 5), ms(50));
        // No acknowledgement yet: the age counts from winning (the grace period).
        assert_eq!(quorum_ack_age(now, t0 + ms(800), &[None, None], 3), ms(200));
        // An acknowledgement from before this leadership does not count.
        assert_eq!(quorum_ack_age(now, t0 + ms(800), &[Some(t0), None], 3), ms(200));
        // A single voter is its own quorum.
        assert_eq!(quorum_ack_age(now, t0, &[], 1), Duration::ZERO);
    }

    #[test]
    fn timeouts_fall_in_one_to_one_and_a_half_election_timeouts_and_the_lease_leaves_a_heartbeat_of_slack() {
        let timing = Timing::from_config(50, 300);
        assert_eq!(timing.lease, Duration::from_millis(250));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut lowest, mut highest) = (Duration::MAX, Duration::ZERO);
        for _ in 0..1_000 {
            let t = election_timeout(&timing, &mut rng);
            assert!(t >= Duration::from_millis(300) && t < Duration::from_millis(450), "{t:?}");
            assert!(t > timing.lease);
            (lowest, highest) = (lowest.min(t), highest.max(t));
        }
        assert!(highest - lowest > Duration::from_millis(100), "spread: {lowest:?}..{highest:?}");
    }

    #[test]
    fn a_leader_fenced_for_the_patience_counts_as_silent() {
        let view = VoterView {
            leads_with_quorum: false,
            since_leader_contact: Duration::from_millis(60),
            last_log: Some((3, 1, 10)),
            confirms_leader_down: false,
            leader_fenced_for: Duration::from_millis(100),
        };
        let timing = timing();
        assert_eq!(timing.fence_patience, Duration::from_millis(250));
        assert!(judge_pre_vote(&view, &request(Some((3, 10))), &timing).is_err(), "a fence under load lifts sooner");
        let deaf = VoterView { leader_fenced_for: Duration::from_millis(250), ..view };
        assert_eq!(judge_pre_vote(&deaf, &request(Some((3, 10))), &timing), Ok(()));
        assert!(judge_pre_vote(&deaf, &request(Some((3, 9))), &timing).is_err(), "the log check still holds");
        assert!(outruns_candidate(&deaf, &request(Some((3, 9))), &timing));
    }

    #[test]
    fn a_voter_ahead_of_the_candidate_campaigns_itself_only_when_silent_for_the_lease() {
        let view = VoterView {
            leads_with_quorum: false,
            since_leader_contact: Duration::from_millis(300),
            last_log: Some((4, 1, 7)),
            confirms_leader_down: false,
            leader_fenced_for: Duration::ZERO,
        };
        let behind = request(Some((4, 6)));
        assert!(judge_pre_vote(&view, &behind, &timing()).is_err());
        assert!(outruns_candidate(&view, &behind, &timing()));
        assert!(!outruns_candidate(&view, &request(Some((4, 7))), &timing()), "not behind: it grants instead");
        let recent = VoterView { since_leader_contact: Duration::from_millis(100), ..view.clone() };
        assert!(!outruns_candidate(&recent, &behind, &timing()), "its leader may be alive");
        let leading = VoterView { leads_with_quorum: true, ..view };
        assert!(!outruns_candidate(&leading, &behind, &timing()));
    }
}

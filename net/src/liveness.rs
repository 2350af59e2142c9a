//! [`RaftLiveness`]: when this node last heard from a leader, and when each follower last
//! acknowledged this node as leader. Recorded by the transport, on both sides of AppendEntries
//! (heartbeats included); read by the node's election driver for pre-vote and leader fencing
//! (check-quorum). openraft 0.9 exposes neither reliably: its `millis_since_quorum_ack` is only
//! as fresh as the last metrics report, which stops when nothing changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_raft_types::{NodeId, Raft};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{AppendEntriesResponse, InstallSnapshotResponse};
use openraft::Vote;
// tokio's clock: the real one in a node, the simulated one in corral-sim.
use tokio::time::Instant;

use crate::{LeadershipProbe, ProbeReply};

#[derive(Debug)]
struct Record {
    /// The last AppendEntries this node accepted from a leader (term, when).
    leader_contact: Option<(u64, Instant)>,
    /// Per follower: the last AppendEntries reply that accepted this node's leadership
    /// (this node's term then, when).
    acks: HashMap<NodeId, (u64, Instant)>,
    /// When this node last granted a pre-vote: a candidate it would elect is about to
    /// campaign, so its own election wait restarts, as granting a vote restarts it in Raft
    /// (two followers that lost the same leader then rarely campaign at once and split the
    /// vote).
    pre_vote_granted: Option<Instant>,
    /// Since when this node's leader has been probing it (term, first probe): that leader is
    /// fenced and sends nothing else. Cleared by the next AppendEntries from a leader.
    leader_fenced_since: Option<(u64, Instant)>,
    /// The leader of this term answered this node's "do you hear me" probe sent at this time
    /// (term, sent). Starts at the first contact in a term, so a new leader has a probe
    /// interval's grace.
    leader_answered: Option<(u64, Instant)>,
}

/// Shared, cheap to clone.
#[derive(Debug, Clone)]
pub struct RaftLiveness {
    record: Arc<Mutex<Record>>,
    started: Instant,
    /// Set on a fenced or handing-off leader: it sends no AppendEntries (nor snapshots), so
    /// its followers stop hearing from it and can elect. openraft would otherwise keep
    /// retrying the entries it has not had acknowledged, and every retry that arrives
    /// counts as contact from a live leader.
    replication_stopped: Arc<AtomicBool>,
    /// Set when this node refused a pre-vote because the candidate's log was behind its own,
    /// while it had itself been silent for the lease: the cluster wants a leader and this
    /// node is one that can win, so its election driver asks for pre-votes at once instead
    /// of waiting out the rest of its own election timeout.
    campaign_now: Arc<AtomicBool>,
}

impl Default for RaftLiveness {
    fn default() -> Self {
        RaftLiveness {
            record: Arc::new(Mutex::new(Record {
                leader_contact: None,
                acks: HashMap::new(),
                pre_vote_granted: None,
                leader_fenced_since: None,
                leader_answered: None,
            })),
            started: Instant::now(),
            replication_stopped: Arc::default(),
            campaign_now: Arc::default(),
        }
    }
}

impl RaftLiveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An AppendEntries from the leader of `term` was accepted (or only conflicted on the log):
    /// that leader is alive and this node follows it. Feeds the arrival-gap histogram.
    pub fn heard_from_leader(&self, term: u64, now: Instant) {
        let mut record = self.lock();
        if let Some((last_term, last)) = record.leader_contact {
            if last_term == term {
                metrics::histogram!("corral_raft_append_entries_gap_seconds")
                    .record(now.saturating_duration_since(last).as_secs_f64());
            }
        }
        record.leader_contact = Some((term, now));
        record.leader_fenced_since = None;
        if record.leader_answered.is_none_or(|(t, _)| t != term) {
            record.leader_answered = Some((term, now));
        }
    }

    /// The leader of `term` answered this node's probe sent at `sent`: it hears this node.
    pub fn leader_answered(&self, term: u64, sent: Instant) {
        let mut record = self.lock();
        match record.leader_answered {
            // An answer from an older term, or to an older probe, tells nothing new.
            Some((t, at)) if t > term || (t == term && at >= sent) => {}
            _ => record.leader_answered = Some((term, sent)),
        }
    }

    /// How long since this node and its leader last reached each other both ways: the older of
    /// the leader's last AppendEntries here and the last probe of this node's that the leader
    /// answered (since the process started if never). A deaf leader (one-way cut towards it)
    /// goes on sending, and even after it stops, its connections deliver what they had queued
    /// for a second or more; its silence towards this node's probes starts at the cut.
    pub fn since_two_way_contact(&self, now: Instant) -> Duration {
        let record = self.lock();
        let contact = match record.leader_contact {
            None => self.started,
            Some((term, at)) => match record.leader_answered {
                Some((t, answered)) if t == term => at.min(answered),
                _ => at,
            },
        };
        now.saturating_duration_since(contact)
    }

    /// How long since this node last heard from a leader; since the process started if never.
    pub fn since_leader_contact(&self, now: Instant) -> Duration {
        let contact = self.lock().leader_contact.map_or(self.started, |(_, at)| at);
        now.saturating_duration_since(contact)
    }

    /// How long this node's leader has been fenced, as its probes tell (zero when it is not).
    pub fn leader_fenced_for(&self, now: Instant) -> Duration {
        self.lock().leader_fenced_since.map_or(Duration::ZERO, |(_, since)| now.saturating_duration_since(since))
    }

    /// This node granted a pre-vote at `now`.
    pub fn record_pre_vote_granted(&self, now: Instant) {
        self.lock().pre_vote_granted = Some(now);
    }

    /// How long since this node last granted a pre-vote (`None`: never).
    pub fn since_pre_vote_granted(&self, now: Instant) -> Option<Duration> {
        self.lock().pre_vote_granted.map(|at| now.saturating_duration_since(at))
    }

    /// Stops (or resumes) this node's outgoing AppendEntries and snapshots, whatever openraft
    /// asks.
    pub fn stop_replication(&self, stopped: bool) {
        self.replication_stopped.store(stopped, Ordering::Relaxed);
    }

    pub fn replication_stopped(&self) -> bool {
        self.replication_stopped.load(Ordering::Relaxed)
    }

    /// Asks this node's election driver to run its pre-vote now (see `campaign_now`).
    pub fn request_campaign(&self) {
        self.campaign_now.store(true, Ordering::Relaxed);
    }

    /// Whether a campaign was requested since the last call (and clears the request).
    pub fn take_campaign_request(&self) -> bool {
        self.campaign_now.swap(false, Ordering::Relaxed)
    }

    /// `follower` accepted this node as leader of `term`.
    pub fn acked_by(&self, follower: NodeId, term: u64, now: Instant) {
        self.lock().acks.insert(follower, (term, now));
    }

    /// The receiving side of an AppendEntries from the leader of `term`: anything but a
    /// higher vote means this node follows it (the transports call this).
    pub fn record_append_received(&self, term: u64, reply: &Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>) {
        if matches!(reply, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.heard_from_leader(term, Instant::now());
        }
    }

    /// The sending side: `follower` answered an AppendEntries of `term` sent at `sent`;
    /// anything but a higher vote is an acknowledgement of this node's leadership.
    pub fn record_append_reply(
        &self,
        follower: NodeId,
        term: u64,
        sent: Instant,
        reply: &AppendEntriesResponse<NodeId>,
    ) {
        if !matches!(reply, AppendEntriesResponse::HigherVote(_)) {
            self.acked_by(follower, term, sent);
        }
    }

    /// The receiving side of a snapshot chunk from the leader whose vote is `leader_vote`: a
    /// follower that accepted it follows that leader, as with an AppendEntries (a follower
    /// catching up by snapshot hears no AppendEntries for seconds).
    pub fn record_snapshot_received(
        &self,
        leader_vote: &Vote<NodeId>,
        reply: &Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ) {
        if matches!(reply, Ok(r) if snapshot_accepted(leader_vote, r)) {
            self.heard_from_leader(leader_vote.leader_id().term, Instant::now());
        }
    }

    /// The sending side: `follower` answered a snapshot chunk sent at `sent`. Accepted, it
    /// acknowledges this node's leadership: a new leader whose only reachable follower is
    /// catching up by snapshot must not fence itself (and so stop the transfer) for want of
    /// AppendEntries answers.
    pub fn record_snapshot_reply(
        &self,
        follower: NodeId,
        leader_vote: &Vote<NodeId>,
        sent: Instant,
        reply: &InstallSnapshotResponse<NodeId>,
    ) {
        if snapshot_accepted(leader_vote, reply) {
            self.acked_by(follower, leader_vote.leader_id().term, sent);
        }
    }

    /// The last acknowledgement from each of `followers` for `term` (`None`: none in that term).
    pub fn acks_in_term(&self, term: u64, followers: impl Iterator<Item = NodeId>) -> Vec<Option<Instant>> {
        let record = self.lock();
        followers.map(|id| record.acks.get(&id).filter(|(t, _)| *t == term).map(|(_, at)| *at)).collect()
    }
}

/// Whether a follower's answer to a snapshot chunk accepts the sender as its leader: it
/// answers with its own vote, which is the sender's unless it knows a higher one.
fn snapshot_accepted(leader_vote: &Vote<NodeId>, reply: &InstallSnapshotResponse<NodeId>) -> bool {
    reply.vote <= *leader_vote
}

/// A voter's answer to a [`LeadershipProbe`], from its Raft metrics alone (it touches no Raft
/// state and counts as no contact).
///
/// - Asked by a fenced leader: a probe from this node's own leader is recorded in `liveness`:
///   that leader is fenced, and once it has been for a while (a deaf leader, whose probes
///   arrive but whose answers do not) the followers elect without waiting out their silence
///   (see the node's election driver).
/// - Asked by a follower about this node itself ("do you lead `term`, and hear me?"): `Follows`
///   if it leads that term. Records nothing.
pub fn answer_probe(raft: &Raft, liveness: &RaftLiveness, probe: &LeadershipProbe) -> ProbeReply {
    let (id, state, term, leader) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.id, m.state, m.current_term, m.current_leader)
    };
    if term > probe.term {
        ProbeReply::HigherTerm(term)
    } else if probe.leader == id {
        if term == probe.term && state == openraft::ServerState::Leader {
            ProbeReply::Follows
        } else {
            ProbeReply::Other
        }
    } else if term == probe.term && leader == Some(probe.leader) {
        let mut record = liveness.lock();
        if record.leader_fenced_since.is_none_or(|(t, _)| t != probe.term) {
            record.leader_fenced_since = Some((probe.term, Instant::now()));
        }
        ProbeReply::Follows
    } else {
        ProbeReply::Other
    }
}

/// Whether nothing listens at `addr` (`host:port`): a connection attempt was refused within
/// `timeout`. A dead process's port refuses at once; a paused, overloaded or cut-off node's
/// does not (its kernel accepts, or the packets vanish and the attempt times out), so `true`
/// is evidence that the node is down, never a guess from slowness.
pub async fn refuses_connections(addr: &str, timeout: Duration) -> bool {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_and_acks_are_kept_per_term() {
        let liveness = RaftLiveness::default();
        let t0 = Instant::now();
        liveness.heard_from_leader(3, t0);
        assert_eq!(liveness.since_leader_contact(t0 + Duration::from_millis(40)), Duration::from_millis(40));
        liveness.acked_by(2, 5, t0);
        liveness.acked_by(3, 4, t0);
        assert_eq!(liveness.acks_in_term(5, [2, 3, 4].into_iter()), vec![Some(t0), None, None]);
    }

    #[test]
    fn two_way_contact_is_the_older_of_heard_and_answered() {
        let liveness = RaftLiveness::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // A new leader's first message starts both clocks.
        liveness.heard_from_leader(3, t0);
        assert_eq!(liveness.since_two_way_contact(t0 + ms(50)), ms(50));
        // It answered the probe sent at t0 + 100 ms; its messages keep arriving.
        liveness.leader_answered(3, t0 + ms(100));
        liveness.heard_from_leader(3, t0 + ms(900));
        assert_eq!(liveness.since_two_way_contact(t0 + ms(1000)), ms(900), "deaf since 100 ms");
        assert_eq!(liveness.since_leader_contact(t0 + ms(1000)), ms(100));
        // An answer to an older probe arriving late moves nothing back.
        liveness.leader_answered(3, t0 + ms(950));
        liveness.leader_answered(3, t0 + ms(120));
        assert_eq!(liveness.since_two_way_contact(t0 + ms(1000)), ms(100), "heard at 900 ms");
        // A leader of a new term starts afresh; an answer from the old term does not count.
        liveness.heard_from_leader(4, t0 + ms(2000));
        liveness.leader_answered(3, t0 + ms(2100));
        assert_eq!(liveness.since_two_way_contact(t0 + ms(2200)), ms(200));
    }

    #[tokio::test]
    async fn a_closed_port_refuses_and_a_listening_one_does_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        assert!(!refuses_connections(&addr, Duration::from_secs(1)).await, "a listener accepts");
        drop(listener);
        assert!(refuses_connections(&addr, Duration::from_secs(1)).await, "nothing listens any more");
    }
}

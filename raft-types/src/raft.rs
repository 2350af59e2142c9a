//! openraft's type configuration for Corral: what a log entry carries ([`ProposalBatch`]: the
//! proposals the leader coalesced into it), what applying it answers ([`ApplyResponse`]: one
//! result per proposal) and how members are addressed ([`CorralNode`]).
//! Types only: the storage crate implements openraft's storage traits over them, the net crate
//! its network, the node runs `Raft`.

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use corral_model::{ApplyResult, Proposal};

pub type NodeId = u64;

/// How long a leader holds a new commit index that no entry is going out to carry before it
/// sends the index to a follower alone (openraft's `commit_notice_delay_us`, a patch in
/// `vendor/openraft`; upstream sends it at once).
///
/// openraft 0.9 keeps one AppendEntries in flight per follower. The scheduler and the
/// proposal coalescer propose their next entry as soon as the last one is applied, which is
/// just after its commit, when upstream has already sent the commit-only AppendEntries: the
/// new entry then waits for that round trip before its own, two round trips per entry. Held
/// this long, the commit index rides with the next entry instead. Only followers see a commit
/// later, by at most this much when no write follows (their apply, so a read they serve,
/// waits as long); the leader's commit and every answer it gives do not.
pub const COMMIT_NOTICE_DELAY_US: u64 = 2_000;

/// [`COMMIT_NOTICE_DELAY_US`], or half the heartbeat interval when that is shorter (openraft
/// refuses a delay that is not below the interval: heartbeats would carry every commit).
pub fn commit_notice_delay_us(heartbeat_ms: u64) -> u64 {
    COMMIT_NOTICE_DELAY_US.min(heartbeat_ms.saturating_mul(1_000) / 2)
}

/// A cluster member's addresses, as stored in Raft membership.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CorralNode {
    /// host:port of the node's gRPC (Raft) listener.
    pub raft_addr: String,
    /// host:port of the node's REST listener.
    pub api_addr: String,
}

impl fmt::Display for CorralNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// What one log entry carries: proposals the leader coalesced, applied in order, each on the
/// state the ones before it left, and each answered on its own (exactly as if each had had an
/// entry of its own). Encoded as a list; an entry written before batching (one proposal, a
/// JSON object) decodes as a batch of one, so old logs replay unchanged.
///
/// The proposals are shared (`Arc`): openraft clones an entry wherever it keeps one (the log
/// store's recent entries, the replication of each follower, the state machine's apply), and
/// a clone costs a reference count, not a copy of a thousand commands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProposalBatch(pub Arc<[Proposal]>);

impl From<Proposal> for ProposalBatch {
    fn from(proposal: Proposal) -> Self {
        ProposalBatch(Arc::from([proposal]))
    }
}

impl From<Vec<Proposal>> for ProposalBatch {
    fn from(proposals: Vec<Proposal>) -> Self {
        ProposalBatch(Arc::from(proposals))
    }
}

impl Serialize for ProposalBatch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.as_ref().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ProposalBatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BatchOrOne;
        impl<'de> serde::de::Visitor<'de> for BatchOrOne {
            type Value = ProposalBatch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of proposals, or one proposal")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<ProposalBatch, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(ProposalBatch::from)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ProposalBatch, A::Error> {
                Proposal::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ProposalBatch::from)
            }
        }
        // Self-describing formats only (the log and the wire are JSON).
        deserializer.deserialize_any(BatchOrOne)
    }
}

/// The state machine's reply to one applied entry: one result per proposal of its
/// [`ProposalBatch`], in order (none for blank and membership entries).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ApplyResponse(pub Vec<ApplyResult>);

openraft::declare_raft_types!(
    /// openraft types for Corral.
    pub TypeConfig:
        D = ProposalBatch,
        R = ApplyResponse,
        NodeId = NodeId,
        Node = CorralNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::CorralRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

#[cfg(test)]
mod tests {
    use super::*;
    use corral_model::Command;

    fn proposal(name: &str) -> Proposal {
        Proposal::new(Command::DeleteRegion { id: name.to_string() }, 7)
    }

    #[test]
    fn a_batch_round_trips_and_an_entry_from_before_batching_reads_as_a_batch_of_one() {
        let batch = ProposalBatch::from(vec![proposal("a"), proposal("b")]);
        let json = serde_json::to_vec(&batch).expect("encode");
        assert_eq!(serde_json::from_slice::<ProposalBatch>(&json).expect("decode"), batch);

        let old = serde_json::to_vec(&proposal("a")).expect("encode");
        assert_eq!(serde_json::from_slice::<ProposalBatch>(&old).expect("decode"), ProposalBatch::from(proposal("a")));
        assert!(serde_json::from_slice::<ProposalBatch>(b"7").is_err());
    }
}

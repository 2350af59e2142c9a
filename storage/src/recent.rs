//! The log's newest entries, kept decoded in memory ([`RecentEntries`]).
//!
//! openraft reads the log back right after writing it: the state machine's apply reads each
//! committed entry, and the leader's replication reads what it sends to each follower. From
//! RocksDB each read is a seek plus a decode of the stored bytes, on openraft's core loop (the
//! apply read took 3.7 % of the nodes' CPU under `loadgen --workload regions`, 2.7 % of it
//! decoding). The log store keeps its newest entries here as well, as openraft handed them
//! over (a clone shares the proposals, see `ProposalBatch`), and answers reads that fall in
//! them from here.
//!
//! Invariant: when not empty, the entries are contiguous and equal to the log's tail: the
//! last one is the log's last entry. The log store keeps it by changing both under one lock
//! (append, truncate, purge); a read that reaches before the oldest kept entry goes to RocksDB.

use std::collections::VecDeque;
use std::ops::RangeBounds;

use corral_raft_types::TypeConfig;
use openraft::{Entry, EntryPayload};

/// Bounds on what is kept: the newest entries up to this many commands' weight
/// (`Command::weight`: a placement of 1,000 sandboxes weighs 1,000)...
pub const RECENT_WEIGHT_MAX: u64 = 16_384;
/// ...and at most this many entries.
pub const RECENT_ENTRIES_MAX: usize = 4_096;

/// The newest entries of the log (see the module doc).
#[derive(Default)]
pub struct RecentEntries {
    entries: VecDeque<(Entry<TypeConfig>, u64)>,
    weight: u64,
}

fn weight_of(entry: &Entry<TypeConfig>) -> u64 {
    match &entry.payload {
        EntryPayload::Normal(batch) => batch.0.iter().map(|p| p.command.weight()).sum::<u64>().max(1),
        EntryPayload::Blank | EntryPayload::Membership(_) => 1,
    }
}

impl RecentEntries {
    /// Records entries just written to the log. An entry that does not follow the newest
    /// kept one replaces it and everything after it (the log overwrote them); one after a gap
    /// starts afresh.
    pub fn appended(&mut self, entry: Entry<TypeConfig>) {
        let index = entry.log_id.index;
        match self.entries.back().map(|(last, _)| last.log_id.index) {
            Some(last) if index <= last => self.truncate_from(index),
            Some(last) if index != last + 1 => self.clear(),
            _ => {}
        }
        let weight = weight_of(&entry);
        self.weight += weight;
        self.entries.push_back((entry, weight));
        while self.entries.len() > 1 && (self.weight > RECENT_WEIGHT_MAX || self.entries.len() > RECENT_ENTRIES_MAX) {
            self.pop_oldest();
        }
    }

    /// Forgets every entry from `index` on (the log truncated them).
    pub fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(last, _)| last.log_id.index >= index) {
            if let Some((_, weight)) = self.entries.pop_back() {
                self.weight -= weight;
            }
        }
    }

    /// Forgets every entry up to and including `index` (the log purged them).
    pub fn purge_through(&mut self, index: u64) {
        while self.entries.front().is_some_and(|(first, _)| first.log_id.index <= index) {
            self.pop_oldest();
        }
    }

    /// Forgets everything (a write this cache cannot follow).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.weight = 0;
    }

    fn pop_oldest(&mut self) {
        if let Some((_, weight)) = self.entries.pop_front() {
            self.weight -= weight;
        }
    }

    /// The entries of `range`, which starts at index `start`, if this holds all of them that
    /// the log holds: `None` when the range starts before the oldest kept entry (or nothing is
    /// kept), so the caller reads the log itself.
    pub fn read<RB: RangeBounds<u64>>(&self, start: u64, range: &RB) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.entries.front()?.0.log_id.index;
        if start < first {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        Some(
            self.entries
                .iter()
                .skip(skip)
                .map(|(entry, _)| entry)
                .take_while(|entry| range.contains(&entry.log_id.index))
                .cloned()
                .collect(),
        )
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_model::{Command, Proposal};
    use corral_raft_types::ProposalBatch;
    use openraft::{CommittedLeaderId, LogId};

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        let proposal = Proposal::new(Command::DeleteRegion { id: format!("r{index}") }, 7);
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(ProposalBatch::from(proposal)),
        }
    }

    fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<(u64, u64)> {
        entries.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect()
    }

    #[test]
    fn reads_inside_the_kept_tail_and_refuses_before_it() {
        let mut recent = RecentEntries::default();
        assert!(recent.read(1, &(1..3)).is_none(), "nothing kept");
        for i in 5..=9 {
            recent.appended(entry(1, i));
        }
        assert_eq!(indexes(&recent.read(6, &(6..8)).expect("kept")), [(1, 6), (1, 7)]);
        assert_eq!(indexes(&recent.read(8, &(8..)).expect("kept")), [(1, 8), (1, 9)]);
        assert_eq!(indexes(&recent.read(7, &(7..=20)).expect("kept")), [(1, 7), (1, 8), (1, 9)]);
        assert!(recent.read(10, &(10..)).expect("past the end").is_empty());
        assert!(recent.read(4, &(4..8)).is_none(), "starts before the oldest kept entry");
    }

    #[test]
    fn an_overwrite_truncate_and_purge_keep_it_equal_to_the_log() {
        let mut recent = RecentEntries::default();
        for i in 1..=6 {
            recent.appended(entry(1, i));
        }
        // A new leader overwrites from index 4.
        recent.appended(entry(2, 4));
        assert_eq!(indexes(&recent.read(1, &(1..)).expect("kept")), [(1, 1), (1, 2), (1, 3), (2, 4)]);
        recent.truncate_from(3);
        assert_eq!(indexes(&recent.read(1, &(1..)).expect("kept")), [(1, 1), (1, 2)]);
        recent.purge_through(1);
        assert!(recent.read(1, &(1..)).is_none());
        assert_eq!(indexes(&recent.read(2, &(2..)).expect("kept")), [(1, 2)]);
        // A gap (an install of a snapshot moved the log on) starts afresh.
        recent.appended(entry(3, 40));
        assert_eq!(recent.len(), 1);
        assert!(recent.read(2, &(2..)).is_none());
    }

    #[test]
    fn the_oldest_go_first_past_the_bounds() {
        let mut recent = RecentEntries::default();
        let total = RECENT_ENTRIES_MAX as u64 + 10;
        for i in 1..=total {
            recent.appended(entry(1, i));
        }
        assert_eq!(recent.len(), RECENT_ENTRIES_MAX);
        assert!(recent.read(10, &(10..)).is_none());
        assert_eq!(recent.read(11, &(11..)).expect("kept").len(), RECENT_ENTRIES_MAX);
    }
}

//! Runner journals: which sandboxes on each runner changed, in the order this replica applied
//! the changes.
//!
//! A runner session keeps its runner in step with the state by sending what changed since it
//! last looked. Diffing the runner's whole set on every poll costs O(sandboxes on the runner)
//! under the state's read lock, every second, for every runner; with the journal a poll costs
//! O(what changed). Each journal holds the latest change of each sandbox once (placed,
//! started, stopped, destroyed), keyed by a position.
//!
//! Positions come from a counter of the journals' own and only grow, also across a snapshot
//! install (the node carries the counter over, see `State::carry_local_from`). A journal
//! answers for every
//! change after its `complete_after` position. A rebuilt journal (a snapshot was installed)
//! starts at a fresh position, and so does one that dropped old destroy entries. A session
//! whose cursor is older than that gets `None` and falls back to the full diff; a cursor can
//! therefore never be mistaken for "nothing changed".
//!
//! Replica-local and derived: not serialized, not hashed, and two journals compare equal
//! whatever they hold (like [`crate::state::LocalEpoch`]), since they say how a replica got
//! to its state, not what the state is. Nothing here reads a clock.

use std::collections::{BTreeMap, BTreeSet};

use crate::state::{IdMap, SharedId};

/// Destroy entries a journal keeps before it drops the oldest ones (and with them the claim to
/// be complete before that point). Sessions poll every second, so this covers far more destroys
/// than one runner sees between two polls.
pub const MAX_DESTROYS_KEPT: usize = 4_096;

/// The journals of every runner of one state.
#[derive(Clone, Debug, Default)]
pub struct RunnerJournals {
    by_runner: IdMap<String, RunnerJournal>,
    /// Journals created from now on are complete after this position (the last rebuild).
    complete_after: u64,
    /// The last position handed out.
    last_position: u64,
}

#[derive(Clone, Debug)]
struct RunnerJournal {
    complete_after: u64,
    /// position → sandbox id: each sandbox's latest change only.
    by_position: BTreeMap<u64, SharedId>,
    position_of: IdMap<SharedId, u64>,
    /// Positions whose latest change is a destroy, oldest first.
    destroys: BTreeSet<u64>,
}

impl PartialEq for RunnerJournals {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for RunnerJournals {}

impl RunnerJournal {
    fn new(complete_after: u64) -> Self {
        RunnerJournal {
            complete_after,
            by_position: BTreeMap::new(),
            position_of: IdMap::default(),
            destroys: BTreeSet::new(),
        }
    }

    fn position(&self) -> u64 {
        self.by_position.last_key_value().map_or(self.complete_after, |(p, _)| *p).max(self.complete_after)
    }

    fn record(&mut self, position: u64, sandbox_id: &SharedId, destroyed: bool) {
        if let Some(old) = self.position_of.insert(sandbox_id.clone(), position) {
            self.by_position.remove(&old);
            self.destroys.remove(&old);
        }
        self.by_position.insert(position, sandbox_id.clone());
        if destroyed {
            self.destroys.insert(position);
            while self.destroys.len() > MAX_DESTROYS_KEPT {
                let Some(oldest) = self.destroys.pop_first() else { break };
                if let Some(id) = self.by_position.remove(&oldest) {
                    self.position_of.remove(&id);
                }
                self.complete_after = self.complete_after.max(oldest);
            }
        }
    }
}

impl RunnerJournals {
    /// Starts over from the runners' current sandboxes (after a snapshot was installed): every
    /// one is recorded afresh, and no cursor taken before is honoured.
    pub fn rebuild<'a>(&mut self, sandboxes: impl IntoIterator<Item = (&'a str, &'a SharedId)>) {
        self.by_runner.clear();
        self.complete_after = self.next_position();
        for (runner_id, sandbox_id) in sandboxes {
            self.record(runner_id, sandbox_id, false);
        }
    }

    /// `sandbox_id` on `runner_id` changed (was placed, started, stopped or, with `destroyed`,
    /// destroyed). The journal keeps a clone of `sandbox_id`, which shares its allocation.
    pub fn record(&mut self, runner_id: &str, sandbox_id: &SharedId, destroyed: bool) {
        let complete_after = self.complete_after;
        let position = self.next_position();
        // Looked up before inserting, as the runner index in `apply` is: no copy of the
        // runner's id per change once its journal exists.
        if !self.by_runner.contains_key(runner_id) {
            self.by_runner.insert(runner_id.to_string(), RunnerJournal::new(complete_after));
        }
        if let Some(journal) = self.by_runner.get_mut(runner_id) {
            journal.record(position, sandbox_id, destroyed);
        }
    }

    fn next_position(&mut self) -> u64 {
        self.last_position += 1;
        self.last_position
    }

    /// The last position these journals handed out.
    pub fn last_position(&self) -> u64 {
        self.last_position
    }

    /// Hands out positions after `position` from now on: journals that replace others (a
    /// snapshot was installed) continue their numbering, so no cursor taken from the old ones
    /// can look current.
    pub fn continue_after(&mut self, position: u64) {
        self.last_position = self.last_position.max(position);
    }

    /// The runner is gone.
    pub fn forget(&mut self, runner_id: &str) {
        self.by_runner.remove(runner_id);
    }

    /// Where `runner_id`'s journal stands: equal to an earlier answer exactly when nothing on
    /// the runner changed in between.
    pub fn position(&self, runner_id: &str) -> u64 {
        self.by_runner.get(runner_id).map_or(self.complete_after, RunnerJournal::position)
    }

    /// The sandboxes on `runner_id` whose latest change came after `cursor` (a
    /// [`RunnerJournals::position`]), or `None` when the journal cannot tell (the cursor is
    /// older than what it holds): diff the whole set then.
    pub fn changed_since(&self, runner_id: &str, cursor: u64) -> Option<Vec<&str>> {
        match self.by_runner.get(runner_id) {
            Some(journal) if cursor >= journal.complete_after => {
                Some(journal.by_position.range(cursor + 1..).map(|(_, id)| &**id).collect())
            }
            Some(_) => None,
            None => (cursor >= self.complete_after).then(Vec::new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records a change as `apply` does, with the id in its shared form.
    fn record(journals: &mut RunnerJournals, runner_id: &str, sandbox_id: &str, destroyed: bool) {
        journals.record(runner_id, &SharedId::from(sandbox_id), destroyed);
    }

    #[test]
    fn changes_after_a_cursor_are_each_sandbox_once() {
        let mut journals = RunnerJournals::default();
        record(&mut journals, "r1", "a", false);
        let cursor = journals.position("r1");
        assert_eq!(journals.changed_since("r1", cursor), Some(vec![]));
        record(&mut journals, "r1", "b", false);
        record(&mut journals, "r2", "x", false);
        record(&mut journals, "r1", "a", false);
        record(&mut journals, "r1", "b", true);
        assert_eq!(journals.changed_since("r1", cursor), Some(vec!["a", "b"]));
        assert_ne!(journals.position("r1"), cursor);
        assert_eq!(journals.changed_since("r2", 0), Some(vec!["x"]));
        assert_eq!(journals.changed_since("r3", 0), Some(vec![]), "no journal, nothing changed");
    }

    #[test]
    fn a_rebuild_or_dropped_destroys_refuse_older_cursors() {
        let mut journals = RunnerJournals::default();
        record(&mut journals, "r1", "a", false);
        let before = journals.position("r1");
        let empty_before = journals.position("r9");
        let (a, b) = (SharedId::from("a"), SharedId::from("b"));
        journals.rebuild([("r1", &a), ("r1", &b)]);
        assert_eq!(journals.changed_since("r1", before), None);
        assert_eq!(journals.changed_since("r9", empty_before), None, "a runner without sandboxes too");
        assert_ne!(journals.position("r9"), empty_before, "a rebuild never looks unchanged");

        let cursor = journals.position("r1");
        for i in 0..=MAX_DESTROYS_KEPT {
            record(&mut journals, "r1", &format!("d{i}"), true);
        }
        assert_eq!(journals.changed_since("r1", cursor), None, "the oldest destroy was dropped");
        let recent = journals.position("r1");
        record(&mut journals, "r1", "c", false);
        assert_eq!(journals.changed_since("r1", recent), Some(vec!["c"]));
    }
}

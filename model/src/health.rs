//! Runner health: soft state, never written to Raft.
//!
//! A runner agent sends a [`HealthReport`] every second to whichever node it is connected to;
//! nodes spread reports to each other (see `corral-net`'s gossip). Every node keeps the latest
//! report per runner in a [`HealthTable`]. A report is versioned by the runner's own sequence
//! number, so the merge is a last-writer-wins register per runner: the order and the number of
//! times a report arrives do not matter, and every node that has seen the same reports holds
//! the same table.
//!
//! The leader's verdict, `ready` ↔ `unresponsive`, is the pure [`health_verdict`] of the state,
//! the table and the time (the node's health monitor calls it and proposes the result); the
//! REST API reads the table to show usage and the availability score. Nothing here reads a
//! clock: `now` and arrival times are arguments.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::state::State;
use crate::types::{Millis, RunnerState};

/// One measurement from a runner, as it travels between agent and nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub runner_id: String,
    /// Strictly increasing per runner, across agent restarts too (the agent's wall clock in
    /// microseconds, bumped when the clock does not move).
    pub seq: u64,
    /// Host usage in percent, 0–100.
    pub cpu_pct: f32,
    pub memory_pct: f32,
    pub disk_pct: f32,
    pub version: String,
    pub snapshot_count: u64,
    pub started_sandboxes: u64,
    /// The agent's wall clock when it measured (ms since the epoch).
    pub measured_at: Millis,
    /// The node the runner reported to, and that node's wall clock on receipt (ms): how far
    /// behind a relayed report is can be measured on any node.
    pub via_node: u64,
    pub received_at: Millis,
}

impl HealthReport {
    /// The highest of the three usages, in percent.
    pub fn max_usage_pct(&self) -> f32 {
        self.cpu_pct.max(self.memory_pct).max(self.disk_pct).clamp(0.0, 100.0)
    }

    /// Whether the numbers are usable (finite, 0–100); reports that are not are dropped.
    pub fn is_well_formed(&self) -> bool {
        [self.cpu_pct, self.memory_pct, self.disk_pct].iter().all(|v| v.is_finite() && (0.0..=100.0).contains(v))
            && !self.runner_id.is_empty()
            && self.runner_id.len() <= 128
            && self.version.len() <= 64
    }
}

/// The latest report of one runner and when this node learned it.
#[derive(Debug, Clone)]
pub struct HealthEntry {
    pub report: HealthReport,
    /// This node's monotonic clock when the report (this `seq`) first arrived here.
    pub seen_at: Instant,
}

/// Latest report per runner.
#[derive(Debug, Default)]
pub struct HealthTable {
    entries: HashMap<String, HealthEntry>,
}

impl HealthTable {
    /// Keeps `report` if it is newer than what the table has for its runner; returns whether
    /// it was kept.
    pub fn merge(&mut self, report: HealthReport, now: Instant) -> bool {
        match self.entries.get_mut(&report.runner_id) {
            Some(entry) if entry.report.seq >= report.seq => false,
            Some(entry) => {
                *entry = HealthEntry { report, seen_at: now };
                true
            }
            None => {
                self.entries.insert(report.runner_id.clone(), HealthEntry { report, seen_at: now });
                true
            }
        }
    }

    pub fn get(&self, runner_id: &str) -> Option<&HealthEntry> {
        self.entries.get(runner_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &HealthEntry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops runners that no longer exist (called with the state's runner ids).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|id, _| keep(id));
    }
}

/// Runners to move to `ready` (they report) and to `unresponsive` (silent for longer than
/// `silence`, counted from no earlier than `watching_since`).
///
/// `reconnects_from` is when the runners of the node this node last saw stop relaying
/// (gossip found it suspect or down) are taken to look for another node: the moment of that
/// loss plus the time an agent waits on a silent node (the caller adds it). A runner whose
/// last report came through such a node lost its session with it, not necessarily its
/// health. Every runner's silence counts from no earlier than `reconnects_from`, not only the
/// lost node's runners: they all reconnect to the surviving nodes at once, and that burst (a
/// thousand sessions per connection, each sent its whole set of assignments again) delays
/// reports of runners that had already moved, or were on a survivor, for seconds. Measured
/// with 10,000 simulated runners and 10 leader kills at a 4 s silence: counting only the lost
/// node's runners from the loss marked 7 runners that had moved to the new leader and
/// reported once, then were late for 4 s while the rest of the fleet moved in.
///
/// `relays_delivered_at` holds, per node that relays now, when its latest gossip batch
/// arrived here (a relay sends one every flush interval, empty when its runners sent nothing).
/// A relay's batches carry what its runners sent before it, so a runner's silence is measured
/// on that relay's clock: up to its latest batch, not up to `now`. A relay that is slow or
/// starved (a node busy encoding a snapshot, a saturated link) delays its runners' reports
/// and its own batches alike, so its runners do not look silent for its delay; a runner that
/// died goes on looking older with every batch its live relay sends. The relay's delay
/// forgiven is at most `silence`: a relay that delivers nothing at all while gossip still
/// counts it alive does not hide its runners' silence for longer. Nodes not in the map
/// (this node itself, a relay lost, one never heard) are measured up to `now`.
pub fn health_verdict(
    state: &State,
    health: &HealthTable,
    now: Instant,
    silence: Duration,
    watching_since: Instant,
    reconnects_from: Option<Instant>,
    relays_delivered_at: &HashMap<u64, Instant>,
) -> (Vec<String>, Vec<String>) {
    let relay_clock = |node: u64| {
        relays_delivered_at.get(&node).map_or(now, |delivered| {
            let earliest = now.checked_sub(silence).unwrap_or(*delivered);
            (*delivered).max(earliest).min(now)
        })
    };
    let mut reporting = Vec::new();
    let mut silent = Vec::new();
    for runner in state.runners.values() {
        let entry = health.get(&runner.id);
        let last_seen = entry.map(|e| e.seen_at);
        let fresh = last_seen.is_some_and(|seen| now.saturating_duration_since(seen) <= silence);
        match runner.state {
            RunnerState::Initializing | RunnerState::Unresponsive if fresh => reporting.push(runner.id.clone()),
            RunnerState::Ready => {
                let since = last_seen.map_or(watching_since, |seen| seen.max(watching_since));
                let since = reconnects_from.map_or(since, |from| since.max(from));
                let clock = entry.map_or(now, |e| relay_clock(e.report.via_node));
                if clock.saturating_duration_since(since) > silence {
                    silent.push(runner.id.clone());
                }
            }
            _ => {}
        }
    }
    (reporting, silent)
}

/// The table shared by the node's tasks (runner sessions, gossip, monitor, API).
#[derive(Debug, Clone, Default)]
pub struct SharedHealth(Arc<RwLock<HealthTable>>);

impl SharedHealth {
    /// Read access; hold it briefly and never across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, HealthTable> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, HealthTable> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Resources, Runner};

    fn runner(id: &str, state: RunnerState) -> Runner {
        Runner {
            id: id.into(),
            name: id.into(),
            region_id: "reg".into(),
            organization_id: "org".into(),
            state,
            state_changed_at: 0,
            schedulable: true,
            draining: false,
            api_version: "2".into(),
            domain: None,
            api_url: None,
            proxy_url: None,
            capacity: Resources { cpu: 4, memory_gib: 8, disk_gib: 40, gpu: 0 },
            capacity_source: None,
            tags: Default::default(),
            max_sandboxes: None,
            allocated: Resources::default(),
            started_sandboxes: 0,
            api_key_hash: format!("hash-{id}"),
            api_key_hint: String::new(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn report(id: &str, seq: u64) -> HealthReport {
        HealthReport {
            runner_id: id.into(),
            seq,
            cpu_pct: 10.0,
            memory_pct: 20.0,
            disk_pct: 30.0,
            version: "1".into(),
            snapshot_count: 0,
            started_sandboxes: 0,
            measured_at: 0,
            via_node: 1,
            received_at: 0,
        }
    }

    fn report_via(id: &str, seq: u64, via_node: u64) -> HealthReport {
        HealthReport { via_node, ..report(id, seq) }
    }

    fn ready_runners(ids: &[&str]) -> State {
        let mut state = State::default();
        for id in ids {
            state.runners.insert((*id).into(), runner(id, RunnerState::Ready));
        }
        state
    }

    #[test]
    fn newest_sequence_wins_whatever_the_arrival_order() {
        let now = Instant::now();
        let mut a = HealthTable::default();
        let mut b = HealthTable::default();
        for seq in [3, 1, 2, 3] {
            a.merge(report("r", seq), now);
        }
        for seq in [1, 2, 3] {
            b.merge(report("r", seq), now);
        }
        assert_eq!(a.get("r").map(|e| e.report.seq), Some(3));
        assert_eq!(b.get("r").map(|e| e.report.seq), Some(3));
        assert!(!a.merge(report("r", 3), now), "a duplicate is not news");
    }

    #[test]
    fn malformed_usage_is_refused() {
        let mut r = report("r", 1);
        assert!(r.is_well_formed());
        r.cpu_pct = f32::NAN;
        assert!(!r.is_well_formed());
        r.cpu_pct = 101.0;
        assert!(!r.is_well_formed());
    }

    #[test]
    fn verdict_follows_reports_and_silence() {
        let start = Instant::now();
        let silence = Duration::from_secs(10);
        let mut state = State::default();
        for (id, st) in [
            ("new", RunnerState::Initializing),
            ("ok", RunnerState::Ready),
            ("quiet", RunnerState::Ready),
            ("back", RunnerState::Unresponsive),
            ("off", RunnerState::Disabled),
        ] {
            state.runners.insert(id.into(), runner(id, st));
        }
        let mut table = HealthTable::default();
        table.merge(report("new", 1), start);
        table.merge(report("ok", 1), start + Duration::from_secs(15));
        table.merge(report("quiet", 1), start);
        table.merge(report("back", 1), start + Duration::from_secs(15));
        table.merge(report("off", 1), start + Duration::from_secs(15));

        let now = start + Duration::from_secs(16);
        let (reporting, silent) = health_verdict(&state, &table, now, silence, start, None, &HashMap::new());
        assert_eq!(reporting, vec!["back".to_string()], "`new` reported, but 16 s ago");
        assert_eq!(silent, vec!["quiet".to_string()]);

        // A leader that started watching 5 s ago gives every runner the full silence first.
        let (_, silent) =
            health_verdict(&state, &table, now, silence, now - Duration::from_secs(5), None, &HashMap::new());
        assert!(silent.is_empty());
    }

    #[test]
    fn a_runner_that_never_reported_is_demoted_after_the_silence() {
        let start = Instant::now();
        let mut state = State::default();
        state.runners.insert("mute".into(), runner("mute", RunnerState::Ready));
        let table = HealthTable::default();
        let silence = Duration::from_secs(10);
        let none = HashMap::new();
        let silent_at =
            |secs| health_verdict(&state, &table, start + Duration::from_secs(secs), silence, start, None, &none).1;
        assert!(silent_at(9).is_empty());
        let silent = silent_at(11);
        assert_eq!(silent, vec!["mute".to_string()]);
    }

    #[test]
    fn after_a_relay_node_died_every_runner_gets_the_whole_silence_to_reconnect() {
        let start = Instant::now();
        let silence = Duration::from_secs(10);
        let state = ready_runners(&["via-dead", "via-live"]);
        let mut table = HealthTable::default();
        table.merge(report_via("via-dead", 1, 3), start);
        table.merge(report("via-live", 1), start);
        // Node 3 was seen down 4 s after the last reports: the fleet moves, so neither runner
        // is demoted before the silence has run from then (at 12 s without the loss, both
        // would be); at 15 s both are.
        let lost = Some(start + Duration::from_secs(4));
        let (_, silent) =
            health_verdict(&state, &table, start + Duration::from_secs(14), silence, start, lost, &HashMap::new());
        assert!(silent.is_empty(), "{silent:?}");
        let (_, silent) =
            health_verdict(&state, &table, start + Duration::from_secs(12), silence, start, None, &HashMap::new());
        assert_eq!(silent.len(), 2);
        let (_, mut silent) =
            health_verdict(&state, &table, start + Duration::from_secs(15), silence, start, lost, &HashMap::new());
        silent.sort();
        assert_eq!(silent, vec!["via-dead".to_string(), "via-live".to_string()]);
        // A relay lost before the runner's last report changes nothing.
        let early = Some(start - Duration::from_secs(1));
        let (_, silent) =
            health_verdict(&state, &table, start + Duration::from_secs(12), silence, start, early, &HashMap::new());
        assert_eq!(silent.len(), 2);
    }

    #[test]
    fn a_runner_is_silent_on_its_relays_clock_up_to_the_silence() {
        let start = Instant::now();
        let s = Duration::from_secs;
        let silence = s(4);
        let state = ready_runners(&["via-slow", "via-live"]);
        let mut table = HealthTable::default();
        table.merge(report_via("via-slow", 1, 2), start);
        table.merge(report_via("via-live", 1, 3), start);
        // Node 2 last delivered a batch at 1 s (it stalled), node 3 at 5.9 s (its runner died).
        let delivered = HashMap::from([(2, start + s(1)), (3, start + s(5) + Duration::from_millis(900))]);
        let (_, silent) = health_verdict(&state, &table, start + s(6), silence, start, None, &delivered);
        assert_eq!(silent, vec!["via-live".to_string()], "node 2's own delay is not its runner's silence");
        // A relay that delivers nothing hides its runners' silence for `silence` at most.
        let (_, silent) =
            health_verdict(&state, &table, start + s(8) + Duration::from_millis(1), silence, start, None, &delivered);
        assert_eq!(silent.len(), 2);
        // Reports that arrive with the stalled relay's next batch restart the count.
        table.merge(report_via("via-slow", 2, 2), start + s(7));
        let delivered = HashMap::from([(2, start + s(7)), (3, start + s(7))]);
        let (_, silent) = health_verdict(&state, &table, start + s(7), silence, start, None, &delivered);
        assert_eq!(silent, vec!["via-live".to_string()]);
    }
}

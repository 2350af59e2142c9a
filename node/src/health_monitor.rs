//! The leader's health monitor: every interval, the verdict of the model's
//! [`health_verdict`] (runners that report become `ready`, silent ones `unresponsive`) is
//! committed through the node's handle. Silence is measured from the later of the runner's
//! last report seen here and the moment this node started watching (became leader), so a new
//! leader whose table is still filling does not demote a healthy fleet, and from the moment
//! this node saw the node a runner reported through stop relaying (gossip: suspect or down)
//! plus the agent's idle timeout, so a runner whose node died has the whole silence to
//! reconnect elsewhere once its agent gives that node up, even when that
//! node is back a moment later (its sessions died with it all the same). A monitor round
//! that comes far later than its interval means this node was stalled (paused, starved): its
//! table may miss what arrived meanwhile, so silence counts afresh. Silence is measured up to
//! the arrival of the relay's latest gossip batch rather than up to now (for at most the
//! silence itself), so a relay that is starved or behind does not pass its own delay off as
//! its runners' silence. On every node it also drops health entries of deleted runners.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_model::health::{health_verdict, HealthTable, SharedHealth};
use corral_model::{Command, Outcome, Proposal, State};
use corral_net::gossip::{Gossip, Liveness};
use tokio::sync::watch;

use crate::cluster::RaftCluster;

/// How the monitor runs.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Silence after which a ready runner becomes unresponsive; `None` turns the monitor off
    /// (runners then change state only through the admin API).
    pub silence: Option<Duration>,
    pub interval: Duration,
}

/// Most runners one health entry carries.
const MAX_RUNNERS_PER_ENTRY: usize = 5_000;

/// What the monitor remembers between rounds, and the round itself: a pure function of what
/// the node observed (corral-sim runs the same rounds on its simulated clock and gossip).
#[derive(Debug, Default)]
pub struct HealthWatch {
    /// Since when this node leads (silence counts from no earlier).
    leading_since: Option<Instant>,
    /// When the runners of the node this node last saw stop being alive start looking for
    /// another one: the moment of that loss (its runner sessions died then) plus the time an
    /// agent takes to give a silent node up ([`AGENT_LEAVES_SILENT_NODE_AFTER`]). Kept after
    /// the node is back: its runners still lost their sessions, however quickly it restarted,
    /// and the whole fleet's reports are late while they reconnect ([`health_verdict`]).
    reconnects_from: Option<Instant>,
    /// Nodes not alive at the last round.
    relays_down: HashSet<u64>,
}

impl HealthWatch {
    /// One round at `now`. `relays` is every node gossip knows, with whether it is alive;
    /// `delivered` when each peer's latest gossip batch arrived here (a runner's silence is
    /// measured on its relay's clock, see [`health_verdict`]); `leads` whether this node leads
    /// (and is not fenced). Returns the health entries to commit: none unless this node leads,
    /// `silence` is set and some runner changes.
    #[allow(clippy::too_many_arguments)]
    pub fn round(
        &mut self,
        now: Instant,
        relays: impl IntoIterator<Item = (u64, bool)>,
        delivered: &HashMap<u64, Instant>,
        leads: bool,
        silence: Option<Duration>,
        state: &State,
        table: &HealthTable,
    ) -> Vec<Command> {
        self.observe_relays(now, relays);
        if !leads {
            self.leading_since = None;
            return Vec::new();
        }
        let since = *self.leading_since.get_or_insert(now);
        let Some(silence) = silence else { return Vec::new() };
        // A relay that is down now is measured up to `now`: its loss already gives its runners
        // the silence to reconnect elsewhere.
        let delivered: HashMap<u64, Instant> =
            delivered.iter().filter(|(node, _)| !self.relays_down.contains(node)).map(|(n, at)| (*n, *at)).collect();
        let (reporting, silent) = health_verdict(state, table, now, silence, since, self.reconnects_from, &delivered);
        let reporting = reporting
            .chunks(MAX_RUNNERS_PER_ENTRY)
            .map(|chunk| Command::RecordRunnerHealth { reporting: chunk.to_vec(), silent: Vec::new() });
        let silent = silent
            .chunks(MAX_RUNNERS_PER_ENTRY)
            .map(|chunk| Command::RecordRunnerHealth { reporting: Vec::new(), silent: chunk.to_vec() });
        reporting.chain(silent).collect()
    }
}

impl HealthWatch {
    /// Notes which nodes are alive at `now` (a round does too). Called while a round's
    /// entries commit as well, so that a node that is down only for that while (a commit
    /// waits while a majority restarts) is not missed.
    pub fn observe_relays(&mut self, now: Instant, relays: impl IntoIterator<Item = (u64, bool)>) {
        for (node_id, alive) in relays {
            if alive {
                self.relays_down.remove(&node_id);
            } else if self.relays_down.insert(node_id) {
                // The latest loss wins (`None` orders before any `Some`).
                self.reconnects_from = self.reconnects_from.max(Some(now + AGENT_LEAVES_SILENT_NODE_AFTER));
            }
        }
    }

    /// This node was stalled (paused, or starved of CPU): reports that arrived meanwhile may
    /// not be in its table yet, so silence counts afresh from the next round, as for a new
    /// leader.
    pub fn stalled(&mut self) {
        self.leading_since = None;
    }
}

/// How long a runner agent waits on a silent node before it dials another (its QUIC idle
/// timeout): a runner whose node was lost has the whole silence from then on to report
/// through another node. Measured in the 10-leader-kill run (`benches/peers/runner_liveness.py`)
/// at a 4 s silence: counting from the loss itself left 1.5 s for 3,333 sessions to
/// reconnect and report, and 163 runners missed it.
pub const AGENT_LEAVES_SILENT_NODE_AFTER: Duration = crate::runner_agent::endpoints::NODE_SILENCE;

/// A round this much later than its interval means the node was stalled.
pub const STALL_AFTER_INTERVALS: u32 = 4;

/// Runners a health entry moves (to ready, to unresponsive).
pub fn moved_runners(command: &Command) -> (&[String], &[String]) {
    match command {
        Command::RecordRunnerHealth { reporting, silent } => (reporting, silent),
        _ => (&[], &[]),
    }
}

/// The leader's loop: every `interval`, commit the verdict (if any) through Raft. Also drops
/// health entries of deleted runners, on every node.
pub async fn run_monitor(
    cluster: Arc<RaftCluster>,
    gossip: Gossip,
    health: SharedHealth,
    config: MonitorConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = HealthWatch::default();
    let mut last_prune = Instant::now();
    let mut last_round = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let late = last_round.elapsed();
        last_round = Instant::now();
        if late > config.interval * STALL_AFTER_INTERVALS {
            tracing::warn!(late_ms = late.as_millis() as u64, "health monitor stalled; silence counts afresh");
            watch.stalled();
        }
        if last_prune.elapsed() > Duration::from_secs(30) {
            last_prune = Instant::now();
            let machine = cluster.shared.read();
            health.write().retain(|id| machine.state.runners.contains_key(id));
        }
        let relays = gossip_relays(&gossip);
        let commands = {
            let machine = cluster.shared.read();
            let table = health.read();
            let delivered = gossip.batches_arrived();
            watch.round(
                Instant::now(),
                relays,
                &delivered,
                cluster.leader.leads(),
                config.silence,
                &machine.state,
                &table,
            )
        };
        if commands.is_empty() {
            continue;
        }
        let (ready, unresponsive) = commands
            .iter()
            .map(moved_runners)
            .fold((0, 0), |(r, u), (ready, silent)| (r + ready.len(), u + silent.len()));
        tracing::info!(ready, unresponsive, "runner health changes");
        for command in commands {
            let committed = commit(&cluster, command);
            tokio::pin!(committed);
            loop {
                tokio::select! {
                    _ = &mut committed => break,
                    _ = tick.tick() => watch.observe_relays(Instant::now(), gossip_relays(&gossip)),
                }
            }
            last_round = Instant::now();
        }
    }
}

/// Every node gossip knows, with whether it is alive.
fn gossip_relays(gossip: &Gossip) -> Vec<(u64, bool)> {
    gossip.members().into_iter().map(|m| (m.node_id, m.liveness == Liveness::Alive)).collect()
}

async fn commit(cluster: &RaftCluster, command: Command) {
    let proposal = Proposal::new(command, corral_net::now_millis());
    match cluster.propose(proposal).await {
        Ok(Ok(Outcome::RunnersChanged(ids))) => {
            metrics::counter!("corral_runner_health_transitions_total").increment(ids.len() as u64);
        }
        Ok(other) => tracing::warn!(?other, "unexpected outcome of a runner health entry"),
        Err(e) => tracing::warn!(error = %e, "runner health entry not committed; retrying next round"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_model::health::{HealthReport, HealthTable};
    use corral_model::{apply, NewRegion, NewRunner, RegionType, Resources};

    fn state_with_a_ready_runner() -> State {
        let mut state = State::default();
        let commands = [
            Command::CreateOrganization { id: "org".into(), name: "org".into() },
            Command::CreateRegion(NewRegion::new("reg", "org", "reg", RegionType::Custom)),
            Command::CreateRunner(NewRunner::new(
                "r1",
                "reg",
                "r1",
                "hash",
                Resources { cpu: 4, memory_gib: 8, disk_gib: 40, gpu: 0 },
            )),
            Command::RecordRunnerHealth { reporting: vec!["r1".into()], silent: Vec::new() },
        ];
        for command in commands {
            assert!(apply(&mut state, &Proposal::new(command, 0)).is_ok());
        }
        state
    }

    fn report(seq: u64, via_node: u64) -> HealthReport {
        HealthReport {
            runner_id: "r1".into(),
            seq,
            cpu_pct: 10.0,
            memory_pct: 10.0,
            disk_pct: 10.0,
            version: "t".into(),
            snapshot_count: 0,
            started_sandboxes: 0,
            measured_at: 0,
            via_node,
            received_at: 0,
        }
    }

    #[test]
    fn a_round_demotes_only_on_a_leader_and_counts_from_the_relays_loss() {
        let state = state_with_a_ready_runner();
        let silence = Some(Duration::from_secs(3));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let none = HashMap::new();
        let mut table = HealthTable::default();
        table.merge(report(1, 2), t0);
        let mut watch = HealthWatch::default();
        // A follower proposes nothing, however long the silence.
        assert!(watch.round(t0 + s(10), [(2, true)], &none, false, silence, &state, &table).is_empty());
        // Leading from t0 + 10 s: silence counts from then.
        assert!(watch.round(t0 + s(10), [(2, true)], &none, true, silence, &state, &table).is_empty());
        // Node 2, which relayed the last report, is lost at t0 + 12 s: the runner gets 3 s from
        // there (once its agent has given node 2 up), not from its last report or the start
        // of leadership.
        let leave = AGENT_LEAVES_SILENT_NODE_AFTER;
        let ms = Duration::from_millis;
        assert!(watch.round(t0 + s(12), [(2, false)], &none, true, silence, &state, &table).is_empty());
        assert!(watch.round(t0 + s(15), [(2, false)], &none, true, silence, &state, &table).is_empty());
        assert!(watch.round(t0 + s(15) + leave, [(2, false)], &none, true, silence, &state, &table).is_empty());
        let commands = watch.round(t0 + s(15) + leave + ms(1), [(2, false)], &none, true, silence, &state, &table);
        assert_eq!(commands.len(), 1);
        assert_eq!(moved_runners(&commands[0]), (&[][..], &["r1".to_string()][..]));
        // Node 2 back at once (a quick restart): the runner's session died with it all the
        // same, so its silence still counts from the loss.
        let mut watch = HealthWatch::default();
        assert!(watch.round(t0 + s(10), [(2, true)], &none, true, silence, &state, &table).is_empty());
        assert!(watch.round(t0 + s(12), [(2, false)], &none, true, silence, &state, &table).is_empty());
        assert!(watch.round(t0 + s(13), [(2, true)], &none, true, silence, &state, &table).is_empty());
        assert!(watch.round(t0 + s(14), [(2, true)], &none, true, silence, &state, &table).is_empty());
        assert!(watch.round(t0 + s(16), [(2, true)], &none, true, silence, &state, &table).is_empty());
        assert_eq!(watch.round(t0 + s(15) + leave + ms(1), [(2, true)], &none, true, silence, &state, &table).len(), 1);
        // A report through the restarted node after its loss counts as usual.
        table.merge(report(2, 2), t0 + s(15));
        assert!(watch.round(t0 + s(16), [(2, true)], &none, true, silence, &state, &table).is_empty());
        // A stalled leader watches afresh: a runner silent only while it stalled keeps its place.
        let mut table = HealthTable::default();
        table.merge(report(1, 2), t0);
        let mut watch = HealthWatch::default();
        assert!(watch.round(t0 + s(10), [(2, true)], &none, true, silence, &state, &table).is_empty());
        watch.stalled();
        assert!(watch.round(t0 + s(14), [(2, true)], &none, true, silence, &state, &table).is_empty());
        assert!(watch.round(t0 + s(16), [(2, true)], &none, true, silence, &state, &table).is_empty());
        assert_eq!(watch.round(t0 + s(18), [(2, true)], &none, true, silence, &state, &table).len(), 1);
        // No silence configured: the monitor is off.
        assert!(watch.round(t0 + s(16), [(2, false)], &none, true, None, &state, &table).is_empty());
        // A relay whose batches stopped arriving (alive by gossip) hides its runners' silence
        // for the silence at most...
        let stale = HashMap::from([(2, t0 + s(1))]);
        let mut watch = HealthWatch::default();
        assert!(watch.round(t0 + s(10), [(2, true)], &stale, true, silence, &state, &table).is_empty());
        assert!(watch.round(t0 + s(16), [(2, true)], &stale, true, silence, &state, &table).is_empty());
        assert_eq!(watch.round(t0 + s(17), [(2, true)], &stale, true, silence, &state, &table).len(), 1);
        // ... and once it is down, its runners are measured up to now, from the loss.
        let mut watch = HealthWatch::default();
        assert!(watch.round(t0 + s(10), [(2, true)], &stale, true, silence, &state, &table).is_empty());
        assert!(watch.round(t0 + s(11), [(2, false)], &stale, true, silence, &state, &table).is_empty());
        let later = t0 + s(14) + leave + ms(1);
        assert_eq!(watch.round(later, [(2, false)], &stale, true, silence, &state, &table).len(), 1);
    }
}

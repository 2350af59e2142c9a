//! The leader's health monitor: every interval, the verdict of the model's
//! [`health_verdict`] (runners that report become `ready`, silent ones `unresponsive`) is
//! committed through the node's handle. Silence is measured from the later of the runner's
//! last report seen here and the moment this node started watching (became leader), so a new
//! leader whose table is still filling does not demote a healthy fleet, and from the moment
//! this node saw the node a runner reported through stop relaying (gossip: suspect or down),
//! so a runner whose node died has the whole silence to reconnect elsewhere. On every node it
//! also drops health entries of deleted runners.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_model::health::{health_verdict, SharedHealth};
use corral_model::{Command, Outcome, Proposal};
use corral_net::gossip::Liveness;
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

/// The leader's loop: every `interval`, commit the verdict (if any) through Raft. Also drops
/// health entries of deleted runners, on every node.
pub async fn run_monitor(
    cluster: Arc<RaftCluster>,
    health: SharedHealth,
    config: MonitorConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading_since: Option<Instant> = None;
    let mut last_prune = Instant::now();
    // Node id → when this node first saw it not alive (it relays no more reports).
    let mut relays_lost_at: HashMap<u64, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        for member in cluster.gossip.members() {
            if member.liveness == Liveness::Alive {
                relays_lost_at.remove(&member.node_id);
            } else {
                relays_lost_at.entry(member.node_id).or_insert(now);
            }
        }
        if last_prune.elapsed() > Duration::from_secs(30) {
            last_prune = Instant::now();
            let machine = cluster.shared.read();
            health.write().retain(|id| machine.state.runners.contains_key(id));
        }
        if !cluster.leader.leads() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        let Some(silence) = config.silence else { continue };
        let (reporting, silent) = {
            let machine = cluster.shared.read();
            let table = health.read();
            health_verdict(&machine.state, &table, now, silence, since, &relays_lost_at)
        };
        if reporting.is_empty() && silent.is_empty() {
            continue;
        }
        tracing::info!(ready = reporting.len(), unresponsive = silent.len(), "runner health changes");
        let (reporting_chunks, silent_chunks) =
            (reporting.chunks(MAX_RUNNERS_PER_ENTRY), silent.chunks(MAX_RUNNERS_PER_ENTRY));
        for chunk in reporting_chunks {
            commit(&cluster, Command::RecordRunnerHealth { reporting: chunk.to_vec(), silent: Vec::new() }).await;
        }
        for chunk in silent_chunks {
            commit(&cluster, Command::RecordRunnerHealth { reporting: Vec::new(), silent: chunk.to_vec() }).await;
        }
    }
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

//! The leader's rescheduler: every interval, sandboxes on runners that have been
//! `unresponsive` for `reschedule_after` (or are `decommissioned`) are placed again on another
//! runner of their region, decided by the model's [`plan_reschedules`] on one view of the state
//! and committed as one [`Command::RescheduleSandboxes`] entry per round (which `apply`
//! re-checks, so a runner that came back meanwhile keeps its sandboxes). A started sandbox
//! with nowhere to go is marked `error` with a reason and tried again every round. The old
//! runner's journal records the move, so its agent destroys its copy if it comes back.

use std::sync::Arc;
use std::time::Duration;

use corral_model::placement::plan_reschedules;
use corral_model::{Command, Outcome, Proposal};
use rand::SeedableRng;
use tokio::sync::watch;

use crate::cluster::RaftCluster;

/// Most sandboxes one rescheduling entry moves.
pub const MAX_MOVES_PER_ENTRY: usize = 1_000;

/// How the rescheduler runs.
#[derive(Debug, Clone)]
pub struct ReschedulerConfig {
    /// How long a runner stays unresponsive before its sandboxes move, in ms (as
    /// `RescheduleSandboxes` carries it).
    pub reschedule_after_ms: u64,
    pub interval: Duration,
    /// Seeds the choice among equally good runners (logged, so a run can be replayed).
    pub seed: u64,
}

/// The leader's loop; idle on followers.
pub async fn run_rescheduler(cluster: Arc<RaftCluster>, config: ReschedulerConfig, mut stop: watch::Receiver<bool>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let after_ms = config.reschedule_after_ms;
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !cluster.leader.leads() {
            continue;
        }
        let now = corral_net::now_millis();
        let moves = {
            let machine = cluster.shared.read();
            plan_reschedules(&machine.state, now, after_ms, MAX_MOVES_PER_ENTRY, &mut rng)
        };
        if moves.is_empty() {
            continue;
        }
        let planned = moves.len();
        let command = Command::RescheduleSandboxes { moves, unresponsive_for_ms: after_ms };
        match cluster.propose(Proposal::new(command, now)).await {
            Ok(Ok(Outcome::Placed(results))) => {
                let moved = results
                    .iter()
                    .filter(|r| r.as_ref().is_ok_and(|s| s.rescheduled_from.is_some() && s.error_reason.is_none()))
                    .count();
                let stranded = results.iter().filter(|r| r.as_ref().is_ok_and(|s| s.error_reason.is_some())).count();
                let refused = results.len() - moved - stranded;
                metrics::counter!("corral_sandboxes_rescheduled_total", "outcome" => "moved").increment(moved as u64);
                metrics::counter!("corral_sandboxes_rescheduled_total", "outcome" => "no_room")
                    .increment(stranded as u64);
                metrics::counter!("corral_sandboxes_rescheduled_total", "outcome" => "refused")
                    .increment(refused as u64);
                tracing::info!(
                    planned,
                    moved,
                    no_room = stranded,
                    refused,
                    "rescheduled sandboxes off unresponsive or decommissioned runners"
                );
            }
            Ok(other) => tracing::warn!(?other, "unexpected outcome of a rescheduling entry"),
            Err(e) => tracing::warn!(error = %e, "rescheduling entry not committed; retrying next round"),
        }
    }
}

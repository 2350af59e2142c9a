//! [`NodeRunnerDirectory`]: the node's side of runner sessions (net's `RunnerDirectory`):
//! a token's runner, the runner's assignments from the replicated state (the diff is the
//! model's), reports into this node's health table and out to gossip, and the capacity agents
//! report, committed through Raft by [`commit_reported_capacity`] when it differs from the
//! runner's (and the operator has not set one).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_model::assignment::{self, AssignmentAction, AssignmentPoll};
use corral_model::health::{HealthReport, SharedHealth};
use corral_model::secret::hash_secret;
use corral_model::{CapacitySource, Command, Outcome, Proposal, Resources};
use corral_net::gossip::Gossip;
use corral_net::runner_session::RunnerDirectory;
use corral_raft_types::SharedState;
use tokio::sync::{mpsc, watch};

use crate::cluster::RaftCluster;

/// Capacity reports waiting to be committed. Over it a report is dropped: the agent sends its
/// capacity again every `CAPACITY_RESEND_REPORTS` reports, so nothing is lost for long.
pub const CAPACITY_QUEUE_MAX: usize = 1_024;
/// At most one capacity entry per runner in this long: an agent whose reports keep changing
/// (or a hostile one) cannot fill the Raft log.
pub const CAPACITY_COMMIT_INTERVAL: Duration = Duration::from_secs(10);
/// The same capacity is proposed again (after a refusal, say) only after this long.
pub const CAPACITY_REPEAT_AFTER: Duration = Duration::from_secs(300);

/// The node's side of runner sessions.
pub struct NodeRunnerDirectory {
    pub node_id: u64,
    pub shared: SharedState,
    pub health: SharedHealth,
    pub gossip: Gossip,
    /// Reported capacities that differ from the runners' (see [`commit_reported_capacity`]).
    pub capacity_reports: mpsc::Sender<(String, Resources)>,
    /// Whether this node can reach a leader (runner sessions move away when it cannot).
    pub cluster: Arc<RaftCluster>,
}

impl RunnerDirectory for NodeRunnerDirectory {
    fn accepts_runners(&self) -> Result<(), String> {
        self.cluster.serves_runners()
    }

    fn authenticate(&self, token: &str) -> Option<String> {
        let hash = hash_secret(token);
        self.shared.read().state.runner_keys.get(&hash).cloned()
    }

    fn holds_token(&self, runner_id: &str, token_hash: &str) -> bool {
        self.shared.read().state.runners.get(runner_id).is_some_and(|r| r.api_key_hash == token_hash)
    }

    fn poll_assignments(
        &self,
        runner_id: &str,
        cursor: Option<u64>,
        sent: &HashMap<String, AssignmentAction>,
    ) -> AssignmentPoll {
        assignment::poll(&self.shared.read().state, runner_id, cursor, sent)
    }

    fn record(&self, report: HealthReport) {
        if self.health.write().merge(report.clone(), Instant::now()) {
            self.gossip.publish(report);
        }
    }

    fn report_capacity(&self, runner_id: &str, capacity: Resources) {
        let differs = self
            .shared
            .read()
            .state
            .runners
            .get(runner_id)
            .is_some_and(|r| r.capacity_source() == CapacitySource::Agent && r.capacity != capacity);
        if differs && self.capacity_reports.try_send((runner_id.to_string(), capacity)).is_err() {
            metrics::counter!("corral_runner_capacity_reports_dropped_total").increment(1);
        }
    }

    fn node_id(&self) -> u64 {
        self.node_id
    }
}

/// Commits each reported capacity that still differs from the runner's, one Raft entry per
/// report (they come once per runner and change, not per report). Runs on every node; a
/// follower's proposal is forwarded to the leader.
pub async fn commit_reported_capacity(
    cluster: Arc<RaftCluster>,
    mut reports: mpsc::Receiver<(String, Resources)>,
    mut stop: watch::Receiver<bool>,
) {
    // Per runner, the last capacity proposed and when.
    let mut proposed: HashMap<String, (Resources, Instant)> = HashMap::new();
    loop {
        let (runner_id, capacity) = tokio::select! {
            report = reports.recv() => match report { Some(r) => r, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        let still_differs = cluster
            .shared
            .read()
            .state
            .runners
            .get(&runner_id)
            .is_some_and(|r| r.capacity_source() == CapacitySource::Agent && r.capacity != capacity);
        let too_soon = proposed.get(&runner_id).is_some_and(|(last, at)| {
            at.elapsed() < CAPACITY_COMMIT_INTERVAL || (*last == capacity && at.elapsed() < CAPACITY_REPEAT_AFTER)
        });
        if !still_differs || too_soon {
            continue;
        }
        proposed.retain(|_, (_, at)| at.elapsed() < CAPACITY_REPEAT_AFTER);
        let command = Command::SetRunnerCapacity { id: runner_id.clone(), capacity, source: CapacitySource::Agent };
        let result = cluster.propose(Proposal::new(command, corral_net::now_millis())).await;
        // Committed or refused, it counts; a cluster error (no leader) is tried on the next report.
        if result.is_ok() {
            proposed.insert(runner_id.clone(), (capacity, Instant::now()));
        }
        match result {
            Ok(Ok(Outcome::Runner(runner))) => {
                tracing::info!(runner_id, capacity = ?runner.capacity, "runner capacity from its agent")
            }
            Ok(Ok(other)) => tracing::warn!(runner_id, ?other, "unexpected outcome of a runner capacity"),
            Ok(Err(rejection)) => tracing::warn!(runner_id, %rejection, "reported runner capacity refused"),
            Err(e) => tracing::warn!(runner_id, error = %e, "runner capacity not committed; the agent sends it again"),
        }
    }
}

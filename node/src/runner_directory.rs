//! [`NodeRunnerDirectory`]: the node's side of runner sessions (net's `RunnerDirectory`):
//! a token's runner, the runner's assignments from the replicated state (the diff is the
//! model's), and reports into this node's health table and out to gossip.

use std::collections::HashMap;
use std::time::Instant;

use corral_model::assignment::{self, AssignmentAction, AssignmentPoll};
use corral_model::health::{HealthReport, SharedHealth};
use corral_model::secret::hash_secret;
use corral_model::SharedState;
use corral_net::gossip::Gossip;
use corral_net::runner_session::RunnerDirectory;

/// The node's side of runner sessions.
pub struct NodeRunnerDirectory {
    pub node_id: u64,
    pub shared: SharedState,
    pub health: SharedHealth,
    pub gossip: Gossip,
}

impl RunnerDirectory for NodeRunnerDirectory {
    fn authenticate(&self, token: &str) -> Option<String> {
        let hash = hash_secret(token);
        self.shared.read().state.runner_keys.get(&hash).cloned()
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

    fn node_id(&self) -> u64 {
        self.node_id
    }
}

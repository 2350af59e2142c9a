//! The shared regions every organization can target (`us`, `eu`, as in the seeds) exist from
//! the start: whichever node becomes leader proposes any that are missing. The proposals carry
//! fixed ids and idempotency keys, so two leaders in a row cannot create twins.

use std::sync::Arc;
use std::time::Duration;

use corral_model::{Command, NewRegion, Proposal, RegionType};
use openraft::ServerState;
use tokio::sync::watch;

use crate::cluster::RaftCluster;

/// (id = name) of the shared regions.
pub const SHARED_REGIONS: [&str; 2] = ["us", "eu"];

fn missing(cluster: &RaftCluster) -> Vec<&'static str> {
    let machine = cluster.shared.read();
    SHARED_REGIONS.into_iter().filter(|id| !machine.state.regions.contains_key(*id)).collect()
}

/// Runs until `stop` turns true.
pub async fn ensure_on_leadership(cluster: Arc<RaftCluster>, mut stop: watch::Receiver<bool>) {
    let mut metrics = cluster.raft.metrics();
    loop {
        let leading = metrics.borrow_and_update().state == ServerState::Leader;
        if leading {
            for id in missing(cluster.as_ref()) {
                let command = Command::CreateRegion(NewRegion::new(id, "", id, RegionType::Shared));
                let mut proposal = Proposal::new(command, corral_net::now_millis());
                proposal.idempotency_key = Some(format!("system|shared-region|{id}"));
                match cluster.propose(proposal).await {
                    Ok(_) => tracing::info!(region = id, "shared region ensured"),
                    Err(e) => tracing::warn!(region = id, error = %e, "cannot create shared region yet"),
                }
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
            // Retry after a failed attempt even if leadership does not change.
            _ = tokio::time::sleep(Duration::from_secs(5)), if leading && !missing(cluster.as_ref()).is_empty() => {}
        }
    }
}

//! The shared regions every organization can target (`us`, `eu`, as in the seeds) exist from
//! the start: whichever node becomes leader proposes any that are missing. The proposals carry
//! fixed ids and idempotency keys, so two leaders in a row cannot create twins.

use std::sync::Arc;
use std::time::Duration;

use corral_api::{now_millis, ClusterHandle};
use corral_storage::model::{Command, Proposal, RegionType};
use corral_storage::Raft;
use openraft::ServerState;
use tokio::sync::watch;

/// (id = name) of the shared regions.
pub const SHARED_REGIONS: [&str; 2] = ["us", "eu"];

fn missing(cluster: &dyn ClusterHandle) -> Vec<&'static str> {
    let machine = cluster.state().read();
    SHARED_REGIONS.into_iter().filter(|id| !machine.state.regions.contains_key(*id)).collect()
}

/// Runs until `stop` turns true.
pub async fn ensure_on_leadership(raft: Raft, cluster: Arc<dyn ClusterHandle>, mut stop: watch::Receiver<bool>) {
    let mut metrics = raft.metrics();
    loop {
        let leading = metrics.borrow_and_update().state == ServerState::Leader;
        if leading {
            for id in missing(cluster.as_ref()) {
                let command = Command::CreateRegion {
                    id: id.to_string(),
                    organization_id: String::new(),
                    name: id.to_string(),
                    region_type: RegionType::Shared,
                    proxy_url: None,
                    ssh_gateway_url: None,
                    snapshot_manager_url: None,
                    proxy_api_key_hash: None,
                    ssh_gateway_api_key_hash: None,
                    snapshot_manager_username: None,
                    snapshot_manager_password: None,
                };
                let mut proposal = Proposal::new(command, now_millis());
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

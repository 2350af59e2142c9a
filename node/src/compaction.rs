//! Log compaction by commands, not entries.
//!
//! openraft's `SnapshotPolicy::LogsSinceLast` counts log entries. An entry carries a batch of
//! up to a thousand proposals (`ProposalBatch`), and a placement proposal a batch of
//! sandboxes, so under load a threshold of 10,000 entries can mean millions of changes, all
//! replayed by a restart. This task asks openraft for a snapshot once the weight of the
//! commands applied since the newest snapshot (`Command::weight`, one per object a command
//! may change) reaches the threshold
//! (`snapshot_threshold`). openraft ignores the request while a build is running, and the
//! entry-count policy stays on for slow, one-command entries.

use std::time::Duration;

use corral_raft_types::{Raft, SharedState};
use tokio::sync::watch;

/// How often the applied-command count is looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a snapshot is due: `pending` command weight is not covered by the newest snapshot,
/// and the state holds `objects`. A snapshot costs time in proportion to the state (a million
/// sandboxes take seconds of CPU to encode), so besides the threshold it waits until the
/// pending weight is a quarter of the state: the cost per command stays constant as the state
/// grows, and a restart replays at most a quarter of what it decodes.
///
/// Nodes stagger their snapshots: node 1 builds at that point, node 2 a quarter later, node 3
/// half later (and so on, modulo 4), so that the members of a cluster, which apply the same
/// commands, do not all encode their state at the same moment and starve the machine.
pub fn snapshot_due(pending: u64, threshold: u64, objects: u64, node_id: u64) -> bool {
    let base = threshold.max(objects / 4);
    threshold > 0 && pending >= base + base * (node_id.saturating_sub(1) % 4) / 4
}

/// Triggers a snapshot whenever `snapshot_due`, until `stop`.
pub async fn trigger_by_commands(
    raft: Raft,
    shared: SharedState,
    threshold: u64,
    node_id: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (pending, objects) = {
            let machine = shared.read();
            (machine.commands_since_snapshot(), machine.state.object_count())
        };
        if !snapshot_due(pending, threshold, objects, node_id) {
            continue;
        }
        tracing::info!(pending, threshold, "commands since the last snapshot reached the threshold; building one");
        if let Err(e) = raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "raft stopped; no more snapshots");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    #[test]
    fn due_at_the_threshold_and_never_when_off() {
        assert!(!snapshot_due(9_999, 10_000, 0, 1));
        assert!(snapshot_due(10_000, 10_000, 0, 1));
        assert!(snapshot_due(5_000_000, 10_000, 0, 1));
        assert!(!snapshot_due(5_000_000, 0, 0, 1));
    }

    #[test]
    fn a_large_state_waits_for_a_quarter_of_its_size() {
        assert!(!snapshot_due(100_000, 100_000, 1_000_000, 1));
        assert!(snapshot_due(250_000, 100_000, 1_000_000, 1));
        assert!(snapshot_due(100_000, 100_000, 200_000, 1), "small states snapshot at the threshold");
    }

    #[test]
    fn members_stagger_their_snapshots() {
        assert!(snapshot_due(100_000, 100_000, 0, 1));
        assert!(!snapshot_due(100_000, 100_000, 0, 2));
        assert!(snapshot_due(125_000, 100_000, 0, 2));
        assert!(!snapshot_due(125_000, 100_000, 0, 3));
        assert!(snapshot_due(150_000, 100_000, 0, 3));
        assert!(snapshot_due(100_000, 100_000, 0, 5), "node 5 goes with node 1");
    }
}

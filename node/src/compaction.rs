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

/// Whether a snapshot is due: `pending` commands are not covered by the newest snapshot.
pub fn snapshot_due(pending: u64, threshold: u64) -> bool {
    threshold > 0 && pending >= threshold
}

/// Triggers a snapshot whenever `snapshot_due`, until `stop`.
pub async fn trigger_by_commands(raft: Raft, shared: SharedState, threshold: u64, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let pending = shared.read().commands_since_snapshot();
        if !snapshot_due(pending, threshold) {
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
        assert!(!snapshot_due(9_999, 10_000));
        assert!(snapshot_due(10_000, 10_000));
        assert!(snapshot_due(5_000_000, 10_000));
        assert!(!snapshot_due(5_000_000, 0));
    }
}

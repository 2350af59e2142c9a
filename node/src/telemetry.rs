//! Prometheus metrics for the node (`GET /metrics`): the recorder, and the tasks that turn
//! Raft's metrics and the replicated state into gauges. Metric names follow Prometheus
//! conventions: `corral_` prefix, base units, `_total` for counters, `_seconds` for time.
//! (REST metrics come from `corral_api::telemetry`, scheduler metrics from `scheduler`.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_model::{RunnerState, SandboxState};
use corral_raft_types::{Raft, SharedState};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use openraft::ServerState;
use tokio::sync::watch;

/// Seconds-valued histograms' buckets: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Installs the global recorder; the handle renders the exposition text.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("corral_scheduler_batch_size".into()), BATCH_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("corral_coalesced_batch_size".into()), BATCH_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("corral_raft_commands_per_entry".into()), BATCH_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("corral_raft_appends_per_fsync".into()), BATCH_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("corral_raft_entries_per_fsync".into()), BATCH_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    Ok(handle)
}

/// Mirrors openraft's metrics into gauges and counts leader changes, until `stop`.
pub async fn watch_raft(raft: Raft, mut stop: watch::Receiver<bool>) {
    let mut metrics = raft.metrics();
    let mut last_leader = None;
    loop {
        {
            let m = metrics.borrow_and_update();
            metrics::gauge!("corral_raft_is_leader").set(if m.state == ServerState::Leader { 1.0 } else { 0.0 });
            metrics::gauge!("corral_raft_has_leader").set(if m.current_leader.is_some() { 1.0 } else { 0.0 });
            metrics::gauge!("corral_raft_term").set(m.current_term as f64);
            metrics::gauge!("corral_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
            metrics::gauge!("corral_raft_applied_index").set(m.last_applied.map(|l| l.index).unwrap_or(0) as f64);
            metrics::gauge!("corral_raft_snapshot_index").set(m.snapshot.map(|l| l.index).unwrap_or(0) as f64);
            metrics::gauge!("corral_raft_purged_index").set(m.purged.map(|l| l.index).unwrap_or(0) as f64);
            let log_entries = m.last_log_index.unwrap_or(0).saturating_sub(m.purged.map(|l| l.index).unwrap_or(0));
            metrics::gauge!("corral_raft_log_entries").set(log_entries as f64);
            if m.current_leader != last_leader {
                if m.current_leader.is_some() {
                    metrics::counter!("corral_raft_leader_changes_total").increment(1);
                }
                last_leader = m.current_leader;
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Runners and sandboxes by state, snapshot counters, and the commands a restart would replay.
type StateCounts = ([u64; RunnerState::ALL.len()], [u64; SandboxState::ALL.len()], u64, u64, f64, u64);

fn count_state(shared: &SharedState) -> StateCounts {
    let machine = shared.read();
    let mut runners = [0u64; RunnerState::ALL.len()];
    for r in machine.state.runners.values() {
        runners[r.state as usize] += 1;
    }
    let mut sandboxes = [0u64; SandboxState::ALL.len()];
    for s in machine.state.sandboxes.values() {
        sandboxes[s.state as usize] += 1;
    }
    (
        runners,
        sandboxes,
        machine.snapshots_built,
        machine.snapshots_installed,
        machine.last_snapshot_build_seconds,
        machine.commands_since_snapshot(),
    )
}

/// Every `period`: runners and sandboxes by state, snapshot counters and RocksDB's size on disk.
pub async fn watch_state(shared: SharedState, db_dir: PathBuf, period: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Counting walks every object: on a blocking thread, as the directory walk.
        let (state, dir) = (shared.clone(), db_dir.clone());
        let Ok(((runners, sandboxes, built, installed, build_seconds, since_snapshot), bytes)) =
            tokio::task::spawn_blocking(move || (count_state(&state), dir_size(&dir))).await
        else {
            continue;
        };
        for state in RunnerState::ALL {
            metrics::gauge!("corral_runners", "state" => state.label()).set(runners[state as usize] as f64);
        }
        for state in SandboxState::ALL {
            metrics::gauge!("corral_sandboxes", "state" => state.label()).set(sandboxes[state as usize] as f64);
        }
        metrics::gauge!("corral_snapshots_built").set(built as f64);
        metrics::gauge!("corral_snapshots_installed").set(installed as f64);
        metrics::gauge!("corral_snapshot_last_build_duration_seconds").set(build_seconds);
        metrics::gauge!("corral_raft_commands_since_snapshot").set(since_snapshot as f64);
        metrics::gauge!("corral_rocksdb_size_bytes").set(bytes as f64);
    }
}

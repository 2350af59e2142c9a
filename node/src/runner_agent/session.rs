//! One runner's session with a node over QUIC. [`run_session`] takes the shared connection from
//! the [`NodeLink`] and opens one bidirectional stream on it per session (so simulated runners
//! share a connection): it says hello with the token, reads the node's welcome or refusal, then
//! writes a usage report every interval the node asks for while it applies and acknowledges the
//! assignments the node sends, dropping what the node's first full set (`Synced`) no longer
//! holds. A refusal ends the runner for good; a session lost any other way is opened again
//! after a short jittered pause, on the next endpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use corral_model::health::HealthReport;
use corral_net::quic::{read_frame, write_frame, FrameError};
use corral_net::runner_session::{
    AbortOnDrop, AgentMessage, AssignmentAck, AssignmentAction, NodeMessage, CAPACITY_RESEND_REPORTS,
};
use quinn::Connection;
use rand::Rng;
use tokio::sync::watch;

use super::endpoints::NodeLink;
use super::usage::{UsageProbe, UsageSource};
use super::AgentError;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// One runner's session loop: connect, hello, then reports out and assignments in, forever
/// (until `stop` or a refusal).
pub async fn run_session(
    link: Arc<NodeLink>,
    token: String,
    usage: UsageSource,
    stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut probe = UsageProbe::new(usage);
    let mut seq = 0u64;
    // sandbox id → the last action applied here.
    let mut sandboxes: HashMap<String, AssignmentAction> = HashMap::new();
    loop {
        let Some((connection, endpoint)) = link.connection(&stop).await else { return Ok(()) };
        match session_once(&connection, &endpoint, &token, &mut probe, &mut seq, &mut sandboxes, stop.clone()).await {
            Ok(SessionEnd::Stopped) => return Ok(()),
            Ok(SessionEnd::Lost) => link.failed(&connection).await,
            Err(e @ AgentError::Refused(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "session failed");
                link.failed(&connection).await;
            }
        }
        // A short pause so a fleet does not stampede the next node all at once.
        let pause = rand::thread_rng().gen_range(50..500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

enum SessionEnd {
    Stopped,
    Lost,
}

async fn session_once(
    connection: &Connection,
    endpoint: &str,
    token: &str,
    probe: &mut UsageProbe,
    seq: &mut u64,
    sandboxes: &mut HashMap<String, AssignmentAction>,
    mut stop: watch::Receiver<bool>,
) -> Result<SessionEnd, AgentError> {
    let Ok((mut send, mut recv)) = connection.open_bi().await else { return Ok(SessionEnd::Lost) };
    let hello = AgentMessage::Hello { token: token.to_string(), version: VERSION.to_string() };
    if write_frame(&mut send, &hello).await.is_err() {
        return Ok(SessionEnd::Lost);
    }
    let welcome = tokio::time::timeout(Duration::from_secs(10), read_frame::<NodeMessage>(&mut recv)).await;
    let (runner_id, interval) = match welcome {
        Ok(Ok(Some(NodeMessage::Welcome { runner_id, node_id, report_interval_ms }))) => {
            tracing::info!(runner_id, node_id, endpoint, "runner session open");
            (runner_id, Duration::from_millis(report_interval_ms.clamp(100, 60_000)))
        }
        Ok(Ok(Some(NodeMessage::Refused { reason }))) => return Err(AgentError::Refused(reason)),
        _ => return Ok(SessionEnd::Lost),
    };
    // Frames from the node, read by a task of its own so that a frame is never abandoned half
    // read and the node's assignments keep flowing while this loop writes reports and acks.
    let (inbound_tx, mut inbound) = tokio::sync::mpsc::channel::<Result<Option<NodeMessage>, FrameError>>(16);
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_frame::<NodeMessage>(&mut recv).await;
            let last = !matches!(frame, Ok(Some(_)));
            if inbound_tx.send(frame).await.is_err() || last {
                return;
            }
        }
    });
    let _reader = AbortOnDrop(reader);
    // Assignments the node has confirmed since this session opened, until `Synced`: anything
    // else still held here then was taken away while we were disconnected.
    let mut confirmed: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut synced = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reports_sent = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if reports_sent.is_multiple_of(CAPACITY_RESEND_REPORTS) {
                    let capacity = probe.capacity();
                    if write_frame(&mut send, &AgentMessage::Capacity(capacity)).await.is_err() {
                        return Ok(SessionEnd::Lost);
                    }
                }
                reports_sent += 1;
                let [cpu, memory, disk] = probe.sample();
                *seq = now_micros().max(*seq + 1);
                let started = sandboxes.values().filter(|a| **a == AssignmentAction::Start).count() as u64;
                let report = HealthReport {
                    runner_id: runner_id.clone(),
                    seq: *seq,
                    cpu_pct: cpu,
                    memory_pct: memory,
                    disk_pct: disk,
                    version: VERSION.to_string(),
                    snapshot_count: 0,
                    started_sandboxes: started,
                    measured_at: *seq / 1_000,
                    via_node: 0,
                    received_at: 0,
                };
                metrics::gauge!("corral_agent_host_usage_percent", "resource" => "cpu").set(f64::from(cpu));
                metrics::gauge!("corral_agent_host_usage_percent", "resource" => "memory").set(f64::from(memory));
                metrics::gauge!("corral_agent_host_usage_percent", "resource" => "disk").set(f64::from(disk));
                metrics::gauge!("corral_agent_sandboxes", "action" => "start").set(started as f64);
                metrics::gauge!("corral_agent_sandboxes", "action" => "stop").set((sandboxes.len() as u64 - started) as f64);
                metrics::counter!("corral_agent_reports_sent_total").increment(1);
                if write_frame(&mut send, &AgentMessage::Report(report)).await.is_err() {
                    return Ok(SessionEnd::Lost);
                }
            }
            message = inbound.recv() => match message {
                Some(Ok(Some(NodeMessage::Assignments(assignments)))) => {
                    let mut acks = Vec::with_capacity(assignments.len());
                    for assignment in assignments {
                        if synced {
                            tracing::info!(runner_id, sandbox_id = %assignment.sandbox_id, action = ?assignment.action,
                                target = %assignment.target, "assignment");
                        } else {
                            confirmed.insert(assignment.sandbox_id.clone());
                        }
                        if assignment.action == AssignmentAction::Destroy {
                            sandboxes.remove(&assignment.sandbox_id);
                        } else {
                            sandboxes.insert(assignment.sandbox_id.clone(), assignment.action);
                        }
                        let action = match assignment.action {
                            AssignmentAction::Start => "start",
                            AssignmentAction::Stop => "stop",
                            AssignmentAction::Destroy => "destroy",
                        };
                        metrics::counter!("corral_agent_assignments_total", "action" => action).increment(1);
                        acks.push(AssignmentAck { sandbox_id: assignment.sandbox_id, action: assignment.action });
                    }
                    if write_frame(&mut send, &AgentMessage::Acks(acks)).await.is_err() {
                        return Ok(SessionEnd::Lost);
                    }
                }
                Some(Ok(Some(NodeMessage::Synced))) => {
                    synced = true;
                    let before = sandboxes.len();
                    sandboxes.retain(|id, _| confirmed.contains(id));
                    // Only the first full set is checked against; later ones need no record.
                    confirmed = std::collections::HashSet::new();
                    tracing::info!(runner_id, assigned = sandboxes.len(), dropped = before - sandboxes.len(),
                        "in step with the node's assignments");
                    metrics::counter!("corral_agent_assignments_total", "action" => "dropped_on_sync")
                        .increment((before - sandboxes.len()) as u64);
                }
                Some(Ok(Some(NodeMessage::Refused { reason }))) => return Err(AgentError::Refused(reason)),
                Some(Ok(Some(NodeMessage::Welcome { .. }))) => return Ok(SessionEnd::Lost),
                Some(Ok(None) | Err(_)) | None => {
                    tracing::warn!(runner_id, endpoint, "lost the node; reconnecting");
                    metrics::counter!("corral_agent_session_reconnects_total").increment(1);
                    return Ok(SessionEnd::Lost);
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                let _ = send.finish();
                return Ok(SessionEnd::Stopped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use corral_model::Resources;
    use corral_net::quic::node_endpoint;
    use corral_net::runner_session::{
        serve_runner_connection, Assignment, AssignmentPoll, RunnerDirectory, SessionConfig,
    };
    use corral_net::tls::{CertDir, Role};

    use super::*;

    /// A runner's assignments held in memory, with the node-side diff the real directory does
    /// over the replicated state, and every report the session hands over.
    struct Fleet {
        assigned: Mutex<(u64, BTreeMap<String, AssignmentAction>)>,
        reports: Mutex<Vec<HealthReport>>,
        capacity: Mutex<Option<Resources>>,
    }

    impl RunnerDirectory for Fleet {
        fn authenticate(&self, token: &str) -> Option<String> {
            (token == "token-1").then(|| "runner-1".to_string())
        }
        fn holds_token(&self, runner_id: &str, token_hash: &str) -> bool {
            runner_id == "runner-1" && token_hash == corral_model::secret::hash_secret("token-1")
        }
        fn poll_assignments(
            &self,
            _runner_id: &str,
            cursor: Option<u64>,
            sent: &HashMap<String, AssignmentAction>,
        ) -> AssignmentPoll {
            let assigned = self.assigned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if cursor == Some(assigned.0) {
                return AssignmentPoll::Unchanged;
            }
            let changed = assigned
                .1
                .iter()
                .filter(|(id, action)| sent.get(*id) != Some(action))
                .map(|(id, action)| Assignment {
                    sandbox_id: id.clone(),
                    action: *action,
                    target: "ubuntu:24.04".into(),
                    resources: Resources::default(),
                })
                .collect();
            let gone = sent
                .iter()
                .filter(|(id, action)| **action != AssignmentAction::Destroy && !assigned.1.contains_key(*id))
                .map(|(id, _)| id.clone())
                .collect();
            AssignmentPoll::Changes { cursor: assigned.0, changed, gone }
        }
        fn record(&self, report: HealthReport) {
            self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(report);
        }
        fn report_capacity(&self, _runner_id: &str, capacity: Resources) {
            *self.capacity.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(capacity);
        }
        fn node_id(&self) -> u64 {
            1
        }
    }

    impl Fleet {
        /// The last report, and how many reports arrived.
        fn last_report(&self) -> (Option<HealthReport>, usize) {
            let reports = self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (reports.last().cloned(), reports.len())
        }
    }

    async fn wait_for_started(fleet: &Fleet, started: u64, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (last, count) = fleet.last_report();
            if last.as_ref().is_some_and(|r| r.started_sandboxes == started) {
                return count;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no report of {started} started sandboxes within {within:?}; last report: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A runner that holds tens of thousands of sandboxes when it (re)connects gets them all,
    /// acknowledges them, and goes on reporting: the full set once deadlocked the session
    /// (the node wrote assignments without reading acks while the agent wrote acks without
    /// reading assignments, until both flow-control windows were full).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_runner_with_tens_of_thousands_of_sandboxes_syncs_and_keeps_reporting() {
        const SANDBOXES: usize = 60_000;
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = CertDir::new(dir.path());
        certs.init().expect("CA");
        certs.issue(Role::Node, "node-1", &["127.0.0.1".to_string()]).expect("node cert");
        certs.issue(Role::Runner, "runner", &[]).expect("runner cert");
        let node_tls = certs.load("node-1").expect("node tls");
        let runner_tls = certs.load("runner").expect("runner tls");

        let assigned = (0..SANDBOXES).map(|i| (format!("sandbox-{i:06}"), AssignmentAction::Start)).collect();
        let fleet = Arc::new(Fleet {
            assigned: Mutex::new((1, assigned)),
            reports: Mutex::new(Vec::new()),
            capacity: Mutex::new(None),
        });
        let endpoint = node_endpoint("127.0.0.1:0".parse().expect("addr"), &node_tls, Duration::from_secs(5))
            .expect("node endpoint");
        let addr = endpoint.local_addr().expect("bound");
        let config = SessionConfig {
            report_interval: Duration::from_millis(200),
            assignment_poll: Duration::from_millis(100),
            ..SessionConfig::default()
        };
        let directory: Arc<dyn RunnerDirectory> = fleet.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                if let Ok(connection) = incoming.await {
                    tokio::spawn(serve_runner_connection(connection, directory.clone(), config.clone()));
                }
            }
        });

        let (stop_tx, stop_rx) = watch::channel(false);
        let link = Arc::new(NodeLink::new(vec![addr.to_string()], &runner_tls).expect("link"));
        let agent = tokio::spawn(run_session(link, "token-1".into(), UsageSource::Synthetic, stop_rx));

        let reports_at_sync = wait_for_started(&fleet, SANDBOXES as u64, Duration::from_secs(60)).await;
        // Reports go on after the sync, and a change reaches the runner.
        {
            let mut assigned = fleet.assigned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            assigned.1.retain(|id, _| !id.ends_with('7'));
            assigned.1.insert("sandbox-000001".into(), AssignmentAction::Stop);
            assigned.0 = 2;
        }
        let remaining = (SANDBOXES - SANDBOXES / 10 - 1) as u64;
        let reports_after = wait_for_started(&fleet, remaining, Duration::from_secs(30)).await;
        assert!(reports_after > reports_at_sync, "reports stopped after the sync");

        stop_tx.send(true).expect("agent listening");
        let ended = tokio::time::timeout(Duration::from_secs(5), agent).await.expect("agent stops");
        assert!(matches!(ended, Ok(Ok(()))), "agent ended with {ended:?}");
    }
}

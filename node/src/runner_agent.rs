//! `corral runner`: the runner agent.
//!
//! It connects over QUIC to one of `--endpoints` (the nodes' Raft addresses, UDP), proves its
//! token, reports the host's cpu/memory/disk usage every interval the node asks for, and
//! receives the sandboxes assigned to it, acknowledging each frame of them. When its node dies or the
//! connection breaks it moves to the next endpoint, with jittered exponential backoff. A
//! refused token ends the agent with an error (retrying a revoked token would only hammer the
//! cluster).
//!
//! `--simulate N --tokens-file F` runs N runners in one process with synthetic usage: each
//! runner is its own session (one QUIC stream), and the sessions share one connection per
//! [`RUNNERS_PER_CONNECTION`] runners, so ten thousand runners cost a few connections.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use corral_net::quic::{client_endpoint, read_frame, write_frame, FrameError, ALPN_RUNNER, SERVER_NAME};
use corral_net::runner_session::{AbortOnDrop, AgentMessage, AssignmentAck, AssignmentAction, NodeMessage};
use corral_net::tls::ClusterTls;
use corral_storage::health::HealthReport;
use quinn::{Connection, Endpoint};
use rand::Rng;
use tokio::sync::watch;

/// Simulated runners that share one QUIC connection.
pub const RUNNERS_PER_CONNECTION: usize = 1_000;
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Args, Clone)]
pub struct RunnerArgs {
    /// The runner's token (shown once when the runner was created).
    #[arg(long, env = "CORRAL_RUNNER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Nodes to connect to (their Raft addresses, host:port), comma separated.
    #[arg(long, env = "CORRAL_ENDPOINTS", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// Run this many simulated runners with synthetic usage (tokens from --tokens-file).
    #[arg(long)]
    pub simulate: Option<usize>,
    /// One runner token per line, for --simulate.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// The cluster CA certificate (PEM); nodes are trusted only if it issued theirs.
    #[arg(long, env = "CORRAL_CA_CERT")]
    pub ca_cert: PathBuf,
    /// This runner's certificate from the cluster CA (`corral certs runner`).
    #[arg(long, env = "CORRAL_RUNNER_CERT")]
    pub cert: PathBuf,
    /// The private key of --cert.
    #[arg(long, env = "CORRAL_RUNNER_KEY")]
    pub key: PathBuf,
}

/// Where usage numbers come from.
#[derive(Debug, Clone, Copy)]
pub enum UsageSource {
    /// This host, read with sysinfo.
    Host,
    /// A random walk, for simulated runners.
    Synthetic,
}

/// Why an agent stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the cluster refused this runner: {0}")]
    Refused(String),
    #[error("no endpoints given")]
    NoEndpoints,
    #[error(transparent)]
    Quic(#[from] corral_net::quic::QuicError),
    #[error(transparent)]
    Tls(#[from] corral_net::tls::TlsError),
}

pub fn run(args: RunnerArgs) -> anyhow::Result<()> {
    let tls = ClusterTls::load(&args.ca_cert, &args.cert, &args.key)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            crate::serve::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        match args.simulate {
            Some(n) => {
                let path = args.tokens_file.as_ref().context("--simulate needs --tokens-file")?;
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                let tokens: Vec<String> =
                    text.lines().map(str::trim).filter(|l| !l.is_empty()).take(n).map(String::from).collect();
                anyhow::ensure!(
                    tokens.len() == n,
                    "{} holds {} tokens, --simulate asked for {n}",
                    path.display(),
                    tokens.len()
                );
                simulate(tokens, args.endpoints, tls, stop_rx).await
            }
            None => {
                let token = args.token.context("--token (or CORRAL_RUNNER_TOKEN) is required")?;
                let link = Arc::new(NodeLink::new(args.endpoints, &tls)?);
                run_session(link, token, UsageSource::Host, stop_rx).await.map_err(anyhow::Error::from)
            }
        }
    })
}

/// Runs simulated runners until `stop`; fails if any runner is refused.
pub async fn simulate(
    tokens: Vec<String>,
    endpoints: Vec<String>,
    tls: ClusterTls,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tracing::info!(runners = tokens.len(), "simulating runners");
    let mut tasks = tokio::task::JoinSet::new();
    for (group, chunk) in tokens.chunks(RUNNERS_PER_CONNECTION).enumerate() {
        // Spread groups over the endpoints so the load lands on every node.
        let mut rotated = endpoints.clone();
        if !rotated.is_empty() {
            let shift = group % rotated.len();
            rotated.rotate_left(shift);
        }
        let link = Arc::new(NodeLink::new(rotated, &tls)?);
        for token in chunk {
            tasks.spawn(run_session(link.clone(), token.clone(), UsageSource::Synthetic, stop.clone()));
        }
    }
    let mut refused = 0usize;
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(e)) = result {
            refused += 1;
            tracing::error!(error = %e, "simulated runner stopped");
        }
    }
    anyhow::ensure!(refused == 0, "{refused} simulated runners were refused");
    Ok(())
}

/// A connection to one of the endpoints, shared by the sessions of one agent process (or one
/// group of simulated runners), re-dialled on the next endpoint when it breaks.
pub struct NodeLink {
    endpoint: Endpoint,
    endpoints: Vec<String>,
    current: tokio::sync::Mutex<(usize, Option<Connection>)>,
}

impl NodeLink {
    /// Dials `endpoints` presenting the runner certificate in `tls`.
    pub fn new(endpoints: Vec<String>, tls: &ClusterTls) -> Result<NodeLink, AgentError> {
        if endpoints.is_empty() {
            return Err(AgentError::NoEndpoints);
        }
        let endpoint = client_endpoint(tls, ALPN_RUNNER, Duration::from_secs(5))?;
        Ok(NodeLink { endpoint, endpoints, current: tokio::sync::Mutex::new((0, None)) })
    }

    /// The live connection, dialling endpoints in turn (with backoff) until one answers.
    async fn connection(&self, stop: &watch::Receiver<bool>) -> Option<(Connection, String)> {
        let mut current = self.current.lock().await;
        let mut backoff = Duration::from_millis(200);
        loop {
            if *stop.borrow() {
                return None;
            }
            let name = self.endpoints[current.0 % self.endpoints.len()].clone();
            if let Some(c) = current.1.as_ref().filter(|c| c.close_reason().is_none()) {
                return Some((c.clone(), name));
            }
            match self.dial(&name).await {
                Ok(c) => {
                    tracing::info!(endpoint = %name, "connected");
                    current.1 = Some(c.clone());
                    return Some((c, name));
                }
                Err(e) => {
                    tracing::warn!(endpoint = %name, error = %e, "cannot reach node; trying the next");
                    current.0 += 1;
                    current.1 = None;
                    let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
                    tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Called when `failed` broke: the next caller dials the next endpoint.
    async fn failed(&self, failed: &Connection) {
        let mut current = self.current.lock().await;
        if current.1.as_ref().is_some_and(|c| c.stable_id() == failed.stable_id()) {
            current.0 += 1;
            current.1 = None;
        }
    }

    async fn dial(&self, name: &str) -> anyhow::Result<Connection> {
        let addr = tokio::net::lookup_host(name).await?.next().context("resolves to no address")?;
        let connecting = self.endpoint.connect(addr, SERVER_NAME)?;
        Ok(tokio::time::timeout(Duration::from_secs(3), connecting).await.context("timed out")??)
    }
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Reads usage numbers.
struct UsageProbe {
    source: UsageSource,
    system: sysinfo::System,
    disks: sysinfo::Disks,
    synthetic: [f32; 3],
}

impl UsageProbe {
    fn new(source: UsageSource) -> Self {
        let mut rng = rand::thread_rng();
        let (system, disks) = match source {
            UsageSource::Host => (sysinfo::System::new(), sysinfo::Disks::new_with_refreshed_list()),
            UsageSource::Synthetic => (sysinfo::System::new(), sysinfo::Disks::new()),
        };
        UsageProbe {
            source,
            system,
            disks,
            synthetic: [rng.gen_range(5.0..60.0), rng.gen_range(5.0..60.0), rng.gen_range(5.0..60.0)],
        }
    }

    /// cpu, memory and disk usage in percent.
    fn sample(&mut self) -> [f32; 3] {
        match self.source {
            UsageSource::Host => {
                self.system.refresh_cpu_usage();
                self.system.refresh_memory();
                self.disks.refresh(true);
                let cpu = self.system.global_cpu_usage();
                let memory = percent(self.system.used_memory(), self.system.total_memory());
                let (total, available) = self
                    .disks
                    .list()
                    .iter()
                    .fold((0u64, 0u64), |(t, a), d| (t + d.total_space(), a + d.available_space()));
                let disk = percent(total.saturating_sub(available), total);
                [cpu, memory, disk].map(|v| if v.is_finite() { v.clamp(0.0, 100.0) } else { 0.0 })
            }
            UsageSource::Synthetic => {
                let mut rng = rand::thread_rng();
                for v in &mut self.synthetic {
                    *v = (*v + rng.gen_range(-3.0..3.0)).clamp(1.0, 95.0);
                }
                self.synthetic
            }
        }
    }
}

fn percent(used: u64, total: u64) -> f32 {
    if total == 0 {
        0.0
    } else {
        (used as f64 * 100.0 / total as f64) as f32
    }
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
    loop {
        tokio::select! {
            _ = tick.tick() => {
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
                }
                Some(Ok(Some(NodeMessage::Refused { reason }))) => return Err(AgentError::Refused(reason)),
                Some(Ok(Some(NodeMessage::Welcome { .. }))) => return Ok(SessionEnd::Lost),
                Some(Ok(None) | Err(_)) | None => {
                    tracing::warn!(runner_id, endpoint, "lost the node; reconnecting");
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

    use corral_net::quic::node_endpoint;
    use corral_net::runner_session::{
        serve_runner_connection, Assignment, AssignmentPoll, RunnerDirectory, SessionConfig,
    };
    use corral_net::tls::{CertDir, Role};
    use corral_storage::model::Resources;

    use super::*;

    /// A runner's assignments held in memory, with the node-side diff the real directory does
    /// over the replicated state, and every report the session hands over.
    struct Fleet {
        assigned: Mutex<(u64, BTreeMap<String, AssignmentAction>)>,
        reports: Mutex<Vec<HealthReport>>,
    }

    impl RunnerDirectory for Fleet {
        fn authenticate(&self, token: &str) -> Option<String> {
            (token == "token-1").then(|| "runner-1".to_string())
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
        let fleet = Arc::new(Fleet { assigned: Mutex::new((1, assigned)), reports: Mutex::new(Vec::new()) });
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

//! `corral serve`: one node. Opens RocksDB, starts openraft, the gRPC server for peers and the
//! REST server for clients, bootstraps the cluster when asked to, and shuts all of it down on
//! SIGTERM or Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use corral_api::ApiConfig;
use corral_net::{raft_transport_server, GrpcNetworkFactory, RaftLiveness};
use corral_raft_types::{CorralNode, Raft};
use corral_storage::{open_storage, StorageConfig};
use openraft::SnapshotPolicy;
use tokio::sync::watch;

use corral_model::health::SharedHealth;
use corral_net::gossip::{Gossip, GossipConfig};
use corral_net::runner_session::SessionConfig;
use corral_net::tls::ClusterTls;

use crate::cluster::RaftCluster;
use crate::coalescer::CoalescerConfig;
use crate::config::NodeConfig;
use crate::election::{LastLogReader, Timing};
use crate::forwarder::Forwarder;
use crate::health_monitor::MonitorConfig;
use crate::leader::{Leader, PROPOSAL_BATCHING};
use crate::runner_directory::NodeRunnerDirectory;
use crate::scheduler::{Scheduler, SchedulerConfig};

async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

fn raft_config(config: &NodeConfig, timing: &Timing) -> anyhow::Result<openraft::Config> {
    let (election_timeout_min, election_timeout_max) = timing.openraft_election_timeouts_ms();
    let raft = openraft::Config {
        cluster_name: "corral".into(),
        heartbeat_interval: config.heartbeat_ms,
        commit_notice_delay_us: corral_raft_types::commit_notice_delay_us(config.heartbeat_ms),
        // openraft's own election timer is off (the election driver campaigns after a
        // pre-vote); `election_timeout_max` is the short vote lease every voter still enforces.
        election_timeout_min,
        election_timeout_max,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_threshold),
        max_in_snapshot_log_to_keep: config.keep_logs_after_snapshot,
        // A new member becomes a voter only once it is this close to the leader's log
        // (`add_learner` blocks until then): promoted further behind, it could fall past the
        // leader's purge point and need a second snapshot while already counted in the
        // quorum, and a leader failure then would wait for that snapshot (chaos run, stop 28).
        replication_lag_threshold: (config.keep_logs_after_snapshot / 2).clamp(64, 1_000),
        // An entry carries up to a thousand commands, so a lagging follower gets at most 64
        // entries per AppendEntries; the network also splits any call over its byte budget
        // (`corral_net::raft_network::APPEND_ENTRIES_BUDGET_BYTES`, openraft's PayloadTooLarge).
        max_payload_entries: 64,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    raft.validate().context("invalid raft configuration")
}

/// Reads where the log ends (`election::LogPosition`) from a handle on the node's log store.
fn last_log_reader(log_store: corral_storage::LogStore) -> LastLogReader {
    Arc::new(move || {
        let mut log = log_store.clone();
        Box::pin(async move {
            use openraft::storage::RaftLogStorage;
            match log.get_log_state().await {
                Ok(state) => state.last_log_id.as_ref().map(crate::election::log_position),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the last log entry");
                    None
                }
            }
        })
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let metrics = crate::telemetry::install()?;
    let cluster_tls = ClusterTls::load(&config.ca_cert, &config.node_cert, &config.node_key)
        .context("cluster TLS (create the files with `corral certs init` and `corral certs node`)")?;
    let https = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            Some(Arc::new(corral_api::http_server::https_config(cert, key).map_err(anyhow::Error::msg)?))
        }
        _ => None,
    };
    let raft_listen = resolve(&config.raft_addr).await?;
    let api_listener = tokio::net::TcpListener::bind(&config.api_addr)
        .await
        .with_context(|| format!("cannot listen on {} (api)", config.api_addr))?;
    // Bound now so a clash fails the start, not a background task. Every accepted peer
    // connection gets the unacknowledged-data bound (see `corral_net::peer_tcp`).
    let raft_incoming = tonic::transport::server::TcpIncoming::new(raft_listen, true, None)
        .map_err(|e| anyhow::anyhow!("cannot listen on {raft_listen} (raft): {e}"))?;

    let db_dir = config.data_dir.join("raft");
    std::fs::create_dir_all(&db_dir).with_context(|| format!("cannot create {}", db_dir.display()))?;
    let (log_store, state_machine, shared) =
        open_storage(&db_dir, StorageConfig { fsync: config.fsync }).context("cannot open storage")?;

    let liveness = RaftLiveness::default();
    let network = GrpcNetworkFactory::with_tls(&cluster_tls, liveness.clone());
    let clients = network.clients.clone();
    let timing = Timing::from_config(config.heartbeat_ms, config.election_timeout_ms);
    let last_log = last_log_reader(log_store.clone());
    crate::election::never_resume_leadership(&mut log_store.clone(), config.node_id)
        .await
        .context("cannot rewrite the stored vote")?;
    let raft = Raft::new(config.node_id, Arc::new(raft_config(&config, &timing)?), network, log_store, state_machine)
        .await
        .context("cannot start raft")?;

    let health = SharedHealth::default();
    let batching = CoalescerConfig { queue_capacity: config.proposal_queue, ..PROPOSAL_BATCHING };
    let leader = Leader::new(raft.clone(), shared.clone(), batching);
    let scheduler_config = SchedulerConfig { seed: config.scheduler_seed, ..SchedulerConfig::default() };
    let scheduler = Scheduler::start(leader.clone(), shared.clone(), health.clone(), scheduler_config);
    let shared_for_metrics = shared.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // QUIC (runner sessions and gossip) listens on the UDP port of the Raft address, so the
    // Raft membership tells every node where its peers gossip.
    let endpoint = corral_net::quic::node_endpoint(raft_listen, &cluster_tls, Duration::from_secs(10))
        .context("cannot open the QUIC endpoint")?;
    let mut gossip_config = GossipConfig::new(config.node_id, raft_listen);
    gossip_config.suspect_to_down = Duration::from_millis(config.gossip_suspect_ms);
    let gossip = Gossip::start(gossip_config, endpoint.clone(), health.clone(), stop_rx.clone());
    let raft_cluster = Arc::new(RaftCluster {
        node_id: config.node_id,
        raft: raft.clone(),
        leader,
        shared: shared.clone(),
        forwarder: Forwarder::start(clients.clone(), Duration::from_millis(config.request_timeout_ms)),
        clients,
        scheduler,
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        draining: draining.clone(),
        health: health.clone(),
        gossip: Some(gossip.clone()),
        liveness: liveness.clone(),
        election: timing,
        last_log: last_log.clone(),
        hashing: tokio::sync::Mutex::new(()),
        auto_keys: crate::cluster::AutoKeys::random(config.node_id),
    });
    let grpc = {
        let mut stop = stop_rx.clone();
        let server = tonic::transport::Server::builder()
            .tls_config(cluster_tls.grpc_server())
            .context("gRPC TLS")?
            .timeout(Duration::from_secs(30))
            .add_service(raft_transport_server(raft.clone(), Arc::new(raft_cluster.peer_service()), liveness.clone()));
        tokio::spawn(async move {
            use futures::StreamExt;
            let incoming = raft_incoming.map(|accepted| {
                if let Ok(stream) = &accepted {
                    if let Err(e) = corral_net::peer_tcp::bound_unacknowledged(stream) {
                        tracing::warn!(error = %e, "cannot bound unacknowledged data on a peer connection");
                    }
                }
                accepted
            });
            server
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    };

    let driver = crate::election::Driver {
        node_id: config.node_id,
        raft: raft.clone(),
        leader: raft_cluster.leader.clone(),
        liveness,
        link: Arc::new(raft_cluster.clients.clone()),
        timing,
        last_log,
        seed: None,
    };
    tokio::spawn(crate::election::run(driver, stop_rx.clone()));
    if config.bootstrap {
        bootstrap(&raft, &config).await?;
    }

    let (capacity_reports, capacity_rx) = tokio::sync::mpsc::channel(crate::runner_directory::CAPACITY_QUEUE_MAX);
    tokio::spawn(crate::runner_directory::commit_reported_capacity(raft_cluster.clone(), capacity_rx, stop_rx.clone()));
    let directory = Arc::new(NodeRunnerDirectory {
        node_id: config.node_id,
        shared: shared.clone(),
        health: health.clone(),
        gossip: gossip.clone(),
        capacity_reports,
        cluster: raft_cluster.clone(),
    });
    let sessions = SessionConfig {
        report_interval: Duration::from_millis(config.runner_report_interval_ms),
        ..SessionConfig::default()
    };
    tokio::spawn(corral_net::serve_quic(endpoint, gossip.clone(), directory, sessions, stop_rx.clone()));
    tokio::spawn(follow_membership(raft.clone(), gossip.clone(), stop_rx.clone()));

    tokio::spawn(crate::shared_regions::ensure_on_leadership(raft_cluster.clone(), stop_rx.clone()));
    tokio::spawn(crate::telemetry::watch_raft(raft.clone(), stop_rx.clone()));
    tokio::spawn(crate::compaction::trigger_by_commands(
        raft.clone(),
        shared.clone(),
        config.snapshot_threshold,
        config.node_id,
        stop_rx.clone(),
    ));
    let monitor = MonitorConfig {
        silence: (config.runner_silence_ms > 0).then(|| Duration::from_millis(config.runner_silence_ms)),
        interval: Duration::from_millis(500),
    };
    tokio::spawn(crate::health_monitor::run_monitor(
        raft_cluster.clone(),
        gossip.clone(),
        health,
        monitor,
        stop_rx.clone(),
    ));
    if config.reschedule_after_ms > 0 {
        let seed = config.scheduler_seed.map_or_else(rand::random, |s| s.wrapping_add(1));
        tracing::info!(seed, reschedule_after_ms = config.reschedule_after_ms, "rescheduler seed");
        let rescheduler = crate::rescheduler::ReschedulerConfig {
            reschedule_after_ms: config.reschedule_after_ms,
            interval: Duration::from_millis(500),
            seed,
        };
        tokio::spawn(crate::rescheduler::run_rescheduler(raft_cluster.clone(), rescheduler, stop_rx.clone()));
    }
    tokio::spawn(crate::telemetry::watch_state(
        shared_for_metrics,
        db_dir.clone(),
        Duration::from_secs(5),
        stop_rx.clone(),
    ));
    let api_config = ApiConfig {
        admin_key: config.admin_key.clone(),
        max_body_bytes: config.max_body_bytes,
        rate_limit: (config.rate_limit_per_second > 0).then(|| corral_api::rate_limit::RateLimit {
            per_second: f64::from(config.rate_limit_per_second),
            burst: f64::from(config.rate_limit_burst),
        }),
        secret_box: corral_api::secret_box::SecretBox::new(
            config.secrets_key.as_deref().unwrap_or(&format!("derived from the admin key: {}", config.admin_key)),
        ),
        clock: corral_net::now_millis,
    };
    let cluster: Arc<dyn corral_api::ClusterHandle> = raft_cluster.clone();
    let app_state = corral_api::AppState::new(cluster, api_config);
    tokio::spawn(corral_api::key_usage::record_forever(app_state.clone(), stop_rx.clone()));
    let app = corral_api::router_for(app_state)
        .route("/metrics", axum::routing::get(move || std::future::ready(metrics.render())));
    let scheme = if https.is_some() { "https" } else { "http" };
    if https.is_none() {
        tracing::warn!("the REST API serves plain HTTP (plain_http): API keys cross the network in clear");
    }
    tracing::info!(
        node_id = config.node_id,
        api = %config.api_addr,
        scheme,
        raft = %config.raft_addr,
        "corral node serving (cluster traffic: mutual TLS)"
    );
    let http_config = corral_api::http_server::HttpServerConfig {
        tls: https,
        max_connections: config.max_connections,
        ..Default::default()
    };
    let api = tokio::spawn(corral_api::http_server::serve(api_listener, app, http_config, stop_rx.clone()));

    shutdown_signal().await;
    // Drain: report not ready, hand leadership to a caught-up follower, give load balancers
    // time to see /readyz fail, then stop accepting and finish in-flight requests.
    tracing::info!(drain_ms = config.drain_ms, "draining");
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    raft_cluster.hand_off_leadership(Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(config.drain_ms)).await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(12), api).await.is_err() {
        tracing::warn!("api server did not drain within 12 s");
    }
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    match tokio::time::timeout(Duration::from_secs(5), grpc).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "grpc server ended with an error"),
        Err(_) => tracing::warn!("grpc server did not stop within 5 s"),
        _ => {}
    }
    Ok(())
}

/// Keeps gossip's peer list equal to the Raft membership (QUIC on each member's Raft port).
async fn follow_membership(raft: Raft, gossip: Gossip, mut stop: watch::Receiver<bool>) {
    let mut metrics = raft.metrics();
    loop {
        let members: Vec<(u64, String)> = metrics
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.raft_addr.clone()))
            .collect();
        let mut peers = Vec::with_capacity(members.len());
        for (id, addr) in members {
            match resolve(&addr).await {
                Ok(a) => peers.push((id, a)),
                Err(e) => tracing::warn!(node_id = id, error = %e, "gossip peer address does not resolve"),
            }
        }
        gossip.set_peers(peers);
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Initializes the cluster once; on a node that already has state this does nothing, so the
/// same command line can restart the node.
async fn bootstrap(raft: &Raft, config: &NodeConfig) -> anyhow::Result<()> {
    if raft.is_initialized().await.context("raft stopped")? {
        tracing::info!("already initialized; --bootstrap ignored");
        return Ok(());
    }
    let members: BTreeMap<u64, CorralNode> = config
        .peers
        .iter()
        .map(|p| (p.id, CorralNode { raft_addr: p.raft_addr.clone(), api_addr: p.api_addr.clone() }))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(members = config.peers.len(), "cluster initialized"),
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {
            tracing::info!("cluster already initialized")
        }
        Err(e) => return Err(anyhow::anyhow!("cannot initialize the cluster: {e}")),
    }
    Ok(())
}

//! One simulated node: openraft with Corral's state machine on a simulated disk, Corral's
//! leader handle (the coalescing write path and read index), its scheduler, its forwarder
//! and its election driver (pre-vote, fencing), its runner health table, gossip and health
//! monitor ([`crate::fleet`]), all on the simulation's runtime, with the node's default
//! timing. It talks to its peers as `corral serve` does: openraft's network, the forwarder
//! and the election driver call through `corral_net::PeerClients`, and the node serves
//! `corral_net`'s gRPC service (answered by `corral_node::peer_service::PeerService`), over
//! the simulated TCP of [`crate::tcp`] instead of the host's, and without TLS. Its REST API is
//! the node's own: `corral_api`'s router over a `corral_node::cluster::RaftCluster` (the
//! handle `corral serve` gives it), served by `corral_api::http_server` on the node's
//! simulated API port, plain HTTP.
//!
//! A crash loses what the disk had not synced; a restart opens the node again on what
//! survived, as a new incarnation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corral_net::{GrpcNetworkFactory, PeerClients, RaftLiveness};
use corral_node::cluster::{AutoKeys, RaftCluster};
use corral_node::config::{DEFAULT_ELECTION_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS, DEFAULT_REQUEST_TIMEOUT_MS};
use corral_node::election::{Driver, LastLogReader, Timing};
use corral_node::forwarder::Forwarder;
use corral_node::leader::{Leader, PROPOSAL_BATCHING};
use corral_node::peer_service::PeerService;
use corral_node::scheduler::{Scheduler, SchedulerConfig};
use corral_raft_types::{CorralNode, NodeId, Raft};
use corral_storage::{open_memory, MemDisk};
use tokio::sync::{mpsc, watch};

use crate::fleet::{self, NodeHealth};
use crate::network::{Fabric, Listeners};
use crate::tcp::{SimDialer, SimStream, ACCEPT_BACKLOG};
use crate::world::{Handles, World};

/// openraft's configuration as `corral serve` sets it (heartbeat, the short vote lease; the
/// election driver switches openraft's own timer off), with snapshots every 300 entries so
/// that runs exercise snapshot building, log purging and installing.
fn raft_config(timing: &Timing) -> Result<openraft::Config, String> {
    let (election_timeout_min, election_timeout_max) = timing.openraft_election_timeouts_ms();
    let config = openraft::Config {
        cluster_name: "corral-sim".into(),
        heartbeat_interval: timing.heartbeat.as_millis() as u64,
        commit_notice_delay_us: corral_raft_types::commit_notice_delay_us(timing.heartbeat.as_millis() as u64),
        election_timeout_min,
        election_timeout_max,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(300),
        max_in_snapshot_log_to_keep: 50,
        max_payload_entries: 64,
        install_snapshot_timeout: 2_000,
        ..Default::default()
    };
    config.validate().map_err(|e| e.to_string())
}

pub struct SimNode {
    pub id: NodeId,
    pub disk: MemDisk,
    /// The running incarnation's Raft, the switch that stops its tasks, and its servers
    /// (gRPC and REST).
    pub running: Option<(Raft, watch::Sender<bool>, Servers)>,
    /// Incremented at every start.
    pub incarnation: u64,
}

/// A running node's gRPC and REST servers.
pub struct Servers {
    grpc: tokio::task::JoinHandle<()>,
    api: tokio::task::JoinHandle<()>,
}

impl Servers {
    /// The process is gone: its servers accept nothing more (the ends of their connections
    /// go silent, see `crate::tcp`).
    pub fn abort(&self) {
        self.grpc.abort();
        self.api.abort();
    }
}

/// The admin key of the simulated nodes' REST API.
pub const ADMIN_KEY: &str = "sim-admin-key";

pub fn member(id: NodeId) -> CorralNode {
    CorralNode { raft_addr: format!("sim-node-{id}:8901"), api_addr: format!("sim-node-{id}:8801") }
}

/// The node a simulated address (`sim-node-N:port`) names.
pub fn node_of(authority: &str) -> Option<NodeId> {
    authority.strip_prefix("sim-node-")?.split(':').next()?.parse().ok()
}

impl SimNode {
    pub fn new(id: NodeId, sync_delay: Duration) -> SimNode {
        SimNode { id, disk: MemDisk::new(sync_delay), running: None, incarnation: 0 }
    }

    /// Starts (or restarts) the node on its disk; returns what its clients and peers use.
    pub async fn start(&mut self, fabric: &Fabric, world: &World, seed: u64) -> Result<Handles, String> {
        self.incarnation += 1;
        let timing = Timing::from_config(DEFAULT_HEARTBEAT_MS, DEFAULT_ELECTION_TIMEOUT_MS);
        let (log, state_machine, shared) = open_memory(&self.disk).map_err(|e| e.to_string())?;
        let liveness = RaftLiveness::default();
        let clients =
            PeerClients::with_dialer(Arc::new(SimDialer { from: (self.id, self.incarnation), fabric: fabric.clone() }));
        let network = GrpcNetworkFactory { clients: clients.clone(), liveness: liveness.clone() };
        corral_node::election::never_resume_leadership(&mut log.clone(), self.id).await.map_err(|e| e.to_string())?;
        let raft = Raft::new(self.id, Arc::new(raft_config(&timing)?), network, log.clone(), state_machine)
            .await
            .map_err(|e| format!("node {}: raft did not start: {e}", self.id))?;
        let leader = Leader::new(raft.clone(), shared.clone(), PROPOSAL_BATCHING);
        let own_seed = seed.wrapping_mul(31).wrapping_add(self.id * 1_000 + self.incarnation);
        let health = NodeHealth::default();
        let scheduler = Scheduler::start(
            leader.clone(),
            shared.clone(),
            health.table.clone(),
            SchedulerConfig { seed: Some(own_seed), ..SchedulerConfig::default() },
        );
        let last_log: LastLogReader = Arc::new(move || {
            let last = log.last_log_id().as_ref().map(corral_node::election::log_position);
            Box::pin(async move { last })
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let driver = Driver {
            node_id: self.id,
            raft: raft.clone(),
            leader: leader.clone(),
            liveness: liveness.clone(),
            link: Arc::new(clients.clone()),
            timing,
            last_log: last_log.clone(),
            seed: Some(own_seed ^ 0x656c_6563),
        };
        let peer_service = PeerService {
            node_id: self.id,
            raft: raft.clone(),
            leader: leader.clone(),
            scheduler: scheduler.clone(),
            liveness: liveness.clone(),
            last_log: last_log.clone(),
            election: timing,
            clients: clients.clone(),
            draining: Arc::default(),
        };
        let (raft_accept, raft_accepted) = mpsc::channel(ACCEPT_BACKLOG);
        let grpc = tokio::spawn(serve_grpc(
            corral_net::unguarded_raft_transport(raft.clone(), Arc::new(peer_service), liveness.clone()),
            raft_accepted,
        ));
        let request_timeout = Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS);
        let forwarder = Forwarder::start(clients.clone(), request_timeout);
        let cluster = RaftCluster {
            node_id: self.id,
            raft: raft.clone(),
            leader: leader.clone(),
            shared: shared.clone(),
            clients,
            forwarder: forwarder.clone(),
            scheduler: scheduler.clone(),
            request_timeout,
            draining: Arc::default(),
            health: health.table.clone(),
            gossip: None,
            liveness: liveness.clone(),
            election: timing,
            last_log: last_log.clone(),
            hashing: tokio::sync::Mutex::new(()),
            auto_keys: AutoKeys::with_nonce(self.id, &format!("{own_seed:x}")),
        };
        let (api_accept, api_accepted) = mpsc::channel(ACCEPT_BACKLOG);
        let api = tokio::spawn(serve_api(cluster, api_accepted, stop_rx.clone()));
        tokio::spawn(corral_node::election::run(driver, stop_rx.clone()));
        tokio::spawn(fleet::gossip(self.id, health.clone(), fabric.clone(), world.clone(), stop_rx.clone()));
        tokio::spawn(fleet::monitor(self.id, fabric.clone(), world.clone(), stop_rx));
        fabric.set_up(self.id, self.incarnation, Listeners { raft: raft_accept, api: api_accept });
        self.running = Some((raft.clone(), stop_tx, Servers { grpc, api }));
        Ok(Handles {
            raft,
            leader,
            scheduler,
            forwarder,
            shared,
            incarnation: self.incarnation,
            liveness,
            last_log,
            timing,
            health,
        })
    }

    /// Power loss: the node stops at once and its disk keeps only what was synced.
    pub async fn crash(&mut self, fabric: &Fabric) -> usize {
        fabric.set_down(self.id);
        let lost = self.disk.crash();
        if let Some((raft, stop, servers)) = self.running.take() {
            let _ = stop.send(true);
            servers.abort();
            // Its stores already fail; shutting openraft down ends its tasks.
            let _ = raft.shutdown().await;
        }
        lost
    }
}

/// Bootstraps the cluster from node 1 with every node as a voter.
pub async fn bootstrap(nodes: &[SimNode]) -> Result<(), String> {
    let members: BTreeMap<NodeId, CorralNode> = nodes.iter().map(|n| (n.id, member(n.id))).collect();
    let (first, _, _) = nodes.first().and_then(|n| n.running.as_ref()).ok_or("node 1 is not running")?;
    first.initialize(members).await.map_err(|e| format!("initialize: {e}"))
}

/// Serves the node's gRPC service on the connections its listener accepts, as `corral serve`
/// does on its Raft port (with its 30 s request limit).
async fn serve_grpc(service: corral_net::UnguardedRaftTransport, mut accepted: mpsc::Receiver<crate::tcp::SimStream>) {
    let incoming = futures::stream::poll_fn(move |cx| accepted.poll_recv(cx).map(|s| s.map(Ok::<_, std::io::Error>)));
    // It ends when the node crashes (the task is aborted); an accept error cannot happen here.
    let _ = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .layer(tower::util::MapResponseLayer::new(with_simulated_date))
        .add_service(service)
        .serve_with_incoming(incoming)
        .await;
}

/// Gives a gRPC response the `date` header hyper would otherwise stamp from the host's clock
/// (it keeps one the service set). HPACK sends a header value it sent before as a one-byte
/// index and a new one in full, so with the host's date the frames between nodes grew by
/// 20-odd bytes whenever the host's second turned: the host's clock in the simulated
/// network's bytes. A fixed date keeps those bytes equal from run to run (`CORRAL_SIM_SEGMENTS=bytes`);
/// the peers never read it.
fn with_simulated_date<B>(mut response: tonic::codegen::http::Response<B>) -> tonic::codegen::http::Response<B> {
    use tonic::codegen::http::header::{HeaderValue, DATE};
    response.headers_mut().insert(DATE, HeaderValue::from_static("Thu, 01 Jan 2026 00:00:00 GMT"));
    response
}

/// The listener of a node's simulated API port.
struct ApiListener(mpsc::Receiver<SimStream>);

impl corral_api::http_server::Accept for ApiListener {
    type Connection = SimStream;

    async fn accept(&mut self) -> std::io::Result<(SimStream, String)> {
        match self.0.recv().await {
            Some(stream) => Ok((stream, "sim-client".to_string())),
            // The node is gone (its server is aborted with it).
            None => std::future::pending().await,
        }
    }
}

/// Serves the node's REST API (`corral_api`'s router over its `RaftCluster`, as `corral
/// serve` does, in plain HTTP and without the rate limiter) on the connections its API
/// port accepts.
async fn serve_api(cluster: RaftCluster, accepted: mpsc::Receiver<SimStream>, stop: watch::Receiver<bool>) {
    let config = corral_api::ApiConfig {
        admin_key: ADMIN_KEY.to_string(),
        max_body_bytes: corral_node::config::DEFAULT_MAX_BODY_BYTES,
        rate_limit: None,
        secret_box: corral_api::secret_box::SecretBox::new(ADMIN_KEY),
        // Follows the simulated clock on a simulation thread.
        clock: corral_net::now_millis,
    };
    let cluster: Arc<dyn corral_api::ClusterHandle> = Arc::new(cluster);
    let app = corral_api::router(cluster, config);
    let config = corral_api::http_server::HttpServerConfig::default();
    corral_api::http_server::serve_on(ApiListener(accepted), app, config, stop).await;
}

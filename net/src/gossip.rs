//! Node-to-node gossip over QUIC: node liveness (SWIM, by the `foca` crate) and runner health.
//!
//! **Liveness.** Each node runs one `foca` instance (SWIM with suspicion and indirect probes).
//! Its packets travel as unreliable QUIC datagrams on a connection to each peer, which is what
//! SWIM expects of UDP. A node's identity is (node id, QUIC address, incarnation); a node
//! declared down renews its identity and rejoins, and down members are re-announced to, so a
//! healed partition merges again. Peers to announce to come from the Raft membership
//! ([`Gossip::set_peers`]): the QUIC address of a node is the UDP port of its Raft address.
//!
//! **Runner health.** A report is a last-writer-wins register per runner, versioned by the
//! runner's sequence number ([`corral_storage::health::HealthTable`]). The node a runner
//! reports to pushes the reports it received to every peer every [`GossipConfig::flush_interval`]
//! (one uni stream per batch, postcard); each peer link also pushes its whole table when it
//! (re)connects and every [`GossipConfig::full_sync_interval`] (anti-entropy), so a node that
//! was partitioned or restarted converges. With 3–7 nodes a direct push to every peer is both
//! the fastest and the cheapest fan-out; relaying is left to the anti-entropy pass.
//!
//! Everything is bounded: each peer link has a bounded queue (a full queue drops, and the next
//! full sync repairs), frames are size-limited, and no task waits on a slow peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_storage::health::{HealthReport, SharedHealth};
use corral_storage::model::now_millis;
use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
use quinn::{Connection, Endpoint};
use rand09::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::quic::{MAX_FRAME_BYTES, SERVER_NAME};

/// Reports per health batch (keeps each batch well under [`MAX_FRAME_BYTES`]).
const BATCH_REPORTS: usize = 4_000;
const LINK_QUEUE: usize = 1_024;

/// Gossip timing.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    pub node_id: u64,
    /// The QUIC address peers reach this node on.
    pub advertise: SocketAddr,
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    /// How long a suspect has to refute before it is declared down.
    pub suspect_to_down: Duration,
    pub flush_interval: Duration,
    pub full_sync_interval: Duration,
}

impl GossipConfig {
    pub fn new(node_id: u64, advertise: SocketAddr) -> Self {
        GossipConfig {
            node_id,
            advertise,
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(250),
            suspect_to_down: Duration::from_secs(2),
            flush_interval: Duration::from_millis(100),
            full_sync_interval: Duration::from_secs(15),
        }
    }
}

/// A node as SWIM knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: u64,
    pub addr: SocketAddr,
    /// Bumped when the node restarts (start time) or is declared down and rejoins.
    pub incarnation: u64,
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity { incarnation: self.incarnation.wrapping_add(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// Liveness of one node, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Alive,
    Suspect,
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipMember {
    pub node_id: u64,
    pub addr: SocketAddr,
    pub liveness: Liveness,
}

/// A batch of health reports on a gossip uni stream.
#[derive(Debug, Serialize, Deserialize)]
struct HealthBatch {
    from_node: u64,
    reports: Vec<HealthReport>,
}

/// Decodes a health batch as a peer sent it (postcard); never panics on any input.
fn decode_health_batch(bytes: &[u8]) -> Result<HealthBatch, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The reports of a gossip health batch that [`Gossip`] would merge, in order: what the
/// receive path keeps of any input. For fuzzing and tests.
pub fn well_formed_reports(bytes: &[u8]) -> Result<(u64, Vec<HealthReport>), postcard::Error> {
    let batch = decode_health_batch(bytes)?;
    Ok((batch.from_node, batch.reports.into_iter().filter(HealthReport::is_well_formed).collect()))
}

enum FocaInput {
    Data(Bytes),
    Timer(Timer<NodeIdentity>),
    Announce(NodeIdentity),
}

enum LinkMessage {
    Datagram(Bytes),
    Batch(Bytes),
}

struct PeerLink {
    tx: mpsc::Sender<LinkMessage>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    config: GossipConfig,
    endpoint: Endpoint,
    health: SharedHealth,
    foca_tx: mpsc::Sender<FocaInput>,
    links: Mutex<HashMap<SocketAddr, PeerLink>>,
    /// Reports this node received from its own runners since the last flush.
    outbox: Mutex<Vec<HealthReport>>,
    members: watch::Sender<Vec<GossipMember>>,
    /// Peers from the Raft membership (node id, address), this node excluded.
    peers: Mutex<Vec<(u64, SocketAddr)>>,
}

/// Handle to the node's gossip.
#[derive(Clone)]
pub struct Gossip {
    inner: Arc<Inner>,
}

fn foca_config(config: &GossipConfig) -> foca::Config {
    let mut c = foca::Config::simple();
    c.probe_period = config.probe_period;
    c.probe_rtt = config.probe_rtt;
    c.num_indirect_probes = NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN);
    c.max_transmissions = NonZeroU8::new(8).unwrap_or(NonZeroU8::MIN);
    c.suspect_to_down_after = config.suspect_to_down;
    c.remove_down_after = Duration::from_secs(120);
    // Well under a QUIC datagram on any path (quinn's default MTU is 1200).
    c.max_packet_size = NonZeroUsize::new(1_000).unwrap_or(NonZeroUsize::MIN);
    c.notify_down_members = true;
    c.periodic_announce =
        Some(foca::PeriodicParams { frequency: Duration::from_secs(10), num_members: NonZeroUsize::MIN });
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(3),
        num_members: NonZeroUsize::MIN.saturating_add(1),
    });
    c.periodic_gossip = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(200),
        num_members: NonZeroUsize::MIN.saturating_add(2),
    });
    c
}

impl Gossip {
    /// Starts the SWIM loop and the health flusher. Incoming gossip connections are handed to
    /// [`Gossip::serve_connection`] by the node's accept loop.
    pub fn start(
        config: GossipConfig,
        endpoint: Endpoint,
        health: SharedHealth,
        stop: watch::Receiver<bool>,
    ) -> Gossip {
        let (foca_tx, foca_rx) = mpsc::channel(4_096);
        let (members, _) = watch::channel(Vec::new());
        let gossip = Gossip {
            inner: Arc::new(Inner {
                config,
                endpoint,
                health,
                foca_tx,
                links: Mutex::new(HashMap::new()),
                outbox: Mutex::new(Vec::new()),
                members,
                peers: Mutex::new(Vec::new()),
            }),
        };
        tokio::spawn(gossip.clone().run_foca(foca_rx, stop.clone()));
        tokio::spawn(gossip.clone().run_flusher(stop.clone()));
        tokio::spawn(gossip.clone().run_reannounce(stop));
        gossip
    }

    /// Queues a report this node received from one of its runners (already merged locally).
    pub fn publish(&self, report: HealthReport) {
        let mut outbox = self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: past this, the next full sync carries the news.
        if outbox.len() < 200_000 {
            outbox.push(report);
        }
    }

    /// Liveness of every node this one knows, itself included.
    pub fn members(&self) -> Vec<GossipMember> {
        let mut all = self.inner.members.borrow().clone();
        if !all.iter().any(|m| m.node_id == self.inner.config.node_id) {
            all.push(GossipMember {
                node_id: self.inner.config.node_id,
                addr: self.inner.config.advertise,
                liveness: Liveness::Alive,
            });
        }
        all.sort_by_key(|m| m.node_id);
        all
    }

    /// Sets the peers to gossip with (from the Raft membership); links to removed peers close.
    pub fn set_peers(&self, peers: Vec<(u64, SocketAddr)>) {
        let own = self.inner.config.advertise;
        let peers: Vec<(u64, SocketAddr)> =
            peers.into_iter().filter(|(id, addr)| *addr != own && *id != self.inner.config.node_id).collect();
        let new: Vec<(u64, SocketAddr)> = {
            let mut current = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
            if *current == peers {
                return;
            }
            let new = peers.iter().filter(|p| !current.contains(p)).cloned().collect();
            *current = peers.clone();
            new
        };
        {
            let mut links = self.inner.links.lock().unwrap_or_else(|p| p.into_inner());
            links.retain(|addr, link| {
                let keep = peers.iter().any(|(_, a)| a == addr);
                if !keep {
                    link.task.abort();
                }
                keep
            });
        }
        for (node_id, addr) in new {
            self.announce(node_id, addr);
        }
    }

    fn announce(&self, node_id: u64, addr: SocketAddr) {
        let _ = self.inner.foca_tx.try_send(FocaInput::Announce(NodeIdentity { node_id, addr, incarnation: 0 }));
    }

    /// The link to `addr`, started on first use.
    fn link(&self, addr: SocketAddr) -> mpsc::Sender<LinkMessage> {
        let mut links = self.inner.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(link) = links.get(&addr).filter(|l| !l.task.is_finished()) {
            return link.tx.clone();
        }
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let task = tokio::spawn(self.clone().run_link(addr, rx));
        links.insert(addr, PeerLink { tx: tx.clone(), task });
        tx
    }

    /// Serves an incoming gossip connection: SWIM datagrams and health batches.
    pub async fn serve_connection(self, connection: Connection) {
        loop {
            tokio::select! {
                datagram = connection.read_datagram() => match datagram {
                    Ok(data) => {
                        metrics::counter!("corral_gossip_bytes_received_total", "kind" => "swim").increment(data.len() as u64);
                        if self.inner.foca_tx.try_send(FocaInput::Data(data)).is_err() {
                            metrics::counter!("corral_gossip_dropped_total", "kind" => "swim_in").increment(1);
                        }
                    }
                    Err(_) => break,
                },
                stream = connection.accept_uni() => match stream {
                    Ok(mut recv) => {
                        let gossip = self.clone();
                        tokio::spawn(async move {
                            match recv.read_to_end(MAX_FRAME_BYTES).await {
                                Ok(bytes) => {
                                    metrics::counter!("corral_gossip_bytes_received_total", "kind" => "health").increment(bytes.len() as u64);
                                    gossip.receive_batch(&bytes);
                                }
                                Err(e) => tracing::debug!(error = %e, "gossip stream read failed"),
                            }
                        });
                    }
                    Err(_) => break,
                },
            }
        }
    }

    fn receive_batch(&self, bytes: &[u8]) {
        let batch = match decode_health_batch(bytes) {
            Ok(batch) => batch,
            Err(e) => {
                metrics::counter!("corral_gossip_undecodable_total").increment(1);
                tracing::warn!(error = %e, "undecodable gossip batch");
                return;
            }
        };
        let now = Instant::now();
        let now_ms = now_millis();
        let mut merged = 0u64;
        let mut table = self.inner.health.write();
        for report in batch.reports {
            if !report.is_well_formed() {
                continue;
            }
            let delay = now_ms.saturating_sub(report.received_at) as f64 / 1_000.0;
            if table.merge(report, now) {
                merged += 1;
                metrics::histogram!("corral_gossip_report_delay_seconds").record(delay);
            }
        }
        drop(table);
        metrics::counter!("corral_gossip_reports_merged_total").increment(merged);
        tracing::trace!(from = batch.from_node, merged, "health batch");
    }

    fn encode_batches(&self, reports: &[HealthReport]) -> Vec<Bytes> {
        reports
            .chunks(BATCH_REPORTS)
            .filter_map(|chunk| {
                let batch = HealthBatch { from_node: self.inner.config.node_id, reports: chunk.to_vec() };
                postcard::to_allocvec(&batch).ok().map(Bytes::from)
            })
            .collect()
    }

    async fn run_flusher(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.inner.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let reports = std::mem::take(&mut *self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner()));
            if reports.is_empty() {
                continue;
            }
            let batches = self.encode_batches(&reports);
            let peers: Vec<SocketAddr> =
                self.inner.peers.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, a)| *a).collect();
            for addr in peers {
                let link = self.link(addr);
                for batch in &batches {
                    if link.try_send(LinkMessage::Batch(batch.clone())).is_err() {
                        metrics::counter!("corral_gossip_dropped_total", "kind" => "health_out").increment(1);
                    }
                }
            }
        }
    }

    /// Announces again to configured peers SWIM does not count as alive: covers a node that
    /// started before its peers, and a partition that outlived the down-member memory.
    async fn run_reannounce(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let alive: Vec<u64> = self
                .inner
                .members
                .borrow()
                .iter()
                .filter(|m| m.liveness != Liveness::Down)
                .map(|m| m.node_id)
                .collect();
            let peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for (node_id, addr) in peers {
                if !alive.contains(&node_id) {
                    self.announce(node_id, addr);
                }
            }
        }
    }

    async fn run_foca(self, mut rx: mpsc::Receiver<FocaInput>, mut stop: watch::Receiver<bool>) {
        let config = &self.inner.config;
        let identity = NodeIdentity { node_id: config.node_id, addr: config.advertise, incarnation: now_millis() };
        let rng = rand09::rngs::StdRng::from_os_rng();
        let mut foca = Foca::new(identity, foca_config(config), rng, PostcardCodec);
        let mut runtime = AccumulatingRuntime::new();
        loop {
            let input = tokio::select! {
                input = rx.recv() => match input { Some(i) => i, None => return },
                _ = stop.wait_for(|s| *s) => {
                    let _ = foca.leave_cluster(&mut runtime);
                    self.drain_runtime(&mut runtime);
                    return;
                }
            };
            let result = match input {
                FocaInput::Data(data) => foca.handle_data(&data, &mut runtime),
                FocaInput::Timer(timer) => foca.handle_timer(timer, &mut runtime),
                FocaInput::Announce(dst) => foca.announce(dst, &mut runtime),
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "swim input refused");
            }
            self.drain_runtime(&mut runtime);
            let members: Vec<GossipMember> = foca
                .iter_membership_state()
                .map(|m| GossipMember {
                    node_id: m.id().node_id,
                    addr: m.id().addr,
                    liveness: match m.state() {
                        foca::State::Alive => Liveness::Alive,
                        foca::State::Suspect => Liveness::Suspect,
                        foca::State::Down => Liveness::Down,
                    },
                })
                .collect();
            self.inner.members.send_if_modified(|current| {
                if *current == members {
                    false
                } else {
                    for state in [Liveness::Alive, Liveness::Suspect, Liveness::Down] {
                        let n = members.iter().filter(|m| m.liveness == state).count();
                        let label = format!("{state:?}").to_lowercase();
                        metrics::gauge!("corral_gossip_members", "state" => label).set(n as f64);
                    }
                    *current = members;
                    true
                }
            });
        }
    }

    fn drain_runtime(&self, runtime: &mut AccumulatingRuntime<NodeIdentity>) {
        while let Some((dst, data)) = runtime.to_send() {
            metrics::counter!("corral_gossip_messages_sent_total", "kind" => "swim").increment(1);
            if self.link(dst.addr).try_send(LinkMessage::Datagram(data)).is_err() {
                metrics::counter!("corral_gossip_dropped_total", "kind" => "swim_out").increment(1);
            }
        }
        while let Some((delay, timer)) = runtime.to_schedule() {
            let tx = self.inner.foca_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(FocaInput::Timer(timer)).await;
            });
        }
        while let Some(notification) = runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => {
                    tracing::info!(node_id = id.node_id, addr = %id.addr, "gossip: node up")
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::warn!(node_id = id.node_id, addr = %id.addr, "gossip: node down")
                }
                OwnedNotification::Defunct => tracing::warn!("gossip: this node was declared down; rejoining"),
                OwnedNotification::Rename(old, new) => {
                    tracing::debug!(
                        node_id = new.node_id,
                        from = old.incarnation,
                        to = new.incarnation,
                        "gossip: rename"
                    )
                }
                _ => {}
            }
        }
    }

    /// One peer: keeps a connection, sends SWIM datagrams and health batches, and pushes the
    /// whole health table on every (re)connect and every full-sync interval.
    async fn run_link(self, addr: SocketAddr, mut rx: mpsc::Receiver<LinkMessage>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let connecting = match self.inner.endpoint.connect(addr, SERVER_NAME) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "gossip: cannot dial");
                    return;
                }
            };
            let connection = match tokio::time::timeout(Duration::from_secs(2), connecting).await {
                Ok(Ok(c)) => c,
                _ => {
                    // Drop what queued meanwhile: SWIM tolerates loss, the next full sync
                    // repairs health.
                    let until = tokio::time::Instant::now() + backoff;
                    while let Ok(Some(_)) = tokio::time::timeout_at(until, rx.recv()).await {}
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            tracing::debug!(%addr, "gossip link up");
            self.full_sync(&connection).await;
            let mut sync = tokio::time::interval(self.inner.config.full_sync_interval);
            sync.tick().await;
            loop {
                tokio::select! {
                    message = rx.recv() => match message {
                        None => return,
                        Some(LinkMessage::Datagram(data)) => {
                            let len = data.len() as u64;
                            match connection.send_datagram(data) {
                                Ok(()) => metrics::counter!("corral_gossip_bytes_sent_total", "kind" => "swim").increment(len),
                                Err(quinn::SendDatagramError::ConnectionLost(_)) => break,
                                Err(e) => tracing::debug!(%addr, error = %e, "gossip datagram not sent"),
                            }
                        }
                        Some(LinkMessage::Batch(bytes)) => {
                            if !send_uni(&connection, &bytes).await {
                                break;
                            }
                        }
                    },
                    _ = sync.tick() => self.full_sync(&connection).await,
                    _ = connection.closed() => break,
                }
            }
            tracing::debug!(%addr, "gossip link lost; redialing");
        }
    }

    async fn full_sync(&self, connection: &Connection) {
        let reports: Vec<HealthReport> = self.inner.health.read().iter().map(|e| e.report.clone()).collect();
        for batch in self.encode_batches(&reports) {
            if !send_uni(connection, &batch).await {
                return;
            }
        }
    }
}

/// Sends `bytes` on a fresh uni stream; false when the connection is gone.
async fn send_uni(connection: &Connection, bytes: &[u8]) -> bool {
    let sent = tokio::time::timeout(Duration::from_secs(5), async {
        let mut send = connection.open_uni().await.map_err(|e| e.to_string())?;
        send.write_all(bytes).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    })
    .await;
    match sent {
        Ok(Ok(())) => {
            metrics::counter!("corral_gossip_bytes_sent_total", "kind" => "health").increment(bytes.len() as u64);
            metrics::counter!("corral_gossip_messages_sent_total", "kind" => "health").increment(1);
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "gossip batch not sent");
            false
        }
        Err(_) => {
            tracing::debug!("gossip batch timed out");
            false
        }
    }
}

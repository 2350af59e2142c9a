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
//! runner's sequence number ([`corral_model::health::HealthTable`]). The node a runner
//! reports to pushes the reports it received to every peer every [`GossipConfig::flush_interval`]
//! (one uni stream per batch, postcard; an empty batch when there are none, so that each peer
//! knows up to when this node has passed on its runners' reports: [`Gossip::batches_arrived`]);
//! each peer link also pushes its whole table when it
//! (re)connects and every [`GossipConfig::full_sync_interval`] (anti-entropy), so a node that
//! was partitioned or restarted converges. With 3–7 nodes a direct push to every peer is both
//! the fastest and the cheapest fan-out; relaying is left to the anti-entropy pass.
//!
//! Everything is bounded: each peer link has a bounded queue (a full queue drops, and the next
//! full sync repairs), frames are size-limited, and no task waits on a slow peer.
//!
//! Code map:
//! - this file: the public API ([`Gossip`], [`GossipConfig`], the member status types
//!   [`GossipMember`] and [`Liveness`]) and the state the parts below share;
//! - `swim`: liveness — the SWIM identity ([`NodeIdentity`]), the loop that feeds `foca` its
//!   datagrams, timers and announcements, and the member list it publishes;
//! - `health_spread`: runner health — the batch message and its codec, the periodic push of
//!   fresh reports, the full-table push (anti-entropy) and the merge of what peers send;
//! - `peer_links`: the QUIC links — one task per peer that dials, redials and sends datagrams
//!   and uni streams, and the serving side of a connection a peer opened.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_model::health::{HealthReport, SharedHealth};
use quinn::{Connection, Endpoint};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

mod health_spread;
mod peer_links;
mod swim;

pub use health_spread::well_formed_reports;
pub use swim::NodeIdentity;

use peer_links::PeerLink;
use swim::FocaInput;

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

/// Liveness of one node, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Alive,
    Suspect,
    Down,
}

impl Liveness {
    pub const ALL: [Liveness; 3] = [Liveness::Alive, Liveness::Suspect, Liveness::Down];

    /// The name the admin API and metrics use (as serialized).
    pub fn label(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Suspect => "suspect",
            Liveness::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipMember {
    pub node_id: u64,
    pub addr: SocketAddr,
    pub liveness: Liveness,
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
    /// Node id → when its latest health batch arrived here.
    batches_arrived: Mutex<HashMap<u64, Instant>>,
}

/// Handle to the node's gossip.
#[derive(Clone)]
pub struct Gossip {
    inner: Arc<Inner>,
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
                batches_arrived: Mutex::new(HashMap::new()),
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

    /// When each peer's latest health batch arrived here (peers send one every flush
    /// interval, empty when their runners sent nothing).
    pub fn batches_arrived(&self) -> HashMap<u64, Instant> {
        self.inner.batches_arrived.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
        self.close_links_except(&peers);
        for (node_id, addr) in new {
            self.announce(node_id, addr);
        }
    }

    /// Serves an incoming gossip connection: SWIM datagrams and health batches.
    pub async fn serve_connection(self, connection: Connection) {
        self.serve_incoming(connection).await
    }
}

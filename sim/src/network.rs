//! The simulated network between in-process nodes: a [`Fabric`] that the nemesis
//! reconfigures, carrying the bytes of the nodes' gRPC and REST connections ([`crate::tcp`])
//! and their gossip. Every decision (drop, delay) is drawn from the fabric's seeded generator, and every
//! delay is a tokio sleep on the simulation's paused clock.
//!
//! A segment from `a` to `b` is lost when the link `a → b` is cut, when `b` is down, or with
//! the link-loss probability; TCP then retransmits it ([`crate::tcp`]). A gossip message is
//! simply lost. A paused node's traffic, both ways, waits until it resumes and is then
//! delivered late.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use corral_raft_types::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};

use crate::tcp::{Life, SimStream};

/// How long a lost gossip message takes to be given up on.
const LOST_AFTER: Duration = Duration::from_millis(100);

/// The network's current faults.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Links `(from, to)` that lose every message.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Probability that a message on any link is lost.
    pub loss: f64,
    /// Extra one-way latency, drawn per message from this range (milliseconds).
    pub latency_ms: (u64, u64),
}

/// The host the clients run on (a node id no node has). Its links are never cut and lose
/// nothing: the nemesis's faults are between the nodes; a client sees a node that is down,
/// paused or restarted.
pub const CLIENT_HOST: NodeId = 0;
/// The client host's one life.
pub const CLIENT_LIFE: Life = (CLIENT_HOST, 0);

/// A node's listening ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// gRPC from its peers (Raft, forwarding, elections).
    Raft,
    /// The REST API.
    Api,
}

/// The backlogs of a node's listening ports.
pub struct Listeners {
    pub raft: mpsc::Sender<SimStream>,
    pub api: mpsc::Sender<SimStream>,
}

/// A node that is up: its life, and its ports' backlogs.
struct Listening {
    incarnation: u64,
    listeners: Listeners,
}

struct FabricState {
    rng: StdRng,
    up: BTreeMap<NodeId, Listening>,
    faults: Faults,
    messages: u64,
    lost: u64,
}

/// The simulated network shared by every node (cheap to clone).
#[derive(Clone)]
pub struct Fabric {
    state: Arc<Mutex<FabricState>>,
    /// Nodes that are paused: their traffic waits.
    paused: watch::Sender<BTreeSet<NodeId>>,
}

/// What the fabric decided for one gossip message.
enum Route {
    Lost,
    Deliver { delay: Duration },
}

/// What becomes of a connection attempt when it reaches the node.
pub enum Syn {
    /// The node listens: the life it is in, and its backlog.
    Listening(Life, mpsc::Sender<SimStream>),
    /// The node is down behind a working link: its port refuses.
    Refused,
    /// The attempt was lost (a cut link, link loss).
    Lost,
}

/// What becomes of one TCP segment when it reaches its peer.
pub enum SegmentFate {
    Delivered,
    /// Delivered, but the acknowledgements do not come back (the return path is cut).
    DeliveredUnacknowledged,
    /// Lost: retransmit.
    Unacknowledged,
    /// The peer is another life now: its kernel resets the connection.
    Reset,
    /// The sender's life has ended: a crashed node sends nothing more.
    SenderGone,
}

impl Fabric {
    pub fn new(seed: u64) -> Fabric {
        let state = FabricState {
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
            up: BTreeMap::new(),
            faults: Faults { latency_ms: (1, 3), ..Faults::default() },
            messages: 0,
            lost: 0,
        };
        Fabric { state: Arc::new(Mutex::new(state)), paused: watch::Sender::new(BTreeSet::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, FabricState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Node `id` is up in `incarnation`; connections to its ports go to `listeners`.
    pub fn set_up(&self, id: NodeId, incarnation: u64, listeners: Listeners) {
        self.lock().up.insert(id, Listening { incarnation, listeners });
    }

    pub fn set_down(&self, id: NodeId) {
        self.lock().up.remove(&id);
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn set_paused(&self, id: NodeId, paused: bool) {
        self.paused.send_modify(|p| {
            if paused {
                p.insert(id);
            } else {
                p.remove(&id);
            }
        });
    }

    pub fn is_paused(&self, id: NodeId) -> bool {
        self.paused.borrow().contains(&id)
    }

    /// (messages sent, messages lost) so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.messages, s.lost)
    }

    /// Waits while `a` or `b` is paused.
    pub async fn wait_unpaused(&self, a: NodeId, b: NodeId) {
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|p| !p.contains(&a) && !p.contains(&b)).await;
    }

    fn route(&self, from: NodeId, to: NodeId) -> Route {
        let mut s = self.lock();
        let delay = Self::draw_latency(&mut s);
        if Self::draw_loss(&mut s) {
            return Route::Lost;
        }
        if s.faults.cut.contains(&(from, to)) || !s.up.contains_key(&from) || !s.up.contains_key(&to) {
            s.lost += 1;
            return Route::Lost;
        }
        Route::Deliver { delay }
    }

    fn draw_latency(s: &mut FabricState) -> Duration {
        let (low, high) = s.faults.latency_ms;
        Duration::from_millis(if high > low { s.rng.gen_range(low..=high) } else { low })
    }

    /// One link's latency now, drawn from the fault profile.
    pub fn latency(&self) -> Duration {
        Self::draw_latency(&mut self.lock())
    }

    /// Whether a message on any link is lost now (link loss); counts the message.
    fn draw_loss(s: &mut FabricState) -> bool {
        s.messages += 1;
        let loss = s.faults.loss;
        let lost = loss > 0.0 && s.rng.gen_bool(loss.min(1.0));
        if lost {
            s.lost += 1;
        }
        lost
    }

    /// Whether a message between `a` and `b` is lost now (link loss; the client host's
    /// links lose nothing); counts the message.
    fn draw_link_loss(s: &mut FabricState, a: NodeId, b: NodeId) -> bool {
        if a == CLIENT_HOST || b == CLIENT_HOST {
            s.messages += 1;
            return false;
        }
        Self::draw_loss(s)
    }

    /// A connection attempt from `from` reaching `port` of node `to`.
    pub fn syn(&self, from: Life, to: NodeId, port: Port) -> Syn {
        let mut s = self.lock();
        if Self::draw_link_loss(&mut s, from.0, to) {
            return Syn::Lost;
        }
        if s.faults.cut.contains(&(from.0, to)) || s.faults.cut.contains(&(to, from.0)) {
            s.lost += 1;
            return Syn::Lost;
        }
        match s.up.get(&to) {
            Some(listening) => {
                let accept = match port {
                    Port::Raft => &listening.listeners.raft,
                    Port::Api => &listening.listeners.api,
                };
                Syn::Listening((to, listening.incarnation), accept.clone())
            }
            None => Syn::Refused,
        }
    }

    fn alive(s: &FabricState, life: Life) -> bool {
        life == CLIENT_LIFE || s.up.get(&life.0).is_some_and(|l| l.incarnation == life.1)
    }

    /// A segment of a connection between two lives reaching `to`.
    pub fn segment_fate(&self, from: Life, to: Life) -> SegmentFate {
        let mut s = self.lock();
        if !Self::alive(&s, from) {
            return SegmentFate::SenderGone;
        }
        if Self::draw_link_loss(&mut s, from.0, to.0) {
            return SegmentFate::Unacknowledged;
        }
        if s.faults.cut.contains(&(from.0, to.0)) {
            s.lost += 1;
            return SegmentFate::Unacknowledged;
        }
        if !Self::alive(&s, to) {
            if s.up.contains_key(&to.0) {
                return SegmentFate::Reset;
            }
            s.lost += 1;
            return SegmentFate::Unacknowledged;
        }
        if s.faults.cut.contains(&(to.0, from.0)) {
            SegmentFate::DeliveredUnacknowledged
        } else {
            SegmentFate::Delivered
        }
    }

    /// Whether acknowledgements from `to` cannot reach `from` (the return path is cut).
    pub fn acknowledgements_cut(&self, from: Life, to: Life) -> bool {
        self.lock().faults.cut.contains(&(to.0, from.0))
    }

    /// Carries a gossip message `from → to` (QUIC in `corral serve`, not simulated as such),
    /// runs `request` there, and carries its answer back; `None` when lost.
    pub async fn carry<T>(&self, from: NodeId, to: NodeId, request: impl std::future::Future<Output = T>) -> Option<T> {
        if from == to {
            return Some(request.await);
        }
        if !self.hop(from, to).await {
            return None;
        }
        let answer = request.await;
        self.hop(to, from).await.then_some(answer)
    }

    /// One way of [`Fabric::carry`]: waits out a pause, then the link's latency; `false` (after
    /// [`LOST_AFTER`]) when the message is lost.
    async fn hop(&self, from: NodeId, to: NodeId) -> bool {
        self.wait_unpaused(from, to).await;
        match self.route(from, to) {
            Route::Lost => {
                tokio::time::sleep(LOST_AFTER).await;
                false
            }
            Route::Deliver { delay } => {
                tokio::time::sleep(delay).await;
                true
            }
        }
    }
}

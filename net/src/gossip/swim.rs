//! Node liveness by SWIM (the `foca` crate). Owns the node's SWIM identity ([`NodeIdentity`]),
//! foca's tuning, and the one task that drives the `foca` instance: it takes datagrams from
//! peers, timers it scheduled and announcements as `FocaInput`s, hands what foca wants sent
//! to the peer links as datagrams, schedules foca's timers, and publishes the member list
//! ([`GossipMember`]s) when it changes. It also re-announces to configured peers it does not
//! count as alive. It never touches a connection; the peer links carry its bytes.

use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
use rand09::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::peer_links::LinkMessage;
use super::{Gossip, GossipConfig, GossipMember, Liveness};
use crate::now_millis;

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

pub(super) enum FocaInput {
    Data(Bytes),
    Timer(Timer<NodeIdentity>),
    Announce(NodeIdentity),
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
    pub(super) fn announce(&self, node_id: u64, addr: SocketAddr) {
        let _ = self.inner.foca_tx.try_send(FocaInput::Announce(NodeIdentity { node_id, addr, incarnation: 0 }));
    }

    /// Hands a SWIM datagram a peer sent to the foca loop; a full queue drops it.
    pub(super) fn receive_datagram(&self, data: Bytes) {
        if self.inner.foca_tx.try_send(FocaInput::Data(data)).is_err() {
            metrics::counter!("corral_gossip_dropped_total", "kind" => "swim_in").increment(1);
        }
    }

    /// Announces again to configured peers SWIM does not count as alive: covers a node that
    /// started before its peers, and a partition that outlived the down-member memory.
    pub(super) async fn run_reannounce(self, mut stop: watch::Receiver<bool>) {
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

    pub(super) async fn run_foca(self, mut rx: mpsc::Receiver<FocaInput>, mut stop: watch::Receiver<bool>) {
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
                    for state in Liveness::ALL {
                        let n = members.iter().filter(|m| m.liveness == state).count();
                        metrics::gauge!("corral_gossip_members", "state" => state.label()).set(n as f64);
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
}

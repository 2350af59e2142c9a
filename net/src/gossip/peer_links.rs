//! The QUIC links between gossiping nodes. Owns one link per peer: a task with a bounded queue
//! (`LINK_QUEUE`) that dials the peer, redials with backoff when the connection is lost, sends
//! SWIM packets as unreliable datagrams and health batches one per uni stream (each write under
//! a deadline), and starts the anti-entropy push on every (re)connect and full-sync interval.
//! Also owns the serving side of a connection a peer opened: datagrams go to the SWIM loop and
//! uni streams, read up to [`MAX_FRAME_BYTES`], to the health merge. What the bytes mean is for
//! `swim` and `health_spread`; this file only moves them.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use quinn::Connection;
use tokio::sync::mpsc;

use super::Gossip;
use crate::quic::{MAX_FRAME_BYTES, SERVER_NAME};

const LINK_QUEUE: usize = 1_024;

pub(super) enum LinkMessage {
    Datagram(Bytes),
    Batch(Bytes),
}

pub(super) struct PeerLink {
    tx: mpsc::Sender<LinkMessage>,
    task: tokio::task::JoinHandle<()>,
}

impl Gossip {
    /// The link to `addr`, started on first use.
    pub(super) fn link(&self, addr: SocketAddr) -> mpsc::Sender<LinkMessage> {
        let mut links = self.inner.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(link) = links.get(&addr).filter(|l| !l.task.is_finished()) {
            return link.tx.clone();
        }
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let task = tokio::spawn(self.clone().run_link(addr, rx));
        links.insert(addr, PeerLink { tx: tx.clone(), task });
        tx
    }

    /// Closes the links to every address not among `peers`.
    pub(super) fn close_links_except(&self, peers: &[(u64, SocketAddr)]) {
        let mut links = self.inner.links.lock().unwrap_or_else(|p| p.into_inner());
        links.retain(|addr, link| {
            let keep = peers.iter().any(|(_, a)| a == addr);
            if !keep {
                link.task.abort();
            }
            keep
        });
    }

    /// The serving side of [`Gossip::serve_connection`]: SWIM datagrams to the SWIM loop, each
    /// uni stream (one health batch) to the health merge, until the connection closes.
    pub(super) async fn serve_incoming(self, connection: Connection) {
        loop {
            tokio::select! {
                datagram = connection.read_datagram() => match datagram {
                    Ok(data) => {
                        metrics::counter!("corral_gossip_bytes_received_total", "kind" => "swim").increment(data.len() as u64);
                        self.receive_datagram(data);
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
}

/// Sends `bytes` on a fresh uni stream; false when the connection is gone.
pub(super) async fn send_uni(connection: &Connection, bytes: &[u8]) -> bool {
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

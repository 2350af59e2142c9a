//! Spreading runner health reports. Owns the gossip message that carries them (`HealthBatch`,
//! postcard, at most `BATCH_REPORTS` reports each) and its decoding for any input; the
//! flusher that pushes the reports this node's own runners sent to every peer each
//! [`GossipConfig::flush_interval`](super::GossipConfig::flush_interval); the anti-entropy pass
//! that pushes the whole health table on a link's (re)connect and each full-sync interval; and
//! the merge of what peers send into the health table, with the report-delay metric, and the
//! arrival time of each peer's latest batch. A node sends a batch every flush interval, empty
//! when its runners sent nothing: a relay's batches carry what its runners sent before them,
//! so the leader measures a runner's silence up to its relay's latest batch, and a relay that
//! is starved or behind does not make its runners look silent (see
//! `corral_model::health::health_verdict`). The peer
//! links decide when and on which connection; this file decides what the bytes are.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use corral_model::health::HealthReport;
use quinn::Connection;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::peer_links::{send_uni, LinkMessage};
use super::Gossip;
use crate::now_millis;

/// Reports per health batch (keeps each batch well under
/// [`MAX_FRAME_BYTES`](crate::quic::MAX_FRAME_BYTES)).
const BATCH_REPORTS: usize = 4_000;

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

impl Gossip {
    pub(super) fn receive_batch(&self, bytes: &[u8]) {
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
        // After the merge: what the batch carried is in the table before its time counts.
        self.inner.batches_arrived.lock().unwrap_or_else(|p| p.into_inner()).insert(batch.from_node, now);
        metrics::counter!("corral_gossip_reports_merged_total").increment(merged);
        tracing::trace!(from = batch.from_node, merged, "health batch");
    }

    /// The batches that carry `reports`; one empty batch when there are none.
    fn encode_batches(&self, reports: &[HealthReport]) -> Vec<Bytes> {
        let empty: &[HealthReport] = &[];
        let chunks: Vec<&[HealthReport]> =
            if reports.is_empty() { vec![empty] } else { reports.chunks(BATCH_REPORTS).collect() };
        chunks
            .into_iter()
            .filter_map(|chunk| {
                let batch = HealthBatch { from_node: self.inner.config.node_id, reports: chunk.to_vec() };
                postcard::to_allocvec(&batch).ok().map(Bytes::from)
            })
            .collect()
    }

    pub(super) async fn run_flusher(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.inner.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            // Sent even when empty: the batch tells each peer that this node relays, and up to
            // when it has passed on what its runners sent.
            let reports = std::mem::take(&mut *self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner()));
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

    /// Anti-entropy: pushes the whole health table on `connection`, one batch per uni stream;
    /// stops at the first batch the connection does not take.
    pub(super) async fn full_sync(&self, connection: &Connection) {
        let reports: Vec<HealthReport> = self.inner.health.read().iter().map(|e| e.report.clone()).collect();
        for batch in self.encode_batches(&reports) {
            if !send_uni(connection, &batch).await {
                return;
            }
        }
    }
}

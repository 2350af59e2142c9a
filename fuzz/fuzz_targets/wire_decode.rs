//! What peers and runners send over QUIC: gossip health batches and runner-session frames
//! (postcard), and what peers send over gRPC: forwarded proposals in Corral's binary encoding
//! (`corral_model::codec`, MessagePack). Decoding must never panic or allocate without bound;
//! health reports that survive the receive path's checks are merged into a health table as
//! gossip would.
#![no_main]

use std::time::Instant;

use corral_net::gossip::well_formed_reports;
use corral_net::runner_session::{AgentMessage, NodeMessage};
use corral_model::health::HealthTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_from, reports)) = well_formed_reports(data) {
        let mut table = HealthTable::default();
        let now = Instant::now();
        for report in reports {
            table.merge(report, now);
        }
        assert!(table.len() <= data.len(), "more entries than input bytes");
    }
    let _ = postcard::from_bytes::<AgentMessage>(data);
    let _ = postcard::from_bytes::<NodeMessage>(data);
    let mut marked = Vec::with_capacity(data.len() + 1);
    marked.push(corral_model::codec::BINARY_MARK);
    marked.extend_from_slice(data);
    let _ = corral_model::codec::decode::<Vec<corral_model::Proposal>>(&marked);
});

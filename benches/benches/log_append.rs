//! RocksDB log append as the Raft log store does it: one synced (or not) write batch of
//! entries. A scheduler batch of 1,000 placements is one entry of about 250 KB.

use corral_benches::{fleet, placements};
use corral_model::{Command, Proposal};
use corral_raft_types::TypeConfig;
use corral_storage::{open_storage, StorageConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

fn entry(index: u64, proposal: &Proposal) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(proposal.clone().into()),
    }
}

fn log_append(c: &mut Criterion) {
    let state = fleet(100);
    let small = Proposal::new(Command::PlaceSandboxes { placements: placements(&state, 1, 0) }, 1);
    let batch = Proposal::new(Command::PlaceSandboxes { placements: placements(&state, 1_000, 0) }, 1);
    let mut group = c.benchmark_group("log_append");
    group.sample_size(20);
    for fsync in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _sm, _shared) = open_storage(dir.path(), StorageConfig { fsync }).expect("open");
        let mut index = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("one_entry_1_placement_fsync_{fsync}"), |b| {
            b.iter(|| {
                index += 1;
                log.write_entries([entry(index, &small)]).expect("write")
            })
        });
        group.throughput(Throughput::Elements(1_000));
        group.bench_function(format!("one_entry_1000_placements_fsync_{fsync}"), |b| {
            b.iter(|| {
                index += 1;
                log.write_entries([entry(index, &batch)]).expect("write")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, log_append);
criterion_main!(benches);

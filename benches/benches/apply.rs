//! `apply` of one `PlaceSandboxes` entry of 1,000 placements onto a state of 10,000 runners:
//! what every replica does per scheduler batch.

use corral_benches::{fleet, placements};
use corral_model::{apply, Command, Proposal};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn apply_batch(c: &mut Criterion) {
    let state = fleet(10_000);
    let batch = Proposal::new(Command::PlaceSandboxes { placements: placements(&state, 1_000, 0) }, 2);
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("place_sandboxes_1000_on_10000_runners", |b| {
        b.iter_batched_ref(|| state.clone(), |s| apply(s, &batch), BatchSize::LargeInput)
    });
    // The same entry as a replica receives it: decoded from the JSON of the log.
    let wire = serde_json::to_vec(&batch).unwrap_or_default();
    group.bench_function("decode_and_apply_1000", |b| {
        b.iter_batched_ref(
            || state.clone(),
            |s| {
                let p: Proposal = serde_json::from_slice(&wire).unwrap_or_else(|_| batch.clone());
                apply(s, &p)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, apply_batch);
criterion_main!(benches);

//! `apply` of one `PlaceSandboxes` entry of 1,000 placements onto a state of 10,000 runners:
//! what every replica does per scheduler batch.

use corral_benches::{fleet, placements};
use corral_model::{apply, ApplyResult, Command, Outcome, Proposal};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// Every placement of the batch applied: a batch whose placements were refused would measure
/// a cheaper path than the one replicas run.
fn all_placed(result: ApplyResult) -> ApplyResult {
    match &result {
        Ok(Outcome::Placed(results)) if results.len() == 1_000 && results.iter().all(Result::is_ok) => {}
        other => panic!("the benchmark batch did not apply in full: {other:?}"),
    }
    result
}

fn apply_batch(c: &mut Criterion) {
    let state = fleet(10_000);
    let batch = Proposal::new(Command::PlaceSandboxes { placements: placements(&state, 1_000, 0) }, 2);
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("place_sandboxes_1000_on_10000_runners", |b| {
        b.iter_batched_ref(|| state.clone(), |s| all_placed(apply(s, &batch)), BatchSize::LargeInput)
    });
    // The same entry as a replica receives it: decoded from the JSON of the log.
    let wire = serde_json::to_vec(&batch).unwrap_or_default();
    group.bench_function("decode_and_apply_1000", |b| {
        b.iter_batched_ref(
            || state.clone(),
            |s| {
                let Ok(p) = serde_json::from_slice::<Proposal>(&wire) else { panic!("the log entry does not decode") };
                all_placed(apply(s, &p))
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, apply_batch);
criterion_main!(benches);

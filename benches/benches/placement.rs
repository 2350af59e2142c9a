//! Placement core throughput: placements per second on one core, at 1k, 10k and 100k runners.

use corral_benches::{fleet, RUNNER_CAPACITY, SANDBOX};
use corral_model::placement::RegionPlacementIndex;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::SeedableRng;

const BATCH: usize = 10_000;

fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement");
    for runners in [1_000usize, 10_000, 100_000] {
        // Runners start a quarter full so the ranking has real spread.
        let mut index = RegionPlacementIndex::default();
        for i in 0..runners {
            let used = corral_model::Resources { cpu: (i % 16) as u64, memory_gib: 0, disk_gib: 0, gpu: 0 };
            index.insert(&format!("runner-{i:06}"), RUNNER_CAPACITY, used);
        }
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(format!("place_{BATCH}_on_{runners}_runners"), |b| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(42);
            b.iter_batched_ref(
                || index.clone(),
                |index| {
                    for _ in 0..BATCH {
                        criterion::black_box(index.place(SANDBOX, &mut rng));
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();

    // Building a region's index from the replicated state (done once per region per batch).
    let mut group = c.benchmark_group("index_build");
    for runners in [1_000usize, 10_000] {
        let state = fleet(runners);
        group.throughput(Throughput::Elements(runners as u64));
        group.bench_function(format!("build_{runners}"), |b| {
            b.iter(|| RegionPlacementIndex::build(state.runners_in_region("bench")))
        });
    }
    group.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);

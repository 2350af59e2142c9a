//! Placement core throughput: placements per second on one core, at 1k, 10k and 100k runners,
//! at the capacity edge (only a few big runners far down the ranking can take a request), and
//! with tag constraints at 10k runners (a common tag, and a rare tag with GPUs).
//! Every placement is checked: a benchmark whose placements failed would measure nothing.

use corral_benches::{fleet, RUNNER_CAPACITY, SANDBOX};
use corral_model::placement::{IndexedRunner, RegionPlacementIndex, SCORE_MAX};
use corral_model::Resources;
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
                        assert!(criterion::black_box(index.place(SANDBOX, &mut rng)).is_some(), "placed");
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    // The capacity edge: 9,900 small runners half full rank first; a request only the 100 big
    // ones (half full too, ranked last) can hold is found by the free-cpu fallback.
    let small = Resources { cpu: 4, memory_gib: 8, disk_gib: 40, gpu: 0 };
    let big = Resources { cpu: 64, memory_gib: 256, disk_gib: 2_000, gpu: 0 };
    let half =
        |r: Resources| Resources { cpu: r.cpu / 2, memory_gib: r.memory_gib / 2, disk_gib: r.disk_gib / 2, gpu: 0 };
    let mut edge = RegionPlacementIndex::default();
    for i in 0..9_900 {
        edge.insert(&format!("small-{i:05}"), small, half(small));
    }
    for i in 0..100 {
        edge.insert(&format!("big-{i:03}"), big, half(big));
    }
    let large = Resources { cpu: 8, memory_gib: 16, disk_gib: 80, gpu: 0 };
    // Each big runner has room for four: 400 placements fill the fleet's edge exactly.
    const EDGE_BATCH: usize = 400;
    group.throughput(Throughput::Elements(EDGE_BATCH as u64));
    group.bench_function(format!("place_{EDGE_BATCH}_at_capacity_edge_on_10000_runners"), |b| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        b.iter_batched_ref(
            || edge.clone(),
            |index| {
                for _ in 0..EDGE_BATCH {
                    assert!(criterion::black_box(index.place(large, &mut rng)).is_some(), "a big runner has room");
                }
                assert!(index.place(large, &mut rng).is_none(), "and then none has");
            },
            BatchSize::LargeInput,
        )
    });

    // Tag constraints at 10,000 runners: every runner in one of four zones; 100 of them (the
    // `pool=gpu` ones) also have 16 GPUs. A zone request matches a quarter of the fleet (the
    // ranked scan with a filter); a GPU-pool request matches 1 % (its list scanned whole).
    let mut tagged = RegionPlacementIndex::default();
    for i in 0..10_000usize {
        let id = format!("runner-{i:06}");
        let mut tags =
            std::collections::BTreeMap::from([("zone".to_string(), ["a", "b", "c", "d"][i % 4].to_string())]);
        let gpu = if i % 100 == 0 { 16 } else { 0 };
        if gpu > 0 {
            tags.insert("pool".into(), "gpu".into());
        }
        tagged.insert_runner(IndexedRunner {
            runner_id: &id,
            capacity: Resources { gpu, ..RUNNER_CAPACITY },
            allocated: Resources { cpu: (i % 16) as u64, ..Resources::default() },
            usage_cap: SCORE_MAX,
            tags,
            ..IndexedRunner::default()
        });
    }
    let zone_a = std::collections::BTreeMap::from([("zone".to_string(), "a".to_string())]);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("place_{BATCH}_with_a_zone_tag_on_10000_runners"), |b| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        b.iter_batched_ref(
            || tagged.clone(),
            |index| {
                for _ in 0..BATCH {
                    let placed = index.place_matching(SANDBOX, &zone_a, &mut rng);
                    assert!(criterion::black_box(placed).is_some(), "a zone-a runner has room");
                }
            },
            BatchSize::LargeInput,
        )
    });
    let gpu_pool = std::collections::BTreeMap::from([("pool".to_string(), "gpu".to_string())]);
    let gpu_sandbox = Resources { gpu: 1, ..SANDBOX };
    // 100 GPU runners × 16 GPUs: 1,600 fit; 1,000 leave some room.
    const GPU_BATCH: usize = 1_000;
    group.throughput(Throughput::Elements(GPU_BATCH as u64));
    group.bench_function(format!("place_{GPU_BATCH}_with_a_rare_tag_and_gpu_on_10000_runners"), |b| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        b.iter_batched_ref(
            || tagged.clone(),
            |index| {
                for _ in 0..GPU_BATCH {
                    let placed = index.place_matching(gpu_sandbox, &gpu_pool, &mut rng);
                    assert!(criterion::black_box(placed).is_some_and(|id| id.ends_with("00")), "a GPU-pool runner");
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    // Building a region's index from the replicated state (done once per region per batch).
    let mut group = c.benchmark_group("index_build");
    for runners in [1_000usize, 10_000] {
        let state = fleet(runners);
        group.throughput(Throughput::Elements(runners as u64));
        group.bench_function(format!("build_{runners}"), |b| {
            b.iter(|| RegionPlacementIndex::for_region(&state, "bench"))
        });
    }
    group.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);

//! # corral-benches
//!
//! Benchmarks are code (see the README's "Performance" section for the commands):
//! - `benches/placement.rs`: the placement core at 1k, 10k and 100k runners (placements/s);
//! - `benches/apply.rs`: `apply` of a 1,000-sandbox `PlaceSandboxes` batch;
//! - `benches/log_append.rs`: RocksDB log append, fsync on and off;
//! - `src/bin/loadgen.rs`: end-to-end REST load against a running cluster.
//!
//! [`fleet`] builds the synthetic fleets the benchmarks share; [`http1`] is loadgen's lean
//! keep-alive connection.

pub mod http1;

use corral_model::{
    apply, Command, NewRegion, NewRunner, Placement, Proposal, RegionType, Resources, RunnerState, State,
};

/// Capacity of every synthetic runner.
pub const RUNNER_CAPACITY: Resources = Resources { cpu: 64, memory_gib: 256, disk_gib: 2_000, gpu: 0 };
/// The default sandbox size.
pub const SANDBOX: Resources = Resources { cpu: 1, memory_gib: 1, disk_gib: 3, gpu: 0 };

/// A state with one custom region `bench` of `runners` ready runners.
pub fn fleet(runners: usize) -> State {
    let mut state = State::default();
    let region = Command::CreateRegion(NewRegion::new("bench", "org", "bench", RegionType::Custom));
    assert!(apply(&mut state, &Proposal::new(region, 1)).is_ok(), "the benchmark region");
    for i in 0..runners {
        let id = format!("runner-{i:06}");
        let create = Command::CreateRunner(NewRunner::new(&id, "bench", &id, format!("hash-{id}"), RUNNER_CAPACITY));
        assert!(apply(&mut state, &Proposal::new(create, 1)).is_ok(), "runner {i}");
        let ready = Command::SetRunnerState { id, state: RunnerState::Ready };
        assert!(apply(&mut state, &Proposal::new(ready, 1)).is_ok(), "runner {i} ready");
    }
    assert_eq!(state.runners.len(), runners, "every benchmark runner was created");
    state
}

/// `n` placements of default sandboxes spread round-robin over the fleet's runners.
pub fn placements(state: &State, n: usize, offset: usize) -> Vec<Placement> {
    let runners: Vec<&String> = state.runners.keys().collect();
    (0..n)
        .map(|i| Placement {
            sandbox_id: format!("sandbox-{:09}", offset + i),
            organization_id: "org".into(),
            target: "bench".into(),
            region_id: "bench".into(),
            runner_id: runners[(offset + i) % runners.len()].clone(),
            resources: SANDBOX,
            labels: Default::default(),
            runner_tags: Default::default(),
            idempotency_key: None,
            credential: None,
        })
        .collect()
}

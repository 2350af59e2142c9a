//! The simulation as a test: a few seeds pass, a seed replays to the same trace, and a
//! default build refuses to inject bugs. The CI step runs a thousand seeds and the
//! injected-bug controls (`.ci/sim`).

use corral_sim::{run_seed, Options};

#[test]
fn seeds_pass_and_each_injects_at_least_ten_faults() {
    let options = Options::default();
    for seed in [1, 2, 3] {
        let report = run_seed(seed, &options);
        assert!(report.passed(), "seed {seed}: {:?}\nfaults: {:?}", report.violations, report.faults);
        assert!(report.faults.len() >= 10, "seed {seed}: only {} faults", report.faults.len());
        assert!(report.acknowledged_writes > 0, "seed {seed}: no write was acknowledged");
        assert!(report.steps > 100, "seed {seed}: the invariants were checked only {} times", report.steps);
    }
}

#[test]
fn a_seed_replays_to_the_same_trace_and_another_seed_does_not() {
    let options = Options::default();
    let first = run_seed(7, &options);
    let again = run_seed(7, &options);
    let other = run_seed(8, &options);
    assert!(!first.trace_hash.is_empty());
    assert_eq!(
        first.trace_hash, again.trace_hash,
        "seed 7 ran differently twice ({} vs {} events)",
        first.events, again.events
    );
    assert_ne!(first.trace_hash, other.trace_hash);
}

#[cfg(not(feature = "injected-bugs"))]
#[test]
fn a_default_build_refuses_to_inject_a_bug() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corral-sim"))
        .args(["--seed", "1", "--bug", "ack-before-commit"])
        .output()
        .expect("corral-sim runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("without the `injected-bugs` feature"));
}

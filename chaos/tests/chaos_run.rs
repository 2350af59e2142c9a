//! The `corral-chaos` binary end to end: real nodes (in network namespaces when the test runs
//! as root), haproxy, the seeded nemesis and every checker. A short run must pass; a control
//! run whose clients read with `?consistency=stale` must be caught.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn chaos(out: &Path, args: &[&str]) -> (bool, String, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_corral-chaos"))
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run corral-chaos");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let report = std::fs::read_to_string(out.join("report.json"))
        .unwrap_or_else(|e| panic!("no report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    let report: Value = serde_json::from_str(&report).expect("report is JSON");
    (output.status.success(), format!("{stdout}\n{stderr}"), report)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Partitions need root; without it the run must say so explicitly (`auto` would fail).
fn network() -> &'static str {
    if is_root() {
        "auto"
    } else {
        "loopback"
    }
}

#[test]
fn a_short_run_under_faults_passes_every_checker() {
    let dir = tempfile::Builder::new().prefix("corral-chaos-").tempdir().expect("tempdir");
    let (ok, output, report) =
        chaos(dir.path(), &["--nodes", "3", "--duration", "45s", "--seed", "1", "--network", network()]);
    assert!(ok, "chaos run failed:\n{output}");
    assert_eq!(report["passed"], true, "{output}");
    assert_eq!(report["violations"].as_array().map(Vec::len), Some(0), "{output}");
    let faults: Vec<&Value> =
        report["faults"].as_array().expect("faults").iter().filter(|f| f["injected"] == true).collect();
    assert!(faults.len() >= 5, "only {} faults injected:\n{output}", faults.len());
    assert!(faults.iter().all(|f| f["recovered_ns"].is_u64()), "{output}");
    // Runners were marked unresponsive under the faults, so rescheduling ran under them too.
    assert!(report["runner_flaps"].as_u64().is_some_and(|n| n >= 3), "{output}");
    let kinds: Vec<&str> = faults.iter().filter_map(|f| f["kind"].as_str()).collect();
    assert!(kinds.contains(&"kill") && kinds.contains(&"pause"), "{kinds:?}");
    if is_root() {
        assert!(kinds.iter().any(|k| ["split", "isolate", "one-way"].contains(k)), "no partition in {kinds:?}");
    }
    let ops: u64 = report["operations"]
        .as_object()
        .expect("operations")
        .values()
        .flat_map(|m| m.as_object().into_iter().flat_map(|m| m.values().filter_map(Value::as_u64)))
        .sum();
    assert!(ops > 1_000, "only {ops} operations");
    assert!(report["keys_checked"].as_u64().unwrap_or(0) > 10, "{output}");
    let hashes = report["state_hashes"].as_object().expect("hashes");
    assert_eq!(hashes.len(), 3);
    let svg = std::fs::read_to_string(dir.path().join("timeline.svg")).expect("timeline");
    assert!(svg.starts_with("<svg") && svg.contains("node 3"), "timeline");
}

#[test]
fn stale_reads_are_caught_by_the_checker() {
    let dir = tempfile::Builder::new().prefix("corral-chaos-stale-").tempdir().expect("tempdir");
    let (ok, output, report) = chaos(
        dir.path(),
        &["--nodes", "3", "--duration", "25s", "--seed", "3", "--stale-reads", "--network", network()],
    );
    assert!(!ok, "a run with stale reads passed:\n{output}");
    let violations = report["violations"].as_array().expect("violations");
    assert!(violations.iter().any(|v| v["kind"] == "not_linearizable"), "{output}");
}

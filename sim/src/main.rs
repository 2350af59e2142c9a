//! `corral-sim`: runs seeds of the whole-cluster simulation.
//!
//! - `corral-sim --seed 42`: one seed, with its faults and violations (a replay);
//! - `corral-sim --seeds 0..1000`: many, on `--threads` threads; fails if any seed fails;
//! - `--double-run`: runs each seed twice and fails unless both traces hash alike;
//! - `CORRAL_SIM_LOG=debug` (a tracing filter) prints the nodes' logs, `CORRAL_SIM_TRACE=1`
//!   every traced event, `CORRAL_SIM_SEGMENTS=1` every TCP segment (`=bytes`: with its bytes);
//! - `--bug NAME --expect-found` (builds with the `injected-bugs` feature): a control run,
//!   which fails unless the simulation finds the injected bug.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use corral_model::injected::InjectedBug;
use corral_sim::{run_seed, Options, SeedReport};

#[derive(Parser, Debug)]
#[command(name = "corral-sim", about = "Seeded whole-cluster simulation of Corral")]
struct Args {
    /// One seed to run (and print in full).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A range of seeds, `A..B` (B excluded).
    #[arg(long, default_value = "0..100")]
    seeds: String,
    /// Threads running seeds side by side (each seed runs on one thread).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Simulated seconds of faults per seed.
    #[arg(long, default_value_t = 15)]
    safety_seconds: u64,
    /// Nodes per cluster (default: each seed picks 3 or 5).
    #[arg(long)]
    nodes: Option<usize>,
    /// Run every seed twice and require identical trace hashes.
    #[arg(long)]
    double_run: bool,
    /// Switch on an injected bug (builds with the `injected-bugs` feature only):
    /// ack-before-commit, read-without-read-index, skip-capacity-recheck, flush-before-fsync.
    #[arg(long)]
    bug: Option<String>,
    /// A control run: succeed only if some seed finds a violation.
    #[arg(long, requires = "bug")]
    expect_found: bool,
    /// Stop taking new seeds once this many have failed (a control: caught this often).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Print every seed's trace hash (to compare two runs of a range line by line).
    #[arg(long)]
    hashes: bool,
}

fn parse_range(text: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = text.split_once("..").ok_or_else(|| format!("--seeds '{text}': expected A..B"))?;
    let a: u64 = a.trim().parse().map_err(|e| format!("--seeds '{text}': {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("--seeds '{text}': {e}"))?;
    if b <= a {
        return Err(format!("--seeds '{text}': empty range"));
    }
    Ok(a..b)
}

fn switch_on(bug: Option<&str>) -> Result<Option<InjectedBug>, String> {
    let Some(name) = bug else { return Ok(None) };
    let bug = InjectedBug::parse(name).ok_or_else(|| {
        let names: Vec<&str> = InjectedBug::ALL.iter().map(|b| b.name()).collect();
        format!("unknown bug '{name}' (one of: {})", names.join(", "))
    })?;
    #[cfg(feature = "injected-bugs")]
    {
        corral_model::injected::inject(Some(bug));
        Ok(Some(bug))
    }
    #[cfg(not(feature = "injected-bugs"))]
    {
        Err(format!(
            "--bug {}: this corral-sim was built without the `injected-bugs` feature \
             (cargo run -p corral-sim --release --features injected-bugs -- ...)",
            bug.name()
        ))
    }
}

/// What the checker that must catch `bug` reports (a violation's text contains one of these).
fn catches(bug: InjectedBug) -> &'static [&'static str] {
    match bug {
        // An answer before the commit: an acknowledged write that a leader change drops.
        InjectedBug::AckBeforeCommit => &["LostWrite", "NotLinearizable"],
        // A deposed leader answers reads from its own, stale, state.
        InjectedBug::ReadWithoutReadIndex => &["NotLinearizable"],
        InjectedBug::SkipCapacityRecheck => &["over capacity"],
        // A node loses entries it had reported durable: committed history changes under it.
        InjectedBug::FlushBeforeFsync => &["differ at applied index", "LostWrite", "NotLinearizable", "Diverged"],
    }
}

fn print_one(report: &SeedReport) {
    println!(
        "seed {}: {} nodes, fault kinds {:?}, {} faults, {} operations ({} acknowledged writes), {} checks, \
         {} messages ({} lost), {} unsynced writes lost in crashes, {} agents killed, {} false demotions",
        report.seed,
        report.nodes,
        report.fault_kinds,
        report.faults.len(),
        report.operations,
        report.acknowledged_writes,
        report.steps,
        report.messages.0,
        report.messages.1,
        report.unsynced_lost,
        report.agent_kills,
        report.false_demotions.len()
    );
    for f in &report.faults {
        println!("  fault at {f}");
    }
    for d in &report.false_demotions {
        println!("  false demotion at {d}");
    }
    for v in &report.violations {
        println!("  VIOLATION {v}");
    }
    println!("  trace {} ({} events)", report.trace_hash, report.events);
}

/// A seed's report, and its trace hash's second run when `--double-run` asked for one.
type SeedOutcome = (SeedReport, Option<String>);

fn main() {
    // The nodes' own logs, for reading a replay: `CORRAL_SIM_LOG=debug` (a tracing filter).
    // Without timestamps: the host's clock means nothing here, and two runs then diff clean.
    if std::env::var_os("CORRAL_SIM_LOG").is_some() {
        tracing_subscriber::fmt()
            .without_time()
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("CORRAL_SIM_LOG"))
            .init();
    }
    let args = Args::parse();
    let bug = match switch_on(args.bug.as_deref()) {
        Ok(bug) => bug,
        Err(e) => {
            eprintln!("corral-sim: {e}");
            std::process::exit(2);
        }
    };
    let options = Options { safety: Duration::from_secs(args.safety_seconds), nodes: args.nodes, ..Options::default() };
    if let Some(seed) = args.seed {
        let report = run_seed(seed, &options);
        print_one(&report);
        if args.double_run {
            let again = run_seed(seed, &options);
            println!("second run: trace {}", again.trace_hash);
            if again.trace_hash != report.trace_hash {
                eprintln!("corral-sim: seed {seed} is not deterministic");
                std::process::exit(1);
            }
        }
        let failed = if args.expect_found { report.passed() } else { !report.passed() };
        std::process::exit(i32::from(failed));
    }
    let range = match parse_range(&args.seeds) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corral-sim: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(range.start));
    let results: Arc<Mutex<Vec<SeedOutcome>>> = Arc::default();
    let threads: Vec<_> = (0..args.threads.max(1))
        .map(|_| {
            let (next, results, options) = (next.clone(), results.clone(), options.clone());
            let (end, double, stop_after) = (range.end, args.double_run, args.stop_after);
            let signs: &'static [&'static str] = bug.map_or(&[], catches);
            std::thread::spawn(move || loop {
                let counts = |r: &SeedReport| {
                    !r.passed()
                        && (signs.is_empty() || r.violations.iter().any(|v| signs.iter().any(|s| v.contains(s))))
                };
                let failed_so_far = results.lock().map_or(0, |r| r.iter().filter(|(r, _)| counts(r)).count());
                if stop_after.is_some_and(|n| failed_so_far >= n) {
                    break;
                }
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= end {
                    break;
                }
                let report = run_seed(seed, &options);
                let second = double.then(|| run_seed(seed, &options).trace_hash);
                if let Ok(mut r) = results.lock() {
                    r.push((report, second));
                }
            })
        })
        .collect();
    for t in threads {
        if t.join().is_err() {
            eprintln!("corral-sim: a seed thread panicked");
            std::process::exit(1);
        }
    }
    let mut results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    results.sort_by_key(|(r, _)| r.seed);
    let failed: Vec<&SeedReport> = results.iter().map(|(r, _)| r).filter(|r| !r.passed()).collect();
    let faults: usize = results.iter().map(|(r, _)| r.faults.len()).sum();
    let fewest_faults = results.iter().map(|(r, _)| r.faults.len()).min().unwrap_or(0);
    let operations: usize = results.iter().map(|(r, _)| r.operations).sum();
    let agent_kills: usize = results.iter().map(|(r, _)| r.agent_kills).sum();
    let false_demotions: usize = results.iter().map(|(r, _)| r.false_demotions.len()).sum();
    let seeds_with_false_demotions: Vec<u64> =
        results.iter().filter(|(r, _)| !r.false_demotions.is_empty()).map(|(r, _)| r.seed).collect();
    let mismatched: Vec<u64> = results
        .iter()
        .filter(|(r, second)| second.as_ref().is_some_and(|s| *s != r.trace_hash))
        .map(|(r, _)| r.seed)
        .collect();
    println!(
        "{} seeds ({}..{}) in {:.1} s on {} threads: {} passed, {} failed; {} faults (at least {} per seed), {} client operations",
        results.len(),
        range.start,
        range.end,
        started.elapsed().as_secs_f64(),
        args.threads,
        results.len() - failed.len(),
        failed.len(),
        faults,
        fewest_faults,
        operations
    );
    println!(
        "runner health: {agent_kills} agents killed; {false_demotions} false demotions (a runner marked unresponsive \
         while its agent reported) in {} seeds{}",
        seeds_with_false_demotions.len(),
        if seeds_with_false_demotions.is_empty() {
            String::new()
        } else {
            format!(", first {:?}", &seeds_with_false_demotions[..seeds_with_false_demotions.len().min(10)])
        }
    );
    if args.double_run {
        println!(
            "double run: {} of {} seeds gave identical trace hashes",
            results.len() - mismatched.len(),
            results.len()
        );
    }
    if args.hashes {
        for (report, _) in &results {
            println!("  seed {} trace {} ({} events)", report.seed, report.trace_hash, report.events);
        }
    }
    for report in &failed {
        let first = report.violations.first().map(String::as_str).unwrap_or("");
        println!("  seed {} failed: {first} (replay: corral-sim --seed {})", report.seed, report.seed);
    }
    let code = match bug {
        Some(bug) if args.expect_found => {
            let signs = catches(bug);
            let found: Vec<u64> = failed
                .iter()
                .filter(|r| r.violations.iter().any(|v| signs.iter().any(|s| v.contains(s))))
                .map(|r| r.seed)
                .collect();
            // From each starting seed, how many seeds a search takes to reach a finding one.
            let mut distances: Vec<u64> = (range.start..=found.last().copied().unwrap_or(range.start))
                .filter_map(|start| found.iter().find(|f| **f >= start).map(|f| f - start + 1))
                .collect();
            distances.sort_unstable();
            let median = distances.get(distances.len() / 2).copied().unwrap_or(0);
            match found.first() {
                Some(first) => {
                    println!("control {}: median seeds to a finding, over starting seeds: {median}", bug.name());
                    println!(
                        "control {}: caught ({}) by {} of {} seeds, first by seed {first} ({} seeds in)",
                        bug.name(),
                        signs.join(" / "),
                        found.len(),
                        results.len(),
                        first - range.start + 1
                    );
                    i32::from(!mismatched.is_empty())
                }
                None => {
                    println!("control {}: NOT caught ({}) in {} seeds", bug.name(), signs.join(" / "), results.len());
                    1
                }
            }
        }
        _ => i32::from(!failed.is_empty() || !mismatched.is_empty()),
    };
    std::process::exit(code);
}

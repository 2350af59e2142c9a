//! `corral-chaos`: one chaos run against real `corral serve` processes; exits non-zero when a
//! checker finds a violation or the run cannot finish.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use corral_chaos::run::{self, NetworkChoice, RunConfig};

#[derive(Parser, Debug)]
#[command(name = "corral-chaos", about = "Kill, pause, partition and wipe corral nodes under load; check the history")]
struct Args {
    /// Cluster size (3 or 5 are the useful ones).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// How long faults are injected: `90s`, `30m`, or seconds.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule and the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent clients (half through haproxy, half straight to a node).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// The `corral` binary; default: next to this one, built with cargo if missing.
    #[arg(long, env = "CORRAL_BIN")]
    corral_bin: Option<PathBuf>,
    /// Where the report, the timeline, the history and the node logs go.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// `auto` or `namespaces` (partitions; an error when namespaces are not available) or
    /// `loopback` (explicitly without partitions).
    #[arg(long, default_value = "auto", value_parser = parse_network)]
    network: NetworkChoice,
    /// Linearizability search steps per key before a key is reported inconclusive.
    #[arg(long, default_value_t = 5_000_000)]
    check_budget: u64,
    /// Control run: clients read with `?consistency=stale`, which a partition makes stale; the
    /// checker is expected to report violations.
    #[arg(long)]
    stale_reads: bool,
    /// Check the register history of an earlier run (its `history.json`) again, with
    /// --check-budget, instead of running.
    #[arg(long, value_name = "HISTORY_JSON")]
    recheck: Option<PathBuf>,
}

/// `--recheck`: the linearizability checker over a saved history.
fn recheck(path: &std::path::Path, budget: u64) -> ExitCode {
    #[derive(serde::Deserialize)]
    struct Saved {
        registers: Vec<corral_chaos::history::Op>,
    }
    let saved: Saved = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| format!("not a chaos history: {e}")))
    {
        Ok(saved) => saved,
        Err(e) => {
            eprintln!("corral-chaos: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let history = corral_chaos::history::History { ops: saved.registers };
    let started = std::time::Instant::now();
    let violations = corral_chaos::check::check_linearizable(&history, budget);
    let keys: std::collections::BTreeSet<&str> = history.ops.iter().map(|o| o.call.key()).collect();
    println!(
        "rechecked {} operations on {} keys in {:.1} s: {} violations",
        history.ops.len(),
        keys.len(),
        started.elapsed().as_secs_f64(),
        violations.len()
    );
    for v in &violations {
        println!("  {}", serde_json::to_string(v).unwrap_or_default());
    }
    if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().map_err(|_| format!("'{s}' is not a duration like 60s or 30m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" | "min" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("unknown unit '{unit}' in '{s}' (s, m or h)")),
    }
}

fn parse_network(s: &str) -> Result<NetworkChoice, String> {
    match s {
        "auto" => Ok(NetworkChoice::Auto),
        "namespaces" => Ok(NetworkChoice::Namespaces),
        "loopback" => Ok(NetworkChoice::Loopback),
        _ => Err(format!("network must be auto, namespaces or loopback, not '{s}'")),
    }
}

/// The `corral` binary next to this one; built by cargo (same profile) when it is not there.
fn corral_bin() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let dir = me.parent().ok_or("own path has no directory")?.to_path_buf();
    let bin = dir.join("corral");
    if bin.exists() {
        return Ok(bin);
    }
    let release = dir.ends_with("release");
    eprintln!("corral-chaos: {} is missing; building it", bin.display());
    let mut cargo = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args(["build", "-p", "corral-node", "--bin", "corral"]);
    if release {
        cargo.arg("--release");
    }
    let status = cargo.status().map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() || !bin.exists() {
        return Err(format!("could not build {}; pass --corral-bin", bin.display()));
    }
    Ok(bin)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.recheck {
        return recheck(path, args.check_budget);
    }
    if args.nodes < 3 {
        eprintln!("corral-chaos: --nodes must be at least 3 (a cluster that survives a fault)");
        return ExitCode::from(2);
    }
    let corral_bin = match args.corral_bin.map_or_else(corral_bin, Ok) {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("corral-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let config = RunConfig {
        nodes: args.nodes,
        duration: args.duration,
        seed: args.seed,
        workers: args.workers.max(1),
        corral_bin,
        out_dir: args.out.clone(),
        network: args.network,
        check_budget: args.check_budget,
        stale_reads: args.stale_reads,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corral-chaos: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run::run(config)) {
        Ok(report) => {
            print!("{}", report.summary());
            println!(
                "report: {}, timeline: {}",
                args.out.join("report.json").display(),
                args.out.join("timeline.svg").display()
            );
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("corral-chaos: {e}");
            ExitCode::FAILURE
        }
    }
}

//! The run's report: what was done, what broke, how long writes stopped. Pure functions of the
//! recorded history and fault log, so they are tested without a cluster.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::check::Violation;
use crate::history::{Call, History, Nanos, Outcome};
use crate::nemesis::{FaultKind, Target};
use crate::workload::{SandboxCall, SandboxOp};

/// One fault as it happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRecord {
    pub index: usize,
    pub kind: FaultKind,
    pub target: Target,
    /// Whether the node hit (or cut off) was the leader when the fault started.
    pub hit_leader: bool,
    pub nodes: Vec<u64>,
    pub start_ns: Nanos,
    pub healed_ns: Nanos,
    /// When every member answered again with one leader (`None`: it did not in time).
    pub recovered_ns: Option<Nanos>,
    /// The longest stretch with no acknowledged write between this fault's start and the next's.
    pub longest_no_write_ms: Option<f64>,
    pub note: Option<String>,
    /// Whether the fault happened. One that could not be injected (no target, a removal the
    /// cluster refused, a partition the network would not take) says why in `note` and is not
    /// counted as a fault.
    #[serde(default = "injected_by_default")]
    pub injected: bool,
}

fn injected_by_default() -> bool {
    true
}

/// Completion times of acknowledged writes (register writes and deletes, sandbox creations),
/// sorted.
pub fn write_acks(history: &History, sandbox_ops: &[SandboxOp]) -> Vec<Nanos> {
    let mut acks: Vec<Nanos> = history
        .ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && !matches!(o.call, Call::Read { .. }))
        .filter_map(|o| o.complete)
        .chain(
            sandbox_ops
                .iter()
                .filter(|o| o.outcome == Outcome::Ok && o.call == SandboxCall::Create)
                .filter_map(|o| o.complete),
        )
        .collect();
    acks.sort_unstable();
    acks
}

/// The longest interval in `[from, until]` containing no acknowledged write.
pub fn longest_gap(acks: &[Nanos], from: Nanos, until: Nanos) -> Nanos {
    let first = acks.partition_point(|&t| t <= from);
    let mut previous = from;
    let mut longest = 0;
    for &t in acks[first..].iter().take_while(|&&t| t < until) {
        longest = longest.max(t - previous);
        previous = t;
    }
    longest.max(until.saturating_sub(previous))
}

/// Fills each fault's `longest_no_write_ms` (from its start to the next fault's start or the
/// end of the run).
pub fn fill_availability(faults: &mut [FaultRecord], acks: &[Nanos], end: Nanos) {
    let starts: Vec<Nanos> = faults.iter().map(|f| f.start_ns).collect();
    for (i, fault) in faults.iter_mut().enumerate() {
        let until = starts.get(i + 1).copied().unwrap_or(end).max(fault.start_ns);
        fault.longest_no_write_ms = Some(longest_gap(acks, fault.start_ns, until) as f64 / 1e6);
    }
}

/// p50 / p99 / max of a list of milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Spread {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn spread(mut values: Vec<f64>) -> Spread {
    if values.is_empty() {
        return Spread::default();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() as f64 - 1.0) * q).round() as usize];
    Spread { count: values.len(), p50_ms: at(0.5), p99_ms: at(0.99), max_ms: values[values.len() - 1] }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub network: String,
    pub duration_s: f64,
    pub workers: usize,
    pub faults_by_kind: BTreeMap<String, usize>,
    pub operations: BTreeMap<String, BTreeMap<String, u64>>,
    pub keys_checked: usize,
    /// Times a sandbox runner was marked unresponsive (its sandboxes then rescheduled).
    pub runner_flaps: u64,
    /// Sandboxes in the final state (node 1's view) that were moved off a runner.
    pub rescheduled_sandboxes: usize,
    pub violations: Vec<Violation>,
    /// Longest no-write window per fault, all faults.
    pub unavailability: Spread,
    /// The same, for faults that hit the leader (failovers).
    pub failover: Spread,
    /// `unavailability` by fault kind.
    #[serde(default)]
    pub unavailability_by_kind: BTreeMap<String, Spread>,
    /// `failover` by fault kind.
    #[serde(default)]
    pub failover_by_kind: BTreeMap<String, Spread>,
    pub state_hashes: BTreeMap<u64, String>,
    pub faults: Vec<FaultRecord>,
    /// Planned faults that did not happen (in `faults` with `injected: false` and the reason).
    #[serde(default)]
    pub faults_skipped: usize,
    pub passed: bool,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(
            s,
            "corral-chaos {verdict}: seed {}, {} nodes ({}), {:.0} s, {} workers",
            self.seed, self.nodes, self.network, self.duration_s, self.workers
        );
        let faults: Vec<String> = self.faults_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            s,
            "rescheduling: {} runner flaps, {} sandboxes in the final state moved off a runner",
            self.runner_flaps, self.rescheduled_sandboxes
        );
        let injected = self.faults.iter().filter(|f| f.injected).count();
        let _ = writeln!(s, "faults: {injected} injected ({})", faults.join(", "));
        for f in self.faults.iter().filter(|f| !f.injected) {
            let reason = f.note.as_deref().unwrap_or("no reason recorded");
            let _ = writeln!(s, "  not injected, not counted: fault {} ({}): {reason}", f.index, f.kind.name());
        }
        let total: u64 = self.operations.values().flat_map(|m| m.values()).sum();
        let _ = writeln!(s, "operations: {total}");
        for (kind, outcomes) in &self.operations {
            let parts: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
            let _ = writeln!(s, "  {kind:<16} {}", parts.join(", "));
        }
        let _ = writeln!(s, "keys checked for linearizability: {}", self.keys_checked);
        let _ = writeln!(
            s,
            "longest no-write window per fault: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} faults)",
            self.unavailability.p50_ms,
            self.unavailability.p99_ms,
            self.unavailability.max_ms,
            self.unavailability.count
        );
        let _ = writeln!(
            s,
            "failover (faults on the leader): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} faults)",
            self.failover.p50_ms, self.failover.p99_ms, self.failover.max_ms, self.failover.count
        );
        for (kind, all) in &self.unavailability_by_kind {
            let on_leader = self.failover_by_kind.get(kind).filter(|f| f.count > 0).map_or(String::new(), |f| {
                format!(
                    "; on the leader p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({})",
                    f.p50_ms, f.p99_ms, f.max_ms, f.count
                )
            });
            let _ = writeln!(
                s,
                "  {kind:<8} p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({}){on_leader}",
                all.p50_ms, all.p99_ms, all.max_ms, all.count
            );
        }
        let hashes: std::collections::BTreeSet<&String> = self.state_hashes.values().collect();
        let _ =
            writeln!(s, "state hashes after healing: {} node(s), {} distinct", self.state_hashes.len(), hashes.len());
        let _ = writeln!(s, "violations: {}", self.violations.len());
        for v in self.violations.iter().take(20) {
            let line = match v {
                Violation::NotLinearizable { key, ops } => {
                    format!("not linearizable: {key} ({} operations; history.json has them)", ops.len())
                }
                Violation::Inconclusive { key, ops } => {
                    format!("INCONCLUSIVE (not a pass): {key} ({ops} operations); raise --check-budget")
                }
                Violation::FinalStateInconclusive { key, node } => {
                    format!("INCONCLUSIVE (not a pass): final value of {key} on node {node}; raise --check-budget")
                }
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            let _ = writeln!(s, "  {line}");
        }
        if self.violations.len() > 20 {
            let _ = writeln!(s, "  … {} more in report.json", self.violations.len() - 20);
        }
        s
    }
}

fn fault_colour(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Kill => "#d62728",
        FaultKind::Pause => "#9467bd",
        FaultKind::Restart => "#8c564b",
        FaultKind::Wipe => "#e377c2",
        FaultKind::Isolate => "#1f77b4",
        FaultKind::Split => "#17becf",
        FaultKind::OneWay => "#bcbd22",
    }
}

/// A timeline: acknowledged / failed / unknown operations per second on top, one row per node
/// below with each fault drawn over the nodes it hit, and the verdict in the title.
pub fn timeline_svg(report: &Report, history: &History, sandbox_ops: &[SandboxOp], end: Nanos) -> String {
    const WIDTH: f64 = 1200.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const OPS_TOP: f64 = 50.0;
    const OPS_HEIGHT: f64 = 180.0;
    const ROW: f64 = 26.0;
    let seconds = (end / 1_000_000_000 + 1) as usize;
    let mut bins = vec![[0u32; 3]; seconds];
    let mut add = |t: Option<Nanos>, invoke: Nanos, outcome: Outcome| {
        let at = t.unwrap_or(invoke) / 1_000_000_000;
        if let Some(bin) = bins.get_mut(at as usize) {
            bin[match outcome {
                Outcome::Ok => 0,
                Outcome::Fail => 1,
                Outcome::Unknown => 2,
            }] += 1;
        }
    };
    for op in &history.ops {
        add(op.complete, op.invoke, op.outcome);
    }
    for op in sandbox_ops {
        add(op.complete, op.invoke, op.outcome);
    }
    let peak = bins.iter().map(|b| b.iter().sum::<u32>()).max().unwrap_or(1).max(1) as f64;
    let plot = WIDTH - LEFT - RIGHT;
    let x = |ns: Nanos| LEFT + plot * (ns as f64 / end.max(1) as f64);
    let nodes_top = OPS_TOP + OPS_HEIGHT + 40.0;
    let height = nodes_top + ROW * report.nodes as f64 + 70.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let verdict = if report.passed { "passed" } else { "FAILED" };
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="16">corral-chaos seed {} · {} nodes · {} faults · {} violations · {verdict}</text>"#,
        report.seed,
        report.nodes,
        report.faults.len(),
        report.violations.len()
    );
    // Operations per second, stacked: ok, fail, unknown.
    let bar = plot / seconds.max(1) as f64;
    for (i, b) in bins.iter().enumerate() {
        let mut y = OPS_TOP + OPS_HEIGHT;
        for (count, colour) in b.iter().zip(["#2ca02c", "#ff7f0e", "#d62728"]) {
            if *count == 0 {
                continue;
            }
            let h = OPS_HEIGHT * f64::from(*count) / peak;
            y -= h;
            let _ = writeln!(
                svg,
                r#"<rect x="{:.2}" y="{y:.2}" width="{:.2}" height="{h:.2}" fill="{colour}"/>"#,
                LEFT + bar * i as f64,
                bar.max(0.5)
            );
        }
    }
    let _ = writeln!(svg, r#"<text x="4" y="{}">{peak:.0} ops/s</text>"#, OPS_TOP + 10.0);
    let _ = writeln!(svg, r#"<text x="4" y="{}">0</text>"#, OPS_TOP + OPS_HEIGHT);
    // Fault bands across the operations panel, and per node rows.
    for fault in &report.faults {
        let (x0, x1) = (x(fault.start_ns), x(fault.healed_ns.max(fault.start_ns)));
        let colour = fault_colour(fault.kind);
        let _ = writeln!(
            svg,
            r#"<rect x="{x0:.2}" y="{OPS_TOP}" width="{:.2}" height="{OPS_HEIGHT}" fill="{colour}" opacity="0.12"/>"#,
            (x1 - x0).max(1.0)
        );
        for node in &fault.nodes {
            let y = nodes_top + ROW * (*node as f64 - 1.0) + 3.0;
            let _ = writeln!(
                svg,
                r#"<rect x="{x0:.2}" y="{y:.2}" width="{:.2}" height="{:.2}" fill="{colour}"><title>{} node {node}{}</title></rect>"#,
                (x1 - x0).max(1.5),
                ROW - 6.0,
                fault.kind.name(),
                if fault.hit_leader { " (leader)" } else { "" }
            );
        }
    }
    for node in 1..=report.nodes {
        let y = nodes_top + ROW * (node as f64 - 1.0);
        let _ = writeln!(svg, r#"<text x="4" y="{:.2}">node {node}</text>"#, y + ROW * 0.65);
        let _ =
            writeln!(svg, r##"<line x1="{LEFT}" y1="{y:.2}" x2="{:.2}" y2="{y:.2}" stroke="#ddd"/>"##, WIDTH - RIGHT);
    }
    // Time axis.
    let axis_y = nodes_top + ROW * report.nodes as f64 + 16.0;
    let step = ((end as f64 / 1e9) / 10.0).max(1.0).ceil() as u64;
    let mut t = 0;
    while t * 1_000_000_000 <= end {
        let _ = writeln!(svg, r#"<text x="{:.2}" y="{axis_y:.2}">{t}s</text>"#, x(t * 1_000_000_000));
        t += step;
    }
    // Legend.
    let mut lx = LEFT;
    let ly = axis_y + 24.0;
    let legend = [("ok", "#2ca02c"), ("fail", "#ff7f0e"), ("unknown", "#d62728")]
        .into_iter()
        .chain(FaultKind::ALL.iter().map(|k| (k.name(), fault_colour(*k))));
    for (name, colour) in legend {
        let _ = writeln!(svg, r#"<rect x="{lx:.2}" y="{:.2}" width="10" height="10" fill="{colour}"/>"#, ly - 9.0);
        let _ = writeln!(svg, r#"<text x="{:.2}" y="{ly:.2}">{name}</text>"#, lx + 14.0);
        lx += 24.0 + 7.0 * name.len() as f64;
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_measured_between_acknowledged_writes() {
        let acks = [10, 20, 100, 110];
        assert_eq!(longest_gap(&acks, 0, 120), 80);
        assert_eq!(longest_gap(&acks, 15, 105), 80);
        assert_eq!(longest_gap(&acks, 100, 200), 90);
        assert_eq!(longest_gap(&[], 5, 50), 45);
    }

    #[test]
    fn spread_takes_quantiles() {
        let s = spread((1..=100).map(f64::from).collect());
        assert_eq!(s.count, 100);
        assert_eq!(s.max_ms, 100.0);
        assert!((s.p50_ms - 50.0).abs() <= 1.0);
        assert!(s.p99_ms >= 98.0);
    }
}

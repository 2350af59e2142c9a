"""Records and prints benches/peers/run's measurements.

  report.py record OUT ROUND SYSTEM JSON   appends loadgen's JSON report, tagged, to OUT
                                          and prints it as one line
  report.py table OUT                     the side-by-side table (markdown), with each
                                          Corral figure's ratio to etcd's in the same round
"""
import json
import sys
from collections import defaultdict


def record(out, round_, system, report):
    r = json.loads(report)
    r.update(round=int(round_), system=system)
    with open(out, "a") as f:
        f.write(json.dumps(r) + "\n")
    print("round %d %4d conns %8s %10s: %8.0f/s p99 %6.1f ms errors %s" % (
        r["round"], r["connections"], r["system"], r["workload"], r["throughput_per_second"],
        r["latency_ms"]["p99"], r["errors"]))


def table(out):
    rows = [json.loads(line) for line in open(out)]
    by = defaultdict(dict)
    for r in rows:
        by[(r["connections"], r["round"])][(r["system"], r["workload"])] = r
    print("| connections | round | system, workload | throughput/s | p99 ms | errors | ratio to etcd |")
    print("|---|---|---|---|---|---|---|")
    for (conns, rnd), runs in sorted(by.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        puts = runs.get(("etcd", "etcd-puts"), {}).get("throughput_per_second")
        reads = runs.get(("etcd", "etcd-reads"), {}).get("throughput_per_second")
        for (system, workload), r in sorted(runs.items()):
            peer = reads if workload in ("reads", "etcd-reads") else puts
            ratio = "%.2fx" % (r["throughput_per_second"] / peer) if peer else "-"
            print("| %d | %d | %s %s | %.0f | %.1f | %d | %s |" % (
                conns, rnd, system, workload, r["throughput_per_second"], r["latency_ms"]["p99"],
                sum(r["errors"].values()), ratio))


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record(*sys.argv[2:6])
    elif sys.argv[1] == "table":
        table(sys.argv[2])
    else:
        sys.exit(__doc__)

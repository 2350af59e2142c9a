"""Where a profile's samples went: the share of all samples whose stack passes through each
area (inclusive, so areas overlap: JSON inside a gRPC handler counts for both).

  areas.py FOLDED      (inferno-collapse-perf's output: "frame;frame;... count" per line)
"""
import re
import sys

AREAS = [
    ("kernel (syscalls, network stack, scheduling)", r"entry_SYSCALL|do_syscall|\[k\]|_\[k\]"),
    ("fsync / WAL sync", r"fdatasync|fsync|SyncWAL|FlushWAL"),
    ("RocksDB (all)", r"rocksdb::"),
    ("TLS (rustls)", r"rustls::"),
    ("HTTP/1 REST (hyper, axum)", r"hyper::proto::h1|axum::"),
    ("gRPC (tonic, h2)", r"tonic::|h2::"),
    ("QUIC (quinn)", r"quinn"),
    ("JSON (serde_json)", r"serde_json::"),
    ("MessagePack (rmp-serde: log, snapshots, node RPCs)", r"rmp_serde::|rmp::"),
    ("openraft core", r"openraft::core::raft_core"),
    ("apply (corral_model::apply)", r"corral_model::apply::"),
    ("scheduler (plan)", r"corral_node::scheduler::plan"),
    ("API handlers (corral_api)", r"corral_api::"),
    ("metrics", r"metrics_exporter_prometheus|metrics::"),
    ("memory allocation", r"malloc|free|realloc|_int_malloc|cfree"),
    ("tokio runtime (park, schedule)", r"tokio::runtime::scheduler::multi_thread::worker::Context::park"),
]


def main(path):
    total = 0
    counts = {name: 0 for name, _ in AREAS}
    patterns = [(name, re.compile(p)) for name, p in AREAS]
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        total += n
        for name, pattern in patterns:
            if pattern.search(stack):
                counts[name] += n
    print("# where the samples went (all three nodes; inclusive shares of cpu-clock time)")
    for name, _ in AREAS:
        share = 100.0 * counts[name] / total if total else 0.0
        print("%5.1f%%  %s" % (share, name))


if __name__ == "__main__":
    main(sys.argv[1])

#!/usr/bin/env python3
"""Runner liveness and leader stability with 10,000 simulated runners (issue 17's targets).

On a fresh `corral dev` cluster (fsync on, rate limit off) with N simulated runner agents
(loadgen's, over QUIC, reporting every second), three phases:

1. load:   loadgen creates sandboxes with 256 connections for 120 s; the Raft term and the
           leader are sampled on every node every 0.5 s. Target: no leader change. Runners
           marked `unresponsive` meanwhile are counted from the nodes' logs.
2. kills:  a light load (2 connections) keeps the agents running while the leader is
           SIGKILLed 10 times (`corral dev` restarts it on its data 3 s later); the count of
           `unresponsive` runners is sampled on the surviving nodes, and the runners marked
           `unresponsive` are counted from the nodes' logs (short flaps too). Target: 0.
           The phase starts once no runner has been `unresponsive` for the silence and 2 s
           (the runners go silent while the first loadgen hands over to the second).
3. agents: loadgen (with every agent in it) is SIGKILLed; the time until the leader has
           committed 99 % and 100 % of the runners `unresponsive` is measured (its
           `corral_runner_health_transitions_total`, counted at commit). Target: p99 within 5 s.

Usage: benches/peers/runner_liveness.py [--runners 10000] [--corral-dir target/release]
       [--phases load,kills,agents] [--runner-silence-ms MS] [--out FILE.json]
"""

import argparse
import calendar
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

API = ["127.0.0.1:8801", "127.0.0.1:8802", "127.0.0.1:8803"]


def get(addr, path, token=None, timeout=2.0):
    conn = http.client.HTTPConnection(addr, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def cluster_status(addr, admin):
    try:
        status, body = get(addr, "/api/admin/cluster", admin)
        return json.loads(body) if status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None


def scrape(addr):
    """The node's /metrics text (bytes), None when it does not answer."""
    try:
        status, body = get(addr, "/metrics")
    except (OSError, http.client.HTTPException):
        return None
    return body if status == 200 else None


def gauge(body, pattern):
    """The first sample matching `pattern` (a bytes regex up to the value) as an int, 0 if absent."""
    match = re.search(pattern + rb" (\S+)", body, re.M)
    return int(float(match.group(1))) if match else 0


def unresponsive(body):
    return gauge(body, rb'^corral_runners\{state="unresponsive"\}')


def transitions(body):
    """The node's committed runner health transitions so far."""
    return gauge(body, rb"^corral_runner_health_transitions_total")


COUNTERS = ["corral_runner_sessions_moved_total", "corral_raft_fenced_total", "corral_raft_campaigns_total",
            "corral_raft_fence_probes_total"]


def counters(body):
    """The COUNTERS in one scrape (summed over labels)."""
    found = {}
    for line in body.decode(errors="replace").splitlines():
        for name in COUNTERS:
            if line.startswith(name + " ") or line.startswith(name + "{"):
                found[name] = found.get(name, 0) + float(line.rsplit(" ", 1)[1])
    return found


def leader_of(admin):
    for addr in API:
        status = cluster_status(addr, admin)
        if status and status.get("leaderId"):
            return status["leaderId"]
    return None


def node_pid(node_id, data_dir):
    out = subprocess.run(["pgrep", "-af", "corral serve"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if f"--node-id {node_id} " in line and data_dir in line:
            return int(line.split()[0])
    return None


class Sampler(threading.Thread):
    """Samples every node's term/leader and unresponsive count every 0.5 s."""

    def __init__(self, admin):
        super().__init__(daemon=True)
        self.admin, self.stop, self.terms, self.leaders, self.max_unresponsive = admin, False, set(), set(), 0
        self.samples = 0
        self.counters = {}

    def run(self):
        while not self.stop:
            for addr in API:
                status = cluster_status(addr, self.admin)
                if status:
                    self.terms.add(status.get("term"))
                    if status.get("leaderId"):
                        self.leaders.add((status.get("term"), status["leaderId"]))
                body = scrape(addr)
                if body is None:
                    continue
                for name, value in counters(body).items():
                    key = f"{addr} {name}"
                    self.counters[key] = max(self.counters.get(key, 0), value)
                self.max_unresponsive = max(self.max_unresponsive, unresponsive(body))
            self.samples += 1
            time.sleep(0.5)


MARKED = re.compile(rb"runner health changes ready=\d+ unresponsive=(\d+)")


def marked_unresponsive(data, since, until):
    """Runners the leaders marked `unresponsive` between two wall-clock times (epoch seconds),
    from every node's log: a flap shorter than the sampler's period still counts."""
    total = 0
    for node in sorted(os.listdir(data)):
        path = os.path.join(data, node, "corral.log")
        if not os.path.exists(path):
            continue
        for line in open(path, "rb"):
            if b"runner health changes" not in line:
                continue
            clean = re.sub(rb"\x1b\[[0-9;]*m", b"", line)
            found = MARKED.search(clean)
            if not found:
                continue
            try:
                stamp = calendar.timegm(time.strptime(clean[:19].decode(), "%Y-%m-%dT%H:%M:%S"))
            except ValueError:
                continue
            if since <= stamp <= until:
                total += int(found.group(1))
    return total


def wait_none_unresponsive(admin, settle, seconds=120):
    """Waits until no node counts a runner `unresponsive` for `settle` seconds in a row (a
    runner silent while one loadgen handed over to the next is marked, then reports again)."""
    deadline = time.monotonic() + seconds
    clear_since = None
    while time.monotonic() < deadline:
        bodies = [scrape(addr) for addr in API]
        if all(b is not None and unresponsive(b) == 0 for b in bodies):
            clear_since = clear_since or time.monotonic()
            if time.monotonic() - clear_since >= settle:
                return
        else:
            clear_since = None
        time.sleep(0.5)
    raise RuntimeError("runners stayed unresponsive")


def start_loadgen(bins, data, args_extra, log):
    _, org_key = open(os.path.join(data, "org-key")).read().split()
    admin = open(os.path.join(data, "admin-key")).read().strip()
    cmd = [os.path.join(bins, "loadgen"), "--token", org_key, "--admin-token", admin,
           "--certs-dir", os.path.join(data, "certs")] + args_extra
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_runners_ready(log_path, seconds=300):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = open(log_path).read()
        if "simulated runners ready" in text:
            return True
        if "Error" in text:
            raise RuntimeError(text)
        time.sleep(0.5)
    raise RuntimeError("runners never became ready")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runners", type=int, default=10_000)
    parser.add_argument("--corral-dir", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/corral-target")), "release"))
    parser.add_argument("--phases", default="load,kills,agents")
    parser.add_argument("--runner-silence-ms", default=None, help="the nodes' runner_silence_ms")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    phases = args.phases.split(",")
    work = tempfile.mkdtemp(prefix="corral-liveness-")
    data = os.path.join(work, "data")
    env = dict(os.environ, CORRAL_RATE_LIMIT_PER_SECOND="0")
    if args.runner_silence_ms:
        env["CORRAL_RUNNER_SILENCE_MS"] = args.runner_silence_ms
    dev_log = open(os.path.join(work, "dev.log"), "w")
    dev = subprocess.Popen([os.path.join(args.corral_dir, "corral"), "dev", "--data-dir", data],
                           stdout=dev_log, stderr=subprocess.STDOUT, env=env)
    result = {"runners": args.runners}
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(data, "admin-key")) or leader_of(
                open(os.path.join(data, "admin-key")).read().strip()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("cluster did not start")
            time.sleep(0.5)
        admin = open(os.path.join(data, "admin-key")).read().strip()

        load_log_path = os.path.join(work, "load.log")
        if "load" in phases:
            with open(load_log_path, "w") as log:
                loadgen = start_loadgen(args.corral_dir, data, [
                    "--runners", str(args.runners), "--connections", "256", "--duration", "120"], log)
                wait_runners_ready(load_log_path)
                sampler = Sampler(admin)
                sampler.start()
                load_began = time.time()
                loadgen.wait()
                load_ended = time.time()
                sampler.stop = True
                sampler.join()
            text = open(load_log_path).read()
            rate = re.search(r"([\d.]+) req/s", text)
            result["load"] = {
                "leader_changes": max(0, len(sampler.leaders) - 1),
                "leaders": sorted(sampler.leaders),
                "max_unresponsive": sampler.max_unresponsive,
                "marked_unresponsive": marked_unresponsive(data, load_began, load_ended),
                "samples": sampler.samples,
                "counters": sampler.counters,
                "loadgen": text.strip().splitlines()[-6:],
            }
            print(json.dumps({"load": result["load"]}), flush=True)

        keep_log_path = os.path.join(work, "keep.log")
        keep = None
        if "kills" in phases or "agents" in phases:
            keep_log = open(keep_log_path, "w")
            keep = start_loadgen(args.corral_dir, data, [
                "--runners", str(args.runners), "--connections", "2", "--duration", "600"], keep_log)
            wait_runners_ready(keep_log_path)
            silence_s = int(args.runner_silence_ms or 4_000) / 1000  # the nodes' default
            wait_none_unresponsive(admin, settle=silence_s + 2)

        if "kills" in phases:
            sampler = Sampler(admin)
            sampler.start()
            kills_began = time.time()
            kills = []
            for _ in range(10):
                leader = leader_of(admin)
                pid = node_pid(leader, data) if leader else None
                if pid is None:
                    time.sleep(1)
                    continue
                os.kill(pid, signal.SIGKILL)
                kills.append(leader)
                time.sleep(15)
            sampler.stop = True
            sampler.join()
            result["kills"] = {"killed": kills, "max_unresponsive": sampler.max_unresponsive,
                               "marked_unresponsive": marked_unresponsive(data, kills_began, time.time()),
                               "samples": sampler.samples, "counters": sampler.counters}
            print(json.dumps({"kills": result["kills"]}), flush=True)

        if "agents" in phases and keep is not None:
            leader = leader_of(admin)
            scraped = scrape(API[leader - 1]) if leader else None
            before = transitions(scraped) if scraped is not None else None
            keep.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            p99_at = all_at = None
            while all_at is None and time.monotonic() - killed < 60:
                scraped = scrape(API[leader - 1]) if leader else None
                now = transitions(scraped) if scraped is not None else None
                count = now - before if now is not None and before is not None else None
                if count is not None:
                    if p99_at is None and count >= 0.99 * args.runners:
                        p99_at = time.monotonic() - killed
                    if count >= args.runners:
                        all_at = time.monotonic() - killed
                time.sleep(0.05)
            result["agents"] = {"p99_s": p99_at, "all_s": all_at}
            print(json.dumps({"agents": result["agents"]}), flush=True)
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dev.kill()
        subprocess.run(["pkill", "-9", "-f", f"corral serve.*{data}"])
        print(f"logs in {work}", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

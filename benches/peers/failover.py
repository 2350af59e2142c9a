#!/usr/bin/env python3
"""Failover side by side: Corral and etcd 3.4, leader SIGKILL, write gap.

Each trial starts a fresh 3-member cluster on loopback (fsync on), waits until it serves,
starts a writer in a tight loop (one keep-alive connection, a new key or region per request)
against a member that is not the leader, SIGKILLs the leader's process and records the gap
from the kill to the first acknowledged write sent after the kill. The systems alternate
trial by trial, so a noisy machine moves both alike; only ratios from one run mean anything.

Usage: benches/peers/failover.py [--trials 20] [--corral PATH] [--etcd etcd] [--out FILE.jsonl]
       [--through-haproxy]   (Corral only: the writer goes through deploy/haproxy.cfg)
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ETCD_CLIENT = "127.0.0.1:2237{}"
ETCD_PEER = "127.0.0.1:2238{}"


def wait_for(what, check, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def request(addr, method, path, body=None, headers=None, timeout=2.0):
    conn = http.client.HTTPConnection(addr, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


class Etcd:
    name = "etcd"

    def __init__(self, binary, work):
        self.binary, self.work, self.procs = binary, work, {}

    def start(self):
        cluster = ",".join(f"m{i}=http://{ETCD_PEER.format(i)}" for i in (1, 2, 3))
        token = f"failover-{time.time_ns()}"
        for i in (1, 2, 3):
            data = os.path.join(self.work, f"m{i}")
            log = open(os.path.join(self.work, f"m{i}.log"), "w")
            self.procs[i] = subprocess.Popen(
                [self.binary, "--name", f"m{i}", "--data-dir", data,
                 "--listen-client-urls", f"http://{ETCD_CLIENT.format(i)}",
                 "--advertise-client-urls", f"http://{ETCD_CLIENT.format(i)}",
                 "--listen-peer-urls", f"http://{ETCD_PEER.format(i)}",
                 "--initial-advertise-peer-urls", f"http://{ETCD_PEER.format(i)}",
                 "--initial-cluster", cluster, "--initial-cluster-state", "new",
                 "--initial-cluster-token", token, "--log-level", "error"],
                stdout=log, stderr=log)
        for i in (1, 2, 3):
            wait_for(f"etcd m{i}", lambda i=i: self.write(ETCD_CLIENT.format(i), "ready"))

    def leader(self):
        def find():
            status, body = request(ETCD_CLIENT.format(1), "POST", "/v3/maintenance/status", b"{}")
            reply = json.loads(body)
            leader_id = reply["leader"]
            for i in (1, 2, 3):
                status, body = request(ETCD_CLIENT.format(i), "POST", "/v3/maintenance/status", b"{}")
                if json.loads(body)["header"]["member_id"] == leader_id:
                    return i
            return None
        return wait_for("the etcd leader", find)

    def writer_addr(self, member):
        return ETCD_CLIENT.format(member)

    def write(self, addr, key, conn=None):
        body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                           "value": base64.b64encode(b"x" * 200).decode()})
        status, _ = (conn_request(conn, "POST", "/v3/kv/put", body, {}) if conn
                     else request(addr, "POST", "/v3/kv/put", body))
        return status == 200

    def pid_of(self, member):
        return self.procs[member].pid

    def stop(self):
        for p in self.procs.values():
            p.kill()
            p.wait()
        self.procs = {}


class Corral:
    name = "corral"

    def __init__(self, binary, work, haproxy):
        self.binary, self.work, self.haproxy = binary, work, haproxy
        self.dev = None
        self.lb = None

    def start(self):
        env = dict(os.environ, CORRAL_RATE_LIMIT_PER_SECOND="0")
        self.dev = subprocess.Popen([self.binary, "dev", "--data-dir", self.work],
                                    stdout=open(os.path.join(self.work, "..", "dev.log"), "w"),
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for("corral dev", lambda: os.path.exists(os.path.join(self.work, "org-key")), 120)
        with open(os.path.join(self.work, "org-key")) as f:
            self.org, self.key = f.read().split()
        with open(os.path.join(self.work, "admin-key")) as f:
            self.admin = f.read().strip()
        for i in (1, 2, 3):
            wait_for(f"node {i}", lambda i=i: request(f"127.0.0.1:880{i}", "GET", "/readyz")[0] == 200)
        if self.haproxy:
            cfg = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "haproxy.cfg")
            self.lb = subprocess.Popen(["haproxy", "-f", cfg], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            wait_for("haproxy", lambda: request("127.0.0.1:8800", "GET", "/readyz")[0] == 200)

    def leader(self):
        def find():
            status, body = request("127.0.0.1:8801", "GET", "/api/admin/cluster",
                                   headers={"Authorization": f"Bearer {self.admin}"})
            return json.loads(body).get("leaderId")
        return wait_for("the corral leader", find)

    def writer_addr(self, member):
        return "127.0.0.1:8800" if self.haproxy else f"127.0.0.1:880{member}"

    def write(self, addr, key, conn=None):
        body = json.dumps({"name": key[-40:].replace("/", "-")})
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        status, _ = (conn_request(conn, "POST", "/api/regions", body, headers) if conn
                     else request(addr, "POST", "/api/regions", body, headers))
        return status in (200, 201)

    def pid_of(self, member):
        out = subprocess.run(["pgrep", "-f", f"corral serve --node-id {member} "],
                             capture_output=True, text=True).stdout.split()
        return int(out[0])


    def stop(self):
        if self.lb:
            self.lb.kill()
            self.lb.wait()
            self.lb = None
        if self.dev:
            os.killpg(self.dev.pid, signal.SIGTERM)
            try:
                self.dev.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.dev.pid, signal.SIGKILL)
                self.dev.wait()
            self.dev = None


def conn_request(conn, method, path, body, headers):
    conn.request(method, path, body=body, headers=headers)
    reply = conn.getresponse()
    reply.read()
    return reply.status, None


def trial(system, number):
    system.start()
    try:
        leader = system.leader()
        member = next(i for i in (1, 2, 3) if i != leader)
        addr = system.writer_addr(member)
        for n in range(20):  # warm up
            system.write(addr, f"warm-{number}-{n}")
        killed_at = [None]
        first_ack = [None]
        done = threading.Event()

        def writer():
            conn = http.client.HTTPConnection(addr, timeout=1.0)
            n = 0
            while not done.is_set():
                n += 1
                sent = time.monotonic()
                try:
                    ok = system.write(addr, f"t{number}-w{n}-{time.time_ns()}", conn)
                except (OSError, http.client.HTTPException):
                    ok = False
                    conn.close()
                    conn = http.client.HTTPConnection(addr, timeout=1.0)
                if not ok:
                    time.sleep(0.002)
                if ok and killed_at[0] is not None and sent >= killed_at[0]:
                    first_ack[0] = time.monotonic()
                    done.set()
            conn.close()

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(1.0)
        pid = system.pid_of(leader)
        killed_at[0] = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        done.wait(30)
        done.set()
        thread.join()
        if first_ack[0] is None:
            return None
        return (first_ack[0] - killed_at[0]) * 1000
    finally:
        system.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--corral", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/corral-target")), "release", "corral"))
    parser.add_argument("--etcd", default=shutil.which("etcd") or "etcd")
    parser.add_argument("--through-haproxy", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="corral-failover.")
    gaps = {"etcd": [], "corral": []}
    out = open(args.out, "a") if args.out else None
    try:
        for number in range(1, args.trials + 1):
            for make in (lambda d: Etcd(args.etcd, d), lambda d: Corral(args.corral, d, args.through_haproxy)):
                data = os.path.join(work, f"t{number}-{time.time_ns()}", "data")
                os.makedirs(data)
                system = make(data)
                gap = trial(system, number)
                gaps[system.name].append(gap)
                line = {"trial": number, "system": system.name, "gap_ms": gap, "haproxy": args.through_haproxy}
                print(json.dumps(line), flush=True)
                if out:
                    out.write(json.dumps(line) + "\n")
                shutil.rmtree(os.path.dirname(data), ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nleader SIGKILL -> first acknowledged write on a surviving member, {args.trials} trials each")
    print("| system | min | median | p90 | max | no write within 30 s |")
    print("|---|---|---|---|---|---|")
    for name, values in gaps.items():
        measured = sorted(v for v in values if v is not None)
        missing = sum(1 for v in values if v is None)
        if not measured:
            print(f"| {name} | - | - | - | - | {missing} |")
            continue
        p90 = measured[min(len(measured) - 1, int(round(0.9 * (len(measured) - 1))))]
        print(f"| {name} | {measured[0]:,.0f} ms | {statistics.median(measured):,.0f} ms | {p90:,.0f} ms "
              f"| {measured[-1]:,.0f} ms | {missing} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

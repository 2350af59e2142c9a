//! Runner agents and gossip with real processes: `corral serve` ×3 and `corral runner`.
//!
//! - an agent registers, reports, becomes `ready` on every node (gossip delivers its health),
//!   sees the sandbox placed on it, moves to another node when its node is SIGKILLed, and is
//!   `unresponsive` on every node soon after it is SIGKILLed itself;
//! - a wrong token, and the token of a runner deleted while connected, are refused;
//! - a node whose UDP traffic is dropped (nftables on loopback) is declared down by the others
//!   and rejoins when the partition heals.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, TestCluster, ADMIN_KEY};
use serde_json::{json, Value};

const SILENCE_MS: u64 = 3_000;

fn node_args() -> Vec<&'static str> {
    vec!["--runner-silence-ms", "3000", "--runner-report-interval-ms", "500", "--gossip-suspect-ms", "1500"]
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A custom region and one runner with capacity in it; returns (org key, region id, runner id).
fn setup(c: &TestCluster, via: u64, token: &str) -> (String, String, String) {
    let (_, key) = c.create_organization(via, "fleet");
    let (s, region) = c.call(via, "POST", "/api/regions", Some(&key), Some(&json!({ "name": "edge" })), &[]);
    assert_eq!(s, 201, "{region}");
    let region_id = region["id"].as_str().expect("id").to_string();
    let body = json!({ "name": "edge-1", "regionId": region_id, "apiKey": token, "apiVersion": "2",
        "cpu": 8, "memoryGiB": 16, "diskGiB": 100 });
    let (s, runner) = c.call(via, "POST", "/api/admin/runners", Some(ADMIN_KEY), Some(&body), &[]);
    assert_eq!(s, 201, "{runner}");
    assert_eq!(runner["state"], "initializing");
    (key, region_id, runner["id"].as_str().expect("id").to_string())
}

fn runner_on(c: &TestCluster, node: u64, key: &str, runner_id: &str) -> Value {
    let (s, r) = c.call(node, "GET", &format!("/api/runners/{runner_id}?consistency=stale"), Some(key), None, &[]);
    assert_eq!(s, 200, "{r}");
    r
}

fn endpoints(c: &TestCluster) -> String {
    c.nodes.iter().map(|n| n.raft_addr.clone()).collect::<Vec<_>>().join(",")
}

#[test]
fn agent_reports_gets_its_sandbox_fails_over_and_goes_unresponsive_when_killed() {
    let mut c = TestCluster::start(3, &node_args());
    let leader = c.wait_leader(Duration::from_secs(20));
    let token = "agent-test-token-0123456789abcdef";
    let (key, _region_id, runner_id) = setup(&c, leader, token);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agent = Agent::start(token, &endpoints(&c), &c.certs, "runner", &dir.path().join("agent.log"));

    // Health reaches every node, and the leader commits `ready`.
    wait_for("ready with usage on every node", Duration::from_secs(20), || {
        c.nodes
            .iter()
            .map(|n| runner_on(&c, n.id, &key, &runner_id))
            .all(|r| {
                r["state"] == "ready" && r["usage"]["currentCpuUsagePercentage"].is_number() && r["version"].is_string()
            })
            .then_some(())
    });
    let r = runner_on(&c, leader, &key, &runner_id);
    assert!(r["lastCheckedAt"].is_string(), "{r}");
    let score = r["availabilityScore"].as_u64().expect("score");
    assert!(score <= 100, "{r}");

    // A sandbox placed on the runner reaches the agent, and so does its stop.
    let (s, sandbox) = c.call(leader, "POST", "/api/sandboxes", Some(&key), Some(&json!({ "target": "edge" })), &[]);
    assert_eq!(s, 201, "{sandbox}");
    assert_eq!(sandbox["runnerId"].as_str(), Some(runner_id.as_str()));
    let sandbox_id = sandbox["id"].as_str().expect("id").to_string();
    wait_for("start assignment at the agent", Duration::from_secs(10), || {
        agent
            .log()
            .lines()
            .any(|l| l.contains("assignment") && l.contains(&sandbox_id) && l.contains("Start"))
            .then_some(())
    });
    let (s, _) = c.call(leader, "POST", &format!("/api/sandboxes/{sandbox_id}/stop"), Some(&key), None, &[]);
    assert_eq!(s, 200);
    wait_for("stop assignment at the agent", Duration::from_secs(10), || {
        agent
            .log()
            .lines()
            .any(|l| l.contains("assignment") && l.contains(&sandbox_id) && l.contains("Stop"))
            .then_some(())
    });

    // Kill the node the agent talks to; the agent moves to another and keeps reporting.
    let first = agent.connected_to().expect("agent connected");
    let victim = c.nodes.iter().find(|n| n.raft_addr == first).map(|n| n.id).expect("agent's node is ours");
    c.kill(victim);
    let survivors: Vec<u64> = c.nodes.iter().map(|n| n.id).filter(|id| *id != victim).collect();
    let second =
        wait_for("agent on another node", Duration::from_secs(20), || agent.connected_to().filter(|e| *e != first));
    assert_ne!(second, first);
    let checked_before = runner_on(&c, survivors[0], &key, &runner_id)["lastCheckedAt"].clone();
    wait_for("reports continue after the failover", Duration::from_secs(10), || {
        survivors
            .iter()
            .all(|id| {
                let r = runner_on(&c, *id, &key, &runner_id);
                r["lastCheckedAt"] != checked_before && r["state"] == "ready"
            })
            .then_some(())
    });
    // Past a full silence after the failover, the runner is still ready: it never fell silent.
    c.wait_leader(Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(SILENCE_MS + 1_000));
    for id in &survivors {
        assert_eq!(runner_on(&c, *id, &key, &runner_id)["state"], "ready", "node {id}");
    }

    // SIGKILL the agent: unresponsive on every live node within the silence plus a margin.
    let killed_at = Instant::now();
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    wait_for("unresponsive on every node", Duration::from_millis(SILENCE_MS + 8_000), || {
        survivors.iter().all(|id| runner_on(&c, *id, &key, &runner_id)["state"] == "unresponsive").then_some(())
    });
    let took = killed_at.elapsed();
    eprintln!(
        "runner unresponsive on every node {:.2} s after SIGKILL (silence {} s)",
        took.as_secs_f64(),
        SILENCE_MS / 1000
    );
    // The scheduler never places on it now.
    let (s, body) = c.call(survivors[0], "POST", "/api/sandboxes", Some(&key), Some(&json!({ "target": "edge" })), &[]);
    assert_eq!((s, body["code"].as_str()), (409, Some("no_capacity")), "{body}");
}

/// A cluster rescheduling after `reschedule_after_ms`, with a ready runner "a" (token
/// `token_a`) whose agent runs; returns the cluster, its leader, the organization key, the
/// region id, runner a's id, the agent and the directory holding the agents' logs.
fn rescheduling_fixture(
    reschedule_after_ms: &'static str,
    token_a: &str,
) -> (TestCluster, u64, String, String, String, Agent, tempfile::TempDir) {
    let mut args = node_args();
    args.extend(["--reschedule-after-ms", reschedule_after_ms]);
    let c = TestCluster::start(3, &args);
    let leader = c.wait_leader(Duration::from_secs(20));
    let (key, region_id, runner_a) = setup(&c, leader, token_a);
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_a = Agent::start(token_a, &endpoints(&c), &c.certs, "runner", &dir.path().join("a.log"));
    wait_for("runner a ready", Duration::from_secs(20), || {
        (runner_on(&c, leader, &key, &runner_a)["state"] == "ready").then_some(())
    });
    (c, leader, key, region_id, runner_a, agent_a, dir)
}

/// A second runner "edge-2" of 8 cpu in the region (not ready until its agent reports).
fn second_runner(c: &TestCluster, via: u64, region_id: &str, token: &str) -> String {
    let body = json!({ "name": "edge-2", "regionId": region_id, "apiKey": token, "apiVersion": "2",
        "cpu": 8, "memoryGiB": 16, "diskGiB": 100 });
    let (s, b) = c.call(via, "POST", "/api/admin/runners", Some(ADMIN_KEY), Some(&body), &[]);
    assert_eq!(s, 201, "{b}");
    b["id"].as_str().expect("id").to_string()
}

/// Rescheduling with real agents: the agent of the runner holding the sandboxes is SIGKILLed;
/// once its runner has been unresponsive for `--reschedule-after-ms`, every sandbox moves to
/// the other runner of the region exactly once (`rescheduledFrom` names the old one), the
/// allocations follow on every node, the other agent is told to start them, and all nodes end
/// with one state hash. An agent that comes back under the old token gets none of them.
#[test]
fn a_killed_agents_sandboxes_move_to_the_other_runner_once() {
    let token_a = "reschedule-runner-a-0123456789abcdef";
    let (c, leader, key, region_id, runner_a, mut agent_a, dir) = rescheduling_fixture("1500", token_a);
    // Runner b exists but is not ready yet, so every sandbox lands on a.
    let token_b = "reschedule-runner-b-0123456789abcdef";
    let runner_b = second_runner(&c, leader, &region_id, token_b);
    let follower = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    let mut sandboxes = Vec::new();
    for _ in 0..3 {
        let (s, sandbox) =
            c.call(follower, "POST", "/api/sandboxes", Some(&key), Some(&json!({ "target": "edge" })), &[]);
        assert_eq!((s, sandbox["runnerId"].as_str()), (201, Some(runner_a.as_str())), "{sandbox}");
        sandboxes.push(sandbox["id"].as_str().expect("id").to_string());
    }
    let agent_b = Agent::start(token_b, &endpoints(&c), &c.certs, "runner", &dir.path().join("b.log"));
    wait_for("runner b ready", Duration::from_secs(20), || {
        (runner_on(&c, leader, &key, &runner_b)["state"] == "ready").then_some(())
    });

    let _ = agent_a.child.kill();
    let _ = agent_a.child.wait();
    let killed_at = Instant::now();
    wait_for("every sandbox on runner b on every node", Duration::from_secs(30), || {
        c.nodes
            .iter()
            .all(|n| {
                sandboxes.iter().all(|id| {
                    let (_, sb) =
                        c.call(n.id, "GET", &format!("/api/sandboxes/{id}?consistency=stale"), Some(&key), None, &[]);
                    sb["runnerId"].as_str() == Some(runner_b.as_str())
                })
            })
            .then_some(())
    });
    eprintln!("sandboxes moved {:.2} s after the agent's SIGKILL", killed_at.elapsed().as_secs_f64());
    for id in &sandboxes {
        let (s, sb) = c.call(leader, "GET", &format!("/api/sandboxes/{id}"), Some(&key), None, &[]);
        assert_eq!(s, 200);
        assert_eq!(
            (sb["state"].as_str(), sb["rescheduledFrom"].as_str(), sb["errorReason"].clone()),
            (Some("started"), Some(runner_a.as_str()), Value::Null),
            "{sb}"
        );
    }
    for node in &c.nodes {
        let a = runner_on(&c, node.id, &key, &runner_a);
        let b = runner_on(&c, node.id, &key, &runner_b);
        assert_eq!((a["state"].as_str(), a["allocated"]["cpu"].as_u64()), (Some("unresponsive"), Some(0)), "{a}");
        assert_eq!(b["allocated"]["cpu"].as_u64(), Some(3), "node {}: {b}", node.id);
    }
    wait_for("runner b's agent starts them", Duration::from_secs(15), || {
        let log = agent_b.log();
        sandboxes
            .iter()
            .all(|id| log.lines().any(|l| l.contains("assignment") && l.contains(id.as_str()) && l.contains("Start")))
            .then_some(())
    });
    c.wait_converged(Duration::from_secs(20));

    // The old runner's agent comes back: its runner is ready again and gets none of them;
    // nothing moves back, and a later round moves nothing again.
    let back = Agent::start(token_a, &endpoints(&c), &c.certs, "runner", &dir.path().join("a2.log"));
    wait_for("runner a ready again", Duration::from_secs(20), || {
        (runner_on(&c, leader, &key, &runner_a)["state"] == "ready").then_some(())
    });
    wait_for("runner a's agent synced", Duration::from_secs(15), || back.log().contains("assigned=0").then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    for id in &sandboxes {
        let (_, sb) = c.call(leader, "GET", &format!("/api/sandboxes/{id}"), Some(&key), None, &[]);
        assert_eq!(sb["runnerId"].as_str(), Some(runner_b.as_str()), "{sb}");
        assert!(!back.log().contains(id.as_str()), "runner a was given {id}");
    }
    c.wait_converged(Duration::from_secs(20));
}

/// A runner that comes back after its sandboxes were moved is told to let go of its copies:
/// its agent is paused (SIGSTOP) until the sandbox is rescheduled, then resumed; it either
/// gets a `Destroy` for it on its live session or drops it on the full set of a new session.
#[test]
fn a_runner_that_comes_back_destroys_its_rescheduled_copy() {
    let token_a = "comeback-runner-a-0123456789abcdef";
    let (c, leader, key, region_id, runner_a, agent_a, dir) = rescheduling_fixture("1000", token_a);
    let (s, sandbox) = c.call(leader, "POST", "/api/sandboxes", Some(&key), Some(&json!({ "target": "edge" })), &[]);
    assert_eq!((s, sandbox["runnerId"].as_str()), (201, Some(runner_a.as_str())), "{sandbox}");
    let sandbox_id = sandbox["id"].as_str().expect("id").to_string();
    wait_for("runner a runs it", Duration::from_secs(10), || {
        agent_a
            .log()
            .lines()
            .any(|l| l.contains("assignment") && l.contains(&sandbox_id) && l.contains("Start"))
            .then_some(())
    });
    let token_b = "comeback-runner-b-0123456789abcdef";
    let runner_b = second_runner(&c, leader, &region_id, token_b);
    let _agent_b = Agent::start(token_b, &endpoints(&c), &c.certs, "runner", &dir.path().join("b.log"));

    let pid = agent_a.child.id() as libc::pid_t;
    // SAFETY: signals a child process this test started and still owns.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_for("the sandbox moved to runner b", Duration::from_secs(30), || {
        let (_, sb) = c.call(leader, "GET", &format!("/api/sandboxes/{sandbox_id}"), Some(&key), None, &[]);
        (sb["runnerId"].as_str() == Some(runner_b.as_str())).then_some(())
    });
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_for("runner a's agent lets go of its copy", Duration::from_secs(30), || {
        let log = agent_a.log();
        let destroyed =
            log.lines().any(|l| l.contains("assignment") && l.contains(&sandbox_id) && l.contains("Destroy"));
        let dropped = log.lines().any(|l| l.contains("in step with the node's assignments") && l.contains("dropped=1"));
        (destroyed || dropped).then_some(())
    });
    wait_for("runner a ready again", Duration::from_secs(20), || {
        (runner_on(&c, leader, &key, &runner_a)["state"] == "ready").then_some(())
    });
    let (_, sb) = c.call(leader, "GET", &format!("/api/sandboxes/{sandbox_id}"), Some(&key), None, &[]);
    assert_eq!(
        (sb["runnerId"].as_str(), sb["rescheduledFrom"].as_str()),
        (Some(runner_b.as_str()), Some(runner_a.as_str()))
    );
    c.wait_converged(Duration::from_secs(20));
}

#[test]
fn wrong_and_deleted_runner_tokens_are_refused() {
    let c = TestCluster::start(3, &node_args());
    let leader = c.wait_leader(Duration::from_secs(20));
    let token = "deleted-runner-token-0123456789ab";
    let (key, _region_id, runner_id) = setup(&c, leader, token);
    let dir = tempfile::tempdir().expect("tempdir");

    let mut wrong = Agent::start(
        "not-a-token-of-this-cluster-xxxxxx",
        &endpoints(&c),
        &c.certs,
        "runner",
        &dir.path().join("wrong.log"),
    );
    let status = wrong.wait_exit(Duration::from_secs(20)).expect("a refused agent exits");
    assert!(!status.success());
    assert!(wrong.log().contains("unknown or revoked runner token"), "{}", wrong.log());

    let mut agent = Agent::start(token, &endpoints(&c), &c.certs, "runner", &dir.path().join("agent.log"));
    wait_for("ready", Duration::from_secs(20), || {
        (runner_on(&c, leader, &key, &runner_id)["state"] == "ready").then_some(())
    });
    let (s, body) = c.call(leader, "DELETE", &format!("/api/runners/{runner_id}"), Some(&key), None, &[]);
    assert_eq!(s, 204, "{body}");
    let status = agent.wait_exit(Duration::from_secs(20)).expect("the deleted runner's agent is cut off");
    assert!(!status.success());
    assert!(agent.log().contains("runner deleted"), "{}", agent.log());
}

/// Token rotation: the agent's live session is closed at once, the old token is refused, and
/// an agent with the new token takes the runner over.
#[test]
fn a_regenerated_token_closes_the_agents_session_and_only_the_new_one_works() {
    let c = TestCluster::start(3, &node_args());
    let leader = c.wait_leader(Duration::from_secs(20));
    let token = "rotated-runner-token-0123456789ab";
    let (key, _region_id, runner_id) = setup(&c, leader, token);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agent = Agent::start(token, &endpoints(&c), &c.certs, "runner", &dir.path().join("old.log"));
    wait_for("ready", Duration::from_secs(20), || {
        (runner_on(&c, leader, &key, &runner_id)["state"] == "ready").then_some(())
    });
    let follower = (1..=3).find(|&n| n != leader).expect("follower");
    let path = format!("/api/runners/{runner_id}/regenerate-token");
    let (s, body) = c.call(follower, "POST", &path, Some(&key), None, &[]);
    assert_eq!(s, 200, "{body}");
    let new_token = body["apiKey"].as_str().expect("apiKey").to_string();
    assert_ne!(new_token, token);
    let status = agent.wait_exit(Duration::from_secs(20)).expect("the old token's session is closed");
    assert!(!status.success());
    assert!(agent.log().contains("token regenerated"), "{}", agent.log());

    let mut stale = Agent::start(token, &endpoints(&c), &c.certs, "runner", &dir.path().join("stale.log"));
    let status = stale.wait_exit(Duration::from_secs(20)).expect("the old token is refused");
    assert!(!status.success());
    assert!(stale.log().contains("unknown or revoked runner token"), "{}", stale.log());

    let fresh = Agent::start(&new_token, &endpoints(&c), &c.certs, "runner", &dir.path().join("new.log"));
    wait_for("the new token's session", Duration::from_secs(20), || fresh.connected_to());
    let runner = runner_on(&c, leader, &key, &runner_id);
    assert_eq!(runner["state"], "ready", "{runner}");
    // The operator's twin rotates again; the fresh agent is cut off in turn.
    let (s, body) =
        c.call(leader, "POST", &format!("/api/admin/runners/{runner_id}/regenerate-token"), Some(ADMIN_KEY), None, &[]);
    assert_eq!(s, 200, "{body}");
    let mut fresh = fresh;
    assert!(fresh.wait_exit(Duration::from_secs(20)).is_some_and(|s| !s.success()), "{}", fresh.log());
}

/// Drops every UDP datagram to or from `port` on loopback while alive.
struct UdpPartition {
    table: String,
}

impl UdpPartition {
    fn isolate(port: u16) -> Result<UdpPartition, String> {
        let table = format!("corral_test_{}_{port}", std::process::id());
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} input {{ type filter hook input priority -10; }}\n\
             add chain inet {table} output {{ type filter hook output priority -10; }}\n\
             add rule inet {table} input udp dport {port} drop\n\
             add rule inet {table} input udp sport {port} drop\n\
             add rule inet {table} output udp dport {port} drop\n\
             add rule inet {table} output udp sport {port} drop\n"
        );
        let out = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().expect("stdin").write_all(script.as_bytes())?;
                child.wait_with_output()
            })
            .map_err(|e| format!("nft: {e}"))?;
        if !out.status.success() {
            return Err(format!("nft refused: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(UdpPartition { table })
    }
}

impl Drop for UdpPartition {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.table]).status();
    }
}

fn liveness(c: &TestCluster, on: u64, of: u64) -> Option<String> {
    let status = c.status(on)?;
    status.gossip.iter().find(|g| g.node_id == of).map(|g| g.liveness.clone())
}

#[test]
fn gossip_declares_a_partitioned_node_down_and_takes_it_back() {
    let c = TestCluster::start(3, &node_args());
    c.wait_leader(Duration::from_secs(20));
    wait_for("every node alive in every node's gossip", Duration::from_secs(20), || {
        c.nodes
            .iter()
            .all(|a| c.nodes.iter().all(|b| liveness(&c, a.id, b.id).as_deref() == Some("alive")))
            .then_some(())
    });

    let port: u16 = c.node(3).raft_addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let partition = UdpPartition::isolate(port).expect("this test needs nftables and CAP_NET_ADMIN (root)");
    let cut_at = Instant::now();
    wait_for("node 3 down on nodes 1 and 2", Duration::from_secs(20), || {
        [1, 2].iter().all(|on| liveness(&c, *on, 3).as_deref() == Some("down")).then_some(())
    });
    eprintln!("partitioned node declared down after {:.2} s", cut_at.elapsed().as_secs_f64());
    // And node 3 sees itself cut off from both.
    wait_for("nodes 1 and 2 down on node 3", Duration::from_secs(20), || {
        [1, 2].iter().all(|of| liveness(&c, 3, *of).as_deref() == Some("down")).then_some(())
    });

    drop(partition);
    let healed_at = Instant::now();
    wait_for("all alive again after healing", Duration::from_secs(30), || {
        c.nodes
            .iter()
            .all(|a| c.nodes.iter().all(|b| liveness(&c, a.id, b.id).as_deref() == Some("alive")))
            .then_some(())
    });
    eprintln!("partition healed; all alive after {:.2} s", healed_at.elapsed().as_secs_f64());
}

/// `corral ctl` against node `via` with `token`, JSON output; panics on failure.
fn ctl(c: &TestCluster, via: u64, token: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["ctl", "--output", "json"])
        .args(args)
        .env("CORRAL_ADDR", format!("http://{}", c.node(via).api_addr))
        .env("CORRAL_TOKEN", token)
        .env_remove("CORRAL_ORGANIZATION")
        .output()
        .expect("run corral ctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "corral ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let printed = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    c.remember_secrets(&[&json!({ "token": token }), &printed]);
    printed
}

/// The new user's path, with real processes: a custom region and a runner made with
/// `corral ctl` (no capacity given), a real `corral runner` agent whose host capacity the
/// runner takes, and a sandbox asked for with `corral ctl sandbox create` that is placed on the
/// runner and reaches the agent.
#[test]
fn a_custom_runner_takes_its_agents_host_capacity_and_hosts_a_ctl_sandbox() {
    let c = TestCluster::start(3, &node_args());
    let leader = c.wait_leader(Duration::from_secs(20));
    let follower = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    let (_, key) = c.create_organization(leader, "byo");

    let region = ctl(&c, follower, &key, &["region", "create", "byo-region"]);
    let region_id = region["id"].as_str().expect("region id").to_string();
    let created = ctl(&c, follower, &key, &["runner", "create", "byo-1", "--region", &region_id]);
    let runner_id = created["id"].as_str().expect("runner id").to_string();
    let token = created["apiKey"].as_str().expect("token shown once").to_string();
    let before = ctl(&c, follower, &key, &["runner", "get", &runner_id]);
    assert_eq!(before["capacity"]["cpu"], 0, "created without capacity: {before}");

    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    let agent = Agent::start_with(
        &token,
        &endpoints(&c),
        &c.certs,
        "runner",
        &dir.path().join("agent.log"),
        &["--metrics-addr", &metrics_addr],
    );
    let host_cpus = std::thread::available_parallelism().map(|n| n.get() as u64).expect("cpu count");
    // The agent's host capacity is committed through Raft and visible on every node.
    let runner = wait_for("ready with the host's capacity on every node", Duration::from_secs(30), || {
        let views: Vec<Value> = c.nodes.iter().map(|n| runner_on(&c, n.id, &key, &runner_id)).collect();
        views
            .iter()
            .all(|r| r["state"] == "ready" && r["capacity"]["cpu"].as_u64().is_some_and(|cpu| cpu > 0))
            .then(|| views[0].clone())
    });
    let capacity = &runner["capacity"];
    assert!(capacity["cpu"].as_u64() >= Some(host_cpus), "logical CPUs of this host: {runner}");
    assert!(capacity["memoryGiB"].as_u64() >= Some(1) && capacity["diskGiB"].as_u64() >= Some(1), "{runner}");
    assert!(capacity["gpu"].is_u64(), "{runner}");

    let sandbox = ctl(
        &c,
        follower,
        &key,
        &["sandbox", "create", "--target", "byo-region", "--cpu", "1", "--memory-gib", "1", "--disk-gib", "1"],
    );
    assert_eq!(sandbox["runnerId"].as_str(), Some(runner_id.as_str()), "{sandbox}");
    let sandbox_id = sandbox["id"].as_str().expect("sandbox id").to_string();
    wait_for("the assignment at the agent", Duration::from_secs(15), || {
        agent
            .log()
            .lines()
            .any(|l| l.contains("assignment") && l.contains(&sandbox_id) && l.contains("Start"))
            .then_some(())
    });
    // The agent's own metrics: reports sent, the assignment it got, the host's usage.
    let metrics = reqwest::blocking::get(format!("http://{metrics_addr}/metrics"))
        .and_then(|r| r.text())
        .expect("the agent serves /metrics");
    let value = |line_start: &str| {
        metrics.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert!(value("corral_agent_reports_sent_total").is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(value("corral_agent_assignments_total{action=\"start\"}").is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(value("corral_agent_host_usage_percent{resource=\"cpu\"}").is_some(), "{metrics}");
    let listed = ctl(&c, follower, &key, &["sandbox", "list", "--runner", &runner_id, "--state", "started"]);
    assert!(listed.as_array().is_some_and(|l| l.iter().any(|s| s["id"] == sandbox["id"])), "{listed}");
    assert_eq!(ctl(&c, follower, &key, &["sandbox", "stop", &sandbox_id])["state"], "stopped");
    assert_eq!(ctl(&c, follower, &key, &["sandbox", "get", &sandbox_id])["state"], "stopped");
    assert_eq!(ctl(&c, follower, &key, &["sandbox", "start", &sandbox_id])["state"], "started");
    // Draining: the runner takes no new sandbox (the only one in the region, so 409
    // `no_capacity`), keeps the one it has, and takes sandboxes again once undone.
    assert_eq!(ctl(&c, follower, &key, &["runner", "drain", &runner_id])["draining"], true);
    let (s, refused) = c.call(
        follower,
        "POST",
        "/api/sandboxes",
        Some(&key),
        Some(&json!({ "target": "byo-region", "cpu": 1, "memoryGiB": 1, "diskGiB": 1 })),
        &[],
    );
    assert_eq!((s, refused["code"].as_str()), (409, Some("no_capacity")), "{refused}");
    assert_eq!(ctl(&c, follower, &key, &["sandbox", "get", &sandbox_id])["state"], "started", "kept running");
    let (s, body) = c.call(follower, "DELETE", &format!("/api/runners/{runner_id}"), Some(&key), None, &[]);
    assert_eq!((s, body["code"].as_str()), (409, Some("runner_has_sandboxes")), "{body}");
    assert_eq!(ctl(&c, follower, &key, &["runner", "drain", &runner_id, "--undo"])["draining"], false);
    let again = ctl(&c, follower, &key, &["sandbox", "create", "--target", "byo-region", "--cpu", "1"]);
    assert_eq!(again["runnerId"].as_str(), Some(runner_id.as_str()), "{again}");

    for id in [sandbox_id.as_str(), again["id"].as_str().expect("id")] {
        ctl(&c, follower, &key, &["sandbox", "delete", id]);
    }
    let after = ctl(&c, follower, &key, &["runner", "get", &runner_id]);
    assert_eq!(after["allocated"]["cpu"], 0, "{after}");
}

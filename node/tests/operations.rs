//! Operating Corral with the real tools: the deploy files pass haproxy's and promtool's checks;
//! haproxy (deploy/haproxy.cfg, ports rewritten) fronts a cluster whose leader is killed and
//! restarted while a client writes and reads only through it; a real Prometheus
//! (deploy/prometheus.yml, targets rewritten) scrapes the cluster.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestCluster, ADMIN_KEY};
use serde::Deserialize;
use serde_json::{json, Value};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join(file)
}

fn tool(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path.display().to_string();
        }
    }
    panic!("{name} is not installed; .ci/prereqs installs it (apt-get install {name})");
}

/// Kills the child when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn deploy_files_pass_their_tools() {
    let out = Command::new(tool("haproxy")).args(["-c", "-f"]).arg(deploy("haproxy.cfg")).output().expect("haproxy");
    assert!(out.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(deploy("prometheus.yml"))
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(deploy("corral-alerts.yml"))
        .output()
        .expect("promtool");
    assert!(out.status.success(), "promtool check rules: {}", String::from_utf8_lossy(&out.stdout));
    // The compose variant resolves service names at run time (init-addr none), so it checks here too.
    let out =
        Command::new(tool("haproxy")).args(["-c", "-f"]).arg(deploy("haproxy-compose.cfg")).output().expect("haproxy");
    assert!(out.status.success(), "haproxy -c compose: {}", String::from_utf8_lossy(&out.stderr));

    // Kubernetes: every document parses and the pieces an operator relies on are there.
    let text = std::fs::read_to_string(deploy("kubernetes/corral.yaml")).expect("manifest");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML document"))
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Service", "Service", "PodDisruptionBudget", "StatefulSet"]);
    let container = &docs[3]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(docs[0]["spec"]["clusterIP"].as_str(), Some("None"), "headless peer service");

    // docker-compose: valid YAML with three nodes and haproxy; `docker compose config` too
    // where the compose plugin is installed.
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy("docker-compose.yml")).expect("compose")).expect("YAML");
    for service in ["corral1", "corral2", "corral3", "haproxy"] {
        assert!(compose["services"].get(service).is_some(), "compose lacks {service}");
    }
    let docker = Command::new("docker").args(["compose", "version"]).output();
    if docker.is_ok_and(|o| o.status.success()) {
        let out = Command::new("docker")
            .args(["compose", "-f"])
            .arg(deploy("docker-compose.yml"))
            .arg("config")
            .env("CORRAL_ADMIN_KEY", "check-only-0123456789")
            .output()
            .expect("docker compose");
        assert!(out.status.success(), "docker compose config: {}", String::from_utf8_lossy(&out.stderr));
    } else {
        println!("docker compose not installed: compose file checked as YAML only");
    }

    // systemd: the unit runs `corral serve` with a config file and stops it with SIGTERM.
    let unit = std::fs::read_to_string(deploy("systemd/corral.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/corral serve --config"));
    assert!(unit.contains("KillSignal=SIGTERM"));
    // The runner agent's unit runs `corral runner` with its TLS files, its settings in an
    // environment file, and restarts after a refusal.
    let unit = std::fs::read_to_string(deploy("systemd/corral-runner.service")).expect("runner unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/corral runner --ca-cert"));
    assert!(unit.contains("EnvironmentFile=/etc/corral/runner.env") && unit.contains("Restart=on-failure"));
    // The agent's DaemonSet: one agent per machine, its token from the Secret under the
    // machine's name, the nodes' Raft addresses, metrics on the probed port.
    let text = std::fs::read_to_string(deploy("kubernetes/corral-runner.yaml")).expect("runner manifest");
    let daemonset: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    assert_eq!(daemonset["kind"].as_str(), Some("DaemonSet"));
    let agent = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let script = agent["args"][0].as_str().expect("the agent's command");
    assert!(script.contains("exec corral runner") && script.contains("/etc/corral/tokens/$NODE_NAME"), "{script}");
    let env: Vec<&str> = agent["env"].as_sequence().expect("env").iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(env, ["NODE_NAME", "CORRAL_ENDPOINTS", "CORRAL_RUNNER_METRICS_ADDR"]);
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"].as_str(), Some("/metrics"));

    // Grafana: valid JSON whose every query names metrics the nodes export (checked against
    // live nodes in `prometheus_scrapes_every_node`).
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/corral-dashboard.json")).expect("dashboard"))
            .expect("JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 10));
}

/// Every `corral_*` metric name in the dashboard and the alert rules.
fn metric_names_in_deploy_files() -> std::collections::BTreeSet<String> {
    let mut text = std::fs::read_to_string(deploy("grafana/corral-dashboard.json")).expect("dashboard");
    text.push_str(&std::fs::read_to_string(deploy("corral-alerts.yml")).expect("alerts"));
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("corral_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

/// deploy/haproxy.cfg with the cluster's addresses; returns (haproxy process, its address).
/// haproxy with deploy/haproxy.cfg, its bind address rewritten and one server line per node.
fn start_haproxy(c: &TestCluster, dir: &Path) -> (Process, String) {
    let front = format!("127.0.0.1:{}", common::free_port());
    let deployed = std::fs::read_to_string(deploy("haproxy.cfg")).expect("haproxy.cfg");
    let mut cfg: String = deployed
        .lines()
        .filter(|line| !line.trim_start().starts_with("server "))
        .map(|line| format!("{}\n", line.replace("127.0.0.1:8800", &front)))
        .collect();
    for node in &c.nodes {
        cfg.push_str(&format!("    server node{} {} check\n", node.id, node.api_addr));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).expect("write cfg");
    let child = Command::new(tool("haproxy"))
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    (Process(child), front)
}

#[test]
fn haproxy_fronts_the_cluster_through_a_leader_kill_and_restart() {
    let mut c = TestCluster::start(3, &["--request-timeout-ms", "3000"]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let (_haproxy, front) = start_haproxy(&c, dir.path());
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let base = format!("http://{front}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{base}/readyz")).send().map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(Instant::now() < deadline, "haproxy never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, org_key) = c.create_organization(leader, "through-haproxy");

    // The client: only haproxy's address; each write has an Idempotency-Key and is retried
    // with it until acknowledged.
    let client_done = Instant::now() + Duration::from_secs(12);
    let (acked, failures) = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            let mut acked = Vec::new();
            let mut failures: Vec<Instant> = Vec::new();
            let mut i = 0;
            while Instant::now() < client_done {
                let name = format!("via-haproxy-{i}");
                loop {
                    let sent = http
                        .post(format!("{base}/api/regions"))
                        .bearer_auth(&org_key)
                        .header("Idempotency-Key", &name)
                        .json(&json!({ "name": name }))
                        .send();
                    match sent {
                        Ok(r) if r.status().as_u16() == 201 => break,
                        _ => {
                            failures.push(Instant::now());
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                acked.push(name);
                i += 1;
            }
            (acked, failures)
        });
        std::thread::sleep(Duration::from_secs(3));
        let pid = c.pid(leader).expect("leader running") as libc::pid_t;
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_secs(3));
        client.join().expect("client")
    });
    c.kill(leader);
    c.start_node(leader);
    c.wait_converged(Duration::from_secs(60));

    let window = match (failures.first(), failures.last()) {
        (Some(first), Some(last)) => last.duration_since(*first) + Duration::from_millis(50),
        _ => Duration::ZERO,
    };
    println!(
        "{} writes acknowledged through haproxy; {} failed attempts; error window {window:?}",
        acked.len(),
        failures.len()
    );
    assert!(acked.len() > 50, "the client made progress: {}", acked.len());

    // Every acknowledged write is readable through haproxy, once.
    let list: Value =
        http.get(format!("{base}/api/regions")).bearer_auth(&org_key).send().expect("list").json().expect("json");
    let names: Vec<&str> = list.as_array().expect("list").iter().filter_map(|r| r["name"].as_str()).collect();
    for name in &acked {
        assert_eq!(names.iter().filter(|n| *n == name).count(), 1, "{name} missing or twice");
    }
}

fn prometheus_query(http: &reqwest::blocking::Client, base: &str, query: &str) -> Option<f64> {
    let body: Value = http.get(format!("{base}/api/v1/query")).query(&[("query", query)]).send().ok()?.json().ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_every_node() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let targets = (1..=3).map(|id| format!("\"{}\"", c.node(id).api_addr)).collect::<Vec<_>>().join(", ");
    let cfg = std::fs::read_to_string(deploy("prometheus.yml"))
        .expect("prometheus.yml")
        .replace("\"127.0.0.1:8801\", \"127.0.0.1:8802\", \"127.0.0.1:8803\"", &targets)
        .replace("scrape_interval: 5s", "scrape_interval: 1s");
    assert!(cfg.contains(&targets), "targets rewritten");
    std::fs::write(dir.path().join("prometheus.yml"), cfg).expect("write");
    std::fs::copy(deploy("corral-alerts.yml"), dir.path().join("corral-alerts.yml")).expect("copy rules");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let _prometheus = Process(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let base = format!("http://{listen}");
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");

    // Exactly one leader, as Prometheus sees it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leaders = prometheus_query(&http, &base, "sum(corral_raft_is_leader)");
        let nodes = prometheus_query(&http, &base, "count(up{job=\"corral\"} == 1)");
        if leaders == Some(1.0) && nodes == Some(3.0) {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never saw 3 nodes and 1 leader: {leaders:?} {nodes:?}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Request counters rise under load.
    let query = "sum(corral_http_requests_total{route=\"/api/regions\"})";
    let before = prometheus_query(&http, &base, query).unwrap_or(0.0);
    for i in 0..60 {
        let (s, _) = c.call(
            1 + (i % 3),
            "POST",
            "/api/regions",
            Some(ADMIN_KEY),
            Some(&json!({ "name": format!("p{i}") })),
            &[("X-Organization-ID", "default")],
        );
        assert_eq!(s, 201);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = prometheus_query(&http, &base, query).unwrap_or(0.0);
        if after >= before + 60.0 {
            break;
        }
        assert!(Instant::now() < deadline, "request counter did not rise: {before} → {after}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every metric the dashboard and alerts use is exported by some node once the cluster has
    // served a sandbox request (the scheduler's metrics appear on first use).
    let (org_id, org_key) = c.create_organization(leader, "metrics");
    let (s, _) = c.call(leader, "POST", "/api/sandboxes", Some(&org_key), Some(&json!({ "target": "us" })), &[]);
    assert_eq!(s, 409, "no runners in the shared region: no capacity");
    // The admin key acts for an organization only when the request names it.
    let (s, body) = c.call(leader, "GET", "/api/regions", Some(ADMIN_KEY), None, &[]);
    assert_eq!((s, body["code"].as_str()), (400, Some("organization_required")), "{body}");
    let (s, _) = c.call(leader, "GET", "/api/regions", Some(ADMIN_KEY), None, &[("X-Organization-ID", &org_id)]);
    assert_eq!(s, 200);
    std::thread::sleep(Duration::from_secs(6)); // the state gauges refresh every 5 s
    let exported: String = (1..=3)
        .map(|id| {
            http.get(format!("http://{}/metrics", c.node(id).api_addr))
                .send()
                .and_then(|r| r.text())
                .unwrap_or_default()
        })
        .collect();
    let exported_names: std::collections::BTreeSet<&str> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| ["_bucket", "_sum", "_count"].iter().fold(n, |n, s| n.strip_suffix(s).unwrap_or(n)))
        .collect();
    for name in metric_names_in_deploy_files() {
        assert!(exported_names.contains(name.as_str()), "no node exports {name}; exported: {exported_names:?}");
    }
}

/// Writes regions through `base` until `stop`, one Idempotency-Key each; with `retry`, a
/// failed attempt is retried (same key) until acknowledged. Returns (acknowledged, failures).
fn write_until(
    http: &reqwest::blocking::Client,
    base: &[String],
    key: &str,
    prefix: &str,
    retry: bool,
    stop: &std::sync::atomic::AtomicBool,
) -> (Vec<String>, Vec<String>) {
    let (acked, failures) = write_until_timed(http, base, key, prefix, retry, stop);
    (acked.into_iter().map(|(name, _)| name).collect(), failures)
}

/// [`write_until`], with the time each write was acknowledged.
fn write_until_timed(
    http: &reqwest::blocking::Client,
    base: &[String],
    key: &str,
    prefix: &str,
    retry: bool,
    stop: &std::sync::atomic::AtomicBool,
) -> (Vec<(String, Instant)>, Vec<String>) {
    let (mut acked, mut failures) = (Vec::new(), Vec::new());
    let mut i = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let name = format!("{prefix}-{i}");
        loop {
            let url = format!("{}/api/regions", base[i % base.len()]);
            let sent =
                http.post(url).bearer_auth(key).header("Idempotency-Key", &name).json(&json!({ "name": name })).send();
            match sent {
                Ok(r) if r.status().as_u16() == 201 => {
                    acked.push((name.clone(), Instant::now()));
                    break;
                }
                Ok(r) => failures.push(format!("{name}: {}", r.status())),
                Err(e) => failures.push(format!("{name}: {e}")),
            }
            if !retry {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        i += 1;
    }
    (acked, failures)
}

fn wait_ready(http: &reqwest::blocking::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(format!("{base}/readyz")).send().map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(Instant::now() < deadline, "{base} never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rolling_restart_under_load_through_haproxy_fails_no_request() {
    let mut c = TestCluster::start(3, &["--request-timeout-ms", "8000"]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let (_haproxy, front) = start_haproxy(&c, dir.path());
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(15)).build().expect("client");
    let base = vec![format!("http://{front}")];
    wait_ready(&http, &base[0]);
    let (_, key) = c.create_organization(leader, "rolling");
    let stop = std::sync::atomic::AtomicBool::new(false);

    let (acked, failures) = std::thread::scope(|scope| {
        let client = scope.spawn(|| write_until(&http, &base, &key, "rolling", false, &stop));
        for id in 1..=3 {
            std::thread::sleep(Duration::from_secs(1));
            c.stop(id);
            c.start_node(id);
            wait_ready(&http, &format!("http://{}", c.node(id).api_addr));
        }
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        client.join().expect("client")
    });
    println!("rolling restart: {} writes acknowledged, {} failed", acked.len(), failures.len());
    assert!(failures.is_empty(), "failed requests during the rolling restart: {failures:?}");
    assert!(acked.len() > 50, "the client made progress: {}", acked.len());
    c.wait_converged(Duration::from_secs(60));
    let (_, list) = c.call(2, "GET", "/api/regions", Some(&key), None, &[]);
    let names: std::collections::BTreeSet<&str> =
        list.as_array().expect("list").iter().filter_map(|r| r["name"].as_str()).collect();
    for name in &acked {
        assert!(names.contains(name.as_str()), "{name} lost");
    }
}

/// SIGTERM of the leader while clients write through haproxy: the leader stops admitting
/// writes, waits until a voter has its whole log, stops sending and has that voter campaign
/// (`RaftCluster::hand_off_leadership`). No request may fail, and the largest gap between
/// acknowledgements (printed; the README reports it) is a fraction of a second.
fn sigterm_of_the_leader_under_load_fails_no_request(nodes: u64) {
    let mut c = TestCluster::start(nodes, &["--request-timeout-ms", "8000"]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let (_haproxy, front) = start_haproxy(&c, dir.path());
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(15)).build().expect("client");
    let base = vec![format!("http://{front}")];
    wait_ready(&http, &base[0]);
    let (_, key) = c.create_organization(leader, "handoff");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (stopped_at, clients) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|i| {
                let (http, base, key, stop) = (&http, &base, &key, &stop);
                scope.spawn(move || write_until_timed(http, base, key, &format!("handoff-{i}"), false, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1_500));
        let stopping = Instant::now();
        c.stop(leader);
        let stopped_at = stopping.elapsed();
        std::thread::sleep(Duration::from_millis(1_500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (stopped_at, clients.into_iter().map(|c| c.join().expect("client")).collect::<Vec<_>>())
    });
    let failures: Vec<&String> = clients.iter().flat_map(|(_, f)| f).collect();
    let mut acked: Vec<&(String, Instant)> = clients.iter().flat_map(|(a, _)| a).collect();
    acked.sort_by_key(|(_, at)| *at);
    let gap = acked.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or_default();
    println!(
        "{nodes} nodes, SIGTERM of leader {leader}: {} writes acknowledged, {} failed, largest gap between \
         acknowledgements {gap:?}, node stopped {stopped_at:?} after SIGTERM",
        acked.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests while the leader handed off: {failures:?}");
    assert!(acked.len() > 50, "the clients made progress: {}", acked.len());
    let successor = c.wait_leader(Duration::from_secs(30));
    assert_ne!(successor, leader);
    let log = std::fs::read_to_string(&c.node(leader).log_path).unwrap_or_default();
    let hand_off = log.lines().find(|l| l.contains("leadership hand-off")).map(strip_ansi);
    assert!(hand_off.as_deref().is_some_and(|l| l.contains("moved=true")), "no hand-off in the log:\n{log}");
    c.start_node(leader);
    c.wait_converged(Duration::from_secs(60));
    let (_, list) = c.call(successor, "GET", "/api/regions", Some(&key), None, &[]);
    let names: std::collections::BTreeSet<&str> =
        list.as_array().expect("list").iter().filter_map(|r| r["name"].as_str()).collect();
    for (name, _) in acked {
        assert!(names.contains(name.as_str()), "{name} lost");
    }
}

/// A log line without its terminal colours.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn sigterm_of_the_leader_under_load_through_haproxy_fails_no_request_with_three_nodes() {
    sigterm_of_the_leader_under_load_fails_no_request(3);
}

#[test]
fn sigterm_of_the_leader_under_load_through_haproxy_fails_no_request_with_five_nodes() {
    sigterm_of_the_leader_under_load_fails_no_request(5);
}

#[test]
fn a_node_is_added_and_another_removed_under_load() {
    let mut c = TestCluster::start(3, &[]);
    c.wait_leader(Duration::from_secs(30));
    let (_, key) = c.create_organization(2, "members");
    c.add_node(4);
    c.start_node(4);
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(15)).build().expect("client");
    // The client avoids node 1, which is about to leave.
    let base: Vec<String> = [2, 3].iter().map(|&id| format!("http://{}", c.node(id).api_addr)).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);

    let (acked, _) = std::thread::scope(|scope| {
        let client = scope.spawn(|| write_until(&http, &base, &key, "member", true, &stop));
        std::thread::sleep(Duration::from_millis(500));
        let body = json!({ "nodeId": 4, "raftAddr": c.node(4).raft_addr, "apiAddr": c.node(4).api_addr });
        let (s, members) = c.call(2, "POST", "/api/admin/cluster/members", Some(ADMIN_KEY), Some(&body), &[]);
        assert_eq!(s, 200, "{members}");
        assert!(
            members.as_array().expect("members").iter().any(|m| m["nodeId"] == 4 && m["voter"] == true),
            "{members}"
        );
        std::thread::sleep(Duration::from_millis(500));
        let (s, members) = c.call(3, "DELETE", "/api/admin/cluster/members/1", Some(ADMIN_KEY), None, &[]);
        assert_eq!(s, 200, "{members}");
        assert!(!members.as_array().expect("members").iter().any(|m| m["nodeId"] == 1), "{members}");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        client.join().expect("client")
    });
    c.stop(1);

    // Every remaining node agrees on the membership {2, 3, 4}, and nothing acknowledged is lost.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in [2, 3, 4] {
        loop {
            let status = c.status(id).expect("status");
            let mut voters: Vec<u64> = status.members.iter().filter(|m| m.voter).map(|m| m.node_id).collect();
            voters.sort_unstable();
            if voters == vec![2, 3, 4] && status.members.len() == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "node {id} membership: {:?}", status.members);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    c.wait_converged(Duration::from_secs(60));
    let (_, list) = c.call(4, "GET", "/api/regions", Some(&key), None, &[]);
    let names: std::collections::BTreeSet<&str> =
        list.as_array().expect("list").iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(acked.len() > 10);
    for name in &acked {
        assert!(names.contains(name.as_str()), "{name} lost");
    }
}

/// Measurement, not a gate (run by hand; figures in the operations issue's closing note):
/// `cargo nextest run --release --run-ignored only -E 'test(failover_window)' --no-capture`.
/// Ten times: SIGKILL the leader behind haproxy while a client writes through it, and measure
/// the window from the kill to the next acknowledged write.
#[test]
#[ignore]
fn failover_window_over_ten_leader_kills() {
    let mut c = TestCluster::start(3, &["--request-timeout-ms", "10000"]);
    c.wait_leader(Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("tempdir");
    let (_haproxy, front) = start_haproxy(&c, dir.path());
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(15)).build().expect("client");
    let base = format!("http://{front}");
    wait_ready(&http, &base);
    let (_, key) = c.create_organization(1, "failover");
    let mut windows = Vec::new();
    for round in 0..10 {
        let leader = c.wait_leader(Duration::from_secs(30));
        c.wait_converged(Duration::from_secs(60));
        let killed_at = Instant::now();
        c.kill(leader);
        // Write until one is acknowledged; each write waits inside the cluster for the new leader.
        let mut i = 0;
        loop {
            let name = format!("fw-{round}-{i}");
            let sent = http
                .post(format!("{base}/api/regions"))
                .bearer_auth(&key)
                .header("Idempotency-Key", &name)
                .json(&json!({ "name": name }))
                .send();
            if sent.is_ok_and(|r| r.status().as_u16() == 201) {
                break;
            }
            i += 1;
        }
        windows.push(killed_at.elapsed());
        c.start_node(leader);
    }
    windows.sort();
    println!(
        "failover window over 10 leader kills: min {:?}, median {:?}, max {:?}",
        windows[0],
        windows[windows.len() / 2],
        windows[windows.len() - 1]
    );
}

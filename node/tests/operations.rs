//! Operating Corral with the real tools: the deploy files pass haproxy's and promtool's checks;
//! haproxy (deploy/haproxy.cfg, ports rewritten) fronts a cluster whose leader is killed and
//! restarted while a client writes and reads only through it; a real Prometheus
//! (deploy/prometheus.yml, targets rewritten) scrapes the cluster.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestCluster, ADMIN_KEY};
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
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
}

/// deploy/haproxy.cfg with the cluster's addresses; returns (haproxy process, its address).
fn start_haproxy(c: &TestCluster, dir: &Path) -> (Process, String) {
    let front = format!("127.0.0.1:{}", free_port());
    let mut cfg = std::fs::read_to_string(deploy("haproxy.cfg")).expect("haproxy.cfg");
    cfg = cfg.replace("127.0.0.1:8800", &front);
    for id in 1..=3 {
        cfg = cfg.replace(&format!("127.0.0.1:880{id}"), &c.node(id).api_addr);
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
    let listen = format!("127.0.0.1:{}", free_port());
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
            &[],
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
    let _ = leader;
}

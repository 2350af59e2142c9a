//! Test harness: real `corral serve` processes on loopback, data in a temporary directory.

#![allow(dead_code)]

pub mod browser;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_api::{ClusterStatus, StateHash};
use corral_net::tls::CertDir;
use serde_json::Value;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
/// The organization `post` and `get` act for with the admin key (which names one on every
/// organization route).
pub const ADMIN_ORGANIZATION: &str = "default";

/// A loopback port free for TCP and UDP (a node's Raft port is both: gRPC and QUIC).
///
/// Taken below Linux's ephemeral range (32768–60999), from an offset drawn per test process:
/// a port the OS handed out for `:0` is released before the node binds it, and in between
/// any outgoing connection or client QUIC socket of a test running beside this one could be
/// given the same ephemeral port (a full run once failed two cluster starts that way, "did not
/// serve /healthz"). Here only another test's own pick could collide, and picks start far
/// apart.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `count` consecutive loopback ports, each free for TCP and UDP (see
/// [`free_port`]); later picks in this process start after them.
pub fn free_ports(count: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::SeqCst) == u32::MAX {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let start = (std::process::id().wrapping_mul(7_919) ^ nanos) % SPAN;
        let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    }
    let count = u32::from(count.max(1));
    for _ in 0..SPAN {
        let first = FIRST + NEXT.fetch_add(count, Ordering::SeqCst) % (SPAN - count);
        let free = (first..first + count).all(|port| {
            let port = port as u16;
            TcpListener::bind(("127.0.0.1", port)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        });
        if free {
            return first as u16;
        }
    }
    panic!("no {count} free loopback ports in {FIRST}..{}", FIRST + SPAN)
}

pub struct TestNode {
    pub id: u64,
    pub api_addr: String,
    pub raft_addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub extra_args: Vec<String>,
    pub http: reqwest::blocking::Client,
    /// The cluster CA and the nodes' and runners' certificates (mutual TLS between nodes).
    pub certs: corral_net::tls::CertDir,
    /// REST over HTTPS (each node presents its node certificate, valid for 127.0.0.1).
    pub https: bool,
    /// Every secret seen in a request or response ([`SECRET_FIELDS`]); when the cluster is
    /// dropped, none of them may appear in a node's log or anywhere in its data directory.
    secrets: std::sync::Mutex<Vec<String>>,
    dir: tempfile::TempDir,
}

/// JSON fields that carry secrets in the REST API.
pub const SECRET_FIELDS: &[&str] =
    &["apiKey", "proxyApiKey", "sshGatewayApiKey", "snapshotManagerPassword", "password", "token"];

/// Appends the values of secret fields anywhere in `value` to `out`.
pub fn collect_secrets(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (name, v) in map {
                match v.as_str() {
                    Some(secret) if SECRET_FIELDS.contains(&name.as_str()) && secret.len() >= 8 => {
                        out.push(secret.to_string())
                    }
                    _ => collect_secrets(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_secrets(v, out)),
        _ => {}
    }
}

/// Files under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = fs::read(&path) {
            if !needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    found
}

impl TestCluster {
    /// Starts `n` nodes; node 1 bootstraps. `extra_args` go to every `corral serve`.
    pub fn start(n: u64, extra_args: &[&str]) -> TestCluster {
        Self::start_with(n, extra_args, false)
    }

    /// Like [`TestCluster::start`], with REST over HTTPS; `http` trusts the cluster CA.
    pub fn start_https(n: u64, extra_args: &[&str]) -> TestCluster {
        Self::start_with(n, extra_args, true)
    }

    fn start_with(n: u64, extra_args: &[&str], https: bool) -> TestCluster {
        let dir = tempfile::Builder::new().prefix("corral-test-").tempdir().expect("tempdir");
        let nodes = (1..=n)
            .map(|id| {
                let data_dir = dir.path().join(format!("node{id}"));
                TestNode {
                    id,
                    api_addr: format!("127.0.0.1:{}", free_port()),
                    raft_addr: format!("127.0.0.1:{}", free_port()),
                    log_path: dir.path().join(format!("node{id}.log")),
                    data_dir,
                    child: None,
                }
            })
            .collect();
        let certs = corral_net::tls::CertDir::new(dir.path().join("certs"));
        certs.ensure_local_cluster(n).expect("cluster certificates");
        let mut http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30));
        if https {
            let ca = fs::read(certs.ca_cert()).expect("ca.pem");
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca certificate"));
        }
        let http = http.build().expect("client");
        let extra_args = extra_args.iter().map(|s| s.to_string()).collect();
        let secrets = std::sync::Mutex::new(vec![ADMIN_KEY.to_string()]);
        let mut cluster = TestCluster { nodes, extra_args, http, certs, https, secrets, dir };
        for id in 1..=n {
            cluster.start_node(id);
        }
        for id in 1..=n {
            cluster.wait_serving(id, Duration::from_secs(30));
        }
        cluster
    }

    /// Waits until node `id` answers `/healthz`: its REST listener is bound, so a test that
    /// reads from every node right after start does not race a node still opening its stores.
    pub fn wait_serving(&self, id: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.http.get(self.url(id, "/healthz")).send().map_or(true, |r| !r.status().is_success()) {
            assert!(Instant::now() < deadline, "node {id} did not serve /healthz within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn peers(&self) -> String {
        self.nodes.iter().map(|n| format!("{}={}/{}", n.id, n.raft_addr, n.api_addr)).collect::<Vec<_>>().join(",")
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[(id - 1) as usize]
    }

    /// Starts node `id` with the same command line every time.
    pub fn start_node(&mut self, id: u64) {
        let peers = self.peers();
        let extra = self.extra_args.clone();
        self.certs.ensure_local_cluster(self.nodes.len() as u64).expect("cluster certificates");
        let tls_args = self.certs.serve_args(id);
        let rest_tls: Vec<std::ffi::OsString> = if self.https {
            let name = format!("node-{id}");
            vec!["--tls-cert".into(), self.certs.cert(&name).into(), "--tls-key".into(), self.certs.key(&name).into()]
        } else {
            vec!["--plain-http".into()]
        };
        let node = &mut self.nodes[(id - 1) as usize];
        assert!(node.child.is_none(), "node {id} already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(&node.log_path).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corral"));
        cmd.arg("serve")
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--raft-addr", &node.raft_addr, "--api-addr", &node.api_addr, "--peers", &peers])
            .args(&tls_args)
            .args(&rest_tls)
            .args(&extra)
            .env("CORRAL_ADMIN_KEY", ADMIN_KEY)
            // Tests that drive runner state through the admin API run no agents, so the leader's
            // health monitor is off unless a test asks for it (tests/runner_agent.rs does).
            .env(
                "CORRAL_RUNNER_SILENCE_MS",
                if extra.iter().any(|a| a == "--runner-silence-ms") { "3000" } else { "0" },
            )
            .env("CORRAL_LOG", "info,openraft=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log clone"))
            .stderr(log);
        if id == 1 {
            cmd.arg("--bootstrap");
        }
        node.child = Some(cmd.spawn().expect("spawn corral serve"));
    }

    /// Adds node `id` (not started) with fresh loopback ports; returns its index.
    pub fn add_node(&mut self, id: u64) {
        assert_eq!(id as usize, self.nodes.len() + 1, "node ids are dense");
        self.nodes.push(TestNode {
            id,
            api_addr: format!("127.0.0.1:{}", free_port()),
            raft_addr: format!("127.0.0.1:{}", free_port()),
            log_path: self.dir.path().join(format!("node{id}.log")),
            data_dir: self.dir.path().join(format!("node{id}")),
            child: None,
        });
    }

    /// SIGTERM, then wait for the node to drain and exit (it must, within 30 s).
    pub fn stop(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = node.child.take() {
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "node {id} exited with {status} after SIGTERM");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("node {id} did not exit within 30 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = node.child.take() {
            child.kill().expect("kill");
            child.wait().expect("wait");
        }
    }

    /// Process id of a running node.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(Child::id)
    }

    pub fn wipe(&mut self, id: u64) {
        let node = &self.nodes[(id - 1) as usize];
        assert!(node.child.is_none(), "stop node {id} before wiping it");
        fs::remove_dir_all(&node.data_dir).expect("wipe data dir");
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.node(id).api_addr, path)
    }

    pub fn status(&self, id: u64) -> Option<ClusterStatus> {
        let resp = self.http.get(self.url(id, "/api/admin/cluster")).bearer_auth(ADMIN_KEY).send().ok()?;
        resp.json().ok()
    }

    /// The hash of node `id`'s replica and the applied index it covers.
    pub fn state_hash(&self, id: u64) -> Option<StateHash> {
        let resp = self.http.get(self.url(id, "/api/admin/cluster/hash")).bearer_auth(ADMIN_KEY).send().ok()?;
        resp.json().ok()
    }

    /// Waits until a running node reports a leader that is itself running, and returns it.
    pub fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                if let Some(status) = self.status(node.id) {
                    if let Some(leader) = status.leader_id {
                        if self.nodes.iter().any(|n| n.id == leader && n.child.is_some())
                            && self.status(leader).is_some_and(|s| s.role == "leader")
                        {
                            return leader;
                        }
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn post(&self, id: u64, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(id, path))
            .bearer_auth(ADMIN_KEY)
            .header("X-Organization-ID", ADMIN_ORGANIZATION)
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path} to node {id}: {e}"));
        let status = resp.status().as_u16();
        let reply = resp.json().unwrap_or(Value::Null);
        self.remember_secrets(&[body, &reply]);
        (status, reply)
    }

    /// Records the secrets in these bodies for the check on drop.
    pub fn remember_secrets(&self, bodies: &[&Value]) {
        let mut found = Vec::new();
        for body in bodies {
            collect_secrets(body, &mut found);
        }
        if !found.is_empty() {
            self.secrets.lock().unwrap_or_else(|p| p.into_inner()).extend(found);
        }
    }

    /// Where each remembered secret shows up in a node's log or data directory.
    pub fn leaked_secrets(&self) -> Vec<(String, PathBuf)> {
        let secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut leaks = Vec::new();
        for secret in secrets {
            for node in &self.nodes {
                let mut places = files_containing(&node.data_dir, secret.as_bytes());
                if fs::read(&node.log_path).is_ok_and(|log| log.windows(secret.len()).any(|w| w == secret.as_bytes())) {
                    places.push(node.log_path.clone());
                }
                leaks.extend(places.into_iter().map(|p| (secret.clone(), p)));
            }
        }
        leaks
    }

    pub fn get(&self, id: u64, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url(id, path))
            .bearer_auth(ADMIN_KEY)
            .header("X-Organization-ID", ADMIN_ORGANIZATION)
            .send()
            .unwrap_or_else(|e| panic!("GET {path} from node {id}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    /// Any request with any bearer token (`None` sends no Authorization header).
    pub fn call(
        &self,
        id: u64,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, self.url(id, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let resp = request.send().unwrap_or_else(|e| panic!("{path} on node {id}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        let reply = serde_json::from_str(&text).unwrap_or(Value::Null);
        self.remember_secrets(&[body.unwrap_or(&Value::Null), &reply]);
        if let Some(token) = token {
            self.remember_secrets(&[&serde_json::json!({ "token": token })]);
        }
        (status, reply)
    }

    /// Creates an organization through node `via`; returns (id, api key).
    pub fn create_organization(&self, via: u64, name: &str) -> (String, String) {
        let (status, body) = self.call(
            via,
            "POST",
            "/api/admin/organizations",
            Some(ADMIN_KEY),
            Some(&serde_json::json!({ "name": name })),
            &[],
        );
        assert_eq!(status, 201, "create organization {name}: {body}");
        (body["id"].as_str().expect("id").to_string(), body["apiKey"].as_str().expect("apiKey").to_string())
    }

    /// Waits until the shared regions exist (the first leader creates them).
    pub fn wait_shared_regions(&self, via: u64, token: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.call(via, "GET", "/api/regions", Some(token), None, &[]);
            let names: Vec<&str> =
                body.as_array().map(|l| l.iter().filter_map(|r| r["name"].as_str()).collect()).unwrap_or_default();
            if status == 200 && names.contains(&"us") && names.contains(&"eu") {
                return;
            }
            assert!(Instant::now() < deadline, "shared regions did not appear: {status} {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running node reports the same applied index and state hash.
    pub fn wait_converged(&self, timeout: Duration) -> (u64, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses: Vec<Option<StateHash>> =
                self.nodes.iter().filter(|n| n.child.is_some()).map(|n| self.state_hash(n.id)).collect();
            if statuses.iter().all(Option::is_some) {
                let statuses: Vec<StateHash> = statuses.into_iter().flatten().collect();
                let first = &statuses[0];
                if first.applied_index.is_some()
                    && statuses
                        .iter()
                        .all(|s| s.applied_index == first.applied_index && s.state_hash == first.state_hash)
                {
                    return (first.applied_index.unwrap_or(0), first.state_hash.clone());
                }
                if Instant::now() > deadline {
                    let view: Vec<_> =
                        statuses.iter().map(|s| (s.node_id, s.applied_index, s.state_hash.clone())).collect();
                    panic!("nodes did not converge within {timeout:?}: {view:?}");
                }
            } else if Instant::now() > deadline {
                panic!("some node did not answer within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if !std::thread::panicking() {
            // Secrets are stored only as hashes or encrypted, and never logged.
            let leaks = self.leaked_secrets();
            assert!(leaks.is_empty(), "secrets found in clear: {leaks:?}");
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!("---- last lines of node {} log ({}) ----", node.id, node.log_path.display());
                if let Ok(file) = fs::File::open(&node.log_path) {
                    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
                    for line in lines.iter().skip(lines.len().saturating_sub(40)) {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

/// A real `corral runner` agent process, killed when dropped.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `corral runner` presenting the certificate `cert_name` from `certs`.
    pub fn start(token: &str, endpoints: &str, certs: &CertDir, cert_name: &str, log: &Path) -> Agent {
        Self::start_with(token, endpoints, certs, cert_name, log, &[])
    }

    /// [`Agent::start`] with more command-line arguments.
    pub fn start_with(
        token: &str,
        endpoints: &str,
        certs: &CertDir,
        cert_name: &str,
        log: &Path,
        args: &[&str],
    ) -> Agent {
        let file = fs::File::create(log).expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(["runner", "--endpoints", endpoints])
            .args(args)
            .env("CORRAL_RUNNER_TOKEN", token)
            .env("CORRAL_CA_CERT", certs.ca_cert())
            .env("CORRAL_RUNNER_CERT", certs.cert(cert_name))
            .env("CORRAL_RUNNER_KEY", certs.key(cert_name))
            .env("CORRAL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone"))
            .stderr(file)
            .spawn()
            .expect("spawn corral runner");
        Agent { child, log: log.to_path_buf() }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The endpoint of the agent's latest connection.
    pub fn connected_to(&self) -> Option<String> {
        self.log()
            .lines()
            .rev()
            .find(|l| l.contains("runner session open"))
            .and_then(|l| l.split("endpoint=").nth(1))
            .map(|s| s.split_whitespace().next().unwrap_or("").trim_matches('"').to_string())
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request for a 1-CPU, 1-GiB sandbox in region `reg` of organization `org`, with no labels,
/// tags, idempotency key or credential.
pub fn sandbox_request(sandbox_id: &str) -> corral_model::SandboxRequest {
    corral_model::SandboxRequest {
        sandbox_id: sandbox_id.into(),
        organization_id: "org".into(),
        target: "reg".into(),
        region_id: "reg".into(),
        resources: corral_model::Resources { cpu: 1, memory_gib: 1, disk_gib: 1, gpu: 0 },
        labels: Default::default(),
        runner_tags: Default::default(),
        idempotency_key: None,
        credential: None,
    }
}

/// A stand-in for the leader operations a node's gRPC service carries
/// (`corral_net::LeaderService`), for tests that serve the real transport without a real
/// leader behind it. It answers a placement with its own sandbox id (as a `NoCapacity`
/// region), after `release` for ids starting `held-`, never for ids starting `hang-`; a write
/// with its idempotency key the same way; everything else `Unavailable`.
pub struct EchoLeader {
    pub release: std::sync::Arc<tokio::sync::Notify>,
}

#[tonic::async_trait]
impl corral_net::LeaderService for EchoLeader {
    async fn read_index(&self) -> Result<u64, corral_net::ForwardError> {
        Err(corral_net::ForwardError::Unavailable("not in this test".into()))
    }
    async fn place_sandbox(&self, request: corral_model::SandboxRequest) -> corral_net::PlacementReply {
        if request.sandbox_id.starts_with("held-") {
            self.release.notified().await;
        }
        if request.sandbox_id.starts_with("hang-") {
            std::future::pending::<()>().await;
        }
        Ok(Err(corral_model::Rejection::NoCapacity { region_id: request.sandbox_id }))
    }
    async fn write_one(
        &self,
        proposal: corral_model::Proposal,
    ) -> Result<corral_net::CommittedWrite, corral_net::ForwardError> {
        let key = proposal.idempotency_key.unwrap_or_default();
        Ok(corral_net::CommittedWrite {
            log_index: 1,
            response: Err(corral_model::Rejection::NoCapacity { region_id: key }),
        })
    }
    async fn pre_vote(&self, _request: corral_net::PreVoteRequest) -> corral_net::PreVoteReply {
        corral_net::PreVoteReply { granted: false, reason: "not in this test".into() }
    }
    async fn campaign(&self) -> Result<(), corral_net::ForwardError> {
        Err(corral_net::ForwardError::Unavailable("not in this test".into()))
    }
    async fn change_membership(
        &self,
        _change: corral_net::MembershipChange,
    ) -> Result<corral_net::MembershipChanged, corral_net::ForwardError> {
        Err(corral_net::ForwardError::Unavailable("not in this test".into()))
    }
}

/// A one-node Raft on RocksDB in `dir`, in this process, elected and ready: for tests that
/// stage the leader's work exactly (batching, placement races).
pub async fn one_node_raft(dir: &Path, fsync: bool) -> (corral_raft_types::Raft, corral_raft_types::SharedState) {
    let (log, sm, shared) =
        corral_storage::open_storage(dir, corral_storage::StorageConfig { fsync }).expect("storage");
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    }
    .validate()
    .expect("config");
    let network = corral_net::GrpcNetworkFactory::default();
    let raft = corral_raft_types::Raft::new(1, std::sync::Arc::new(config), network, log, sm).await.expect("raft");
    let member = corral_raft_types::CorralNode { raft_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:2".into() };
    raft.initialize(std::collections::BTreeMap::from([(1, member)])).await.expect("initialize");
    raft.wait(Some(Duration::from_secs(10))).current_leader(1, "leader").await.expect("leader");
    (raft, shared)
}

//! Real `corral serve` processes and haproxy in front of them.
//!
//! With root, every node gets a network namespace of its own, joined to a bridge in the
//! harness's namespace by a veth pair, with an address `10.199.S.i` (S from the harness's pid so
//! two runs do not collide). Partitions are nftables rules inside the nodes' namespaces; the
//! harness's clients and haproxy sit on the bridge and always reach every node, as Jepsen's
//! clients do. Without root the nodes share loopback on free ports and partitions are off.
//! Everything the harness creates (namespaces, bridge, processes) is removed on drop.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_api::ClusterStatus;
use corral_net::tls::CertDir;

use crate::ChaosError;

pub const ADMIN_KEY: &str = "chaos-admin-key-0123456789";
const NFT_TABLE: &str = "corral_chaos";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// One namespace per node on a bridge (root only); partitions possible.
    Namespaces { tag: String, subnet: u8 },
    /// Loopback ports; no partitions.
    Loopback,
}

pub struct Node {
    pub id: u64,
    pub host: String,
    pub api_addr: String,
    pub raft_addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub namespace: Option<String>,
    child: Option<Child>,
    pub paused: bool,
    /// Removed from the membership (mid-wipe).
    pub removed: bool,
}

impl Node {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub network: Network,
    pub haproxy_addr: String,
    haproxy: Option<Child>,
    corral_bin: PathBuf,
    dir: PathBuf,
    /// The cluster CA and the nodes' certificates (node-to-node mutual TLS).
    certs: CertDir,
    bootstrapped: bool,
    /// Requests to nodes for status and membership.
    pub http: reqwest::Client,
}

fn run(cmd: &mut Command) -> Result<(), ChaosError> {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| ChaosError::Command(format!("{shown}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ChaosError::Command(format!("{shown}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn run_with_input(cmd: &mut Command, input: &str) -> Result<(), ChaosError> {
    use std::io::Write;
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ChaosError::Command(format!("{shown}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(|e| ChaosError::Command(format!("{shown}: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| ChaosError::Command(format!("{shown}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ChaosError::Command(format!("{shown}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Finds a system tool (haproxy, ip, nft) in the usual places.
pub fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn free_port() -> Result<u16, ChaosError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| ChaosError::Setup(format!("bind: {e}")))?;
    Ok(listener.local_addr().map_err(|e| ChaosError::Setup(format!("bind: {e}")))?.port())
}

/// Whether this process may create network namespaces (root with ip and nft present).
pub fn namespaces_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && tool("ip").is_some() && tool("nft").is_some()
}

impl Cluster {
    /// Lays out `n` nodes (namespaces and bridge created here; processes not yet started).
    pub fn create(n: usize, network: Network, corral_bin: PathBuf, dir: PathBuf) -> Result<Cluster, ChaosError> {
        let mut nodes = Vec::with_capacity(n);
        for i in 1..=n {
            let id = i as u64;
            let (host, api_addr, raft_addr, namespace) = match &network {
                Network::Namespaces { tag, subnet } => {
                    let host = format!("10.199.{subnet}.{i}");
                    (host.clone(), format!("{host}:7300"), format!("{host}:7400"), Some(format!("{tag}n{i}")))
                }
                Network::Loopback => {
                    let host = "127.0.0.1".to_string();
                    (host.clone(), format!("{host}:{}", free_port()?), format!("{host}:{}", free_port()?), None)
                }
            };
            nodes.push(Node {
                id,
                host,
                api_addr,
                raft_addr,
                data_dir: dir.join(format!("node{id}")),
                log_path: dir.join(format!("node{id}.log")),
                namespace,
                child: None,
                paused: false,
                removed: false,
            });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ChaosError::Setup(format!("http client: {e}")))?;
        let certs = CertDir::new(dir.join("certs"));
        certs.ensure_local_cluster(n as u64).map_err(|e| ChaosError::Setup(format!("certificates: {e}")))?;
        let mut cluster = Cluster {
            nodes,
            network,
            haproxy_addr: String::new(),
            haproxy: None,
            corral_bin,
            certs,
            dir,
            bootstrapped: false,
            http,
        };
        cluster.create_network()?;
        Ok(cluster)
    }

    fn create_network(&mut self) -> Result<(), ChaosError> {
        let Network::Namespaces { tag, subnet } = self.network.clone() else { return Ok(()) };
        let ip = tool("ip").ok_or_else(|| ChaosError::Setup("ip (iproute2) is not installed".into()))?;
        let bridge = format!("{tag}br");
        run(Command::new(&ip).args(["link", "add", &bridge, "type", "bridge"]))?;
        run(Command::new(&ip).args(["addr", "add", &format!("10.199.{subnet}.254/24"), "dev", &bridge]))?;
        run(Command::new(&ip).args(["link", "set", &bridge, "up"]))?;
        for node in &self.nodes {
            let Some(ns) = &node.namespace else { continue };
            let veth = format!("{tag}v{}", node.id);
            run(Command::new(&ip).args(["netns", "add", ns]))?;
            run(Command::new(&ip).args(["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns]))?;
            run(Command::new(&ip).args(["link", "set", &veth, "master", &bridge, "up"]))?;
            run(Command::new(&ip).args(["-n", ns, "addr", "add", &format!("{}/24", node.host), "dev", "eth0"]))?;
            run(Command::new(&ip).args(["-n", ns, "link", "set", "eth0", "up"]))?;
            run(Command::new(&ip).args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        Ok(())
    }

    fn peers(&self) -> String {
        self.nodes.iter().map(|n| format!("{}={}/{}", n.id, n.raft_addr, n.api_addr)).collect::<Vec<_>>().join(",")
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Starts node `id` with its data kept. Node 1 bootstraps the cluster on its very first
    /// start only: a wiped node 1 must rejoin, not found a second cluster.
    pub fn start(&mut self, id: u64) -> Result<(), ChaosError> {
        let peers = self.peers();
        let bootstrap = id == 1 && !self.bootstrapped;
        let bin = self.corral_bin.clone();
        let tls_args = self.certs.serve_args(id);
        let node = self.node_mut(id);
        if node.child.is_some() {
            return Ok(());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(|e| ChaosError::Setup(format!("{}: {e}", node.log_path.display())))?;
        let log_err = log.try_clone().map_err(|e| ChaosError::Setup(format!("log: {e}")))?;
        let mut cmd = match &node.namespace {
            Some(ns) => {
                let mut cmd = Command::new(tool("ip").ok_or_else(|| ChaosError::Setup("ip is not installed".into()))?);
                cmd.args(["netns", "exec", ns]).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        cmd.arg("serve")
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--raft-addr", &node.raft_addr, "--api-addr", &node.api_addr, "--peers", &peers])
            // Frequent snapshots so a wiped node catches up by snapshot, as in production; the
            // log kept after one is the production default (a node back from a few seconds
            // away catches up from the log).
            .args(["--snapshot-threshold", "2000"])
            .args(&tls_args)
            // haproxy speaks plain HTTP to the nodes; node-to-node traffic is mutual TLS.
            .arg("--plain-http")
            .env("CORRAL_ADMIN_KEY", ADMIN_KEY)
            // No runner agents run here; runner state is driven through the admin API.
            .env("CORRAL_RUNNER_SILENCE_MS", "0")
            // The workload's runner flapper marks runners unresponsive for a while: their
            // sandboxes are rescheduled, under the same faults as everything else.
            .env("CORRAL_RESCHEDULE_AFTER_MS", "300")
            .env("CORRAL_DRAIN_MS", "300")
            .env("CORRAL_LOG", "info,openraft=info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if bootstrap {
            cmd.arg("--bootstrap");
        }
        // `ip netns exec` execs corral, so the child's pid is the node's.
        let child = cmd.spawn().map_err(|e| ChaosError::Setup(format!("start {}: {e}", bin.display())))?;
        node.child = Some(child);
        node.paused = false;
        if bootstrap {
            self.bootstrapped = true;
        }
        Ok(())
    }

    fn signal(&self, id: u64, signal: libc::c_int) {
        if let Some(child) = &self.node(id).child {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    pub fn kill(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        let node = self.node_mut(id);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// SIGTERM and wait (up to 30 s) for a graceful exit; SIGKILL after that.
    pub fn terminate(&mut self, id: u64) -> bool {
        self.signal(id, libc::SIGCONT);
        self.signal(id, libc::SIGTERM);
        let node = self.node_mut(id);
        node.paused = false;
        let Some(mut child) = node.child.take() else { return true };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
        self.node_mut(id).paused = true;
    }

    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        self.node_mut(id).paused = false;
    }

    /// Deletes a stopped node's data.
    pub fn wipe(&mut self, id: u64) -> Result<(), ChaosError> {
        let node = self.node(id);
        if node.child.is_some() {
            return Err(ChaosError::Setup(format!("node {id} must be stopped before its data is wiped")));
        }
        match fs::remove_dir_all(&node.data_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ChaosError::Setup(format!("wipe {}: {e}", node.data_dir.display()))),
        }
    }

    /// Cuts the given (from, to) directions: packets from `from` no longer reach `to`.
    pub fn partition(&self, cuts: &[(u64, u64)]) -> Result<(), ChaosError> {
        let nft = tool("nft").ok_or_else(|| ChaosError::Setup("nft is not installed".into()))?;
        let ip = tool("ip").ok_or_else(|| ChaosError::Setup("ip is not installed".into()))?;
        for node in &self.nodes {
            let Some(ns) = &node.namespace else {
                return Err(ChaosError::Setup("partitions need network namespaces".into()));
            };
            let deaf_to: Vec<&str> =
                cuts.iter().filter(|(_, to)| *to == node.id).map(|(from, _)| self.node(*from).host.as_str()).collect();
            let mute_to: Vec<&str> =
                cuts.iter().filter(|(from, _)| *from == node.id).map(|(_, to)| self.node(*to).host.as_str()).collect();
            if deaf_to.is_empty() && mute_to.is_empty() {
                continue;
            }
            let mut rules = format!("table inet {NFT_TABLE} {{\n");
            if !deaf_to.is_empty() {
                rules += &format!(
                    "  chain input {{ type filter hook input priority -10; policy accept; ip saddr {{ {} }} drop; }}\n",
                    deaf_to.join(", ")
                );
            }
            if !mute_to.is_empty() {
                rules += &format!(
                    "  chain output {{ type filter hook output priority -10; policy accept; ip daddr {{ {} }} drop; }}\n",
                    mute_to.join(", ")
                );
            }
            rules += "}\n";
            run_with_input(Command::new(&ip).args(["netns", "exec", ns]).arg(&nft).args(["-f", "-"]), &rules)?;
        }
        Ok(())
    }

    /// Removes every partition rule.
    pub fn heal(&self) {
        let (Some(nft), Some(ip)) = (tool("nft"), tool("ip")) else { return };
        for node in &self.nodes {
            if let Some(ns) = &node.namespace {
                // Absent table: nothing to heal.
                let _ = run(Command::new(&ip)
                    .args(["netns", "exec", ns])
                    .arg(&nft)
                    .args(["delete", "table", "inet", NFT_TABLE]));
            }
        }
    }

    /// Starts haproxy in front of every node, with `deploy/haproxy.cfg` itself (its bind
    /// address and servers rewritten), so the chaos runs test what operators deploy.
    pub fn start_haproxy(&mut self) -> Result<(), ChaosError> {
        let haproxy = tool("haproxy").ok_or_else(|| ChaosError::Setup("haproxy is not installed".into()))?;
        let front = format!("127.0.0.1:{}", free_port()?);
        let servers: Vec<(u64, String)> = self.nodes.iter().map(|n| (n.id, n.api_addr.clone())).collect();
        let cfg = haproxy_config(&front, &servers);
        let path = self.dir.join("haproxy.cfg");
        fs::write(&path, cfg).map_err(|e| ChaosError::Setup(format!("{}: {e}", path.display())))?;
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| ChaosError::Setup(format!("start haproxy: {e}")))?;
        self.haproxy = Some(child);
        self.haproxy_addr = front;
        Ok(())
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{}", self.node(id).api_addr, path)
    }

    pub async fn status(&self, id: u64) -> Option<ClusterStatus> {
        self.admin_get(id, "/api/admin/cluster").await
    }

    /// An admin GET on a running, unpaused member; `None` when it does not answer with success.
    async fn admin_get<T: serde::de::DeserializeOwned>(&self, id: u64, path: &str) -> Option<T> {
        let node = self.node(id);
        if !node.running() || node.paused {
            return None;
        }
        let resp = self.http.get(self.url(id, path)).bearer_auth(ADMIN_KEY).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// The hash of a running member's replica and the index it covers (its own call: it
    /// reads the whole state).
    pub async fn state_hash(&self, id: u64) -> Option<corral_api::StateHash> {
        self.admin_get(id, "/api/admin/cluster/hash").await
    }

    /// The leader most running nodes agree on, if it says so itself.
    /// Each running member's state hash as it stands (`unreachable` for one that does not
    /// answer): what the report shows when the nodes did not converge.
    pub async fn state_hashes(&self) -> std::collections::BTreeMap<u64, String> {
        let mut hashes = std::collections::BTreeMap::new();
        for node in self.nodes.iter().filter(|n| n.running() && !n.removed) {
            let hash = self.state_hash(node.id).await.map_or_else(|| "unreachable".to_string(), |h| h.state_hash);
            hashes.insert(node.id, hash);
        }
        hashes
    }

    pub async fn leader(&self) -> Option<u64> {
        let mut votes: std::collections::BTreeMap<u64, usize> = Default::default();
        let mut self_declared = Vec::new();
        for id in self.ids() {
            if let Some(status) = self.status(id).await {
                if let Some(leader) = status.leader_id {
                    *votes.entry(leader).or_default() += 1;
                }
                if status.role == "leader" {
                    self_declared.push(id);
                }
            }
        }
        votes.into_iter().filter(|(id, _)| self_declared.contains(id)).max_by_key(|(_, v)| *v).map(|(id, _)| id)
    }

    /// Waits until every running member answers, agrees on one leader and has applied the
    /// same index with the same state hash; returns the hashes per node.
    pub async fn wait_converged(
        &self,
        timeout: Duration,
    ) -> Result<std::collections::BTreeMap<u64, String>, ChaosError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let mut statuses = Vec::new();
            for node in self.nodes.iter().filter(|n| n.running() && !n.removed) {
                match self.status(node.id).await {
                    Some(s) => statuses.push(s),
                    None => {
                        last = format!("node {} does not answer", node.id);
                        statuses.clear();
                        break;
                    }
                }
            }
            if let Some(first) = statuses.first() {
                let same = statuses.iter().all(|s| {
                    s.applied_index.is_some()
                        && s.applied_index == first.applied_index
                        && s.leader_id.is_some()
                        && s.leader_id == first.leader_id
                });
                if same {
                    // Hashed only once the indexes agree; each hash covers the index it was
                    // taken at, so a write landing between two hashes shows as a mismatch and
                    // the loop looks again.
                    let mut hashes = Vec::new();
                    for s in &statuses {
                        match self.state_hash(s.node_id).await {
                            Some(h) => hashes.push(h),
                            None => break,
                        }
                    }
                    let agree = hashes.len() == statuses.len()
                        && hashes.iter().all(|h| {
                            h.applied_index == hashes[0].applied_index && h.state_hash == hashes[0].state_hash
                        });
                    if agree {
                        return Ok(hashes.into_iter().map(|h| (h.node_id, h.state_hash)).collect());
                    }
                    last = hashes
                        .iter()
                        .map(|h| format!("node {}: applied {:?} hash {}", h.node_id, h.applied_index, h.state_hash))
                        .collect::<Vec<_>>()
                        .join("; ");
                } else {
                    last = statuses
                        .iter()
                        .map(|s| format!("node {}: leader {:?} applied {:?}", s.node_id, s.leader_id, s.applied_index))
                        .collect::<Vec<_>>()
                        .join("; ");
                }
            }
            if Instant::now() > deadline {
                return Err(ChaosError::NoRecovery(format!("not converged within {timeout:?}: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Membership change through whichever node answers (followers forward to the leader).
    pub async fn change_member(&self, add: Option<u64>, remove: Option<u64>) -> Result<(), ChaosError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut last = String::new();
            for via in self.ids() {
                let node = self.node(via);
                if !node.running() || node.paused || Some(via) == remove || Some(via) == add {
                    continue;
                }
                let request = match (add, remove) {
                    (Some(id), _) => {
                        let n = self.node(id);
                        self.http
                            .post(self.url(via, "/api/admin/cluster/members"))
                            .timeout(Duration::from_secs(20))
                            .json(&serde_json::json!({ "nodeId": id, "raftAddr": n.raft_addr, "apiAddr": n.api_addr }))
                    }
                    (None, Some(id)) => self.http.delete(self.url(via, &format!("/api/admin/cluster/members/{id}"))),
                    (None, None) => return Ok(()),
                };
                match request.bearer_auth(ADMIN_KEY).send().await {
                    Ok(resp) if resp.status().is_success() => return Ok(()),
                    Ok(resp) => last = format!("{}: {}", resp.status(), resp.text().await.unwrap_or_default()),
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() > deadline {
                return Err(ChaosError::NoRecovery(format!("membership change add {add:?} remove {remove:?}: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The last lines of a node's log, for the report of a failed run.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = fs::read_to_string(&self.node(id).log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.heal();
        for id in self.ids() {
            self.kill(id);
        }
        if let Some(mut child) = self.haproxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Network::Namespaces { tag, .. } = &self.network {
            if let Some(ip) = tool("ip") {
                let _ = run(Command::new(&ip).args(["link", "del", &format!("{tag}br")]));
                for node in &self.nodes {
                    if let Some(ns) = &node.namespace {
                        let _ = run(Command::new(&ip).args(["netns", "del", ns]));
                    }
                }
            }
        }
    }
}

/// The deploy file, compiled in: what operators run in front of a cluster.
const DEPLOY_HAPROXY: &str = include_str!("../../deploy/haproxy.cfg");

/// `deploy/haproxy.cfg` with its frontend bound to `front` and one server per node.
pub fn haproxy_config(front: &str, servers: &[(u64, String)]) -> String {
    let mut cfg = String::new();
    for line in DEPLOY_HAPROXY.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("server ") {
            continue;
        }
        if trimmed.starts_with("bind ") {
            cfg.push_str(&format!("    bind {front}\n"));
            continue;
        }
        // Its access log goes to stdout, which the harness does not keep.
        if trimmed.starts_with("log ") || trimmed.starts_with("option httplog") {
            continue;
        }
        cfg.push_str(line);
        cfg.push('\n');
    }
    for (id, addr) in servers {
        cfg.push_str(&format!("    server node{id} {addr} check\n"));
    }
    cfg
}

#[cfg(test)]
mod haproxy_tests {
    use super::*;

    #[test]
    fn the_chaos_balancer_is_the_deploy_file_with_its_own_addresses() {
        let cfg = haproxy_config("127.0.0.1:9999", &[(1, "127.0.0.1:1001".into()), (2, "127.0.0.1:1002".into())]);
        assert!(cfg.contains("    bind 127.0.0.1:9999\n") && !cfg.contains("8800"));
        assert!(cfg.contains("server node1 127.0.0.1:1001 check") && cfg.contains("server node2 127.0.0.1:1002 check"));
        assert!(!cfg.contains("127.0.0.1:8801"));
        assert!(cfg.contains("observe layer4") && cfg.contains("disable-l7-retry if is_post !has_idempotency_key"));
    }
}

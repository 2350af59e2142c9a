//! `corral dev`: a local 3-node cluster for development. Starts three `corral serve` child
//! processes on loopback with data under `./data`, bootstraps them, prints the endpoints and
//! an admin key, and stops them all on Ctrl-C. Running it again reuses the data and the key.
//!
//! A node that dies (a `kill -9` of the leader, say) is reported, the others keep serving,
//! and it is started again on its data after [`RESTART_AFTER`], so a failover can be watched
//! on a laptop. A node that keeps dying right after its start is left down after
//! [`RESTARTS_MAX`] tries in a row, with a pointer to its log.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use corral_net::tls::CertDir;

use crate::config::{format_peers, PeerConfig};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the nodes keep their data and logs.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Node i serves REST on 127.0.0.1:(api_port_base + i) and Raft on (raft_port_base + i).
    #[arg(long, default_value_t = 8800)]
    pub api_port_base: u16,
    #[arg(long, default_value_t = 8900)]
    pub raft_port_base: u16,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
}

fn admin_key(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin-key");
    if let Ok(key) = fs::read_to_string(&path) {
        let key = key.trim().to_string();
        if key.len() >= 16 {
            return Ok(key);
        }
    }
    let key = format!("corral_admin_{}", uuid::Uuid::new_v4().simple());
    fs::write(&path, &key).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(key)
}

/// How long a dead node stays down before `corral dev` starts it again.
pub const RESTART_AFTER: Duration = Duration::from_secs(3);
/// A node that exits within [`SHORT_LIFE`] of its start this many times in a row is left down.
pub const RESTARTS_MAX: u32 = 5;
/// A life shorter than this counts as a failed start.
pub const SHORT_LIFE: Duration = Duration::from_secs(10);

/// Starts node `peer` (`corral serve`), appending to its log unless `fresh_log`.
fn spawn_node(
    exe: &Path,
    data_dir: &Path,
    certs: &CertDir,
    peers: &[PeerConfig],
    peer: &PeerConfig,
    key: &str,
    first_start: bool,
) -> anyhow::Result<Child> {
    let node_dir = data_dir.join(format!("node{}", peer.id));
    fs::create_dir_all(&node_dir)?;
    let log_path = node_dir.join("corral.log");
    // A new run starts a new log; a restart keeps what the node said before it died.
    let log = if first_start {
        fs::File::create(&log_path)?
    } else {
        fs::OpenOptions::new().create(true).append(true).open(&log_path)?
    };
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .args(["--node-id", &peer.id.to_string()])
        .arg("--data-dir")
        .arg(&node_dir)
        .args(["--raft-addr", &peer.raft_addr, "--api-addr", &peer.api_addr])
        .args(["--peers", &format_peers(peers)])
        .args(certs.serve_args(peer.id))
        // Dev mode: REST in plain HTTP on loopback (said so below); cluster traffic is
        // mutual TLS as in production.
        .arg("--plain-http")
        .env("CORRAL_ADMIN_KEY", key)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if peer.id == 1 && first_start {
        cmd.arg("--bootstrap");
    }
    cmd.spawn().context("cannot start a node")
}

fn terminate(children: &mut [(u64, Child)]) {
    for (_, child) in children.iter() {
        // SIGTERM lets each node drain and close RocksDB cleanly.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (id, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    eprintln!("node {id} did not stop in time; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let key = admin_key(&data_dir)?;
    let peers: Vec<PeerConfig> = (1..=args.nodes)
        .map(|i| PeerConfig {
            id: i,
            raft_addr: format!("127.0.0.1:{}", u64::from(args.raft_port_base) + i),
            api_addr: format!("127.0.0.1:{}", u64::from(args.api_port_base) + i),
        })
        .collect();
    let exe = std::env::current_exe().context("cannot find the corral executable")?;
    let certs = CertDir::new(data_dir.join("certs"));
    certs.ensure_local_cluster(args.nodes).context("cannot prepare the dev cluster's certificates")?;

    let mut children: Vec<(u64, Child)> = Vec::new();
    for peer in &peers {
        match spawn_node(&exe, &data_dir, &certs, &peers, peer, &key, true) {
            Ok(child) => children.push((peer.id, child)),
            Err(e) => {
                terminate(&mut children);
                return Err(e);
            }
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let leader = runtime.block_on(wait_for_leader(&peers[0].api_addr, &key, Duration::from_secs(30)));
    let leader = match leader {
        Ok(l) => l,
        Err(e) => {
            terminate(&mut children);
            return Err(
                e.context(format!("cluster did not elect a leader; see {}/node*/corral.log", data_dir.display()))
            );
        }
    };

    let organization = match runtime.block_on(ensure_dev_organization(&peers[0].api_addr, &key, &data_dir)) {
        Ok(o) => o,
        Err(e) => {
            terminate(&mut children);
            return Err(e.context("cannot create the dev organization"));
        }
    };

    println!("Corral dev cluster is up: {} nodes, leader is node {leader}.", peers.len());
    for peer in &peers {
        let pid = children.iter().find(|(id, _)| *id == peer.id).map_or(0, |(_, child)| child.id());
        println!(
            "  node {}  REST http://{}   raft {}   pid {pid}   log {}/node{}/corral.log",
            peer.id,
            peer.api_addr,
            peer.raft_addr,
            data_dir.display(),
            peer.id
        );
    }
    println!("Admin key (operator; also in {}/admin-key):", data_dir.display());
    println!("  export CORRAL_ADMIN_TOKEN={key}");
    println!("Organization 'dev' ({}) API key (also in {}/org-key):", organization.0, data_dir.display());
    println!("  export CORRAL_TOKEN={}", organization.1);
    println!("Try:");
    println!(
        "  curl -s -X POST http://{}/api/regions -H \"Authorization: Bearer $CORRAL_TOKEN\" -H 'Content-Type: application/json' -d '{{\"name\":\"my-custom-region\",\"proxyUrl\":\"https://proxy.example.com\"}}'",
        peers[1].api_addr
    );
    println!(
        "  curl -s http://{}/api/admin/cluster -H \"Authorization: Bearer $CORRAL_ADMIN_TOKEN\"",
        peers[2].api_addr
    );
    println!("  CORRAL_ADDR=http://{} corral ctl region list", peers[2].api_addr);
    println!(
        "Dev mode: REST is plain HTTP on loopback; node-to-node gRPC and QUIC use mutual TLS from the CA in {}.",
        certs.dir.display()
    );
    println!(
        "Runner agents: corral runner --ca-cert {} --cert {} --key {} --endpoints {} --token <runner apiKey>",
        certs.ca_cert().display(),
        certs.cert("runner").display(),
        certs.key("runner").display(),
        peers.iter().map(|p| p.raft_addr.as_str()).collect::<Vec<_>>().join(",")
    );
    println!(
        "A node that dies is started again on its data after {} s (try: kill -9 the leader's pid, \
         then watch `corral ctl cluster status` or the dashboard's Cluster page).",
        RESTART_AFTER.as_secs()
    );
    println!("Ctrl-C (or SIGTERM) stops all nodes.");

    runtime.block_on(supervise(&mut children, |id, first| {
        let peer = peers.iter().find(|p| p.id == id).context("no such node")?;
        spawn_node(&exe, &data_dir, &certs, &peers, peer, &key, first)
    }));
    terminate(&mut children);
    println!("all nodes stopped");
    Ok(())
}

/// Watches the nodes until Ctrl-C or SIGTERM: a node that exits is reported and, after
/// [`RESTART_AFTER`], started again with `spawn(id, false)`; one that keeps failing right
/// after its start is left down after [`RESTARTS_MAX`] tries.
async fn supervise(children: &mut Vec<(u64, Child)>, mut spawn: impl FnMut(u64, bool) -> anyhow::Result<Child>) {
    let mut started: std::collections::HashMap<u64, Instant> =
        children.iter().map(|(id, _)| (*id, Instant::now())).collect();
    let mut failures: std::collections::HashMap<u64, u32> = Default::default();
    let shutdown = crate::serve::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (id, status) = tokio::select! {
            _ = &mut shutdown => return,
            exited = watch_children(children) => exited,
        };
        children.retain(|(child_id, _)| *child_id != id);
        let lived = started.get(&id).map_or(Duration::ZERO, Instant::elapsed);
        let failed = failures.entry(id).or_default();
        *failed = if lived < SHORT_LIFE { *failed + 1 } else { 1 };
        eprintln!(
            "node {id} exited ({status}) after {:.1} s; the other nodes keep serving (see node{id}/corral.log)",
            lived.as_secs_f64()
        );
        if *failed > RESTARTS_MAX {
            eprintln!("node {id} failed {RESTARTS_MAX} times in a row right after starting; leaving it down");
            continue;
        }
        eprintln!("restarting node {id} on its data in {} s", RESTART_AFTER.as_secs());
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(RESTART_AFTER) => {}
        }
        match spawn(id, false) {
            Ok(child) => {
                eprintln!("node {id} started again (pid {})", child.id());
                started.insert(id, Instant::now());
                children.push((id, child));
            }
            Err(e) => eprintln!("node {id} could not be started again: {e:#}"),
        }
    }
}

/// Waits until a child exits; returns its id and how it ended.
async fn watch_children(children: &mut [(u64, Child)]) -> (u64, String) {
    loop {
        for (id, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return (*id, status.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the organization `dev` once and keeps its key in `<data>/org-key` as
/// `id key`; returns (id, key).
async fn ensure_dev_organization(api_addr: &str, admin_key: &str, data_dir: &Path) -> anyhow::Result<(String, String)> {
    let path = data_dir.join("org-key");
    if let Ok(text) = fs::read_to_string(&path) {
        if let Some((id, key)) = text.trim().split_once(' ') {
            return Ok((id.to_string(), key.to_string()));
        }
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?;
    let base = format!("http://{api_addr}/api/admin/organizations");
    let response = client
        .post(&base)
        .bearer_auth(admin_key)
        .header("Idempotency-Key", "corral-dev-organization")
        .json(&serde_json::json!({ "name": "dev" }))
        .send()
        .await?;
    let (id, key) = if response.status().as_u16() == 409 {
        // Created by an earlier run whose key file is gone: issue a new key.
        let orgs: serde_json::Value = client.get(&base).bearer_auth(admin_key).send().await?.json().await?;
        let id = orgs
            .as_array()
            .and_then(|list| list.iter().find(|o| o["name"] == "dev"))
            .and_then(|o| o["id"].as_str())
            .context("organization 'dev' exists but is not listed")?
            .to_string();
        let created: serde_json::Value = client
            .post(format!("{base}/{id}/api-keys"))
            .bearer_auth(admin_key)
            .json(&serde_json::json!({ "name": "dev" }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        (id, created["apiKey"].as_str().context("no apiKey in response")?.to_string())
    } else {
        let created: serde_json::Value = response.error_for_status()?.json().await?;
        let id = created["id"].as_str().context("no id in response")?.to_string();
        (id, created["apiKey"].as_str().context("no apiKey in response")?.to_string())
    };
    fs::write(&path, format!("{id} {key}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    }
    Ok((id, key))
}

async fn wait_for_leader(api_addr: &str, key: &str, timeout: Duration) -> anyhow::Result<u64> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + timeout;
    let url = format!("http://{api_addr}/api/admin/cluster");
    loop {
        if let Ok(resp) = client.get(&url).bearer_auth(key).send().await {
            if let Ok(status) = resp.json::<corral_api::ClusterStatus>().await {
                if let Some(leader) = status.leader_id {
                    return Ok(leader);
                }
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("no leader after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

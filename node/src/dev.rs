//! `corral dev`: a local 3-node cluster for development. Starts three `corral serve` child
//! processes on loopback with data under `./data`, bootstraps them, prints the endpoints and
//! an admin key, and stops them all on Ctrl-C. Running it again reuses the data and the key.

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
        let node_dir = data_dir.join(format!("node{}", peer.id));
        fs::create_dir_all(&node_dir)?;
        let log = fs::File::create(node_dir.join("corral.log"))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .args(["--node-id", &peer.id.to_string()])
            .arg("--data-dir")
            .arg(&node_dir)
            .args(["--raft-addr", &peer.raft_addr, "--api-addr", &peer.api_addr])
            .args(["--peers", &format_peers(&peers)])
            .args(certs.serve_args(peer.id))
            // Dev mode: REST in plain HTTP on loopback (said so below); cluster traffic is
            // mutual TLS as in production.
            .arg("--plain-http")
            .env("CORRAL_ADMIN_KEY", &key)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if peer.id == 1 {
            cmd.arg("--bootstrap");
        }
        match cmd.spawn() {
            Ok(child) => children.push((peer.id, child)),
            Err(e) => {
                terminate(&mut children);
                return Err(e).context("cannot start a node");
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
        println!(
            "  node {}  REST http://{}   raft {}   log {}/node{}/corral.log",
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
    println!("Ctrl-C (or SIGTERM) stops all nodes.");

    let stop = runtime.block_on(async {
        tokio::select! {
            _ = crate::serve::shutdown_signal() => None,
            exited = watch_children(&mut children) => Some(exited),
        }
    });
    if let Some(id) = stop {
        eprintln!("node {id} exited; stopping the others (see its corral.log)");
    }
    terminate(&mut children);
    println!("all nodes stopped");
    Ok(())
}

async fn watch_children(children: &mut [(u64, Child)]) -> u64 {
    loop {
        for (id, child) in children.iter_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                return *id;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
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

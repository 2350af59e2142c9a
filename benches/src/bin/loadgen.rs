//! `loadgen`: drives N concurrent HTTP clients (each one keep-alive connection) at a cluster
//! for a duration and prints throughput, latency percentiles and error counts, as text and,
//! with `--json`, as JSON. Workloads: Corral sandbox creations, region creations and
//! linearizable region listings; and, to compare with the same client, connection count and
//! duration, etcd's puts and linearizable ranges through its JSON gateway (`etcd-puts`,
//! `etcd-reads`; `--addrs` are then etcd's client URLs). `benches/peers/run` alternates them.
//!
//! With `--admin-token`, it first prepares a region of runners big enough for the run and
//! brings every one of them up with a simulated runner agent (in this process, over QUIC to
//! `--runner-endpoints`): runners become `ready` because they report, as in production, and
//! keep reporting for the whole run. It works against a fresh `corral dev` cluster:
//!
//! ```sh
//! cargo run --release -p corral-benches --bin loadgen -- \
//!   --addrs http://127.0.0.1:8801,http://127.0.0.1:8802,http://127.0.0.1:8803 \
//!   --token $(cut -d' ' -f2 data/org-key) --admin-token $(cat data/admin-key) \
//!   --connections 256 --duration 30
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use corral_benches::http1::{Http1Connection, Http1Error};
use hyper::Method;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Workload {
    /// `POST /api/sandboxes` into the target region.
    Sandboxes,
    /// `POST /api/regions`, a new name each time.
    Regions,
    /// `GET /api/regions` (linearizable, the default consistency).
    Reads,
    /// etcd v3 `POST /v3/kv/put`, 200-byte values, a new key each time.
    EtcdPuts,
    /// etcd v3 `POST /v3/kv/range` of one key (linearizable, etcd's default).
    EtcdReads,
}

impl Workload {
    fn is_etcd(self) -> bool {
        matches!(self, Workload::EtcdPuts | Workload::EtcdReads)
    }

    /// The status of a request that did what it should.
    fn success(self) -> u16 {
        match self {
            Workload::Sandboxes | Workload::Regions => 201,
            Workload::Reads | Workload::EtcdPuts | Workload::EtcdReads => 200,
        }
    }
}

#[derive(Debug, Parser)]
#[command(about = "End-to-end REST load for a Corral cluster")]
struct Args {
    /// Comma-separated base URLs; connections are spread over them round-robin.
    #[arg(
        long,
        env = "CORRAL_ADDRS",
        default_value = "http://127.0.0.1:8801,http://127.0.0.1:8802,http://127.0.0.1:8803"
    )]
    addrs: String,
    /// Organization API key (Corral workloads).
    #[arg(long, env = "CORRAL_TOKEN", hide_env_values = true, default_value = "")]
    token: String,
    /// Admin key: when given, a region with ready runners is prepared for the sandboxes.
    #[arg(long, env = "CORRAL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Target region for sandboxes (created when --admin-token is given).
    #[arg(long, default_value = "loadgen")]
    target: String,
    /// Runners to create in the target region (each 1,000,000 cpu).
    #[arg(long, default_value_t = 100)]
    runners: usize,
    #[arg(long, value_enum, default_value = "sandboxes")]
    workload: Workload,
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Seconds.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// QUIC endpoints (the nodes' Raft addresses) the simulated runner agents connect to.
    #[arg(long, default_value = "127.0.0.1:8901,127.0.0.1:8902,127.0.0.1:8903")]
    runner_endpoints: String,
    /// Where the cluster's CA and the runner certificate (`runner.pem`) are; `corral dev`
    /// writes them to `data/certs`.
    #[arg(long, default_value = "data/certs")]
    certs_dir: std::path::PathBuf,
    /// Make the runners ready through the admin API instead of running agents (a baseline
    /// without health traffic; the nodes need `CORRAL_RUNNER_SILENCE_MS=0`, or the leader
    /// demotes the silent runners).
    #[arg(long)]
    no_agents: bool,
}

/// A request without a response after this long counts as a `timeout` error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// etcd puts carry 200-byte values.
const ETCD_VALUE: [u8; 200] = [b'v'; 200];
/// The key `etcd-reads` ranges over (written once before the run).
const ETCD_READ_KEY: &str = "loadgen-read";

/// Writes the key `etcd-reads` reads.
async fn prepare_etcd_key(base: &str) -> anyhow::Result<()> {
    reqwest::Client::new()
        .post(format!("{base}/v3/kv/put"))
        .json(&json!({ "key": BASE64.encode(ETCD_READ_KEY), "value": BASE64.encode(ETCD_VALUE) }))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

fn runner_token(target: &str, i: usize) -> String {
    format!("loadgen-token-{target}-{i}")
}

#[derive(Debug, Serialize)]
struct Report {
    workload: Workload,
    connections: usize,
    duration_seconds: f64,
    requests: u64,
    succeeded: u64,
    throughput_per_second: f64,
    latency_ms: Latencies,
    errors: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct Latencies {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Creates the region and runners; returns the region id.
async fn prepare(args: &Args, base: &str, admin: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{base}/api/regions"))
        .bearer_auth(&args.token)
        .json(&json!({ "name": args.target }))
        .send()
        .await?;
    let region: Value = match resp.status().as_u16() {
        201 => resp.json().await?,
        409 => {
            let list: Value =
                client.get(format!("{base}/api/regions")).bearer_auth(&args.token).send().await?.json().await?;
            list.as_array()
                .and_then(|l| l.iter().find(|r| r["name"] == args.target.as_str()).cloned())
                .context("target region exists but is not listed")?
        }
        s => bail!("cannot create region {}: {s} {}", args.target, resp.text().await.unwrap_or_default()),
    };
    let region_id = region["id"].as_str().context("region without id")?.to_string();
    let have = region_runners(&client, base, admin, &region_id).await?.len();
    for i in have..args.runners {
        let body = json!({ "name": format!("{}-runner-{i}", args.target), "regionId": region_id,
            "apiKey": runner_token(&args.target, i), "apiVersion": "2",
            "cpu": 1_000_000, "memoryGiB": 1_000_000, "diskGiB": 10_000_000 });
        let runner: Value = client
            .post(format!("{base}/api/admin/runners"))
            .bearer_auth(admin)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        runner["id"].as_str().with_context(|| format!("runner not created: {runner}"))?;
    }
    Ok(region_id)
}

/// The region's runners as the admin API lists them.
async fn region_runners(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    region_id: &str,
) -> anyhow::Result<Vec<Value>> {
    let list: Value = client
        .get(format!("{base}/api/admin/runners?regionId={region_id}"))
        .bearer_auth(admin)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(list.as_array().cloned().unwrap_or_default())
}

async fn ready_by_admin(base: &str, admin: &str, region_id: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for runner in region_runners(&client, base, admin, region_id).await?.iter().filter(|r| r["state"] != "ready") {
        let id = runner["id"].as_str().context("runner without id")?;
        client
            .patch(format!("{base}/api/admin/runners/{id}/state"))
            .bearer_auth(admin)
            .json(&json!({ "state": "ready" }))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

/// Waits until every runner of the region is `ready` (they report through the agents).
async fn wait_ready(base: &str, admin: &str, region_id: &str, want: usize) -> anyhow::Result<Duration> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let ready =
            region_runners(&client, base, admin, region_id).await?.iter().filter(|r| r["state"] == "ready").count();
        if ready >= want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("only {ready} of {want} runners became ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addrs: Vec<String> = args.addrs.split(',').map(|a| a.trim().trim_end_matches('/').to_string()).collect();
    if addrs.is_empty() || args.connections == 0 {
        bail!("need at least one address and one connection");
    }
    if args.token.is_empty() && !args.workload.is_etcd() {
        bail!("--token (an organization API key) is needed for Corral workloads");
    }
    if args.workload == Workload::EtcdReads {
        prepare_etcd_key(&addrs[0]).await?;
    }
    let (stop_agents, agents_stop) = tokio::sync::watch::channel(false);
    let mut agents = None;
    if let (Some(admin), Workload::Sandboxes) = (&args.admin_token, args.workload) {
        let region_id = prepare(&args, &addrs[0], admin).await?;
        if args.no_agents {
            ready_by_admin(&addrs[0], admin, &region_id).await?;
        } else {
            let tokens: Vec<String> = (0..args.runners).map(|i| runner_token(&args.target, i)).collect();
            let endpoints: Vec<String> = args.runner_endpoints.split(',').map(|e| e.trim().to_string()).collect();
            let tls = corral_net::tls::CertDir::new(&args.certs_dir).load("runner")?;
            agents = Some(tokio::spawn(corral_node::runner_agent::simulate(tokens, endpoints, tls, agents_stop)));
        }
        let took = wait_ready(&addrs[0], admin, &region_id, args.runners).await?;
        eprintln!("{} simulated runners ready after {:.1} s", args.runners, took.as_secs_f64());
    }

    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    let etcd_value = BASE64.encode(ETCD_VALUE);
    let etcd_read_body = Bytes::from(json!({ "key": BASE64.encode(ETCD_READ_KEY) }).to_string());
    let sandbox_body = Bytes::from(json!({ "target": args.target }).to_string());
    for c in 0..args.connections {
        let bearer = (!args.workload.is_etcd()).then_some(args.token.as_str());
        // One connection per client, keep-alive, opened on its first request.
        let mut connection = Http1Connection::new(&addrs[c % addrs.len()], bearer, REQUEST_TIMEOUT)?;
        let workload = args.workload;
        let counter = counter.clone();
        let (etcd_value, etcd_read_body, sandbox_body) =
            (etcd_value.clone(), etcd_read_body.clone(), sandbox_body.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (method, path, body) = match workload {
                    Workload::Sandboxes => (Method::POST, "/api/sandboxes", Some(sandbox_body.clone())),
                    Workload::Regions => {
                        let body = json!({ "name": format!("lg-{c}-{n}") }).to_string();
                        (Method::POST, "/api/regions", Some(Bytes::from(body)))
                    }
                    Workload::Reads => (Method::GET, "/api/regions", None),
                    Workload::EtcdPuts => {
                        let key = BASE64.encode(format!("lg-{c}-{n}"));
                        let body = json!({ "key": key, "value": etcd_value }).to_string();
                        (Method::POST, "/v3/kv/put", Some(Bytes::from(body)))
                    }
                    Workload::EtcdReads => (Method::POST, "/v3/kv/range", Some(etcd_read_body.clone())),
                };
                let t0 = Instant::now();
                match connection.send(method, path, body).await {
                    Ok(resp) if resp.status.as_u16() == workload.success() => {
                        latencies.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok(resp) => {
                        let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
                        let code = body["code"].as_str().unwrap_or("");
                        *errors.entry(format!("{} {code}", resp.status.as_u16())).or_default() += 1;
                    }
                    Err(e) => {
                        let kind = if matches!(e, Http1Error::Timeout(_)) { "timeout" } else { "transport" };
                        *errors.entry(kind.to_string()).or_default() += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop_agents.send(true);
    if let Some(agents) = agents {
        agents.await??;
    }
    latencies.sort_unstable();
    let succeeded = latencies.len() as u64;
    let report = Report {
        workload: args.workload,
        connections: args.connections,
        duration_seconds: elapsed,
        requests: succeeded + errors.values().sum::<u64>(),
        succeeded,
        throughput_per_second: succeeded as f64 / elapsed,
        latency_ms: Latencies {
            p50: percentile(&latencies, 50.0),
            p90: percentile(&latencies, 90.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().map(|&m| m as f64 / 1000.0).unwrap_or(0.0),
        },
        errors,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{:?}: {} ok of {} requests in {:.1} s over {} connections = {:.0}/s; latency ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}; errors {:?}",
            report.workload,
            report.succeeded,
            report.requests,
            report.duration_seconds,
            report.connections,
            report.throughput_per_second,
            report.latency_ms.p50,
            report.latency_ms.p90,
            report.latency_ms.p99,
            report.latency_ms.max,
            report.errors
        );
    }
    Ok(())
}

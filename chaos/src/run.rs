//! One chaos run: start the cluster and haproxy, set up the workload's regions and runners,
//! run clients and nemesis together, heal, then read every node's final state and check it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::check::{self, PlacedSandbox, RunnerCapacity, Violation};
use crate::cluster::{self, Cluster, Network, ADMIN_KEY};
use crate::history::Outcome;
use crate::nemesis::{resolve, split_sides, FaultKind, Nemesis, PlannedFault, Target};
use crate::report::{self, FaultRecord, Report};
use crate::workload::{self, Recorder, SandboxCall, WorkloadConfig, REQUEST_LABEL};
use crate::ChaosError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkChoice {
    /// Namespaces; an error when they are not available (see [`choose_network`]).
    Auto,
    Namespaces,
    Loopback,
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub nodes: usize,
    pub duration: Duration,
    pub seed: u64,
    pub workers: usize,
    pub corral_bin: PathBuf,
    /// Report, timeline and node logs go here.
    pub out_dir: PathBuf,
    pub network: NetworkChoice,
    /// Search steps per key for the linearizability checker.
    pub check_budget: u64,
    /// Clients read with `?consistency=stale` (a control run: the checker must object).
    pub stale_reads: bool,
}

const SANDBOX_REGION: &str = "chaos-sandboxes";
const RUNNER_REGION: &str = "chaos-runners";
const SANDBOX_RUNNERS: usize = 3;
/// Small on purpose: the workers together want more than the runners hold (each keeps up to
/// four sandboxes), so placement runs at the capacity edge and over-capacity would show.
const SANDBOX_RUNNER_CPUS: u64 = 8;

/// A request retried until it gets a 2xx (setup only; the workload records, never retries).
async fn setup_call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
    idempotency: Option<&str>,
) -> Result<Value, ChaosError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut request = http.request(method.clone(), url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency {
            request = request.header("Idempotency-Key", key);
        }
        let last = match request.send().await {
            Ok(resp) if resp.status().is_success() => return Ok(resp.json().await.unwrap_or(Value::Null)),
            Ok(resp) => format!("{}: {}", resp.status(), resp.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(ChaosError::Setup(format!("{method} {url}: {last}")));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The token of sandbox runner `i` (the leak scan looks for it).
fn sandbox_runner_token(i: usize) -> String {
    format!("chaos-sandbox-runner-token-{i}")
}

struct Setup {
    org_token: String,
    runner_region_id: String,
    sandbox_region_id: String,
    sandbox_runner_ids: Vec<String>,
}

/// An organization, its two regions and the sandbox runners, made ready by the admin API.
async fn set_up(base: &str, http: &reqwest::Client) -> Result<Setup, ChaosError> {
    use reqwest::Method;
    let org = setup_call(
        http,
        Method::POST,
        &format!("{base}/api/admin/organizations"),
        ADMIN_KEY,
        Some(&json!({ "name": "chaos" })),
        Some("chaos-org"),
    )
    .await?;
    let org_token = org["apiKey"].as_str().ok_or_else(|| ChaosError::Setup(format!("no apiKey in {org}")))?.to_string();
    let mut region_ids = Vec::new();
    for name in [RUNNER_REGION, SANDBOX_REGION] {
        let region = setup_call(
            http,
            Method::POST,
            &format!("{base}/api/regions"),
            &org_token,
            Some(&json!({ "name": name })),
            Some(name),
        )
        .await?;
        let id = region["id"].as_str().ok_or_else(|| ChaosError::Setup(format!("no id in {region}")))?;
        region_ids.push(id.to_string());
    }
    let sandbox_region_id = region_ids.pop().unwrap_or_default();
    let runner_region_id = region_ids.pop().unwrap_or_default();
    let mut sandbox_runner_ids = Vec::new();
    for i in 0..SANDBOX_RUNNERS {
        let body = json!({ "name": format!("sandbox-runner-{i}"), "regionId": sandbox_region_id,
            "apiKey": sandbox_runner_token(i), "apiVersion": "2",
            "cpu": SANDBOX_RUNNER_CPUS, "memoryGiB": 256, "diskGiB": 4096 });
        let runner = setup_call(
            http,
            Method::POST,
            &format!("{base}/api/admin/runners"),
            ADMIN_KEY,
            Some(&body),
            Some(&format!("sandbox-runner-{i}")),
        )
        .await?;
        let id = runner["id"].as_str().ok_or_else(|| ChaosError::Setup(format!("no id in {runner}")))?;
        sandbox_runner_ids.push(id.to_string());
        setup_call(
            http,
            Method::PATCH,
            &format!("{base}/api/admin/runners/{id}/state"),
            ADMIN_KEY,
            Some(&json!({ "state": "ready" })),
            None,
        )
        .await?;
    }
    Ok(Setup { org_token, runner_region_id, sandbox_region_id, sandbox_runner_ids })
}

/// Waits until every running member answers and all name the same leader, one of them.
async fn wait_recovered(cluster: &Cluster, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let mut leaders = Vec::new();
        let mut all = true;
        for node in cluster.nodes.iter().filter(|n| n.running() && !n.removed) {
            match cluster.status(node.id).await {
                Some(s) => leaders.push(s.leader_id),
                None => all = false,
            }
        }
        if all && !leaders.is_empty() {
            if let Some(Some(leader)) = leaders.first() {
                let live = cluster.node(*leader).running() && !cluster.node(*leader).removed;
                if live && leaders.iter().all(|l| *l == Some(*leader)) {
                    return true;
                }
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn all_pairs_across(a: &[u64], b: &[u64]) -> Vec<(u64, u64)> {
    a.iter().flat_map(|x| b.iter().flat_map(move |y| [(*x, *y), (*y, *x)])).collect()
}

/// Applies one fault, holds it, heals it, and waits for the cluster to recover.
async fn inject(cluster: &mut Cluster, index: usize, plan: &PlannedFault, recorder: &Recorder) -> FaultRecord {
    let members: Vec<u64> = cluster.nodes.iter().filter(|n| n.running() && !n.removed).map(|n| n.id).collect();
    let leader = cluster.leader().await;
    let hold = Duration::from_millis(plan.hold_ms);
    let start_ns = recorder.now();
    let mut note = None;
    let mut injected = true;
    let mut nodes = Vec::new();
    let victim = resolve(plan.target, leader, &members);
    match (plan.kind, victim) {
        (_, None) => {
            injected = false;
            note = Some("no node to target".to_string());
        }
        (FaultKind::Kill, Some(v)) => {
            nodes.push(v);
            cluster.kill(v);
            tokio::time::sleep(hold).await;
            if let Err(e) = cluster.start(v) {
                note = Some(e.to_string());
            }
        }
        (FaultKind::Pause, Some(v)) => {
            nodes.push(v);
            cluster.pause(v);
            tokio::time::sleep(hold).await;
            cluster.resume(v);
        }
        (FaultKind::Restart, Some(v)) => {
            nodes.push(v);
            let graceful = tokio::task::block_in_place(|| cluster.terminate(v));
            if !graceful {
                note = Some("did not exit within 30 s of SIGTERM; killed".to_string());
            }
            tokio::time::sleep(hold).await;
            if let Err(e) = cluster.start(v) {
                note = Some(e.to_string());
            }
        }
        (FaultKind::Wipe, Some(v)) => {
            nodes.push(v);
            match cluster.change_member(None, Some(v)).await {
                Err(e) => {
                    injected = false;
                    note = Some(format!("remove refused, wipe skipped: {e}"));
                }
                Ok(()) => {
                    cluster.nodes[(v - 1) as usize].removed = true;
                    cluster.kill(v);
                    let wiped = cluster.wipe(v).and_then(|()| cluster.start(v));
                    if let Err(e) = wiped {
                        note = Some(e.to_string());
                    }
                    tokio::time::sleep(hold).await;
                    match cluster.change_member(Some(v), None).await {
                        Ok(()) => cluster.nodes[(v - 1) as usize].removed = false,
                        Err(e) => note = Some(format!("re-add failed: {e}")),
                    }
                }
            }
        }
        (FaultKind::Isolate, Some(v)) => {
            let others: Vec<u64> = members.iter().copied().filter(|x| *x != v).collect();
            nodes.push(v);
            if let Err(e) = cluster.partition(&all_pairs_across(&[v], &others)) {
                injected = false;
                note = Some(e.to_string());
            }
            tokio::time::sleep(hold).await;
            cluster.heal();
        }
        (FaultKind::Split, Some(_)) => {
            let k = match plan.target {
                Target::Any(k) | Target::Follower(k) => k,
                Target::Leader => 0,
            };
            let (small, large) = split_sides(&members, k);
            nodes.extend(&small);
            if let Err(e) = cluster.partition(&all_pairs_across(&small, &large)) {
                injected = false;
                note = Some(e.to_string());
            }
            tokio::time::sleep(hold).await;
            cluster.heal();
        }
        (FaultKind::OneWay, Some(v)) => {
            nodes.push(v);
            let cuts: Vec<(u64, u64)> = members.iter().filter(|x| **x != v).map(|x| (*x, v)).collect();
            if let Err(e) = cluster.partition(&cuts) {
                injected = false;
                note = Some(e.to_string());
            }
            tokio::time::sleep(hold).await;
            cluster.heal();
        }
    }
    let healed_ns = recorder.now();
    let recovered = wait_recovered(cluster, Duration::from_secs(60)).await;
    FaultRecord {
        index,
        kind: plan.kind,
        target: plan.target,
        hit_leader: leader.is_some() && nodes.contains(&leader.unwrap_or(0)),
        nodes,
        start_ns,
        healed_ns,
        recovered_ns: recovered.then(|| recorder.now()),
        longest_no_write_ms: None,
        note,
        injected,
    }
}

/// Puts every node back: heals, resumes, starts, re-adds.
async fn restore(cluster: &mut Cluster) -> Result<(), ChaosError> {
    cluster.heal();
    for id in cluster.ids() {
        if cluster.node(id).paused {
            cluster.resume(id);
        }
        if !cluster.node(id).running() {
            cluster.start(id)?;
        }
        if cluster.node(id).removed {
            cluster.change_member(Some(id), None).await?;
            cluster.nodes[(id - 1) as usize].removed = false;
        }
    }
    Ok(())
}

async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> Result<Value, ChaosError> {
    let resp = http.get(url).bearer_auth(token).send().await.map_err(|e| ChaosError::Final(format!("{url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(ChaosError::Final(format!("{url}: {}", resp.status())));
    }
    resp.json().await.map_err(|e| ChaosError::Final(format!("{url}: {e}")))
}

struct NodeFinal {
    registers: HashMap<String, String>,
    sandboxes: Vec<PlacedSandbox>,
    runners: Vec<RunnerCapacity>,
}

/// A field a node's answer must have: a missing (or renamed) field is an error of the run,
/// never a default that would let a checker pass without looking.
fn field<'a>(v: &'a Value, name: &str, what: &str) -> Result<&'a Value, ChaosError> {
    v.get(name).ok_or_else(|| ChaosError::Final(format!("{what} has no field '{name}': {v}")))
}

fn u64_field(v: &Value, name: &str, what: &str) -> Result<u64, ChaosError> {
    field(v, name, what)?.as_u64().ok_or_else(|| ChaosError::Final(format!("{what}: '{name}' is not a count: {v}")))
}

fn str_field<'a>(v: &'a Value, name: &str, what: &str) -> Result<&'a str, ChaosError> {
    field(v, name, what)?.as_str().ok_or_else(|| ChaosError::Final(format!("{what}: '{name}' is not text: {v}")))
}

fn list<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, ChaosError> {
    v.as_array().ok_or_else(|| ChaosError::Final(format!("{what} is not a list: {v}")))
}

/// cpu, memory GiB, disk GiB of a resources object (a runner's capacity or allocation, or a
/// sandbox).
fn resources(v: &Value, what: &str) -> Result<[u64; 3], ChaosError> {
    Ok([u64_field(v, "cpu", what)?, u64_field(v, "memoryGiB", what)?, u64_field(v, "diskGiB", what)?])
}

/// Adds each listed object's `proxyUrl` (absent from the register when `null`) as the value of
/// the register `<kind>:<name>`.
fn insert_registers(registers: &mut HashMap<String, String>, kind: &str, answer: &Value) -> Result<(), ChaosError> {
    for item in list(answer, kind)? {
        let name = str_field(item, "name", kind)?;
        if let Some(url) = field(item, "proxyUrl", kind)?.as_str() {
            registers.insert(format!("{kind}:{name}"), url.to_string());
        }
    }
    Ok(())
}

/// One node's own view (stale reads: exactly what it has applied).
async fn read_final(cluster: &Cluster, id: u64, setup: &Setup) -> Result<NodeFinal, ChaosError> {
    let http = &cluster.http;
    let mut registers = HashMap::new();
    let regions = get_json(http, &cluster.url(id, "/api/regions?consistency=stale"), &setup.org_token).await?;
    insert_registers(&mut registers, "region", &regions)?;
    let runners = get_json(
        http,
        &cluster.url(id, &format!("/api/admin/runners?regionId={}&consistency=stale", setup.runner_region_id)),
        ADMIN_KEY,
    )
    .await?;
    insert_registers(&mut registers, "runner", &runners)?;
    let sandbox_runners_url =
        cluster.url(id, &format!("/api/admin/runners?regionId={}&consistency=stale", setup.sandbox_region_id));
    let sandboxes_url = cluster.url(id, "/api/sandboxes?consistency=stale");
    // Runners and sandboxes are two reads: read the runners again after the sandboxes, and
    // again, until nothing (a late rescheduling round) changed them in between.
    let mut sandbox_runners = get_json(http, &sandbox_runners_url, ADMIN_KEY).await?;
    let mut sandboxes = get_json(http, &sandboxes_url, &setup.org_token).await?;
    for _ in 0..10 {
        let again = get_json(http, &sandbox_runners_url, ADMIN_KEY).await?;
        if again == sandbox_runners {
            break;
        }
        sandbox_runners = again;
        sandboxes = get_json(http, &sandboxes_url, &setup.org_token).await?;
    }
    let runners = list(&sandbox_runners, "sandbox runners")?
        .iter()
        .map(|r| {
            Ok(RunnerCapacity {
                id: str_field(r, "id", "runner")?.to_string(),
                capacity: resources(field(r, "capacity", "runner")?, "runner capacity")?,
                allocated: resources(field(r, "allocated", "runner")?, "runner allocation")?,
            })
        })
        .collect::<Result<Vec<_>, ChaosError>>()?;
    let sandboxes = list(&sandboxes, "sandboxes")?
        .iter()
        .map(|s| {
            Ok(PlacedSandbox {
                id: str_field(s, "id", "sandbox")?.to_string(),
                runner_id: str_field(s, "runnerId", "sandbox")?.to_string(),
                request: field(s, "labels", "sandbox")?.get(REQUEST_LABEL).and_then(Value::as_str).map(String::from),
                resources: resources(s, "sandbox")?,
                destroyed: str_field(s, "state", "sandbox")? == "destroyed",
                rescheduled: field(s, "rescheduledFrom", "sandbox")?.is_string(),
            })
        })
        .collect::<Result<Vec<_>, ChaosError>>()?;
    Ok(NodeFinal { registers, sandboxes, runners })
}

/// Every file under `dir` (node logs and data) that holds one of `secrets` in clear.
pub fn scan_for_secrets(dir: &std::path::Path, secrets: &[String]) -> Vec<Violation> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(scan_for_secrets(&path, secrets));
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else { continue };
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                let hint: String = secret.chars().take(6).collect();
                found.push(Violation::SecretLeaked {
                    secret_hint: format!("{hint}…"),
                    file: path.display().to_string(),
                });
            }
        }
    }
    found
}

/// Whether the run uses network namespaces. Partitions are half the nemesis: when they cannot
/// run, `auto` fails loudly; only an explicit `--network loopback` runs without them.
pub fn choose_network(choice: NetworkChoice, namespaces_available: bool) -> Result<bool, ChaosError> {
    match choice {
        NetworkChoice::Auto | NetworkChoice::Namespaces if !namespaces_available => Err(ChaosError::Setup(
            "partitions need network namespaces (root, with ip and nft), which this machine does not give; \
             run as root, or pass --network loopback to run explicitly without partitions"
                .into(),
        )),
        NetworkChoice::Auto | NetworkChoice::Namespaces => Ok(true),
        NetworkChoice::Loopback => Ok(false),
    }
}

/// Runs the whole thing and returns the report (also written to `out_dir`).
pub async fn run(config: RunConfig) -> Result<Report, ChaosError> {
    std::fs::create_dir_all(&config.out_dir)
        .map_err(|e| ChaosError::Setup(format!("{}: {e}", config.out_dir.display())))?;
    let cluster_dir = config.out_dir.join("cluster");
    // A previous run's data would be a different cluster.
    let _ = std::fs::remove_dir_all(&cluster_dir);
    std::fs::create_dir_all(&cluster_dir).map_err(|e| ChaosError::Setup(format!("{}: {e}", cluster_dir.display())))?;
    let use_namespaces = choose_network(config.network, cluster::namespaces_available())?;
    let network = if use_namespaces {
        let pid = std::process::id();
        Network::Namespaces { tag: format!("crl{:04x}", pid % 0xffff), subnet: (pid % 200) as u8 + 20 }
    } else {
        Network::Loopback
    };
    let network_name = match &network {
        Network::Namespaces { subnet, .. } => format!("namespaces on 10.199.{subnet}.0/24"),
        Network::Loopback => "loopback, partitions switched off (--network loopback)".to_string(),
    };
    println!(
        "corral-chaos: seed {}, {} nodes, {network_name}, output in {}",
        config.seed,
        config.nodes,
        config.out_dir.display()
    );
    let mut cluster = Cluster::create(config.nodes, network, config.corral_bin.clone(), cluster_dir)?;
    for id in cluster.ids() {
        cluster.start(id)?;
    }
    cluster.start_haproxy()?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    let balancer = format!("http://{}", cluster.haproxy_addr);
    let setup = set_up(&balancer, &cluster.http).await?;
    println!("cluster up, haproxy on {}; running {} s of faults", cluster.haproxy_addr, config.duration.as_secs());

    let recorder = Arc::new(Recorder::new(Instant::now()));
    let stop = Arc::new(AtomicBool::new(false));
    let workload_config = WorkloadConfig {
        workers: config.workers,
        balancer: cluster.haproxy_addr.clone(),
        nodes: cluster.nodes.iter().map(|n| n.api_addr.clone()).collect(),
        org_token: setup.org_token.clone(),
        admin_token: ADMIN_KEY.to_string(),
        runner_region_id: setup.runner_region_id.clone(),
        sandbox_region: SANDBOX_REGION.to_string(),
        sandbox_runner_ids: setup.sandbox_runner_ids.clone(),
        seed: config.seed,
        key_life: 100,
        stale_reads: config.stale_reads,
    };
    let clients = tokio::spawn(workload::run(workload_config, recorder.clone(), stop.clone()));

    // The nemesis, in this task: it owns the cluster.
    let mut nemesis = Nemesis::new(config.seed, matches!(cluster.network, Network::Namespaces { .. }));
    let mut faults = Vec::new();
    // A few seconds of calm first, so the history starts with a baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while recorder.start.elapsed() < config.duration {
        let plan = nemesis.next_fault();
        let record = inject(&mut cluster, faults.len(), &plan, &recorder).await;
        let recovered = record.recovered_ns.is_some();
        println!(
            "[{:>7.1}s] fault {:>3}: {:<8} on {:?}{}{}",
            record.start_ns as f64 / 1e9,
            record.index,
            plan.kind.name(),
            record.nodes,
            if record.hit_leader { " (leader)" } else { "" },
            match (record.injected, record.note.as_deref()) {
                (false, Some(n)) => format!(" — NOT INJECTED, not counted: {n}"),
                (false, None) => " — NOT INJECTED, not counted".to_string(),
                (true, Some(n)) => format!(" — {n}"),
                (true, None) => String::new(),
            }
        );
        faults.push(record);
        if !recovered {
            println!("cluster did not recover within 60 s; stopping the nemesis");
            break;
        }
        tokio::time::sleep(Duration::from_millis(plan.gap_ms)).await;
    }
    // Calm again at the end, then stop the clients.
    restore(&mut cluster).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The workload's end closes the last fault's window: requests in flight when the clients
    // stop may take their whole timeout, and no new one starts, so the time after this is no
    // stretch without writes.
    let end = recorder.now();
    stop.store(true, Ordering::Relaxed);
    let _ = clients.await;

    // Nodes that do not converge are a finding for the report (a `Diverged` violation with
    // each node's hash as it stands), not an error that would end the run without one.
    let mut not_converged = None;
    let hashes = match cluster.wait_converged(Duration::from_secs(120)).await {
        Ok(hashes) => hashes,
        Err(e) => {
            eprintln!("corral-chaos: nodes did not converge: {e}");
            for id in cluster.ids() {
                eprintln!("---- node {id} log tail ----\n{}", cluster.log_tail(id, 30));
            }
            let hashes = cluster.state_hashes().await;
            not_converged = Some(Violation::NotConverged { reason: e.to_string(), hashes: hashes.clone() });
            hashes
        }
    };
    let history = recorder.history.lock().map(|h| h.clone()).unwrap_or_default();
    let sandbox_ops = recorder.sandbox_ops.lock().map(|o| o.clone()).unwrap_or_default();

    let mut violations = check::check_linearizable(&history, config.check_budget);
    violations.extend(not_converged);
    let mut finals = Vec::new();
    let mut rescheduled_sandboxes = None;
    // Acknowledged creations must exist, unless their client tried to delete them since.
    let delete_tried: std::collections::HashSet<&str> =
        sandbox_ops.iter().filter(|o| o.call == SandboxCall::Delete).map(|o| o.request.as_str()).collect();
    let acknowledged: Vec<String> = sandbox_ops
        .iter()
        .filter(|o| o.call == SandboxCall::Create && o.outcome == Outcome::Ok)
        .filter(|o| !delete_tried.contains(o.request.as_str()))
        .map(|o| o.request.clone())
        .collect();
    for id in cluster.ids() {
        let node_final = read_final(&cluster, id, &setup).await?;
        violations.extend(check::check_placements(id, &node_final.sandboxes, &node_final.runners, &acknowledged));
        rescheduled_sandboxes.get_or_insert(node_final.sandboxes.iter().filter(|s| s.rescheduled).count());
        finals.push((id, node_final.registers));
    }
    violations.extend(check::check_final_state(&history, &finals, config.check_budget));
    violations.extend(check::check_converged(&hashes));
    // Secrets are stored hashed and never logged: the organization's key and the runners'
    // tokens must not be anywhere in the nodes' logs or data.
    let mut secrets = vec![setup.org_token.clone()];
    secrets.extend((0..SANDBOX_RUNNERS).map(sandbox_runner_token));
    violations.extend(scan_for_secrets(&config.out_dir.join("cluster"), &secrets));
    for fault in faults.iter().filter(|f| f.recovered_ns.is_none()) {
        violations.push(Violation::NotRecovered { fault: fault.index, fault_kind: fault.kind.name().to_string() });
    }

    let acks = report::write_acks(&history, &sandbox_ops);
    report::fill_availability(&mut faults, &acks, end);
    let windows_of = |kind: Option<&str>, leader_only: bool| {
        report::spread(
            faults
                .iter()
                .filter(|f| f.injected && (!leader_only || f.hit_leader))
                .filter(|f| kind.is_none_or(|k| f.kind.name() == k))
                .filter_map(|f| f.longest_no_write_ms)
                .collect(),
        )
    };
    let windows = |leader_only: bool| windows_of(None, leader_only);
    let kinds: std::collections::BTreeSet<&str> = faults.iter().filter(|f| f.injected).map(|f| f.kind.name()).collect();
    let by_kind = |leader_only: bool| -> BTreeMap<String, report::Spread> {
        kinds.iter().map(|k| (k.to_string(), windows_of(Some(k), leader_only))).collect()
    };
    let mut faults_by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for f in faults.iter().filter(|f| f.injected) {
        *faults_by_kind.entry(f.kind.name().to_string()).or_default() += 1;
    }
    let keys: std::collections::BTreeSet<&str> = history.ops.iter().map(|o| o.call.key()).collect();
    let report = Report {
        seed: config.seed,
        nodes: config.nodes,
        network: network_name,
        duration_s: end as f64 / 1e9,
        workers: config.workers,
        faults_by_kind,
        operations: workload::op_counts(&history, &sandbox_ops),
        keys_checked: keys.len(),
        runner_flaps: recorder.runner_flaps.load(Ordering::Relaxed),
        rescheduled_sandboxes: rescheduled_sandboxes.unwrap_or(0),
        passed: violations.is_empty() && faults.iter().any(|f| f.injected),
        faults_skipped: faults.iter().filter(|f| !f.injected).count(),
        violations,
        unavailability: windows(false),
        failover: windows(true),
        unavailability_by_kind: by_kind(false),
        failover_by_kind: by_kind(true),
        state_hashes: hashes,
        faults,
    };
    let write = |name: &str, body: &str| {
        let path = config.out_dir.join(name);
        std::fs::write(&path, body).map_err(|e| ChaosError::Setup(format!("{}: {e}", path.display())))
    };
    write("report.json", &serde_json::to_string_pretty(&report).unwrap_or_default())?;
    write(
        "history.json",
        &serde_json::to_string(&json!({ "registers": history.ops, "sandboxes": sandbox_ops })).unwrap_or_default(),
    )?;
    write("timeline.svg", &report::timeline_svg(&report, &history, &sandbox_ops, end))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leak_scan_finds_a_planted_secret_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("node2").join("db");
        std::fs::create_dir_all(&nested).expect("dirs");
        std::fs::write(dir.path().join("node1.log"), "INFO all quiet").expect("log");
        std::fs::write(nested.join("000123.log"), b"\x00\x01planted-secret-xyz\x02").expect("data");
        let secrets = vec!["planted-secret-xyz".to_string(), "absent-secret".to_string()];
        let found = scan_for_secrets(dir.path(), &secrets);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(matches!(&found[0], Violation::SecretLeaked { file, .. } if file.ends_with("000123.log")));
        assert!(scan_for_secrets(&dir.path().join("missing"), &secrets).is_empty());
    }

    #[test]
    fn partitions_that_cannot_run_fail_unless_switched_off() {
        assert!(matches!(choose_network(NetworkChoice::Auto, true), Ok(true)));
        assert!(choose_network(NetworkChoice::Auto, false).is_err());
        assert!(choose_network(NetworkChoice::Namespaces, false).is_err());
        assert!(matches!(choose_network(NetworkChoice::Loopback, false), Ok(false)));
        assert!(matches!(choose_network(NetworkChoice::Loopback, true), Ok(false)));
    }
}

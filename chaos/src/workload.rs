//! The clients: concurrent workers, half through haproxy and half straight to one node, doing
//! creates, updates, deletes and linearizable reads of regions and runners, and sandbox
//! creations. Every operation is recorded with its invoke and complete times and outcome.
//!
//! Registers are Jepsen's "independent keys": a key is one region (value: its `proxyUrl`) or
//! one runner (value: its `proxyUrl`), alive for a bounded number of operations, then deleted
//! and replaced by a fresh key. Short per-key histories keep the linearizability search cheap
//! however long the run. Creates carry an `Idempotency-Key` and are retried with it until their
//! outcome is known, so each key gets an id to address.
//!
//! Outcomes are judged conservatively: a 2xx is `ok`; a 4xx that the request itself caused is
//! `fail`; a timeout, a 5xx, or a 404 that a haproxy retry of an already applied request could
//! explain is `unknown` (it may have taken effect).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::history::{Call, History, Nanos, Outcome};

/// The label every sandbox creation carries: which client request made it.
pub const REQUEST_LABEL: &str = "chaos-request";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxCall {
    Create,
    Delete,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxOp {
    pub client: u64,
    pub call: SandboxCall,
    /// The creating request's label (a delete names the sandbox its own creation made).
    pub request: String,
    /// The sandbox id, once known.
    pub sandbox: Option<String>,
    pub invoke: Nanos,
    pub complete: Option<Nanos>,
    pub outcome: Outcome,
}

/// Everything the clients did.
pub struct Recorder {
    pub start: Instant,
    pub history: Mutex<History>,
    pub sandbox_ops: Mutex<Vec<SandboxOp>>,
    /// How many times the flapper marked a sandbox runner unresponsive.
    pub runner_flaps: AtomicU64,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            history: Mutex::new(History::default()),
            sandbox_ops: Mutex::new(Vec::new()),
            runner_flaps: AtomicU64::new(0),
        }
    }

    pub fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }

    fn record(
        &self,
        client: u64,
        call: Call,
        invoke: Nanos,
        outcome: Outcome,
        read: Option<Option<String>>,
        detail: String,
    ) {
        let complete = (outcome != Outcome::Unknown).then(|| self.now());
        if let Ok(mut history) = self.history.lock() {
            let id = history.push(client, call, invoke, complete, outcome);
            history.ops[id as usize].read = read;
            history.ops[id as usize].detail = Some(detail);
        }
    }

    fn record_sandbox(&self, op: SandboxOp) {
        if let Ok(mut ops) = self.sandbox_ops.lock() {
            ops.push(op);
        }
    }
}

/// What the workers need to know about the cluster.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub workers: usize,
    /// haproxy's address.
    pub balancer: String,
    /// Each node's REST address.
    pub nodes: Vec<String>,
    pub org_token: String,
    pub admin_token: String,
    /// The region runner keys live in.
    pub runner_region_id: String,
    /// The region sandboxes are placed in (by name).
    pub sandbox_region: String,
    /// Its runners, which the flapper marks unresponsive in turn so that their sandboxes are
    /// rescheduled while the nemesis works.
    pub sandbox_runner_ids: Vec<String>,
    pub seed: u64,
    /// Operations a key lives for before it is deleted.
    pub key_life: u32,
    /// Read with `?consistency=stale` (local, possibly stale reads): a control that shows the
    /// checker catching stale reads under partitions.
    pub stale_reads: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Region,
    Runner,
}

/// A slot taken by [`Worker::pick_slot`]: which one, what it holds, and whether this
/// operation retires (deletes) its key.
struct PickedSlot {
    index: usize,
    kind: KeyKind,
    /// `(name, id)` of the live key; `None` when the slot was empty (create one).
    key: Option<(String, String)>,
    retire: bool,
}

#[derive(Debug)]
enum Slot {
    Empty,
    /// A worker is creating or deleting it.
    Busy,
    Live {
        name: String,
        id: String,
        ops: u32,
    },
}

struct Shared {
    config: WorkloadConfig,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    slots: Mutex<Vec<(KeyKind, Slot)>>,
    next_key: AtomicU64,
    next_value: AtomicU64,
}

/// The HTTP answer, classified.
#[derive(Debug)]
enum Answer {
    Status(u16, Value),
    /// Connection refused: the request never left.
    NotSent,
    /// Timeout, reset: it may have been applied.
    Lost,
}

impl Answer {
    fn describe(&self, via: &str) -> String {
        match self {
            Answer::Status(status, body) => match body["code"].as_str() {
                Some(code) => format!("{via}: {status} {code}"),
                None => format!("{via}: {status}"),
            },
            Answer::NotSent => format!("{via}: connection refused"),
            Answer::Lost => format!("{via}: no answer"),
        }
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    match request.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.json::<Value>().await.unwrap_or(Value::Null);
            Answer::Status(status, body)
        }
        Err(e) if e.is_connect() => {
            // The node is down: do not spin on it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Answer::NotSent
        }
        Err(_) => Answer::Lost,
    }
}

/// A write's outcome from its answer. `via_balancer`: haproxy may have retried it.
fn write_outcome(answer: &Answer, via_balancer: bool) -> Outcome {
    match answer {
        Answer::Status(s, _) if (200..300).contains(s) => Outcome::Ok,
        Answer::Status(404, _) if via_balancer => Outcome::Unknown,
        // Refused, e.g. 409 `no_capacity` from the scheduler: nothing was written.
        Answer::Status(s, _) if (400..500).contains(s) && *s != 408 && *s != 429 => Outcome::Fail,
        Answer::NotSent => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

struct Worker {
    id: u64,
    base: String,
    /// `haproxy` or `node N`.
    via: String,
    via_balancer: bool,
    http: reqwest::Client,
    rng: StdRng,
    shared: Arc<Shared>,
    /// (sandbox id, creating request) of this worker's live sandboxes.
    sandboxes: Vec<(String, String)>,
}

impl Worker {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.base, path)
    }

    fn value(&self) -> String {
        format!("https://v{}.chaos.example", self.shared.next_value.fetch_add(1, Ordering::Relaxed))
    }

    async fn run(mut self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            if self.rng.gen_range(0..100) < 25 {
                self.sandbox_op().await;
            } else {
                self.register_op().await;
            }
        }
    }

    async fn sandbox_op(&mut self) {
        let recorder = self.shared.recorder.clone();
        if self.sandboxes.len() >= 4 || (!self.sandboxes.is_empty() && self.rng.gen_bool(0.3)) {
            let index = self.rng.gen_range(0..self.sandboxes.len());
            let (id, request) = self.sandboxes.swap_remove(index);
            let invoke = recorder.now();
            let answer = send(
                self.http.delete(self.url(&format!("/api/sandboxes/{id}"))).bearer_auth(&self.shared.config.org_token),
            )
            .await;
            let outcome = write_outcome(&answer, self.via_balancer);
            let complete = (outcome != Outcome::Unknown).then(|| recorder.now());
            recorder.record_sandbox(SandboxOp {
                client: self.id,
                call: SandboxCall::Delete,
                request,
                sandbox: Some(id),
                invoke,
                complete,
                outcome,
            });
            return;
        }
        let request = uuid::Uuid::new_v4().to_string();
        let body = json!({ "target": self.shared.config.sandbox_region, "cpu": 1, "memoryGiB": 1, "diskGiB": 1,
            "labels": { REQUEST_LABEL: request } });
        let invoke = recorder.now();
        let answer = send(
            self.http
                .post(self.url("/api/sandboxes"))
                .bearer_auth(&self.shared.config.org_token)
                .header("Idempotency-Key", &request)
                .json(&body),
        )
        .await;
        let outcome = write_outcome(&answer, false);
        let complete = (outcome != Outcome::Unknown).then(|| recorder.now());
        let mut sandbox = None;
        if let (Outcome::Ok, Answer::Status(_, body)) = (outcome, &answer) {
            if let Some(id) = body["id"].as_str() {
                self.sandboxes.push((id.to_string(), request.clone()));
                sandbox = Some(id.to_string());
            }
        }
        recorder.record_sandbox(SandboxOp {
            client: self.id,
            call: SandboxCall::Create,
            request,
            sandbox,
            invoke,
            complete,
            outcome,
        });
    }

    /// Takes a slot: its index and what to do with it.
    fn pick_slot(&mut self) -> Option<PickedSlot> {
        let shared = self.shared.clone();
        let mut slots = shared.slots.lock().ok()?;
        let index = self.rng.gen_range(0..slots.len());
        let life = shared.config.key_life;
        let (kind, slot) = &mut slots[index];
        match slot {
            Slot::Busy => None,
            Slot::Empty => {
                *slot = Slot::Busy;
                Some(PickedSlot { index, kind: *kind, key: None, retire: false })
            }
            Slot::Live { name, id, ops } => {
                *ops += 1;
                let retire = *ops >= life;
                let key = (name.clone(), id.clone());
                if retire {
                    *slot = Slot::Busy;
                }
                Some(PickedSlot { index, kind: *kind, key: Some(key), retire })
            }
        }
    }

    fn set_slot(&self, index: usize, slot: Slot) {
        if let Ok(mut slots) = self.shared.slots.lock() {
            slots[index].1 = slot;
        }
    }

    async fn register_op(&mut self) {
        let Some(PickedSlot { index, kind, key, retire }) = self.pick_slot() else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            return;
        };
        match (key, retire) {
            (None, _) => {
                let created = self.create_key(kind).await;
                self.set_slot(index, created.map_or(Slot::Empty, |(name, id)| Slot::Live { name, id, ops: 0 }));
            }
            (Some((name, id)), true) => {
                self.delete_key(kind, &name, &id).await;
                self.set_slot(index, Slot::Empty);
            }
            (Some((name, id)), false) => {
                if kind == KeyKind::Region && self.rng.gen_bool(0.5) {
                    self.update_region(&name, &id).await;
                } else {
                    self.read_key(kind, &name, &id).await;
                }
            }
        }
    }

    fn key_name(kind: KeyKind, name: &str) -> String {
        match kind {
            KeyKind::Region => format!("region:{name}"),
            KeyKind::Runner => format!("runner:{name}"),
        }
    }

    /// Creates a fresh key, retrying with the same idempotency key until the outcome is known.
    async fn create_key(&mut self, kind: KeyKind) -> Option<(String, String)> {
        let recorder = self.shared.recorder.clone();
        let config = &self.shared.config;
        let name = format!("k{}", self.shared.next_key.fetch_add(1, Ordering::Relaxed));
        let value = self.value();
        let idempotency = uuid::Uuid::new_v4().to_string();
        let key = Self::key_name(kind, &name);
        for _attempt in 0..20 {
            if self.shared.stop.load(Ordering::Relaxed) {
                return None;
            }
            let request = match kind {
                KeyKind::Region => self
                    .http
                    .post(self.url("/api/regions"))
                    .bearer_auth(&config.org_token)
                    .json(&json!({ "name": name, "proxyUrl": value })),
                KeyKind::Runner => self
                    .http
                    .post(self.url("/api/admin/runners"))
                    .bearer_auth(&config.admin_token)
                    .json(&json!({ "name": name, "regionId": config.runner_region_id, "apiKey": idempotency,
                        "apiVersion": "2", "proxyUrl": value, "cpu": 4, "memoryGiB": 8, "diskGiB": 50 })),
            };
            let invoke = recorder.now();
            let answer = send(request.header("Idempotency-Key", &idempotency)).await;
            let outcome = write_outcome(&answer, false);
            let detail = answer.describe(&self.via);
            recorder.record(
                self.id,
                Call::Write { key: key.clone(), value: value.clone() },
                invoke,
                outcome,
                None,
                detail,
            );
            match (outcome, answer) {
                (Outcome::Ok, Answer::Status(_, body)) => {
                    return body["id"].as_str().map(|id| (name, id.to_string()));
                }
                (Outcome::Fail, _) => return None,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        None
    }

    async fn delete_key(&mut self, kind: KeyKind, name: &str, id: &str) {
        let recorder = self.shared.recorder.clone();
        let config = &self.shared.config;
        let request = match kind {
            KeyKind::Region => self.http.delete(self.url(&format!("/api/regions/{id}"))).bearer_auth(&config.org_token),
            KeyKind::Runner => {
                self.http.delete(self.url(&format!("/api/admin/runners/{id}"))).bearer_auth(&config.admin_token)
            }
        };
        let invoke = recorder.now();
        let answer = send(request).await;
        let outcome = write_outcome(&answer, self.via_balancer);
        let detail = answer.describe(&self.via);
        recorder.record(self.id, Call::Delete { key: Self::key_name(kind, name) }, invoke, outcome, None, detail);
    }

    async fn update_region(&mut self, name: &str, id: &str) {
        let recorder = self.shared.recorder.clone();
        let value = self.value();
        let invoke = recorder.now();
        let answer = send(
            self.http
                .patch(self.url(&format!("/api/regions/{id}")))
                .bearer_auth(&self.shared.config.org_token)
                .json(&json!({ "proxyUrl": value })),
        )
        .await;
        let outcome = write_outcome(&answer, self.via_balancer);
        let detail = answer.describe(&self.via);
        let call = Call::Write { key: Self::key_name(KeyKind::Region, name), value };
        recorder.record(self.id, call, invoke, outcome, None, detail);
    }

    async fn read_key(&mut self, kind: KeyKind, name: &str, id: &str) {
        let recorder = self.shared.recorder.clone();
        let config = &self.shared.config;
        let query = if config.stale_reads { "?consistency=stale" } else { "" };
        let request = match kind {
            KeyKind::Region => {
                self.http.get(self.url(&format!("/api/regions/{id}{query}"))).bearer_auth(&config.org_token)
            }
            KeyKind::Runner => {
                self.http.get(self.url(&format!("/api/admin/runners/{id}{query}"))).bearer_auth(&config.admin_token)
            }
        };
        let invoke = recorder.now();
        let answer = send(request).await;
        let call = Call::Read { key: Self::key_name(kind, name) };
        let detail = answer.describe(&self.via);
        match answer {
            Answer::Status(200, body) => {
                let seen = body["proxyUrl"].as_str().map(String::from);
                recorder.record(self.id, call, invoke, Outcome::Ok, Some(seen), detail);
            }
            Answer::Status(404, _) => recorder.record(self.id, call, invoke, Outcome::Ok, Some(None), detail),
            _ => recorder.record(self.id, call, invoke, Outcome::Fail, None, detail),
        }
    }
}

/// Runs the workers until `stop` is set.
pub async fn run(config: WorkloadConfig, recorder: Arc<Recorder>, stop: Arc<AtomicBool>) {
    // Four region keys and two runner keys are live at any time.
    let slots = [KeyKind::Region; 4].into_iter().chain([KeyKind::Runner; 2]).map(|k| (k, Slot::Empty)).collect();
    let shared = Arc::new(Shared {
        config: config.clone(),
        recorder,
        stop,
        slots: Mutex::new(slots),
        next_key: AtomicU64::new(0),
        next_value: AtomicU64::new(0),
    });
    let mut tasks = vec![tokio::spawn(flap_runners(config.clone(), shared.recorder.clone(), shared.stop.clone()))];
    for w in 0..config.workers {
        let via_balancer = w % 2 == 0 || config.nodes.is_empty();
        let node = (w / 2) % config.nodes.len().max(1);
        let (base, via) = if via_balancer {
            (config.balancer.clone(), "haproxy".to_string())
        } else {
            (config.nodes[node].clone(), format!("node {}", node + 1))
        };
        let http = match reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1))
            .build()
        {
            Ok(http) => http,
            Err(_) => continue,
        };
        let worker = Worker {
            id: w as u64,
            base,
            via,
            via_balancer,
            http,
            rng: StdRng::seed_from_u64(config.seed.wrapping_mul(1_000_003).wrapping_add(w as u64)),
            shared: shared.clone(),
            sandboxes: Vec::new(),
        };
        tasks.push(tokio::spawn(worker.run()));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// How long the flapper leaves a runner unresponsive (the nodes reschedule after 300 ms), and
/// how long between two flaps.
const FLAP_DOWN: Duration = Duration::from_millis(1_500);
const FLAP_EVERY: Duration = Duration::from_secs(3);

/// Marks the sandbox region's runners `unresponsive` in turn, for [`FLAP_DOWN`], then `ready`
/// again (retried until it takes), through haproxy with the admin key. The nodes then move
/// the runner's sandboxes elsewhere, or mark them `error` where nothing has room, while the
/// nemesis injects its faults: the placement checks see the result.
async fn flap_runners(config: WorkloadConfig, recorder: Arc<Recorder>, stop: Arc<AtomicBool>) {
    let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(5)).build() else { return };
    let set_state = |id: &str, state: &str| {
        http.patch(format!("http://{}/api/admin/runners/{id}/state", config.balancer))
            .bearer_auth(&config.admin_token)
            .json(&json!({ "state": state }))
            .send()
    };
    for id in config.sandbox_runner_ids.iter().cycle() {
        tokio::time::sleep(FLAP_EVERY).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if !set_state(id, "unresponsive").await.is_ok_and(|r| r.status().is_success()) {
            continue;
        }
        recorder.runner_flaps.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(FLAP_DOWN).await;
        // Back to ready, whatever the faults (a runner left unresponsive would starve the
        // workload), for up to 20 s: longer than any fault's heal.
        for _ in 0..100 {
            if set_state(id, "ready").await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Counts of operations by kind and outcome, for the report.
pub fn op_counts(history: &History, sandbox_ops: &[SandboxOp]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let outcome_name = |o: Outcome| match o {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Unknown => "unknown",
    };
    for op in &history.ops {
        let family = if op.call.key().starts_with("runner:") { "runner" } else { "region" };
        let verb = match op.call {
            Call::Write { .. } => "write",
            Call::Delete { .. } => "delete",
            Call::Read { .. } => "read",
        };
        *counts.entry(format!("{family}-{verb}")).or_default().entry(outcome_name(op.outcome).into()).or_default() += 1;
    }
    for op in sandbox_ops {
        let verb = match op.call {
            SandboxCall::Create => "sandbox-create",
            SandboxCall::Delete => "sandbox-delete",
        };
        *counts.entry(verb.into()).or_default().entry(outcome_name(op.outcome).into()).or_default() += 1;
    }
    counts
}

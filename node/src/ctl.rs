//! `corral ctl`: a command-line client over the REST API, one subcommand per operation.
//! Honours `CORRAL_ADDR`, `CORRAL_TOKEN` and `CORRAL_ORGANIZATION`; prints a table (default)
//! or the JSON the server returned (`--output json`). Errors go to stderr with the server's
//! code, and the exit status is non-zero.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Base URL of any node (or of the load balancer).
    #[arg(long, env = "CORRAL_ADDR", default_value = "http://127.0.0.1:8801", global = true)]
    pub addr: String,
    /// Bearer key: an organization API key or the admin key.
    #[arg(long, env = "CORRAL_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Organization to act for (with the admin key).
    #[arg(long, env = "CORRAL_ORGANIZATION", global = true)]
    pub organization: Option<String>,
    #[arg(long, short, value_enum, default_value = "table", global = true)]
    pub output: Output,
    /// Read this node's local state instead of a linearizable read.
    #[arg(long, global = true)]
    pub stale: bool,
    /// Idempotency-Key for POST requests: retrying with the same key is safe.
    #[arg(long, global = true)]
    pub idempotency_key: Option<String>,
    /// Trust this CA certificate (PEM) for an https:// address, e.g. the cluster CA.
    #[arg(long = "cacert", env = "CORRAL_CACERT", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Regions of your organization (and the shared ones).
    #[command(subcommand)]
    Region(RegionCommand),
    /// Custom runners of your organization.
    #[command(subcommand)]
    Runner(RunnerCommand),
    /// Sandboxes of your organization.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// API keys of your organization: list, create (up to your key's role), revoke.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Your organization's quota in shared regions and what it uses of it.
    Quota,
    /// Operator commands (admin key).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Raft cluster status of the node addressed (admin key).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Args)]
pub struct RegionUrls {
    #[arg(long)]
    pub proxy_url: Option<String>,
    #[arg(long)]
    pub ssh_gateway_url: Option<String>,
    #[arg(long)]
    pub snapshot_manager_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    Create {
        name: String,
        #[command(flatten)]
        urls: RegionUrls,
    },
    List,
    Get {
        id: String,
    },
    /// Set (or with --clear-*, remove) service URLs.
    Update {
        id: String,
        #[command(flatten)]
        urls: RegionUrls,
        #[arg(long)]
        clear_proxy_url: bool,
        #[arg(long)]
        clear_ssh_gateway_url: bool,
        #[arg(long)]
        clear_snapshot_manager_url: bool,
    },
    Delete {
        id: String,
    },
    RegenerateProxyApiKey {
        id: String,
    },
    RegenerateSshGatewayApiKey {
        id: String,
    },
    RegenerateSnapshotManagerCredentials {
        id: String,
    },
}

/// A runner's placement settings.
#[derive(Debug, Args)]
pub struct PlacementArgs {
    /// A tag sandboxes' `--runner-tag` constraints match, `KEY=VALUE`; repeat for more.
    #[arg(long = "tag", value_parser = key_value)]
    pub tags: Vec<(String, String)>,
    /// At most this many sandboxes on the runner at once.
    #[arg(long)]
    pub max_sandboxes: Option<u64>,
}

impl PlacementArgs {
    /// Adds `tags` (when any were given) and `maxSandboxes` to a request body.
    fn put_into(self, body: &mut Map<String, Value>) {
        if !self.tags.is_empty() {
            body.insert("tags".into(), string_map(self.tags));
        }
        put_numbers(body, [("maxSandboxes", self.max_sandboxes)]);
    }
}

/// A change to a runner's tags or sandbox limit; what is not given stays.
#[derive(Debug, Args)]
pub struct RunnerUpdateArgs {
    pub id: String,
    /// `--tag` replaces all of the runner's tags with those given.
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// Remove every tag.
    #[arg(long, conflicts_with = "tags")]
    pub clear_tags: bool,
    /// Remove the sandbox limit.
    #[arg(long, conflicts_with = "max_sandboxes")]
    pub no_max_sandboxes: bool,
}

impl RunnerUpdateArgs {
    fn call(self, path: &str) -> Call {
        let mut body = Map::new();
        let id = self.id;
        if self.clear_tags {
            body.insert("tags".into(), json!({}));
        }
        if self.no_max_sandboxes {
            body.insert("maxSandboxes".into(), Value::Null);
        }
        self.placement.put_into(&mut body);
        call(reqwest::Method::PATCH, format!("{path}/{id}"), Some(Value::Object(body)), RUNNER_COLUMNS)
    }
}

fn string_map(pairs: Vec<(String, String)>) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

#[derive(Debug, Subcommand)]
pub enum RunnerCommand {
    Create {
        name: String,
        #[arg(long)]
        region: String,
        #[command(flatten)]
        placement: PlacementArgs,
    },
    /// Change tags (`--tag` replaces them all, `--clear-tags`) or the sandbox limit.
    Update(RunnerUpdateArgs),
    List {
        #[arg(long)]
        region: Option<String>,
    },
    Get {
        id: String,
    },
    /// Set schedulable true/false; without --schedulable, toggle.
    Scheduling {
        id: String,
        #[arg(long)]
        schedulable: Option<bool>,
    },
    /// Drain the runner (no new sandboxes; those on it keep running); --undo ends it.
    Drain {
        id: String,
        #[arg(long)]
        undo: bool,
    },
    /// A new token (printed once); the old one stops working and the agent's session closes.
    RegenerateToken {
        id: String,
    },
    Delete {
        id: String,
    },
}

/// What a new API key is called, may do and when it expires.
#[derive(Debug, Args)]
pub struct NewKeyArgs {
    #[arg(long, default_value = "cli")]
    pub name: String,
    /// `member` or `admin` (default: member for your own keys, admin for the operator's).
    #[arg(long)]
    pub role: Option<String>,
    /// RFC 3339 time from which the key is refused, e.g. 2030-01-01T00:00:00Z.
    #[arg(long)]
    pub expires_at: Option<String>,
}

impl NewKeyArgs {
    fn body(self) -> Value {
        let mut body = Map::new();
        put(&mut body, "name", Some(self.name));
        put(&mut body, "role", self.role);
        put(&mut body, "expiresAt", self.expires_at);
        Value::Object(body)
    }
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    List,
    /// Create a key (printed once).
    Create(NewKeyArgs),
    /// Revoke a key by name: every node refuses it once this returns.
    Delete {
        name: String,
    },
}

/// cpu cores, memory and disk GiB, each optional.
#[derive(Debug, Args)]
pub struct ResourceArgs {
    #[arg(long)]
    pub cpu: Option<u64>,
    #[arg(long)]
    pub memory_gib: Option<u64>,
    #[arg(long)]
    pub disk_gib: Option<u64>,
}

impl ResourceArgs {
    fn fields(&self) -> [(&'static str, Option<u64>); 3] {
        [("cpu", self.cpu), ("memoryGiB", self.memory_gib), ("diskGiB", self.disk_gib)]
    }
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Ask for a sandbox in a region (by name); prints it once placed.
    Create {
        /// The region's name (a shared region such as `us`, or one of yours).
        #[arg(long)]
        target: String,
        #[command(flatten)]
        resources: ResourceArgs,
        #[arg(long)]
        gpu: Option<u64>,
        /// A label, `KEY=VALUE`; repeat for more.
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// A tag the runner must carry, `KEY=VALUE`; repeat for more (all must match).
        #[arg(long = "runner-tag", value_parser = key_value)]
        runner_tags: Vec<(String, String)>,
    },
    /// List sandboxes, filtered as the API does.
    List {
        /// `pending`, `started`, `stopped`, `error` or `destroyed`.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        runner: Option<String>,
    },
    Get {
        id: String,
    },
    Stop {
        id: String,
    },
    Start {
        id: String,
    },
    Delete {
        id: String,
    },
}

/// `KEY=VALUE`, for labels.
fn key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("'{arg}' is not KEY=VALUE")),
    }
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    #[command(subcommand)]
    Runner(AdminRunnerCommand),
    #[command(subcommand)]
    Organization(OrganizationCommand),
}

#[derive(Debug, Subcommand)]
pub enum AdminRunnerCommand {
    Create {
        name: String,
        #[arg(long)]
        region: String,
        #[arg(long)]
        api_key: String,
        #[arg(long, default_value = "2")]
        api_version: String,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        api_url: Option<String>,
        #[arg(long)]
        proxy_url: Option<String>,
        /// With any of the resources given, the capacity is the operator's (the agent's
        /// reports no longer change it).
        #[command(flatten)]
        resources: ResourceArgs,
        #[arg(long)]
        gpu: Option<u64>,
        #[command(flatten)]
        placement: PlacementArgs,
    },
    /// Change any runner's tags or sandbox limit.
    Update(RunnerUpdateArgs),
    List {
        #[arg(long)]
        region: Option<String>,
    },
    Get {
        id: String,
    },
    Scheduling {
        id: String,
        #[arg(long)]
        schedulable: Option<bool>,
    },
    /// Drain any runner; --undo ends it.
    Drain {
        id: String,
        #[arg(long)]
        undo: bool,
    },
    /// A new token for any runner (printed once).
    RegenerateToken {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrganizationCommand {
    Create {
        name: String,
    },
    List,
    /// Create another API key for an organization (printed once).
    CreateKey {
        organization_id: String,
        #[command(flatten)]
        key: NewKeyArgs,
    },
    /// List an organization's API keys.
    Keys {
        organization_id: String,
    },
    /// Revoke an organization's API key by name.
    DeleteKey {
        organization_id: String,
        name: String,
    },
    /// Set an organization's quota in shared regions; a limit left out is no limit.
    Quota {
        organization_id: String,
        #[command(flatten)]
        resources: ResourceArgs,
        #[arg(long)]
        sandboxes: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, log and applied indexes, members and gossip, as the node sees them.
    Status,
    /// The hash of the node's replica and the applied index it covers: members that applied
    /// the same index have the same hash (reads the whole state; not for polling).
    Hash,
    /// Add a node (learner, catch-up, then voter).
    AddMember {
        #[arg(long)]
        node_id: u64,
        #[arg(long)]
        raft_addr: String,
        #[arg(long)]
        api_addr: String,
    },
    /// Remove a node from the cluster.
    RemoveMember { node_id: u64 },
}

/// One REST call, and the columns a table of its result shows.
struct Call {
    method: reqwest::Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
    columns: &'static [&'static str],
}

const REGION_COLUMNS: &[&str] =
    &["id", "name", "regionType", "proxyUrl", "sshGatewayUrl", "snapshotManagerUrl", "createdAt"];
const RUNNER_COLUMNS: &[&str] =
    &["id", "name", "regionId", "state", "schedulable", "draining", "availabilityScore", "startedSandboxes"];
const SANDBOX_COLUMNS: &[&str] = &["id", "target", "runnerId", "state", "cpu", "memoryGiB", "diskGiB", "createdAt"];
const ORG_COLUMNS: &[&str] = &["id", "name", "createdAt"];
const KEY_COLUMNS: &[&str] = &["name", "prefix", "role", "createdAt", "expiresAt", "lastUsedAt", "expired"];
const MEMBER_COLUMNS: &[&str] = &["nodeId", "raftAddr", "apiAddr", "voter"];

fn put(map: &mut Map<String, Value>, key: &str, value: Option<String>) {
    if let Some(v) = value {
        map.insert(key.to_string(), Value::String(v));
    }
}

fn urls_body(urls: RegionUrls) -> Map<String, Value> {
    let mut body = Map::new();
    put(&mut body, "proxyUrl", urls.proxy_url);
    put(&mut body, "sshGatewayUrl", urls.ssh_gateway_url);
    put(&mut body, "snapshotManagerUrl", urls.snapshot_manager_url);
    body
}

/// Puts each number that is given.
fn put_numbers<const N: usize>(map: &mut Map<String, Value>, numbers: [(&str, Option<u64>); N]) {
    for (key, value) in numbers {
        if let Some(v) = value {
            map.insert(key.into(), json!(v));
        }
    }
}

fn scheduling_body(schedulable: Option<bool>) -> Option<Value> {
    schedulable.map(|s| json!({ "schedulable": s }))
}

fn call(method: reqwest::Method, path: String, body: Option<Value>, columns: &'static [&'static str]) -> Call {
    Call { method, path, query: Vec::new(), body, columns }
}

fn plan(command: CtlCommand) -> Call {
    use reqwest::Method as M;
    match command {
        CtlCommand::Region(c) => match c {
            RegionCommand::Create { name, urls } => {
                let mut body = urls_body(urls);
                body.insert("name".into(), Value::String(name));
                call(M::POST, "/api/regions".into(), Some(Value::Object(body)), REGION_COLUMNS)
            }
            RegionCommand::List => call(M::GET, "/api/regions".into(), None, REGION_COLUMNS),
            RegionCommand::Get { id } => call(M::GET, format!("/api/regions/{id}"), None, REGION_COLUMNS),
            RegionCommand::Update { id, urls, clear_proxy_url, clear_ssh_gateway_url, clear_snapshot_manager_url } => {
                let mut body = urls_body(urls);
                for (clear, key) in [
                    (clear_proxy_url, "proxyUrl"),
                    (clear_ssh_gateway_url, "sshGatewayUrl"),
                    (clear_snapshot_manager_url, "snapshotManagerUrl"),
                ] {
                    if clear {
                        body.insert(key.into(), Value::Null);
                    }
                }
                call(M::PATCH, format!("/api/regions/{id}"), Some(Value::Object(body)), REGION_COLUMNS)
            }
            RegionCommand::Delete { id } => call(M::DELETE, format!("/api/regions/{id}"), None, &[]),
            RegionCommand::RegenerateProxyApiKey { id } => {
                call(M::POST, format!("/api/regions/{id}/regenerate-proxy-api-key"), None, &[])
            }
            RegionCommand::RegenerateSshGatewayApiKey { id } => {
                call(M::POST, format!("/api/regions/{id}/regenerate-ssh-gateway-api-key"), None, &[])
            }
            RegionCommand::RegenerateSnapshotManagerCredentials { id } => {
                call(M::POST, format!("/api/regions/{id}/regenerate-snapshot-manager-credentials"), None, &[])
            }
        },
        CtlCommand::Runner(c) => match c {
            RunnerCommand::Create { name, region, placement } => {
                let mut body = Map::new();
                put(&mut body, "name", Some(name));
                put(&mut body, "regionId", Some(region));
                placement.put_into(&mut body);
                call(M::POST, "/api/runners".into(), Some(Value::Object(body)), &[])
            }
            RunnerCommand::Update(update) => update.call("/api/runners"),
            RunnerCommand::List { region } => {
                let mut c = call(M::GET, "/api/runners".into(), None, RUNNER_COLUMNS);
                c.query.extend(region.map(|r| ("regionId", r)));
                c
            }
            RunnerCommand::Get { id } => call(M::GET, format!("/api/runners/{id}"), None, RUNNER_COLUMNS),
            RunnerCommand::Scheduling { id, schedulable } => {
                call(M::PATCH, format!("/api/runners/{id}/scheduling"), scheduling_body(schedulable), RUNNER_COLUMNS)
            }
            RunnerCommand::Drain { id, undo } => call(
                M::PATCH,
                format!("/api/runners/{id}/draining"),
                Some(json!({ "draining": !undo })),
                RUNNER_COLUMNS,
            ),
            RunnerCommand::RegenerateToken { id } => {
                call(M::POST, format!("/api/runners/{id}/regenerate-token"), None, &[])
            }
            RunnerCommand::Delete { id } => call(M::DELETE, format!("/api/runners/{id}"), None, &[]),
        },
        CtlCommand::Sandbox(c) => match c {
            SandboxCommand::Create { target, resources, gpu, labels, runner_tags } => {
                let mut body = Map::new();
                put(&mut body, "target", Some(target));
                put_numbers(&mut body, resources.fields());
                put_numbers(&mut body, [("gpu", gpu)]);
                if !labels.is_empty() {
                    body.insert("labels".into(), string_map(labels));
                }
                if !runner_tags.is_empty() {
                    body.insert("runnerTags".into(), string_map(runner_tags));
                }
                call(M::POST, "/api/sandboxes".into(), Some(Value::Object(body)), SANDBOX_COLUMNS)
            }
            SandboxCommand::List { state, region, runner } => {
                let mut c = call(M::GET, "/api/sandboxes".into(), None, SANDBOX_COLUMNS);
                c.query.extend(state.map(|s| ("state", s)));
                c.query.extend(region.map(|r| ("regionId", r)));
                c.query.extend(runner.map(|r| ("runnerId", r)));
                c
            }
            SandboxCommand::Get { id } => call(M::GET, format!("/api/sandboxes/{id}"), None, SANDBOX_COLUMNS),
            SandboxCommand::Stop { id } => call(M::POST, format!("/api/sandboxes/{id}/stop"), None, SANDBOX_COLUMNS),
            SandboxCommand::Start { id } => call(M::POST, format!("/api/sandboxes/{id}/start"), None, SANDBOX_COLUMNS),
            SandboxCommand::Delete { id } => call(M::DELETE, format!("/api/sandboxes/{id}"), None, &[]),
        },
        CtlCommand::Admin(AdminCommand::Runner(c)) => match c {
            AdminRunnerCommand::Create {
                name,
                region,
                api_key,
                api_version,
                domain,
                api_url,
                proxy_url,
                resources,
                gpu,
                placement,
            } => {
                let mut body = Map::new();
                put(&mut body, "name", Some(name));
                put(&mut body, "regionId", Some(region));
                put(&mut body, "apiKey", Some(api_key));
                put(&mut body, "apiVersion", Some(api_version));
                put(&mut body, "domain", domain);
                put(&mut body, "apiUrl", api_url);
                put(&mut body, "proxyUrl", proxy_url);
                put_numbers(&mut body, resources.fields());
                put_numbers(&mut body, [("gpu", gpu)]);
                placement.put_into(&mut body);
                call(M::POST, "/api/admin/runners".into(), Some(Value::Object(body)), RUNNER_COLUMNS)
            }
            AdminRunnerCommand::Update(update) => update.call("/api/admin/runners"),
            AdminRunnerCommand::List { region } => {
                let mut c = call(M::GET, "/api/admin/runners".into(), None, RUNNER_COLUMNS);
                c.query.extend(region.map(|r| ("regionId", r)));
                c
            }
            AdminRunnerCommand::Get { id } => call(M::GET, format!("/api/admin/runners/{id}"), None, RUNNER_COLUMNS),
            AdminRunnerCommand::Scheduling { id, schedulable } => call(
                M::PATCH,
                format!("/api/admin/runners/{id}/scheduling"),
                scheduling_body(schedulable),
                RUNNER_COLUMNS,
            ),
            AdminRunnerCommand::Drain { id, undo } => call(
                M::PATCH,
                format!("/api/admin/runners/{id}/draining"),
                Some(json!({ "draining": !undo })),
                RUNNER_COLUMNS,
            ),
            AdminRunnerCommand::RegenerateToken { id } => {
                call(M::POST, format!("/api/admin/runners/{id}/regenerate-token"), None, &[])
            }
            AdminRunnerCommand::Delete { id } => call(M::DELETE, format!("/api/admin/runners/{id}"), None, &[]),
        },
        CtlCommand::Admin(AdminCommand::Organization(c)) => match c {
            OrganizationCommand::Create { name } => {
                call(M::POST, "/api/admin/organizations".into(), Some(json!({ "name": name })), &[])
            }
            OrganizationCommand::List => call(M::GET, "/api/admin/organizations".into(), None, ORG_COLUMNS),
            OrganizationCommand::CreateKey { organization_id, key } => {
                call(M::POST, format!("/api/admin/organizations/{organization_id}/api-keys"), Some(key.body()), &[])
            }
            OrganizationCommand::Keys { organization_id } => {
                call(M::GET, format!("/api/admin/organizations/{organization_id}/api-keys"), None, KEY_COLUMNS)
            }
            OrganizationCommand::DeleteKey { organization_id, name } => {
                call(M::DELETE, format!("/api/admin/organizations/{organization_id}/api-keys/{name}"), None, &[])
            }
            OrganizationCommand::Quota { organization_id, resources, sandboxes } => {
                let mut body = Map::new();
                put_numbers(&mut body, resources.fields());
                put_numbers(&mut body, [("sandboxes", sandboxes)]);
                call(
                    M::PUT,
                    format!("/api/admin/organizations/{organization_id}/quota"),
                    Some(Value::Object(body)),
                    &[],
                )
            }
        },
        CtlCommand::ApiKey(c) => match c {
            ApiKeyCommand::List => call(M::GET, "/api/api-keys".into(), None, KEY_COLUMNS),
            ApiKeyCommand::Create(key) => call(M::POST, "/api/api-keys".into(), Some(key.body()), &[]),
            ApiKeyCommand::Delete { name } => call(M::DELETE, format!("/api/api-keys/{name}"), None, &[]),
        },
        CtlCommand::Quota => call(M::GET, "/api/quota".into(), None, &[]),
        CtlCommand::Cluster(ClusterCommand::Status) => call(M::GET, "/api/admin/cluster".into(), None, &[]),
        CtlCommand::Cluster(ClusterCommand::Hash) => call(M::GET, "/api/admin/cluster/hash".into(), None, &[]),
        CtlCommand::Cluster(ClusterCommand::AddMember { node_id, raft_addr, api_addr }) => call(
            M::POST,
            "/api/admin/cluster/members".into(),
            Some(json!({ "nodeId": node_id, "raftAddr": raft_addr, "apiAddr": api_addr })),
            MEMBER_COLUMNS,
        ),
        CtlCommand::Cluster(ClusterCommand::RemoveMember { node_id }) => {
            call(M::DELETE, format!("/api/admin/cluster/members/{node_id}"), None, MEMBER_COLUMNS)
        }
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(_) | Value::Array(_) => value.to_string(),
        other => other.to_string(),
    }
}

/// A list as aligned columns; an object as `key  value` lines.
pub fn render_table(value: &Value, columns: &[&str]) -> String {
    match value {
        Value::Array(items) => {
            let header: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
            let rows: Vec<Vec<String>> =
                items.iter().map(|item| columns.iter().map(|c| scalar(&item[*c])).collect()).collect();
            let widths: Vec<usize> = (0..columns.len())
                .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0))
                .collect();
            let line = |cells: &[String]| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            let mut out = vec![line(&header)];
            out.extend(rows.iter().map(|r| line(r)));
            out.join("\n")
        }
        Value::Object(map) => {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            map.iter().map(|(k, v)| format!("{k:<width$}  {}", scalar(v))).collect::<Vec<_>>().join("\n")
        }
        Value::Null => String::new(),
        other => scalar(other),
    }
}

pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let token = args.token.clone().context("no token: set CORRAL_TOKEN or pass --token")?;
    let output = args.output;
    let mut call = plan(args.command);
    if args.stale && call.method == reqwest::Method::GET {
        call.query.push(("consistency", "stale".into()));
    }
    let mut client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30));
    if let Some(path) = &args.ca_cert {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        client = client.add_root_certificate(
            reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?,
        );
    }
    let client = client.build()?;
    let url = format!("{}{}", args.addr.trim_end_matches('/'), call.path);
    let mut request = client.request(call.method.clone(), &url).bearer_auth(token).query(&call.query);
    if let Some(org) = &args.organization {
        request = request.header("X-Organization-ID", org);
    }
    if let Some(key) = args.idempotency_key.as_ref().filter(|_| call.method == reqwest::Method::POST) {
        request = request.header("Idempotency-Key", key);
    }
    if let Some(body) = &call.body {
        request = request.json(body);
    }
    let response = request.send().with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text().unwrap_or_default();
    let value: Value =
        if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    if !status.is_success() {
        let message = value["error"].as_str().map(String::from).unwrap_or_else(|| value.to_string());
        let code = value["code"].as_str().unwrap_or("error");
        bail!("{} {}: {message} ({code})", status.as_u16(), status.canonical_reason().unwrap_or(""));
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Output::Table if value.is_null() => println!("ok ({})", status.as_u16()),
        Output::Table => println!("{}", render_table(&value, call.columns)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        let list = json!([{ "id": "a", "name": "one", "x": 1 }, { "id": "bb", "name": null }]);
        assert_eq!(render_table(&list, &["id", "name"]), "id  name\na   one\nbb  -");
        let obj = json!({ "id": "a", "apiKey": "k" });
        assert_eq!(render_table(&obj, &[]), "apiKey  k\nid      a");
    }
}

//! The node's configuration: one typed struct, read from a TOML file, then overridden by
//! `CORRAL_*` environment variables, then by flags (clap reads both, flags winning), and
//! validated once at start-up with a readable error.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Heartbeat and election timeout defaults, from measurements on a 2-core machine saturated by
/// 256 connections of sandbox creations with fsync on (README, "Elections"): a follower's gap
/// between AppendEntries is under 100 ms at p99, but with a state of ~800k sandboxes the
/// leader's quorum acknowledgement went stale for more than 250 ms (50/300) and 500 ms
/// (100/600) often enough to change the leader 31 and 8 times in 125 s, mostly while
/// snapshots were encoded; 100/1000 (lease 900 ms) is the setting measured for the default.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;

/// A ready runner silent this long is marked `unresponsive`. Silence counts from the latest of
/// the runner's last report, the leader's election and 2.5 s (the agent's QUIC idle timeout,
/// after which it leaves a silent node) after any node was last seen down, and it is measured
/// on the relay's clock, so neither a failover nor a dead or lagging node marks a healthy
/// fleet. 4 s meets the 5 s target for noticing a dead agent (4.7 s measured with 10,000
/// simulated runners) and, on the saturated 2-core machine (256 connections creating
/// sandboxes, 10 leader kills), marked no healthy runner. Runs before the status endpoint
/// stopped hashing the whole state on the async runtime flapped 700–1,200 runners here.
pub const DEFAULT_RUNNER_SILENCE_MS: u64 = 4_000;
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 1_000;
/// How long a request to the leader may take (forwarded calls' deadline).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Largest REST request body (413 above it).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Log entries kept below a snapshot, as etcd's `--snapshot-catchup-entries` (5,000). A
/// follower back after a few seconds away catches up from the log instead of a snapshot of
/// the whole state (a 57 MB one took 2.7 s to stream and install in a chaos run, and a leader
/// failure during that wait stopped writes for as long). The cost is disk only: openraft
/// reads entries from the store, and a restart replays from the snapshot, not from here.
pub const DEFAULT_KEEP_LOGS_AFTER_SNAPSHOT: u64 = 5_000;

/// Format of the node's log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One initial cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    pub raft_addr: String,
    pub api_addr: String,
}

/// Everything `corral serve` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub node_id: u64,
    /// RocksDB lives in `<data_dir>/raft`.
    pub data_dir: PathBuf,
    /// host:port this node's gRPC (Raft) server listens on and peers dial.
    pub raft_addr: String,
    /// host:port this node's REST server listens on.
    pub api_addr: String,
    /// Initial members, including this node.
    pub peers: Vec<PeerConfig>,
    /// Initialize the cluster with `peers` if this node has never been initialized.
    pub bootstrap: bool,
    pub admin_key: String,
    pub fsync: bool,
    /// Build a snapshot after this many applied commands since the last one (an entry carries
    /// a batch of commands; see `compaction`). Like etcd's `--snapshot-count`.
    pub snapshot_threshold: u64,
    /// Entries kept in the log below the snapshot point (for followers that lag a little).
    pub keep_logs_after_snapshot: u64,
    pub heartbeat_ms: u64,
    /// A follower that has not heard from a leader for a time drawn from
    /// [election_timeout_ms, 1.5 × election_timeout_ms) asks for pre-votes; the lease (a voter's
    /// refusal to elect while it hears from a leader, and a leader's fence without a quorum's
    /// acknowledgement) is election_timeout_ms less one heartbeat (see `election`).
    pub election_timeout_ms: u64,
    /// How long a client request may wait for a leader and a commit.
    pub request_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    /// On SIGTERM, how long the node reports not ready before it stops accepting requests
    /// (longer than the load balancer's health-check fall time).
    pub drain_ms: u64,
    /// A ready runner silent for this long becomes `unresponsive`; 0 turns the leader's health
    /// monitor off (runner state then changes only through the admin API).
    pub runner_silence_ms: u64,
    /// A runner `unresponsive` for this long has its sandboxes placed again on other runners
    /// of its region (so are a decommissioned runner's); 0 turns rescheduling off.
    pub reschedule_after_ms: u64,
    /// How often runner agents report (sent to them on connect).
    pub runner_report_interval_ms: u64,
    /// Gossip (SWIM): a suspect node that has not refuted within this is declared down.
    pub gossip_suspect_ms: u64,
    /// Seed of the scheduler's choice among the best runners (`None`: drawn at start and
    /// logged, so a run can be replayed with it).
    pub scheduler_seed: Option<u64>,
    /// Cluster TLS (mutual, gRPC and QUIC): the CA, this node's certificate and its key.
    pub ca_cert: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    /// REST over HTTPS with this certificate and key; both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serve REST over plain HTTP (no `tls_cert`): must be asked for explicitly.
    pub plain_http: bool,
    /// Requests per second each API key may make on this node (0: unlimited), and its burst.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// REST connections open at once on this node; more are closed at accept.
    pub max_connections: usize,
    /// Proposals that may wait on the leader to be batched into Raft entries; over it, writes
    /// are refused with 503 `overloaded` at once.
    pub proposal_queue: usize,
    /// Key material for encrypting stored secrets (the same on every node). When unset it is
    /// derived from `admin_key`, which every node shares too.
    pub secrets_key: Option<String>,
}

/// The config file's shape; every field optional so env and flags can fill the rest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    data_dir: Option<PathBuf>,
    raft_addr: Option<String>,
    api_addr: Option<String>,
    peers: Option<Vec<PeerConfig>>,
    bootstrap: Option<bool>,
    admin_key: Option<String>,
    fsync: Option<bool>,
    snapshot_threshold: Option<u64>,
    keep_logs_after_snapshot: Option<u64>,
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    max_body_bytes: Option<usize>,
    log_format: Option<LogFormat>,
    drain_ms: Option<u64>,
    runner_silence_ms: Option<u64>,
    reschedule_after_ms: Option<u64>,
    runner_report_interval_ms: Option<u64>,
    gossip_suspect_ms: Option<u64>,
    scheduler_seed: Option<u64>,
    ca_cert: Option<PathBuf>,
    node_cert: Option<PathBuf>,
    node_key: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    plain_http: Option<bool>,
    rate_limit_per_second: Option<u32>,
    rate_limit_burst: Option<u32>,
    max_connections: Option<usize>,
    proposal_queue: Option<usize>,
    secrets_key: Option<String>,
}

/// Flags of `corral serve`; each also reads a `CORRAL_*` variable.
#[derive(Debug, Args, Default, Clone)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "CORRAL_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "CORRAL_NODE_ID")]
    pub node_id: Option<u64>,
    #[arg(long, env = "CORRAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "CORRAL_RAFT_ADDR")]
    pub raft_addr: Option<String>,
    #[arg(long, env = "CORRAL_API_ADDR")]
    pub api_addr: Option<String>,
    /// Initial members: `id=raft_host:port/api_host:port,...`
    #[arg(long, env = "CORRAL_PEERS")]
    pub peers: Option<String>,
    /// Initialize the cluster from `--peers` unless this node already is.
    #[arg(long, env = "CORRAL_BOOTSTRAP")]
    pub bootstrap: bool,
    #[arg(long, env = "CORRAL_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    #[arg(long, env = "CORRAL_FSYNC")]
    pub fsync: Option<bool>,
    #[arg(long, env = "CORRAL_SNAPSHOT_THRESHOLD")]
    pub snapshot_threshold: Option<u64>,
    #[arg(long, env = "CORRAL_KEEP_LOGS_AFTER_SNAPSHOT")]
    pub keep_logs_after_snapshot: Option<u64>,
    #[arg(long, env = "CORRAL_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    #[arg(long, env = "CORRAL_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    #[arg(long, env = "CORRAL_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    #[arg(long, env = "CORRAL_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    #[arg(long, env = "CORRAL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    #[arg(long, env = "CORRAL_DRAIN_MS")]
    pub drain_ms: Option<u64>,
    /// Silence after which a ready runner becomes unresponsive (0: never, by health).
    #[arg(long, env = "CORRAL_RUNNER_SILENCE_MS")]
    pub runner_silence_ms: Option<u64>,
    /// How long a runner stays unresponsive before its sandboxes move elsewhere (0: never).
    #[arg(long, env = "CORRAL_RESCHEDULE_AFTER_MS")]
    pub reschedule_after_ms: Option<u64>,
    #[arg(long, env = "CORRAL_RUNNER_REPORT_INTERVAL_MS")]
    pub runner_report_interval_ms: Option<u64>,
    #[arg(long, env = "CORRAL_GOSSIP_SUSPECT_MS")]
    pub gossip_suspect_ms: Option<u64>,
    /// Seed the scheduler's placement choices (replays a logged run); default: random, logged.
    #[arg(long, env = "CORRAL_SCHEDULER_SEED")]
    pub scheduler_seed: Option<u64>,
    /// The cluster CA certificate (`corral certs init`); peers and runners must hold a
    /// certificate it issued.
    #[arg(long, env = "CORRAL_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// This node's certificate from the cluster CA (`corral certs node`).
    #[arg(long, env = "CORRAL_NODE_CERT")]
    pub node_cert: Option<PathBuf>,
    #[arg(long, env = "CORRAL_NODE_KEY")]
    pub node_key: Option<PathBuf>,
    /// Serve the REST API over HTTPS with this certificate (PEM chain) ...
    #[arg(long, env = "CORRAL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// ... and this private key.
    #[arg(long, env = "CORRAL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve the REST API over plain HTTP (development, or behind a TLS-terminating proxy).
    #[arg(long, env = "CORRAL_PLAIN_HTTP")]
    pub plain_http: bool,
    /// Requests per second per API key on this node (0: unlimited); over it gets 429.
    #[arg(long, env = "CORRAL_RATE_LIMIT_PER_SECOND")]
    pub rate_limit_per_second: Option<u32>,
    #[arg(long, env = "CORRAL_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// REST connections open at once on this node.
    #[arg(long, env = "CORRAL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Proposals that may wait on the leader for a Raft entry (over it: 503 `overloaded`).
    #[arg(long, env = "CORRAL_PROPOSAL_QUEUE")]
    pub proposal_queue: Option<usize>,
    /// Key for encrypting stored secrets (at least 16 characters, the same on every node).
    #[arg(long, env = "CORRAL_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path} is invalid: {reason}")]
    Parse { path: String, reason: String },
    #[error("{0} is required (flag, CORRAL_* variable or config file)")]
    Missing(&'static str),
    #[error("invalid peer '{0}': expected id=raft_host:port/api_host:port")]
    BadPeer(String),
    #[error("{0}")]
    Invalid(String),
}

/// Parses `1=127.0.0.1:7001/127.0.0.1:8001,2=...`.
pub fn parse_peers(spec: &str) -> Result<Vec<PeerConfig>, ConfigError> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let bad = || ConfigError::BadPeer(item.to_string());
            let (id, addrs) = item.split_once('=').ok_or_else(bad)?;
            let (raft_addr, api_addr) = addrs.split_once('/').ok_or_else(bad)?;
            let id = id.trim().parse().map_err(|_| bad())?;
            if raft_addr.is_empty() || api_addr.is_empty() {
                return Err(bad());
            }
            Ok(PeerConfig { id, raft_addr: raft_addr.to_string(), api_addr: api_addr.to_string() })
        })
        .collect()
}

/// Renders peers back into the `--peers` form.
pub fn format_peers(peers: &[PeerConfig]) -> String {
    peers.iter().map(|p| format!("{}={}/{}", p.id, p.raft_addr, p.api_addr)).collect::<Vec<_>>().join(",")
}

impl NodeConfig {
    /// File, then env/flags on top, then defaults; validated.
    pub fn load(args: &ServeArgs) -> Result<NodeConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let p = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read { path: p.clone(), reason: e.to_string() })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::Parse { path: p, reason: e.to_string() })?
            }
            None => FileConfig::default(),
        };
        let peers = match &args.peers {
            Some(spec) => parse_peers(spec)?,
            None => file.peers.unwrap_or_default(),
        };
        let config = NodeConfig {
            node_id: args.node_id.or(file.node_id).ok_or(ConfigError::Missing("node_id"))?,
            data_dir: args.data_dir.clone().or(file.data_dir).ok_or(ConfigError::Missing("data_dir"))?,
            raft_addr: args.raft_addr.clone().or(file.raft_addr).ok_or(ConfigError::Missing("raft_addr"))?,
            api_addr: args.api_addr.clone().or(file.api_addr).ok_or(ConfigError::Missing("api_addr"))?,
            peers,
            bootstrap: args.bootstrap || file.bootstrap.unwrap_or(false),
            admin_key: args.admin_key.clone().or(file.admin_key).ok_or(ConfigError::Missing("admin_key"))?,
            fsync: args.fsync.or(file.fsync).unwrap_or(true),
            snapshot_threshold: args.snapshot_threshold.or(file.snapshot_threshold).unwrap_or(100_000),
            keep_logs_after_snapshot: args
                .keep_logs_after_snapshot
                .or(file.keep_logs_after_snapshot)
                .unwrap_or(DEFAULT_KEEP_LOGS_AFTER_SNAPSHOT),
            heartbeat_ms: args.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(DEFAULT_HEARTBEAT_MS),
            election_timeout_ms: args
                .election_timeout_ms
                .or(file.election_timeout_ms)
                .unwrap_or(DEFAULT_ELECTION_TIMEOUT_MS),
            request_timeout_ms: args
                .request_timeout_ms
                .or(file.request_timeout_ms)
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS),
            max_body_bytes: args.max_body_bytes.or(file.max_body_bytes).unwrap_or(DEFAULT_MAX_BODY_BYTES),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            // haproxy's check (deploy/haproxy.cfg: every 500 ms, down after 2) needs ~1 s.
            drain_ms: args.drain_ms.or(file.drain_ms).unwrap_or(1_500),
            runner_silence_ms: args.runner_silence_ms.or(file.runner_silence_ms).unwrap_or(DEFAULT_RUNNER_SILENCE_MS),
            reschedule_after_ms: args.reschedule_after_ms.or(file.reschedule_after_ms).unwrap_or(60_000),
            runner_report_interval_ms: args
                .runner_report_interval_ms
                .or(file.runner_report_interval_ms)
                .unwrap_or(1_000),
            gossip_suspect_ms: args.gossip_suspect_ms.or(file.gossip_suspect_ms).unwrap_or(2_000),
            scheduler_seed: args.scheduler_seed.or(file.scheduler_seed),
            ca_cert: args.ca_cert.clone().or(file.ca_cert).ok_or(ConfigError::Missing("ca_cert"))?,
            node_cert: args.node_cert.clone().or(file.node_cert).ok_or(ConfigError::Missing("node_cert"))?,
            node_key: args.node_key.clone().or(file.node_key).ok_or(ConfigError::Missing("node_key"))?,
            tls_cert: args.tls_cert.clone().or(file.tls_cert),
            tls_key: args.tls_key.clone().or(file.tls_key),
            plain_http: args.plain_http || file.plain_http.unwrap_or(false),
            rate_limit_per_second: args.rate_limit_per_second.or(file.rate_limit_per_second).unwrap_or(20_000),
            rate_limit_burst: args.rate_limit_burst.or(file.rate_limit_burst).unwrap_or(40_000),
            max_connections: args.max_connections.or(file.max_connections).unwrap_or(4_096),
            proposal_queue: args
                .proposal_queue
                .or(file.proposal_queue)
                .unwrap_or(crate::leader::PROPOSAL_BATCHING.queue_capacity),
            secrets_key: args.secrets_key.clone().or(file.secrets_key),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.admin_key.len() < 16 {
            return Err(ConfigError::Invalid("admin_key must be at least 16 characters".into()));
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms < 3 * self.heartbeat_ms {
            return Err(ConfigError::Invalid("election_timeout_ms must be at least 3 × heartbeat_ms > 0".into()));
        }
        if self.runner_report_interval_ms == 0
            || (self.runner_silence_ms != 0 && self.runner_silence_ms <= self.runner_report_interval_ms)
        {
            return Err(ConfigError::Invalid(
                "runner_silence_ms must be 0 (off) or longer than runner_report_interval_ms > 0".into(),
            ));
        }
        if self.gossip_suspect_ms < 100 {
            return Err(ConfigError::Invalid("gossip_suspect_ms must be at least 100".into()));
        }
        match (&self.tls_cert, &self.tls_key, self.plain_http) {
            (Some(_), Some(_), false) | (None, None, true) => {}
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(ConfigError::Invalid("tls_cert and tls_key go together".into()))
            }
            (Some(_), Some(_), true) => {
                return Err(ConfigError::Invalid("plain_http and tls_cert exclude each other".into()))
            }
            (None, None, false) => {
                return Err(ConfigError::Invalid(
                    "the REST API needs tls_cert and tls_key (HTTPS), or plain_http = true to serve plain HTTP".into(),
                ))
            }
        }
        if self.rate_limit_per_second > 0 && self.rate_limit_burst == 0 {
            return Err(ConfigError::Invalid("rate_limit_burst must be at least 1".into()));
        }
        if self.secrets_key.as_ref().is_some_and(|k| k.len() < 16) {
            return Err(ConfigError::Invalid("secrets_key must be at least 16 characters".into()));
        }
        if self.proposal_queue == 0 {
            return Err(ConfigError::Invalid("proposal_queue must be at least 1".into()));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid("max_connections must be at least 1".into()));
        }
        if self.snapshot_threshold == 0 {
            return Err(ConfigError::Invalid("snapshot_threshold must be at least 1".into()));
        }
        if self.bootstrap && !self.peers.iter().any(|p| p.id == self.node_id) {
            return Err(ConfigError::Invalid(format!(
                "--bootstrap needs --peers that include this node (id {})",
                self.node_id
            )));
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.peers.len() {
            return Err(ConfigError::Invalid("peer ids must be unique".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_round_trip() {
        let peers = parse_peers("1=127.0.0.1:7001/127.0.0.1:8001, 2=h:1/h:2").expect("valid");
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[1], PeerConfig { id: 2, raft_addr: "h:1".into(), api_addr: "h:2".into() });
        assert_eq!(parse_peers(&format_peers(&peers)).expect("valid"), peers);
        assert!(parse_peers("x=a/b").is_err());
        assert!(parse_peers("1=a").is_err());
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("corral.toml");
        std::fs::write(
            &path,
            "node_id = 1\ndata_dir = \"/tmp/x\"\nraft_addr = \"127.0.0.1:1\"\napi_addr = \"127.0.0.1:2\"\n\
             admin_key = \"0123456789abcdef\"\nheartbeat_ms = 50\nca_cert = \"c/ca.pem\"\nnode_cert = \"c/n.pem\"\n\
             node_key = \"c/n-key.pem\"\nplain_http = true\n[[peers]]\nid = 1\nraft_addr = \"127.0.0.1:1\"\napi_addr = \"127.0.0.1:2\"\n",
        )
        .expect("write");
        let args = ServeArgs { config: Some(path.clone()), heartbeat_ms: Some(70), ..Default::default() };
        let config = NodeConfig::load(&args).expect("valid");
        assert_eq!(config.node_id, 1);
        assert_eq!(config.heartbeat_ms, 70, "flag wins over file");
        assert_eq!(config.peers.len(), 1);
        assert!(config.fsync);
        assert!(config.plain_http);

        let https_and_plain = ServeArgs { tls_cert: Some("a".into()), tls_key: Some("b".into()), ..args.clone() };
        let err = NodeConfig::load(&https_and_plain).expect_err("both");
        assert!(err.to_string().contains("exclude"), "{err}");

        std::fs::write(&path, "node_id = 1\nbogus = 2\n").expect("write");
        let err = NodeConfig::load(&args).expect_err("unknown field");
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}

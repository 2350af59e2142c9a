//! `corral runner`: the runner agent.
//!
//! It connects over QUIC to one of `--endpoints` (the nodes' Raft addresses, UDP), proves its
//! token, reports the host's cpu/memory/disk usage every interval the node asks for, and
//! receives the sandboxes assigned to it, acknowledging each frame of them. When its node dies or the
//! connection breaks it moves to the next endpoint, with jittered exponential backoff. A
//! refused token ends the agent with an error (retrying a revoked token would only hammer the
//! cluster).
//!
//! `--simulate N --tokens-file F` runs N runners in one process with synthetic usage: each
//! runner is its own session (one QUIC stream), and the sessions share one connection per
//! [`RUNNERS_PER_CONNECTION`] runners, so ten thousand runners cost a few connections.
//!
//! Code map:
//! - this file: the command line ([`RunnerArgs`]), [`run`] (one runner, or `--simulate`),
//!   [`simulate`], and [`AgentError`], why an agent stops for good;
//! - `endpoints`: failover — [`NodeLink`], the list of endpoints and the shared connection,
//!   dialled in turn with backoff;
//! - `usage`: the host usage probe ([`UsageSource`]: sysinfo, or synthetic for simulated
//!   runners);
//! - `session`: one runner's session with a node ([`run_session`]): hello, reports out,
//!   assignments in and acknowledged.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use corral_net::tls::ClusterTls;
use tokio::sync::watch;

pub(crate) mod endpoints;
mod session;
mod usage;

pub use endpoints::NodeLink;
pub use session::run_session;
pub use usage::UsageSource;

/// Simulated runners that share one QUIC connection.
pub const RUNNERS_PER_CONNECTION: usize = 1_000;

#[derive(Debug, Args, Clone)]
pub struct RunnerArgs {
    /// The runner's token (shown once when the runner was created).
    #[arg(long, env = "CORRAL_RUNNER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Nodes to connect to (their Raft addresses, host:port), comma separated.
    #[arg(long, env = "CORRAL_ENDPOINTS", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// Run this many simulated runners with synthetic usage (tokens from --tokens-file).
    #[arg(long)]
    pub simulate: Option<usize>,
    /// One runner token per line, for --simulate.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// The cluster CA certificate (PEM); nodes are trusted only if it issued theirs.
    #[arg(long, env = "CORRAL_CA_CERT")]
    pub ca_cert: PathBuf,
    /// This runner's certificate from the cluster CA (`corral certs runner`).
    #[arg(long, env = "CORRAL_RUNNER_CERT")]
    pub cert: PathBuf,
    /// The private key of --cert.
    #[arg(long, env = "CORRAL_RUNNER_KEY")]
    pub key: PathBuf,
    /// Where sandboxes keep their data: the disk capacity this runner reports is that of the
    /// filesystem holding it.
    #[arg(long, env = "CORRAL_RUNNER_WORK_DIR", default_value = ".")]
    pub work_dir: PathBuf,
    /// Serve Prometheus metrics (reports sent, session reconnects, assignments, host usage)
    /// at `http://ADDR/metrics`.
    #[arg(long, env = "CORRAL_RUNNER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Why an agent stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the cluster refused this runner: {0}")]
    Refused(String),
    #[error("no endpoints given")]
    NoEndpoints,
    #[error(transparent)]
    Quic(#[from] corral_net::quic::QuicError),
    #[error(transparent)]
    Tls(#[from] corral_net::tls::TlsError),
}

pub fn run(args: RunnerArgs) -> anyhow::Result<()> {
    let tls = ClusterTls::load(&args.ca_cert, &args.cert, &args.key)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            crate::serve::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        if let Some(addr) = args.metrics_addr {
            serve_metrics(addr, stop_rx.clone()).await?;
        }
        match args.simulate {
            Some(n) => {
                let path = args.tokens_file.as_ref().context("--simulate needs --tokens-file")?;
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                let tokens: Vec<String> =
                    text.lines().map(str::trim).filter(|l| !l.is_empty()).take(n).map(String::from).collect();
                anyhow::ensure!(
                    tokens.len() == n,
                    "{} holds {} tokens, --simulate asked for {n}",
                    path.display(),
                    tokens.len()
                );
                simulate(tokens, args.endpoints, tls, stop_rx).await
            }
            None => {
                let token = args.token.context("--token (or CORRAL_RUNNER_TOKEN) is required")?;
                let link = Arc::new(NodeLink::new(args.endpoints, &tls)?);
                run_session(link, token, UsageSource::Host { work_dir: args.work_dir }, stop_rx)
                    .await
                    .map_err(anyhow::Error::from)
            }
        }
    })
}

/// Installs the metrics recorder and serves `/metrics` on `addr` until `stop`.
async fn serve_metrics(addr: std::net::SocketAddr, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let handle = crate::telemetry::install()?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, "agent metrics at /metrics");
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || std::future::ready(handle.render())));
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "agent metrics listener stopped");
        }
    });
    Ok(())
}

/// Runs simulated runners until `stop`; fails if any runner is refused.
pub async fn simulate(
    tokens: Vec<String>,
    endpoints: Vec<String>,
    tls: ClusterTls,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tracing::info!(runners = tokens.len(), "simulating runners");
    let mut tasks = tokio::task::JoinSet::new();
    for (group, chunk) in tokens.chunks(RUNNERS_PER_CONNECTION).enumerate() {
        // Spread groups over the endpoints so the load lands on every node.
        let mut rotated = endpoints.clone();
        if !rotated.is_empty() {
            let shift = group % rotated.len();
            rotated.rotate_left(shift);
        }
        let link = Arc::new(NodeLink::new(rotated, &tls)?);
        for token in chunk {
            tasks.spawn(run_session(link.clone(), token.clone(), UsageSource::Synthetic, stop.clone()));
        }
    }
    let mut refused = 0usize;
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(e)) = result {
            refused += 1;
            tracing::error!(error = %e, "simulated runner stopped");
        }
    }
    anyhow::ensure!(refused == 0, "{refused} simulated runners were refused");
    Ok(())
}

//! The `corral` binary. See `lib.rs` for the crate map.

use clap::{Parser, Subcommand};
use corral_node::config::{LogFormat, NodeConfig, ServeArgs};
use corral_node::{certs, ctl, dev, runner_agent, serve};

/// jemalloc: under load a node spent a quarter of its CPU in glibc's malloc and free
/// (ARCHITECTURE.md, `node/`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Corral: a control plane for bring-your-own-compute fleets.
#[derive(Debug, Parser)]
#[command(name = "corral", version)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run one node (config file + CORRAL_* env + flags).
    Serve(Box<ServeArgs>),
    /// Run a local 3-node cluster under ./data (development).
    Dev(dev::DevArgs),
    /// Talk to a cluster's REST API (CORRAL_ADDR, CORRAL_TOKEN).
    Ctl(Box<ctl::CtlArgs>),
    /// Run the runner agent: report this host's health over QUIC, receive assignments.
    Runner(runner_agent::RunnerArgs),
    /// Create the cluster CA and issue node and runner certificates.
    Certs(certs::CertsArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Commands::Serve(args) => {
            let config = NodeConfig::load(&args)?;
            init_logging(config.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve::run(config))
        }
        Commands::Dev(args) => dev::run(args),
        Commands::Certs(args) => certs::run(args),
        Commands::Runner(args) => {
            init_logging(LogFormat::Text);
            runner_agent::run(args)
        }
        Commands::Ctl(args) => match ctl::run(*args) {
            Ok(()) => Ok(()),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        },
    }
}

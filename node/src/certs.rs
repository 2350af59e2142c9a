//! `corral certs`: the cluster's certificate authority and the certificates it issues.
//!
//! ```text
//! corral certs init   --dir certs                      # ca.pem, ca-key.pem
//! corral certs node   --dir certs --name node-1 [--san 10.0.0.1 --san corral-1.example]
//! corral certs runner --dir certs --name runner
//! ```
//! Every file is written with mode 0600. Keep `ca-key.pem` off the nodes: only `ca.pem`, a
//! node's own certificate and its key go to that node.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use corral_net::tls::{CertDir, Role};

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create the cluster CA (kept if one is already in --dir).
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
    /// Issue a node certificate (gRPC and QUIC, server and client; also usable for HTTPS).
    Node(IssueArgs),
    /// Issue a runner agent certificate (QUIC client only).
    Runner(IssueArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// File stem and common name, e.g. node-1 (writes node-1.pem and node-1-key.pem).
    #[arg(long)]
    pub name: String,
    /// More DNS names or IP addresses the certificate is valid for (repeatable), e.g. the
    /// address clients use for HTTPS.
    #[arg(long = "san")]
    pub sans: Vec<String>,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        CertsCommand::Init { dir } => {
            let certs = CertDir::new(&dir);
            if certs.init().context("cannot create the CA")? {
                println!("created the cluster CA: {} (key: {})", certs.ca_cert().display(), certs.ca_key().display());
            } else {
                println!("kept the existing cluster CA in {}", dir.display());
            }
            Ok(())
        }
        CertsCommand::Node(issue) => issue_one(Role::Node, issue),
        CertsCommand::Runner(issue) => issue_one(Role::Runner, issue),
    }
}

fn issue_one(role: Role, args: IssueArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.name.is_empty() && args.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "--name must be letters, digits, '-' or '_' (it becomes a file name)"
    );
    let certs = CertDir::new(&args.dir);
    certs.issue(role, &args.name, &args.sans).with_context(|| {
        format!("cannot issue {} (run `corral certs init --dir {}` first?)", args.name, args.dir.display())
    })?;
    println!("issued {} and {}", certs.cert(&args.name).display(), certs.key(&args.name).display());
    Ok(())
}

//! `shardfs-meta`: the metaserver binary.
//!
//! `shardfs-meta --id 1 --listen 127.0.0.1:7101 --data-dir D --peers
//! 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103` starts (or restarts)
//! one member of a Raft group. The first start of a new group initializes
//! it once (from the lowest id); restarts rejoin. Once listening it prints
//! `listening on ADDR` on standard output; logs go to standard error
//! (`RUST_LOG`, default `info`).

use std::io::Write;
use std::path::PathBuf;

/// mimalloc, tuned by `shardfs_proto::alloc::keep_freed_memory`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use shardfs_meta::config::{Config, FileConfig, Overrides};
use shardfs_meta::metaserver::Metaserver;
use shardfs_meta::server;
use shardfs_proto::security::{self, Security};
use shardfs_proto::{errln, outln};
use tokio::net::TcpListener;
use tracing::info;

#[derive(Parser)]
#[command(name = "shardfs-meta", version, about = "shardfs metaserver")]
#[command(args_conflicts_with_subcommands = true)]
struct Top {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    serve: Cli,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Show the group and its chunk servers as the leader sees them.
    Status {
        /// Metaservers (host:port,...).
        #[arg(long, env = "SHARDFS_META", value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// The cluster CA's certificate (PEM) to verify metaservers with.
        #[arg(long, env = "SHARDFS_CA")]
        ca: Option<PathBuf>,
        /// The token to ask with (a reader's is enough).
        #[arg(long, env = "SHARDFS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Talk plaintext to a cluster started with --insecure.
        #[arg(long, env = "SHARDFS_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
        insecure: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure commits/s and lookups/s on a fresh local cluster of three
    /// metaservers and three chunk servers.
    Bench(shardfs_meta::bench::BenchArgs),
}

#[derive(clap::Args)]
struct Cli {
    /// TOML configuration file; its keys are the flags' names with `_`
    /// for `-` (id, listen, data_dir, peers, heartbeat_ms, ...). Flags and
    /// their environment variables win over it.
    #[arg(long, env = "SHARDFS_META_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> std::process::ExitCode {
    shardfs_proto::alloc::keep_freed_memory();
    let top = Top::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match top.command {
            Some(Sub::Status {
                meta,
                ca,
                token,
                insecure,
                json,
            }) => match security::client(ca, insecure) {
                Ok(security) => {
                    shardfs_meta::bench::status(&meta, &security, token.as_deref(), json).await
                }
                Err(e) => Err(anyhow::anyhow!("{e}")),
            },
            Some(Sub::Bench(args)) => shardfs_meta::bench::run(args).await,
            None => serve(top.serve).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            errln!("shardfs-meta: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let config = Config::resolve(cli.overrides, file)?;
    let security = match &config.tls {
        Some(files) => Security::load(files)?,
        None => {
            tracing::warn!(
                "running without TLS (--insecure): any process that reaches this port can act as a cluster member"
            );
            Security::Insecure
        }
    };
    let bootstrap = match &config.admin_token_file {
        Some(path) => Some(shardfs_meta::tokens::load_bootstrap(path).map_err(anyhow::Error::msg)?),
        None => {
            if security.is_tls() {
                tracing::warn!(
                    "no --admin-token-file: no client is an admin until a token is created by one"
                );
            }
            None
        }
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let metaserver = Metaserver::start(
        config.id,
        &config.data_dir,
        &config.tuning,
        &config.leader,
        Default::default(),
        security,
    )
    .await?
    .with_authority(shardfs_meta::tokens::Authority::new(bootstrap));
    let node = metaserver.node.clone();
    let addr = listener.local_addr()?;
    info!(id = config.id, %addr, data_dir = %config.data_dir.display(), "metaserver listening");
    outln!("{}", shardfs_proto::process::listening_line(addr));
    std::io::stdout().flush()?;
    let bootstrap = {
        let node = node.clone();
        let peers = config.peers.clone();
        tokio::spawn(async move {
            if let Err(e) = node.bootstrap(&peers).await {
                tracing::error!("{e:#}");
            }
        })
    };
    let workers = metaserver.spawn_workers();
    server::run(
        listener,
        metaserver,
        config.limits,
        shardfs_proto::transport::shutdown_signal(),
    )
    .await?;
    drop(workers);
    bootstrap.abort();
    info!("metaserver stopped");
    Ok(())
}

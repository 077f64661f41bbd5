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
use shardfs_meta::config::{Config, FileConfig};
use shardfs_meta::metaserver::{LeaderSettings, Metaserver};
use shardfs_meta::server;
use shardfs_proto::span::Span;
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
    /// This metaserver's id (1, 2, ...), unique in the group.
    #[arg(long, env = "SHARDFS_META_ID")]
    id: Option<u64>,
    /// Address to listen on (host:port); defaults to this id's entry in --peers.
    #[arg(long, env = "SHARDFS_META_LISTEN")]
    listen: Option<String>,
    /// Directory for the Raft log and state.
    #[arg(long, env = "SHARDFS_META_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Voters of a new group: ID=HOST:PORT,... (this one included). Omit to
    /// start empty and be added to a running group with AddMetaserver.
    #[arg(long, env = "SHARDFS_META_PEERS")]
    peers: Option<String>,
    /// TOML configuration file (keys: id, listen, data_dir, peers,
    /// heartbeat_ms, election_timeout_ms, snapshot_every,
    /// first_bytes_timeout, connections_per_peer).
    #[arg(long, env = "SHARDFS_META_CONFIG")]
    config: Option<PathBuf>,
    /// Raft heartbeat interval in milliseconds (default 250); also how long
    /// the leader waits for a follower to answer AppendEntries.
    #[arg(long, env = "SHARDFS_META_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Minimum election timeout in milliseconds (default 1000; max is twice).
    #[arg(long, env = "SHARDFS_META_ELECTION_TIMEOUT_MS")]
    election_timeout_ms: Option<u64>,
    /// Snapshot after this many log entries (default 10000).
    #[arg(long, env = "SHARDFS_META_SNAPSHOT_EVERY")]
    snapshot_every: Option<u64>,
    /// Seconds without a heartbeat after which a chunk server is dead.
    #[arg(long, env = "SHARDFS_META_DEAD_AFTER_SECS", default_value_t = 10)]
    dead_after_secs: u64,
    /// Repair traffic each chunk server may send, and receive, in MB/s.
    #[arg(long, env = "SHARDFS_META_REPAIR_MB_PER_S", default_value_t = 100)]
    repair_mb_per_s: u64,
    /// Seconds between repair rounds that look at every chunk (the others
    /// look only at chunks that may have changed).
    #[arg(long, env = "SHARDFS_META_REPAIR_FULL_SCAN_SECS", default_value_t = 30)]
    repair_full_scan_secs: u64,
    /// Seconds a chunk no file references is kept before it is deleted.
    #[arg(long, env = "SHARDFS_META_GC_GRACE_SECS", default_value_t = 3600)]
    gc_grace_secs: u64,
    /// A new connection silent for this long is closed (default 5s).
    #[arg(long, env = "SHARDFS_META_FIRST_BYTES_TIMEOUT")]
    first_bytes_timeout: Option<Span>,
    /// Connections one IP address may hold open (default 512).
    #[arg(long, env = "SHARDFS_META_CONNECTIONS_PER_PEER")]
    connections_per_peer: Option<usize>,
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
            Some(Sub::Status { meta, json }) => shardfs_meta::bench::status(&meta, json).await,
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
    let connections = shardfs_meta::config::connection_limits(
        cli.first_bytes_timeout,
        cli.connections_per_peer,
        &file,
    );
    let config = Config::resolve(
        cli.id,
        cli.listen,
        cli.data_dir,
        cli.peers,
        cli.heartbeat_ms,
        cli.election_timeout_ms,
        cli.snapshot_every,
        file,
    )?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let grace = std::time::Duration::from_secs(cli.gc_grace_secs);
    let settings = LeaderSettings {
        dead_after: std::time::Duration::from_secs(cli.dead_after_secs),
        repair: shardfs_meta::repair::RepairConfig {
            mb_per_s: cli.repair_mb_per_s,
            full_scan_every: std::time::Duration::from_secs(cli.repair_full_scan_secs.max(1)),
            ..Default::default()
        },
        gc: shardfs_meta::gc::GcConfig::with_grace(grace),
    };
    let metaserver = Metaserver::start(
        config.id,
        &config.data_dir,
        &config.tuning,
        &settings,
        Default::default(),
    )
    .await?;
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
        connections,
        shardfs_proto::transport::shutdown_signal(),
    )
    .await?;
    drop(workers);
    bootstrap.abort();
    info!("metaserver stopped");
    Ok(())
}

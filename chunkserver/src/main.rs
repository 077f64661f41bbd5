//! `shardfs-chunk`: the chunk server binary.
//!
//! `shardfs-chunk --data-dir DIR [--listen ADDR] [--config FILE]` serves a
//! chunk store; `shardfs-chunk bench` measures put/get throughput against a
//! server it starts itself; `shardfs-chunk probe --addr ADDR` checks a
//! running server with a real round trip. Once listening, the server prints one line,
//! `listening on ADDR`, to standard output (scripts and tests read it to
//! learn a port chosen with `--listen 127.0.0.1:0`); logs go to standard
//! error, filtered by `RUST_LOG` (default `info`).

use std::io::Write;
use std::path::PathBuf;

/// mimalloc, tuned by `shardfs_proto::alloc::keep_freed_memory`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shardfs_chunk::at_rest::AtRestKey;
use shardfs_chunk::bench::{self, BenchArgs};
use shardfs_chunk::config::{Config, FileConfig, LimitSettings, Overrides};
use shardfs_chunk::gate::Gate;
use shardfs_chunk::{ChunkStore, StoreConfig, heartbeat, server};
use shardfs_proto::meta_client::MetaClient;
use shardfs_proto::security::{Security, TlsFiles};
use shardfs_proto::{errln, outln};
use tokio::net::TcpListener;
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "shardfs-chunk", version, about = "shardfs chunk server")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Measure put/get throughput over loopback against a fresh local server,
    /// next to this machine's BLAKE3 and fsynced disk write speeds.
    Bench(BenchArgs),
    /// Check a running chunk server: store a 1 MiB chunk, read it back
    /// verified, and print the server's usage. A TLS server stores and
    /// serves only for capabilities or members: give this server's own
    /// certificate (--cert, --key), else only its usage is checked.
    Probe {
        /// The server's address (host:port).
        #[arg(
            long,
            env = "SHARDFS_CHUNK_PROBE_ADDR",
            default_value = "127.0.0.1:7201"
        )]
        addr: String,
        /// The cluster CA's certificate (PEM) to verify the server with.
        #[arg(long, env = "SHARDFS_CA")]
        ca: Option<PathBuf>,
        /// Talk plaintext to a server started with --insecure.
        #[arg(long, env = "SHARDFS_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
        insecure: bool,
        /// A member certificate (PEM) to probe as, such as the server's own
        /// --tls-cert.
        #[arg(long, env = "SHARDFS_CHUNK_PROBE_CERT", requires = "key")]
        cert: Option<PathBuf>,
        /// The private key of --cert (PEM).
        #[arg(long, env = "SHARDFS_CHUNK_PROBE_KEY", requires = "cert")]
        key: Option<PathBuf>,
        /// Print one JSON object instead of a line of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a key file for encryption at rest (--encryption-key-file): 256
    /// random bits, mode 0600. Keep a copy off the server: without it the
    /// chunks cannot be read.
    Keygen {
        /// The file to create (an existing one is never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (host:port; port 0 picks a free one).
    #[arg(long, env = "SHARDFS_CHUNK_LISTEN")]
    listen: Option<String>,
    /// Directory holding chunks, the index and quarantined copies.
    #[arg(long, env = "SHARDFS_CHUNK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file (keys: listen, data_dir, capacity_bytes,
    /// put_memory_bytes, scrub_mb_per_s, and a [limits] table with the
    /// limit flags' names in snake case); flags and environment win over it.
    #[arg(long, env = "SHARDFS_CHUNK_CONFIG")]
    config: Option<PathBuf>,
    /// Bytes this server may store (default: the whole file system).
    #[arg(long, env = "SHARDFS_CHUNK_CAPACITY_BYTES")]
    capacity_bytes: Option<u64>,
    /// Put data buffered at once across all streams (default 1 GiB).
    #[arg(long, env = "SHARDFS_CHUNK_PUT_MEMORY_BYTES")]
    put_memory_bytes: Option<u64>,
    /// Rate at which stored chunks are re-hashed, in MB/s (default 50;
    /// 0 turns scrub off).
    #[arg(long, env = "SHARDFS_CHUNK_SCRUB_MB_PER_S")]
    scrub_mb_per_s: Option<u64>,
    /// Metaservers to register and heartbeat with (host:port,...). Without
    /// it the chunk server runs standalone.
    #[arg(long, env = "SHARDFS_META", value_delimiter = ',')]
    meta: Vec<String>,
    /// This chunk server's id in the cluster (required with --meta).
    #[arg(long, env = "SHARDFS_CHUNK_ID")]
    id: Option<u64>,
    /// Zone label (rack, host, availability zone): replicas spread across zones.
    #[arg(long, env = "SHARDFS_CHUNK_ZONE", default_value = "")]
    zone: String,
    /// Address to register with the metaservers (default: the listen address).
    #[arg(long, env = "SHARDFS_CHUNK_ADVERTISE")]
    advertise: Option<String>,
    /// This server's certificate (PEM), issued by the cluster CA for
    /// chunk server --id (`shardfs cluster issue-cert --chunk ID`).
    #[arg(long, env = "SHARDFS_CHUNK_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SHARDFS_CHUNK_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The cluster CA's certificate (PEM): peers must present one it signed.
    #[arg(long, env = "SHARDFS_CHUNK_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Plaintext without TLS: any peer that reaches the port is trusted
    /// as a cluster member. For benchmarks and trusted test networks only.
    #[arg(long, env = "SHARDFS_CHUNK_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
    insecure: bool,
    /// Encrypt chunk files at rest with the key in this file (0600, made by
    /// `shardfs-chunk keygen`). A store is encrypted from its first chunk
    /// on, or never; ids stay the BLAKE3 of the plaintext.
    #[arg(long, env = "SHARDFS_CHUNK_ENCRYPTION_KEY_FILE")]
    encryption_key_file: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitSettings,
}

fn main() -> std::process::ExitCode {
    shardfs_proto::alloc::keep_freed_memory();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Bench(args)) => bench::run(args).await,
            Some(Command::Probe {
                addr,
                ca,
                insecure,
                cert,
                key,
                json,
            }) => match probe_security(ca, insecure, cert, key) {
                Ok(security) => bench::probe(&addr, &security, json).await,
                Err(e) => Err(anyhow::anyhow!("{e}")),
            },
            Some(Command::Keygen { out }) => AtRestKey::generate()
                .and_then(|key| key.save(&out))
                .map(|()| outln!("{}", out.display()))
                .map_err(|e| anyhow::anyhow!("{e}")),
            None => serve(cli.serve).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            errln!("shardfs-chunk: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// How the probe talks: as a client, or as a member with a certificate.
fn probe_security(
    ca: Option<PathBuf>,
    insecure: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Security> {
    match (cert, key) {
        (Some(cert), Some(key)) if !insecure => {
            let ca =
                ca.context("--cert needs --ca (or SHARDFS_CA): the cluster CA's certificate")?;
            Ok(Security::load(&TlsFiles {
                ca,
                identity: Some((cert, key)),
            })?)
        }
        _ => Ok(shardfs_proto::security::client(ca, insecure)?),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let overrides = Overrides {
        listen: args.listen.clone(),
        data_dir: args.data_dir.clone(),
        capacity_bytes: args.capacity_bytes,
        put_memory_bytes: args.put_memory_bytes,
        scrub_mb_per_s: args.scrub_mb_per_s,
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        tls_ca: args.tls_ca.clone(),
        insecure: args.insecure,
        encryption_key_file: args.encryption_key_file.clone(),
        limits: args.limits.clone(),
    };
    let config = Config::resolve(overrides, file)?;
    let security = match &config.tls {
        Some(files) => Security::load(files)?,
        None => {
            warn!(
                "running without TLS (--insecure): any process that reaches this port can read, write and delete chunks"
            );
            Security::Insecure
        }
    };
    let encryption = match &config.encryption_key_file {
        Some(path) => Some(AtRestKey::load(path).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let store_config = StoreConfig {
        data_dir: config.data_dir.clone(),
        capacity_bytes: config.capacity_bytes,
        encryption,
    };
    let (store, _report) = tokio::task::spawn_blocking(move || ChunkStore::open(&store_config))
        .await?
        .with_context(|| format!("cannot open chunk store in {}", config.data_dir.display()))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    info!(%addr, data_dir = %config.data_dir.display(), "chunk server listening");
    outln!("{}", shardfs_proto::process::listening_line(addr));
    std::io::stdout().flush()?;
    let gate = Gate::kept_in(security.is_tls(), &config.data_dir);
    let scrub_stats = std::sync::Arc::new(shardfs_chunk::scrub::ScrubStats::default());
    let scrubber =
        shardfs_chunk::scrub::spawn(store.clone(), config.scrub_mb_per_s, scrub_stats.clone());
    let reporter = if args.meta.is_empty() {
        None
    } else {
        let id = args
            .id
            .filter(|id| *id > 0)
            .context("--meta needs --id N (N > 0): this chunk server's id in the cluster")?;
        let meta = MetaClient::new(&args.meta, &security)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let me = heartbeat::Identity {
            id,
            addr: args.advertise.clone().unwrap_or_else(|| addr.to_string()),
            zone: args.zone.clone(),
            scrub: scrub_stats,
        };
        Some(tokio::spawn(heartbeat::run(
            store.clone(),
            meta,
            me,
            gate.clone(),
        )))
    };
    server::run(
        listener,
        store,
        config.limits,
        security,
        gate,
        shardfs_proto::transport::shutdown_signal(),
    )
    .await?;
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    if let Some(scrubber) = scrubber {
        scrubber.abort();
    }
    info!("chunk server stopped");
    Ok(())
}

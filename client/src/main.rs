//! `shardfs`: the command line for shardfs clusters.
//!
//! Exit codes: 0 ok, 1 error (said in words on stderr), 2 usage.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// mimalloc, tuned by `shardfs_proto::alloc::keep_freed_memory`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use shardfs_client::bench::{BenchOptions, run_bench};
use shardfs_client::put::check_file_size;
use shardfs_client::read::unwrap_io;
use shardfs_client::transfer::{LocalTree, TreeCounts, entry_size, local_tree};
use shardfs_client::{Client, ClientConfig, ClientError, Progress, PutOptions, Result};
use shardfs_proto::meta::v1 as pb;
use shardfs_proto::{errln, outln};

/// The addresses `deploy/local-cluster.sh up` uses.
const DEFAULT_META: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

#[derive(Parser)]
#[command(
    name = "shardfs",
    version,
    about = "Put, get and manage datasets in a shardfs cluster",
    after_help = "Metaservers come from --meta or SHARDFS_META (source .shardfs-cluster/cluster.env \
                  after deploy/local-cluster.sh up). SHARDFS_LOG=warn (or debug) shows the client's \
                  log on standard error.\n\
                  Exit codes: 0 ok, 1 error (one line on standard error), 2 usage, 130 interrupted."
)]
struct Cli {
    /// Metaserver addresses, comma-separated (host:port,...); give it
    /// before the command.
    #[arg(long, env = "SHARDFS_META", default_value = DEFAULT_META)]
    meta: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload local files or directories (- reads standard input).
    Put(PutArgs),
    /// Download a file, or with -r a directory (LOCAL - writes a file to
    /// standard output).
    Get {
        /// The remote file or directory.
        #[arg(value_parser = remote_arg)]
        remote: String,
        /// Where to write it: a local path, an existing local directory
        /// (under the remote name), or - for standard output.
        local: PathBuf,
        /// Download a directory and everything under it.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Print files to standard output.
    Cat {
        /// Remote files, printed one after another.
        #[arg(required = true, value_parser = remote_arg)]
        paths: Vec<String>,
    },
    /// List a directory.
    Ls {
        /// The remote directory (or file) to list.
        #[arg(default_value = "/", value_parser = remote_arg)]
        path: String,
        /// Long format: type, replication, size, modification time, name.
        #[arg(short = 'l', long)]
        long: bool,
        /// List subdirectories too, with full paths.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Print a JSON array of entries instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a file's size, chunks and where each chunk is stored.
    Stat {
        /// The remote file or directory.
        #[arg(value_parser = remote_arg)]
        path: String,
        /// Print JSON (with each chunk's id, offset, length and locations).
        #[arg(long)]
        json: bool,
    },
    /// Delete files, or directories with -r.
    Rm {
        /// Remote files or directories.
        #[arg(required = true, value_parser = remote_arg)]
        paths: Vec<String>,
        /// Delete directories and everything under them.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Rename or move a file or directory (into TO when TO is a directory).
    Mv {
        /// The remote file or directory to move.
        #[arg(value_parser = remote_arg)]
        from: String,
        /// Its new path, or an existing directory to move it into.
        #[arg(value_parser = remote_arg)]
        to: String,
    },
    /// Create directories.
    Mkdir {
        /// Remote directories to create.
        #[arg(required = true, value_parser = remote_arg)]
        paths: Vec<String>,
        /// Create missing parents; no error if it exists.
        #[arg(short, long)]
        parents: bool,
    },
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Write then read files against the running cluster and print MB/s.
    Bench(BenchArgs),
    /// Stream a dataset's shards as one rank of a training job would.
    Stream(StreamArgs),
    /// Mount a remote directory read-only (FUSE). Runs in the background
    /// until `shardfs umount MOUNTPOINT`.
    Mount(MountArgs),
    /// Unmount a shardfs mount and wait for its process to end.
    Umount {
        /// The local directory where it is mounted.
        mountpoint: PathBuf,
        /// Detach it now even while files are open there; it goes once
        /// they are closed.
        #[arg(long)]
        lazy: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or
    /// powershell), e.g. `shardfs completions bash > /etc/bash_completion.d/shardfs`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (shardfs.1 and one per command) into a directory.
    Man {
        /// The directory (created if missing), e.g. /usr/local/share/man/man1.
        dir: PathBuf,
    },
}

#[derive(Args)]
struct MountArgs {
    /// The remote directory to show.
    #[arg(value_parser = remote_arg)]
    remote: String,
    /// An existing local directory.
    mountpoint: PathBuf,
    /// Stay in the foreground (Ctrl-C unmounts).
    #[arg(long)]
    foreground: bool,
    /// Let other users read it too (for non-root mounts this needs
    /// user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    allow_other: bool,
    /// Bytes fetched ahead of a sequential reader, per open file.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    read_ahead: u64,
}

#[derive(Args)]
struct StreamArgs {
    /// The dataset: a directory whose files are the shards (or one file).
    #[arg(value_parser = remote_arg)]
    prefix: String,
    /// This reader's rank, from 0 to world - 1.
    #[arg(long, default_value_t = 0)]
    rank: u64,
    /// How many ranks share the dataset; each gets its own shards.
    #[arg(long, default_value_t = 1)]
    world: u64,
    /// The epoch: with the seed, it chooses the shuffled order.
    #[arg(long, default_value_t = 0)]
    epoch: u64,
    /// The shuffle seed (the same on every rank).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Cut the shards that do not divide evenly among ranks instead of
    /// wrapping around.
    #[arg(long)]
    drop_remainder: bool,
    /// Bytes of shards fetched ahead (default 1 GiB).
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    prefetch: u64,
    /// Write each shard into this local directory (by file name).
    #[arg(long, conflicts_with = "null")]
    out: Option<PathBuf>,
    /// Discard the shards (the default): measure only.
    #[arg(long)]
    null: bool,
    /// Stop after this many shards (the rest of the epoch stays for a
    /// resume).
    #[arg(long)]
    limit: Option<u64>,
    /// Keep the stream's cursor in this file (JSON), rewritten atomically
    /// after every shard, to resume from after an interruption.
    #[arg(long, value_name = "FILE")]
    cursor: Option<PathBuf>,
    /// Continue from cursor files (their epoch and seed win). One cursor
    /// resumes this rank; to change the world size after ranks stopped at
    /// different shards, give every old rank's cursor (--resume once each).
    #[arg(long, value_name = "FILE")]
    resume: Vec<PathBuf>,
    /// Print one JSON object per shard and a JSON summary (with the cursor)
    /// instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PutArgs {
    /// Local files or directories (- for standard input).
    #[arg(required = true, num_args = 1.., value_name = "LOCAL")]
    sources: Vec<String>,
    /// The remote destination: the file or tree to write, or (ending in /,
    /// or with several sources) the directory to put them into.
    #[arg(required = true, value_name = "REMOTE")]
    remote: String,
    /// Upload directories and everything under them. Re-running the same
    /// put skips the files already stored with the same content.
    #[arg(short, long)]
    recursive: bool,
    /// Never replace an existing remote file: refuse a single file, skip
    /// existing files of a tree (as cp -n).
    #[arg(short = 'n', long)]
    no_clobber: bool,
    /// Replicas per chunk, from 1 to 16 (default 3).
    #[arg(long, value_parser = parse_replication, allow_hyphen_values = true)]
    replication: Option<u32>,
    /// Bytes per chunk, like 8MiB, 4M or 65536: from 1 byte to 64 MiB
    /// (default 8 MiB).
    #[arg(long, value_parser = parse_chunk_size, allow_hyphen_values = true)]
    chunk_size: Option<u64>,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Metaservers, chunk servers and replication health, as the leader sees them.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Move every replica off a chunk server; `cluster status` shows the
    /// chunks left. Once drained it can be stopped and removed safely.
    Drain {
        /// The chunk server's id (see `cluster status`).
        id: u64,
        /// Stop draining it; it takes new replicas again.
        #[arg(long)]
        cancel: bool,
    },
    /// Forget a chunk server: refused while a file's chunk would be left
    /// with fewer live replicas than its replication factor (drain it first,
    /// or wait for repair if it died). Stop the server before removing it.
    Remove {
        /// The chunk server's id (see `cluster status`).
        id: u64,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// Files to write and read.
    #[arg(long, default_value_t = 32)]
    files: usize,
    /// Size of each file in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// Files transferred at once.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Replicas per chunk, from 1 to 16.
    #[arg(long, default_value_t = 3, value_parser = parse_replication, allow_hyphen_values = true)]
    replication: u32,
    /// Bytes per chunk, from 1 byte to 64 MiB.
    #[arg(long, value_parser = parse_chunk_size, default_value = "8MiB", allow_hyphen_values = true)]
    chunk_size: u64,
    /// Read passes over the files.
    #[arg(long, default_value_t = 2)]
    read_rounds: usize,
    /// Bytes each stream fetches ahead, in parallel.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    read_ahead: u64,
    /// Read over gRPC GetChunk instead of the bulk read protocol.
    #[arg(long)]
    grpc_reads: bool,
    /// Also read everything over gRPC GetChunk and print both.
    #[arg(long)]
    compare_grpc: bool,
    /// Remote directory for the files (deleted afterwards unless --keep).
    #[arg(long, default_value = "/.bench")]
    dir: String,
    /// Keep the files written (by default they and their chunks are
    /// deleted at the end).
    #[arg(long)]
    keep: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    shardfs_proto::alloc::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHARDFS_LOG")
                // Warnings (a replica that failed and was read elsewhere)
                // only when asked: the error, if any, says what matters.
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("shardfs: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let addrs: Vec<String> = cli.meta.split(',').map(str::to_string).collect();
    match &cli.command {
        Command::Umount { mountpoint, lazy } => return umount(mountpoint, *lazy).await,
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "shardfs", &mut out);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &out)
                .unwrap_or_else(|e| shardfs_proto::output::stdout_failed(e));
            return Ok(());
        }
        Command::Man { dir } => return man_pages(dir),
        Command::Mount(args) if !args.foreground => return mount_in_background(&cli.meta, args),
        _ => {}
    }
    let mut config = ClientConfig::default();
    let mut local_sources = Vec::new();
    if let Command::Put(args) = &cli.command {
        if let Some(r) = args.replication {
            config.replication = r;
        }
        if let Some(s) = args.chunk_size {
            config.chunk_size = s;
        }
        config.check()?;
        // A bad argument fails before anything is sent (or even dialled).
        local_sources = plan_local(args, config.chunk_size)?;
    }
    if let Command::Mount(args) = &cli.command {
        config.read_ahead_bytes = args.read_ahead;
        // Without metaservers the mount serves what it has seen and fails
        // the rest fast, instead of blocking every program for 15 s.
        config.meta_deadline = MOUNT_META_DEADLINE;
    }
    if let Command::Bench(args) = &cli.command {
        config.read_ahead_bytes = args.read_ahead;
        config.bulk_reads = !args.grpc_reads;
    }
    let client = Client::connect_with(&addrs, config).await?;
    match cli.command {
        Command::Put(args) => put(&client, args, local_sources).await,
        Command::Get {
            remote,
            local,
            recursive,
        } => get(&client, &remote, &local, recursive).await,
        Command::Cat { paths } => cat(&client, &paths).await,
        Command::Ls {
            path,
            long,
            recursive,
            json,
        } => ls(&client, &path, long, recursive, json).await,
        Command::Stat { path, json } => stat(&client, &path, json).await,
        Command::Rm { paths, recursive } => {
            for path in paths {
                client.remove(&path, recursive).await.map_err(|e| match e {
                    // The CLI's own words for the metaserver's hint.
                    ClientError::InvalidArgument(m) if !recursive && m.contains("not empty") => {
                        ClientError::InvalidArgument(format!(
                            "{path}: directory not empty (use -r to delete it and everything under it)"
                        ))
                    }
                    e => e,
                })?;
            }
            Ok(())
        }
        Command::Mv { from, to } => {
            // Like mv(1): into an existing directory, under the same name.
            let to = match is_remote_dir(&client, &to).await? {
                true => {
                    let name = shardfs_client::client::parse(&from)?
                        .name()
                        .unwrap_or_default()
                        .to_string();
                    remote_join(&to, &name)
                }
                false => to,
            };
            client.rename(&from, &to).await
        }
        Command::Mkdir { paths, parents } => {
            for path in paths {
                client.mkdir(&path, parents).await?;
            }
            Ok(())
        }
        Command::Cluster {
            command: ClusterCommand::Status { json },
        } => cluster_status(&client, json).await,
        Command::Cluster {
            command: ClusterCommand::Drain { id, cancel },
        } => drain(&client, id, cancel).await,
        Command::Cluster {
            command: ClusterCommand::Remove { id },
        } => {
            client
                .meta()
                .remove_chunk_server(id)
                .await
                .map_err(|s| ClientError::meta("cluster remove", s))?;
            outln!("chunk server {id} removed");
            Ok(())
        }
        Command::Bench(args) => bench(&client, args).await,
        Command::Stream(args) => stream(&client, args).await,
        Command::Mount(args) => mount_here(client, args).await,
        Command::Umount { .. } | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before connecting")
        }
    }
}

/// How long a mount waits for a metaserver leader before it answers from
/// its cache (or fails the call).
const MOUNT_META_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// Set in the environment of a mount started in the background: the child
/// prints `ready` on standard output once mounted, then detaches from it.
const MOUNT_READY_ENV: &str = "SHARDFS_MOUNT_NOTIFY";
/// Where a background mount writes its log (default: nowhere).
const MOUNT_LOG_ENV: &str = "SHARDFS_MOUNT_LOG";

/// `shardfs mount` without --foreground: starts `shardfs mount
/// --foreground` in a new session and returns once it has mounted (or says
/// why it could not).
fn mount_in_background(meta: &str, args: &MountArgs) -> Result<()> {
    use std::io::{BufRead, Read};
    use std::os::unix::process::CommandExt;
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .map_err(|e| ClientError::local(&args.mountpoint, e))?;
    let exe = std::env::current_exe().map_err(|e| ClientError::local("shardfs", e))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("--meta")
        .arg(meta)
        .arg("mount")
        .arg(&args.remote)
        .arg(&mountpoint)
        .arg("--foreground")
        .arg("--read-ahead")
        .arg(args.read_ahead.to_string());
    if args.allow_other {
        command.arg("--allow-other");
    }
    if let Some(log) = std::env::var_os(MOUNT_LOG_ENV) {
        let log = std::path::absolute(&log).map_err(|e| ClientError::local(&log, e))?;
        command.env(MOUNT_LOG_ENV, log);
    }
    command
        // Not the caller's directory: the mount would keep it busy.
        .current_dir("/")
        .env(MOUNT_READY_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setsid is async-signal-safe; it detaches the child from this
    // terminal so Ctrl-C here does not reach it.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| ClientError::local("shardfs mount", e))?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    let _ = std::io::BufReader::new(stdout).read_line(&mut line);
    if line.trim() == "ready" {
        outln!(
            "mounted {} at {} (process {}); `shardfs umount {}` unmounts",
            args.remote,
            mountpoint.display(),
            child.id(),
            mountpoint.display()
        );
        return Ok(());
    }
    let mut said = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut said);
    }
    let _ = child.wait();
    let said = said.trim();
    let said = said.strip_prefix("shardfs: ").unwrap_or(said);
    Err(ClientError::InvalidArgument(if said.is_empty() {
        "the mount process ended before mounting".to_string()
    } else {
        said.to_string()
    }))
}

/// `shardfs mount --foreground`: mounts and serves until unmounted.
async fn mount_here(client: Client, args: MountArgs) -> Result<()> {
    use shardfs_client::mount::{MountConfig, mount};
    use std::io::Write;
    let mounted = mount(
        client,
        MountConfig {
            remote: args.remote.clone(),
            mountpoint: args.mountpoint.clone(),
            allow_other: args.allow_other,
        },
    )
    .await?;
    if std::env::var_os(MOUNT_READY_ENV).is_some() {
        // (Whoever started us may be gone already: a failed write is fine.)
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "ready");
        let _ = stdout.flush();
        detach_output();
    } else {
        errln!(
            "mounted {} at {}; Ctrl-C or `shardfs umount {}` unmounts",
            args.remote,
            mounted.mountpoint.display(),
            mounted.mountpoint.display()
        );
    }
    mounted.serve_until_unmounted().await
}

/// Points standard output and error of a background mount at its log file
/// (or /dev/null): whoever started it has gone.
fn detach_output() {
    use std::os::fd::AsRawFd;
    let target = std::env::var_os(MOUNT_LOG_ENV).unwrap_or_else(|| "/dev/null".into());
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&target)
    else {
        return;
    };
    // SAFETY: dup2 onto the standard descriptors; `file` stays open until
    // both are replaced.
    unsafe {
        libc::dup2(file.as_raw_fd(), 1);
        libc::dup2(file.as_raw_fd(), 2);
    }
}

/// `shardfs umount`: unmounts, then waits for the mount's process to end.
async fn umount(mountpoint: &Path, lazy: bool) -> Result<()> {
    use shardfs_client::mount::{mount_processes, shardfs_mounts, unmount_path};
    // Canonicalize the parent only: looking at the mount point itself asks
    // the mount, which may be dead or waiting for its cluster.
    let canonical = match (mountpoint.parent(), mountpoint.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            parent
                .canonicalize()
                .map(|p| p.join(name))
                .unwrap_or_else(|_| mountpoint.to_path_buf())
        }
        _ => mountpoint.to_path_buf(),
    };
    if !shardfs_mounts().contains(&canonical) {
        return Err(ClientError::InvalidArgument(format!(
            "{} is not a shardfs mount",
            mountpoint.display()
        )));
    }
    // Lazily detached, the process serves open files until they close.
    let serving = if lazy {
        Vec::new()
    } else {
        mount_processes(&canonical)
    };
    unmount_path(&canonical, lazy)?;
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    // (A zombie has ended: its parent just has not reaped it.)
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    while serving.iter().any(alive) && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let left: Vec<u32> = serving.iter().copied().filter(|p| alive(p)).collect();
    if !left.is_empty() {
        return Err(ClientError::InvalidArgument(format!(
            "unmounted {}, but its process {left:?} is still running",
            mountpoint.display()
        )));
    }
    outln!("unmounted {}", canonical.display());
    Ok(())
}

/// A remote path as typed: a trailing `/` is allowed ("/data/").
fn remote_arg(text: &str) -> std::result::Result<String, String> {
    Ok(trim_slashes(text))
}

fn trim_slashes(text: &str) -> String {
    match text.trim_end_matches('/') {
        "" if text.starts_with('/') => "/".to_string(),
        trimmed => trimmed.to_string(),
    }
}

/// A byte count like "8MiB", "4M", "64k" or "65536".
fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let too_large = || format!("{text:?} is too large (at most {} bytes)", u64::MAX);
    let n: u64 = match digits.parse() {
        Ok(n) => n,
        Err(_) if !digits.is_empty() => return Err(too_large()),
        Err(_) => return Err(format!("{text:?} is not a size (try 8MiB, 4M or 65536)")),
    };
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{text:?} has an unknown unit (use K, M or G)")),
    };
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(too_large)
}

/// A chunk size: a size from 1 byte to 64 MiB.
fn parse_chunk_size(text: &str) -> std::result::Result<u64, String> {
    let range = format!(
        "a chunk size is from 1 byte to {} MiB, like 8MiB, 4M or 65536",
        shardfs_proto::MAX_CHUNK_BYTES >> 20
    );
    let digits = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    match parse_size(text) {
        Ok(n) if (1..=shardfs_proto::MAX_CHUNK_BYTES).contains(&n) => Ok(n),
        Ok(_) => Err(format!("{text:?} is out of range: {range}")),
        // A number too large for any size is out of range too.
        Err(_) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("{text:?} is out of range: {range}"))
        }
        Err(e) => Err(format!("{e}: {range}")),
    }
}

/// A replication factor: a whole number from 1 to 16.
fn parse_replication(text: &str) -> std::result::Result<u32, String> {
    let most = shardfs_proto::MAX_REPLICATION;
    match text.trim().parse::<i128>() {
        Ok(n) if (1..=i128::from(most)).contains(&n) => Ok(n as u32),
        Ok(_) => Err(format!(
            "{text:?} is out of range: replication is from 1 to {most} replicas per chunk"
        )),
        Err(_) => Err(format!(
            "{text:?} is not a whole number: replication is from 1 to {most} replicas per chunk"
        )),
    }
}

/// `shardfs man DIR`: shardfs.1 and one page per command (shardfs-put.1...).
fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ClientError::local(dir, e))?;
    let command = Cli::command();
    let mut written = Vec::new();
    let mut pages = vec![("shardfs".to_string(), command.clone())];
    for sub in command.get_subcommands() {
        let name = format!("shardfs-{}", sub.get_name());
        for nested in sub.get_subcommands() {
            pages.push((
                format!("{name}-{}", nested.get_name()),
                nested.clone().name(format!("{name}-{}", nested.get_name())),
            ));
        }
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut text = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut text)
            .map_err(|e| ClientError::local(&path, e))?;
        std::fs::write(&path, text).map_err(|e| ClientError::local(&path, e))?;
        written.push(path);
    }
    outln!("wrote {} man page(s) to {}", written.len(), dir.display());
    Ok(())
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
fn progress_bar(total: u64, what: &str) -> (Option<ProgressBar>, Option<Progress>) {
    if !std::io::stderr().is_terminal() {
        return (None, None);
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("progress template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    let handle = bar.clone();
    let progress: Progress = Arc::new(move |n| handle.inc(n));
    (Some(bar), Some(progress))
}

fn finish(bar: Option<ProgressBar>) {
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

/// Remote path `dir/name`.
fn remote_join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

async fn is_remote_dir(client: &Client, path: &str) -> Result<bool> {
    match client.stat(path).await {
        Ok(entry) => Ok(entry.is_dir),
        Err(ClientError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn local_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            ClientError::InvalidArgument(format!("{}: cannot tell the file name", path.display()))
        })
}

/// One local source of a put, checked before anything is sent.
enum LocalSource {
    Stdin,
    File { path: PathBuf, size: u64 },
    Tree { path: PathBuf, tree: LocalTree },
}

/// Checks every local source of a put: it exists, a directory comes with
/// -r, standard input is given once, and no file needs more chunks than a
/// file may have.
fn plan_local(args: &PutArgs, chunk_size: u64) -> Result<Vec<LocalSource>> {
    let into_dir = args.remote.ends_with('/') || args.sources.len() > 1;
    let mut plan = Vec::new();
    for source in &args.sources {
        if source == "-" {
            if into_dir {
                return Err(ClientError::InvalidArgument(
                    "standard input (-) needs a remote file name, not a directory".into(),
                ));
            }
            plan.push(LocalSource::Stdin);
            continue;
        }
        let path = PathBuf::from(source);
        let meta = std::fs::metadata(&path).map_err(|e| ClientError::local(&path, e))?;
        if meta.is_dir() {
            if !args.recursive {
                return Err(ClientError::InvalidArgument(format!(
                    "{source}: is a directory (use -r to upload a directory)"
                )));
            }
            let tree = local_tree(&path)?;
            tree.check_sizes(chunk_size)?;
            plan.push(LocalSource::Tree { path, tree });
        } else {
            check_file_size(meta.len(), chunk_size)
                .map_err(|e| ClientError::InvalidArgument(format!("{source}: {e}")))?;
            plan.push(LocalSource::File {
                path,
                size: meta.len(),
            });
        }
    }
    Ok(plan)
}

/// `shardfs put`. A single directory source becomes the tree `REMOTE`
/// (created, or continued when it exists: files already stored with the
/// same content are skipped), so running the same put again is safe;
/// `REMOTE/` or several sources put each one inside `REMOTE`.
async fn put(client: &Client, args: PutArgs, sources: Vec<LocalSource>) -> Result<()> {
    let slash = args.remote.ends_with('/');
    let dest = trim_slashes(&args.remote);
    let dest_entry = match client.stat(&dest).await {
        Ok(entry) => Some(entry),
        Err(ClientError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let dest_is_dir = dest_entry.as_ref().is_some_and(|e| e.is_dir);
    let into_dir = slash || sources.len() > 1;
    let options = PutOptions {
        if_absent: args.no_clobber,
        skip_unchanged: true,
        ..PutOptions::default()
    };
    // Where each source goes.
    let mut jobs = Vec::new();
    for source in sources {
        let target = match &source {
            LocalSource::Stdin if dest_is_dir => {
                return Err(ClientError::InvalidArgument(format!(
                    "{dest} is a directory: name a file for standard input"
                )));
            }
            LocalSource::Stdin => dest.clone(),
            LocalSource::File { path, .. } | LocalSource::Tree { path, .. }
                if into_dir || (dest_is_dir && matches!(source, LocalSource::File { .. })) =>
            {
                remote_join(&dest, &local_name(path)?)
            }
            LocalSource::Tree { .. } if dest_entry.as_ref().is_some_and(|e| !e.is_dir) => {
                return Err(ClientError::InvalidArgument(format!(
                    "{dest} is a file: a directory cannot be put over it"
                )));
            }
            _ => dest.clone(),
        };
        if let LocalSource::Tree { tree, .. } = &source {
            for (path, why) in &tree.skipped {
                errln!("shardfs: skipping {}: {why}", path.display());
            }
        }
        jobs.push((source, target));
    }
    if into_dir && !dest_is_dir {
        client.mkdir(&dest, true).await?;
    }
    let (files_total, bytes_total) = jobs.iter().fold((0u64, 0u64), |(f, b), (s, _)| match s {
        LocalSource::Stdin => (f + 1, b),
        LocalSource::File { size, .. } => (f + 1, b + size),
        LocalSource::Tree { tree, .. } => (f + tree.files.len() as u64, b + tree.bytes()),
    });
    let started = Instant::now();
    let (bar, progress) = progress_bar(bytes_total, "put");
    let counts = TreeCounts::default();
    let work = async {
        let mut stats = shardfs_client::PutStats::default();
        for (source, target) in &jobs {
            let put = match source {
                LocalSource::Stdin => {
                    let put = client
                        .put_reader(tokio::io::stdin(), target, &options, progress.clone())
                        .await
                        .map_err(|e| no_clobber_words(e, args.no_clobber))?;
                    count_single(&counts, &put);
                    put
                }
                LocalSource::File { path, .. } => {
                    if args.no_clobber && client.stat(target).await.is_ok() {
                        return Err(no_clobber_words(
                            ClientError::AlreadyExists(target.clone()),
                            true,
                        ));
                    }
                    let put = client
                        .put_file(path, target, &options, progress.clone())
                        .await
                        .map_err(|e| no_clobber_words(e, args.no_clobber))?;
                    count_single(&counts, &put);
                    put
                }
                LocalSource::Tree { tree, .. } => {
                    client
                        .put_local_tree(tree, target, &options, progress.clone(), &counts)
                        .await?
                }
            };
            stats.add(&put);
        }
        Ok::<_, ClientError>(stats)
    };
    let outcome = tokio::select! {
        done = work => Some(done),
        _ = tokio::signal::ctrl_c() => None,
    };
    finish(bar);
    let put_files = counts.put.load(Ordering::Relaxed);
    let put_bytes = counts.put_bytes.load(Ordering::Relaxed);
    let skipped = counts.skipped.load(Ordering::Relaxed);
    let skipped_bytes = counts.skipped_bytes.load(Ordering::Relaxed);
    let replaced = counts.replaced.load(Ordering::Relaxed);
    let stats = match outcome {
        Some(Ok(stats)) => stats,
        Some(Err(e)) if put_files + skipped > 0 => {
            return Err(ClientError::InvalidArgument(format!(
                "{e} ({put_files} of {files_total} file(s) were put and {skipped} already stored \
                 before it failed: run the same command again to put the rest)"
            )));
        }
        Some(Err(e)) => return Err(e),
        None => {
            errln!(
                "shardfs: interrupted: {put_files} of {files_total} file(s) put ({} of {}), {skipped} \
                 already stored; the files put are complete: run the same command again to put the rest",
                human(put_bytes + skipped_bytes),
                human(bytes_total)
            );
            std::process::exit(130);
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let mut summary = format!(
        "put {put_files} file(s), {} in {secs:.2} s ({}/s); {} chunk(s), {} already stored",
        human(stats.bytes),
        human((stats.bytes as f64 / secs.max(1e-6)) as u64),
        stats.chunks,
        stats.chunks_deduplicated
    );
    if skipped > 0 {
        let why = if args.no_clobber {
            "they exist (--no-clobber)"
        } else {
            "already stored with the same content"
        };
        summary.push_str(&format!(
            "; skipped {skipped} file(s) ({}): {why}",
            human(skipped_bytes)
        ));
    }
    if replaced > 0 {
        match jobs.as_slice() {
            [(LocalSource::Stdin | LocalSource::File { .. }, target)] => {
                summary.push_str(&format!("; replaced the existing {target}"))
            }
            _ => summary.push_str(&format!("; replaced {replaced} existing file(s)")),
        }
    }
    errln!("{summary}");
    Ok(())
}

/// Counts a single-file put in the tree counts, for one summary.
fn count_single(counts: &TreeCounts, put: &shardfs_client::PutStats) {
    counts.put.fetch_add(1, Ordering::Relaxed);
    counts.put_bytes.fetch_add(put.bytes, Ordering::Relaxed);
    if put.replaced {
        counts.replaced.fetch_add(1, Ordering::Relaxed);
    }
}

fn no_clobber_words(e: ClientError, no_clobber: bool) -> ClientError {
    match e {
        ClientError::AlreadyExists(path) if no_clobber => {
            ClientError::InvalidArgument(format!("{path}: already exists (--no-clobber keeps it)"))
        }
        e => e,
    }
}

async fn get(client: &Client, remote: &str, local: &Path, recursive: bool) -> Result<()> {
    let entry = client.stat(remote).await?;
    if local == Path::new("-") {
        if entry.is_dir {
            return Err(ClientError::InvalidArgument(format!(
                "{remote}: is a directory; only a file can be written to standard output (-)"
            )));
        }
        return cat(client, &[remote.to_string()]).await;
    }
    let started = Instant::now();
    let name = shardfs_client::client::parse(remote)?
        .name()
        .unwrap_or("root")
        .to_string();
    let target = if local.is_dir() {
        local.join(&name)
    } else {
        local.to_path_buf()
    };
    if let Some(parent) = target.parent()
        && !parent.as_os_str().is_empty()
        && !parent.is_dir()
    {
        return Err(ClientError::InvalidArgument(format!(
            "{}: no such local directory",
            parent.display()
        )));
    }
    let stats = if entry.is_dir {
        if !recursive {
            return Err(ClientError::InvalidArgument(format!(
                "{remote}: is a directory (use -r to download a directory)"
            )));
        }
        let (_, files) = client.walk(remote).await?;
        let total = files.iter().map(|f| f.size).sum();
        let (bar, progress) = progress_bar(total, "get");
        let result = client.get_tree(remote, &target, progress).await;
        finish(bar);
        result?
    } else {
        let (bar, progress) = progress_bar(entry_size(&entry), "get");
        let result = client.get_file(remote, &target, progress).await;
        finish(bar);
        result?
    };
    let secs = started.elapsed().as_secs_f64();
    errln!(
        "got {} file(s), {} in {secs:.2} s ({}/s)",
        stats.files,
        human(stats.bytes),
        human((stats.bytes as f64 / secs.max(1e-6)) as u64)
    );
    Ok(())
}

async fn cat(client: &Client, paths: &[String]) -> Result<()> {
    let mut stdout = tokio::io::stdout();
    for path in paths {
        let mut reader = client.open(path).await?;
        match tokio::io::copy(&mut reader, &mut stdout).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(unwrap_io(path, e)),
        }
    }
    use tokio::io::AsyncWriteExt;
    let _ = stdout.flush().await;
    Ok(())
}

fn entry_json(path: &str, entry: &pb::Entry) -> serde_json::Value {
    let file = entry.file.as_ref();
    json!({
        "path": path,
        "name": entry.name,
        "type": if entry.is_dir { "dir" } else { "file" },
        "size": entry_size(entry),
        "mtime_ms": entry.mtime_ms,
        "replication": file.map(|f| f.replication),
        "chunks": file.map(|f| f.chunks.len()),
    })
}

fn long_line(entry: &pb::Entry, name: &str) -> String {
    let file = entry.file.as_ref();
    format!(
        "{} {:>3} {:>12} {} {}",
        if entry.is_dir { 'd' } else { '-' },
        file.map(|f| f.replication.to_string())
            .unwrap_or_else(|| "-".into()),
        entry_size(entry),
        format_ms(entry.mtime_ms),
        name
    )
}

async fn ls(client: &Client, path: &str, long: bool, recursive: bool, json: bool) -> Result<()> {
    let root = client.stat(path).await?;
    let mut out = Vec::new();
    if !root.is_dir {
        out.push((path.to_string(), root));
    } else {
        let mut stack = vec![path.to_string()];
        while let Some(dir) = stack.pop() {
            let entries = client.list(&dir).await?;
            if recursive {
                for entry in entries.iter().rev().filter(|e| e.is_dir) {
                    stack.push(remote_join(&dir, &entry.name));
                }
            }
            for entry in entries {
                out.push((remote_join(&dir, &entry.name), entry));
            }
        }
    }
    if json {
        let list: Vec<_> = out.iter().map(|(p, e)| entry_json(p, e)).collect();
        outln!("{}", serde_json::to_string_pretty(&list).expect("json"));
        return Ok(());
    }
    for (full, entry) in &out {
        let shown = if recursive {
            full.clone()
        } else {
            entry.name.clone()
        };
        let shown = if entry.is_dir {
            format!("{shown}/")
        } else {
            shown
        };
        if long {
            outln!("{}", long_line(entry, &shown));
        } else {
            outln!("{shown}");
        }
    }
    Ok(())
}

async fn stat(client: &Client, path: &str, json: bool) -> Result<()> {
    let (entry, locations) = client.stat_with_locations(path).await?;
    let file = entry.file.clone().unwrap_or_default();
    let mut offset = 0u64;
    let chunks: Vec<serde_json::Value> = file
        .chunks
        .iter()
        .zip(&locations)
        .enumerate()
        .map(|(i, (c, locs))| {
            let value = json!({
                "index": i,
                "id": hex(&c.id),
                "offset": offset,
                "length": c.length,
                "locations": locs,
            });
            offset += c.length;
            value
        })
        .collect();
    if json {
        let mut value = entry_json(path, &entry);
        if !entry.is_dir {
            value["content_id"] = json!(hex(&file.content_id));
            value["chunks"] = json!(chunks);
        }
        outln!("{}", serde_json::to_string_pretty(&value).expect("json"));
        return Ok(());
    }
    outln!("path:        {path}");
    outln!(
        "type:        {}",
        if entry.is_dir { "directory" } else { "file" }
    );
    outln!("modified:    {}", format_ms(entry.mtime_ms));
    if !entry.is_dir {
        outln!("size:        {} ({} bytes)", human(file.size), file.size);
        outln!("replication: {}", file.replication);
        outln!("content id:  {}", hex(&file.content_id));
        outln!("chunks:      {}", file.chunks.len());
        for c in &chunks {
            let locs: Vec<&str> = c["locations"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            outln!(
                "  {:>5}  {}  {:>10}  {}",
                c["index"],
                c["id"].as_str().unwrap_or(""),
                c["length"],
                if locs.is_empty() {
                    "(no live replica)".to_string()
                } else {
                    locs.join(" ")
                }
            );
        }
    }
    Ok(())
}

async fn cluster_status(client: &Client, json: bool) -> Result<()> {
    let s = client.cluster_status().await?;
    if json {
        let value = json!({
            "leader": { "id": s.leader_id, "addr": s.leader_addr },
            "term": s.term,
            "last_applied": s.last_applied,
            "metaservers": s.metaservers.iter().map(|m| json!({
                "id": m.id, "addr": m.addr, "role": m.role, "voter": m.voter,
                "last_applied": m.last_applied,
            })).collect::<Vec<_>>(),
            "chunk_servers": s.chunk_servers.iter().map(|c| json!({
                "id": c.id, "addr": c.addr, "zone": c.zone,
                "state": if c.alive { "alive" } else { "dead" },
                "draining": c.draining,
                "drain": server_state(c),
                "chunks": c.chunks, "used_bytes": c.used_bytes,
                "capacity_bytes": c.capacity_bytes, "free_bytes": c.free_bytes,
                "scrub": {
                    "passes": c.scrub_passes, "bytes": c.scrub_bytes,
                    "corrupt_found": c.scrub_corrupt,
                    "pass_progress": c.scrub_pass_permille as f64 / 1000.0,
                },
            })).collect::<Vec<_>>(),
            "under_replicated": s.under_replicated,
            "bad_replicas_reported": s.bad_replicas_reported,
            "bad_replicas_confirmed": s.bad_replicas_confirmed,
            "repair": {
                "copies": s.repair_copies,
                "bytes": s.repair_bytes,
                "failures": s.repair_failures,
                "trimmed": s.repair_trimmed,
                "in_flight": s.repair_in_flight,
                "examined": s.repair_examined,
                "full_rounds": s.repair_full_rounds,
            },
            "gc": { "collected": s.gc_collected, "pending": s.gc_pending },
        });
        outln!("{}", serde_json::to_string_pretty(&value).expect("json"));
        return Ok(());
    }
    outln!(
        "leader: metaserver {} at {} (term {})",
        s.leader_id,
        s.leader_addr,
        s.term
    );
    outln!("metaservers:");
    for m in &s.metaservers {
        outln!(
            "  {:>3}  {:<21}  {:<9}  {}  applied {}",
            m.id,
            m.addr,
            m.role,
            if m.voter { "voter  " } else { "learner" },
            m.last_applied
        );
    }
    outln!("chunk servers:");
    for c in &s.chunk_servers {
        outln!(
            "  {:>3}  {:<21}  {:<8}  {:<8}  {:>8} chunks  {:>10} used  {:>10} free  scrub {} pass(es) + {:.0}%, {} corrupt",
            c.id,
            c.addr,
            c.zone,
            server_state(c),
            c.chunks,
            human(c.used_bytes),
            human(c.free_bytes),
            c.scrub_passes,
            c.scrub_pass_permille as f64 / 10.0,
            c.scrub_corrupt
        );
    }
    outln!("under-replicated chunks: {}", s.under_replicated);
    if s.repair_copies + s.repair_trimmed + s.repair_failures + s.repair_in_flight > 0 {
        outln!(
            "repair: {} replica(s) copied ({}), {} failed, {} extra trimmed, {} under way",
            s.repair_copies,
            human(s.repair_bytes),
            s.repair_failures,
            s.repair_trimmed,
            s.repair_in_flight
        );
    }
    if s.gc_collected + s.gc_pending > 0 {
        outln!(
            "garbage: {} unreferenced chunk(s) waiting out the grace period, {} replica(s) deleted",
            s.gc_pending,
            s.gc_collected
        );
    }
    if s.bad_replicas_reported > 0 {
        outln!(
            "bad replicas reported: {} ({} confirmed and quarantined)",
            s.bad_replicas_reported,
            s.bad_replicas_confirmed
        );
    }
    Ok(())
}

async fn drain(client: &Client, id: u64, cancel: bool) -> Result<()> {
    let status = client.cluster_status().await?;
    let Some(server) = status.chunk_servers.iter().find(|c| c.id == id) else {
        let known: Vec<String> = status
            .chunk_servers
            .iter()
            .map(|c| c.id.to_string())
            .collect();
        return Err(ClientError::InvalidArgument(format!(
            "there is no chunk server {id} (known: {})",
            known.join(", ")
        )));
    };
    client
        .meta()
        .drain_chunk_server(id, cancel)
        .await
        .map_err(|s| ClientError::meta(&format!("chunk server {id}"), s))?;
    if cancel {
        outln!(
            "chunk server {id} ({}) takes new replicas again",
            server.addr
        );
    } else {
        outln!(
            "draining chunk server {id} ({}): {} chunk(s) to move; `shardfs cluster status` shows what is left",
            server.addr,
            server.chunks
        );
    }
    Ok(())
}

fn server_state(c: &pb::ChunkServerStatus) -> &'static str {
    match (c.alive, c.draining, c.chunks) {
        (false, _, _) => "dead",
        (true, true, 0) => "drained",
        (true, true, _) => "draining",
        (true, false, _) => "alive",
    }
}

async fn stream(client: &Client, args: StreamArgs) -> Result<()> {
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(|e| ClientError::local(out, e))?;
    }
    let mut cursors = Vec::new();
    for file in &args.resume {
        let text = std::fs::read_to_string(file).map_err(|e| ClientError::local(file, e))?;
        let cursor: shardfs_client::shards::Cursor = serde_json::from_str(&text).map_err(|e| {
            ClientError::InvalidArgument(format!(
                "{}: not a shard stream cursor: {e}",
                file.display()
            ))
        })?;
        cursors.push(cursor);
    }
    let started = Instant::now();
    let mut builder = client
        .shards(&args.prefix)
        .rank(args.rank)
        .world(args.world)
        .epoch(args.epoch)
        .seed(args.seed)
        .drop_remainder(args.drop_remainder)
        .prefetch_bytes(args.prefetch);
    builder = match cursors.len() {
        0 => builder,
        1 => builder.resume(cursors.pop().expect("one cursor")),
        _ => builder.resume_all(cursors),
    };
    let mut stream = builder.stream().await?;
    let listed = started.elapsed();
    let (planned_shards, planned_bytes) = stream.planned();
    // A bar only when the shard lines go elsewhere (a file or a pipe).
    let (bar, progress) = if std::io::stdout().is_terminal() {
        (None, None)
    } else {
        let total = match args.limit {
            Some(limit) if limit < planned_shards => planned_bytes / planned_shards.max(1) * limit,
            _ => planned_bytes,
        };
        progress_bar(total, "stream")
    };
    let (mut shards, mut bytes) = (0u64, 0u64);
    let mut waiting = std::time::Duration::ZERO;
    if let Some(file) = &args.cursor {
        save_cursor(file.clone(), stream.state()).await?;
    }
    while args.limit.is_none_or(|limit| shards < limit) {
        let asked = Instant::now();
        let Some(item) = stream.next().await else {
            break;
        };
        waiting += asked.elapsed();
        let (path, data) = item?;
        if let Some(out) = &args.out {
            let name = path.rsplit('/').next().unwrap_or("shard");
            let (target, data) = (out.join(name), data.clone());
            // Off the async workers: they keep fetching the next shards.
            tokio::task::spawn_blocking(move || {
                std::fs::write(&target, &data).map_err(|e| ClientError::local(&target, e))
            })
            .await
            .expect("shard write task")?;
        }
        if let Some(file) = &args.cursor {
            save_cursor(file.clone(), stream.state()).await?;
        }
        shards += 1;
        bytes += data.len() as u64;
        if let Some(progress) = &progress {
            progress(data.len() as u64);
        }
        if args.json {
            outln!(
                "{}",
                json!({ "path": path, "bytes": data.len(), "verified": true })
            );
        } else {
            outln!("{path}\t{} bytes\tverified", data.len());
        }
    }
    finish(bar);
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    let counters = client.counters();
    let cursor = stream.state();
    if args.json {
        let summary = json!({
            "rank": cursor.rank,
            "world": cursor.world,
            "epoch": cursor.epoch,
            "shards": shards,
            "bytes": bytes,
            "seconds": secs,
            "mb_per_s": bytes as f64 / 1e6 / secs,
            "shards_per_s": shards as f64 / secs,
            "waiting_s": waiting.as_secs_f64(),
            "listing_s": listed.as_secs_f64(),
            "hedges": counters.hedges,
            "hedge_wins": counters.hedge_wins,
            "replica_failures": counters.replica_failures,
            "cursor": cursor,
        });
        outln!("{summary}");
        return Ok(());
    }
    errln!(
        "rank {} of {}, epoch {}: {shards} shard(s), {} in {secs:.2} s: {:.1} MB/s, {:.1} shards/s; \
         {:.2} s waiting for data (listing and chunk maps: {:.2} s); \
         {} hedged chunk request(s), {} answered first; {} failed replica request(s)",
        cursor.rank,
        cursor.world,
        cursor.epoch,
        human(bytes),
        bytes as f64 / 1e6 / secs,
        shards as f64 / secs,
        waiting.as_secs_f64(),
        listed.as_secs_f64(),
        counters.hedges,
        counters.hedge_wins,
        counters.replica_failures
    );
    Ok(())
}

/// Writes a stream cursor to `file` atomically (a temporary file, synced,
/// renamed over it), so an interruption leaves the old or the new cursor.
async fn save_cursor(file: PathBuf, cursor: shardfs_client::shards::Cursor) -> Result<()> {
    tokio::task::spawn_blocking(move || write_cursor(&file, &cursor))
        .await
        .expect("cursor write task")
}

fn write_cursor(file: &Path, cursor: &shardfs_client::shards::Cursor) -> Result<()> {
    let text = serde_json::to_string(cursor).expect("cursor serializes");
    let mut temporary = file.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let written = std::fs::File::create(&temporary).and_then(|mut f| {
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()
    });
    written.map_err(|e| ClientError::local(&temporary, e))?;
    std::fs::rename(&temporary, file).map_err(|e| ClientError::local(file, e))
}

async fn bench(client: &Client, args: BenchArgs) -> Result<()> {
    let options = BenchOptions {
        files: args.files,
        file_bytes: args.size_mib << 20,
        streams: args.streams,
        replication: args.replication,
        chunk_size: args.chunk_size,
        read_rounds: args.read_rounds,
        dir: args.dir,
        keep: args.keep,
        compare_grpc: args.compare_grpc,
    };
    let rounds = 1 + options.read_rounds as u64 * (1 + u64::from(options.compare_grpc));
    let total = options.files as u64 * options.file_bytes * rounds;
    let (bar, progress) = progress_bar(total, "bench");
    // Phase lines only when no bar shows them.
    let chatty = !args.json && bar.is_none();
    let report = run_bench(client, &options, chatty, progress).await;
    finish(bar);
    let report = report?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report).expect("json"));
    } else {
        outln!("{}", report.summary());
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Milliseconds since the epoch as UTC "YYYY-MM-DD HH:MM".
fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("8X").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(format_ms(0), "1970-01-01 00:00");
        assert_eq!(format_ms(1_764_072_000_000), "2025-11-25 12:00");
    }
}

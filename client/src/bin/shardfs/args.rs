//! The command line's grammar: every command, argument and flag (clap),
//! the parsers of sizes, chunk sizes and replication factors, and the
//! client configuration each command runs with.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shardfs_client::{ClientConfig, Result};

use crate::cmd::mount::MOUNT_META_DEADLINE;

/// The addresses `deploy/local-cluster.sh up` uses.
pub const DEFAULT_META: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

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
pub struct Cli {
    /// Metaserver addresses, comma-separated (host:port,...); give it
    /// before the command.
    #[arg(long, env = "SHARDFS_META", default_value = DEFAULT_META)]
    pub meta: String,
    /// The cluster CA's certificate (PEM) that servers are verified with;
    /// give it before the command.
    #[arg(long, env = "SHARDFS_CA")]
    pub ca: Option<PathBuf>,
    /// Talk plaintext to a cluster started with --insecure.
    #[arg(long, env = "SHARDFS_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
    pub insecure: bool,
    /// The token to call the metaservers with (sfs1.NAME.SECRET; default
    /// SHARDFS_TOKEN, then SHARDFS_TOKEN_FILE, then ~/.config/shardfs/token).
    /// A flag shows in `ps`: prefer the environment or a file.
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding the token (mode 0600).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Access: tokens for clients (admin only).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
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
pub struct MountArgs {
    /// The remote directory to show.
    #[arg(value_parser = remote_arg)]
    pub remote: String,
    /// An existing local directory.
    pub mountpoint: PathBuf,
    /// Stay in the foreground (Ctrl-C unmounts).
    #[arg(long)]
    pub foreground: bool,
    /// Let other users read it too (for non-root mounts this needs
    /// user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Bytes fetched ahead of a sequential reader, per open file.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    pub read_ahead: u64,
}

#[derive(Args)]
pub struct StreamArgs {
    /// The dataset: a directory whose files are the shards (or one file).
    #[arg(value_parser = remote_arg)]
    pub prefix: String,
    /// This reader's rank, from 0 to world - 1.
    #[arg(long, default_value_t = 0)]
    pub rank: u64,
    /// How many ranks share the dataset; each gets its own shards.
    #[arg(long, default_value_t = 1)]
    pub world: u64,
    /// The epoch: with the seed, it chooses the shuffled order.
    #[arg(long, default_value_t = 0)]
    pub epoch: u64,
    /// The shuffle seed (the same on every rank).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Cut the shards that do not divide evenly among ranks instead of
    /// wrapping around.
    #[arg(long)]
    pub drop_remainder: bool,
    /// Bytes of shards fetched ahead (default 1 GiB).
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    pub prefetch: u64,
    /// Write each shard into this local directory (by file name).
    #[arg(long, conflicts_with = "null")]
    pub out: Option<PathBuf>,
    /// Discard the shards (the default): measure only.
    #[arg(long)]
    pub null: bool,
    /// Stop after this many shards (the rest of the epoch stays for a
    /// resume).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Keep the stream's cursor in this file (JSON), rewritten atomically
    /// after every shard, to resume from after an interruption.
    #[arg(long, value_name = "FILE")]
    pub cursor: Option<PathBuf>,
    /// Continue from cursor files (their epoch and seed win). One cursor
    /// resumes this rank; to change the world size after ranks stopped at
    /// different shards, give every old rank's cursor (--resume once each).
    #[arg(long, value_name = "FILE")]
    pub resume: Vec<PathBuf>,
    /// Print one JSON object per shard and a JSON summary (with the cursor)
    /// instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PutArgs {
    /// Local files or directories (- for standard input).
    #[arg(required = true, num_args = 1.., value_name = "LOCAL")]
    pub sources: Vec<String>,
    /// The remote destination: the file or tree to write, or (ending in /,
    /// or with several sources) the directory to put them into.
    #[arg(required = true, value_name = "REMOTE")]
    pub remote: String,
    /// Upload directories and everything under them. Re-running the same
    /// put skips the files already stored with the same content.
    #[arg(short, long)]
    pub recursive: bool,
    /// Never replace an existing remote file: refuse a single file, skip
    /// existing files of a tree (as cp -n).
    #[arg(short = 'n', long)]
    pub no_clobber: bool,
    /// Replicas per chunk, from 1 to 16 (default 3).
    #[arg(long, value_parser = parse_replication, allow_hyphen_values = true)]
    pub replication: Option<u32>,
    /// Bytes per chunk, like 8MiB, 4M or 65536: from 1 byte to 64 MiB
    /// (default 8 MiB).
    #[arg(long, value_parser = parse_chunk_size, allow_hyphen_values = true)]
    pub chunk_size: Option<u64>,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
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
    /// Make a cluster CA: DIR/ca.pem (give it to every process as
    /// --tls-ca or SHARDFS_CA) and DIR/ca.key (0600; keep it safe: it
    /// issues member certificates). Needs no running cluster.
    InitCa {
        /// Directory to write the CA into (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a member certificate and key signed by the CA in --ca-dir:
    /// OUT/meta-ID.pem and .key, or OUT/chunk-ID.pem and .key. Needs no
    /// running cluster.
    IssueCert {
        /// Directory holding ca.pem and ca.key (`cluster init-ca`).
        #[arg(long)]
        ca_dir: PathBuf,
        /// For metaserver ID.
        #[arg(long, conflicts_with = "chunk", required_unless_present = "chunk")]
        meta: Option<u64>,
        /// For chunk server ID.
        #[arg(long)]
        chunk: Option<u64>,
        /// Host names or IP addresses the certificate is also valid for
        /// (repeat or comma-separate); members are verified by their kind
        /// and id, so none are required.
        #[arg(long, value_delimiter = ',')]
        host: Vec<String>,
        /// Directory to write the certificate and key into (default: --ca-dir).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the paths written as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Client tokens: create, list, revoke; and the bootstrap admin token.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once: the cluster keeps only its hash).
    Create {
        /// Its name, as listings and the audit log show it (letters,
        /// digits, '_' and '-').
        #[arg(long)]
        name: String,
        /// reader (read), writer (read and write) or admin (also cluster
        /// administration and tokens).
        #[arg(long, value_parser = ["reader", "writer", "admin"])]
        role: String,
        /// The part of the namespace it may touch (default: all of it).
        #[arg(long, default_value = "/")]
        prefix: String,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a token: every call made with it is refused from now on.
    Revoke {
        /// The token's name.
        name: String,
    },
    /// List the tokens (names, roles, prefixes; never secrets).
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a bootstrap admin token into FILE (mode 0600) without a
    /// cluster: give FILE to every metaserver as --admin-token-file, and
    /// to the first admin as SHARDFS_TOKEN_FILE.
    Bootstrap {
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// Its name.
        #[arg(long, default_value = "bootstrap-admin")]
        name: String,
    },
}

#[derive(Args)]
pub struct BenchArgs {
    /// Files to write and read.
    #[arg(long, default_value_t = 32)]
    pub files: usize,
    /// Size of each file in MiB.
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    /// Files transferred at once.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// Replicas per chunk, from 1 to 16.
    #[arg(long, default_value_t = 3, value_parser = parse_replication, allow_hyphen_values = true)]
    pub replication: u32,
    /// Bytes per chunk, from 1 byte to 64 MiB.
    #[arg(long, value_parser = parse_chunk_size, default_value = "8MiB", allow_hyphen_values = true)]
    pub chunk_size: u64,
    /// Read passes over the files.
    #[arg(long, default_value_t = 2)]
    pub read_rounds: usize,
    /// Bytes each stream fetches ahead, in parallel.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    pub read_ahead: u64,
    /// Read over gRPC GetChunk instead of the bulk read protocol.
    #[arg(long)]
    pub grpc_reads: bool,
    /// Also read everything over gRPC GetChunk and print both.
    #[arg(long)]
    pub compare_grpc: bool,
    /// Remote directory for the files (deleted afterwards unless --keep).
    #[arg(long, default_value = "/.bench")]
    pub dir: String,
    /// Keep the files written (by default they and their chunks are
    /// deleted at the end).
    #[arg(long)]
    pub keep: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Command {
    /// The client configuration this command runs with: the flags that
    /// change it (replication and chunk size of a put, the mount's
    /// read-ahead and metaserver deadline, the bench's read path) applied
    /// to the defaults, and checked.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let mut config = ClientConfig::default();
        match self {
            Command::Put(args) => {
                if let Some(r) = args.replication {
                    config.replication = r;
                }
                if let Some(s) = args.chunk_size {
                    config.chunk_size = s;
                }
                config.check()?;
            }
            Command::Mount(args) => {
                config.read_ahead_bytes = args.read_ahead;
                // Without metaservers the mount serves what it has seen and
                // fails the rest fast, instead of blocking every program for
                // 15 s.
                config.meta_deadline = MOUNT_META_DEADLINE;
            }
            Command::Bench(args) => {
                config.read_ahead_bytes = args.read_ahead;
                config.bulk_reads = !args.grpc_reads;
            }
            _ => {}
        }
        Ok(config)
    }
}

/// A remote path as typed: a trailing `/` is allowed ("/data/").
pub fn remote_arg(text: &str) -> std::result::Result<String, String> {
    Ok(trim_slashes(text))
}

pub fn trim_slashes(text: &str) -> String {
    match text.trim_end_matches('/') {
        "" if text.starts_with('/') => "/".to_string(),
        trimmed => trimmed.to_string(),
    }
}

/// A byte count like "8MiB", "4M", "64k" or "65536".
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
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
pub fn parse_chunk_size(text: &str) -> std::result::Result<u64, String> {
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
pub fn parse_replication(text: &str) -> std::result::Result<u32, String> {
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
}

//! The entry point: a [`Client`] holds one metaserver client (leader
//! discovery and redirects) and one cached [`ChunkClient`] per chunk
//! server, shared by every put, get and reader made from it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardfs_proto::chunk_client::{ChunkClient, ChunkClientPool};
use shardfs_proto::meta::v1 as pb;
use shardfs_proto::meta_client::{MetaClient, Replica};
use shardfs_proto::security::{self, Security};
use shardfs_proto::{ChunkId, DEFAULT_CHUNK_BYTES, DfsPath, MAX_CHUNK_BYTES, MAX_REPLICATION};
use tokio::sync::Semaphore;

use crate::error::{ClientError, Result, status_cause};

/// How a client moves data. The defaults suit a training node reading and
/// writing with a few GiB of memory to spare.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bytes per chunk for new files.
    pub chunk_size: u64,
    /// Replicas per chunk for new files.
    pub replication: u32,
    /// Bytes of chunk data a client holds for puts in progress, across all
    /// of them.
    pub put_memory_bytes: u64,
    /// Bytes a reader fetches ahead of its position, in parallel.
    pub read_ahead_bytes: u64,
    /// Files transferred at once by directory puts and gets.
    pub parallel_files: usize,
    /// How long one chunk request to one replica may take before the next
    /// replica is tried (plus a second per 16 MiB of chunk).
    pub chunk_timeout: Duration,
    /// Read chunks with the bulk protocol (`sendfile` on the server, no
    /// gRPC framing) instead of gRPC `GetChunk`. Both are verified here.
    pub bulk_reads: bool,
    /// Hedged reads: a chunk request slower than the recent 95th
    /// percentile of similar requests (and than `hedge_floor`) is also sent
    /// to another replica; the first verified answer wins.
    pub hedge_reads: bool,
    /// The shortest wait before a hedge, so a fast cluster is not asked
    /// twice for everything.
    pub hedge_floor: Duration,
    /// How long a metaserver call keeps looking for a leader before it
    /// fails (a mount answers sooner from what it has cached).
    pub meta_deadline: Duration,
    /// How to reach the cluster; None: from the environment
    /// ([`security_from_env`]).
    pub security: Option<Security>,
    /// The token sent with every metaserver call (sfs1.NAME.SECRET); None:
    /// from the environment or the credentials file ([`token_from_env`]).
    pub token: Option<String>,
}

/// The token itself.
pub const TOKEN_ENV: &str = "SHARDFS_TOKEN";
/// A file holding the token (mode 0600).
pub const TOKEN_FILE_ENV: &str = "SHARDFS_TOKEN_FILE";
/// Where the token is looked for last, under the home directory.
pub const CREDENTIALS_FILE: &str = ".config/shardfs/token";

/// `SHARDFS_TOKEN`, else the first line of `SHARDFS_TOKEN_FILE`, else of
/// `~/.config/shardfs/token` when it exists. A file others can read is
/// refused: a token is a password.
pub fn token_from_env() -> Result<Option<String>> {
    if let Ok(token) = std::env::var(TOKEN_ENV)
        && !token.trim().is_empty()
    {
        return Ok(Some(token.trim().to_string()));
    }
    let file = match std::env::var_os(TOKEN_FILE_ENV).filter(|v| !v.is_empty()) {
        Some(path) => std::path::PathBuf::from(path),
        None => match std::env::var_os("HOME") {
            Some(home) => {
                let path = std::path::Path::new(&home).join(CREDENTIALS_FILE);
                if !path.exists() {
                    return Ok(None);
                }
                path
            }
            None => return Ok(None),
        },
    };
    read_token_file(&file).map(Some)
}

/// The token in `path`, refused when the file is readable by others.
pub fn read_token_file(path: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| ClientError::local(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ClientError::InvalidArgument(format!(
            "{}: a token file must be readable by its owner only (mode {mode:o}; chmod 600 it)",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| ClientError::local(path, e))?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// The cluster CA's certificate (PEM), to verify servers with.
pub const CA_ENV: &str = "SHARDFS_CA";
/// Set (to 1) to talk plaintext to a cluster started with `--insecure`.
pub const INSECURE_ENV: &str = "SHARDFS_INSECURE";

/// TLS with the CA named by `SHARDFS_CA`, or plaintext when
/// `SHARDFS_INSECURE` is set (1, true, yes); an error saying what to set
/// when neither is.
pub fn security_from_env() -> Result<Security> {
    let ca = std::env::var_os(CA_ENV)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    let insecure = std::env::var(INSECURE_ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    });
    security::client(ca, insecure).map_err(|e| ClientError::InvalidArgument(e.to_string()))
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_BYTES,
            replication: 3,
            put_memory_bytes: 256 << 20,
            read_ahead_bytes: 64 << 20,
            parallel_files: 8,
            chunk_timeout: Duration::from_secs(10),
            bulk_reads: true,
            hedge_reads: true,
            hedge_floor: Duration::from_millis(50),
            meta_deadline: shardfs_proto::meta_client::DEFAULT_DEADLINE,
            security: None,
            token: None,
        }
    }
}

impl ClientConfig {
    pub fn check(&self) -> Result<()> {
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_BYTES {
            return Err(ClientError::InvalidArgument(format!(
                "chunk size {} is out of range: it must be between 1 byte and {} MiB",
                self.chunk_size,
                MAX_CHUNK_BYTES >> 20
            )));
        }
        if !(1..=MAX_REPLICATION).contains(&self.replication) {
            return Err(ClientError::InvalidArgument(format!(
                "replication {} is out of range: it must be between 1 and {MAX_REPLICATION}",
                self.replication
            )));
        }
        Ok(())
    }

    /// The per-replica timeout for a chunk of `length` bytes.
    pub(crate) fn timeout_for(&self, length: u64) -> Duration {
        self.chunk_timeout + Duration::from_secs(length >> 24)
    }
}

/// Running totals of what this client sent and received.
#[derive(Debug, Default)]
pub struct Counters {
    /// Chunk bytes sent to chunk servers (each replica counts).
    pub bytes_sent: AtomicU64,
    /// Chunk bytes received and verified.
    pub bytes_received: AtomicU64,
    /// Chunks a put did not send because the cluster already had them.
    pub chunks_deduplicated: AtomicU64,
    /// Replicas whose bytes did not match their id.
    pub bad_replicas_seen: AtomicU64,
    /// Replica requests that failed and were retried elsewhere.
    pub replica_failures: AtomicU64,
    /// Bulk reads whose connection failed, retried over gRPC.
    pub bulk_fallbacks: AtomicU64,
    /// Chunk requests sent to a second replica because the first was slow.
    pub hedges: AtomicU64,
    /// Hedges that answered first.
    pub hedge_wins: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterValues {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub chunks_deduplicated: u64,
    pub bad_replicas_seen: u64,
    pub replica_failures: u64,
    pub bulk_fallbacks: u64,
    pub hedges: u64,
    pub hedge_wins: u64,
}

/// Free receive buffers a client keeps for reuse at most (they are
/// released after a few idle seconds).
const IDLE_BUFFER_BYTES: usize = 1 << 30;

/// A connection to a shardfs cluster. Cheap to clone; clones share
/// channels, memory budget and counters.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub meta: MetaClient,
    pub config: ClientConfig,
    chunk_servers: ChunkClientPool,
    /// Put data in memory, in KiB (a semaphore counts in u32).
    pub put_memory: Arc<Semaphore>,
    pub counters: Counters,
    /// When on, how long each chunk put took (for benchmarks).
    pub put_latencies: Mutex<Option<Vec<Duration>>>,
    pub bulk: crate::bulk::BulkPool,
    /// Receive buffers, reused (see `buffers`).
    pub buffers: Arc<crate::buffers::BufferPool>,
    /// The read path's own state (fetch times, protocol).
    pub reads: crate::read::ReadState,
}

impl Client {
    /// Connects to the metaservers at `addrs` (host:port each) with the
    /// default configuration.
    pub async fn connect(addrs: &[String]) -> Result<Self> {
        Self::connect_with(addrs, ClientConfig::default()).await
    }

    /// Connects and checks that at least one metaserver answers (so a
    /// cluster that is down is reported at once, not after a long wait),
    /// then finds the leader.
    pub async fn connect_with(addrs: &[String], config: ClientConfig) -> Result<Self> {
        config.check()?;
        let addrs: Vec<String> = addrs
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no metaserver address given: pass --meta HOST:PORT[,HOST:PORT...] or set SHARDFS_META"
                    .into(),
            ));
        }
        let security = match &config.security {
            Some(security) => security.clone(),
            None => security_from_env()?,
        };
        let token = match &config.token {
            Some(token) => Some(token.clone()),
            None => token_from_env()?,
        };
        let mut meta = MetaClient::new(&addrs, &security)
            .map_err(|s| ClientError::meta("metaservers", s))?
            .with_deadline(config.meta_deadline);
        if let Some(token) = &token {
            meta = meta
                .with_token(token)
                .map_err(|s| ClientError::InvalidArgument(s.message().to_string()))?;
        }
        probe(&meta, &addrs, security.is_tls()).await?;
        let permits = (config.put_memory_bytes >> 10).clamp(MAX_CHUNK_BYTES >> 10, u32::MAX as u64);
        let bulk_reads = config.bulk_reads;
        Ok(Self {
            inner: Arc::new(Inner {
                meta,
                config,
                chunk_servers: ChunkClientPool::new(security.clone()),
                put_memory: Arc::new(Semaphore::new(permits as usize)),
                counters: Counters::default(),
                put_latencies: Mutex::new(None),
                bulk: crate::bulk::BulkPool::new(security),
                buffers: crate::buffers::BufferPool::new(IDLE_BUFFER_BYTES),
                reads: crate::read::ReadState::new(bulk_reads),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The metaserver client underneath (leader discovery, raw calls).
    pub fn meta(&self) -> &MetaClient {
        &self.inner.meta
    }

    pub fn counters(&self) -> CounterValues {
        let c = &self.inner.counters;
        CounterValues {
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            chunks_deduplicated: c.chunks_deduplicated.load(Ordering::Relaxed),
            bad_replicas_seen: c.bad_replicas_seen.load(Ordering::Relaxed),
            replica_failures: c.replica_failures.load(Ordering::Relaxed),
            bulk_fallbacks: c.bulk_fallbacks.load(Ordering::Relaxed),
            hedges: c.hedges.load(Ordering::Relaxed),
            hedge_wins: c.hedge_wins.load(Ordering::Relaxed),
        }
    }

    /// Reads with the bulk protocol (true) or gRPC `GetChunk` (false).
    pub fn set_bulk_reads(&self, on: bool) {
        self.inner.reads.set_bulk_reads(on);
    }

    /// Starts (or stops) recording how long each chunk put takes.
    pub fn record_latencies(&self, on: bool) {
        *self.inner.put_latencies.lock().expect("latencies") = on.then(Vec::new);
    }

    /// The chunk put latencies recorded so far (and clears them).
    pub fn take_latencies(&self) -> Vec<Duration> {
        match &mut *self.inner.put_latencies.lock().expect("latencies") {
            Some(recorded) => std::mem::take(recorded),
            None => Vec::new(),
        }
    }

    pub(crate) fn note_put_latency(&self, took: Duration) {
        if let Some(recorded) = &mut *self.inner.put_latencies.lock().expect("latencies") {
            recorded.push(took);
        }
    }

    /// The cached client for the chunk server at `addr`.
    pub(crate) fn chunk_server(&self, addr: &str) -> Result<ChunkClient> {
        self.inner.chunk_servers.get(addr).map_err(|e| {
            ClientError::InvalidArgument(format!("bad chunk server address {addr:?}: {e}"))
        })
    }

    /// The entry at `path`.
    pub async fn stat(&self, path: &str) -> Result<pb::Entry> {
        let path = parse(path)?;
        self.inner
            .meta
            .lookup(path.as_str())
            .await
            .map_err(|s| ClientError::meta(path.as_str(), s))
    }

    /// A file's entry with the live locations (addresses) of each of its
    /// chunks.
    pub async fn stat_with_locations(&self, path: &str) -> Result<(pb::Entry, Vec<Vec<String>>)> {
        let entry = self.stat(path).await?;
        let locations = match &entry.file {
            Some(file) => self
                .locate(path, &file.chunks)
                .await?
                .into_iter()
                .map(|replicas| replicas.into_iter().map(|r| r.addr).collect())
                .collect(),
            None => Vec::new(),
        };
        Ok((entry, locations))
    }

    /// Live locations of `chunks`, asked in batches.
    pub(crate) async fn locate(
        &self,
        path: &str,
        chunks: &[pb::ChunkRef],
    ) -> Result<Vec<Vec<Replica>>> {
        const BATCH: usize = 10_000;
        let mut all = Vec::with_capacity(chunks.len());
        for batch in chunks.chunks(BATCH) {
            let ids = batch
                .iter()
                .map(|c| chunk_id(path, &c.id))
                .collect::<Result<Vec<_>>>()?;
            let found = self
                .inner
                .meta
                .locate(&ids, &[path.to_string()])
                .await
                .map_err(|s| ClientError::meta(path, s))?;
            all.extend(found);
        }
        Ok(all)
    }

    /// The entries of directory `path`, in name order.
    pub async fn list(&self, path: &str) -> Result<Vec<pb::Entry>> {
        let path = parse(path)?;
        self.inner
            .meta
            .list(path.as_str())
            .await
            .map_err(|s| ClientError::meta(path.as_str(), s))
    }

    /// Creates a directory; returns false when it already existed (only
    /// possible with `parents`).
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<bool> {
        let path = parse(path)?;
        self.inner
            .meta
            .mkdir(path.as_str(), parents)
            .await
            .map_err(|s| ClientError::meta(path.as_str(), s))
    }

    /// Deletes a file, or a directory (with `recursive` when not empty).
    /// Returns how many files went.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<u64> {
        let path = parse(path)?;
        self.inner
            .meta
            .delete(path.as_str(), recursive)
            .await
            .map_err(|s| ClientError::meta(path.as_str(), s))
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (parse(from)?, parse(to)?);
        self.inner
            .meta
            .rename(from.as_str(), to.as_str())
            .await
            .map_err(|s| ClientError::meta(&format!("{from} -> {to}"), s))
    }

    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse> {
        self.inner
            .meta
            .cluster_status()
            .await
            .map_err(|s| ClientError::meta("cluster status", s))
    }

    /// Tells the leader a replica served bad bytes (best effort, logged).
    pub(crate) fn report_bad_replica(&self, id: ChunkId, addr: String, reason: String) {
        let meta = self.inner.meta.clone();
        tokio::spawn(async move {
            match meta.report_bad_replica(id, &addr, &reason).await {
                Ok(confirmed) => tracing::warn!(
                    chunk = %id, %addr, confirmed,
                    "reported a bad replica to the metaserver"
                ),
                Err(status) => tracing::warn!(
                    chunk = %id, %addr,
                    "could not report a bad replica: {}", status_cause(&status)
                ),
            }
        });
    }
}

/// Parses a namespace path, with the rules in words on failure.
pub fn parse(path: &str) -> Result<DfsPath> {
    // (The error names the path, shortened when it is long.)
    DfsPath::parse(path).map_err(|e| ClientError::InvalidArgument(e.to_string()))
}

pub(crate) fn chunk_id(path: &str, bytes: &[u8]) -> Result<ChunkId> {
    ChunkId::from_slice(bytes).map_err(|e| ClientError::Remote {
        context: path.to_string(),
        code: tonic::Code::Internal,
        message: format!("the metaserver sent a bad chunk id: {e}"),
    })
}

/// Asks every metaserver at once for its status; fails when none answers.
/// Whether the server at `addr` answers an HTTP/2 preface with a TLS
/// alert: a TLS server met by a plaintext client.
async fn speaks_tls(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok()?;
        let mut first = [0u8; 2];
        stream.read_exact(&mut first).await.ok()?;
        // A TLS record of type alert (21), version 3.x.
        Some(first == [21, 3])
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn probe(meta: &MetaClient, addrs: &[String], tls: bool) -> Result<()> {
    let asks = addrs.iter().map(|addr| async move {
        let mut client = meta
            .direct(addr)
            .map_err(|s| format!("{addr}: {}", s.message()))?;
        let call = client.cluster_status(pb::ClusterStatusRequest {});
        match tokio::time::timeout(Duration::from_secs(3), call).await {
            Ok(Ok(_)) => Ok(()),
            // It answered: the call that follows says what the token lacks.
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                Ok(())
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Err(format!(
                "{addr} answers, but it is not a metaserver (a chunk server's port?)"
            )),
            Ok(Err(status)) => {
                let cause = status_cause(&status);
                if !tls && speaks_tls(addr).await {
                    Err("it speaks TLS, not plaintext: drop --insecure (SHARDFS_INSECURE) and give its CA with SHARDFS_CA or --ca".to_string())
                } else if cause.contains(crate::error::WRONG_KIND) {
                    Err(format!(
                        "{addr} answers, but it is not a metaserver (its certificate is another kind of server's: a chunk server's port?)"
                    ))
                } else {
                    Err(cause)
                }
            }
            Err(_) => Err("no answer within 3 s".to_string()),
        }
    });
    let results = futures::future::join_all(asks).await;
    if results.iter().any(Result::is_ok) {
        return Ok(());
    }
    let mut causes: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    causes.dedup();
    Err(ClientError::NoMetaserver {
        addrs: addrs.join(","),
        cause: causes.join("; "),
    })
}

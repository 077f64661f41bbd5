//! Writing files: split the input into chunks, hash each off the async
//! runtime, ask the metaserver where it goes, send it to its replicas (many
//! chunks in flight under the client's memory budget), then commit.
//!
//! Nothing is visible until the commit: a put that fails part way leaves
//! no file behind (its stored chunks are unreferenced until collected).
//! Chunks the cluster already holds are not sent again.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use shardfs_proto::meta::v1 as pb;
use shardfs_proto::meta_client::Replica;
use shardfs_proto::{ChunkId, MAX_CHUNK_BYTES, MAX_CHUNKS_PER_FILE};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tonic::Code;

use crate::client::{Client, parse};
use crate::error::{ClientError, Result, status_cause};

/// Called with the number of bytes just finished.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Choices for one put; unset fields take the client's configuration.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub replication: Option<u32>,
    pub chunk_size: Option<u64>,
    /// Fail instead of replacing an existing file.
    pub if_absent: bool,
    /// Tree puts: leave files already stored with the same content (and
    /// replication) as they are.
    pub skip_unchanged: bool,
}

/// What a put did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PutStats {
    pub bytes: u64,
    pub chunks: u64,
    /// Chunk bytes sent over the network (every replica counts).
    pub bytes_sent: u64,
    /// Chunks the cluster already held on enough servers: nothing sent.
    pub chunks_deduplicated: u64,
    /// True when the put replaced an existing file.
    pub replaced: bool,
}

impl PutStats {
    pub fn add(&mut self, other: &PutStats) {
        self.bytes += other.bytes;
        self.chunks += other.chunks;
        self.bytes_sent += other.bytes_sent;
        self.chunks_deduplicated += other.chunks_deduplicated;
    }
}

/// Refuses, before a byte is sent, a file of `size` bytes that would need
/// more than [`MAX_CHUNKS_PER_FILE`] chunks of `chunk_size` bytes.
pub fn check_file_size(size: u64, chunk_size: u64) -> Result<()> {
    if size.div_ceil(chunk_size.max(1)) > MAX_CHUNKS_PER_FILE as u64 {
        return Err(too_many_chunks(Some(size), chunk_size));
    }
    Ok(())
}

fn too_many_chunks(size: Option<u64>, chunk_size: u64) -> ClientError {
    let most = MAX_CHUNKS_PER_FILE as u64;
    let (what, needed) = match size {
        Some(size) => (
            format!(
                "{size} bytes in chunks of {chunk_size} would be {} chunks",
                size.div_ceil(chunk_size.max(1))
            ),
            size.div_ceil(most),
        ),
        None => (
            format!("the input is longer than {most} chunks of {chunk_size} bytes"),
            chunk_size.saturating_mul(2),
        ),
    };
    let advice = if needed <= MAX_CHUNK_BYTES {
        format!("use --chunk-size {} or more", size_words(needed))
    } else {
        format!(
            "the largest file is {} chunks of {} MiB",
            most,
            MAX_CHUNK_BYTES >> 20
        )
    };
    ClientError::InvalidArgument(format!(
        "{what}; a file may have at most {most} chunks ({advice})"
    ))
}

/// A byte count as `--chunk-size` takes it, rounded up to a whole KiB or MiB.
fn size_words(bytes: u64) -> String {
    if bytes > 1 << 20 {
        format!("{}MiB", bytes.div_ceil(1 << 20))
    } else if bytes > 1 << 10 {
        format!("{}KiB", bytes.div_ceil(1 << 10))
    } else {
        bytes.to_string()
    }
}

/// Where a put's bytes come from.
enum Source {
    File { path: PathBuf, file: std::fs::File },
    Reader(Box<dyn AsyncRead + Unpin + Send>),
    Bytes(Bytes),
}

/// Retries of a failed replica on other chunk servers.
const REPLICA_RETRIES: usize = 3;
/// Chunks of one put in flight at once (memory is bounded separately);
/// also the most chunks placed by one `AllocateChunks` call.
const CHUNKS_IN_FLIGHT: usize = 32;
/// Chunks hashed at once, ahead of their placement.
const HASHES_IN_FLIGHT: usize = 8;
/// Placement calls of one put in flight at once (the next batch is placed
/// while the last one is stored).
const ALLOCATIONS_IN_FLIGHT: usize = 2;

/// A chunk read and hashed, holding its share of the put memory.
struct Hashed {
    id: ChunkId,
    data: Bytes,
    permit: OwnedSemaphorePermit,
}

impl Client {
    /// Uploads the local file at `local` to `remote`.
    pub async fn put_file(
        &self,
        local: &Path,
        remote: &str,
        options: &PutOptions,
        progress: Option<Progress>,
    ) -> Result<PutStats> {
        let file = std::fs::File::open(local).map_err(|e| ClientError::local(local, e))?;
        let meta = file.metadata().map_err(|e| ClientError::local(local, e))?;
        if meta.is_dir() {
            return Err(ClientError::InvalidArgument(format!(
                "{}: is a directory (use -r to upload a directory)",
                local.display()
            )));
        }
        let source = Source::File {
            path: local.to_path_buf(),
            file,
        };
        self.put_source(source, remote, options, progress).await
    }

    /// Uploads everything `reader` yields to `remote`.
    pub async fn put_reader(
        &self,
        reader: impl AsyncRead + Unpin + Send + 'static,
        remote: &str,
        options: &PutOptions,
        progress: Option<Progress>,
    ) -> Result<PutStats> {
        let source = Source::Reader(Box::new(reader));
        self.put_source(source, remote, options, progress).await
    }

    /// Uploads `data` to `remote`.
    pub async fn put_bytes(
        &self,
        data: Bytes,
        remote: &str,
        options: &PutOptions,
    ) -> Result<PutStats> {
        self.put_source(Source::Bytes(data), remote, options, None)
            .await
    }

    async fn put_source(
        &self,
        source: Source,
        remote: &str,
        options: &PutOptions,
        progress: Option<Progress>,
    ) -> Result<PutStats> {
        let path = parse(remote)?;
        if path.is_root() {
            return Err(ClientError::InvalidArgument(
                "/ is a directory: name a file to put into".into(),
            ));
        }
        let config = self.config();
        let replication = options.replication.unwrap_or(config.replication);
        let chunk_size = options.chunk_size.unwrap_or(config.chunk_size);
        let mut checked = config.clone();
        checked.replication = replication;
        checked.chunk_size = chunk_size;
        checked.check()?;
        match &source {
            Source::File { path, file } => {
                let size = file
                    .metadata()
                    .map_err(|e| ClientError::local(path.clone(), e))?
                    .len();
                check_file_size(size, chunk_size)?;
            }
            Source::Bytes(data) => check_file_size(data.len() as u64, chunk_size)?,
            Source::Reader(_) => {}
        }

        // The pipeline: read (its own task, bounded by put memory) -> hash
        // (off the runtime) -> place every chunk hashed so far in one
        // AllocateChunks call -> store each on its servers. Order is kept
        // throughout: the commit lists the chunks as read.
        let (tx, rx) = mpsc::channel::<Result<(Bytes, OwnedSemaphorePermit)>>(CHUNKS_IN_FLIGHT);
        let memory = self.inner.put_memory.clone();
        let reader = tokio::spawn(read_chunks(source, chunk_size, memory, tx));

        let path_text = path.to_string();
        let hashed = tokio_stream_from(rx)
            .map(|item| async move {
                let (data, permit) = item?;
                let id = {
                    let data = data.clone();
                    tokio::task::spawn_blocking(move || ChunkId::of(&data))
                        .await
                        .expect("hash task")
                };
                Ok(Hashed { id, data, permit })
            })
            .buffered(HASHES_IN_FLIGHT);
        let placed = hashed
            .ready_chunks(CHUNKS_IN_FLIGHT)
            .map(|batch: Vec<Result<Hashed>>| {
                let client = self.clone();
                let path = path_text.clone();
                async move { client.place_batch(&path, batch, replication).await }
            })
            .buffered(ALLOCATIONS_IN_FLIGHT)
            .flat_map(|placed| {
                let items: Vec<Result<(Hashed, pb::ChunkPlacement)>> = match placed {
                    Ok(placed) => placed.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(items)
            });
        let chunks = placed
            .map(|item| {
                let client = self.clone();
                let path = path_text.clone();
                let progress = progress.clone();
                async move {
                    let (chunk, placement) = item?;
                    let started = std::time::Instant::now();
                    let stored = client
                        .store_chunk(&path, chunk.id, chunk.data, placement, replication)
                        .await;
                    client.note_put_latency(started.elapsed());
                    drop(chunk.permit);
                    if let (Ok(s), Some(progress)) = (&stored, &progress) {
                        progress(s.0.length);
                    }
                    stored
                }
            })
            .buffered(CHUNKS_IN_FLIGHT);
        futures::pin_mut!(chunks);
        let mut stats = PutStats::default();
        let mut refs = Vec::new();
        while let Some(stored) = chunks.next().await {
            let (chunk, sent, deduplicated) = stored?;
            stats.bytes += chunk.length;
            stats.chunks += 1;
            stats.bytes_sent += sent;
            stats.chunks_deduplicated += deduplicated as u64;
            refs.push(chunk);
        }
        // The reader has finished (the channel closed); surface its panics.
        reader
            .await
            .map_err(|e| ClientError::InvalidArgument(format!("reading the input failed: {e}")))?;

        // The commit creates missing parent directories itself: one Raft
        // write for the whole file.
        let file = pb::FileInfo {
            size: stats.bytes,
            chunks: refs,
            replication,
            content_id: Default::default(),
            mtime_ms: 0,
        };
        let response = self
            .inner
            .meta
            .commit(path.as_str(), file, options.if_absent)
            .await
            .map_err(|s| ClientError::meta(path.as_str(), s))?;
        stats.replaced = response.replaced;
        Ok(stats)
    }

    /// Places a batch of hashed chunks with one `AllocateChunks` call;
    /// returns each with its placement, in order. The first error in the
    /// batch (a failed read or hash) ends the put.
    async fn place_batch(
        &self,
        path: &str,
        batch: Vec<Result<Hashed>>,
        replication: u32,
    ) -> Result<Vec<(Hashed, pb::ChunkPlacement)>> {
        let chunks: Vec<Hashed> = batch.into_iter().collect::<Result<_>>()?;
        let wanted: Vec<(ChunkId, u64)> =
            chunks.iter().map(|c| (c.id, c.data.len() as u64)).collect();
        let first = chunks.first().map(|c| c.id.to_hex()).unwrap_or_default();
        let unwritable = |detail: String| ClientError::Unwritable {
            path: path.to_string(),
            chunk: first.clone(),
            detail,
        };
        tracing::debug!(chunks = wanted.len(), "placing a batch");
        let placements = self
            .inner
            .meta
            .allocate(&wanted, replication, &[])
            .await
            .map_err(|s| match s.code() {
                // Not the chunk's fault: the caller may not write here.
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                    ClientError::meta(path, s)
                }
                _ => unwritable(status_cause(&s)),
            })?;
        if placements.len() != chunks.len() {
            return Err(unwritable(format!(
                "the metaserver placed {} of {} chunks",
                placements.len(),
                chunks.len()
            )));
        }
        Ok(chunks.into_iter().zip(placements).collect())
    }

    /// Stores one chunk on `replication` servers, starting with the
    /// servers of `placement` (or as many as can be had, at least two,
    /// when servers fail). Returns its reference, the bytes sent, and
    /// whether nothing had to be sent.
    async fn store_chunk(
        &self,
        path: &str,
        id: ChunkId,
        data: Bytes,
        placement: pb::ChunkPlacement,
        replication: u32,
    ) -> Result<(pb::ChunkRef, u64, bool)> {
        let length = data.len() as u64;
        let chunk_ref = pb::ChunkRef {
            id: id.to_vec().into(),
            length,
        };
        let unwritable = |detail: String| ClientError::Unwritable {
            path: path.to_string(),
            chunk: id.to_hex(),
            detail,
        };
        let mut stored: BTreeSet<String> = placement.stored_at.into_iter().collect();
        if placement.targets.is_empty() {
            self.inner
                .counters
                .chunks_deduplicated
                .fetch_add(1, Ordering::Relaxed);
            return Ok((chunk_ref, 0, true));
        }
        let mut failed: Vec<(String, String)> = Vec::new();
        let mut targets = Replica::pair(placement.targets, placement.target_capabilities);
        let mut sent = 0u64;
        for attempt in 0..=REPLICA_RETRIES {
            let writes = targets.iter().map(|target| {
                let data = data.clone();
                async move {
                    (
                        target.addr.clone(),
                        self.put_replica(target, id, data).await,
                    )
                }
            });
            for (addr, result) in futures::future::join_all(writes).await {
                match result {
                    Ok(bytes) => {
                        sent += bytes;
                        stored.insert(addr);
                    }
                    Err(cause) => {
                        self.inner
                            .counters
                            .replica_failures
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(chunk = %id, %addr, "replica write failed: {cause}");
                        failed.push((addr, cause));
                    }
                }
            }
            let want = replication as usize;
            if stored.len() >= want || attempt == REPLICA_RETRIES {
                break;
            }
            // Other servers for the missing replicas.
            let exclude: Vec<String> = stored
                .iter()
                .cloned()
                .chain(failed.iter().map(|(a, _)| a.clone()))
                .collect();
            let more = (want - stored.len()) as u32;
            match self
                .inner
                .meta
                .allocate(&[(id, length)], more, &exclude)
                .await
            {
                Ok(mut placements) => {
                    let Some(p) = placements.pop() else { break };
                    stored.extend(p.stored_at);
                    targets = Replica::pair(p.targets, p.target_capabilities);
                    if targets.is_empty() {
                        break;
                    }
                }
                // No more servers to try (or no leader to ask): keep what is stored.
                Err(status)
                    if matches!(status.code(), Code::Unavailable | Code::FailedPrecondition) =>
                {
                    break;
                }
                Err(status) => return Err(unwritable(status_cause(&status))),
            }
        }
        let least = replication.min(2) as usize;
        if stored.len() < least {
            let causes: Vec<String> = failed.iter().map(|(a, c)| format!("{a}: {c}")).collect();
            return Err(unwritable(format!(
                "stored on {} of the {least} chunk servers needed at least ({})",
                stored.len(),
                causes.join("; ")
            )));
        }
        Ok((chunk_ref, sent, false))
    }

    /// Sends one replica; returns the bytes sent (0 when the server already
    /// had the chunk and said so before the data went out).
    async fn put_replica(&self, target: &Replica, id: ChunkId, data: Bytes) -> Result<u64, String> {
        let client = self.chunk_server(&target.addr).map_err(|e| e.to_string())?;
        let length = data.len() as u64;
        let timeout = self.config().timeout_for(length);
        let put = client.put_with(id, data, target.capability.clone());
        match tokio::time::timeout(timeout, put).await {
            Ok(Ok(_)) => {
                self.inner
                    .counters
                    .bytes_sent
                    .fetch_add(length, Ordering::Relaxed);
                Ok(length)
            }
            Ok(Err(status)) => Err(status_cause(&status)),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }
}

/// Reads the source chunk by chunk, each only once memory for it is
/// reserved, and hands them on in order. An empty source yields nothing.
async fn read_chunks(
    source: Source,
    chunk_size: u64,
    memory: Arc<tokio::sync::Semaphore>,
    tx: mpsc::Sender<Result<(Bytes, OwnedSemaphorePermit)>>,
) {
    let permits = (chunk_size.div_ceil(1024)) as u32;
    let mut source = source;
    let mut chunks = 0usize;
    loop {
        let Ok(permit) = memory.clone().acquire_many_owned(permits).await else {
            return;
        };
        let next = match &mut source {
            Source::File { path, file } => {
                let mut file_handle = match file.try_clone() {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(ClientError::local(path.clone(), e))).await;
                        return;
                    }
                };
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let mut buf = Vec::with_capacity(chunk_size as usize);
                    (&mut file_handle)
                        .take(chunk_size)
                        .read_to_end(&mut buf)
                        .map(|_| Bytes::from(buf))
                        .map_err(|e| ClientError::local(path, e))
                })
                .await
                .expect("read task")
            }
            Source::Reader(reader) => {
                let mut buf = BytesMut::with_capacity(chunk_size as usize);
                let mut result = Ok(());
                while (buf.len() as u64) < chunk_size {
                    match reader.read_buf(&mut buf).await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => {
                            result = Err(ClientError::local("<input>", e));
                            break;
                        }
                    }
                }
                result.map(|_| buf.freeze())
            }
            Source::Bytes(data) => {
                let take = (chunk_size as usize).min(data.len());
                Ok(data.split_to(take))
            }
        };
        match next {
            Ok(data) if data.is_empty() => return,
            Ok(data) => {
                chunks += 1;
                if chunks > MAX_CHUNKS_PER_FILE {
                    // Only an input of unknown length gets this far.
                    let _ = tx.send(Err(too_many_chunks(None, chunk_size))).await;
                    return;
                }
                let last = (data.len() as u64) < chunk_size;
                if tx.send(Ok((data, permit))).await.is_err() || last {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

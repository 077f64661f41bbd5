//! Reading files: every chunk is fetched from one of its replicas and
//! verified against its id before a byte of it is handed out. On an error,
//! a timeout or bad bytes the next replica is tried; bad bytes are reported
//! to the metaserver, which has the chunk server check and quarantine them.
//! A request slower than recent ones is hedged: also sent to the next
//! replica, and the first verified answer wins.
//!
//! [`FileReader`] is a tokio `AsyncRead + AsyncSeek` over one file with a
//! window of chunks fetched in parallel ahead of the position.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use shardfs_proto::ChunkId;
use shardfs_proto::capability;
use shardfs_proto::meta::v1 as pb;
pub use shardfs_proto::meta_client::Replica;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio::task::JoinHandle;

use crate::bulk::BulkError;
use crate::client::{Client, chunk_id};
use crate::error::{ClientError, Result, status_cause};

/// A committed file as a reader needs it: its chunks, where each starts,
/// and where each is stored.
pub struct FileLayout {
    pub path: String,
    pub size: u64,
    pub mtime_ms: u64,
    pub chunks: Vec<ChunkSpan>,
}

impl FileLayout {
    /// The index of the chunk holding byte `pos` (pos < size).
    pub fn chunk_at(&self, pos: u64) -> usize {
        self.chunks.partition_point(|c| c.offset + c.length <= pos)
    }
}

/// One chunk of a file.
#[derive(Debug, Clone)]
pub struct ChunkSpan {
    pub id: ChunkId,
    pub offset: u64,
    pub length: u64,
    /// Live replicas with their read capabilities, as the metaserver last
    /// said.
    pub locations: Vec<Replica>,
}

impl ChunkSpan {
    /// True when every replica's capability has expired (or is about to)
    /// by this machine's clock: a fetch then asks for fresh ones first.
    fn capabilities_expired(&self) -> bool {
        let soon = capability::now_ms() + CAPABILITY_SLACK.as_millis() as u64;
        !self.locations.is_empty()
            && self.locations.iter().all(|r| {
                capability::expires_ms(&r.capability).is_some_and(|expires| expires < soon)
            })
    }
}

/// How long before its stated expiry a capability counts as expired: the
/// chunk server's clock may run ahead of this machine's.
const CAPABILITY_SLACK: Duration = Duration::from_secs(2);

/// A chunk's verified bytes, as the messages brought them.
#[derive(Debug, Clone, Default)]
pub struct ChunkData {
    pub pieces: Vec<Bytes>,
}

impl ChunkData {
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(|p| p.len() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies bytes from `offset` into `out`; returns how many.
    fn copy_to(&self, mut offset: u64, out: &mut ReadBuf<'_>) -> usize {
        let mut copied = 0;
        for piece in &self.pieces {
            let len = piece.len() as u64;
            if offset >= len {
                offset -= len;
                continue;
            }
            let take = ((len - offset) as usize).min(out.remaining());
            if take == 0 {
                break;
            }
            out.put_slice(&piece[offset as usize..offset as usize + take]);
            copied += take;
            offset = 0;
        }
        copied
    }
}

impl Client {
    /// The layout of the file at `path`: chunks and their live locations.
    pub async fn layout(&self, path: &str) -> Result<FileLayout> {
        let entry = self.stat(path).await?;
        let Some(file) = entry.file else {
            return Err(ClientError::InvalidArgument(format!(
                "{path}: is a directory"
            )));
        };
        let mut layouts = self.layouts_of(vec![(path.to_string(), file)]).await?;
        Ok(layouts.pop().expect("one layout per file"))
    }

    /// The layouts of many files at once, from what a listing said of
    /// them: their chunks are located in a few large batches.
    pub async fn layouts_of(&self, files: Vec<(String, pb::FileInfo)>) -> Result<Vec<FileLayout>> {
        const BATCH: usize = 10_000;
        // Each id with the index of its file: a batch names the files its
        // chunks belong to (the metaserver checks that they do).
        let mut ids = Vec::new();
        let mut owners = Vec::new();
        for (n, (path, info)) in files.iter().enumerate() {
            for chunk in &info.chunks {
                ids.push(chunk_id(path, &chunk.id)?);
                owners.push(n);
            }
        }
        let context = match files.as_slice() {
            [(path, _)] => path.as_str(),
            _ => "chunk locations",
        };
        let mut locations = Vec::with_capacity(ids.len());
        for (batch, owners) in ids.chunks(BATCH).zip(owners.chunks(BATCH)) {
            let mut paths: Vec<String> = owners.iter().map(|n| files[*n].0.clone()).collect();
            paths.dedup();
            let found = self
                .inner
                .meta
                .locate(batch, &paths)
                .await
                .map_err(|s| ClientError::meta(context, s))?;
            locations.extend(found);
        }
        let mut ids = ids.into_iter().zip(locations);
        let mut layouts = Vec::with_capacity(files.len());
        for (path, info) in files {
            let mut offset = 0;
            let mut chunks = Vec::with_capacity(info.chunks.len());
            for chunk in &info.chunks {
                let (id, locations) = ids.next().expect("one location list per chunk");
                chunks.push(ChunkSpan {
                    id,
                    offset,
                    length: chunk.length,
                    locations,
                });
                offset += chunk.length;
            }
            layouts.push(FileLayout {
                path,
                size: info.size,
                mtime_ms: info.mtime_ms,
                chunks,
            });
        }
        Ok(layouts)
    }

    /// Opens the file at `path` for reading.
    pub async fn open(&self, path: &str) -> Result<FileReader> {
        let layout = self.layout(path).await?;
        Ok(FileReader::new(self.clone(), layout))
    }

    /// Fetches one whole chunk from its replicas (starting at replica
    /// `first`, to spread load) and verifies it. When every known replica
    /// fails, asks the metaserver once more where the chunk is.
    pub async fn fetch_chunk(
        &self,
        path: &str,
        span: &ChunkSpan,
        first: usize,
    ) -> Result<ChunkData> {
        let mut attempts = Attempts::default();
        let mut tried: Vec<String> = Vec::new();
        let mut locations = span.locations.clone();
        // Capabilities that have run out get refused by every replica:
        // ask for fresh ones at once instead.
        let first_round = u32::from(span.capabilities_expired());
        // Round 0 uses the locations the reader has; later rounds ask the
        // metaserver again, after a pause from the second on (a restarted
        // server or a new leader can take a few seconds to be seen alive).
        for round in first_round..=RELOCATE_ROUNDS {
            if round > 0 {
                if round > 1 {
                    tokio::time::sleep(RELOCATE_PAUSE * (1 << (round - 2))).await;
                }
                match self
                    .inner
                    .meta
                    .locate(&[span.id], &[path.to_string()])
                    .await
                {
                    Ok(fresh) => locations = fresh.into_iter().next().unwrap_or_default(),
                    Err(status) => {
                        attempts.push("asking the metaserver again", status_cause(&status));
                        continue;
                    }
                }
                if round == 1 {
                    // Replicas that just failed go last the first time.
                    locations.sort_by_key(|r| tried.contains(&r.addr));
                }
                if locations.is_empty() {
                    continue;
                }
            }
            // Round 0 starts at replica `first` to spread load; later rounds
            // keep the order above (replicas that just failed last).
            let n = locations.len();
            let start = if round == 0 { first } else { 0 };
            let order: Vec<Replica> = (0..n).map(|k| locations[(start + k) % n].clone()).collect();
            tried.extend(order.iter().map(|r| r.addr.clone()));
            if let Some(data) = self.fetch_hedged(span, &order, &mut attempts).await {
                return Ok(data);
            }
        }
        if attempts.0.is_empty() {
            attempts.push("the metaserver", "no live chunk server holds it".into());
        }
        Err(ClientError::Unreadable {
            path: path.to_string(),
            chunk: span.id.to_hex(),
            offset: span.offset,
            end: span.offset + span.length,
            attempts: attempts.words(),
        })
    }

    /// [`Client::fetch_chunk`] as a task of its own, so many fetches make
    /// progress on all worker threads whoever awaits them.
    pub fn spawn_fetch(
        &self,
        path: &str,
        span: &ChunkSpan,
        first: usize,
    ) -> impl Future<Output = Result<ChunkData>> + Send + 'static {
        let client = self.clone();
        let path = path.to_string();
        let span = span.clone();
        let task = AbortOnDrop(tokio::spawn(async move {
            client.fetch_chunk(&path, &span, first).await
        }));
        async move {
            let mut task = task;
            (&mut task.0).await.unwrap_or_else(|join| {
                Err(ClientError::InvalidArgument(format!(
                    "a chunk fetch task failed: {join}"
                )))
            })
        }
    }

    /// Asks the replicas in `order`, one at a time, for the chunk: the next
    /// one when a request fails, and also (a hedge) when it is slower than
    /// recent similar requests. The first verified answer wins; the others
    /// are cancelled. None when every replica failed (causes in
    /// `attempts`).
    async fn fetch_hedged(
        &self,
        span: &ChunkSpan,
        order: &[Replica],
        attempts: &mut Attempts,
    ) -> Option<ChunkData> {
        let counters = &self.inner.counters;
        let ask = |replica: &Replica, hedge: bool| {
            let replica = replica.clone();
            async move {
                let started = Instant::now();
                let result = self.fetch_replica(&replica, span).await;
                (replica.addr, hedge, started.elapsed(), result)
            }
        };
        let mut running = FuturesUnordered::new();
        let mut next = 0;
        if let Some(addr) = order.first() {
            running.push(ask(addr, false));
            next = 1;
        }
        loop {
            let hedge_after = (self.config().hedge_reads && next < order.len())
                .then(|| self.hedge_after(span.length));
            let hedge_timer = async {
                match hedge_after {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = running.next() => {
                    let (addr, hedge, took, result) = done?;
                    match result {
                        Ok(data) => {
                            tracing::trace!(chunk = %span.id, %addr, ?took, "fetched");
                            self.inner.reads.record_fetch(span.length, took);
                            if hedge {
                                counters.hedge_wins.fetch_add(1, Ordering::Relaxed);
                            }
                            return Some(data);
                        }
                        // Not the replica's failure: the reader is ending.
                        Err(cause) if cause == SHUTTING_DOWN => return None,
                        Err(cause) => {
                            counters.replica_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(chunk = %span.id, %addr, "replica read failed: {cause}");
                            attempts.push(&addr, cause);
                            if next < order.len() {
                                running.push(ask(&order[next], false));
                                next += 1;
                            }
                        }
                    }
                }
                _ = hedge_timer => {
                    counters.hedges.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(chunk = %span.id, addr = %order[next].addr, "hedging a slow chunk read");
                    running.push(ask(&order[next], true));
                    next += 1;
                }
            }
        }
    }

    /// How long a fetch of `length` bytes may run before it is hedged.
    fn hedge_after(&self, length: u64) -> Duration {
        self.inner
            .reads
            .hedge_after(length, self.config().hedge_floor)
    }

    /// One attempt at one replica: bytes, verified.
    async fn fetch_replica(
        &self,
        replica: &Replica,
        span: &ChunkSpan,
    ) -> Result<ChunkData, String> {
        let addr = replica.addr.as_str();
        let timeout = self.config().timeout_for(span.length);
        let started = Instant::now();
        let mut bulk_failure = None;
        if self.inner.reads.bulk_reads() {
            let read = self.inner.bulk.read_chunk(
                addr,
                span.id,
                span.length,
                &replica.capability,
                &self.inner.buffers,
            );
            match tokio::time::timeout(timeout, read).await {
                Ok(Ok(data)) => return self.verify(addr, span, vec![data]).await,
                Ok(Err(BulkError::Answer(cause))) => return Err(cause),
                // The protocol failed, not the server's answer: gRPC may
                // still work (a server refusing more bulk connections).
                Ok(Err(BulkError::Transport(cause))) => {
                    self.inner
                        .counters
                        .bulk_fallbacks
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(chunk = %span.id, %addr, "bulk read failed ({cause}); trying gRPC");
                    bulk_failure = Some(cause);
                }
                Err(_) => return Err(format!("no answer within {timeout:?}")),
            }
        }
        let client = self.chunk_server(addr).map_err(|e| e.to_string())?;
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        let get = client.get_pieces_with(span.id, 0, None, false, replica.capability.clone());
        let pieces = match tokio::time::timeout(left, get).await {
            Ok(Ok(pieces)) => pieces,
            Ok(Err(status)) => {
                let cause = status_cause(&status);
                return Err(match bulk_failure {
                    Some(bulk) if bulk != cause => format!("{bulk}; over gRPC: {cause}"),
                    _ => cause,
                });
            }
            Err(_) => return Err(format!("no answer within {timeout:?}")),
        };
        self.verify(addr, span, pieces).await
    }

    /// Checks a replica's bytes against the chunk id; bad bytes are
    /// counted and reported.
    async fn verify(
        &self,
        addr: &str,
        span: &ChunkSpan,
        pieces: Vec<Bytes>,
    ) -> Result<ChunkData, String> {
        let data = ChunkData { pieces };
        if data.len() != span.length {
            return Err(format!(
                "sent {} bytes; the chunk has {}",
                data.len(),
                span.length
            ));
        }
        let (data, actual) = tokio::task::spawn_blocking(move || {
            let mut hasher = blake3::Hasher::new();
            for piece in &data.pieces {
                hasher.update(piece);
            }
            let actual = ChunkId::from_array(*hasher.finalize().as_bytes());
            (data, actual)
        })
        .await
        .map_err(|e| match e.is_cancelled() {
            true => SHUTTING_DOWN.to_string(),
            false => format!("verifying failed: {e}"),
        })?;
        if actual != span.id {
            self.inner
                .counters
                .bad_replicas_seen
                .fetch_add(1, Ordering::Relaxed);
            let reason = format!("bytes hash to {actual}");
            self.report_bad_replica(span.id, addr.to_string(), reason.clone());
            return Err(format!("bad replica: {reason}, not to the chunk id"));
        }
        self.inner
            .counters
            .bytes_received
            .fetch_add(span.length, Ordering::Relaxed);
        Ok(data)
    }
}

/// Why a fetch ended when its runtime shut down under it (a reader that
/// stopped early): no replica failed.
const SHUTTING_DOWN: &str = "the reader is shutting down";

/// The failed attempts at one chunk: each replica (or the metaserver) named
/// once, with its latest cause and how many times it failed.
#[derive(Debug, Default)]
struct Attempts(Vec<(String, String, u32)>);

impl Attempts {
    fn push(&mut self, who: &str, cause: String) {
        match self.0.iter_mut().find(|(w, _, _)| w == who) {
            Some(seen) => {
                seen.1 = cause;
                seen.2 += 1;
            }
            None => self.0.push((who.to_string(), cause, 1)),
        }
    }

    fn words(&self) -> String {
        let each: Vec<String> = self
            .0
            .iter()
            .map(|(who, cause, times)| match times {
                1 => format!("{who}: {cause}"),
                n => format!("{who}: {cause} ({n} tries)"),
            })
            .collect();
        each.join("; ")
    }
}

/// Times a reader asks the metaserver again for a chunk's locations when
/// every replica it knew failed, and the pause before the second such ask
/// (doubling after).
const RELOCATE_ROUNDS: u32 = 4;
const RELOCATE_PAUSE: Duration = Duration::from_millis(500);

/// Before enough fetch times are known, a fetch is hedged once it runs
/// slower than this rate.
const COLD_HEDGE_BYTES_PER_SEC: f64 = 50e6;
/// Fetch times kept, and how many of similar size a percentile needs.
const FETCH_TIMES_KEPT: usize = 512;
const FETCH_TIMES_NEEDED: usize = 16;

/// What the read path of one client keeps between reads: recent fetch
/// times, which decide when to hedge, and which protocol reads use.
pub struct ReadState {
    fetch_times: Mutex<FetchTimes>,
    /// Starts as `ClientConfig::bulk_reads`; benchmarks switch it.
    bulk_reads: AtomicBool,
}

impl ReadState {
    pub fn new(bulk_reads: bool) -> Self {
        Self {
            fetch_times: Mutex::default(),
            bulk_reads: AtomicBool::new(bulk_reads),
        }
    }

    fn record_fetch(&self, length: u64, took: Duration) {
        self.fetch_times
            .lock()
            .expect("fetch times")
            .record(length, took);
    }

    /// How long a fetch of `length` bytes may run before it is hedged: the
    /// 95th percentile of similar recent fetches (a cold rate before there
    /// are enough), never less than `floor`.
    fn hedge_after(&self, length: u64, floor: Duration) -> Duration {
        self.fetch_times
            .lock()
            .expect("fetch times")
            .p95(length)
            .unwrap_or_else(|| Duration::from_secs_f64(length as f64 / COLD_HEDGE_BYTES_PER_SEC))
            .max(floor)
    }

    /// Reads with the bulk protocol (true) or gRPC `GetChunk` (false).
    pub fn set_bulk_reads(&self, on: bool) {
        self.bulk_reads.store(on, Ordering::Relaxed);
    }

    fn bulk_reads(&self) -> bool {
        self.bulk_reads.load(Ordering::Relaxed)
    }
}

/// Recent successful chunk fetches: (bytes, time taken).
#[derive(Default)]
pub struct FetchTimes {
    recent: VecDeque<(u64, Duration)>,
}

impl FetchTimes {
    pub fn record(&mut self, length: u64, took: Duration) {
        if self.recent.len() == FETCH_TIMES_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back((length, took));
    }

    /// The 95th percentile time of recent fetches within a factor of two
    /// of `length`, once there are enough of them.
    pub fn p95(&self, length: u64) -> Option<Duration> {
        let mut similar: Vec<Duration> = self
            .recent
            .iter()
            .filter(|(l, _)| *l <= length.saturating_mul(2) && l.saturating_mul(2) >= length)
            .map(|(_, took)| *took)
            .collect();
        if similar.len() < FETCH_TIMES_NEEDED {
            return None;
        }
        similar.sort_unstable();
        Some(similar[(similar.len() * 95 / 100).min(similar.len() - 1)])
    }
}

/// A task that is cancelled when its handle is dropped (a fetch nobody
/// waits for any more must not go on downloading).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A fetch in flight or done.
type Fetch = JoinHandle<Result<ChunkData>>;

/// Reads one file: tokio `AsyncRead + AsyncSeek`, with up to
/// `read_ahead_bytes` of the chunks after the position fetched in parallel.
pub struct FileReader {
    client: Client,
    layout: Arc<FileLayout>,
    pos: u64,
    /// Fetches by chunk index, from the current chunk on.
    window: BTreeMap<usize, Fetch>,
    /// The chunk the position is in, once fetched.
    current: Option<(usize, ChunkData)>,
    read_ahead_bytes: u64,
    seek_to: Option<u64>,
}

impl FileReader {
    pub fn new(client: Client, layout: FileLayout) -> Self {
        let read_ahead_bytes = client.config().read_ahead_bytes;
        Self {
            client,
            layout: Arc::new(layout),
            pos: 0,
            window: BTreeMap::new(),
            current: None,
            read_ahead_bytes,
            seek_to: None,
        }
    }

    /// Sets how far ahead the reader fetches (0: only the chunk being read).
    pub fn set_read_ahead(&mut self, bytes: u64) {
        self.read_ahead_bytes = bytes;
    }

    pub fn size(&self) -> u64 {
        self.layout.size
    }

    pub fn layout(&self) -> &FileLayout {
        &self.layout
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The index of the chunk holding byte `pos` (pos < size).
    fn spawn_fetch(&self, index: usize) -> Fetch {
        let client = self.client.clone();
        let layout = self.layout.clone();
        tokio::spawn(async move {
            let span = &layout.chunks[index];
            client.fetch_chunk(&layout.path, span, index).await
        })
    }

    /// Keeps fetches running for chunk `index` and the read-ahead after it;
    /// drops the ones behind.
    fn fill_window(&mut self, index: usize) {
        let behind: Vec<usize> = self.window.range(..index).map(|(i, _)| *i).collect();
        for i in behind {
            if let Some(fetch) = self.window.remove(&i) {
                fetch.abort();
            }
        }
        let chunks = &self.layout.chunks;
        let mut ahead = 0u64;
        let mut i = index;
        while i < chunks.len() && (i == index || ahead + chunks[i].length <= self.read_ahead_bytes)
        {
            if i != index {
                ahead += chunks[i].length;
            }
            if !self.window.contains_key(&i) && self.current.as_ref().map(|c| c.0) != Some(i) {
                let fetch = self.spawn_fetch(i);
                self.window.insert(i, fetch);
            }
            i += 1;
        }
        // A seek backwards leaves fetches far ahead: drop them.
        let beyond: Vec<usize> = self.window.range(i..).map(|(i, _)| *i).collect();
        for i in beyond {
            if let Some(fetch) = self.window.remove(&i) {
                fetch.abort();
            }
        }
    }
}

impl Drop for FileReader {
    fn drop(&mut self) {
        for fetch in self.window.values() {
            fetch.abort();
        }
    }
}

impl AsyncRead for FileReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos >= this.layout.size || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let index = this.layout.chunk_at(this.pos);
            if let Some((current, data)) = &this.current
                && *current == index
            {
                let offset = this.pos - this.layout.chunks[index].offset;
                let copied = data.copy_to(offset, buf);
                this.pos += copied as u64;
                return Poll::Ready(Ok(()));
            }
            this.fill_window(index);
            let fetch = this
                .window
                .get_mut(&index)
                .expect("fetch for the current chunk");
            let result = ready!(Pin::new(fetch).poll(cx));
            this.window.remove(&index);
            match result {
                Ok(Ok(data)) => this.current = Some((index, data)),
                Ok(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Err(join) => {
                    return Poll::Ready(Err(io::Error::other(format!(
                        "chunk fetch failed: {join}"
                    ))));
                }
            }
        }
    }
}

impl AsyncSeek for FileReader {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let size = self.layout.size as i128;
        let target = match position {
            io::SeekFrom::Start(n) => n as i128,
            io::SeekFrom::End(d) => size + d as i128,
            io::SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative position",
            ));
        }
        self.seek_to = Some(target.min(u64::MAX as i128) as u64);
        Ok(())
    }

    fn poll_complete(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        if let Some(to) = self.seek_to.take() {
            self.pos = to;
        }
        Poll::Ready(Ok(self.pos))
    }
}

/// Reads a whole file into memory (small files, tests).
pub async fn read_all(client: &Client, path: &str) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut reader = client.open(path).await?;
    let mut out = Vec::with_capacity(reader.size() as usize);
    reader
        .read_to_end(&mut out)
        .await
        .map_err(|e| unwrap_io(path, e))?;
    Ok(out)
}

/// The client error inside an io::Error from a reader, or a new one.
pub fn unwrap_io(path: &str, err: io::Error) -> ClientError {
    match err.downcast::<ClientError>() {
        Ok(inner) => inner,
        Err(err) => ClientError::Remote {
            context: path.to_string(),
            code: tonic::Code::Unknown,
            message: err.to_string(),
        },
    }
}

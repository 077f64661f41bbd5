//! The gRPC `ChunkService`: thin adapters from requests to [`ChunkStore`]
//! calls. The only logic of its own is receiving a put stream, which
//! enforces the header-first protocol, the size limit and a memory budget.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use shardfs_proto::capability::Access;
use shardfs_proto::chunk::v1::chunk_service_server::ChunkService;
use shardfs_proto::chunk::v1::{
    ChunkVerdict, DeleteChunksRequest, DeleteChunksResponse, GetChunkRequest, GetChunkResponse,
    HasChunksRequest, HasChunksResponse, ListChunksRequest, ListChunksResponse, PutChunkRequest,
    PutChunkResponse, ReplicateChunkRequest, ReplicateChunkResponse, StatsRequest, StatsResponse,
    VerifyChunksRequest, VerifyChunksResponse, put_chunk_request,
};
use shardfs_proto::chunk_client::{ChunkClient, ChunkClientPool};
use shardfs_proto::security::{META_NAME, Security, peer_of, require_member};
use shardfs_proto::{ChunkId, MAX_CHUNK_BYTES, MAX_DATA_MESSAGE_BYTES};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::PutLimits;
use crate::convert::{chunk_info, id_from_wire, ids_from_wire, stats_response};
use crate::error::ChunkError;
use crate::gate::Gate;
use crate::store::{ChunkRead, ChunkStore, PutOutcome, Verdict};

/// Default page size of ListChunks, and the most it returns at once.
const LIST_DEFAULT_LIMIT: usize = 1000;
const LIST_MAX_LIMIT: usize = 10_000;
/// Most ids accepted by one HasChunks or DeleteChunks call.
const MAX_IDS_PER_CALL: usize = 100_000;
/// Most ids one VerifyChunks call re-hashes (each may be 64 MiB of reading).
const MAX_VERIFY_PER_CALL: usize = 1024;
pub struct ChunkServiceImpl {
    store: ChunkStore,
    /// Bytes of put data buffered at once across all streams; a put waits
    /// for its whole length here before buffering, so many concurrent
    /// writers cannot exhaust memory.
    put_memory: Arc<Semaphore>,
    put: PutLimits,
    /// Other chunk servers this one copies from (repair), by address.
    peers: ChunkClientPool,
    /// Capabilities asked of clients.
    gate: Gate,
}

impl ChunkServiceImpl {
    /// Serves `store` to requests `gate` lets through; copies from other
    /// chunk servers are dialed with `security`.
    pub fn new(store: ChunkStore, put: PutLimits, security: Security, gate: Gate) -> Self {
        let permits = put.memory_bytes.clamp(MAX_CHUNK_BYTES, u32::MAX as u64) as usize;
        Self {
            store,
            put_memory: Arc::new(Semaphore::new(permits)),
            put,
            peers: ChunkClientPool::new(security),
            gate,
        }
    }

    /// Room for `length` bytes of chunk `id` in the put memory budget,
    /// waiting at most the put memory wait.
    async fn reserve(
        &self,
        id: ChunkId,
        length: u64,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, Status> {
        let wanted = (length as u32).max(1);
        let wait = self.put.memory_wait;
        match tokio::time::timeout(wait, self.put_memory.acquire_many(wanted)).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Status::unavailable("chunk server is shutting down")),
            Err(_) => Err(Status::resource_exhausted(format!(
                "chunk {id}: this chunk server is busy (no room for {length} bytes in its put memory within {wait:?}); try another"
            ))),
        }
    }

    /// A cached client for the chunk server at `addr`.
    fn peer(&self, addr: &str) -> Result<ChunkClient, Status> {
        self.peers
            .get(addr)
            .map_err(|e| Status::invalid_argument(format!("bad source address {addr:?}: {e}")))
    }
}

type GetStream = Pin<Box<dyn Stream<Item = Result<GetChunkResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ChunkService for ChunkServiceImpl {
    async fn put_chunk(
        &self,
        request: Request<Streaming<PutChunkRequest>>,
    ) -> Result<Response<PutChunkResponse>, Status> {
        let peer = peer_of(&request).cloned();
        let mut stream = request.into_inner();
        let idle = self.put.idle_timeout;
        let (id, length, capability) = receive_header(&mut stream, idle).await?;
        self.gate
            .check(peer.as_ref(), &capability, Access::Write, &id)
            .map_err(|r| r.to_status(&id))?;
        if self.store.contains(id).await? {
            return Ok(Response::new(PutChunkResponse {
                already_stored: true,
            }));
        }
        // Memory is counted once data comes: a stream that sends a header
        // and then nothing holds none of the budget.
        let first = next_data(&mut stream, id, idle).await?;
        let _permit = self.reserve(id, length).await?;
        let pieces = receive_data(&mut stream, id, length, first, &self.put).await?;
        let outcome = self.store.put(id, pieces).await?;
        Ok(Response::new(PutChunkResponse {
            already_stored: outcome == PutOutcome::AlreadyStored,
        }))
    }

    type GetChunkStream = GetStream;

    async fn get_chunk(
        &self,
        request: Request<GetChunkRequest>,
    ) -> Result<Response<GetStream>, Status> {
        let peer = peer_of(&request).cloned();
        let request = request.into_inner();
        let id = id_from_wire(&request.id)?;
        self.gate
            .check(peer.as_ref(), &request.capability, Access::Read, &id)
            .map_err(|r| r.to_status(&id))?;
        let read = self
            .store
            .read(id, request.offset, request.length, !request.skip_verify)
            .await?;
        Ok(Response::new(stream_read(read)))
    }

    async fn has_chunks(
        &self,
        request: Request<HasChunksRequest>,
    ) -> Result<Response<HasChunksResponse>, Status> {
        let ids = ids_from_wire(&check_id_count(request.into_inner().ids)?)?;
        let lengths = self.store.lengths(ids).await?;
        Ok(Response::new(HasChunksResponse {
            present: lengths.iter().map(Option::is_some).collect(),
            lengths: lengths.iter().map(|l| l.unwrap_or(0)).collect(),
        }))
    }

    async fn delete_chunks(
        &self,
        request: Request<DeleteChunksRequest>,
    ) -> Result<Response<DeleteChunksResponse>, Status> {
        require_member(&request, META_NAME, "DeleteChunks")?;
        let ids = ids_from_wire(&check_id_count(request.into_inner().ids)?)?;
        let deleted = self.store.delete(ids).await?;
        Ok(Response::new(DeleteChunksResponse { deleted }))
    }

    async fn list_chunks(
        &self,
        request: Request<ListChunksRequest>,
    ) -> Result<Response<ListChunksResponse>, Status> {
        require_member(&request, META_NAME, "ListChunks")?;
        let request = request.into_inner();
        let after = match request.after.is_empty() {
            true => None,
            false => Some(id_from_wire(&request.after)?),
        };
        let limit = match request.limit as usize {
            0 => LIST_DEFAULT_LIMIT,
            n => n.min(LIST_MAX_LIMIT),
        };
        let (page, more) = self.store.list(after, limit).await?;
        let chunks = page.iter().map(|(id, e)| chunk_info(id, e)).collect();
        Ok(Response::new(ListChunksResponse { chunks, more }))
    }

    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let stats = self.store.stats().await?;
        Ok(Response::new(stats_response(&stats)))
    }

    async fn replicate_chunk(
        &self,
        request: Request<ReplicateChunkRequest>,
    ) -> Result<Response<ReplicateChunkResponse>, Status> {
        require_member(&request, META_NAME, "ReplicateChunk")?;
        let request = request.into_inner();
        let id = id_from_wire(&request.id)?;
        if request.length > MAX_CHUNK_BYTES {
            return Err(ChunkError::TooLarge {
                id,
                length: request.length,
                max: MAX_CHUNK_BYTES,
            }
            .into());
        }
        if self.store.contains(id).await? {
            return Ok(Response::new(ReplicateChunkResponse {
                already_stored: true,
            }));
        }
        let source = self.peer(&request.source)?;
        let _permit = self.reserve(id, request.length).await?;
        // The source sends without re-hashing; the put below verifies. It
        // may send the declared length and no more.
        let length = (request.length > 0).then_some(request.length);
        let pieces = source.get_pieces(id, 0, length, false).await.map_err(|s| {
            Status::new(
                s.code(),
                format!(
                    "copying chunk {id} from {}: {}",
                    request.source,
                    s.message()
                ),
            )
        })?;
        let outcome = self.store.put(id, pieces).await?;
        Ok(Response::new(ReplicateChunkResponse {
            already_stored: outcome == PutOutcome::AlreadyStored,
        }))
    }

    async fn verify_chunks(
        &self,
        request: Request<VerifyChunksRequest>,
    ) -> Result<Response<VerifyChunksResponse>, Status> {
        require_member(&request, META_NAME, "VerifyChunks")?;
        let ids = request.into_inner().ids;
        if ids.len() > MAX_VERIFY_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{} ids in one VerifyChunks call; at most {MAX_VERIFY_PER_CALL} are accepted",
                ids.len()
            )));
        }
        let verdicts = self
            .store
            .verify(ids_from_wire(&ids)?)
            .await?
            .into_iter()
            .map(|v| {
                let wire = match v {
                    Verdict::Ok => ChunkVerdict::Ok,
                    Verdict::Corrupt => ChunkVerdict::Corrupt,
                    Verdict::Missing => ChunkVerdict::Missing,
                };
                wire as i32
            })
            .collect();
        Ok(Response::new(VerifyChunksResponse { verdicts }))
    }
}

fn check_id_count(ids: Vec<Bytes>) -> Result<Vec<Bytes>, Status> {
    if ids.len() > MAX_IDS_PER_CALL {
        return Err(Status::invalid_argument(format!(
            "{} ids in one call; at most {MAX_IDS_PER_CALL} are accepted",
            ids.len()
        )));
    }
    Ok(ids)
}

/// The next message of a put stream, within `idle`.
async fn next_message(
    stream: &mut Streaming<PutChunkRequest>,
    waiting_for: &str,
    idle: Duration,
) -> Result<Option<PutChunkRequest>, Status> {
    match tokio::time::timeout(idle, stream.message()).await {
        Ok(message) => message,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "PutChunk: no {waiting_for} within {idle:?}; the stream was dropped"
        ))),
    }
}

/// Reads the header that must open every put stream and checks the size
/// limit before a data byte is buffered: the id, length and capability.
async fn receive_header(
    stream: &mut Streaming<PutChunkRequest>,
    idle: Duration,
) -> Result<(ChunkId, u64, Bytes), Status> {
    let first = next_message(stream, "header", idle)
        .await?
        .ok_or_else(|| Status::invalid_argument("PutChunk stream ended before its header"))?;
    let Some(put_chunk_request::Msg::Header(header)) = first.msg else {
        return Err(Status::invalid_argument(
            "PutChunk must start with a header (id and length) before any data",
        ));
    };
    let id = id_from_wire(&header.id)?;
    if header.length > MAX_CHUNK_BYTES {
        return Err(ChunkError::TooLarge {
            id,
            length: header.length,
            max: MAX_CHUNK_BYTES,
        }
        .into());
    }
    Ok((id, header.length, header.capability))
}

/// The first data message after the header (None: the stream ended, as an
/// empty chunk's does).
async fn next_data(
    stream: &mut Streaming<PutChunkRequest>,
    id: ChunkId,
    idle: Duration,
) -> Result<Option<Bytes>, Status> {
    match next_message(stream, "data", idle).await? {
        None => Ok(None),
        Some(message) => data_of(message, id).map(Some),
    }
}

/// The bytes of a data message, at most [`MAX_DATA_MESSAGE_BYTES`] of them.
fn data_of(message: PutChunkRequest, id: ChunkId) -> Result<Bytes, Status> {
    let Some(put_chunk_request::Msg::Data(data)) = message.msg else {
        return Err(Status::invalid_argument(format!(
            "chunk {id}: a second header arrived in the middle of the data"
        )));
    };
    if data.len() > MAX_DATA_MESSAGE_BYTES {
        return Err(Status::invalid_argument(format!(
            "chunk {id}: a data message of {} bytes; the protocol allows at most {MAX_DATA_MESSAGE_BYTES}",
            data.len()
        )));
    }
    Ok(data)
}

/// Receives exactly `length` data bytes, `first` and those after it. A
/// stream that breaks off, stalls, trickles, sends too much or ends early
/// is an error and nothing is stored.
async fn receive_data(
    stream: &mut Streaming<PutChunkRequest>,
    id: ChunkId,
    length: u64,
    first: Option<Bytes>,
    limits: &PutLimits,
) -> Result<Vec<Bytes>, Status> {
    let mut pieces = Vec::with_capacity(length.div_ceil(MAX_DATA_MESSAGE_BYTES as u64) as usize);
    let mut received = 0u64;
    let deadline = tokio::time::Instant::now()
        + limits.idle_timeout
        + Duration::from_secs(length / limits.min_bytes_per_sec);
    let mut next = first;
    while let Some(data) = next {
        received += data.len() as u64;
        if received > length {
            return Err(ChunkError::LengthMismatch {
                id,
                expected: length,
                received,
            }
            .into());
        }
        pieces.push(data);
        next = match tokio::time::timeout_at(deadline, next_data(stream, id, limits.idle_timeout))
            .await
        {
            Ok(next) => next?,
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "chunk {id}: {received} of {length} bytes arrived before the put's deadline (it must send at least {} bytes/s); the stream was dropped",
                    limits.min_bytes_per_sec
                )));
            }
        };
    }
    if received != length {
        return Err(ChunkError::LengthMismatch {
            id,
            expected: length,
            received,
        }
        .into());
    }
    Ok(pieces)
}

/// Turns a store read into a response stream of pieces of at most 1 MiB.
/// The first message carries the chunk's length; an empty range still
/// yields one (empty) message.
fn stream_read(read: ChunkRead) -> GetStream {
    match read {
        ChunkRead::Verified { chunk_length, data } => {
            let messages = split_messages(data).enumerate().map(move |(i, data)| {
                Ok(GetChunkResponse {
                    data,
                    chunk_length: if i == 0 { chunk_length } else { 0 },
                })
            });
            futures::stream::iter(messages).boxed()
        }
        ChunkRead::Stream {
            chunk_length,
            mut reader,
        } => {
            let (tx, rx) = mpsc::channel(8);
            tokio::task::spawn_blocking(move || {
                let mut first = true;
                loop {
                    let piece = match reader.next_piece() {
                        Ok(Some(piece)) => piece,
                        Ok(None) if first => Bytes::new(),
                        Ok(None) => return,
                        Err(e) => {
                            let _ = tx.blocking_send(Err(Status::from(e)));
                            return;
                        }
                    };
                    for data in split_messages(piece) {
                        let message = GetChunkResponse {
                            data,
                            chunk_length: if first { chunk_length } else { 0 },
                        };
                        first = false;
                        if tx.blocking_send(Ok(message)).is_err() {
                            return; // the caller went away
                        }
                    }
                }
            });
            ReceiverStream::new(rx).boxed()
        }
    }
}

/// Slices `data` into message-sized pieces without copying; empty data
/// gives one empty piece.
fn split_messages(data: Bytes) -> impl Iterator<Item = Bytes> {
    let count = data.len().div_ceil(MAX_DATA_MESSAGE_BYTES).max(1);
    (0..count).map(move |i| {
        let start = (i * MAX_DATA_MESSAGE_BYTES).min(data.len());
        let end = (start + MAX_DATA_MESSAGE_BYTES).min(data.len());
        data.slice(start..end)
    })
}

//! The gRPC `ChunkService`: thin adapters from requests to [`ChunkStore`]
//! calls. The only logic of its own is receiving a put stream, which
//! enforces the header-first protocol, the size limit and a memory budget.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use shardfs_proto::chunk::v1::chunk_service_server::ChunkService;
use shardfs_proto::chunk::v1::{
    ChunkVerdict, DeleteChunksRequest, DeleteChunksResponse, GetChunkRequest, GetChunkResponse,
    HasChunksRequest, HasChunksResponse, ListChunksRequest, ListChunksResponse, PutChunkRequest,
    PutChunkResponse, ReplicateChunkRequest, ReplicateChunkResponse, StatsRequest, StatsResponse,
    VerifyChunksRequest, VerifyChunksResponse, put_chunk_request,
};
use shardfs_proto::chunk_client::ChunkClient;
use shardfs_proto::{ChunkId, MAX_CHUNK_BYTES, MAX_DATA_MESSAGE_BYTES};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{chunk_info, id_from_wire, ids_from_wire, stats_response};
use crate::error::ChunkError;
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
    /// Other chunk servers this one copies from (repair), by address.
    peers: std::sync::Mutex<std::collections::HashMap<String, ChunkClient>>,
}

impl ChunkServiceImpl {
    pub fn new(store: ChunkStore, put_memory_bytes: u64) -> Self {
        let permits = put_memory_bytes.clamp(MAX_CHUNK_BYTES, u32::MAX as u64) as usize;
        Self {
            store,
            put_memory: Arc::new(Semaphore::new(permits)),
            peers: Default::default(),
        }
    }

    /// A cached client for the chunk server at `addr`.
    fn peer(&self, addr: &str) -> Result<ChunkClient, Status> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = peers.get(addr) {
            return Ok(client.clone());
        }
        let client = ChunkClient::new(addr)
            .map_err(|e| Status::invalid_argument(format!("bad source address {addr:?}: {e}")))?;
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

type GetStream = Pin<Box<dyn Stream<Item = Result<GetChunkResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ChunkService for ChunkServiceImpl {
    async fn put_chunk(
        &self,
        request: Request<Streaming<PutChunkRequest>>,
    ) -> Result<Response<PutChunkResponse>, Status> {
        let mut stream = request.into_inner();
        let (id, length) = receive_header(&mut stream).await?;
        if self.store.contains(id).await? {
            return Ok(Response::new(PutChunkResponse {
                already_stored: true,
            }));
        }
        let _permit = self
            .put_memory
            .acquire_many(length as u32)
            .await
            .map_err(|_| Status::unavailable("chunk server is shutting down"))?;
        let pieces = receive_data(&mut stream, id, length).await?;
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
        let request = request.into_inner();
        let id = id_from_wire(&request.id)?;
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
        let present = self.store.has(ids).await?;
        Ok(Response::new(HasChunksResponse { present }))
    }

    async fn delete_chunks(
        &self,
        request: Request<DeleteChunksRequest>,
    ) -> Result<Response<DeleteChunksResponse>, Status> {
        let ids = ids_from_wire(&check_id_count(request.into_inner().ids)?)?;
        let deleted = self.store.delete(ids).await?;
        Ok(Response::new(DeleteChunksResponse { deleted }))
    }

    async fn list_chunks(
        &self,
        request: Request<ListChunksRequest>,
    ) -> Result<Response<ListChunksResponse>, Status> {
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
        let _permit = self
            .put_memory
            .acquire_many(request.length as u32)
            .await
            .map_err(|_| Status::unavailable("chunk server is shutting down"))?;
        // The source sends without re-hashing; the put below verifies.
        let pieces = source.get_pieces(id, 0, None, false).await.map_err(|s| {
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

/// Reads the header that must open every put stream and checks the size
/// limit before a data byte is buffered.
async fn receive_header(stream: &mut Streaming<PutChunkRequest>) -> Result<(ChunkId, u64), Status> {
    let first = stream
        .message()
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
    Ok((id, header.length))
}

/// Receives exactly `length` data bytes. A stream that breaks off, sends too
/// much or ends early is an error and nothing is stored.
async fn receive_data(
    stream: &mut Streaming<PutChunkRequest>,
    id: ChunkId,
    length: u64,
) -> Result<Vec<Bytes>, Status> {
    let mut pieces = Vec::with_capacity(length.div_ceil(MAX_DATA_MESSAGE_BYTES as u64) as usize);
    let mut received = 0u64;
    while let Some(message) = stream.message().await? {
        let Some(put_chunk_request::Msg::Data(data)) = message.msg else {
            return Err(Status::invalid_argument(format!(
                "chunk {id}: a second header arrived in the middle of the data"
            )));
        };
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

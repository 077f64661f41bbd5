//! A typed client for one chunk server.
//!
//! Wraps the generated `ChunkServiceClient` so callers deal in [`ChunkId`]s
//! and [`Bytes`], never in wire details: chunks are split into 1 MiB data
//! messages on the way out and reassembled on the way in. The underlying
//! channel is created once and cloned per call (cheap), never dialed per
//! request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tonic::Status;
use tonic::transport::Channel;

use crate::chunk::v1::chunk_service_client::ChunkServiceClient;
use crate::chunk::v1::{
    ChunkInfo, ChunkVerdict, DeleteChunksRequest, GetChunkRequest, HasChunksRequest,
    ListChunksRequest, PutChunkRequest, PutHeader, ReplicateChunkRequest, StatsRequest,
    StatsResponse, VerifyChunksRequest, put_chunk_request,
};
use crate::security::{Security, ServerKind};
use crate::{ChunkId, MAX_DATA_MESSAGE_BYTES, transport};

/// A handle on one chunk server. Clone it freely: clones share the channel.
#[derive(Clone, Debug)]
pub struct ChunkClient {
    addr: String,
    /// A few HTTP/2 connections, used in turn. One connection's frames are
    /// all encoded and written by a single task on the server, so bulk
    /// transfers over one connection cannot use more than one core there.
    connections: Arc<[ChunkServiceClient<Channel>]>,
    next: Arc<AtomicUsize>,
}

/// Connections per chunk server opened by [`ChunkClient::new`].
pub const CONNECTIONS_PER_SERVER: usize = 4;

/// One page of a chunk server's inventory.
#[derive(Debug, Clone)]
pub struct InventoryPage {
    pub chunks: Vec<ChunkInfo>,
    pub more: bool,
}

impl ChunkClient {
    /// A client for the chunk server at `addr` (`host:port`), dialed with
    /// `security`. Connects on first use and reconnects by itself after
    /// failures.
    pub fn new(addr: &str, security: &Security) -> Result<Self, tonic::transport::Error> {
        let channels = (0..CONNECTIONS_PER_SERVER)
            .map(|_| security.lazy_channel(addr, ServerKind::Chunk))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_channels(addr, channels))
    }

    /// A client over existing channels (at least one), used in turn.
    pub fn from_channels(addr: &str, channels: Vec<Channel>) -> Self {
        assert!(!channels.is_empty(), "ChunkClient needs a channel");
        let connections = channels
            .into_iter()
            .map(|channel| {
                ChunkServiceClient::new(channel)
                    .max_decoding_message_size(transport::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(transport::MAX_MESSAGE_BYTES)
            })
            .collect();
        Self {
            addr: addr.to_string(),
            connections,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The next connection in turn (a cheap clone of a cached channel).
    fn rpc(&self) -> ChunkServiceClient<Channel> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[i].clone()
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Stores `data` under `id`. Returns true when the server already had
    /// the chunk (nothing was written). The server verifies the hash first.
    pub async fn put(&self, id: ChunkId, data: Bytes) -> Result<bool, Status> {
        self.put_with(id, data, Bytes::new()).await
    }

    /// [`ChunkClient::put`] with a write capability (see
    /// [`crate::capability`]), as clients of a secured cluster need.
    pub async fn put_with(
        &self,
        id: ChunkId,
        data: Bytes,
        capability: Bytes,
    ) -> Result<bool, Status> {
        let header = PutChunkRequest {
            msg: Some(put_chunk_request::Msg::Header(PutHeader {
                id: id.to_vec().into(),
                length: data.len() as u64,
                capability,
            })),
        };
        let pieces = (0..data.len())
            .step_by(MAX_DATA_MESSAGE_BYTES)
            .map(move |start| {
                let end = (start + MAX_DATA_MESSAGE_BYTES).min(data.len());
                PutChunkRequest {
                    msg: Some(put_chunk_request::Msg::Data(data.slice(start..end))),
                }
            });
        let stream = futures::stream::iter(std::iter::once(header).chain(pieces));
        let response = self.rpc().put_chunk(stream).await?;
        Ok(response.into_inner().already_stored)
    }

    /// Reads `length` bytes (None: to the end) of chunk `id` from `offset`
    /// as one contiguous buffer (a copy when the range spans messages; see
    /// [`ChunkClient::get_pieces`]). With `server_verifies` the server
    /// re-hashes the whole chunk before sending; callers that verify the
    /// bytes themselves pass false.
    pub async fn get(
        &self,
        id: ChunkId,
        offset: u64,
        length: Option<u64>,
        server_verifies: bool,
    ) -> Result<Bytes, Status> {
        let mut pieces = self.get_pieces(id, offset, length, server_verifies).await?;
        if pieces.len() == 1 {
            return Ok(pieces.pop().expect("one piece"));
        }
        let total = pieces.iter().map(Bytes::len).sum();
        let mut buf = BytesMut::with_capacity(total);
        for piece in pieces {
            buf.extend_from_slice(&piece);
        }
        Ok(buf.freeze())
    }

    /// Like [`ChunkClient::get`], but returns the bytes as the messages
    /// brought them (up to 1 MiB each), without copying them together.
    pub async fn get_pieces(
        &self,
        id: ChunkId,
        offset: u64,
        length: Option<u64>,
        server_verifies: bool,
    ) -> Result<Vec<Bytes>, Status> {
        self.get_pieces_with(id, offset, length, server_verifies, Bytes::new())
            .await
    }

    /// [`ChunkClient::get_pieces`] with a read capability (see
    /// [`crate::capability`]), as clients of a secured cluster need.
    pub async fn get_pieces_with(
        &self,
        id: ChunkId,
        offset: u64,
        length: Option<u64>,
        server_verifies: bool,
        capability: Bytes,
    ) -> Result<Vec<Bytes>, Status> {
        let request = GetChunkRequest {
            id: id.to_vec().into(),
            offset,
            length,
            skip_verify: !server_verifies,
            capability,
        };
        let mut stream = self.rpc().get_chunk(request).await?.into_inner();
        let mut pieces = Vec::new();
        let mut expected = length;
        let mut received = 0u64;
        while let Some(message) = stream.next().await {
            let message = message?;
            if expected.is_none() && message.chunk_length > crate::MAX_CHUNK_BYTES {
                return Err(Status::out_of_range(format!(
                    "chunk server {} says chunk {id} is {} bytes; no chunk is over {}",
                    self.addr,
                    message.chunk_length,
                    crate::MAX_CHUNK_BYTES
                )));
            }
            let expected = *expected.get_or_insert(message.chunk_length.saturating_sub(offset));
            received += message.data.len() as u64;
            if received > expected {
                return Err(Status::internal(format!(
                    "chunk server {} sent more than the {expected} bytes asked for of chunk {id}",
                    self.addr
                )));
            }
            pieces.push(message.data);
        }
        let expected = expected.unwrap_or(0);
        if received != expected {
            return Err(Status::data_loss(format!(
                "chunk server {} sent {received} of {expected} bytes of chunk {id}",
                self.addr
            )));
        }
        Ok(pieces)
    }

    /// Which of `ids` the server stores, in order.
    pub async fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, Status> {
        let request = HasChunksRequest {
            ids: ids.iter().map(|id| id.to_vec().into()).collect(),
        };
        Ok(self.rpc().has_chunks(request).await?.into_inner().present)
    }

    /// The stored length of each of `ids` (None where it is not stored).
    pub async fn lengths(&self, ids: &[ChunkId]) -> Result<Vec<Option<u64>>, Status> {
        let request = HasChunksRequest {
            ids: ids.iter().map(|id| id.to_vec().into()).collect(),
        };
        let reply = self.rpc().has_chunks(request).await?.into_inner();
        if reply.present.len() != ids.len() || reply.lengths.len() != ids.len() {
            return Err(Status::internal(format!(
                "asked about {} chunks, the chunk server answered for {} (lengths {})",
                ids.len(),
                reply.present.len(),
                reply.lengths.len()
            )));
        }
        Ok(reply
            .present
            .into_iter()
            .zip(reply.lengths)
            .map(|(present, length)| present.then_some(length))
            .collect())
    }

    /// Deletes `ids`; returns how many were stored.
    pub async fn delete(&self, ids: &[ChunkId]) -> Result<u64, Status> {
        let request = DeleteChunksRequest {
            ids: ids.iter().map(|id| id.to_vec().into()).collect(),
        };
        Ok(self
            .rpc()
            .delete_chunks(request)
            .await?
            .into_inner()
            .deleted)
    }

    /// One page of the inventory, in id order, starting after `after`.
    pub async fn list(&self, after: Option<ChunkId>, limit: u32) -> Result<InventoryPage, Status> {
        let request = ListChunksRequest {
            after: after.map(|id| id.to_vec().into()).unwrap_or_default(),
            limit,
        };
        let response = self.rpc().list_chunks(request).await?.into_inner();
        Ok(InventoryPage {
            chunks: response.chunks,
            more: response.more,
        })
    }

    /// The whole inventory, page by page.
    pub async fn list_all(&self) -> Result<Vec<ChunkInfo>, Status> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.list(after, 0).await?;
            if let Some(last) = page.chunks.last() {
                after = Some(ChunkId::from_slice(&last.id).map_err(|e| {
                    Status::internal(format!("chunk server {} listed a bad id: {e}", self.addr))
                })?);
            }
            all.extend(page.chunks);
            if !page.more {
                return Ok(all);
            }
        }
    }

    /// Asks the server to copy chunk `id` from the chunk server at `source`.
    /// Returns true when it already had it.
    pub async fn replicate(&self, id: ChunkId, length: u64, source: &str) -> Result<bool, Status> {
        let request = ReplicateChunkRequest {
            id: id.to_vec().into(),
            length,
            source: source.to_string(),
        };
        let response = self.rpc().replicate_chunk(request).await?.into_inner();
        Ok(response.already_stored)
    }

    /// Asks the server to re-hash `ids` from disk; one verdict per id.
    pub async fn verify(&self, ids: &[ChunkId]) -> Result<Vec<ChunkVerdict>, Status> {
        let request = VerifyChunksRequest {
            ids: ids.iter().map(|id| id.to_vec().into()).collect(),
        };
        let response = self.rpc().verify_chunks(request).await?.into_inner();
        Ok(response
            .verdicts
            .into_iter()
            .map(|v| ChunkVerdict::try_from(v).unwrap_or(ChunkVerdict::Unspecified))
            .collect())
    }

    pub async fn stats(&self) -> Result<StatsResponse, Status> {
        Ok(self.rpc().stats(StatsRequest {}).await?.into_inner())
    }
}

/// One cached [`ChunkClient`] per chunk server address, made on first use
/// and shared by every caller (the servers' peers, the client library's
/// chunk servers). Cheap to share; clients are clones over the same
/// channels.
pub struct ChunkClientPool {
    security: Security,
    clients: std::sync::Mutex<std::collections::HashMap<String, ChunkClient>>,
}

impl ChunkClientPool {
    /// An empty pool whose clients dial with `security`.
    pub fn new(security: Security) -> Self {
        Self {
            security,
            clients: Default::default(),
        }
    }

    pub fn security(&self) -> &Security {
        &self.security
    }

    /// The client for the chunk server at `addr`.
    pub fn get(&self, addr: &str) -> Result<ChunkClient, tonic::transport::Error> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(addr) {
            return Ok(client.clone());
        }
        let client = ChunkClient::new(addr, &self.security)?;
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

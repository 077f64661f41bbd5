//! A typed client for one chunk server.
//!
//! Wraps the generated `ChunkServiceClient` so callers deal in [`ChunkId`]s
//! and [`Bytes`], never in wire details: chunks are split into 1 MiB data
//! messages on the way out and reassembled on the way in. The underlying
//! channel is created once and cloned per call (cheap), never dialed per
//! request.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tonic::Status;
use tonic::transport::Channel;

use crate::chunk::v1::chunk_service_client::ChunkServiceClient;
use crate::chunk::v1::{
    ChunkInfo, DeleteChunksRequest, GetChunkRequest, HasChunksRequest, ListChunksRequest,
    PutChunkRequest, PutHeader, StatsRequest, StatsResponse, put_chunk_request,
};
use crate::{ChunkId, MAX_DATA_MESSAGE_BYTES, transport};

/// A handle on one chunk server. Clone it freely: clones share the channel.
#[derive(Clone, Debug)]
pub struct ChunkClient {
    addr: String,
    inner: ChunkServiceClient<Channel>,
}

/// One page of a chunk server's inventory.
#[derive(Debug, Clone)]
pub struct InventoryPage {
    pub chunks: Vec<ChunkInfo>,
    pub more: bool,
}

impl ChunkClient {
    /// A client for the chunk server at `addr` (`host:port`). Connects on
    /// first use and reconnects by itself after failures.
    pub fn new(addr: &str) -> Result<Self, tonic::transport::Error> {
        Ok(Self::from_channel(addr, transport::lazy_channel(addr)?))
    }

    pub fn from_channel(addr: &str, channel: Channel) -> Self {
        let inner = ChunkServiceClient::new(channel)
            .max_decoding_message_size(transport::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(transport::MAX_MESSAGE_BYTES);
        Self {
            addr: addr.to_string(),
            inner,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Stores `data` under `id`. Returns true when the server already had
    /// the chunk (nothing was written). The server verifies the hash first.
    pub async fn put(&self, id: ChunkId, data: Bytes) -> Result<bool, Status> {
        let header = PutChunkRequest {
            msg: Some(put_chunk_request::Msg::Header(PutHeader {
                id: id.to_vec().into(),
                length: data.len() as u64,
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
        let response = self.inner.clone().put_chunk(stream).await?;
        Ok(response.into_inner().already_stored)
    }

    /// Reads `length` bytes (None: to the end) of chunk `id` from `offset`.
    /// With `server_verifies` the server re-hashes the whole chunk before
    /// sending; callers that verify the bytes themselves pass false.
    pub async fn get(
        &self,
        id: ChunkId,
        offset: u64,
        length: Option<u64>,
        server_verifies: bool,
    ) -> Result<Bytes, Status> {
        let request = GetChunkRequest {
            id: id.to_vec().into(),
            offset,
            length,
            skip_verify: !server_verifies,
        };
        let mut stream = self.inner.clone().get_chunk(request).await?.into_inner();
        let first = match stream.next().await {
            Some(message) => message?,
            None => return Ok(Bytes::new()),
        };
        let expected = match length {
            Some(len) => len,
            None => first.chunk_length.saturating_sub(offset),
        };
        if first.data.len() as u64 == expected {
            // The whole range came in one message: no copy needed.
            if let Some(extra) = stream.next().await {
                extra?;
                return Err(Status::internal(format!(
                    "chunk server {} sent more than the {expected} bytes asked for",
                    self.addr
                )));
            }
            return Ok(first.data);
        }
        let mut buf = BytesMut::with_capacity(expected as usize);
        buf.extend_from_slice(&first.data);
        while let Some(message) = stream.next().await {
            let message = message?;
            if (buf.len() + message.data.len()) as u64 > expected {
                return Err(Status::internal(format!(
                    "chunk server {} sent more than the {expected} bytes asked for",
                    self.addr
                )));
            }
            buf.extend_from_slice(&message.data);
        }
        if buf.len() as u64 != expected {
            return Err(Status::data_loss(format!(
                "chunk server {} sent {} of {expected} bytes of chunk {id}",
                self.addr,
                buf.len()
            )));
        }
        Ok(buf.freeze())
    }

    /// Which of `ids` the server stores, in order.
    pub async fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, Status> {
        let request = HasChunksRequest {
            ids: ids.iter().map(|id| id.to_vec().into()).collect(),
        };
        Ok(self
            .inner
            .clone()
            .has_chunks(request)
            .await?
            .into_inner()
            .present)
    }

    /// Deletes `ids`; returns how many were stored.
    pub async fn delete(&self, ids: &[ChunkId]) -> Result<u64, Status> {
        let request = DeleteChunksRequest {
            ids: ids.iter().map(|id| id.to_vec().into()).collect(),
        };
        Ok(self
            .inner
            .clone()
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
        let response = self.inner.clone().list_chunks(request).await?.into_inner();
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

    pub async fn stats(&self) -> Result<StatsResponse, Status> {
        Ok(self
            .inner
            .clone()
            .stats(StatsRequest {})
            .await?
            .into_inner())
    }
}

//! Conversions between the wire types and the store's domain types, and the
//! one place where chunk server errors become gRPC statuses.

use shardfs_proto::ChunkId;
use shardfs_proto::chunk::v1::{ChunkInfo, StatsResponse};
use tonic::{Code, Status};

use crate::error::ChunkError;
use crate::index::IndexEntry;
use crate::store::StoreStats;

impl From<ChunkError> for Status {
    fn from(err: ChunkError) -> Self {
        let code = match &err {
            ChunkError::InvalidId(_)
            | ChunkError::TooLarge { .. }
            | ChunkError::HashMismatch { .. }
            | ChunkError::LengthMismatch { .. } => Code::InvalidArgument,
            ChunkError::NotFound { .. } => Code::NotFound,
            ChunkError::OutOfRange { .. } => Code::OutOfRange,
            ChunkError::Corrupt { .. } | ChunkError::Truncated { .. } => Code::DataLoss,
            ChunkError::DiskFull { .. } => Code::ResourceExhausted,
            ChunkError::Io { .. } | ChunkError::Serving(_) | ChunkError::AtRest(_) => {
                Code::Internal
            }
            // Failed until it is reopened (after a full disk, say): the
            // writer tries another server.
            ChunkError::Index(_) => Code::Unavailable,
        };
        if code == Code::Internal {
            tracing::error!("{err}");
        }
        Status::new(code, err.to_string())
    }
}

/// Parses a wire id (32 raw bytes).
pub fn id_from_wire(bytes: &[u8]) -> Result<ChunkId, ChunkError> {
    Ok(ChunkId::from_slice(bytes)?)
}

pub fn ids_from_wire(ids: &[bytes::Bytes]) -> Result<Vec<ChunkId>, ChunkError> {
    Ok(ChunkId::many_from_slices(ids)?)
}

pub fn chunk_info(id: &ChunkId, entry: &IndexEntry) -> ChunkInfo {
    ChunkInfo {
        id: id.to_vec().into(),
        length: entry.length,
        stored_at_unix_ms: entry.stored_at_unix_ms,
        last_verified_unix_ms: entry.last_verified_unix_ms,
    }
}

pub fn stats_response(stats: &StoreStats) -> StatsResponse {
    StatsResponse {
        chunk_count: stats.chunk_count,
        used_bytes: stats.used_bytes,
        capacity_bytes: stats.capacity_bytes,
        free_bytes: stats.free_bytes,
    }
}

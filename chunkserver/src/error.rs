//! The chunk server's errors. Every failure a caller can act on has its own
//! variant; `convert.rs` maps each to exactly one gRPC status code.

use std::io;

use shardfs_proto::{ChunkId, IdError};

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("malformed chunk id: {0}")]
    InvalidId(#[from] IdError),

    #[error("chunk {id} is {length} bytes, larger than the largest chunk allowed ({max} bytes)")]
    TooLarge { id: ChunkId, length: u64, max: u64 },

    #[error(
        "hash mismatch: expected chunk {expected}, received bytes hash to {actual}; nothing stored"
    )]
    HashMismatch { expected: ChunkId, actual: ChunkId },

    #[error("chunk {id}: header announced {expected} bytes but {received} arrived; nothing stored")]
    LengthMismatch {
        id: ChunkId,
        expected: u64,
        received: u64,
    },

    /// The store and the encryption key it was given do not agree.
    #[error("{0}")]
    AtRest(String),

    #[error("chunk {id} is not stored here")]
    NotFound { id: ChunkId },

    #[error(
        "chunk {id} has {chunk_length} bytes; range offset {offset} length {length} is outside it"
    )]
    OutOfRange {
        id: ChunkId,
        offset: u64,
        length: u64,
        chunk_length: u64,
    },

    #[error("chunk {id}: stored bytes hash to {actual} (stored copy quarantined)")]
    Corrupt { id: ChunkId, actual: ChunkId },

    #[error("chunk {id}: file is shorter than its indexed length (truncated on disk)")]
    Truncated { id: ChunkId },

    #[error("disk full while storing chunk {id}: {source}")]
    DiskFull {
        id: ChunkId,
        #[source]
        source: io::Error,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("chunk index: {0}")]
    Index(#[from] IndexError),

    /// The server could not serve (its listener, its transport).
    #[error("serving: {0}")]
    Serving(String),
}

impl ChunkError {
    /// Wraps an I/O error with what we were doing, or classifies a full disk.
    pub fn io(id: Option<ChunkId>, context: impl Into<String>, source: io::Error) -> Self {
        match (id, source.raw_os_error()) {
            (Some(id), Some(libc::ENOSPC | libc::EDQUOT)) => ChunkError::DiskFull { id, source },
            _ => ChunkError::Io {
                context: context.into(),
                source,
            },
        }
    }
}

/// Failures of the index store (sled, behind [`crate::index::ChunkIndex`]).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("the chunk index is being reopened after a failure; try again")]
    Reopening,
    #[error("index entry for {id} is {len} bytes long; expected {expected}")]
    BadEntry {
        id: String,
        len: usize,
        expected: usize,
    },
}

pub type Result<T, E = ChunkError> = std::result::Result<T, E>;

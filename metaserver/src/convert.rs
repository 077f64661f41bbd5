//! Conversions between the wire types and the namespace's domain types,
//! and the one place where metaserver errors become gRPC statuses.

use shardfs_proto::meta::v1 as pb;
use shardfs_proto::{ChunkId, MAX_CHUNK_BYTES};
use tonic::{Code, Status};

use crate::error::MetaError;
use crate::namespace::{ChunkRef, FileMeta, Inode, NsError};

/// The response metadata key naming the leader's address on NotLeader.
pub const LEADER_METADATA: &str = "shardfs-leader";
pub use shardfs_proto::{MAX_CHUNKS_PER_FILE, MAX_REPLICATION};

impl From<MetaError> for Status {
    fn from(err: MetaError) -> Self {
        let code = match &err {
            MetaError::InvalidPath(_) | MetaError::InvalidArgument(_) => Code::InvalidArgument,
            MetaError::Namespace(ns) => match ns {
                NsError::NotFound(_) => Code::NotFound,
                NsError::AlreadyExists(_) => Code::AlreadyExists,
                NsError::NotADirectory(_)
                | NsError::IsADirectory(_)
                | NsError::DirectoryNotEmpty(_)
                | NsError::Unreplicated(_) => Code::FailedPrecondition,
                NsError::Invalid(_) => Code::InvalidArgument,
            },
            MetaError::NotLeader { .. } | MetaError::Unavailable(_) => Code::Unavailable,
            MetaError::Membership(_) | MetaError::FailedPrecondition(_) => Code::FailedPrecondition,
            MetaError::Server(_) => Code::Internal,
        };
        let mut status = Status::new(code, err.to_string());
        if let MetaError::NotLeader {
            leader_addr: Some(addr),
            ..
        } = &err
            && let Ok(value) = addr.parse()
        {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        status
    }
}

/// Checks a file as a client describes it and computes its content id.
pub fn file_from_wire(file: &pb::FileInfo, mtime_ms: u64) -> Result<FileMeta, MetaError> {
    let invalid = |why: String| MetaError::InvalidArgument(why);
    check_replication(file.replication)?;
    if file.chunks.len() > MAX_CHUNKS_PER_FILE {
        return Err(invalid(format!(
            "file has {} chunks; at most {MAX_CHUNKS_PER_FILE} are allowed (use bigger chunks)",
            file.chunks.len()
        )));
    }
    let mut chunks = Vec::with_capacity(file.chunks.len());
    let mut total = 0u64;
    for (i, chunk) in file.chunks.iter().enumerate() {
        let id = ChunkId::from_slice(&chunk.id).map_err(|e| invalid(format!("chunk {i}: {e}")))?;
        if chunk.length == 0 || chunk.length > MAX_CHUNK_BYTES {
            return Err(invalid(format!(
                "chunk {i} ({id}) has length {}; chunks hold 1..={MAX_CHUNK_BYTES} bytes",
                chunk.length
            )));
        }
        total += chunk.length;
        chunks.push(ChunkRef {
            id,
            length: chunk.length,
        });
    }
    if total != file.size {
        return Err(invalid(format!(
            "file size {} does not match the sum of its chunk lengths ({total})",
            file.size
        )));
    }
    Ok(FileMeta {
        content_id: FileMeta::content_id_of(&chunks),
        chunks,
        size: file.size,
        replication: file.replication,
        mtime_ms,
    })
}

pub fn file_to_wire(file: &FileMeta) -> pb::FileInfo {
    pb::FileInfo {
        chunks: file
            .chunks
            .iter()
            .map(|c| pb::ChunkRef {
                id: c.id.to_vec().into(),
                length: c.length,
            })
            .collect(),
        size: file.size,
        replication: file.replication,
        content_id: file.content_id.to_vec().into(),
        mtime_ms: file.mtime_ms,
    }
}

pub fn entry_to_wire(name: &str, inode: &Inode) -> pb::Entry {
    match inode {
        Inode::Dir { mtime_ms } => pb::Entry {
            name: name.to_string(),
            is_dir: true,
            mtime_ms: *mtime_ms,
            file: None,
        },
        Inode::File(file) => pb::Entry {
            name: name.to_string(),
            is_dir: false,
            mtime_ms: file.mtime_ms,
            file: Some(file_to_wire(file)),
        },
    }
}

pub fn check_replication(replication: u32) -> Result<u32, MetaError> {
    if replication == 0 || replication > MAX_REPLICATION {
        return Err(MetaError::InvalidArgument(format!(
            "replication factor {replication} is outside 1..={MAX_REPLICATION}"
        )));
    }
    Ok(replication)
}

pub fn id_from_wire(bytes: &[u8]) -> Result<ChunkId, MetaError> {
    ChunkId::from_slice(bytes).map_err(|e| MetaError::InvalidArgument(e.to_string()))
}

pub fn ids_from_wire(ids: &[bytes::Bytes]) -> Result<Vec<ChunkId>, MetaError> {
    ChunkId::many_from_slices(ids).map_err(|e| MetaError::InvalidArgument(e.to_string()))
}

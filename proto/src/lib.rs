//! The shardfs wire protocol and the small types every part shares.
//!
//! - [`chunk`]: the generated gRPC code of `proto/chunk.proto` (package
//!   `shardfs.chunk.v1`): the chunk server's API.
//! - [`meta`]: the generated gRPC code of `proto/meta.proto` (package
//!   `shardfs.meta.v1`): the metaserver's API and the Raft transport.
//! - [`id`]: [`ChunkId`], the BLAKE3-256 hash that names a chunk, and its
//!   parsing rules (32 raw bytes on the wire, 64 lowercase hex characters in
//!   text and on disk).
//! - [`path`]: [`DfsPath`], a validated absolute namespace path, and the
//!   rules every path must follow (checked where a path enters the system).
//! - [`transport`]: HTTP/2 settings for bulk transfer, applied identically by
//!   every server and client so that 1 MiB data messages flow at full speed.
//! - [`meta_client`]: a client for the metaserver group that finds the
//!   leader and follows redirects.
//! - [`output`]: standard output for the command lines, where a closed pipe
//!   (`| head`) ends the program quietly instead of panicking.
//! - [`process`]: servers as child processes: the `listening on ADDR` line,
//!   free ports, and the one way a parent starts a server and waits for it.
//! - [`chunk_client`]: a typed client for one chunk server, used by the other
//!   servers, the client library, tests and benchmarks.
//! - [`bulk`]: the bulk read protocol, chunk reads without gRPC on the chunk
//!   server's own port.
//! - [`security`]: TLS on every connection ([`security::Security`]), the
//!   names member certificates carry, and the peer a server sees
//!   ([`security::Peer`], [`security::require_member`]).
//! - [`alloc`]: allocator tuning shared by every binary.
//! - [`config`]: reading a server's TOML file, and the error a bad
//!   configuration gives.
//! - [`token`]: the text of client tokens (`sfs1.NAME.SECRET`): making,
//!   parsing and hashing them.
//! - [`capability`]: chunk capabilities, the metaserver's signed grant to
//!   read or write one chunk on one chunk server until an expiry.
//! - [`span`]: [`span::Span`], a duration as operators write it (`5s`,
//!   `250ms`, `2m`).

pub mod alloc;
pub mod bulk;
pub mod capability;
pub mod chunk_client;
pub mod config;
pub mod id;
pub mod meta_client;
pub mod output;
pub mod path;
pub mod process;
pub mod security;
pub mod span;
pub mod token;
pub mod transport;

pub use id::{ChunkId, IdError};
pub use path::{DfsPath, PathError};

/// Generated code for `shardfs.meta.v1`.
pub mod meta {
    pub mod v1 {
        tonic::include_proto!("shardfs.meta.v1");
    }
}

/// Generated code for `shardfs.chunk.v1`.
pub mod chunk {
    pub mod v1 {
        tonic::include_proto!("shardfs.chunk.v1");
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The most data bytes a single streaming message carries. Chunks travel as a
/// sequence of messages of this size so no message ever nears gRPC's limits.
pub const MAX_DATA_MESSAGE_BYTES: usize = 1 << 20;

/// The largest chunk any part of shardfs accepts. Bigger chunks are refused
/// before a byte of them is buffered.
pub const MAX_CHUNK_BYTES: u64 = 64 << 20;

/// The chunk size writers use unless told otherwise.
pub const DEFAULT_CHUNK_BYTES: u64 = 8 << 20;

/// Largest replication factor accepted.
pub const MAX_REPLICATION: u32 = 16;

/// Most chunks one file may have (512 GiB in 8 MiB chunks, 4 TiB in 64 MiB
/// ones): its commit's Raft entry (about 9 MB with every replica confirmed)
/// must reach and be flushed by followers within one AppendEntries timeout
/// (the heartbeat interval) even on a busy machine; 262,144 chunks (36 MB)
/// did not. Writers check it before sending a byte.
pub const MAX_CHUNKS_PER_FILE: usize = 65_536;

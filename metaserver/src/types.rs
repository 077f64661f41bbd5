//! The Raft type configuration and the commands that go through the log.
//!
//! Commands carry everything their application needs (timestamps are
//! stamped by the leader before proposing), so every metaserver applies
//! them to the same state with the same result.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::namespace::{FileMeta, NsError};

openraft::declare_raft_types!(
    /// shardfs's Raft types: u64 node ids, nodes addressed by host:port.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;

/// A change to the replicated state. Paths are re-validated on apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Mkdir {
        path: String,
        parents: bool,
        mtime_ms: u64,
    },
    /// Commits a file. `confirmed` lists chunk locations the leader has
    /// just confirmed with the chunk servers themselves; they are recorded
    /// first, then every chunk must be held by at least `min_replicas`
    /// registered chunk servers or nothing changes.
    Commit {
        path: String,
        file: FileMeta,
        if_absent: bool,
        confirmed: Vec<(u64, Vec<shardfs_proto::ChunkId>)>,
        min_replicas: u32,
    },
    Rename {
        from: String,
        to: String,
    },
    Delete {
        path: String,
        recursive: bool,
    },
    RegisterChunkServer {
        id: u64,
        info: crate::cluster::ChunkServerInfo,
    },
    /// Chunks a chunk server stored or removed (with `replace`, its whole
    /// inventory).
    ChunkReport {
        server: u64,
        added: Vec<shardfs_proto::ChunkId>,
        removed: Vec<shardfs_proto::ChunkId>,
        replace: bool,
    },
    /// Garbage collection: forgets every location of those of `chunks` that
    /// no file references when the entry is applied (a commit applied
    /// first keeps its chunks). The outcome lists what to delete where.
    Collect {
        chunks: Vec<shardfs_proto::ChunkId>,
    },
    /// An operator starts (or stops) draining a chunk server.
    SetDraining {
        id: u64,
        draining: bool,
    },
    /// An operator removes a chunk server (checked by the leader first).
    RemoveChunkServer {
        id: u64,
    },
    /// A client's call with its request id: applied once, and its retries
    /// answered from the retry cache. `at_ms` is the leader's clock, which
    /// also expires old answers.
    Once {
        request_id: Vec<u8>,
        at_ms: u64,
        #[serde(deserialize_with = "once_inner")]
        command: Box<Command>,
    },
    // New variants go last: postcard numbers variants by position, and
    // logs and snapshots written before must keep decoding.
    /// An admin creates a token (the state keeps its hash).
    CreateToken {
        name: String,
        record: crate::tokens::TokenRecord,
    },
    /// An admin revokes a token.
    RevokeToken {
        name: String,
    },
    /// The cluster key chunk capabilities are made with (see
    /// `shardfs_proto::capability`); applied only while the state has none,
    /// so the first of racing proposals wins.
    SetCapabilityKey {
        key: shardfs_proto::capability::ClusterKey,
    },
}

/// The command inside a [`Command::Once`], which may not itself be a
/// `Once`: commands come off the network, and unbounded nesting would
/// recurse the decoder (and apply) off the end of the stack.
fn once_inner<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Box<Command>, D::Error> {
    use std::cell::Cell;
    thread_local!(static INSIDE_ONCE: Cell<bool> = const { Cell::new(false) });
    if INSIDE_ONCE.get() {
        return Err(serde::de::Error::custom(
            "a Once command may not hold another Once",
        ));
    }
    INSIDE_ONCE.set(true);
    let inner = Command::deserialize(d);
    INSIDE_ONCE.set(false);
    inner.map(Box::new)
}

impl Command {
    /// `command` as a client's call with `request_id` (applied once), or as
    /// it is when the client gave no id.
    pub fn once(request_id: &[u8], at_ms: u64, command: Command) -> Command {
        if request_id.is_empty() {
            return command;
        }
        Command::Once {
            request_id: request_id.to_vec(),
            at_ms,
            command: Box::new(command),
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Outcome {
    /// Blank and membership entries, and commands with nothing to report.
    #[default]
    Done,
    /// mkdir: whether a directory was created.
    Created(bool),
    /// commit: whether a file was replaced.
    Replaced(bool),
    /// delete: how many files were removed.
    Deleted(u64),
    /// collect: the chunks given up, each with the servers that held it.
    Collected(Vec<(shardfs_proto::ChunkId, Vec<u64>)>),
}

/// The result of applying one log entry. A command that fails (a path that
/// does not exist, say) is still applied, identically everywhere: it just
/// changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult(pub Result<Outcome, NsError>);

impl Default for CommandResult {
    fn default() -> Self {
        Self(Ok(Outcome::Done))
    }
}

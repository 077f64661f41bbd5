//! The metaserver's errors; `convert.rs` maps each to one gRPC status.

use shardfs_proto::PathError;

use crate::namespace::NsError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MetaError {
    #[error("{0}")]
    InvalidPath(#[from] PathError),

    #[error("{0}")]
    Namespace(#[from] NsError),

    #[error("{0}")]
    InvalidArgument(String),

    /// This metaserver is not the leader; the leader is named when known.
    #[error("metaserver {self_id} is not the leader{}", match (.leader_id, .leader_addr) {
        (Some(id), Some(addr)) => format!("; the leader is metaserver {id} at {addr}"),
        _ => "; no leader is known yet (election in progress?)".to_string(),
    })]
    NotLeader {
        self_id: u64,
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },

    #[error("membership change refused: {0}")]
    Membership(String),

    /// The request is valid but the cluster is not in a state to allow it.
    #[error("{0}")]
    FailedPrecondition(String),

    /// Raft could not complete the request (quorum lost, shutting down).
    #[error("metaserver unavailable: {0}")]
    Unavailable(String),

    /// This metaserver could not start or serve: its store, its Raft node,
    /// its listener.
    #[error("{0}")]
    Server(String),
}

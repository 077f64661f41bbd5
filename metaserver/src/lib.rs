//! The shardfs metaserver: namespace, chunk placement and cluster
//! membership, replicated with Raft.
//!
//! - [`namespace`]: the directory tree and committed files, a deterministic
//!   struct that the Raft state machine applies commands to.

pub mod namespace;

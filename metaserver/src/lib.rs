//! The shardfs metaserver: namespace, chunk placement and cluster
//! membership, replicated with Raft (openraft, storage in sled).
//!
//! - [`namespace`]: the directory tree and committed files, a deterministic
//!   struct that records every change in a journal.
//! - [`state`]: the replicated state and how a [`types::Command`] changes it.
//! - [`types`]: the Raft type configuration, commands and their results.
//! - [`store`]: the Raft log store and state machine on sled, behind
//!   openraft's storage traits (checked by `openraft::testing::Suite`).

pub mod namespace;
pub mod state;
pub mod store;
pub mod types;

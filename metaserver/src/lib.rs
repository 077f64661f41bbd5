//! The shardfs metaserver: namespace, chunk placement and cluster
//! membership, replicated with Raft (openraft, storage in sled).
//!
//! - [`namespace`]: the directory tree and committed files, a deterministic
//!   struct that records every change in a journal.
//! - [`bench`]: `shardfs-meta status` and `shardfs-meta bench`.
//! - [`metaserver`]: [`metaserver::Metaserver`], one metaserver put
//!   together: the Raft node and the owners built on it, and their workers.
//! - [`chunks`]: [`chunks::ChunkManager`], the leader's dealings with chunk
//!   servers and their state: registration, heartbeats, liveness,
//!   allocation and placement, bad replicas, the replica check before a
//!   commit, the chunk server client pool.
//! - [`cluster`]: chunk servers and chunk locations (replicated), and the
//!   placement policy for new replicas.
//! - [`liveness`]: which chunk servers are alive (the leader's soft state).
//! - [`state`]: the replicated state and how a [`types::Command`] changes it.
//! - [`types`]: the Raft type configuration, commands and their results.
//! - [`node`]: [`node::MetaNode`], the Raft node: replicated writes,
//!   linearizable reads (lease, read index), membership, bootstrap of a new
//!   group.
//! - [`network`]: the Raft transport over gRPC (client and server side).
//! - [`filter`]: faults injected into that transport (drop, delay,
//!   partition, isolate) for in-process tests.
//! - [`repair`]: [`repair::RepairManager`], the leader's repair rounds:
//!   re-replicating under-replicated chunks, trimming extra replicas, with
//!   its counters and work in progress.
//! - [`gc`]: [`gc::GcManager`], the leader's garbage collection of
//!   unreferenced chunks after a grace period.
//! - [`requests`]: client requests checked and turned into what the node
//!   acts on (every handler's first step).
//! - [`retries`]: the retry cache answering a retried namespace call with
//!   its first answer.
//! - [`service`]: the gRPC `MetaService`, thin adapters over [`node`].
//! - [`convert`]: wire <-> domain conversions and the error -> status map.
//! - [`server`]: `run(listener, metaserver, limits, shutdown)`.
//! - [`config`]: TOML file, environment and flags.
//! - [`error`]: `MetaError`, one variant per failure a caller can act on.
//! - [`codec`]: the binary encoding of Raft entries, messages, snapshots and
//!   stored rows (postcard, readable JSON from older stores).
//! - [`touched`]: what applied entries changed since repair last looked.
//! - [`store`]: the Raft log store and state machine on sled, behind
//!   openraft's storage traits (checked by `openraft::testing::Suite`).

pub mod bench;
pub mod chunks;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod convert;
pub mod error;
pub mod filter;
pub mod gc;
pub mod liveness;
pub mod metaserver;
pub mod namespace;
pub mod network;
pub mod node;
pub mod repair;
pub mod requests;
pub mod retries;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod tokens;
pub mod touched;
pub mod types;

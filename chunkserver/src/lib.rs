//! The shardfs chunk server: a content-addressed store of immutable chunks,
//! served over gRPC.
//!
//! - [`store`]: the core. Chunk files under `chunks/ab/cd/<id>`, written
//!   temp -> fsync -> rename -> fsync(dir), verified by hash on the way in
//!   and (when asked) on the way out; corrupt copies go to `quarantine/`.
//! - [`at_rest`]: encryption at rest (AES-256-CTR per chunk under a
//!   local key file; ids stay the BLAKE3 of the plaintext).
//! - [`index`]: the sled index behind the [`index::ChunkIndex`] trait;
//!   rebuildable from the chunk files at any start-up.
//! - [`service`]: the gRPC `ChunkService`, thin adapters over the store.
//! - [`convert`]: wire <-> domain conversions and the single error -> status map.
//! - [`server`]: `run(listener, store, .., shutdown)`.
//! - [`config`]: TOML file, environment and flags.
//! - [`heartbeat`]: registration and heartbeats to the metaservers (with
//!   `--meta`): usage and the chunks stored or removed since the last beat.
//! - [`error`]: [`ChunkError`], one variant per failure a caller can act on.
//! - [`bench`]: the put/get throughput benchmark (`shardfs-chunk bench`).
//! - [`bulk`]: the server side of the bulk read protocol: chunk reads on
//!   the same port, one thread each, data sent by `sendfile(2)`.
//! - [`gate`]: the capability check in front of chunk reads and writes on
//!   a TLS server (the key comes with the metaservers' answers).
//! - [`scrub`]: continuous re-hashing of every stored chunk at a bounded
//!   rate; a corrupt copy is quarantined and reported.

pub mod at_rest;
pub mod bench;
pub mod bulk;
pub mod config;
pub mod convert;
pub mod error;
pub mod gate;
pub mod heartbeat;
pub mod index;
pub mod scrub;
pub mod server;
pub mod service;
pub mod store;

pub use error::ChunkError;
pub use store::{ChunkStore, StoreConfig};

//! The commands, grouped by what they work on; each handler takes a
//! connected [`shardfs_client::Client`] (or none) and its parsed
//! arguments, and prints what it did.

pub mod admin;
pub mod bench;
pub mod cluster;
pub mod docs;
pub mod mount;
pub mod namespace;
pub mod stream;
pub mod transfer;

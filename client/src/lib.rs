//! The shardfs client library: put and get files and directory trees, read
//! files with a parallel, verified read-ahead, and manage the namespace.
//!
//! ```no_run
//! # async fn demo() -> shardfs_client::Result<()> {
//! use shardfs_client::{Client, PutOptions};
//! use tokio::io::AsyncReadExt;
//!
//! let client = Client::connect(&["127.0.0.1:7101".to_string()]).await?;
//! client.put_bytes("hello".into(), "/data/hello.txt", &PutOptions::default()).await?;
//! let mut reader = client.open("/data/hello.txt").await?;
//! let mut text = String::new();
//! reader.read_to_string(&mut text).await.unwrap();
//! # Ok(()) }
//! ```
//!
//! - [`client`]: [`Client`], its configuration, channels and counters.
//! - [`put`]: chunking, hashing, placement, replica writes with retries,
//!   commit.
//! - [`read`]: verified chunk fetches with failover and bad-replica
//!   reports; [`FileReader`].
//! - [`transfer`]: whole files and trees to and from local disk.
//! - [`shards`]: shard streams for data loaders: per-rank assignment,
//!   prefetch, resumable cursors.
//! - [`buffers`]: pooled receive buffers (fresh pages cost the kernel a
//!   zeroing each).
//! - [`mount`]: the read-only FUSE file system behind `shardfs mount`.
//! - [`bulk`]: the client side of the bulk read protocol: a few idle
//!   connections per chunk server, data read straight into pooled buffers.
//! - [`bench`]: `shardfs bench`, writing and reading files against the
//!   running cluster and reporting MB/s.
//! - [`error`]: errors in plain words.
//! - [`certs`]: the cluster CA and the member certificates it issues
//!   (`shardfs cluster init-ca`, `issue-cert`).

pub mod bench;
pub mod buffers;
pub mod bulk;
pub mod certs;
pub mod client;
pub mod error;
pub mod mount;
pub mod put;
pub mod read;
pub mod shards;
pub mod transfer;

pub use client::{
    CA_ENV, Client, ClientConfig, CounterValues, INSECURE_ENV, TOKEN_ENV, TOKEN_FILE_ENV,
    security_from_env, token_from_env,
};
pub use error::{ClientError, Result};
pub use put::{Progress, PutOptions, PutStats};
pub use read::{FileLayout, FileReader, read_all};
pub use shards::{Cursor, ShardStream};
pub use transfer::GetStats;

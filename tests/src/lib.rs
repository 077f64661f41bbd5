//! The shardfs test harness: real `shardfs-meta`, `shardfs-chunk` and
//! `shardfs` processes on loopback (or in network namespaces), each with
//! its own data directory and log, and the helpers every cross-component
//! suite in `tests/tests/` shares.
//!
//! - [`bins`]: where the binaries are, built on first use by the same
//!   `cargo` and profile that built the test, so `cargo test -p
//!   shardfs-tests` works on its own.
//! - [`cluster`]: [`Cluster`], a metaserver group and chunk servers to
//!   start, stop, kill and restart, with the client and CLI pointed at it.
//!   When a test fails, every server's log is copied out of the test's
//!   scratch directory (to `$TMPDIR/shardfs-test-logs/`) and its last lines
//!   are printed.
//! - [`cli`]: the `shardfs` command line run against a cluster, and its
//!   output as text.
//! - [`data`]: deterministic test data, hashes, the pool of small chunks
//!   metaserver-level tests commit files of, and tree hashes.
//! - [`load`]: [`CpuLoad`], busy threads standing in for a shared machine.
//! - [`wait`]: [`wait_until`], polling a condition with a deadline.

pub mod bins;
pub mod cli;
pub mod cluster;
pub mod data;
pub mod load;
pub mod wait;

pub use cli::{cli_at, ok, stderr, stdout};
pub use cluster::Cluster;
pub use data::{chunked, data, file_info, hash, pool_chunk, put_all, tree_hashes};
pub use load::CpuLoad;
pub use wait::wait_until;

//! Garbage collection, driven by the leader: chunks that no committed file
//! references (files deleted or replaced, puts abandoned) are deleted from
//! the chunk servers once they have been unreferenced for a grace period.
//!
//! The leader notes when it first saw each chunk unreferenced; allocating a
//! chunk for a put restarts its clock, so a put in flight keeps its chunks
//! for at least the grace period (a put slower than that fails its commit
//! check instead of committing a file with missing chunks). The clocks are
//! soft state: a new leader starts them afresh, which only delays
//! collection. The decision goes through Raft (`Command::Collect`), which
//! re-checks references when applied, so a commit that wins the race keeps
//! its chunks and one that loses it fails cleanly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shardfs_proto::ChunkId;
use tracing::{info, warn};

use crate::node::MetaNode;
use crate::types::{Command, Outcome};

/// Default grace period before an unreferenced chunk is collected.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// Chunks collected by one Raft entry at most.
const BATCH: usize = 10_000;

#[derive(Debug, Default)]
pub struct GcState {
    /// When each unreferenced (or freshly allocated) chunk was first seen so.
    since: Mutex<HashMap<ChunkId, Instant>>,
    pub collected: AtomicU64,
    /// Unreferenced chunks waiting out their grace period (last round).
    pub pending: AtomicU64,
}

impl GcState {
    /// Restarts the grace period of chunks just allocated to a writer.
    pub fn touch(&self, ids: impl IntoIterator<Item = ChunkId>) {
        let now = Instant::now();
        let mut since = self.since.lock().expect("gc clocks");
        for id in ids {
            since.insert(id, now);
        }
    }
}

/// Runs collection rounds every `interval` until the process ends.
pub fn spawn(node: MetaNode, grace: Duration, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            if node.ensure_leader().is_err() {
                continue;
            }
            node.gc_round(grace).await;
        }
    })
}

impl MetaNode {
    /// One round: update the clocks, collect what is due.
    pub async fn gc_round(&self, grace: Duration) {
        let unreferenced: Vec<ChunkId> = self.read_local(|s| {
            s.cluster
                .chunks()
                .filter(|c| !s.namespace.is_referenced(c))
                .copied()
                .collect()
        });
        let due: Vec<ChunkId> = {
            let now = Instant::now();
            let mut since = self.gc.since.lock().expect("gc clocks");
            let current: HashSet<ChunkId> = unreferenced.iter().copied().collect();
            // Forget chunks referenced again or gone, except fresh
            // allocations whose chunks have not been reported yet.
            since.retain(|id, at| current.contains(id) || now.duration_since(*at) < grace);
            for id in &unreferenced {
                since.entry(*id).or_insert(now);
            }
            self.gc
                .pending
                .store(unreferenced.len() as u64, Ordering::Relaxed);
            unreferenced
                .iter()
                .filter(|id| now.duration_since(since[*id]) >= grace)
                .copied()
                .collect()
        };
        for batch in due.chunks(BATCH) {
            let outcome = self
                .write(Command::Collect {
                    chunks: batch.to_vec(),
                })
                .await;
            let collected = match outcome {
                Ok(Outcome::Collected(collected)) => collected,
                Ok(_) => continue,
                Err(e) => {
                    warn!("garbage collection: {e}");
                    return;
                }
            };
            {
                let mut since = self.gc.since.lock().expect("gc clocks");
                for (id, _) in &collected {
                    since.remove(id);
                }
            }
            self.delete_collected(&collected).await;
        }
    }

    /// Deletes collected chunks from the servers that held them. A server
    /// that cannot be reached keeps its copies until it reports them again
    /// (and they are collected again after another grace period).
    async fn delete_collected(&self, collected: &[(ChunkId, Vec<u64>)]) {
        let mut by_server: BTreeMap<u64, Vec<ChunkId>> = BTreeMap::new();
        for (id, holders) in collected {
            for holder in holders {
                by_server.entry(*holder).or_default().push(*id);
            }
        }
        let addrs: HashMap<u64, String> = self.read_local(|s| {
            s.cluster
                .servers
                .iter()
                .map(|(id, info)| (*id, info.addr.clone()))
                .collect()
        });
        for (server, ids) in by_server {
            let Some(addr) = addrs.get(&server) else {
                continue;
            };
            let deleted = match self.chunk_client(server, addr) {
                Ok(client) => {
                    tokio::time::timeout(Duration::from_secs(30), client.delete(&ids)).await
                }
                Err(e) => {
                    warn!(server, "garbage collection: {e}");
                    continue;
                }
            };
            match deleted {
                Ok(Ok(n)) => {
                    self.gc.collected.fetch_add(n, Ordering::Relaxed);
                    info!(
                        server,
                        chunks = n,
                        "garbage collection: deleted unreferenced chunks"
                    );
                }
                Ok(Err(status)) => {
                    warn!(
                        server,
                        "garbage collection: delete failed: {}",
                        status.message()
                    )
                }
                Err(_) => warn!(server, "garbage collection: delete timed out"),
            }
        }
    }
}

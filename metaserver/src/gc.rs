//! Garbage collection, driven by the leader: chunks that no committed file
//! references (files deleted or replaced, puts abandoned) are deleted from
//! the chunk servers once they have been unreferenced for a grace period.
//!
//! The leader notes when it first saw each chunk unreferenced; a chunk
//! allocated for a put ([`crate::chunks::Allocations`]) is left alone for
//! the grace period after its allocation too, so a put in flight keeps its
//! chunks for at least the grace period (a put slower than that fails its commit
//! check instead of committing a file with missing chunks). The clocks are
//! soft state: a new leader starts them afresh, which only delays
//! collection. The decision goes through Raft (`Command::Collect`), which
//! re-checks references when applied, so a commit that wins the race keeps
//! its chunks and one that loses it fails cleanly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardfs_proto::ChunkId;
use tracing::{info, warn};

use crate::chunks::ChunkManager;
use crate::node::MetaNode;
use crate::types::{Command, Outcome};

/// Default grace period before an unreferenced chunk is collected.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// Chunks collected by one Raft entry at most.
const BATCH: usize = 10_000;

/// How garbage collection paces itself.
#[derive(Debug, Clone)]
pub struct GcConfig {
    /// How long a chunk stays unreferenced (or allocated and not yet
    /// committed) before it is collected.
    pub grace: Duration,
    /// How often a round runs.
    pub interval: Duration,
}

impl GcConfig {
    /// Rounds four times per grace period, between every 200 ms and every
    /// 10 s.
    pub fn with_grace(grace: Duration) -> Self {
        Self {
            grace,
            interval: (grace / 4).clamp(Duration::from_millis(200), Duration::from_secs(10)),
        }
    }
}

impl Default for GcConfig {
    fn default() -> Self {
        Self::with_grace(DEFAULT_GRACE)
    }
}

/// The leader's garbage collection: its clocks and counters (soft state),
/// over the chunk servers of a [`ChunkManager`].
pub struct GcManager {
    chunks: Arc<ChunkManager>,
    config: GcConfig,
    /// When each unreferenced chunk was first seen so.
    since: Mutex<HashMap<ChunkId, Instant>>,
    pub collected: AtomicU64,
    /// Unreferenced chunks waiting out their grace period (last round).
    pub pending: AtomicU64,
}

impl GcManager {
    pub fn new(chunks: Arc<ChunkManager>, config: GcConfig) -> Self {
        Self {
            chunks,
            config,
            since: Mutex::default(),
            collected: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    fn node(&self) -> &MetaNode {
        self.chunks.node()
    }

    /// Runs collection rounds while this node leads, until the task is
    /// aborted.
    pub fn spawn_workers(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let gc = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(gc.config.interval).await;
                if gc.chunks.ensure_leader().is_err() {
                    continue;
                }
                gc.round().await;
            }
        })
    }

    /// One round: update the clocks, collect what is due.
    pub async fn round(&self) {
        let grace = self.config.grace;
        let unreferenced: Vec<ChunkId> = self.node().read_local(|s| {
            s.cluster
                .chunks()
                .filter(|c| !s.namespace.is_referenced(c))
                .copied()
                .collect()
        });
        let allocations = &self.chunks.allocations;
        allocations.forget_older_than(grace);
        let due: Vec<ChunkId> = {
            let now = Instant::now();
            let mut since = self.since.lock().expect("gc clocks");
            let current: HashSet<ChunkId> = unreferenced.iter().copied().collect();
            // Forget chunks referenced again or gone.
            since.retain(|id, _| current.contains(id));
            for id in &unreferenced {
                since.entry(*id).or_insert(now);
            }
            self.pending
                .store(unreferenced.len() as u64, Ordering::Relaxed);
            unreferenced
                .iter()
                .filter(|id| now.duration_since(since[*id]) >= grace)
                .filter(|id| !allocations.within(id, grace))
                .copied()
                .collect()
        };
        for batch in due.chunks(BATCH) {
            let outcome = self
                .node()
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
                let mut since = self.since.lock().expect("gc clocks");
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
        let addrs: HashMap<u64, String> = self.node().read_local(|s| {
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
            let deleted = match self.chunks.chunk_client(server, addr) {
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
                    self.collected.fetch_add(n, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metaserver::LeaderSettings;
    use crate::metaserver::testing::{chunk, chunk_server, commit, lone_leader};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreferenced_chunks_wait_out_the_grace_and_allocations_restart_it() {
        let dir = tempfile::tempdir().unwrap();
        let grace = Duration::from_millis(400);
        let settings = LeaderSettings {
            gc: GcConfig::with_grace(grace),
            ..LeaderSettings::default()
        };
        let m = lone_leader(dir.path(), &settings).await;
        let (kept, dropped, allocated) = (chunk("kept"), chunk("dropped"), chunk("allocated"));
        chunk_server(&m, 1, "z", 0, &[kept, dropped, allocated]).await;
        commit(&m, "/f", &[kept], 1).await;
        let held = |id: ChunkId| m.node.read_local(|s| s.cluster.holders(&id).count());

        m.gc.round().await;
        assert_eq!(m.gc.pending.load(Ordering::Relaxed), 2);
        tokio::time::sleep(grace / 2).await;
        // A writer is given `allocated` now: its clock starts again.
        m.chunks.allocate(&[(allocated, 1 << 20)], 1, &[]).unwrap();
        tokio::time::sleep(grace / 2 + Duration::from_millis(100)).await;
        m.gc.round().await;
        assert_eq!(held(dropped), 0, "due: collected");
        assert_eq!(held(allocated), 1, "allocated within the grace period");
        assert_eq!(held(kept), 1, "referenced");

        tokio::time::sleep(grace).await;
        m.gc.round().await;
        assert_eq!(held(allocated), 0);
        assert_eq!(held(kept), 1);
        assert_eq!(m.gc.pending.load(Ordering::Relaxed), 1);
    }
}

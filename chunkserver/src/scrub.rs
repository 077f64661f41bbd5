//! Scrub: the chunk server re-hashes every stored chunk, continuously, at a
//! bounded rate. A copy whose bytes no longer match its id is quarantined
//! (`ChunkStore::verify`); its removal reaches the metaserver with the next
//! heartbeat, and the leader's repair copies a good replica back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shardfs_proto::ChunkId;
use tracing::{info, warn};

use crate::store::{ChunkStore, Verdict};

/// Scrub rate when none is configured.
pub const DEFAULT_MB_PER_S: u64 = 50;
/// Pause between passes that finished quickly (a small store).
const MIN_PASS: Duration = Duration::from_secs(10);
/// Chunks listed at a time.
const PAGE: usize = 1000;

/// What scrub has done since the server started; read by heartbeats.
#[derive(Debug, Default)]
pub struct ScrubStats {
    pub passes: AtomicU64,
    pub bytes: AtomicU64,
    pub chunks: AtomicU64,
    pub corrupt: AtomicU64,
    /// Progress of the current pass in thousandths.
    pub pass_permille: AtomicU64,
}

/// Scrubs `store` at `mb_per_s` until the task is dropped (0: never).
pub fn spawn(
    store: ChunkStore,
    mb_per_s: u64,
    stats: Arc<ScrubStats>,
) -> Option<tokio::task::JoinHandle<()>> {
    if mb_per_s == 0 {
        info!("scrub disabled");
        return None;
    }
    Some(tokio::spawn(async move {
        let bytes_per_s = (mb_per_s << 20) as f64;
        loop {
            let started = Instant::now();
            if let Err(e) = pass(&store, bytes_per_s, &stats).await {
                warn!("scrub pass failed: {e}");
            }
            let took = started.elapsed();
            if took < MIN_PASS {
                tokio::time::sleep(MIN_PASS - took).await;
            }
        }
    }))
}

/// One pass over every chunk, in id order, paced to `bytes_per_s`.
async fn pass(
    store: &ChunkStore,
    bytes_per_s: f64,
    stats: &ScrubStats,
) -> crate::error::Result<()> {
    let total = store.stats().await?.chunk_count.max(1);
    let mut done = 0u64;
    let mut after: Option<ChunkId> = None;
    let started = Instant::now();
    let mut bytes = 0u64;
    stats.pass_permille.store(0, Ordering::Relaxed);
    loop {
        let (page, more) = store.list(after, PAGE).await?;
        for (id, entry) in &page {
            after = Some(*id);
            match store.verify(vec![*id]).await?.first() {
                Some(Verdict::Corrupt) => {
                    stats.corrupt.fetch_add(1, Ordering::Relaxed);
                    warn!(chunk = %id, "scrub: stored bytes do not match the id; quarantined");
                }
                Some(Verdict::Ok) => {
                    stats.chunks.fetch_add(1, Ordering::Relaxed);
                }
                _ => {} // deleted meanwhile
            }
            bytes += entry.length;
            done += 1;
            stats.bytes.fetch_add(entry.length, Ordering::Relaxed);
            stats
                .pass_permille
                .store((done * 1000 / total).min(1000), Ordering::Relaxed);
            // Sleep off any lead over the allowed rate.
            let due = Duration::from_secs_f64(bytes as f64 / bytes_per_s);
            let elapsed = started.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
        if !more {
            break;
        }
    }
    stats.pass_permille.store(1000, Ordering::Relaxed);
    stats.passes.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

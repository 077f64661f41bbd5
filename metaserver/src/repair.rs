//! Repair, driven by the leader: every second it compares each committed
//! chunk's live replicas with its files' replication factor.
//!
//! - Too few (a chunk server died, a copy was quarantined): a live holder
//!   copies the chunk to a new target chosen by the placement policy
//!   (`ReplicateChunk`, chunk server to chunk server; the target verifies the
//!   hash like any put). Chunks with the fewest replicas left go first, and
//!   each chunk server sends and receives at most `mb_per_s` of repair
//!   traffic per second.
//! - Too many (a server came back with its chunks): the extra copies are
//!   deleted from the fullest servers, only while every remaining holder
//!   has just been heard from.
//!
//! Nothing is done while a new leader's liveness grace period runs (it
//! cannot yet tell dead servers from live ones). The plan is rebuilt from
//! the replicated state, so a new leader simply continues.
//!
//! A round looks only at chunks that may have changed: those whose files
//! or locations applied log entries touched ([`crate::touched::Touched`]), every chunk of a
//! server that died, came back or changed its registration, and chunks an
//! earlier round could not finish with. A new leader's first round, and
//! one round every `full_scan_every` (default [`FULL_SCAN_EVERY`]), look at
//! every chunk.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardfs_proto::ChunkId;
use tracing::{info, warn};

use crate::chunks::ChunkManager;
use crate::cluster::{ServerId, place};
use crate::namespace::ChunkNeed;
use crate::node::MetaNode;
use crate::touched::Touched;
use crate::types::Command;

/// How repair paces itself.
#[derive(Debug, Clone)]
pub struct RepairConfig {
    /// Repair traffic each chunk server may send, and receive, per second.
    pub mb_per_s: u64,
    pub interval: Duration,
    /// A round at this interval looks at every chunk, whatever changed.
    pub full_scan_every: Duration,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            mb_per_s: 100,
            interval: Duration::from_secs(1),
            full_scan_every: FULL_SCAN_EVERY,
        }
    }
}

/// What repair has done since this node last became leader (soft state).
#[derive(Debug, Default)]
pub struct RepairCounters {
    pub copies: AtomicU64,
    pub copied_bytes: AtomicU64,
    pub copy_failures: AtomicU64,
    pub trimmed: AtomicU64,
    /// Chunks looked at by rounds so far (each full round counts them all).
    pub examined: AtomicU64,
    /// Rounds that looked at every chunk.
    pub full_rounds: AtomicU64,
}

/// The leader's repair: its pacing, counters and work in progress, over
/// the chunk servers of a [`ChunkManager`].
pub struct RepairManager {
    chunks: Arc<ChunkManager>,
    config: RepairConfig,
    /// What applied entries changed since the last round (the node's).
    touched: Arc<Mutex<Touched>>,
    pub counters: RepairCounters,
    /// Chunks with a copy or trim under way: never planned twice.
    in_flight: Mutex<HashSet<ChunkId>>,
    /// Chunks the next round must look at again (work not started or
    /// finished without a change to the state).
    again: Mutex<HashSet<ChunkId>>,
    /// The live servers as the last round saw them, and when a round last
    /// looked at every chunk.
    last_round: Mutex<(BTreeSet<ServerId>, Option<Instant>)>,
}

/// By default, a round at this interval looks at every chunk.
pub const FULL_SCAN_EVERY: Duration = Duration::from_secs(30);
/// The chunks one round looks at.
enum Scope {
    All,
    Some(HashSet<ChunkId>),
}

/// A holder must have been heard from this recently for a copy elsewhere
/// to be trimmed.
const TRIM_FRESHNESS: Duration = Duration::from_secs(3);
/// How long one copy may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(60);

/// One chunk that needs work.
struct Need {
    id: ChunkId,
    length: u64,
    wanted: usize,
    /// Live holders (copy sources), draining ones included.
    live: BTreeSet<ServerId>,
    /// Live holders that count toward the replication factor (not draining).
    counted: BTreeSet<ServerId>,
}

impl RepairManager {
    pub fn new(chunks: Arc<ChunkManager>, config: RepairConfig) -> Self {
        let touched = chunks.node().touched();
        Self {
            chunks,
            config,
            touched,
            counters: RepairCounters::default(),
            in_flight: Mutex::default(),
            again: Mutex::default(),
            last_round: Mutex::default(),
        }
    }

    fn node(&self) -> &MetaNode {
        self.chunks.node()
    }

    /// Chunks with a copy or trim under way.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.lock().expect("repair in flight").len() as u64
    }

    /// Runs repair rounds while this node leads, until the task is
    /// aborted.
    pub fn spawn_workers(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let repair = self.clone();
        tokio::spawn(async move {
            // A new leader's first round looks at everything: work the last
            // leader left for later lived only in its memory. The term tells
            // a new leadership even when no round saw this node not leading.
            let mut last_term = None;
            loop {
                tokio::time::sleep(repair.config.interval).await;
                if repair.chunks.ensure_leader().is_err() || repair.chunks.liveness.in_grace() {
                    last_term = None;
                    continue;
                }
                let term = repair.node().current_term();
                let first = last_term != Some(term);
                last_term = Some(term);
                repair.round(first).await;
            }
        })
    }
    /// Plans and starts one round of copies and trims (they run on);
    /// `everything` looks at every chunk rather than those that may have
    /// changed.
    pub async fn round(self: &Arc<Self>, everything: bool) {
        let config = &self.config;
        let (scope, alive) = self.repair_scope(everything, config.full_scan_every);
        let (under, over) = self.repair_needs(&scope, &alive);
        if under.is_empty() && over.is_empty() {
            return;
        }
        let budget_bytes =
            config.mb_per_s.max(1) * (1 << 20) * config.interval.as_millis() as u64 / 1000;
        let mut sent: HashMap<ServerId, u64> = HashMap::new();
        let mut received: HashMap<ServerId, u64> = HashMap::new();
        let candidates = self.chunks.live_candidates();
        let (addrs, zones): (HashMap<ServerId, String>, HashMap<ServerId, String>) =
            self.node().read_local(|s| {
                (
                    s.cluster
                        .servers
                        .iter()
                        .map(|(id, i)| (*id, i.addr.clone()))
                        .collect(),
                    s.cluster
                        .servers
                        .iter()
                        .map(|(id, i)| (*id, i.zone.clone()))
                        .collect(),
                )
            });
        let mut planned = HashMap::new();
        for need in under {
            if !self.claim(need.id) {
                self.look_again(need.id);
                continue;
            }
            // The least busy live holder sends.
            let Some(source) = need
                .live
                .iter()
                .copied()
                .filter(|s| sent.get(s).copied().unwrap_or(0) < budget_bytes)
                .min_by_key(|s| sent.get(s).copied().unwrap_or(0))
            else {
                self.release(need.id);
                continue;
            };
            let used_zones: BTreeSet<String> = need
                .counted
                .iter()
                .filter_map(|s| zones.get(s).cloned())
                .collect();
            let eligible: Vec<_> = candidates
                .iter()
                .filter(|c| received.get(&c.id).copied().unwrap_or(0) < budget_bytes)
                .cloned()
                .collect();
            let targets = place(
                &eligible,
                &need.live,
                &used_zones,
                1,
                need.length,
                &mut planned,
            );
            let Some(target) = targets.first().copied() else {
                self.release(need.id);
                continue;
            };
            *sent.entry(source).or_insert(0) += need.length;
            *received.entry(target).or_insert(0) += need.length;
            // A server removed since the plan was made: leave it for later.
            let (Some(source_addr), Some(target_addr)) =
                (addrs.get(&source).cloned(), addrs.get(&target).cloned())
            else {
                self.release(need.id);
                continue;
            };
            let repair = self.clone();
            tokio::spawn(async move {
                repair
                    .copy_chunk(need, target, &source_addr, &target_addr)
                    .await;
            });
        }
        for (need, extra) in over {
            if !self.claim(need.id) {
                self.look_again(need.id);
                continue;
            }
            let Some(addr) = addrs.get(&extra).cloned() else {
                self.release(need.id);
                continue;
            };
            let repair = self.clone();
            tokio::spawn(async move { repair.trim_chunk(need.id, extra, &addr).await });
        }
    }

    /// Which chunks this round looks at, and the live servers.
    fn repair_scope(
        &self,
        everything: bool,
        full_scan_every: Duration,
    ) -> (Scope, BTreeSet<ServerId>) {
        let touched = std::mem::take(&mut *self.touched.lock().expect("touched"));
        let registered: Vec<ServerId> = self
            .node()
            .read_local(|s| s.cluster.servers.keys().copied().collect());
        let alive: BTreeSet<ServerId> = registered
            .into_iter()
            .filter(|id| self.chunks.liveness.is_alive(*id))
            .collect();
        let again = std::mem::take(&mut *self.again.lock().expect("repair again"));
        let mut last = self.last_round.lock().expect("repair last round");
        let (last_alive, last_full) = &mut *last;
        let changed: BTreeSet<ServerId> = last_alive
            .symmetric_difference(&alive)
            .copied()
            .chain(touched.servers)
            .collect();
        *last_alive = alive.clone();
        if everything
            || touched.everything
            || last_full.is_none_or(|at| at.elapsed() >= full_scan_every)
        {
            *last_full = Some(Instant::now());
            self.counters.full_rounds.fetch_add(1, Ordering::Relaxed);
            return (Scope::All, alive);
        }
        let mut chunks = touched.chunks;
        chunks.extend(again);
        if !changed.is_empty() {
            self.node()
                .read_local(|s| chunks.extend(s.cluster.chunks_of_any(&changed)));
        }
        (Scope::Some(chunks), alive)
    }

    /// Of the chunks in `scope`: those with too few live replicas (fewest
    /// first), and those with a replica too many with the server to trim it
    /// from. Chunks it cannot settle yet are looked at again next round.
    fn repair_needs(
        &self,
        scope: &Scope,
        alive: &BTreeSet<ServerId>,
    ) -> (Vec<Need>, Vec<(Need, ServerId)>) {
        let in_flight = self.in_flight.lock().expect("repair in flight").clone();
        let usage = |s: ServerId| {
            self.chunks
                .liveness
                .usage(s)
                .map(|u| u.used_bytes as f64 / u.capacity_bytes.max(1) as f64)
                .unwrap_or(0.0)
        };
        let mut again = Vec::new();
        let mut examined = 0u64;
        let (mut under, over) = self.node().read_local(|state| {
            let mut under = Vec::new();
            let mut over = Vec::new();
            let mut visit = |id: ChunkId, need: ChunkNeed| {
                examined += 1;
                let ChunkNeed {
                    length,
                    replication: r,
                } = need;
                if in_flight.contains(&id) {
                    again.push(id);
                    return;
                }
                let draining =
                    |h: &ServerId| state.cluster.servers.get(h).is_some_and(|i| i.draining);
                // A chunk without a live copy cannot be repaired (it is lost
                // until a holder returns), and most have exactly R live
                // copies on servers that are not draining: settle those
                // without building anything.
                let (mut live_count, mut counted_count) = (0, 0);
                for holder in state.cluster.holders(&id) {
                    if alive.contains(&holder) {
                        live_count += 1;
                        counted_count += usize::from(!draining(&holder));
                    }
                }
                if live_count == 0 || (live_count == r && counted_count == r) {
                    return;
                }
                let live: BTreeSet<ServerId> = state
                    .cluster
                    .holders(&id)
                    .filter(|h| alive.contains(h))
                    .collect();
                let counted: BTreeSet<ServerId> =
                    live.iter().copied().filter(|h| !draining(h)).collect();
                let need = Need {
                    id,
                    length,
                    wanted: r,
                    live,
                    counted,
                };
                let fresh = need
                    .counted
                    .iter()
                    .all(|h| self.chunks.liveness.seen_within(*h, TRIM_FRESHNESS));
                if need.counted.len() < r {
                    under.push(need);
                } else if !fresh {
                    // A copy too many, but a holder was not heard from
                    // lately: trim later.
                    again.push(id);
                } else if need.live.len() > need.counted.len() {
                    // Enough copies elsewhere: the draining server's goes.
                    let extra = need
                        .live
                        .iter()
                        .copied()
                        .find(|h| draining(h))
                        .expect("a draining holder");
                    over.push((need, extra));
                } else if need.counted.len() > r {
                    // Trim where the zone is doubled, else the fullest.
                    let zone_of =
                        |h: &ServerId| state.cluster.servers.get(h).map(|i| i.zone.clone());
                    let extra = need
                        .counted
                        .iter()
                        .copied()
                        .max_by(|a, b| {
                            let doubled = |s: &ServerId| {
                                need.counted
                                    .iter()
                                    .filter(|o| zone_of(o) == zone_of(s))
                                    .count()
                                    > 1
                            };
                            doubled(a)
                                .cmp(&doubled(b))
                                .then(usage(*a).total_cmp(&usage(*b)))
                                .then(a.cmp(b))
                        })
                        .expect("holders");
                    over.push((need, extra));
                }
            };
            match scope {
                Scope::All => {
                    for (id, need) in state.namespace.chunk_needs() {
                        visit(id, need);
                    }
                }
                Scope::Some(chunks) => {
                    for id in chunks {
                        if let Some(need) = state.namespace.chunk_need(id) {
                            visit(*id, need);
                        }
                    }
                }
            }
            (under, over)
        });
        self.counters
            .examined
            .fetch_add(examined, Ordering::Relaxed);
        self.again.lock().expect("repair again").extend(again);
        under.sort_by_key(|n| (n.counted.len(), n.wanted, n.id));
        (under, over)
    }

    async fn copy_chunk(&self, need: Need, target: ServerId, source: &str, target_addr: &str) {
        let id = need.id;
        let result = match self.chunks.chunk_client(target, target_addr) {
            Ok(client) => {
                tokio::time::timeout(COPY_TIMEOUT, client.replicate(id, need.length, source)).await
            }
            Err(e) => {
                warn!(chunk = %id, target, "repair: {e}");
                self.release(id);
                return;
            }
        };
        match result {
            Ok(Ok(_)) => {
                // Record the new location now rather than at the target's
                // next heartbeat, so the next round does not copy it again.
                let report = Command::ChunkReport {
                    server: target,
                    added: vec![id],
                    removed: Vec::new(),
                    replace: false,
                };
                match self.node().write(report).await {
                    Ok(_) => {
                        self.counters.copies.fetch_add(1, Ordering::Relaxed);
                        self.counters
                            .copied_bytes
                            .fetch_add(need.length, Ordering::Relaxed);
                        info!(chunk = %id, from = source, to = target_addr,
                            replicas = need.counted.len() + 1, wanted = need.wanted,
                            "repair: copied");
                    }
                    Err(e) => warn!(chunk = %id, "repair: recording the copy failed: {e}"),
                }
            }
            Ok(Err(status)) => {
                self.counters.copy_failures.fetch_add(1, Ordering::Relaxed);
                warn!(chunk = %id, from = source, to = target_addr,
                    "repair: copy failed: {}", status.message());
            }
            Err(_) => {
                self.counters.copy_failures.fetch_add(1, Ordering::Relaxed);
                warn!(chunk = %id, from = source, to = target_addr, "repair: copy timed out");
            }
        }
        self.release(id);
    }

    async fn trim_chunk(&self, id: ChunkId, server: ServerId, addr: &str) {
        // Forget the location first: readers stop being sent there before
        // the bytes go.
        let report = Command::ChunkReport {
            server,
            added: Vec::new(),
            removed: vec![id],
            replace: false,
        };
        if let Err(e) = self.node().write(report).await {
            warn!(chunk = %id, server, "repair: recording a trim failed: {e}");
            self.release(id);
            return;
        }
        match self.chunks.chunk_client(server, addr) {
            Ok(client) => match client.delete(&[id]).await {
                Ok(_) => {
                    self.counters.trimmed.fetch_add(1, Ordering::Relaxed);
                    info!(chunk = %id, server, "repair: trimmed an extra replica");
                }
                Err(status) => {
                    warn!(chunk = %id, server, "repair: trimming failed: {}", status.message())
                }
            },
            Err(e) => warn!(chunk = %id, server, "repair: {e}"),
        }
        self.release(id);
    }
}

impl RepairManager {
    /// Marks `id` as being worked on; false when it already was.
    fn claim(&self, id: ChunkId) -> bool {
        self.in_flight.lock().expect("repair in flight").insert(id)
    }

    /// Ends the work on `id`; the next round looks at it again (a copy or
    /// trim that failed changed nothing that would bring it back).
    fn release(&self, id: ChunkId) {
        self.in_flight.lock().expect("repair in flight").remove(&id);
        self.look_again(id);
    }

    fn look_again(&self, id: ChunkId) {
        self.again.lock().expect("repair again").insert(id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::metaserver::LeaderSettings;
    use crate::metaserver::testing::{chunk, chunk_server, commit, lone_leader};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_finds_missing_and_extra_replicas_and_retries_failed_copies() {
        let dir = tempfile::tempdir().unwrap();
        let m = lone_leader(dir.path(), &LeaderSettings::default()).await;
        let (short, extra, fine) = (chunk("short"), chunk("extra"), chunk("fine"));
        // Zones a, a, b, c; server 2 the fullest.
        chunk_server(&m, 1, "a", 10, &[short, extra, fine]).await;
        chunk_server(&m, 2, "a", 900, &[extra, fine]).await;
        chunk_server(&m, 3, "b", 20, &[short, extra, fine]).await;
        chunk_server(&m, 4, "c", 30, &[extra]).await;
        commit(&m, "/f", &[short, extra, fine], 3).await;

        let repair = &m.repair;
        let alive: BTreeSet<ServerId> = (1..=4).collect();
        let (under, over) = repair.repair_needs(&Scope::All, &alive);
        let under: Vec<ChunkId> = under.iter().map(|n| n.id).collect();
        assert_eq!(under, vec![short]);
        // Four copies of `extra`: the one in the doubled zone on the
        // fuller server goes.
        let over: Vec<(ChunkId, ServerId)> = over.iter().map(|(n, s)| (n.id, *s)).collect();
        assert_eq!(over, vec![(extra, 2)]);
        assert_eq!(repair.counters.examined.load(Ordering::Relaxed), 3);

        // A round starts the copy (to server 2 or 4, which nothing serves)
        // and the trim; both fail, are counted, and come back next round.
        repair.round(true).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while repair.in_flight() > 0 {
            assert!(Instant::now() < deadline, "repair work never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(repair.counters.copy_failures.load(Ordering::Relaxed), 1);
        assert_eq!(repair.counters.copies.load(Ordering::Relaxed), 0);
        let again = repair.again.lock().unwrap().clone();
        assert!(
            again.contains(&short) && again.contains(&extra),
            "{again:?}"
        );
        // The trim forgot the location first: 3 copies of `extra` remain.
        let holders = m
            .node
            .read_local(|s| s.cluster.holders(&extra).collect::<BTreeSet<_>>());
        assert_eq!(holders, [1, 3, 4].into_iter().collect());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn later_rounds_look_only_at_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let m = lone_leader(dir.path(), &LeaderSettings::default()).await;
        let chunks: Vec<ChunkId> = (0..20).map(|i| chunk(&format!("c{i}"))).collect();
        for id in 1..=3 {
            chunk_server(&m, id, &format!("z{id}"), 0, &chunks).await;
        }
        commit(&m, "/all", &chunks, 3).await;
        let repair = &m.repair;
        let (scope, _) = repair.repair_scope(true, Duration::from_secs(3600));
        assert!(matches!(scope, Scope::All));
        // Nothing changed since: an empty scope.
        let (scope, _) = repair.repair_scope(false, Duration::from_secs(3600));
        assert!(matches!(&scope, Scope::Some(c) if c.is_empty()));
        // A new file touches its chunks only.
        let new = chunk("new");
        crate::metaserver::testing::beat(&m, 1, 0, &[new]).await;
        commit(&m, "/new", &[new], 3).await;
        let (scope, _) = repair.repair_scope(false, Duration::from_secs(3600));
        assert!(matches!(&scope, Scope::Some(c) if c.len() == 1 && c.contains(&new)));
    }
}

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
//! or locations applied log entries touched ([`Touched`]), every chunk of a
//! server that died, came back or changed its registration, and chunks an
//! earlier round could not finish with. A new leader's first round, and
//! one round every `full_scan_every` (default [`FULL_SCAN_EVERY`]), look at
//! every chunk.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shardfs_proto::ChunkId;
use tracing::{info, warn};

use crate::cluster::{ClusterChange, ServerId, place};
use crate::namespace::ChunkNeed;
use crate::node::MetaNode;
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
/// Most touched chunks kept; past it the next round looks at everything.
const TOUCHED_MAX: usize = 100_000;

/// What applied log entries changed since repair last looked: chunks whose
/// files or locations changed, and chunk servers whose registration did.
/// Every metaserver records it; the leader's repair drains it. Past a bound
/// (on a follower, say, which nobody drains) it becomes "everything".
#[derive(Debug, Default)]
pub struct Touched {
    chunks: HashSet<ChunkId>,
    servers: BTreeSet<ServerId>,
    everything: bool,
}

impl Touched {
    /// Records what one batch of applied entries changed.
    pub fn record(&mut self, chunks: &[ChunkId], cluster: &[ClusterChange]) {
        if self.everything {
            return;
        }
        self.chunks.extend(chunks.iter().copied());
        for change in cluster {
            match change {
                ClusterChange::Server(id, _) => {
                    self.servers.insert(*id);
                }
                ClusterChange::Locations(chunk, _) => {
                    self.chunks.insert(*chunk);
                }
            }
        }
        if self.chunks.len() > TOUCHED_MAX {
            self.everything();
        }
    }

    /// Everything may have changed (a snapshot replaced the state).
    pub fn everything(&mut self) {
        *self = Self {
            everything: true,
            ..Self::default()
        };
    }
}

/// The chunks one round looks at.
enum Scope {
    All,
    Some(HashSet<ChunkId>),
}

impl RepairCounters {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.lock().expect("repair in flight").len() as u64
    }
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

/// Runs repair rounds until the process ends.
pub fn spawn(node: MetaNode, config: RepairConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // A new leader's first round looks at everything: work the last
        // leader left for later lived only in its memory. The term tells a
        // new leadership even when no round saw this node not leading.
        let mut last_term = None;
        loop {
            tokio::time::sleep(config.interval).await;
            if node.ensure_leader().is_err() || node.liveness.in_grace() {
                last_term = None;
                continue;
            }
            let term = node.raft.metrics().borrow().current_term;
            let first = last_term != Some(term);
            last_term = Some(term);
            node.repair_round(&config, first).await;
        }
    })
}

impl MetaNode {
    /// Plans and starts one round of copies and trims (they run on);
    /// `everything` looks at every chunk rather than those that may have
    /// changed.
    pub async fn repair_round(&self, config: &RepairConfig, everything: bool) {
        let (scope, alive) = self.repair_scope(everything, config.full_scan_every);
        let (under, over) = self.repair_needs(&scope, &alive);
        if under.is_empty() && over.is_empty() {
            return;
        }
        let budget_bytes =
            config.mb_per_s.max(1) * (1 << 20) * config.interval.as_millis() as u64 / 1000;
        let mut sent: HashMap<ServerId, u64> = HashMap::new();
        let mut received: HashMap<ServerId, u64> = HashMap::new();
        let candidates = self.live_candidates();
        let (addrs, zones): (HashMap<ServerId, String>, HashMap<ServerId, String>) = self
            .read_local(|s| {
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
            if !self.repair.claim(need.id) {
                self.repair.look_again(need.id);
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
                self.repair.release(need.id);
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
                self.repair.release(need.id);
                continue;
            };
            *sent.entry(source).or_insert(0) += need.length;
            *received.entry(target).or_insert(0) += need.length;
            // A server removed since the plan was made: leave it for later.
            let (Some(source_addr), Some(target_addr)) =
                (addrs.get(&source).cloned(), addrs.get(&target).cloned())
            else {
                self.repair.release(need.id);
                continue;
            };
            let node = self.clone();
            tokio::spawn(async move {
                node.copy_chunk(need, target, &source_addr, &target_addr)
                    .await;
            });
        }
        for (need, extra) in over {
            if !self.repair.claim(need.id) {
                self.repair.look_again(need.id);
                continue;
            }
            let Some(addr) = addrs.get(&extra).cloned() else {
                self.repair.release(need.id);
                continue;
            };
            let node = self.clone();
            tokio::spawn(async move { node.trim_chunk(need.id, extra, &addr).await });
        }
    }

    /// Which chunks this round looks at, and the live servers.
    fn repair_scope(
        &self,
        everything: bool,
        full_scan_every: Duration,
    ) -> (Scope, BTreeSet<ServerId>) {
        let touched = std::mem::take(&mut *self.touched.lock().expect("touched"));
        let registered: Vec<ServerId> =
            self.read_local(|s| s.cluster.servers.keys().copied().collect());
        let alive: BTreeSet<ServerId> = registered
            .into_iter()
            .filter(|id| self.liveness.is_alive(*id))
            .collect();
        let again = std::mem::take(&mut *self.repair.again.lock().expect("repair again"));
        let mut last = self.repair.last_round.lock().expect("repair last round");
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
            self.repair.full_rounds.fetch_add(1, Ordering::Relaxed);
            return (Scope::All, alive);
        }
        let mut chunks = touched.chunks;
        chunks.extend(again);
        if !changed.is_empty() {
            self.read_local(|s| chunks.extend(s.cluster.chunks_of_any(&changed)));
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
        let in_flight = self
            .repair
            .in_flight
            .lock()
            .expect("repair in flight")
            .clone();
        let usage = |s: ServerId| {
            self.liveness
                .usage(s)
                .map(|u| u.used_bytes as f64 / u.capacity_bytes.max(1) as f64)
                .unwrap_or(0.0)
        };
        let mut again = Vec::new();
        let mut examined = 0u64;
        let (mut under, over) = self.read_local(|state| {
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
                    .all(|h| self.liveness.seen_within(*h, TRIM_FRESHNESS));
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
        self.repair.examined.fetch_add(examined, Ordering::Relaxed);
        self.repair
            .again
            .lock()
            .expect("repair again")
            .extend(again);
        under.sort_by_key(|n| (n.counted.len(), n.wanted, n.id));
        (under, over)
    }

    async fn copy_chunk(&self, need: Need, target: ServerId, source: &str, target_addr: &str) {
        let id = need.id;
        let result = match self.chunk_client(target, target_addr) {
            Ok(client) => {
                tokio::time::timeout(COPY_TIMEOUT, client.replicate(id, need.length, source)).await
            }
            Err(e) => {
                warn!(chunk = %id, target, "repair: {e}");
                self.repair.release(id);
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
                match self.write(report).await {
                    Ok(_) => {
                        self.repair.copies.fetch_add(1, Ordering::Relaxed);
                        self.repair
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
                self.repair.copy_failures.fetch_add(1, Ordering::Relaxed);
                warn!(chunk = %id, from = source, to = target_addr,
                    "repair: copy failed: {}", status.message());
            }
            Err(_) => {
                self.repair.copy_failures.fetch_add(1, Ordering::Relaxed);
                warn!(chunk = %id, from = source, to = target_addr, "repair: copy timed out");
            }
        }
        self.repair.release(id);
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
        if let Err(e) = self.write(report).await {
            warn!(chunk = %id, server, "repair: recording a trim failed: {e}");
            self.repair.release(id);
            return;
        }
        match self.chunk_client(server, addr) {
            Ok(client) => match client.delete(&[id]).await {
                Ok(_) => {
                    self.repair.trimmed.fetch_add(1, Ordering::Relaxed);
                    info!(chunk = %id, server, "repair: trimmed an extra replica");
                }
                Err(status) => {
                    warn!(chunk = %id, server, "repair: trimming failed: {}", status.message())
                }
            },
            Err(e) => warn!(chunk = %id, server, "repair: {e}"),
        }
        self.repair.release(id);
    }
}

impl RepairCounters {
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

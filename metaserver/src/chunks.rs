//! [`ChunkManager`]: the leader's dealings with chunk servers, and the
//! state they need: registration, heartbeats and their chunk reports
//! (liveness, usage, scrub reports), allocation of new replicas (recent
//! placements, allocation clocks that keep a put's chunks from garbage
//! collection), bad replicas readers report, the replica check before a
//! commit, the cluster view for status, and one cached client per chunk
//! server (which repair and garbage collection use too).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardfs_proto::ChunkId;
use shardfs_proto::capability::{self, Access, ClusterKey, ServerKey, new_cluster_key};
use shardfs_proto::chunk::v1::ChunkVerdict;
use shardfs_proto::chunk_client::{ChunkClient, ChunkClientPool};
use tracing::warn;

use crate::cluster::{Candidate, ChunkServerInfo, ServerId, place};
use crate::error::MetaError;
use crate::liveness::{Liveness, ScrubReport, Usage};
use crate::namespace::FileMeta;
use crate::node::MetaNode;
use crate::types::{Command, Outcome};

/// How long the leader waits for a chunk server to confirm it holds chunks.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the leader waits for a chunk server to re-hash a reported copy.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long placements count toward a server's usage before its heartbeats
/// (every second) are trusted to include them.
const RECENT_PLACEMENTS_WINDOW: Duration = Duration::from_secs(2);

/// Bytes placed on each server recently, and since when (leader soft state).
type RecentPlacements = (Instant, HashMap<ServerId, u64>);

/// Bad replicas reported by readers to this node while it led.
#[derive(Debug, Default)]
pub struct BadReplicaCounts {
    pub reported: AtomicU64,
    pub confirmed: AtomicU64,
}

/// A heartbeat as the service received it.
pub struct Beat {
    pub server: ServerId,
    pub usage: Usage,
    pub added: Vec<ChunkId>,
    pub removed: Vec<ChunkId>,
    pub full_inventory: bool,
    pub full_inventory_first: bool,
    pub scrub: ScrubReport,
}

/// Where one chunk goes.
#[derive(Debug, Clone)]
pub struct Placement {
    pub id: ChunkId,
    pub stored_at: Vec<String>,
    /// Servers to write to: id and address.
    pub targets: Vec<(ServerId, String)>,
}

/// One chunk server as status shows it.
#[derive(Debug, Clone)]
pub struct ServerView {
    pub id: ServerId,
    pub info: ChunkServerInfo,
    pub alive: bool,
    pub chunks: u64,
    pub usage: Option<Usage>,
    pub scrub: Option<ScrubReport>,
}

/// When chunks were last allocated to a writer: garbage collection leaves
/// a chunk allocated within its grace period alone, so a put in flight
/// keeps its chunks (leader soft state).
#[derive(Debug, Default)]
pub struct Allocations {
    at: Mutex<HashMap<ChunkId, Instant>>,
}

impl Allocations {
    /// Restarts the clocks of chunks just allocated to a writer.
    pub fn touch(&self, ids: impl IntoIterator<Item = ChunkId>) {
        let now = Instant::now();
        let mut at = self.at.lock().expect("allocation clocks");
        for id in ids {
            at.insert(id, now);
        }
    }

    /// True if `id` was allocated less than `within` ago.
    pub fn within(&self, id: &ChunkId, within: Duration) -> bool {
        let at = self.at.lock().expect("allocation clocks");
        at.get(id).is_some_and(|at| at.elapsed() < within)
    }

    /// Forgets allocations older than `age`.
    pub fn forget_older_than(&self, age: Duration) {
        let mut at = self.at.lock().expect("allocation clocks");
        at.retain(|_, at| at.elapsed() < age);
    }
}

/// The leader's dealings with chunk servers (see the module docs).
pub struct ChunkManager {
    node: MetaNode,
    /// Chunk server liveness (meaningful on the leader).
    pub liveness: Liveness,
    /// Bad replicas readers reported here.
    pub bad_replicas: BadReplicaCounts,
    /// Placements not yet reflected in heartbeats (see `allocate`).
    recent_placements: Mutex<RecentPlacements>,
    pub allocations: Allocations,
    /// One cached client per chunk server address.
    clients: ChunkClientPool,
    /// How long the capabilities handed out are valid.
    capability_ttl: Duration,
}

/// A commit that gives `chunk` another length than it has (`by` says who
/// knows better).
fn length_mismatch(chunk: &ChunkId, claimed: u64, actual: u64, by: &str) -> MetaError {
    MetaError::InvalidArgument(format!(
        "chunk {chunk}: the file says {claimed} bytes, but {by} {actual} bytes"
    ))
}

impl ChunkManager {
    /// The chunk server dealings of `node`; a chunk server unheard of for
    /// `dead_after` is dead; capabilities are valid for `capability_ttl`.
    pub fn new(node: MetaNode, dead_after: Duration, capability_ttl: Duration) -> Self {
        Self {
            capability_ttl,
            clients: ChunkClientPool::new(node.security.clone()),
            node,
            liveness: Liveness::new(dead_after),
            bad_replicas: BadReplicaCounts::default(),
            recent_placements: Mutex::new((Instant::now(), HashMap::new())),
            allocations: Allocations::default(),
        }
    }

    pub fn node(&self) -> &MetaNode {
        &self.node
    }

    /// Fails with NotLeader unless this node leads; a new term starts a
    /// fresh liveness grace period (a new leader cannot yet tell dead
    /// chunk servers from live ones).
    pub fn ensure_leader(&self) -> Result<(), MetaError> {
        self.liveness.observe_term(self.node.current_term());
        self.node.ensure_leader()
    }

    async fn write(&self, command: Command) -> Result<Outcome, MetaError> {
        self.node.write(command).await
    }

    fn read_local<T>(&self, read: impl FnOnce(&crate::state::State) -> T) -> T {
        self.node.read_local(read)
    }

    /// A cached client for chunk server `id` at `addr`.
    pub fn chunk_client(&self, id: ServerId, addr: &str) -> Result<ChunkClient, MetaError> {
        self.clients.get(addr).map_err(|e| {
            MetaError::InvalidArgument(format!("chunk server {id} has a bad address {addr:?}: {e}"))
        })
    }

    pub async fn register_chunk_server(
        &self,
        id: ServerId,
        info: ChunkServerInfo,
    ) -> Result<(), MetaError> {
        if id == 0 || info.addr.is_empty() {
            return Err(MetaError::InvalidArgument(
                "a chunk server registers with a non-zero id and an address".into(),
            ));
        }
        self.ensure_leader()?;
        let capacity = info.capacity_bytes;
        self.write(Command::RegisterChunkServer { id, info })
            .await?;
        self.liveness.heartbeat(
            id,
            Usage {
                used_bytes: 0,
                free_bytes: capacity,
                capacity_bytes: capacity,
            },
        );
        Ok(())
    }

    /// Records a heartbeat; returns false when the server must register
    /// again (this group does not know it).
    pub async fn heartbeat(&self, beat: Beat) -> Result<bool, MetaError> {
        self.ensure_leader()?;
        if !self.read_local(|s| s.cluster.servers.contains_key(&beat.server)) {
            return Ok(false);
        }
        self.liveness.heartbeat(beat.server, beat.usage);
        self.liveness.record_scrub(beat.server, beat.scrub);
        let replace = beat.full_inventory && beat.full_inventory_first;
        // Each location enters the state once: the chunks a commit already
        // confirmed with this server (or an earlier beat reported) are not
        // written again. A whole inventory replaces what is recorded.
        let (added, removed) = if replace {
            (beat.added, beat.removed)
        } else {
            self.read_local(|s| s.cluster.news(beat.server, beat.added, beat.removed))
        };
        if replace || !added.is_empty() || !removed.is_empty() {
            self.write(Command::ChunkReport {
                server: beat.server,
                added,
                removed,
                replace,
            })
            .await?;
        }
        Ok(true)
    }

    /// Live chunk servers with their usage.
    pub(crate) fn live_candidates(&self) -> Vec<Candidate> {
        let servers = self.read_local(|s| s.cluster.servers.clone());
        servers
            .into_iter()
            .filter(|(id, info)| self.liveness.is_alive(*id) && !info.draining)
            .map(|(id, info)| {
                let usage = self.liveness.usage(id).unwrap_or(Usage {
                    used_bytes: 0,
                    free_bytes: info.capacity_bytes,
                    capacity_bytes: info.capacity_bytes,
                });
                Candidate {
                    id,
                    zone: info.zone,
                    used_bytes: usage.used_bytes,
                    capacity_bytes: usage.capacity_bytes.max(1),
                    free_bytes: usage.free_bytes,
                }
            })
            .collect()
    }

    /// Per chunk: the live servers that already hold it, and new targets
    /// so that it ends up on `replication` distinct live servers.
    /// Servers whose address is in `exclude` are neither targets nor
    /// counted as holders.
    pub fn allocate(
        &self,
        chunks: &[(ChunkId, u64)],
        replication: u32,
        exclude: &[String],
    ) -> Result<Vec<Placement>, MetaError> {
        self.ensure_leader()?;
        // The writer's chunks must outlive its put: restart their clocks.
        self.allocations.touch(chunks.iter().map(|(id, _)| *id));
        let r = replication as usize;
        let mut candidates = self.live_candidates();
        let excluded = self.read_local(|s| {
            s.cluster
                .servers
                .iter()
                .filter(|(_, info)| exclude.contains(&info.addr))
                .map(|(id, _)| *id)
                .collect::<BTreeSet<ServerId>>()
        });
        candidates.retain(|c| !excluded.contains(&c.id));
        if candidates.len() < r {
            return Err(self.cannot_place(r, &candidates, &excluded));
        }
        let by_id: HashMap<ServerId, &Candidate> = candidates.iter().map(|c| (c.id, c)).collect();
        // One look at the state for the whole batch.
        let (addrs, live_holders) = self.read_local(|s| {
            let addrs: HashMap<ServerId, String> = s
                .cluster
                .servers
                .iter()
                .map(|(id, info)| (*id, info.addr.clone()))
                .collect();
            let holders: Vec<BTreeSet<ServerId>> = chunks
                .iter()
                .map(|(id, _)| {
                    s.cluster
                        .holders(id)
                        .filter(|h| by_id.contains_key(h))
                        .collect()
                })
                .collect();
            (addrs, holders)
        });
        // Bytes placed since the servers last reported their usage: a
        // batch spreads by itself (`planned`), and this spreads the batches
        // of concurrent writers too.
        let mut recent = self.recent_placements.lock().expect("recent placements");
        if recent.0.elapsed() > RECENT_PLACEMENTS_WINDOW {
            *recent = (Instant::now(), HashMap::new());
        }
        let mut planned = recent.1.clone();
        let mut placements = Vec::with_capacity(chunks.len());
        for ((id, length), holders) in chunks.iter().zip(live_holders) {
            let zones: BTreeSet<String> = holders.iter().map(|h| by_id[h].zone.clone()).collect();
            let need = r.saturating_sub(holders.len());
            let targets = place(&candidates, &holders, &zones, need, *length, &mut planned);
            if targets.len() < need {
                return Err(MetaError::FailedPrecondition(format!(
                    "cannot place {r} replicas of chunk {id}: only {} of the {need} new one(s) fit ({})",
                    targets.len(),
                    self.server_states(&excluded)
                )));
            }
            for target in &targets {
                *recent.1.entry(*target).or_insert(0) += *length;
            }
            placements.push(Placement {
                id: *id,
                stored_at: holders.iter().map(|h| addrs[h].clone()).collect(),
                targets: targets.iter().map(|t| (*t, addrs[t].clone())).collect(),
            });
        }
        Ok(placements)
    }

    /// Why `r` replicas cannot be placed on `candidates`, in words, with
    /// every chunk server's state. Not worth a retry (a new leader counts
    /// every registered server alive until it knows better), so the writer
    /// hears the cause at once.
    fn cannot_place(
        &self,
        r: usize,
        candidates: &[Candidate],
        excluded: &BTreeSet<ServerId>,
    ) -> MetaError {
        MetaError::FailedPrecondition(format!(
            "cannot place {r} replicas: {} chunk server(s) can take them ({})",
            candidates.len(),
            self.server_states(excluded)
        ))
    }

    /// Every registered chunk server and its state, for error messages:
    /// `1 at 127.0.0.1:7201 alive, 2 at ... dead, ...`.
    fn server_states(&self, excluded: &BTreeSet<ServerId>) -> String {
        let servers = self.read_local(|s| s.cluster.servers.clone());
        if servers.is_empty() {
            return "none is registered".into();
        }
        servers
            .iter()
            .map(|(id, info)| {
                let state = if excluded.contains(id) {
                    "left out by the writer"
                } else if !self.liveness.is_alive(*id) {
                    "dead"
                } else if info.draining {
                    "draining"
                } else if self.liveness.usage(*id).is_some_and(|u| u.free_bytes == 0) {
                    "full"
                } else {
                    "alive"
                };
                format!("{id} at {} {state}", info.addr)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Removes chunk server `id` from the cluster, only when no chunk of a
    /// file would be left with fewer live replicas than its R: a live
    /// server must be drained first; a dead one only after repair.
    pub async fn remove_chunk_server(&self, id: ServerId) -> Result<(), MetaError> {
        self.ensure_leader()?;
        if self.liveness.in_grace() {
            return Err(MetaError::Unavailable(
                "this leader is new and cannot yet tell live chunk servers from dead ones; try again in a few seconds".into(),
            ));
        }
        let checked = self.read_local(|s| {
            s.cluster.servers.get(&id)?;
            let short = s
                .cluster
                .chunks_of(id)
                .iter()
                .filter(|c| {
                    let Some(need) = s.namespace.chunk_need(c) else {
                        return false; // garbage: nothing to keep
                    };
                    let elsewhere = s
                        .cluster
                        .holders(c)
                        .filter(|h| *h != id && self.liveness.is_alive(*h))
                        .filter(|h| s.cluster.servers.get(h).is_some_and(|i| !i.draining))
                        .count();
                    elsewhere < need.replication
                })
                .count();
            Some((self.liveness.is_alive(id), short))
        });
        let Some((alive, short)) = checked else {
            return Err(MetaError::InvalidArgument(format!(
                "no chunk server {id} is registered"
            )));
        };
        if short > 0 {
            return Err(MetaError::FailedPrecondition(format!(
                "chunk server {id} holds {short} chunk(s) with too few replicas elsewhere: {}",
                if alive {
                    format!("drain it first (shardfs cluster drain {id})")
                } else {
                    "wait until repair has copied them".to_string()
                }
            )));
        }
        self.write(Command::RemoveChunkServer { id }).await?;
        Ok(())
    }

    /// Per chunk: the addresses of live servers that reported holding it.
    pub fn locate(&self, chunks: &[ChunkId]) -> Result<Vec<Vec<(ServerId, String)>>, MetaError> {
        self.ensure_leader()?;
        Ok(self.read_local(|s| {
            chunks
                .iter()
                .map(|c| {
                    s.cluster
                        .holders(c)
                        .filter(|h| self.liveness.is_alive(*h))
                        .filter_map(|h| s.cluster.servers.get(&h).map(|i| (h, i.addr.clone())))
                        .collect()
                })
                .collect()
        }))
    }

    /// The cluster key capabilities are made with. The first leader asked
    /// for it makes one and commits it (a racing proposal loses: the state
    /// keeps the first key applied).
    pub async fn cluster_key(&self) -> Result<ClusterKey, MetaError> {
        if let Some(key) = self.read_local(|s| s.capability_key) {
            return Ok(key);
        }
        self.ensure_leader()?;
        let key = new_cluster_key().map_err(MetaError::Unavailable)?;
        self.write(Command::SetCapabilityKey { key }).await?;
        self.read_local(|s| s.capability_key).ok_or_else(|| {
            MetaError::Unavailable("the capability key is not applied yet; try again".into())
        })
    }

    /// The key of chunk server `id` (see `shardfs_proto::capability`).
    pub async fn server_key(&self, id: ServerId) -> Result<ServerKey, MetaError> {
        Ok(ServerKey::derive(&self.cluster_key().await?, id))
    }

    /// Capabilities for `access` to chunks on their servers, valid for the
    /// configured time: `grants[i][j]` for `(chunks[i], servers[i][j])`.
    pub async fn grant(
        &self,
        access: Access,
        chunks: &[ChunkId],
        servers: &[Vec<ServerId>],
    ) -> Result<Vec<Vec<Bytes>>, MetaError> {
        let cluster = self.cluster_key().await?;
        let expires = capability::now_ms().saturating_add(self.capability_ttl.as_millis() as u64);
        let mut keys: HashMap<ServerId, ServerKey> = HashMap::new();
        Ok(chunks
            .iter()
            .zip(servers)
            .map(|(chunk, servers)| {
                servers
                    .iter()
                    .map(|server| {
                        keys.entry(*server)
                            .or_insert_with(|| ServerKey::derive(&cluster, *server))
                            .mint(access, chunk, expires)
                    })
                    .collect()
            })
            .collect())
    }

    /// A reader got bytes that do not match `chunk` from the server at
    /// `addr`. That server re-hashes its copy; when it is bad it is
    /// quarantined there, and the location is dropped here at once rather
    /// than at the next heartbeat. Returns whether the server confirmed it.
    pub async fn report_bad_replica(
        &self,
        chunk: ChunkId,
        addr: &str,
        reason: &str,
    ) -> Result<bool, MetaError> {
        self.ensure_leader()?;
        let server = self.read_local(|s| {
            s.cluster
                .servers
                .iter()
                .find(|(_, info)| info.addr == addr)
                .map(|(id, _)| *id)
        });
        let Some(server) = server else {
            return Err(MetaError::InvalidArgument(format!(
                "no chunk server is registered at {addr}"
            )));
        };
        self.bad_replicas.reported.fetch_add(1, Ordering::Relaxed);
        warn!(chunk = %chunk, server, addr, reason, "reader reported a bad replica");
        let client = self.chunk_client(server, addr)?;
        let verdict = tokio::time::timeout(VERIFY_TIMEOUT, client.verify(&[chunk])).await;
        let confirmed = match verdict {
            Ok(Ok(verdicts)) => verdicts.first() == Some(&ChunkVerdict::Corrupt),
            Ok(Err(status)) => {
                warn!(chunk = %chunk, server, "could not verify the reported replica: {status}");
                false
            }
            Err(_) => {
                warn!(chunk = %chunk, server, "verifying the reported replica timed out");
                false
            }
        };
        if confirmed {
            self.bad_replicas.confirmed.fetch_add(1, Ordering::Relaxed);
            self.write(Command::ChunkReport {
                server,
                added: Vec::new(),
                removed: vec![chunk],
                replace: false,
            })
            .await?;
        }
        Ok(confirmed)
    }

    /// Commits `file` once every chunk is stored on at least min(R, 2) live
    /// chunk servers, as those servers themselves confirm: locations not
    /// yet reported by heartbeat are checked with the servers directly (and
    /// recorded, up to R of them). A retry of a commit already applied
    /// (same `request_id`) gets the first answer.
    pub async fn commit_file(
        &self,
        path: String,
        file: FileMeta,
        if_absent: bool,
        request_id: &[u8],
        at_ms: u64,
    ) -> Result<Outcome, MetaError> {
        self.ensure_leader()?;
        if !request_id.is_empty()
            && let Some(first) = self.read_local(|s| s.retries.get(request_id).cloned())
        {
            return Ok(first.0?);
        }
        let min = file.replication.min(2) as usize;
        let live: Vec<(ServerId, String)> = self.read_local(|s| {
            s.cluster
                .servers
                .iter()
                .filter(|(id, _)| self.liveness.is_alive(**id))
                .map(|(id, info)| (*id, info.addr.clone()))
                .collect()
        });
        let live_ids: BTreeSet<ServerId> = live.iter().map(|(id, _)| *id).collect();
        // Each distinct chunk with the length the file gives it.
        let mut claimed: HashMap<ChunkId, u64> = HashMap::new();
        let mut chunks: Vec<ChunkId> = Vec::new();
        for chunk in &file.chunks {
            match claimed.insert(chunk.id, chunk.length) {
                None => chunks.push(chunk.id),
                Some(other) if other != chunk.length => {
                    return Err(MetaError::InvalidArgument(format!(
                        "chunk {} appears in the file with two lengths ({other} and {} bytes)",
                        chunk.id, chunk.length
                    )));
                }
                Some(_) => {}
            }
        }
        // Live holders as heartbeats reported them; a chunk a committed file
        // uses has a known length, the others must have theirs confirmed by
        // a chunk server (a file naming a real chunk with a wrong length
        // could never be read).
        let (mut known, mut unvouched) = self.read_local(|s| {
            let mut unvouched = BTreeSet::new();
            let mut known = HashMap::with_capacity(chunks.len());
            for c in &chunks {
                match s.namespace.chunk_need(c) {
                    Some(need) if need.length != claimed[c] => {
                        return Err(length_mismatch(
                            c,
                            claimed[c],
                            need.length,
                            "committed files use it as",
                        ));
                    }
                    Some(_) => {}
                    None => {
                        unvouched.insert(*c);
                    }
                }
                let holders: BTreeSet<ServerId> = s
                    .cluster
                    .holders(c)
                    .filter(|h| live_ids.contains(h))
                    .collect();
                known.insert(*c, holders);
            }
            Ok((known, unvouched))
        })?;
        // Chunks whose replicas are not all known yet (heartbeats lag a
        // second behind writes): ask the servers, so readers see every
        // replica at once, though only `min` are required.
        let want = (file.replication as usize).max(min);
        let short: Vec<ChunkId> = chunks
            .iter()
            .filter(|c| known[*c].len() < want)
            .copied()
            .collect();
        let mut confirmed: Vec<(ServerId, Vec<ChunkId>)> = Vec::new();
        if !short.is_empty() || !unvouched.is_empty() {
            let asks = live.iter().map(|(server, addr)| {
                // Where a replica is not known yet, and where an unvouched
                // chunk is said to be.
                let ask: Vec<ChunkId> = chunks
                    .iter()
                    .filter(|c| {
                        let here = known[*c].contains(server);
                        (!here && known[*c].len() < want) || (here && unvouched.contains(*c))
                    })
                    .copied()
                    .collect();
                let client = self.chunk_client(*server, addr);
                async move {
                    let client = client.ok()?;
                    if ask.is_empty() {
                        return None;
                    }
                    let lengths = tokio::time::timeout(CONFIRM_TIMEOUT, client.lengths(&ask))
                        .await
                        .ok()?
                        .ok()?;
                    Some((
                        *server,
                        addr,
                        ask.into_iter().zip(lengths).collect::<Vec<_>>(),
                    ))
                }
            });
            for (server, addr, answers) in
                futures::future::join_all(asks).await.into_iter().flatten()
            {
                let mut held = Vec::new();
                for (chunk, length) in answers {
                    let Some(length) = length else { continue };
                    if length != claimed[&chunk] {
                        let holder = format!("chunk server {server} ({addr}) holds");
                        return Err(length_mismatch(&chunk, claimed[&chunk], length, &holder));
                    }
                    unvouched.remove(&chunk);
                    if known.get_mut(&chunk).expect("asked chunk").insert(server) {
                        held.push(chunk);
                    }
                }
                if !held.is_empty() {
                    confirmed.push((server, held));
                }
            }
            let missing: Vec<String> = short
                .iter()
                .filter(|c| known[*c].len() < min)
                .map(|c| c.to_hex())
                .collect();
            if !missing.is_empty() {
                return Err(crate::state::unreplicated(&missing, min as u32).into());
            }
            if let Some(chunk) = unvouched.first() {
                return Err(MetaError::Unavailable(format!(
                    "no chunk server answered for the length of {} chunk(s) (first {chunk}); try again",
                    unvouched.len()
                )));
            }
        }
        let commit = Command::Commit {
            path,
            file,
            if_absent,
            confirmed,
            min_replicas: min as u32,
        };
        self.write(Command::once(request_id, at_ms, commit)).await
    }

    /// Chunk servers as this node sees them, and (on the leader) the number
    /// of chunks of committed files with fewer live replicas than wanted.
    pub fn chunk_server_view(&self) -> (Vec<ServerView>, u64) {
        let leader = self.ensure_leader().is_ok();
        self.read_local(|s| {
            let counts = s.cluster.chunk_counts();
            let views = s
                .cluster
                .servers
                .iter()
                .map(|(id, info)| ServerView {
                    id: *id,
                    info: info.clone(),
                    alive: leader && self.liveness.is_alive(*id),
                    chunks: counts.get(id).copied().unwrap_or(0),
                    usage: self.liveness.usage(*id),
                    scrub: self.liveness.scrub(*id),
                })
                .collect();
            let mut under = 0u64;
            if leader {
                for (chunk, need) in s.namespace.chunk_needs() {
                    let live = s
                        .cluster
                        .holders(&chunk)
                        .filter(|h| self.liveness.is_alive(*h))
                        .count();
                    if live < need.replication {
                        under += 1;
                    }
                }
            }
            (views, under)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use shardfs_proto::capability::{self, Access, CapabilityError};

    use crate::cluster::ServerId;
    use crate::metaserver::LeaderSettings;
    use crate::metaserver::testing::{addr, beat, chunk, chunk_server, commit, lone_leader};

    /// The first leader asked makes the cluster key and keeps it; the
    /// capabilities it grants check with each server's own key only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn capabilities_are_made_with_one_cluster_key_per_server() {
        let dir = tempfile::tempdir().unwrap();
        let m = lone_leader(dir.path(), &LeaderSettings::default()).await;
        let key = m.chunks.cluster_key().await.unwrap();
        assert_eq!(m.chunks.cluster_key().await.unwrap(), key);
        let x = chunk("x");
        let grants = m
            .chunks
            .grant(Access::Read, &[x], &[vec![1, 2]])
            .await
            .unwrap();
        let now = capability::now_ms();
        let (one, two) = (
            m.chunks.server_key(1).await.unwrap(),
            m.chunks.server_key(2).await.unwrap(),
        );
        assert_eq!(one.check(&grants[0][0], Access::Read, &x, now), Ok(()));
        assert_eq!(two.check(&grants[0][1], Access::Read, &x, now), Ok(()));
        assert_eq!(
            two.check(&grants[0][0], Access::Read, &x, now),
            Err(CapabilityError::Forged)
        );
        // An hour, by default.
        let expires = capability::expires_ms(&grants[0][0]).unwrap();
        assert!(
            expires >= now + 3_500_000 && expires <= now + 3_700_000,
            "{expires} {now}"
        );
    }

    /// The addresses of what `locate` found.
    fn addrs_of(found: Vec<Vec<(ServerId, String)>>) -> Vec<Vec<String>> {
        found
            .into_iter()
            .map(|holders| holders.into_iter().map(|(_, addr)| addr).collect())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn allocation_spreads_over_zones_and_says_why_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let m = lone_leader(dir.path(), &LeaderSettings::default()).await;
        for (id, zone) in [(1, "a"), (2, "a"), (3, "b"), (4, "c")] {
            chunk_server(&m, id, zone, 0, &[]).await;
        }
        let placements = m.chunks.allocate(&[(chunk("x"), 1 << 20)], 3, &[]).unwrap();
        let targets = &placements[0].targets;
        assert_eq!(targets.len(), 3, "{targets:?}");
        let zones: BTreeSet<&str> = targets
            .iter()
            .map(|(_, t)| match t.as_str() {
                t if t == addr(1) || t == addr(2) => "a",
                t if t == addr(3) => "b",
                _ => "c",
            })
            .collect();
        assert_eq!(zones.len(), 3, "one replica per zone: {targets:?}");

        // Left out by the writer: never a target.
        let placements = m
            .chunks
            .allocate(&[(chunk("y"), 1 << 20)], 3, &[addr(3)])
            .unwrap();
        assert!(!placements[0].targets.iter().any(|(_, a)| *a == addr(3)));

        let err = m
            .chunks
            .allocate(&[(chunk("z"), 1 << 20)], 5, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot place 5 replicas: 4 chunk server(s) can take them"),
            "{err}"
        );
        assert!(err.contains(&format!("1 at {} alive", addr(1))), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heartbeats_report_locations_and_silence_kills() {
        let dir = tempfile::tempdir().unwrap();
        let settings = LeaderSettings {
            dead_after: Duration::from_millis(600),
            ..LeaderSettings::default()
        };
        let m = lone_leader(dir.path(), &settings).await;
        let (a, b) = (chunk("a"), chunk("b"));
        chunk_server(&m, 1, "z1", 0, &[a]).await;
        chunk_server(&m, 2, "z2", 0, &[a, b]).await;
        let found = addrs_of(m.chunks.locate(&[a, b]).unwrap());
        assert_eq!(found[0].len(), 2);
        assert_eq!(found[1], vec![addr(2)]);

        // An unknown server is told to register.
        let unknown = crate::chunks::Beat {
            server: 9,
            usage: crate::liveness::Usage {
                used_bytes: 0,
                free_bytes: 1,
                capacity_bytes: 1,
            },
            added: vec![],
            removed: vec![],
            full_inventory: false,
            full_inventory_first: false,
            scrub: Default::default(),
        };
        assert!(!m.chunks.heartbeat(unknown).await.unwrap());

        // Server 2 goes silent: once dead, it is no location any more.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            beat(&m, 1, 0, &[]).await;
            if m.chunks.locate(&[b]).unwrap()[0].is_empty() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "server 2 never died");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(addrs_of(m.chunks.locate(&[a]).unwrap())[0], vec![addr(1)]);
        let (views, under) = m.chunks.chunk_server_view();
        assert_eq!(views.iter().filter(|v| v.alive).count(), 1);
        assert_eq!(under, 0, "no committed file uses them");
    }

    /// A location enters the replicated state once: a heartbeat repeating
    /// what is recorded (a commit confirmed it, or an earlier beat) costs
    /// no Raft entry; news does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heartbeats_write_only_what_is_new() {
        let dir = tempfile::tempdir().unwrap();
        let m = lone_leader(dir.path(), &LeaderSettings::default()).await;
        let (a, b) = (chunk("a"), chunk("b"));
        chunk_server(&m, 1, "z", 0, &[a]).await;
        // (Raft's metrics follow the applies a moment later.)
        let applied = || m.node.status().last_applied;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = applied();
        beat(&m, 1, 0, &[a]).await;
        beat(&m, 1, 0, &[]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(applied(), before, "nothing new: no entry");
        beat(&m, 1, 0, &[a, b]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(applied(), before + 1, "b is new: one entry");
        assert_eq!(addrs_of(m.chunks.locate(&[b]).unwrap())[0], vec![addr(1)]);
        // A removal of a chunk not recorded there changes nothing either.
        let (added, removed) = m
            .node
            .read_local(|s| s.cluster.news(1, vec![a, b], vec![chunk("never")]));
        assert!(added.is_empty() && removed.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_holding_needed_replicas_is_removed_only_when_safe() {
        let dir = tempfile::tempdir().unwrap();
        let settings = LeaderSettings {
            dead_after: Duration::from_millis(500),
            ..LeaderSettings::default()
        };
        let m = lone_leader(dir.path(), &settings).await;
        let c = chunk("needed");
        for id in 1..=3 {
            chunk_server(&m, id, &format!("z{id}"), 0, &[c]).await;
        }
        chunk_server(&m, 4, "z4", 0, &[]).await;
        commit(&m, "/f", &[c], 3).await;
        // A new leader refuses until it can tell the living from the dead.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while m.chunks.liveness.in_grace() {
            assert!(std::time::Instant::now() < deadline, "grace never ended");
            for id in 1..=4 {
                beat(&m, id, 0, &[]).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let err = m
            .chunks
            .remove_chunk_server(1)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("drain it first"), "{err}");
        // Server 4 holds nothing: it goes.
        m.chunks.remove_chunk_server(4).await.unwrap();
        let err = m
            .chunks
            .remove_chunk_server(4)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no chunk server 4 is registered"), "{err}");
    }
}

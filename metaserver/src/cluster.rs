//! Chunk servers and chunk locations: the replicated registry (who exists,
//! where each chunk is stored, as the chunk servers report it) and the
//! placement policy for new replicas.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use shardfs_proto::ChunkId;

pub type ServerId = u64;

/// A chunk and the servers holding it, as stored and snapshotted.
pub type LocationRow = (ChunkId, Vec<ServerId>);

/// A registered chunk server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkServerInfo {
    pub addr: String,
    pub zone: String,
    pub capacity_bytes: u64,
    /// Being drained: no new replicas go there, and its replicas are
    /// copied elsewhere and then removed. Set by an operator, kept when the
    /// server registers again.
    #[serde(default)]
    pub draining: bool,
}

/// A change to persist (see `namespace::Change`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterChange {
    Server(ServerId, Option<ChunkServerInfo>),
    Locations(ChunkId, Option<Vec<ServerId>>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub servers: BTreeMap<ServerId, ChunkServerInfo>,
    locations: HashMap<ChunkId, BTreeSet<ServerId>>,
}

impl Cluster {
    pub fn from_parts(
        servers: BTreeMap<ServerId, ChunkServerInfo>,
        locations: HashMap<ChunkId, BTreeSet<ServerId>>,
    ) -> Self {
        Self { servers, locations }
    }

    /// (servers, locations) as plain rows, for snapshots.
    pub fn to_parts(&self) -> (Vec<(ServerId, ChunkServerInfo)>, Vec<LocationRow>) {
        let servers = self
            .servers
            .iter()
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        let mut locations: Vec<(ChunkId, Vec<ServerId>)> = self
            .locations
            .iter()
            .map(|(c, s)| (*c, s.iter().copied().collect()))
            .collect();
        locations.sort_by_key(|(c, _)| *c);
        (servers, locations)
    }

    pub fn register(
        &mut self,
        id: ServerId,
        mut info: ChunkServerInfo,
        changes: &mut Vec<ClusterChange>,
    ) {
        if let Some(known) = self.servers.get(&id) {
            info.draining = known.draining;
        }
        if self.servers.get(&id) != Some(&info) {
            changes.push(ClusterChange::Server(id, Some(info.clone())));
            self.servers.insert(id, info);
        }
    }

    /// Applies a chunk server's report of chunks stored and removed. With
    /// `replace`, the server's previous inventory is forgotten first.
    pub fn report(
        &mut self,
        server: ServerId,
        added: &[ChunkId],
        removed: &[ChunkId],
        replace: bool,
        changes: &mut Vec<ClusterChange>,
    ) {
        if !self.servers.contains_key(&server) {
            return; // reports of unregistered servers are ignored
        }
        let mut touched = BTreeSet::new();
        if replace {
            for (chunk, holders) in self.locations.iter_mut() {
                if holders.remove(&server) {
                    touched.insert(*chunk);
                }
            }
        }
        for chunk in added {
            if self.locations.entry(*chunk).or_default().insert(server) {
                touched.insert(*chunk);
            }
        }
        for chunk in removed {
            if let Some(holders) = self.locations.get_mut(chunk)
                && holders.remove(&server)
            {
                touched.insert(*chunk);
            }
        }
        for chunk in touched {
            let holders = self.locations.get(&chunk).cloned().unwrap_or_default();
            if holders.is_empty() {
                self.locations.remove(&chunk);
                changes.push(ClusterChange::Locations(chunk, None));
            } else {
                changes.push(ClusterChange::Locations(
                    chunk,
                    Some(holders.into_iter().collect()),
                ));
            }
        }
    }

    /// The servers that reported holding `chunk`.
    pub fn holders(&self, chunk: &ChunkId) -> impl Iterator<Item = ServerId> + '_ {
        self.locations.get(chunk).into_iter().flatten().copied()
    }

    /// Of a report from `server`, what would change the recorded
    /// locations: the chunks `added` not recorded there yet, and those
    /// `removed` that still are.
    pub fn news(
        &self,
        server: ServerId,
        added: Vec<ChunkId>,
        removed: Vec<ChunkId>,
    ) -> (Vec<ChunkId>, Vec<ChunkId>) {
        let holds = |c: &ChunkId| self.locations.get(c).is_some_and(|h| h.contains(&server));
        (
            added.into_iter().filter(|c| !holds(c)).collect(),
            removed.into_iter().filter(|c| holds(c)).collect(),
        )
    }

    /// Starts or stops draining a registered server; false if unknown.
    pub fn set_draining(
        &mut self,
        id: ServerId,
        draining: bool,
        changes: &mut Vec<ClusterChange>,
    ) -> bool {
        let Some(info) = self.servers.get_mut(&id) else {
            return false;
        };
        if info.draining != draining {
            info.draining = draining;
            changes.push(ClusterChange::Server(id, Some(info.clone())));
        }
        true
    }

    /// Forgets a chunk server and every location on it; false if unknown.
    pub fn remove_server(&mut self, id: ServerId, changes: &mut Vec<ClusterChange>) -> bool {
        if !self.servers.contains_key(&id) {
            return false;
        }
        self.report(id, &[], &[], true, changes);
        self.servers.remove(&id);
        changes.push(ClusterChange::Server(id, None));
        true
    }

    /// The chunks `server` holds.
    pub fn chunks_of(&self, server: ServerId) -> Vec<ChunkId> {
        self.chunks_of_any(&BTreeSet::from([server]))
    }

    /// The chunks held by any of `servers`, in one pass over the locations.
    pub fn chunks_of_any(&self, servers: &BTreeSet<ServerId>) -> Vec<ChunkId> {
        self.locations
            .iter()
            .filter(|(_, holders)| !holders.is_disjoint(servers))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every chunk some server reported holding.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkId> + '_ {
        self.locations.keys()
    }

    /// Chunks each server holds, by count.
    pub fn chunk_counts(&self) -> HashMap<ServerId, u64> {
        let mut counts = HashMap::new();
        for holders in self.locations.values() {
            for server in holders {
                *counts.entry(*server).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// A live chunk server as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: ServerId,
    pub zone: String,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
}

/// Picks `count` distinct servers for a new replica of `length` bytes, not
/// among `exclude` (the current holders): servers in zones not used yet
/// first, then the least used (by fraction of capacity), then by id.
/// Servers without room for the chunk are skipped. `planned` counts bytes
/// already placed on each server by this allocation, so one batch spreads.
pub fn place(
    candidates: &[Candidate],
    exclude: &BTreeSet<ServerId>,
    zones_used: &BTreeSet<String>,
    count: usize,
    length: u64,
    planned: &mut HashMap<ServerId, u64>,
) -> Vec<ServerId> {
    let mut zones: BTreeMap<String, usize> = zones_used.iter().map(|z| (z.clone(), 1)).collect();
    let mut chosen = Vec::new();
    for _ in 0..count {
        let best = candidates
            .iter()
            .filter(|c| !exclude.contains(&c.id) && !chosen.contains(&c.id))
            .filter(|c| c.free_bytes >= length + planned.get(&c.id).copied().unwrap_or(0))
            .min_by(|a, b| {
                let key = |c: &Candidate| {
                    let used = c.used_bytes + planned.get(&c.id).copied().unwrap_or(0);
                    let fraction = used as f64 / c.capacity_bytes.max(1) as f64;
                    (zones.get(&c.zone).copied().unwrap_or(0), fraction, c.id)
                };
                let (za, fa, ia) = key(a);
                let (zb, fb, ib) = key(b);
                za.cmp(&zb).then(fa.total_cmp(&fb)).then(ia.cmp(&ib))
            });
        let Some(best) = best else { break };
        *zones.entry(best.zone.clone()).or_insert(0) += 1;
        *planned.entry(best.id).or_insert(0) += length;
        chosen.push(best.id);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: u64, zone: &str, used: u64) -> Candidate {
        Candidate {
            id,
            zone: zone.into(),
            used_bytes: used,
            capacity_bytes: 1000,
            free_bytes: 1000 - used,
        }
    }

    #[test]
    fn spreads_across_zones_then_least_used() {
        let candidates = vec![
            candidate(1, "a", 100),
            candidate(2, "a", 0),
            candidate(3, "b", 900),
            candidate(4, "c", 500),
        ];
        let mut planned = HashMap::new();
        let chosen = place(
            &candidates,
            &BTreeSet::new(),
            &BTreeSet::new(),
            3,
            10,
            &mut planned,
        );
        // One per zone; in zone a the least used.
        assert_eq!(chosen.len(), 3);
        assert!(chosen.contains(&2) && chosen.contains(&3) && chosen.contains(&4));
        // Excluding holders and their zones.
        let exclude: BTreeSet<u64> = [2].into();
        let zones: BTreeSet<String> = ["a".to_string()].into();
        let mut planned = HashMap::new();
        let chosen = place(&candidates, &exclude, &zones, 2, 10, &mut planned);
        assert_eq!(chosen, vec![4, 3]);
    }

    #[test]
    fn never_twice_on_one_server_and_skips_full_ones() {
        let candidates = vec![candidate(1, "", 0), candidate(2, "", 995)];
        let mut planned = HashMap::new();
        let chosen = place(
            &candidates,
            &BTreeSet::new(),
            &BTreeSet::new(),
            3,
            10,
            &mut planned,
        );
        assert_eq!(chosen, vec![1], "server 2 has no room; no server twice");
    }

    #[test]
    fn reports_track_locations() {
        let mut cluster = Cluster::default();
        let mut changes = Vec::new();
        let info = ChunkServerInfo {
            addr: "x:1".into(),
            zone: String::new(),
            capacity_bytes: 1,
            draining: false,
        };
        cluster.register(1, info.clone(), &mut changes);
        cluster.register(2, info, &mut changes);
        let a = ChunkId::of(b"a");
        let b = ChunkId::of(b"b");
        cluster.report(1, &[a, b], &[], false, &mut changes);
        cluster.report(2, &[a], &[], false, &mut changes);
        cluster.report(9, &[a], &[], false, &mut changes); // unregistered
        assert_eq!(cluster.holders(&a).collect::<Vec<_>>(), vec![1, 2]);
        cluster.report(1, &[], &[a], false, &mut changes);
        assert_eq!(cluster.holders(&a).collect::<Vec<_>>(), vec![2]);
        cluster.report(2, &[b], &[], true, &mut changes);
        assert_eq!(cluster.holders(&a).count(), 0);
        assert_eq!(cluster.holders(&b).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(cluster.chunk_counts()[&1], 1);
    }
}

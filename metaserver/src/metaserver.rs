//! [`Metaserver`]: one metaserver put together: the Raft node and the
//! owners of what its leader does ([`ChunkManager`] for chunk servers,
//! [`RepairManager`], [`GcManager`]), and their background workers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shardfs_proto::security::Security;

use crate::chunks::ChunkManager;
use crate::error::MetaError;
use crate::filter::Filters;
use crate::gc::{GcConfig, GcManager};
use crate::node::{MetaNode, RaftTuning};
use crate::repair::{RepairConfig, RepairManager};
use crate::tokens::Authority;
use crate::types::NodeId;

/// How the leader's owners behave.
#[derive(Debug, Clone)]
pub struct LeaderSettings {
    /// A chunk server unheard of for this long is dead.
    pub dead_after: Duration,
    pub repair: RepairConfig,
    pub gc: GcConfig,
    /// How long the chunk capabilities handed to clients are valid.
    pub capability_ttl: Duration,
}

/// How long a chunk capability is valid unless configured: long enough
/// that readers rarely ask again, short enough that a revoked token's
/// capabilities die within the hour.
pub const DEFAULT_CAPABILITY_TTL: Duration = Duration::from_secs(3600);

impl Default for LeaderSettings {
    fn default() -> Self {
        Self {
            dead_after: crate::liveness::DEFAULT_DEAD_AFTER,
            repair: RepairConfig::default(),
            gc: GcConfig::default(),
            capability_ttl: DEFAULT_CAPABILITY_TTL,
        }
    }
}

/// One metaserver: the Raft node and the owners built on it. Cheap to
/// clone.
#[derive(Clone)]
pub struct Metaserver {
    pub node: MetaNode,
    pub chunks: Arc<ChunkManager>,
    pub repair: Arc<RepairManager>,
    pub gc: Arc<GcManager>,
    /// Who may make which call.
    pub authority: Authority,
}

/// The background workers of a metaserver; they stop when this is dropped.
pub struct Workers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Metaserver {
    /// Opens the stores under `data_dir`, starts the Raft node (its
    /// messages passing `filters`, every connection dialed and accepted
    /// with `security`) and builds the owners on it. The workers are not
    /// started (see [`Metaserver::spawn_workers`]).
    pub async fn start(
        id: NodeId,
        data_dir: &Path,
        tuning: &RaftTuning,
        settings: &LeaderSettings,
        filters: Filters,
        security: Security,
    ) -> Result<Self, MetaError> {
        let node = MetaNode::start_with_filters(id, data_dir, tuning, filters, security).await?;
        Ok(Self::on(node, settings))
    }

    /// The owners built on a running node.
    pub fn on(node: MetaNode, settings: &LeaderSettings) -> Self {
        let chunks = Arc::new(ChunkManager::new(
            node.clone(),
            settings.dead_after,
            settings.capability_ttl,
        ));
        let repair = Arc::new(RepairManager::new(chunks.clone(), settings.repair.clone()));
        let gc = Arc::new(GcManager::new(chunks.clone(), settings.gc.clone()));
        Self {
            node,
            chunks,
            repair,
            gc,
            authority: Authority::default(),
        }
    }

    /// The same metaserver deciding calls with `authority` (the bootstrap
    /// admin token).
    pub fn with_authority(mut self, authority: Authority) -> Self {
        self.authority = authority;
        self
    }

    /// Starts repair and garbage collection (each acts only while this
    /// node leads).
    pub fn spawn_workers(&self) -> Workers {
        Workers {
            tasks: vec![self.repair.spawn_workers(), self.gc.spawn_workers()],
        }
    }
}

/// One-node groups for the owners' unit tests: a lone voter elects itself
/// and sends no Raft message, so no listener or network is needed; chunk
/// servers are registered by address only (ports nothing listens on, so a
/// call to one fails at once).
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use shardfs_proto::ChunkId;

    use super::{LeaderSettings, Metaserver};
    use crate::chunks::Beat;
    use crate::cluster::ChunkServerInfo;
    use crate::filter::Filters;
    use crate::liveness::{ScrubReport, Usage};
    use crate::namespace::{ChunkRef, FileMeta};
    use crate::node::RaftTuning;
    use crate::types::Command;

    pub const CAPACITY: u64 = 1 << 30;

    /// A leading one-node metaserver with `settings`, its stores in `dir`.
    pub async fn lone_leader(dir: &Path, settings: &LeaderSettings) -> Metaserver {
        let tuning = RaftTuning {
            heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            ..RaftTuning::default()
        };
        let metaserver = Metaserver::start(
            1,
            dir,
            &tuning,
            settings,
            Filters::default(),
            shardfs_proto::security::Security::Insecure,
        )
        .await
        .unwrap();
        let peers = BTreeMap::from([(1, "127.0.0.1:1".to_string())]);
        metaserver.node.bootstrap(&peers).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while metaserver.chunks.ensure_leader().is_err() {
            assert!(Instant::now() < deadline, "a lone voter did not lead");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        metaserver
    }

    /// The address chunk server `id` is registered at.
    pub fn addr(id: u64) -> String {
        format!("127.0.0.1:{id}")
    }

    /// Registers chunk server `id` in `zone`, then sends a heartbeat with
    /// `used` bytes used that reports `chunks` stored.
    pub async fn chunk_server(m: &Metaserver, id: u64, zone: &str, used: u64, chunks: &[ChunkId]) {
        let info = ChunkServerInfo {
            addr: addr(id),
            zone: zone.to_string(),
            capacity_bytes: CAPACITY,
            draining: false,
        };
        m.chunks.register_chunk_server(id, info).await.unwrap();
        beat(m, id, used, chunks).await;
    }

    /// A heartbeat from chunk server `id` reporting `added` chunks.
    pub async fn beat(m: &Metaserver, id: u64, used: u64, added: &[ChunkId]) {
        let beat = Beat {
            server: id,
            usage: Usage {
                used_bytes: used,
                free_bytes: CAPACITY - used,
                capacity_bytes: CAPACITY,
            },
            added: added.to_vec(),
            removed: Vec::new(),
            full_inventory: false,
            full_inventory_first: false,
            scrub: ScrubReport::default(),
        };
        assert!(
            m.chunks.heartbeat(beat).await.unwrap(),
            "server {id} unknown"
        );
    }

    /// A chunk id made from `seed` (no bytes exist for it).
    pub fn chunk(seed: &str) -> ChunkId {
        ChunkId::of(seed.as_bytes())
    }

    /// Commits `path` made of `chunks` (1 MiB each) at `replication`,
    /// straight through Raft (the locations must be reported already).
    pub async fn commit(m: &Metaserver, path: &str, chunks: &[ChunkId], replication: u32) {
        let refs: Vec<ChunkRef> = chunks
            .iter()
            .map(|id| ChunkRef {
                id: *id,
                length: 1 << 20,
            })
            .collect();
        let file = FileMeta {
            content_id: FileMeta::content_id_of(&refs),
            size: refs.len() as u64 * (1 << 20),
            chunks: refs,
            replication,
            mtime_ms: 1,
        };
        let commit = Command::Commit {
            path: path.to_string(),
            file,
            if_absent: false,
            confirmed: Vec::new(),
            min_replicas: 1,
        };
        m.node.write(commit).await.unwrap();
    }
}

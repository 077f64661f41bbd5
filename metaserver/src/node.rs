//! The Raft node of one metaserver: its stores, replicated writes,
//! linearizable reads (read lease and read index), membership, and
//! bootstrap of a new group. What the leader does with chunk servers is
//! owned elsewhere ([`crate::chunks`], [`crate::repair`], [`crate::gc`]),
//! on top of this.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, ForwardToLeader, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use shardfs_proto::security::{Security, ServerKind};
use tracing::{info, warn};

use crate::error::MetaError;
use crate::filter::Filters;
use crate::network::Network;
use crate::state::State;
use crate::touched::Touched;
use crate::types::{Command, NodeId, Outcome, TypeConfig};

/// Raft timing and log retention.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Take a snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for slow followers.
    pub keep_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_every: 10_000,
            keep_logs: 1_000,
        }
    }
}

/// Readers waiting for the next leadership check.
#[derive(Default)]
struct ReadBarrier {
    running: bool,
    waiting: Vec<tokio::sync::oneshot::Sender<Result<(), MetaError>>>,
}

/// What one metaserver knows about the group, from its own view.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    pub self_id: NodeId,
    pub leader: Option<(NodeId, String)>,
    pub term: u64,
    pub last_applied: u64,
    pub role: &'static str,
    /// id, address, voter
    pub members: Vec<(NodeId, String, bool)>,
    /// On the leader: the last log index each member has matched.
    pub matched: BTreeMap<NodeId, u64>,
}

#[derive(Clone)]
pub struct MetaNode {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    state: Arc<RwLock<State>>,
    /// Reads are served locally while a quorum acknowledged this leader
    /// less than this long ago (see `holds_read_lease`).
    read_lease_ms: u64,
    /// When openraft last published metrics, in ms since `epoch`: the
    /// quorum-ack age in the metrics is as of that moment, and a Raft core
    /// stuck on a slow disk stops publishing.
    metrics_published_ms: Arc<std::sync::atomic::AtomicU64>,
    epoch: std::time::Instant,
    /// Shares one leadership check among all reads waiting at once.
    read_barrier: Arc<std::sync::Mutex<ReadBarrier>>,
    /// What applied entries changed since repair last looked.
    touched: Arc<std::sync::Mutex<Touched>>,
    /// How this node dials its peers and chunk servers and accepts calls.
    pub security: Security,
}

impl MetaNode {
    /// Opens the stores under `data_dir` and starts the Raft node, in
    /// plaintext (in-process tests).
    pub async fn start(
        id: NodeId,
        data_dir: &Path,
        tuning: &RaftTuning,
    ) -> Result<Self, MetaError> {
        Self::start_with_filters(id, data_dir, tuning, Filters::default(), Security::Insecure).await
    }

    /// Like [`MetaNode::start`], with `filters` on every Raft message this
    /// node sends (fault injection for tests) and `security` on every
    /// connection.
    pub async fn start_with_filters(
        id: NodeId,
        data_dir: &Path,
        tuning: &RaftTuning,
        filters: Filters,
        security: Security,
    ) -> Result<Self, MetaError> {
        let server = |e: String| MetaError::Server(e);
        std::fs::create_dir_all(data_dir).map_err(|e| {
            server(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join("raft");
        let (log_store, state_machine) = tokio::task::spawn_blocking(move || {
            crate::store::open(&path).map_err(|e| format!("cannot open metaserver store: {e}"))
        })
        .await
        .map_err(|e| server(format!("opening the store: {e}")))?
        .map_err(server)?;
        let state = state_machine.state();
        let touched = state_machine.touched();
        let config = Config {
            cluster_name: "shardfs".into(),
            heartbeat_interval: tuning.heartbeat.as_millis() as u64,
            election_timeout_min: tuning.election_timeout_min.as_millis() as u64,
            election_timeout_max: tuning.election_timeout_max.as_millis() as u64,
            install_snapshot_timeout: 5_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every),
            max_in_snapshot_log_to_keep: tuning.keep_logs,
            purge_batch_size: 256,
            max_payload_entries: 1_000,
            ..Config::default()
        }
        .validate()
        .map_err(|e| server(format!("bad Raft settings: {e}")))?;
        let raft = Raft::new(
            id,
            Arc::new(config),
            Network::new(id, filters, security.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| server(format!("cannot start raft: {e}")))?;
        let epoch = std::time::Instant::now();
        let metrics_published_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        {
            let published = metrics_published_ms.clone();
            let mut metrics = raft.metrics();
            tokio::spawn(async move {
                while metrics.changed().await.is_ok() {
                    published.store(
                        epoch.elapsed().as_millis() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
            });
        }
        Ok(Self {
            metrics_published_ms,
            epoch,
            id,
            raft,
            state,
            read_barrier: Arc::default(),
            read_lease_ms: tuning.election_timeout_max.as_millis() as u64 / 4,
            touched,
            security,
        })
    }

    /// Initializes a brand-new group with `peers` as voters, exactly once:
    /// only the lowest id does it, only on a fresh store, and not when a
    /// peer already belongs to an initialized group.
    pub async fn bootstrap(&self, peers: &BTreeMap<NodeId, String>) -> Result<(), MetaError> {
        if peers.keys().next() != Some(&self.id) {
            return Ok(());
        }
        let initialized = self.raft.is_initialized().await;
        if initialized.map_err(|e| MetaError::Server(format!("cannot read the Raft state: {e}")))? {
            return Ok(());
        }
        for (peer, addr) in peers {
            if *peer != self.id && peer_is_initialized(addr, &self.security).await {
                warn!(
                    peer,
                    addr,
                    "not initializing: a peer already belongs to a group; add this metaserver with AddMetaserver"
                );
                return Ok(());
            }
        }
        let members: BTreeMap<NodeId, BasicNode> = peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => {
                info!(voters = ?peers.keys().collect::<Vec<_>>(), "initialized a new metaserver group")
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => {
                return Err(MetaError::Server(format!(
                    "cannot initialize the group: {e}"
                )));
            }
        }
        Ok(())
    }

    /// Proposes `command` and waits until it is committed and applied.
    pub async fn write(&self, command: Command) -> Result<Outcome, MetaError> {
        match self.raft.client_write(command).await {
            Ok(response) => Ok(response.data.0?),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(self.not_leader(forward))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(MetaError::Membership(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(MetaError::Unavailable(e.to_string())),
        }
    }

    /// Runs `read` on the state once this node has confirmed it is still
    /// the leader and has applied everything committed before the call
    /// (read index): a linearizable read.
    pub async fn read<T>(&self, read: impl FnOnce(&State) -> T) -> Result<T, MetaError> {
        if !self.holds_read_lease() {
            self.linearizable().await?;
        }
        let state = self.state.read().expect("state lock");
        Ok(read(&state))
    }

    /// True when this node can serve a linearizable read from its own state
    /// without asking the group: it is the leader, a quorum acknowledged it
    /// within the read lease, and it has applied an entry of its own term
    /// (so everything committed before it took over is applied, and every
    /// write it acknowledged since was applied before the acknowledgement).
    /// Followers refuse to vote for anyone else for `election_timeout_max`
    /// after hearing from the leader (openraft's leader lease); our lease is
    /// a quarter of that. The ack age counts from when the metrics were
    /// published, so a Raft core that stalls (slow disk) loses the lease.
    fn holds_read_lease(&self) -> bool {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        let published = self
            .metrics_published_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let metrics_age_ms = (self.epoch.elapsed().as_millis() as u64).saturating_sub(published);
        metrics.state == ServerState::Leader
            && metrics.current_leader == Some(self.id)
            && metrics
                .millis_since_quorum_ack
                .is_some_and(|ms| ms + metrics_age_ms < self.read_lease_ms)
            && metrics
                .last_applied
                .is_some_and(|applied| applied.leader_id.term == metrics.current_term)
    }

    /// Waits for a leadership check (read index) that started after this
    /// call did. Concurrent readers share one check: those arriving while a
    /// check runs wait for the next one, which serves them all, so a burst
    /// of reads costs two quorum round trips, not one per read.
    async fn linearizable(&self) -> Result<(), MetaError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start_driver = {
            let mut barrier = self.read_barrier.lock().expect("read barrier");
            barrier.waiting.push(tx);
            !std::mem::replace(&mut barrier.running, true)
        };
        if start_driver {
            let node = self.clone();
            tokio::spawn(async move { node.drive_read_barrier().await });
        }
        rx.await
            .unwrap_or_else(|_| Err(MetaError::Unavailable("metaserver shutting down".into())))
    }

    async fn drive_read_barrier(&self) {
        loop {
            let batch = {
                let mut barrier = self.read_barrier.lock().expect("read barrier");
                if barrier.waiting.is_empty() {
                    barrier.running = false;
                    return;
                }
                std::mem::take(&mut barrier.waiting)
            };
            // Every waiter in `batch` arrived before this check starts.
            let result = match self.raft.ensure_linearizable().await {
                Ok(_) => Ok(()),
                Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                    f,
                ))) => Err(self.not_leader(f)),
                Err(RaftError::APIError(e)) => Err(MetaError::Unavailable(e.to_string())),
                Err(RaftError::Fatal(e)) => Err(MetaError::Unavailable(e.to_string())),
            };
            for waiter in batch {
                let _ = waiter.send(result.clone());
            }
        }
    }

    /// Reads this node's state without asking the leader (status, tests).
    pub fn read_local<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.state.read().expect("state lock"))
    }

    fn not_leader(&self, forward: ForwardToLeader<NodeId, BasicNode>) -> MetaError {
        MetaError::NotLeader {
            self_id: self.id,
            leader_id: forward.leader_id,
            leader_addr: forward.leader_node.map(|n| n.addr),
        }
    }

    pub fn status(&self) -> GroupStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone(), voters.contains(id)))
            .collect();
        let leader = metrics.current_leader.map(|id| {
            let addr = membership
                .get_node(&id)
                .map(|n| n.addr.clone())
                .unwrap_or_default();
            (id, addr)
        });
        let matched = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map(|l| l.index).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        GroupStatus {
            matched,
            self_id: self.id,
            leader,
            term: metrics.current_term,
            last_applied: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            role: match metrics.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Learner => "learner",
                ServerState::Candidate => "candidate",
                ServerState::Shutdown => "shutdown",
            },
            members,
        }
    }

    /// Adds a metaserver: first as a learner (it catches up, by snapshot if
    /// far behind), then, unless `learner_only`, as a voter.
    pub async fn add_metaserver(
        &self,
        id: NodeId,
        addr: &str,
        learner_only: bool,
    ) -> Result<(Vec<NodeId>, Vec<NodeId>), MetaError> {
        self.membership_result(self.raft.add_learner(id, BasicNode::new(addr), true).await)?;
        if !learner_only {
            let change = ChangeMembers::AddVoterIds([id].into_iter().collect());
            self.membership_result(self.raft.change_membership(change, false).await)?;
        }
        Ok(self.members())
    }

    /// Removes a metaserver from the group entirely.
    pub async fn remove_metaserver(
        &self,
        id: NodeId,
    ) -> Result<(Vec<NodeId>, Vec<NodeId>), MetaError> {
        let status = self.status();
        let is_voter = status
            .members
            .iter()
            .any(|(m, _, voter)| *m == id && *voter);
        let is_member = status.members.iter().any(|(m, _, _)| *m == id);
        if !is_member {
            return Err(MetaError::Membership(format!(
                "metaserver {id} is not a member"
            )));
        }
        if is_voter {
            let change = ChangeMembers::RemoveVoters([id].into_iter().collect());
            self.membership_result(self.raft.change_membership(change, false).await)?;
        }
        let change = ChangeMembers::RemoveNodes([id].into_iter().collect());
        self.membership_result(self.raft.change_membership(change, false).await)?;
        Ok(self.members())
    }

    fn members(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let status = self.status();
        let voters = status.members.iter().filter(|m| m.2).map(|m| m.0).collect();
        let learners = status
            .members
            .iter()
            .filter(|m| !m.2)
            .map(|m| m.0)
            .collect();
        (voters, learners)
    }

    fn membership_result<T>(
        &self,
        result: Result<T, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
    ) -> Result<T, MetaError> {
        match result {
            Ok(value) => Ok(value),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.not_leader(f))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(MetaError::Membership(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(MetaError::Unavailable(e.to_string())),
        }
    }

    /// Fails with NotLeader unless this node currently leads (a cheap local
    /// check, for calls that need no linearizability, like heartbeats).
    pub fn ensure_leader(&self) -> Result<(), MetaError> {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        if metrics.current_leader == Some(self.id) {
            return Ok(());
        }
        let leader_addr = metrics.current_leader.and_then(|l| {
            metrics
                .membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        });
        Err(MetaError::NotLeader {
            self_id: self.id,
            leader_id: metrics.current_leader,
            leader_addr,
        })
    }

    /// The Raft term this node is in.
    pub fn current_term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// What applied entries changed since it was last drained (by the
    /// leader's repair).
    pub fn touched(&self) -> Arc<std::sync::Mutex<Touched>> {
        self.touched.clone()
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// Asks a peer whether it already belongs to a group (has a term or log).
async fn peer_is_initialized(addr: &str, security: &Security) -> bool {
    use shardfs_proto::meta::v1::ClusterStatusRequest;
    use shardfs_proto::meta::v1::meta_service_client::MetaServiceClient;
    let Ok(endpoint) = security.endpoint(addr, ServerKind::Meta) else {
        return false;
    };
    let ask = async {
        let channel = endpoint.connect().await.ok()?;
        let status = MetaServiceClient::new(channel)
            .cluster_status(ClusterStatusRequest {})
            .await
            .ok()?
            .into_inner();
        Some(status.term > 0 || status.last_applied > 0)
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

//! Three metaservers in one process, on real sockets, with the Raft
//! transport's fault filters (`shardfs_meta::filter`) cutting, healing and
//! slowing the links between them: partitions tested deterministically,
//! without network namespaces (those tests are in `tests/tests/faults.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use shardfs_meta::error::MetaError;
use shardfs_meta::filter::{Delay, DropRate, Filters, Isolate, OneWay, Partition};
use shardfs_meta::metaserver::{LeaderSettings, Metaserver};
use shardfs_meta::namespace::Inode;
use shardfs_meta::node::{MetaNode, RaftTuning};
use shardfs_meta::server;
use shardfs_meta::types::{Command, NodeId};
use shardfs_proto::transport::ConnectionLimits;
use tokio::sync::oneshot;

struct Node {
    node: MetaNode,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), MetaError>>,
}

/// Three nodes of one new group sharing `filters`.
struct Group {
    nodes: BTreeMap<NodeId, Node>,
}

impl Group {
    async fn start(dir: &Path, filters: &Filters) -> Self {
        let mut listeners = BTreeMap::new();
        for id in 1..=3u64 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listeners.insert(id, listener);
        }
        let peers: BTreeMap<NodeId, String> = listeners
            .iter()
            .map(|(id, l)| (*id, l.local_addr().unwrap().to_string()))
            .collect();
        let tuning = RaftTuning {
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            ..RaftTuning::default()
        };
        let mut nodes = BTreeMap::new();
        for (id, listener) in listeners {
            let data = dir.join(format!("meta-{id}"));
            let settings = LeaderSettings::default();
            let metaserver = Metaserver::start(
                id,
                &data,
                &tuning,
                &settings,
                filters.clone(),
                shardfs_proto::security::Security::Insecure,
            )
            .await
            .unwrap();
            let node = metaserver.node.clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(server::run(
                listener,
                metaserver,
                ConnectionLimits::default(),
                async {
                    let _ = stopped.await;
                },
            ));
            nodes.insert(
                id,
                Node {
                    node,
                    stop: Some(stop),
                    task,
                },
            );
        }
        nodes[&1].node.bootstrap(&peers).await.unwrap();
        Self { nodes }
    }

    fn node(&self, id: NodeId) -> &MetaNode {
        &self.nodes[&id].node
    }

    /// The leader every node in `among` agrees on, with its term, once
    /// there is one.
    async fn leader(&self, among: &[NodeId], timeout: Duration) -> (NodeId, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<_> = among
                .iter()
                .map(|id| {
                    let status = self.node(*id).status();
                    (status.leader.map(|(l, _)| l), status.term)
                })
                .collect();
            if let Some((Some(leader), term)) = views.first().copied()
                && among.contains(&leader)
                && views.iter().all(|v| *v == (Some(leader), term))
                && self.node(leader).status().role == "leader"
            {
                return (leader, term);
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?} within {timeout:?}: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every node has applied the same namespace; returns it.
    async fn converged(&self, timeout: Duration) -> Vec<(String, Inode)> {
        let deadline = Instant::now() + timeout;
        loop {
            let trees: Vec<_> = self
                .nodes
                .values()
                .map(|n| n.node.read_local(|state| state.namespace.walk()))
                .collect();
            if trees.windows(2).all(|w| w[0] == w[1]) {
                return trees.into_iter().next().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "the nodes did not converge within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        for node in self.nodes.values_mut() {
            let _ = node.stop.take().unwrap().send(());
        }
        for (id, node) in self.nodes {
            node.task
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("node {id}: {e}"));
        }
    }
}

fn mkdir(path: &str) -> Command {
    Command::Mkdir {
        path: path.to_string(),
        parents: true,
        mtime_ms: 1,
    }
}

fn paths(tree: &[(String, Inode)]) -> Vec<&str> {
    tree.iter().map(|(p, _)| p.as_str()).collect()
}

/// Writes `command` through whichever node leads, retrying while
/// leadership moves, for up to `timeout`.
async fn write_via_leader(group: &Group, command: Command, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let leader = group
            .nodes
            .values()
            .find(|n| n.node.status().role == "leader");
        if let Some(leader) = leader {
            let call = leader.node.write(command.clone());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), call).await {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{command:?} not written in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_serves_nothing_and_the_majority_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let filters = Filters::default();
    let group = Group::start(dir.path(), &filters).await;
    let (old, old_term) = group.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    group.node(old).write(mkdir("/before")).await.unwrap();

    filters.add(Isolate(old));
    let rest: Vec<NodeId> = (1..=3).filter(|id| *id != old).collect();
    let (new, new_term) = group.leader(&rest, Duration::from_secs(10)).await;
    assert!(new_term > old_term, "{new_term} <= {old_term}");
    group.node(new).write(mkdir("/during")).await.unwrap();

    // The old leader can neither commit nor serve a linearizable read: a
    // quorum no longer acknowledges it.
    let write = tokio::time::timeout(
        Duration::from_secs(3),
        group.node(old).write(mkdir("/lost")),
    );
    assert!(
        !matches!(write.await, Ok(Ok(_))),
        "the isolated leader committed a write"
    );
    let read = group.node(old).read(|state| state.namespace.walk());
    let read = tokio::time::timeout(Duration::from_secs(3), read).await;
    assert!(
        !matches!(read, Ok(Ok(_))),
        "the isolated leader served a read"
    );

    filters.clear();
    let (leader, _) = group.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    group.node(leader).write(mkdir("/after")).await.unwrap();
    let tree = group.converged(Duration::from_secs(10)).await;
    assert_eq!(paths(&tree), ["/after", "/before", "/during"]);
    group.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_elect_and_one_way_cuts_heal() {
    let dir = tempfile::tempdir().unwrap();
    let filters = Filters::default();
    let group = Group::start(dir.path(), &filters).await;
    let (leader, _) = group.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != follower).unwrap();

    // The follower alone on its side: it never becomes leader, and the
    // majority keeps committing.
    filters.add(Partition::new([follower], [leader, other]));
    for i in 0..5 {
        group
            .node(leader)
            .write(mkdir(&format!("/major/{i}")))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(group.node(follower).status().role, "leader");
    filters.clear();
    let tree = group.converged(Duration::from_secs(10)).await;
    assert_eq!(
        tree.iter()
            .filter(|(p, _)| p.starts_with("/major/"))
            .count(),
        5
    );

    // The leader's messages to one follower are lost (its answers are
    // not): the other follower keeps the quorum.
    filters.add(OneWay {
        from: leader,
        to: follower,
    });
    write_via_leader(&group, mkdir("/one-way"), Duration::from_secs(15)).await;
    filters.clear();
    let tree = group.converged(Duration::from_secs(10)).await;
    assert!(paths(&tree).contains(&"/one-way"), "{:?}", paths(&tree));
    group.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_through_delays_and_lost_messages() {
    let dir = tempfile::tempdir().unwrap();
    let filters = Filters::default();
    let group = Group::start(dir.path(), &filters).await;
    group.leader(&[1, 2, 3], Duration::from_secs(10)).await;

    filters.add(Delay {
        delay: Duration::from_millis(15),
        only: None,
    });
    filters.add(DropRate::new(100, 42));
    for i in 0..30 {
        write_via_leader(
            &group,
            mkdir(&format!("/lossy/{i:02}")),
            Duration::from_secs(20),
        )
        .await;
    }
    filters.clear();
    let tree = group.converged(Duration::from_secs(10)).await;
    let written: Vec<String> = (0..30).map(|i| format!("/lossy/{i:02}")).collect();
    let found: Vec<&str> = paths(&tree)
        .into_iter()
        .filter(|p| p.starts_with("/lossy/"))
        .collect();
    assert_eq!(found, written);
    group.stop().await;
}

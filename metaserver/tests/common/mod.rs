//! Multi-process metaserver clusters for tests: the real `shardfs-meta`
//! binary, one data dir and log file per node, kill -9 and restarts, and
//! offline inspection of each node's store.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardfs_meta::namespace::Inode;
use shardfs_meta::store;
use shardfs_proto::meta::v1 as pb;
use shardfs_proto::meta_client::MetaClient;

/// Ports that were free a moment ago (the nodes must know each other's
/// addresses before they start, so port 0 cannot be used).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub struct MetaProcess {
    pub child: Child,
    pub id: u64,
    pub addr: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (child, _) in self.chunk_servers.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MetaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    /// Chunk servers registered with this group (id -> process, address).
    pub chunk_servers: BTreeMap<u64, (Child, String)>,
    pub dir: PathBuf,
    /// id -> address of every node ever started.
    pub addrs: BTreeMap<u64, String>,
    pub peers: String,
    pub nodes: BTreeMap<u64, MetaProcess>,
    pub extra_args: Vec<String>,
}

impl Cluster {
    /// Starts `n` metaservers forming a new group.
    pub fn start(dir: &Path, n: usize, extra_args: &[&str]) -> Self {
        let ports = free_ports(n);
        let addrs: BTreeMap<u64, String> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| (i as u64 + 1, format!("127.0.0.1:{port}")))
            .collect();
        let peers = addrs
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            chunk_servers: BTreeMap::new(),
            dir: dir.to_path_buf(),
            addrs,
            peers,
            nodes: BTreeMap::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        let ids: Vec<u64> = cluster.addrs.keys().copied().collect();
        for id in ids {
            cluster.start_node(id);
        }
        cluster
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("meta-{id}"))
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.join(format!("meta-{id}.log"))).unwrap_or_default()
    }

    /// Starts (or restarts) node `id` with the group's peer list.
    pub fn start_node(&mut self, id: u64) {
        let peers = self.peers.clone();
        self.spawn(id, Some(&peers));
    }

    /// Starts a node that is not in the peer list (to be added later).
    pub fn start_extra_node(&mut self, id: u64) {
        let port = free_ports(1)[0];
        self.addrs.insert(id, format!("127.0.0.1:{port}"));
        self.spawn(id, None);
    }

    fn spawn(&mut self, id: u64, peers: Option<&str>) {
        use std::io::BufRead;
        let addr = self.addrs[&id].clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("meta-{id}.log")))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_shardfs-meta"));
        command
            .args(["--id", &id.to_string(), "--listen", &addr, "--data-dir"])
            .arg(self.data_dir(id))
            .args(["--heartbeat-ms", "250", "--election-timeout-ms", "1000"])
            .args(&self.extra_args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some(peers) = peers {
            command.args(["--peers", peers]);
        }
        let mut child = command.spawn().expect("spawn shardfs-meta");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("listening on"),
            "metaserver {id} did not start: {line:?}\n{}",
            self.log(id)
        );
        self.nodes.insert(id, MetaProcess { child, id, addr });
    }

    /// Starts chunk server `id` (the real `shardfs-chunk` binary, built by
    /// `cargo test --workspace` next to `shardfs-meta`) reporting to this group.
    pub fn start_chunk_server(&mut self, id: u64) {
        use std::io::BufRead;
        let binary =
            PathBuf::from(env!("CARGO_BIN_EXE_shardfs-meta")).with_file_name("shardfs-chunk");
        assert!(
            binary.exists(),
            "{} is missing: run the tests with `cargo test --workspace` (or `cargo build --bins` first)",
            binary.display()
        );
        let meta = self.addrs.values().cloned().collect::<Vec<_>>().join(",");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("chunk-{id}.log")))
            .unwrap();
        let mut child = Command::new(binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--id",
                &id.to_string(),
                "--meta",
                &meta,
            ])
            .args(["--zone", &format!("zone-{id}"), "--data-dir"])
            .arg(self.dir.join(format!("chunk-{id}")))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn shardfs-chunk");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("chunk server {id} did not start: {line:?}"))
            .to_string();
        self.chunk_servers.insert(id, (child, addr));
    }

    /// Starts `n` chunk servers, stores the chunk pool on each, and waits
    /// until the leader sees them all alive.
    pub async fn with_chunk_servers(&mut self, n: u64) {
        for id in 1..=n {
            self.start_chunk_server(id);
        }
        for (_, addr) in self.chunk_servers.values() {
            let client = shardfs_proto::chunk_client::ChunkClient::new(addr).unwrap();
            for i in 0..POOL_SIZE {
                let (id, data) = pool_chunk(i);
                client.put(id, data).await.unwrap();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = self.client().cluster_status().await
                && status.chunk_servers.iter().filter(|c| c.alive).count() == n as usize
            {
                return;
            }
            assert!(Instant::now() < deadline, "chunk servers did not register");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(&mut self, id: u64) {
        if let Some(mut node) = self.nodes.remove(&id) {
            node.child.kill().unwrap();
            node.child.wait().unwrap();
        }
    }

    /// SIGTERM and wait, without blocking the async runtime.
    pub async fn terminate(&mut self, id: u64) -> bool {
        let Some(mut node) = self.nodes.remove(&id) else {
            return false;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(node.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = node.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "metaserver {id} ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            assert!(self.terminate(id).await, "metaserver {id} exited uncleanly");
        }
    }

    /// A client over every running node.
    pub fn client(&self) -> MetaClient {
        let addrs: Vec<String> = self.nodes.values().map(|n| n.addr.clone()).collect();
        MetaClient::new(&addrs).unwrap()
    }

    /// The status as node `id` sees it.
    pub async fn status_of(&self, id: u64) -> Option<pb::ClusterStatusResponse> {
        let client = self.client();
        let mut direct = client.direct(&self.addrs[&id]).ok()?;
        let call = direct.cluster_status(pb::ClusterStatusRequest {});
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(response)) => Some(response.into_inner()),
            _ => None,
        }
    }

    /// Waits until a running node is leader and every running node agrees.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for id in self.nodes.keys() {
                if let Some(status) = self.status_of(*id).await {
                    leaders.push(status.leader_id);
                }
            }
            let first = leaders.first().copied().unwrap_or(0);
            if first != 0
                && leaders.len() == self.nodes.len()
                && leaders.iter().all(|l| *l == first)
                && self.nodes.contains_key(&first)
            {
                return first;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every path under the root with its inode, read through the leader.
pub async fn listing(client: &MetaClient) -> Vec<(String, pb::Entry)> {
    let mut out = Vec::new();
    let mut stack = vec!["/".to_string()];
    while let Some(dir) = stack.pop() {
        for entry in client.list(&dir).await.unwrap() {
            let path = if dir == "/" {
                format!("/{}", entry.name)
            } else {
                format!("{dir}/{}", entry.name)
            };
            if entry.is_dir {
                stack.push(path.clone());
            }
            out.push((path, entry));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every path of a stopped node's store, read offline from its data dir.
pub fn offline_listing(data_dir: &Path) -> Vec<(String, Inode)> {
    let (_log, sm) = store::open(&data_dir.join("raft")).expect("open stopped node's store");
    let state = sm.state();
    state.read().unwrap().namespace.walk()
}

/// Chunks stored on every chunk server by `with_chunk_servers`; files in
/// tests are made of them.
pub const POOL_SIZE: usize = 64;

/// Pool chunk `i`: its id and bytes.
pub fn pool_chunk(i: usize) -> (shardfs_proto::ChunkId, bytes::Bytes) {
    let mut data = vec![0u8; 1000 + i];
    let mut hasher = blake3::Hasher::new();
    hasher.update(format!("pool-{i}").as_bytes());
    hasher.finalize_xof().fill(&mut data);
    (shardfs_proto::ChunkId::of(&data), data.into())
}

/// A file description for a commit: `chunks` chunks of the pool, chosen
/// by `seed`.
pub fn file_info(seed: u64, chunks: usize) -> pb::FileInfo {
    let refs: Vec<pb::ChunkRef> = (0..chunks)
        .map(|j| {
            let i = (seed as usize).wrapping_mul(7).wrapping_add(j * 13) % POOL_SIZE;
            let (id, data) = pool_chunk(i);
            pb::ChunkRef {
                id: id.to_vec().into(),
                length: data.len() as u64,
            }
        })
        .collect();
    pb::FileInfo {
        size: refs.iter().map(|c| c.length).sum(),
        chunks: refs,
        replication: 3,
        content_id: Default::default(),
        mtime_ms: 0,
    }
}

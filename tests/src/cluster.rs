//! A real cluster: `shardfs-meta` and `shardfs-chunk` processes, each with
//! its own data directory (`meta-ID/`, `chunk-ID/`) and log (`meta-ID.log`,
//! `chunk-ID.log`) in the test's directory, on loopback ports or behind a
//! prefix command (`ip netns exec NS`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shardfs_client::certs::{Ca, Member};
use shardfs_client::{Client, ClientConfig};
use shardfs_meta::namespace::Inode;
use shardfs_meta::store;
use shardfs_proto::ChunkId;
use shardfs_proto::chunk_client::ChunkClient;
use shardfs_proto::meta::v1 as pb;
use shardfs_proto::meta_client::MetaClient;
use shardfs_proto::process::{ServerChild, free_ports};
use shardfs_proto::security::{Security, TlsFiles};

use crate::bins::binary;
use crate::data::{POOL_SIZE, pool_chunk};

/// Metaserver flags that make failures show within seconds: a chunk
/// server is dead after 3 s of silence, and repair looks only at what
/// changed (apart from a new leader's first round), so the tests show that
/// alone finds every need.
pub const FAST_DETECTION: [&str; 4] = ["--dead-after-secs", "3", "--repair-full-scan-secs", "3600"];

/// Raft timing for every metaserver the harness starts.
const RAFT_TIMING: [&str; 4] = ["--heartbeat-ms", "250", "--election-timeout-ms", "1000"];

pub struct Cluster {
    pub dir: PathBuf,
    /// Running chunk servers, by id.
    pub chunks: BTreeMap<u64, ServerChild>,
    /// Running metaservers, by id.
    pub metas: BTreeMap<u64, ServerChild>,
    /// The address of metaserver `i + 1` at index `i`, for every
    /// metaserver ever started (founders and those added later).
    pub meta_addrs: Vec<String>,
    /// `--peers` of the founding group.
    founders: String,
    /// Extra flags for every metaserver and every chunk server.
    pub meta_args: Vec<String>,
    pub chunk_args: Vec<String>,
    /// A command each metaserver is started through (like `ip netns exec
    /// NS`), by id.
    pub meta_prefix: BTreeMap<u64, Vec<String>>,
    /// The host chunk servers listen on.
    pub chunk_host: String,
    /// The cluster's CA and the certificates it issued, in `DIR/tls/`.
    pub tls: TlsDir,
}

/// The harness's certificate authority: every server gets a certificate
/// from it (`tls/meta-ID.pem`, `tls/chunk-ID.pem`), clients trust
/// `tls/ca.pem`.
pub struct TlsDir {
    pub dir: PathBuf,
    ca: Ca,
}

/// The member id of the harness itself when it needs a metaserver's
/// certificate (to list or delete chunks on a chunk server directly, as an
/// operator's tool would).
pub const OBSERVER_META_ID: u64 = 999;

impl TlsDir {
    fn create(dir: &Path) -> Self {
        let dir = dir.join("tls");
        // A cluster started again on the same directory keeps its CA.
        let ca = match Ca::load(&dir) {
            Ok(ca) => ca,
            Err(_) => {
                let ca = Ca::generate().expect("a test CA");
                ca.save(&dir).expect("save the test CA");
                ca
            }
        };
        let token = dir.join("admin.token");
        if !token.exists() {
            let (text, _) = shardfs_proto::token::new_token("harness-admin").expect("a token");
            shardfs_client::certs::write_private(&token, &format!("{text}\n"))
                .expect("write the admin token");
        }
        Self { dir, ca }
    }

    /// The bootstrap admin token every metaserver accepts.
    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.join("admin.token")
    }

    /// The text of the bootstrap admin token.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.admin_token_file())
            .expect("the admin token")
            .trim()
            .to_string()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(shardfs_client::certs::CA_CERT)
    }

    /// The certificate and key of `member`, issued on first use.
    pub fn files_of(&self, member: Member) -> (PathBuf, PathBuf) {
        let cert = self.dir.join(format!("{}.pem", member.stem()));
        let key = self.dir.join(format!("{}.key", member.stem()));
        if cert.exists() && key.exists() {
            return (cert, key);
        }
        self.ca
            .issue_into(member, &[], &self.dir)
            .expect("issue a test certificate")
    }

    /// `--tls-cert C --tls-key K --tls-ca CA` for `member`.
    pub fn server_args(&self, member: Member) -> Vec<String> {
        let (cert, key) = self.files_of(member);
        [
            "--tls-cert".to_string(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
            "--tls-ca".into(),
            self.ca_path().display().to_string(),
        ]
        .to_vec()
    }

    /// What a client without a certificate uses.
    pub fn client(&self) -> Security {
        Security::load(&TlsFiles {
            ca: self.ca_path(),
            identity: None,
        })
        .expect("client TLS")
    }

    /// TLS as `member` (mutual TLS with its certificate).
    pub fn member(&self, member: Member) -> Security {
        Security::load(&TlsFiles {
            ca: self.ca_path(),
            identity: Some(self.files_of(member)),
        })
        .expect("member TLS")
    }

    /// TLS as a metaserver that is no voter: allowed on chunk servers'
    /// member-only calls (ListChunks, DeleteChunks, ...).
    pub fn observer(&self) -> Security {
        self.member(Member::Meta(OBSERVER_META_ID))
    }

    /// A CA and certificates of another cluster, in `dir`.
    pub fn foreign(dir: &Path) -> Self {
        Self::create(dir)
    }
}

impl Cluster {
    /// Three metaservers and `chunk_servers` chunk servers, healthy, with
    /// [`FAST_DETECTION`].
    pub async fn start(dir: &Path, chunk_servers: u64) -> Self {
        Self::start_with(dir, chunk_servers, &[], &[]).await
    }

    /// Like [`Cluster::start`], with extra metaserver and chunk server
    /// flags.
    pub async fn start_with(
        dir: &Path,
        chunk_servers: u64,
        meta_args: &[&str],
        chunk_args: &[&str],
    ) -> Self {
        let meta_addrs = loopback_addrs(3);
        Self::start_custom(
            dir,
            chunk_servers,
            meta_addrs,
            BTreeMap::new(),
            "127.0.0.1",
            meta_args,
            chunk_args,
        )
        .await
    }

    /// Metaservers at the given addresses, each started through its prefix
    /// command when it has one, and chunk servers on `chunk_host`; waits
    /// until the cluster is healthy.
    pub async fn start_custom(
        dir: &Path,
        chunk_servers: u64,
        meta_addrs: Vec<String>,
        meta_prefix: BTreeMap<u64, Vec<String>>,
        chunk_host: &str,
        meta_args: &[&str],
        chunk_args: &[&str],
    ) -> Self {
        let mut args: Vec<&str> = FAST_DETECTION.to_vec();
        args.extend_from_slice(meta_args);
        let mut cluster = Self::new(dir, meta_addrs, &args);
        cluster.chunk_args = chunk_args.iter().map(|a| a.to_string()).collect();
        cluster.meta_prefix = meta_prefix;
        cluster.chunk_host = chunk_host.to_string();
        for id in 1..=cluster.meta_addrs.len() as u64 {
            cluster.start_meta(id);
        }
        for id in 1..=chunk_servers {
            cluster.start_chunk(id);
        }
        cluster.wait_healthy(Duration::from_secs(30)).await;
        cluster
    }

    /// A group of `n` metaservers on loopback with the default failure
    /// detection plus `meta_args`, and no chunk servers yet (see
    /// [`Cluster::with_chunk_servers`]). Returns once every one listens.
    pub fn metaservers(dir: &Path, n: usize, meta_args: &[&str]) -> Self {
        let mut cluster = Self::new(dir, loopback_addrs(n), meta_args);
        for id in 1..=n as u64 {
            cluster.start_meta(id);
        }
        cluster
    }

    fn new(dir: &Path, meta_addrs: Vec<String>, meta_args: &[&str]) -> Self {
        let founders = meta_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            dir: dir.to_path_buf(),
            chunks: BTreeMap::new(),
            metas: BTreeMap::new(),
            meta_addrs,
            founders,
            meta_args: meta_args.iter().map(|a| a.to_string()).collect(),
            chunk_args: Vec::new(),
            meta_prefix: BTreeMap::new(),
            chunk_host: "127.0.0.1".to_string(),
            tls: TlsDir::create(dir),
        }
    }

    // ---- metaservers ----

    /// The address of metaserver `id`.
    pub fn meta_addr(&self, id: u64) -> &str {
        &self.meta_addrs[id as usize - 1]
    }

    /// The data directory of metaserver `id`.
    pub fn meta_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("meta-{id}"))
    }

    /// Everything metaserver `id` has logged.
    pub fn meta_log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.join(format!("meta-{id}.log"))).unwrap_or_default()
    }

    /// Starts (or restarts) metaserver `id` of the founding group.
    pub fn start_meta(&mut self, id: u64) {
        let peers = self.founders.clone();
        self.spawn_meta(id, Some(&peers));
    }

    /// Starts metaserver `id`, the next new one, outside the founding group
    /// (to be added with `AddMetaserver`).
    pub fn start_extra_meta(&mut self, id: u64) {
        assert_eq!(
            id as usize,
            self.meta_addrs.len() + 1,
            "metaserver ids are consecutive"
        );
        self.meta_addrs.extend(loopback_addrs(1));
        self.spawn_meta(id, None);
    }

    fn spawn_meta(&mut self, id: u64, peers: Option<&str>) {
        let addr = self.meta_addr(id).to_string();
        let mut command = match self.meta_prefix.get(&id) {
            Some(prefix) => {
                let mut command = Command::new(&prefix[0]);
                command.args(&prefix[1..]).arg(binary("shardfs-meta"));
                command
            }
            None => Command::new(binary("shardfs-meta")),
        };
        command
            .args(["--id", &id.to_string(), "--listen", &addr])
            .arg("--data-dir")
            .arg(self.meta_dir(id))
            .args(RAFT_TIMING)
            .args(self.tls.server_args(Member::Meta(id)))
            .arg("--admin-token-file")
            .arg(self.tls.admin_token_file())
            .args(&self.meta_args)
            .env("RUST_LOG", "info,openraft=warn");
        if let Some(peers) = peers {
            command.args(["--peers", peers]);
        }
        let server = self.spawn(command, &format!("metaserver {id}"), &format!("meta-{id}"));
        self.metas.insert(id, server);
    }

    /// Starts `command`, logging to `NAME.log` in the test's directory,
    /// and waits for its listening line (`what` names it if it fails).
    fn spawn(&self, command: Command, what: &str, name: &str) -> ServerChild {
        let log = self.dir.join(format!("{name}.log"));
        ServerChild::spawn(command, what, &log).unwrap_or_else(|e| panic!("{e}"))
    }

    /// kill -9 metaserver `id` (and reap it).
    pub fn kill_meta(&mut self, id: u64) {
        self.metas.remove(&id); // dropping kills and reaps it
    }

    /// SIGTERM metaserver `id` and wait up to 20 s (off the async runtime);
    /// returns whether it exited 0, false if it was not running.
    pub async fn terminate_meta(&mut self, id: u64) -> bool {
        let Some(mut server) = self.metas.remove(&id) else {
            return false;
        };
        let status = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(20)))
            .await
            .unwrap();
        status
            .unwrap_or_else(|| panic!("metaserver {id} ignored SIGTERM"))
            .success()
    }

    /// Stops every metaserver with SIGTERM, one by one, asserting each
    /// exits cleanly.
    pub async fn stop_metas(&mut self) {
        let ids: Vec<u64> = self.metas.keys().copied().collect();
        for id in ids {
            assert!(
                self.terminate_meta(id).await,
                "metaserver {id} exited uncleanly"
            );
        }
    }

    /// A client over every metaserver ever started.
    pub fn meta(&self) -> MetaClient {
        MetaClient::new(&self.meta_addrs, &self.tls.client())
            .unwrap()
            .with_token(&self.tls.admin_token())
            .unwrap()
    }

    /// A client over the running metaservers only.
    pub fn running_meta(&self) -> MetaClient {
        let addrs: Vec<String> = self.metas.values().map(|m| m.addr.clone()).collect();
        MetaClient::new(&addrs, &self.tls.client())
            .unwrap()
            .with_token(&self.tls.admin_token())
            .unwrap()
    }

    /// The status as metaserver `id` sees it (`None` if it does not answer
    /// within 2 s).
    pub async fn status_of(&self, id: u64) -> Option<pb::ClusterStatusResponse> {
        let mut direct = self.meta().direct(self.meta_addr(id)).ok()?;
        let call = direct.cluster_status(pb::ClusterStatusRequest {});
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(response)) => Some(response.into_inner()),
            _ => None,
        }
    }

    /// Waits until a running metaserver is leader and every running one
    /// agrees; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for id in self.metas.keys() {
                if let Some(status) = self.status_of(*id).await {
                    leaders.push(status.leader_id);
                }
            }
            let first = leaders.first().copied().unwrap_or(0);
            if first != 0
                && leaders.len() == self.metas.len()
                && leaders.iter().all(|l| *l == first)
                && self.metas.contains_key(&first)
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

    // ---- chunk servers ----

    pub fn chunk_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("chunk-{id}"))
    }

    /// Starts (or restarts) chunk server `id` on a free port.
    pub fn start_chunk(&mut self, id: u64) {
        let listen = format!("{}:0", self.chunk_host);
        self.start_chunk_at(id, &listen);
    }

    /// Starts chunk server `id` listening on `listen`, in zone `zone-ID`,
    /// reporting to every metaserver.
    pub fn start_chunk_at(&mut self, id: u64, listen: &str) {
        let mut command = Command::new(binary("shardfs-chunk"));
        command
            .args(["--listen", listen, "--id", &id.to_string()])
            .args(["--meta", &self.meta_addrs.join(",")])
            .args(["--zone", &format!("zone-{id}"), "--data-dir"])
            .arg(self.chunk_dir(id))
            .args(self.tls.server_args(Member::Chunk(id)))
            .args(&self.chunk_args)
            .env("RUST_LOG", "info");
        let server = self.spawn(
            command,
            &format!("chunk server {id}"),
            &format!("chunk-{id}"),
        );
        self.chunks.insert(id, server);
    }

    /// kill -9 chunk server `id` (and reap it).
    pub fn kill_chunk(&mut self, id: u64) {
        self.chunks.remove(&id); // dropping kills and reaps it
    }

    /// Starts chunk servers 1..=n, stores the chunk pool
    /// ([`crate::data::pool_chunk`]) on each, and waits until the leader
    /// sees them all alive.
    pub async fn with_chunk_servers(&mut self, n: u64) {
        for id in 1..=n {
            self.start_chunk(id);
        }
        for server in self.chunks.values() {
            let client = ChunkClient::new(&server.addr, &self.tls.observer()).unwrap();
            for i in 0..POOL_SIZE {
                let (id, data) = pool_chunk(i);
                client.put(id, data).await.unwrap();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = self.running_meta().cluster_status().await
                && status.chunk_servers.iter().filter(|c| c.alive).count() == n as usize
            {
                return;
            }
            assert!(Instant::now() < deadline, "chunk servers did not register");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The chunk server id listening at `addr`.
    pub fn chunk_id_at(&self, addr: &str) -> u64 {
        *self
            .chunks
            .iter()
            .find(|(_, p)| p.addr == addr)
            .unwrap_or_else(|| panic!("no chunk server at {addr}"))
            .0
    }

    /// The on-disk file of chunk `id` on chunk server `server`.
    pub fn chunk_file(&self, server: u64, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunk_dir(server)
            .join("chunks")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(hex)
    }

    // ---- the whole cluster ----

    /// Stops every server as `local-cluster.sh down` does: SIGTERM, then
    /// SIGKILL for one still running after 15 s. Their data stays.
    pub fn stop_all(&mut self) {
        let mut all: Vec<ServerChild> = std::mem::take(&mut self.chunks).into_values().collect();
        all.extend(std::mem::take(&mut self.metas).into_values());
        for server in &all {
            server.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for mut server in all {
            while server.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Dropping kills one still running.
        }
    }

    /// Waits for a leader that sees every running chunk server alive.
    pub async fn wait_healthy(&self, timeout: Duration) {
        let meta = self.meta();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(2), meta.cluster_status()).await
            {
                let alive = status.chunk_servers.iter().filter(|c| c.alive).count();
                if status.leader_id != 0 && alive == self.chunks.len() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "cluster not healthy in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client library connection to this cluster (trusting its CA
    /// unless `config` says otherwise).
    pub async fn client(&self, config: ClientConfig) -> Client {
        Client::connect_with(&self.meta_addrs, self.secured(config))
            .await
            .expect("connect")
    }

    /// `config`, trusting this cluster's CA and holding its admin token
    /// unless it says otherwise.
    pub fn secured(&self, mut config: ClientConfig) -> ClientConfig {
        if config.security.is_none() {
            config.security = Some(self.tls.client());
        }
        if config.token.is_none() {
            config.token = Some(self.tls.admin_token());
        }
        config
    }

    /// A chunk client for the chunk server at `addr`, holding a
    /// metaserver's certificate (it may list and delete chunks).
    pub fn observer_chunk_client(&self, addr: &str) -> ChunkClient {
        ChunkClient::new(addr, &self.tls.observer()).expect("chunk client")
    }

    /// The `shardfs` binary against this cluster (`--meta` and `--ca`
    /// given, the admin token in `SHARDFS_TOKEN`); add arguments and run
    /// it.
    pub fn shardfs(&self) -> Command {
        let mut command = crate::cli::shardfs(&self.meta_addrs.join(","));
        command
            .arg("--ca")
            .arg(self.tls.ca_path())
            .env("SHARDFS_TOKEN", self.tls.admin_token());
        command
    }

    /// Runs the `shardfs` binary against this cluster.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.shardfs().args(args).output().expect("run shardfs")
    }

    /// Copies every log of the test's directory to
    /// `$TMPDIR/shardfs-test-logs/<test>-<pid>/` and prints where, with the
    /// last lines of each: the test's directory is about to be removed.
    fn keep_logs(&self) {
        let test = std::thread::current()
            .name()
            .unwrap_or("test")
            .replace("::", "-");
        let kept = std::env::temp_dir()
            .join("shardfs-test-logs")
            .join(format!("{test}-{}", std::process::id()));
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let _ = std::fs::create_dir_all(&kept);
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        eprintln!("server logs kept in {}", kept.display());
        for log in logs {
            let name = log.file_name().unwrap_or_default();
            let _ = std::fs::copy(&log, kept.join(name));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- last lines of {}:", name.to_string_lossy());
            for line in &lines[lines.len().saturating_sub(10)..] {
                eprintln!("  {line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs();
        }
        // The servers' own drops kill and reap them.
    }
}

/// `n` loopback addresses on ports free a moment ago.
fn loopback_addrs(n: usize) -> Vec<String> {
    free_ports(n)
        .expect("free ports")
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect()
}

/// Every path under the root with its entry, read through the leader.
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

/// Every path of a stopped metaserver's store, read offline from its data
/// dir.
pub fn offline_listing(data_dir: &Path) -> Vec<(String, Inode)> {
    let (_log, sm) = store::open(&data_dir.join("raft")).expect("open stopped node's store");
    let state = sm.state();
    state.read().unwrap().namespace.walk()
}

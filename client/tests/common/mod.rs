//! A real cluster for client tests: `shardfs-meta` and `shardfs-chunk`
//! processes (built by `cargo test --workspace` next to `shardfs`), each
//! with its own data directory and log, on loopback ports.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardfs_client::{Client, ClientConfig};
use shardfs_proto::ChunkId;
use shardfs_proto::meta_client::MetaClient;

/// The directory holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shardfs"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build --bins` first)",
        path.display()
    );
    path
}

pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub struct Process {
    pub child: Child,
    pub addr: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct TestCluster {
    pub dir: PathBuf,
    pub metas: BTreeMap<u64, Process>,
    pub chunks: BTreeMap<u64, Process>,
    pub meta_addrs: Vec<String>,
    /// Extra flags for every metaserver and every chunk server.
    pub meta_args: Vec<String>,
    pub chunk_args: Vec<String>,
    /// A command each metaserver is started through (like `ip netns exec
    /// NS`), by id.
    pub meta_prefix: BTreeMap<u64, Vec<String>>,
    /// The host chunk servers listen on.
    pub chunk_host: String,
}

/// Reads the `listening on ADDR` line a server prints once it serves.
fn wait_listening(child: &mut Child, what: &str, log: &Path) -> String {
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| {
            panic!(
                "{what} did not start: {line:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .to_string()
}

impl TestCluster {
    /// Three metaservers and `chunk_servers` chunk servers, healthy.
    pub async fn start(dir: &Path, chunk_servers: u64) -> Self {
        Self::start_with(dir, chunk_servers, &[], &[]).await
    }

    /// Like [`TestCluster::start`], with extra metaserver and chunk server
    /// flags.
    pub async fn start_with(
        dir: &Path,
        chunk_servers: u64,
        meta_args: &[&str],
        chunk_args: &[&str],
    ) -> Self {
        let ports = free_ports(3);
        let meta_addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
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
    /// command when it has one.
    pub async fn start_custom(
        dir: &Path,
        chunk_servers: u64,
        meta_addrs: Vec<String>,
        meta_prefix: BTreeMap<u64, Vec<String>>,
        chunk_host: &str,
        meta_args: &[&str],
        chunk_args: &[&str],
    ) -> Self {
        let mut cluster = Self {
            dir: dir.to_path_buf(),
            metas: BTreeMap::new(),
            chunks: BTreeMap::new(),
            meta_addrs,
            meta_args: meta_args.iter().map(|a| a.to_string()).collect(),
            chunk_args: chunk_args.iter().map(|a| a.to_string()).collect(),
            meta_prefix,
            chunk_host: chunk_host.to_string(),
        };
        for id in 1..=3 {
            cluster.start_meta(id);
        }
        for id in 1..=chunk_servers {
            cluster.start_chunk(id);
        }
        cluster.wait_healthy(Duration::from_secs(30)).await;
        cluster
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap()
    }

    pub fn start_meta(&mut self, id: u64) {
        let peers = self
            .meta_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let addr = self.meta_addrs[id as usize - 1].clone();
        let mut command = match self.meta_prefix.get(&id) {
            Some(prefix) => {
                let mut command = Command::new(&prefix[0]);
                command.args(&prefix[1..]).arg(binary("shardfs-meta"));
                command
            }
            None => Command::new(binary("shardfs-meta")),
        };
        let mut child = command
            .args([
                "--id",
                &id.to_string(),
                "--listen",
                &addr,
                "--peers",
                &peers,
            ])
            .arg("--data-dir")
            .arg(self.dir.join(format!("meta-{id}")))
            .args(["--heartbeat-ms", "250", "--election-timeout-ms", "1000"])
            .args(["--dead-after-secs", "3"])
            // Repair looks only at what changed (apart from a new leader's
            // first round), so the tests show that alone finds every need.
            .args(["--repair-full-scan-secs", "3600"])
            .args(&self.meta_args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(self.log(&format!("meta-{id}"))))
            .spawn()
            .expect("spawn shardfs-meta");
        let log = self.dir.join(format!("meta-{id}.log"));
        let addr = wait_listening(&mut child, &format!("metaserver {id}"), &log);
        self.metas.insert(id, Process { child, addr });
    }

    pub fn chunk_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("chunk-{id}"))
    }

    pub fn start_chunk(&mut self, id: u64) {
        let listen = format!("{}:0", self.chunk_host);
        self.start_chunk_at(id, &listen);
    }

    /// Starts chunk server `id` listening on `listen`.
    pub fn start_chunk_at(&mut self, id: u64, listen: &str) {
        let mut child = Command::new(binary("shardfs-chunk"))
            .args(["--listen", listen, "--id", &id.to_string()])
            .args(["--meta", &self.meta_addrs.join(",")])
            .args(["--zone", &format!("zone-{id}"), "--data-dir"])
            .arg(self.chunk_dir(id))
            .args(&self.chunk_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(self.log(&format!("chunk-{id}"))))
            .spawn()
            .expect("spawn shardfs-chunk");
        let log = self.dir.join(format!("chunk-{id}.log"));
        let addr = wait_listening(&mut child, &format!("chunk server {id}"), &log);
        self.chunks.insert(id, Process { child, addr });
    }

    /// Stops every server as `local-cluster.sh down` does: SIGTERM, then
    /// SIGKILL for one still running after 15 s. Their data stays.
    pub fn stop_all(&mut self) {
        let mut all: Vec<Process> = std::mem::take(&mut self.chunks).into_values().collect();
        all.extend(std::mem::take(&mut self.metas).into_values());
        for process in &all {
            // SAFETY: signals a child of this process.
            unsafe { libc::kill(process.child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for mut process in all {
            while process.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Drop kills one still running.
        }
    }

    pub fn kill_meta(&mut self, id: u64) {
        self.metas.remove(&id); // Drop kills (SIGKILL) and reaps it
    }

    pub fn kill_chunk(&mut self, id: u64) {
        self.chunks.remove(&id); // Drop kills (SIGKILL) and reaps it
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

    pub fn meta(&self) -> MetaClient {
        MetaClient::new(&self.meta_addrs).unwrap()
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

    pub async fn client(&self, config: ClientConfig) -> Client {
        Client::connect_with(&self.meta_addrs, config)
            .await
            .expect("connect")
    }

    /// Runs the `shardfs` binary against this cluster.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        cli_at(&self.meta_addrs.join(","), args)
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
}

/// A command's standard output, as text.
pub fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// A command's standard error, as text.
pub fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// `output`, after asserting that its command succeeded.
pub fn ok(output: std::process::Output) -> std::process::Output {
    assert!(
        output.status.success(),
        "shardfs failed ({:?}): {}",
        output.status.code(),
        stderr(&output)
    );
    output
}

/// Runs `shardfs` with `--meta meta`, no terminal, and returns its output.
pub fn cli_at(meta: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shardfs"))
        .args(["--meta", meta])
        .args(args)
        .env_remove("SHARDFS_META")
        .stdin(Stdio::null())
        .output()
        .expect("run shardfs")
}

/// Busy loops on `threads` threads, as other work on a shared machine
/// would load it; they stop when dropped, or after `max` at the latest.
pub struct CpuLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl CpuLoad {
    pub fn start(threads: usize, max: Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let until = Instant::now() + max;
                    let mut spins = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until
                    {
                        for _ in 0..10_000 {
                            spins = std::hint::black_box(spins.wrapping_add(1));
                        }
                    }
                    spins
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Deterministic incompressible bytes.
pub fn data(len: usize, seed: &str) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(seed.as_bytes());
    hasher.finalize_xof().fill(&mut out);
    out
}

pub fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Relative path -> BLAKE3 of every file under `root`.
pub fn tree_hashes(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if path.is_dir() {
                out.insert(format!("{rel}/"), String::new());
                stack.push(path);
            } else {
                out.insert(rel, hash(&std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// A client configuration writing chunks of `chunk` bytes.
pub fn chunked(chunk: usize) -> ClientConfig {
    ClientConfig {
        chunk_size: chunk as u64,
        ..ClientConfig::default()
    }
}

/// Puts each (path, bytes) with the default options; returns them by path.
pub async fn put_all(
    client: &Client,
    files: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> BTreeMap<String, Vec<u8>> {
    let mut put = BTreeMap::new();
    for (path, bytes) in files {
        client
            .put_bytes(
                bytes.clone().into(),
                &path,
                &shardfs_client::PutOptions::default(),
            )
            .await
            .unwrap();
        put.insert(path, bytes);
    }
    put
}

//! Shared helpers for the chunk server tests: deterministic test data, an
//! in-process server on a real socket, and the real binary as a child
//! process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardfs_chunk::{ChunkStore, StoreConfig, server};
use shardfs_proto::ChunkId;
use shardfs_proto::chunk::v1::chunk_service_client::ChunkServiceClient;
use shardfs_proto::chunk::v1::{PutChunkRequest, PutHeader, put_chunk_request};
use shardfs_proto::chunk_client::ChunkClient;
use shardfs_proto::process::ServerChild;
use shardfs_proto::security::Security;
use tokio::sync::oneshot;

/// The header message that opens a put stream (raw, for tests that break
/// the protocol: `id` need not be a valid id).
pub fn put_header(id: &[u8], length: u64) -> PutChunkRequest {
    PutChunkRequest {
        msg: Some(put_chunk_request::Msg::Header(PutHeader {
            id: Bytes::copy_from_slice(id),
            length,
            capability: Bytes::new(),
        })),
    }
}

/// A data message of a put stream.
pub fn put_data(bytes: Bytes) -> PutChunkRequest {
    PutChunkRequest {
        msg: Some(put_chunk_request::Msg::Data(bytes)),
    }
}

/// The generated gRPC client, for requests the typed client never sends.
pub async fn raw_client(addr: &str) -> ChunkServiceClient<tonic::transport::Channel> {
    let endpoint = shardfs_proto::transport::endpoint(addr).unwrap();
    ChunkServiceClient::new(endpoint.connect().await.unwrap())
}

/// Deterministic pseudo-random bytes, distinct per seed.
pub fn data(seed: u64, len: usize) -> Bytes {
    let mut out = vec![0u8; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.finalize_xof().fill(&mut out);
    Bytes::from(out)
}

pub fn chunk(seed: u64, len: usize) -> (ChunkId, Bytes) {
    let bytes = data(seed, len);
    (ChunkId::of(&bytes), bytes)
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Files (not directories) directly in `dir`.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Every file under `<data-dir>/chunks`, with the id its name claims.
pub fn chunk_files(data_dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![data_dir.join("chunks")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                out.push((path, name));
            }
        }
    }
    out
}

/// A chunk server running inside the test process on a real socket.
pub struct InProcessServer {
    pub addr: String,
    pub client: ChunkClient,
    pub store: ChunkStore,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), shardfs_chunk::ChunkError>>>,
}

impl InProcessServer {
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, None).await
    }

    /// A server whose chunk files are encrypted with `encryption`.
    pub async fn start_with(
        data_dir: &Path,
        encryption: Option<shardfs_chunk::at_rest::AtRestKey>,
    ) -> Self {
        let config = StoreConfig {
            data_dir: data_dir.to_path_buf(),
            capacity_bytes: None,
            encryption,
        };
        let (store, _) = ChunkStore::open(&config).expect("open store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = oneshot::channel();
        let limits = shardfs_chunk::config::Limits::default();
        let task = tokio::spawn(server::run(
            listener,
            store.clone(),
            limits,
            Security::Insecure,
            shardfs_chunk::gate::Gate::open(),
            async {
                let _ = rx.await;
            },
        ));
        let client = ChunkClient::new(&addr, &Security::Insecure).unwrap();
        Self {
            addr,
            client,
            store,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// The real `shardfs-chunk` binary as a child process (killed when
/// dropped).
pub struct ServerProcess {
    pub child: ServerChild,
    pub addr: String,
    pub data_dir: PathBuf,
}

impl ServerProcess {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &["--listen", "127.0.0.1:0"], &[])
    }

    /// Starts the binary with `--data-dir` plus `args` and `env`, and waits
    /// for its listening line. It logs to a file beside the data dir.
    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shardfs-chunk"));
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("SHARDFS_CHUNK_INSECURE", "1")
            .env("RUST_LOG", "info");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = ServerChild::spawn(command, "shardfs-chunk", &log_path(data_dir))
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            addr: child.addr.clone(),
            child,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn client(&self) -> ChunkClient {
        ChunkClient::new(&self.addr, &Security::Insecure).unwrap()
    }

    /// kill -9: no chance to clean up.
    pub fn kill9(self) {
        drop(self.child);
    }

    /// SIGTERM and wait (off the async runtime, whose tasks may hold the
    /// server's connections); returns whether it exited 0.
    pub async fn terminate(self) -> bool {
        let mut child = self.child;
        let status = tokio::task::spawn_blocking(move || child.terminate(Duration::from_secs(30)))
            .await
            .unwrap();
        status.expect("server ignored SIGTERM for 30 s").success()
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.child.log_text()
    }
}

/// Where a server process started on `data_dir` logs.
pub fn log_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

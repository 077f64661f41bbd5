//! `shardfs-meta status` and `shardfs-meta bench`.
//!
//! The benchmark starts its own cluster (three metaservers from this
//! binary, three chunk servers from `shardfs-chunk` beside it) on loopback
//! and a scratch directory, stores a pool of small chunks, then measures
//! file commits per second (4 chunks each) and lookups (stats) per second
//! at each requested concurrency, for a fixed time each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use shardfs_proto::ChunkId;
use shardfs_proto::chunk_client::ChunkClient;
use shardfs_proto::meta::v1 as pb;
use shardfs_proto::meta_client::MetaClient;
use shardfs_proto::process::{ServerChild, free_ports};
use shardfs_proto::security::Security;
use shardfs_proto::{errln, outln};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scratch directory (removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Concurrent clients to measure with (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 64])]
    pub concurrency: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Sizes (in chunks) of the single large commits timed after the
    /// rates; sizes over the per-file limit are skipped.
    #[arg(long, value_delimiter = ',', default_values_t = [4_096, 16_384, 65_536])]
    pub large_commits: Vec<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct StatusJson {
    leader: u64,
    leader_addr: String,
    term: u64,
    metaservers: Vec<MetaJson>,
    chunk_servers: Vec<ChunkJson>,
    under_replicated: u64,
}

#[derive(Serialize)]
struct MetaJson {
    id: u64,
    addr: String,
    role: String,
    voter: bool,
    last_applied: u64,
}

#[derive(Serialize)]
struct ChunkJson {
    id: u64,
    addr: String,
    zone: String,
    alive: bool,
    chunks: u64,
    used_bytes: u64,
    capacity_bytes: u64,
    free_bytes: u64,
}

pub async fn status(
    meta: &[String],
    security: &Security,
    token: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = MetaClient::new(meta, security)
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        .with_deadline(Duration::from_secs(5));
    if let Some(token) = token {
        client = client
            .with_token(token)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    }
    let status = client.cluster_status().await.map_err(|e| {
        anyhow::anyhow!(
            "{} (is the cluster running? try deploy/local-cluster.sh status)",
            e.message()
        )
    })?;
    if json {
        let out = StatusJson {
            leader: status.leader_id,
            leader_addr: status.leader_addr.clone(),
            term: status.term,
            metaservers: status
                .metaservers
                .iter()
                .map(|m| MetaJson {
                    id: m.id,
                    addr: m.addr.clone(),
                    role: m.role.clone(),
                    voter: m.voter,
                    last_applied: m.last_applied,
                })
                .collect(),
            chunk_servers: status
                .chunk_servers
                .iter()
                .map(|c| ChunkJson {
                    id: c.id,
                    addr: c.addr.clone(),
                    zone: c.zone.clone(),
                    alive: c.alive,
                    chunks: c.chunks,
                    used_bytes: c.used_bytes,
                    capacity_bytes: c.capacity_bytes,
                    free_bytes: c.free_bytes,
                })
                .collect(),
            under_replicated: status.under_replicated,
        };
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    outln!(
        "leader: metaserver {} at {} (term {})",
        status.leader_id,
        status.leader_addr,
        status.term
    );
    for m in &status.metaservers {
        outln!(
            "  metaserver {:<3} {:<22} {:<9} applied {}{}",
            m.id,
            m.addr,
            m.role,
            m.last_applied,
            if m.voter { "" } else { " (learner)" }
        );
    }
    outln!("chunk servers:");
    for c in &status.chunk_servers {
        outln!(
            "  chunk server {:<3} {:<22} zone {:<10} {:<5} {:>8} chunks {:>10.1} MiB used {:>10.1} GiB free",
            c.id,
            c.addr,
            if c.zone.is_empty() { "-" } else { &c.zone },
            if c.alive { "alive" } else { "DEAD" },
            c.chunks,
            c.used_bytes as f64 / (1u64 << 20) as f64,
            c.free_bytes as f64 / (1u64 << 30) as f64
        );
    }
    outln!("under-replicated chunks: {}", status.under_replicated);
    Ok(())
}

/// Starts `binary` with `args`, logging to `log`, and waits for its
/// listening line.
fn spawn(binary: &Path, args: &[String], what: &str, log: &Path) -> anyhow::Result<ServerChild> {
    let mut command = Command::new(binary);
    command.args(args).env("RUST_LOG", "warn");
    Ok(ServerChild::spawn(command, what, log)?)
}

/// Small distinct chunks for the files of the benchmark.
const POOL: usize = 64;

fn pool_chunk(i: usize) -> (ChunkId, bytes::Bytes) {
    let mut data = vec![0u8; 4096];
    let mut hasher = blake3::Hasher::new();
    hasher.update(format!("meta-bench-{i}").as_bytes());
    hasher.finalize_xof().fill(&mut data);
    (ChunkId::of(&data), data.into())
}

/// A file of 4 pool chunks chosen by `seed`.
fn file(seed: u64) -> pb::FileInfo {
    file_of_pool((0..4).map(|j| (seed as usize * 5 + j * 17) % POOL))
}

/// A file of `n` chunks cycling through the pool.
fn file_of(n: usize) -> pb::FileInfo {
    file_of_pool((0..n).map(|j| j % POOL))
}

/// A file made of the pool chunks at `indices`, in order.
fn file_of_pool(indices: impl Iterator<Item = usize>) -> pb::FileInfo {
    file_info_of(indices.map(|i| {
        let (id, data) = pool_chunk(i);
        (id, data.len() as u64)
    }))
}

/// A file description for a commit, of `chunks` (id, length) in order, at
/// R = 3 (the benchmark's and the tests' files).
pub fn file_info_of(chunks: impl IntoIterator<Item = (ChunkId, u64)>) -> pb::FileInfo {
    let chunks: Vec<pb::ChunkRef> = chunks
        .into_iter()
        .map(|(id, length)| pb::ChunkRef {
            id: id.to_vec().into(),
            length,
        })
        .collect();
    pb::FileInfo {
        size: chunks.iter().map(|c| c.length).sum(),
        chunks,
        replication: 3,
        content_id: Default::default(),
        mtime_ms: 0,
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) || args.seconds == 0 {
        bail!("--concurrency needs counts > 0 and --seconds must be > 0");
    }
    let base = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("shardfs-meta-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&base)?;
    let result = run_in(&args, &base).await;
    let _ = std::fs::remove_dir_all(&base);
    result
}

async fn run_in(args: &BenchArgs, base: &Path) -> anyhow::Result<()> {
    let say = |what: &str| {
        if !args.json {
            errln!("bench: {what}");
        }
    };
    let meta_bin = std::env::current_exe()?;
    let chunk_bin = meta_bin.with_file_name("shardfs-chunk");
    if !chunk_bin.exists() {
        bail!(
            "{} not found: build both binaries (cargo build --release --bins)",
            chunk_bin.display()
        );
    }
    say("starting 3 metaservers and 3 chunk servers");
    let ports = free_ports(3)?;
    let peers: BTreeMap<u64, String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}")))
        .collect();
    let peer_arg = peers
        .iter()
        .map(|(id, a)| format!("{id}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for (id, addr) in &peers {
        let args = vec![
            "--insecure".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            addr.clone(),
            "--peers".into(),
            peer_arg.clone(),
            "--data-dir".into(),
            base.join(format!("meta-{id}")).display().to_string(),
        ];
        let log = base.join(format!("meta-{id}.log"));
        procs.push(spawn(&meta_bin, &args, &format!("metaserver {id}"), &log)?);
    }
    let meta_list = peers.values().cloned().collect::<Vec<_>>().join(",");
    let mut chunk_addrs = Vec::new();
    for id in 1..=3u64 {
        let args = vec![
            "--insecure".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--id".into(),
            id.to_string(),
            "--meta".into(),
            meta_list.clone(),
            "--data-dir".into(),
            base.join(format!("chunk-{id}")).display().to_string(),
        ];
        let log = base.join(format!("chunk-{id}.log"));
        let server = spawn(&chunk_bin, &args, &format!("chunk server {id}"), &log)?;
        chunk_addrs.push(server.addr.clone());
        procs.push(server);
    }
    let addrs: Vec<String> = peers.values().cloned().collect();
    let client = MetaClient::new(&addrs, &Security::Insecure)
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(status) = client.cluster_status().await
            && status.chunk_servers.iter().filter(|c| c.alive).count() == 3
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "cluster did not come up within 30 s (logs in {})",
                base.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say("storing the chunk pool");
    for addr in &chunk_addrs {
        let chunks = ChunkClient::new(addr, &Security::Insecure)?;
        for i in 0..POOL {
            let (id, data) = pool_chunk(i);
            chunks.put(id, data).await?;
        }
    }
    // Let heartbeats report the pool so commits need no confirmation calls.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut rows = Vec::new();
    let mut committed: Vec<String> = Vec::new();
    for &c in &args.concurrency {
        say(&format!("commits, concurrency {c}"));
        let (rate, paths) = measure(&client, c, args.seconds, true, &committed).await?;
        committed.extend(paths);
        rows.push(("commits/s", c, rate));
    }
    for &c in &args.concurrency {
        say(&format!("lookups (stat), concurrency {c}"));
        let (rate, _) = measure(&client, c, args.seconds, false, &committed).await?;
        rows.push(("stats/s", c, rate));
    }
    let mut large = Vec::new();
    for &n in &args.large_commits {
        if n > crate::convert::MAX_CHUNKS_PER_FILE {
            say(&format!(
                "skipping a commit of {n} chunks: over the limit of {}",
                crate::convert::MAX_CHUNKS_PER_FILE
            ));
            continue;
        }
        say(&format!("one commit of {n} chunks"));
        let info = file_of(n);
        let started = Instant::now();
        client
            .commit(&format!("/bench/large/{n}"), info, false)
            .await
            .map_err(|e| anyhow::anyhow!("commit of {n} chunks: {}", e.message()))?;
        large.push((n, started.elapsed()));
    }
    drop(procs);
    if args.json {
        let items: Vec<String> = rows
            .iter()
            .map(|(what, c, rate)| {
                format!(r#"{{"measure":"{what}","concurrency":{c},"per_second":{rate:.0}}}"#)
            })
            .collect();
        let commits: Vec<String> = large
            .iter()
            .map(|(n, took)| format!(r#"{{"chunks":{n},"ms":{:.1}}}"#, took.as_secs_f64() * 1e3))
            .collect();
        outln!(
            r#"{{"figures":[{}],"large_commits":[{}]}}"#,
            items.join(","),
            commits.join(",")
        );
    } else {
        outln!("metaserver bench: 3 metaservers, 3 chunk servers, files of 4 chunks, R = 3");
        outln!(
            "{:<12} {:>11} {:>12}",
            "measure",
            "concurrency",
            "per second"
        );
        for (what, c, rate) in rows {
            outln!("{what:<12} {c:>11} {rate:>12.0}");
        }
        for (n, took) in large {
            outln!(
                "one commit of {n:>7} chunks: {:>8.1} ms (committed and applied on the leader)",
                took.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}

/// Runs `concurrency` clients for `seconds`, committing new files or
/// looking up `existing` ones; returns the rate and the paths committed.
async fn measure(
    client: &MetaClient,
    concurrency: usize,
    seconds: u64,
    commit: bool,
    existing: &[String],
) -> anyhow::Result<(f64, Vec<String>)> {
    let done = Arc::new(AtomicU64::new(0));
    let existing: Arc<Vec<String>> = Arc::new(existing.to_vec());
    if !commit && existing.is_empty() {
        bail!("nothing committed to look up");
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let client = client.clone();
        let done = done.clone();
        let existing = existing.clone();
        tasks.push(tokio::spawn(async move {
            let mut paths = Vec::new();
            let mut i = 0u64;
            while Instant::now() < until {
                if commit {
                    let path = format!("/bench/c{concurrency}/t{t}/f{i}");
                    client
                        .commit(&path, file(i * 1000 + t as u64), false)
                        .await
                        .map_err(|e| anyhow::anyhow!("commit {path}: {}", e.message()))?;
                    paths.push(path);
                } else {
                    let path = &existing[(i as usize * 7919 + t * 104_729) % existing.len()];
                    client
                        .lookup(path)
                        .await
                        .map_err(|e| anyhow::anyhow!("lookup {path}: {}", e.message()))?;
                }
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(paths)
        }));
    }
    let mut paths = Vec::new();
    for task in tasks {
        paths.extend(task.await??);
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    Ok((rate, paths))
}

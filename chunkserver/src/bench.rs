//! `shardfs-chunk bench`: put and get throughput over loopback for 8 MiB
//! chunks with 1 and 8 concurrent streams, next to the two limits that
//! bound them on this machine, measured in the same run: BLAKE3 speed on
//! one core and the disk's own fsynced write speed (same pattern as the
//! store: temp file, fsync, rename, fsync dir).
//!
//! It starts its own server (this binary) on a fresh data directory, so
//! anyone can run it: `cargo run --release -p shardfs-chunk -- bench`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use shardfs_proto::ChunkId;
use shardfs_proto::chunk_client::ChunkClient;
use shardfs_proto::process::ServerChild;
use shardfs_proto::security::Security;
use shardfs_proto::{errln, outln};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scratch directory (on the disk to measure); removed afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Chunks per run.
    #[arg(long, default_value_t = 128)]
    pub chunks: usize,
    /// Chunk size in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub chunk_size: usize,
    /// Concurrent streams to measure with (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8])]
    pub streams: Vec<usize>,
    /// Times each get measurement reads every chunk (more rounds, steadier
    /// figures).
    #[arg(long, default_value_t = 4)]
    pub get_rounds: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Who hashes the bytes of a get. `Nobody` measures the transfer alone
/// (reading the file and moving the bytes), the bound on the other two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Server,
    Client,
    Nobody,
}

/// One measured figure.
struct Figure {
    name: &'static str,
    streams: usize,
    mb_per_s: f64,
    /// CPU time the chunk server process spent per GB moved (put and get
    /// only): what one server core can sustain when the client runs
    /// elsewhere, independent of the benchmark client sharing the machine.
    server_cpu_s_per_gb: Option<f64>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.streams.is_empty() || args.streams.contains(&0) {
        bail!("--streams needs one or more counts, each > 0");
    }
    if args.get_rounds == 0
        || args.chunks == 0
        || args.chunk_size == 0
        || args.chunk_size > (64 << 20)
    {
        bail!("--chunks must be > 0 and --chunk-size in 1..=67108864");
    }
    let base = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("shardfs-chunk-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let result = run_in(&args, &base).await;
    let _ = std::fs::remove_dir_all(&base);
    result
}

async fn run_in(args: &BenchArgs, base: &Path) -> anyhow::Result<()> {
    let total_bytes = (args.chunks * args.chunk_size) as f64;
    let progress = |what: &str| {
        if !args.json {
            errln!("bench: {what}");
        }
    };
    let mut figures = Vec::new();

    progress("generating chunks");
    let chunks = Arc::new(make_chunks(args.chunks, args.chunk_size).await?);

    progress("measuring BLAKE3 on one core");
    let blake3 = tokio::task::spawn_blocking({
        let sample = chunks[0].1.clone();
        move || blake3_speed(&sample)
    })
    .await?;
    figures.push(Figure {
        name: "blake3 (1 core)",
        streams: 1,
        mb_per_s: blake3,
        server_cpu_s_per_gb: None,
    });

    for &streams in &args.streams {
        progress(&format!(
            "measuring fsynced disk writes, {streams} writer(s)"
        ));
        let dir = base.join(format!("disk-{streams}"));
        let chunks = chunks.clone();
        let seconds =
            tokio::task::spawn_blocking(move || disk_write(&dir, &chunks, streams)).await??;
        figures.push(Figure {
            name: "disk write+fsync",
            streams,
            mb_per_s: total_bytes / seconds / 1e6,
            server_cpu_s_per_gb: None,
        });
    }

    progress("starting a chunk server");
    let server = spawn_server(&base.join("server")).await?;
    let client = ChunkClient::new(&server.addr, &Security::Insecure)?;
    let outcome = async {
        for &streams in &args.streams {
            progress(&format!("put, {streams} stream(s)"));
            let cpu_before = server.cpu_seconds();
            let seconds = put_all(&client, &chunks, streams).await?;
            let cpu = server.cpu_seconds() - cpu_before;
            figures.push(Figure {
                name: "put",
                streams,
                mb_per_s: total_bytes / seconds / 1e6,
                server_cpu_s_per_gb: Some(cpu / (total_bytes / 1e9)),
            });
            if Some(&streams) != args.streams.last() {
                let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
                client.delete(&ids).await?;
            }
        }
        for (name, verify) in [
            ("get (server verifies)", Verify::Server),
            ("get (client verifies)", Verify::Client),
            ("get (transfer only)", Verify::Nobody),
        ] {
            for &streams in &args.streams {
                progress(&format!("{name}, {streams} stream(s)"));
                let mut seconds = 0.0;
                let cpu_before = server.cpu_seconds();
                for _ in 0..args.get_rounds {
                    seconds += get_all(&client, &chunks, streams, verify).await?;
                }
                let cpu = server.cpu_seconds() - cpu_before;
                let bytes = total_bytes * args.get_rounds as f64;
                figures.push(Figure {
                    name,
                    streams,
                    mb_per_s: bytes / seconds / 1e6,
                    server_cpu_s_per_gb: Some(cpu / (bytes / 1e9)),
                });
            }
        }
        anyhow::Ok(())
    }
    .await;
    stop_server(server).await;
    outcome?;

    if args.json {
        let items: Vec<String> = figures
            .iter()
            .map(|f| {
                format!(
                    r#"{{"name":"{}","streams":{},"mb_per_s":{:.0},"server_cpu_s_per_gb":{}}}"#,
                    f.name,
                    f.streams,
                    f.mb_per_s,
                    f.server_cpu_s_per_gb
                        .map(|c| format!("{c:.3}"))
                        .unwrap_or_else(|| "null".into())
                )
            })
            .collect();
        outln!(
            r#"{{"chunk_size":{},"chunks":{},"figures":[{}]}}"#,
            args.chunk_size,
            args.chunks,
            items.join(",")
        );
    } else {
        outln!(
            "chunk server bench: {} chunks of {} bytes per run",
            args.chunks,
            args.chunk_size
        );
        outln!(
            "{:<24} {:>7} {:>8} {:>22}",
            "measure",
            "streams",
            "MB/s",
            "server CPU s per GB"
        );
        for f in &figures {
            let cpu = f
                .server_cpu_s_per_gb
                .map(|c| format!("{c:.2}"))
                .unwrap_or_default();
            outln!(
                "{:<24} {:>7} {:>8.0} {:>22}",
                f.name,
                f.streams,
                f.mb_per_s,
                cpu
            );
        }
        let find = |name: &str, streams: usize| {
            figures
                .iter()
                .find(|f| f.name == name && f.streams == streams)
                .map(|f| f.mb_per_s)
        };
        for &streams in &args.streams {
            if let (Some(put), Some(disk)) =
                (find("put", streams), find("disk write+fsync", streams))
            {
                outln!(
                    "put / disk, {streams} stream(s): {:.0}%",
                    100.0 * put / disk
                );
            }
        }
    }
    Ok(())
}

/// Distinct pseudo-random chunks (BLAKE3 output stream), with their ids.
async fn make_chunks(count: usize, size: usize) -> anyhow::Result<Vec<(ChunkId, Bytes)>> {
    Ok(tokio::task::spawn_blocking(move || {
        (0..count)
            .map(|i| {
                let mut data = vec![0u8; size];
                let mut hasher = blake3::Hasher::new();
                hasher.update(b"shardfs-chunk-bench");
                hasher.update(&(i as u64).to_le_bytes());
                hasher.finalize_xof().fill(&mut data);
                (ChunkId::of(&data), Bytes::from(data))
            })
            .collect()
    })
    .await?)
}

fn blake3_speed(sample: &[u8]) -> f64 {
    let start = Instant::now();
    let mut bytes = 0usize;
    while start.elapsed() < Duration::from_millis(500) {
        std::hint::black_box(blake3::hash(sample));
        bytes += sample.len();
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Writes every chunk as the store does, split across `writers` threads.
fn disk_write(dir: &Path, chunks: &[(ChunkId, Bytes)], writers: usize) -> anyhow::Result<f64> {
    use std::io::Write;
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::create_dir_all(dir.join("final"))?;
    let start = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                scope.spawn(move || -> anyhow::Result<()> {
                    for (i, (id, data)) in chunks.iter().enumerate().skip(w).step_by(writers) {
                        let temp = dir.join("tmp").join(format!("{id}.{i}"));
                        let mut file = std::fs::File::create(&temp)?;
                        file.write_all(data)?;
                        file.sync_all()?;
                        std::fs::rename(&temp, dir.join("final").join(id.to_hex()))?;
                        std::fs::File::open(dir.join("final"))?.sync_all()?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("writer thread"))
    })?;
    let seconds = start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(dir)?;
    Ok(seconds)
}

async fn put_all(
    client: &ChunkClient,
    chunks: &Arc<Vec<(ChunkId, Bytes)>>,
    streams: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..streams {
        let client = client.clone();
        let chunks = chunks.clone();
        tasks.push(tokio::spawn(async move {
            for (id, data) in chunks.iter().skip(s).step_by(streams) {
                let already = client.put(*id, data.clone()).await?;
                if already {
                    bail!("chunk {id} was already stored: the bench measured nothing");
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed().as_secs_f64())
}

async fn get_all(
    client: &ChunkClient,
    chunks: &Arc<Vec<(ChunkId, Bytes)>>,
    streams: usize,
    verify: Verify,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..streams {
        let client = client.clone();
        let chunks = chunks.clone();
        tasks.push(tokio::spawn(async move {
            for (id, data) in chunks.iter().skip(s).step_by(streams) {
                let got = client
                    .get_pieces(*id, 0, None, verify == Verify::Server)
                    .await?;
                let len: usize = got.iter().map(Bytes::len).sum();
                if len != data.len() {
                    bail!("chunk {id}: got {len} bytes, expected {}", data.len());
                }
                if verify == Verify::Client {
                    let actual = tokio::task::spawn_blocking(move || {
                        let mut hasher = blake3::Hasher::new();
                        got.iter().for_each(|piece| {
                            hasher.update(piece);
                        });
                        ChunkId::from_array(*hasher.finalize().as_bytes())
                    })
                    .await?;
                    if actual != *id {
                        bail!("chunk {id}: bytes read back hash to {actual}");
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Starts a chunk server (this binary) on `data_dir`, logging beside it.
async fn spawn_server(data_dir: &Path) -> anyhow::Result<ServerChild> {
    let exe = std::env::current_exe().context("locating shardfs-chunk")?;
    let log = data_dir.with_extension("log");
    let mut command = std::process::Command::new(exe);
    command
        .args(["--insecure", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn");
    let server =
        tokio::task::spawn_blocking(move || ServerChild::spawn(command, "chunk server", &log))
            .await??;
    Ok(server)
}

/// SIGTERM, then SIGKILL after 10 s, off the async runtime.
async fn stop_server(mut server: ServerChild) {
    let _ = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(10))).await;
}

/// Round-trips one fresh chunk through the server at `addr` and reports.
pub async fn probe(addr: &str, security: &Security, json: bool) -> anyhow::Result<()> {
    let client = ChunkClient::new(addr, security)?;
    let start = Instant::now();
    // One fixed chunk: a probe again stores nothing new, and no probe
    // needs to delete (an order only metaservers may give). Unreferenced,
    // it is collected by the metaservers' GC.
    let seed = "shardfs-chunk probe";
    let data = {
        let mut data = vec![0u8; 1 << 20];
        blake3::Hasher::new()
            .update(seed.as_bytes())
            .finalize_xof()
            .fill(&mut data);
        Bytes::from(data)
    };
    let id = ChunkId::of(&data);
    let unreachable = |e: tonic::Status| {
        anyhow::anyhow!("chunk server at {addr} failed the probe: {}", e.message())
    };
    // Without a member certificate a TLS server stores and serves nothing
    // to the probe (no capability): then its usage alone is checked.
    let anonymous = security.is_tls() && !security.has_identity();
    if !anonymous {
        client.put(id, data).await.map_err(unreachable)?;
        let back = client.get(id, 0, None, true).await.map_err(unreachable)?;
        if ChunkId::of(&back) != id {
            bail!("chunk server at {addr} returned different bytes than were stored");
        }
    }
    let millis = start.elapsed().as_secs_f64() * 1e3;
    let stats = client.stats().await.map_err(unreachable)?;
    let checked = if anonymous {
        "usage only: give --cert/--key for a put + verified get"
    } else {
        "1 MiB put + verified get"
    };
    if json {
        outln!(
            r#"{{"addr":"{addr}","ok":true,"put_and_get":{},"round_trip_ms":{millis:.1},"chunk_count":{},"used_bytes":{},"capacity_bytes":{},"free_bytes":{}}}"#,
            !anonymous,
            stats.chunk_count,
            stats.used_bytes,
            stats.capacity_bytes,
            stats.free_bytes
        );
    } else {
        outln!(
            "{addr}: ok ({checked} in {millis:.1} ms); {} chunks, {:.1} MiB used, {:.1} GiB free",
            stats.chunk_count,
            stats.used_bytes as f64 / (1u64 << 20) as f64,
            stats.free_bytes as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}

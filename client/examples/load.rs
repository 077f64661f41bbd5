//! A bounded load test against a running cluster: normal writers and
//! readers are timed alone, then again while hostile and careless peers
//! load every server at once (many busy clients, idle connections,
//! slowloris connections that dribble a byte now and then). Prints p50 and
//! p99 of the normal calls in both phases and their ratio (the aim: the
//! loaded p99 within 2x of the unloaded one).
//!
//! ```sh
//! deploy/local-cluster.sh up
//! cargo run --release -p shardfs-client --example load -- [--ops 300] [--idle 500] [--slow 100] [--busy 32]
//! ```
//!
//! Busy clients each stat a file and list a directory every 20 ms. Idle and
//! slowloris connections come from 127.0.0.2, as from another host (each
//! server bounds the connections one address may hold).
//!
//! Servers come from `SHARDFS_META` (or the local cluster). Everything it
//! writes is under `/load-test` and is deleted at the end; every read is
//! compared with what was written, by hash.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardfs_client::{Client, ClientConfig, PutOptions, read_all};

struct Args {
    ops: usize,
    idle: usize,
    slow: usize,
    busy: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        ops: 300,
        idle: 500,
        slow: 100,
        busy: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: usize = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a number"))?
            .parse()
            .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        match flag.as_str() {
            "--ops" => parsed.ops = value.clamp(10, 10_000),
            "--idle" => parsed.idle = value.min(5_000),
            "--slow" => parsed.slow = value.min(1_000),
            "--busy" => parsed.busy = value.min(256),
            _ => anyhow::bail!("unknown flag {flag} (--ops, --idle, --slow, --busy)"),
        }
    }
    Ok(parsed)
}

fn bytes_for(i: usize, len: usize) -> Bytes {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(format!("load-{i}").as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out.into()
}

/// Runs `ops` normal calls (a 64 KiB put, then a verified read of one of
/// the prepared files), one after another; returns each call's latency.
async fn normal_calls(
    client: &Client,
    ops: usize,
    prepared: &[(String, Bytes)],
    phase: &str,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(ops);
    let deadline = Instant::now() + Duration::from_secs(300);
    for i in 0..ops {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the {phase} phase ran over 300 s"
        );
        let started = Instant::now();
        let path = format!("/load-test/{phase}/w{i}");
        let data = bytes_for(100_000 + i, 64 << 10);
        client
            .put_bytes(data, &path, &PutOptions::default())
            .await
            .map_err(|e| anyhow::anyhow!("put {path}: {e}"))?;
        let (path, want) = &prepared[i % prepared.len()];
        let got = read_all(client, path)
            .await
            .map_err(|e| anyhow::anyhow!("get {path}: {e}"))?;
        anyhow::ensure!(
            blake3::hash(&got) == blake3::hash(want),
            "{path} read back other bytes"
        );
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    latencies.sort();
    let at = ((latencies.len() as f64 - 1.0) * p).round() as usize;
    latencies[at]
}

/// A connection to `addr` (a loopback address) from 127.0.0.2, as from
/// another host: servers bound what one address may hold, and the normal
/// clients here share 127.0.0.1.
fn connect_from_other_host(addr: &str) -> std::io::Result<TcpStream> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 2], 0)).into())?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

/// Idle and slowloris connections to `addr`, held until `stop`.
fn hold_connections(
    addrs: &[String],
    idle: usize,
    slow: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let addrs = addrs.to_vec();
    std::thread::spawn(move || {
        let mut idle_held = Vec::new();
        let mut slow_held = Vec::new();
        for i in 0..idle {
            if let Ok(stream) = connect_from_other_host(&addrs[i % addrs.len()]) {
                idle_held.push(stream);
            }
        }
        for i in 0..slow {
            if let Ok(stream) = connect_from_other_host(&addrs[i % addrs.len()]) {
                slow_held.push(stream);
            }
        }
        // A byte of an HTTP/2 preface every 2 s on each slow connection.
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut sent = 0u64;
        let mut position = 0;
        while !stop.load(Ordering::Relaxed) {
            for stream in &mut slow_held {
                if stream.write_all(&preface[position..position + 1]).is_ok() {
                    sent += 1;
                }
            }
            position = (position + 1) % preface.len();
            for _ in 0..20 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        sent
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let meta: Vec<String> = std::env::var("SHARDFS_META")
        .unwrap_or_else(|_| "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let client = Client::connect_with(&meta, ClientConfig::default()).await?;
    let status = client.cluster_status().await?;
    let mut servers: Vec<String> = meta.clone();
    servers.extend(status.chunk_servers.iter().map(|c| c.addr.clone()));
    let _ = client.remove("/load-test", true).await;

    eprintln!("load: preparing 32 files of 1 MiB");
    let mut prepared = Vec::new();
    for i in 0..32 {
        let path = format!("/load-test/files/f{i}");
        let data = bytes_for(i, 1 << 20);
        client
            .put_bytes(data.clone(), &path, &PutOptions::default())
            .await?;
        prepared.push((path, data));
    }

    eprintln!("load: {} normal calls alone", args.ops);
    let mut alone = normal_calls(&client, args.ops, &prepared, "alone").await?;

    eprintln!(
        "load: the same with {} busy clients, {} idle and {} slowloris connections spread over {} servers",
        args.busy,
        args.idle,
        args.slow,
        servers.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let holder = hold_connections(&servers, args.idle, args.slow, stop.clone());
    let busy_calls = Arc::new(AtomicU64::new(0));
    let mut busy = Vec::new();
    for b in 0..args.busy {
        let client = Client::connect_with(&meta, ClientConfig::default()).await?;
        let stop = stop.clone();
        let calls = busy_calls.clone();
        let prepared = prepared.clone();
        busy.push(tokio::spawn(async move {
            let mut i = b;
            while !stop.load(Ordering::Relaxed) {
                let (path, _) = &prepared[i % prepared.len()];
                let _ = client.stat(path).await;
                let _ = client.list("/load-test/files").await;
                calls.fetch_add(2, Ordering::Relaxed);
                i += 1;
                // Busy, not a CPU burner: the machine is shared with the
                // servers and the timed client.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = normal_calls(&client, args.ops, &prepared, "loaded").await;
    stop.store(true, Ordering::Relaxed);
    for task in busy {
        let _ = task.await;
    }
    let dribbled = holder.join().unwrap_or(0);
    let mut loaded = loaded?;
    let _ = client.remove("/load-test", true).await;

    let (a50, a99) = (percentile(&mut alone, 0.5), percentile(&mut alone, 0.99));
    let (l50, l99) = (percentile(&mut loaded, 0.5), percentile(&mut loaded, 0.99));
    let ratio = l99.as_secs_f64() / a99.as_secs_f64().max(1e-6);
    println!(
        "normal calls (64 KiB put + verified 1 MiB get), {} each:",
        args.ops
    );
    println!("  alone:  p50 {:>7.1} ms  p99 {:>7.1} ms", ms(a50), ms(a99));
    println!("  loaded: p50 {:>7.1} ms  p99 {:>7.1} ms", ms(l50), ms(l99));
    println!(
        "  load: {} busy-client calls, {} slowloris bytes dribbled",
        busy_calls.load(Ordering::Relaxed),
        dribbled
    );
    println!(
        "loaded p99 / alone p99: {ratio:.2} ({} the aim of 2x)",
        if ratio <= 2.0 { "within" } else { "over" }
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

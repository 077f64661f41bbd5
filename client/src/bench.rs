//! `shardfs bench`: writes N files of S bytes with P parallel streams to the
//! running cluster, reads them back (every chunk verified), and reports
//! MB/s and per-chunk latency. Reads and writes go through the same code
//! as `put` and `get`; reads skip only the local disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::client::Client;
use crate::error::Result;
use crate::put::{Progress, PutOptions};
use shardfs_proto::errln;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub files: usize,
    pub file_bytes: u64,
    pub streams: usize,
    pub replication: u32,
    pub chunk_size: u64,
    pub read_rounds: usize,
    pub dir: String,
    pub keep: bool,
    /// Read everything a second time over gRPC, for comparison.
    pub compare_grpc: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub files: usize,
    pub file_bytes: u64,
    pub streams: usize,
    pub replication: u32,
    pub chunk_size: u64,
    pub write_seconds: f64,
    pub write_mb_per_s: f64,
    pub write_chunk_p50_ms: f64,
    pub write_chunk_p99_ms: f64,
    pub read_rounds: usize,
    pub read_seconds: f64,
    /// Verified bytes delivered per second (every chunk hashed).
    pub read_mb_per_s: f64,
    pub read_chunk_p50_ms: f64,
    pub read_chunk_p99_ms: f64,
    pub bytes_verified: u64,
    /// With `compare_grpc`: the same reads over gRPC `GetChunk`.
    pub grpc_read_mb_per_s: Option<f64>,
}

impl BenchReport {
    pub fn summary(&self) -> String {
        format!(
            "{} files x {} MiB, {} streams, replication {}, chunks of {} MiB\n\
             write: {:>8.1} MB/s  ({:.2} s; chunk p50 {:.1} ms, p99 {:.1} ms)\n\
             read:  {:>8.1} MB/s  ({} round(s), {:.2} s; chunk p50 {:.1} ms, p99 {:.1} ms; {} MB verified)",
            self.files,
            self.file_bytes >> 20,
            self.streams,
            self.replication,
            self.chunk_size >> 20,
            self.write_mb_per_s,
            self.write_seconds,
            self.write_chunk_p50_ms,
            self.write_chunk_p99_ms,
            self.read_mb_per_s,
            self.read_rounds,
            self.read_seconds,
            self.read_chunk_p50_ms,
            self.read_chunk_p99_ms,
            self.bytes_verified / 1_000_000,
        ) + &match self.grpc_read_mb_per_s {
            Some(grpc) => format!(
                "\nread over gRPC GetChunk: {grpc:.1} MB/s (bulk reads: {:.2}x)",
                self.read_mb_per_s / grpc
            ),
            None => String::new(),
        }
    }
}

/// Pseudo-random bytes (incompressible), the same for the same seed.
fn random_bytes(len: usize, seed: &str) -> Bytes {
    let mut data = vec![0u8; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(seed.as_bytes());
    hasher.finalize_xof().fill(&mut data);
    data.into()
}

/// `base` made unique to file `file`: every chunk starts with the file
/// and chunk number, so no chunk of any file equals another.
fn unique_copy(base: &Bytes, file: usize, chunk_size: u64, run: u64) -> Bytes {
    let mut data = BytesMut::from(&base[..]);
    for (i, start) in (0..data.len()).step_by(chunk_size as usize).enumerate() {
        let stamp = [run, file as u64, i as u64];
        for (k, word) in stamp.iter().enumerate() {
            let at = start + k * 8;
            if at + 8 <= data.len() {
                data[at..at + 8].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
    data.freeze()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub async fn run_bench(
    client: &Client,
    options: &BenchOptions,
    chatty: bool,
    progress: Option<Progress>,
) -> Result<BenchReport> {
    let say = |text: String| {
        if chatty {
            errln!("{text}");
        }
    };
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let dir = format!("{}/run-{run}", options.dir.trim_end_matches('/'));
    client.mkdir(&dir, true).await?;
    let base = random_bytes(options.file_bytes as usize, "shardfs bench");
    let put_options = PutOptions {
        replication: Some(options.replication),
        chunk_size: Some(options.chunk_size),
        ..PutOptions::default()
    };
    client.record_latencies(true);

    say(format!(
        "writing {} files of {} MiB with {} streams (replication {})...",
        options.files,
        options.file_bytes >> 20,
        options.streams,
        options.replication
    ));
    let started = Instant::now();
    futures::stream::iter(0..options.files)
        .map(|i| {
            let data = unique_copy(&base, i, options.chunk_size, run);
            let path = format!("{dir}/file-{i:05}");
            let put_options = put_options.clone();
            let progress = progress.clone();
            async move {
                let put = client.put_bytes(data, &path, &put_options).await?;
                if let Some(progress) = &progress {
                    progress(put.bytes);
                }
                Ok::<_, crate::ClientError>(put)
            }
        })
        .buffer_unordered(options.streams.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    let write_seconds = started.elapsed().as_secs_f64();
    let mut write_latencies = client.take_latencies();
    write_latencies.sort();
    let total = options.files as u64 * options.file_bytes;

    say(format!(
        "reading them back {} time(s)...",
        options.read_rounds
    ));
    let (read_seconds, read_latencies, bytes_verified) =
        read_rounds(client, &dir, options, progress.clone()).await?;
    let grpc = if options.compare_grpc {
        say("and again over gRPC GetChunk...".to_string());
        client.set_bulk_reads(false);
        let grpc = read_rounds(client, &dir, options, progress.clone()).await;
        client.set_bulk_reads(client.config().bulk_reads);
        Some(grpc?)
    } else {
        None
    };
    client.record_latencies(false);
    let expected = total * options.read_rounds as u64;
    if bytes_verified != expected {
        return Err(crate::ClientError::InvalidArgument(format!(
            "read back {bytes_verified} bytes; {expected} were written"
        )));
    }
    if !options.keep {
        // Their chunks go with the metaservers' garbage collection (only
        // metaservers may order chunk servers to delete).
        client.remove(&dir, true).await?;
        // The parent too, when nothing else is left in it.
        if client.list(&options.dir).await.is_ok_and(|l| l.is_empty()) {
            let _ = client.remove(&options.dir, false).await;
        }
    }
    Ok(BenchReport {
        files: options.files,
        file_bytes: options.file_bytes,
        streams: options.streams,
        replication: options.replication,
        chunk_size: options.chunk_size,
        write_seconds,
        write_mb_per_s: total as f64 / 1e6 / write_seconds,
        write_chunk_p50_ms: percentile(&write_latencies, 0.5),
        write_chunk_p99_ms: percentile(&write_latencies, 0.99),
        read_rounds: options.read_rounds,
        read_seconds,
        read_mb_per_s: bytes_verified as f64 / 1e6 / read_seconds,
        read_chunk_p50_ms: percentile(&read_latencies, 0.5),
        read_chunk_p99_ms: percentile(&read_latencies, 0.99),
        bytes_verified,
        grpc_read_mb_per_s: grpc.map(|(secs, _, bytes)| bytes as f64 / 1e6 / secs),
    })
}

/// Reads every file of the run `read_rounds` times, `streams` files at a
/// time; returns the seconds taken, per-chunk latencies (sorted) and the
/// bytes verified.
async fn read_rounds(
    client: &Client,
    dir: &str,
    options: &BenchOptions,
    progress: Option<Progress>,
) -> Result<(f64, Vec<Duration>, u64)> {
    let verified = AtomicU64::new(0);
    let mut latencies = Vec::new();
    let started = Instant::now();
    for _ in 0..options.read_rounds {
        let round: Vec<Vec<Duration>> = futures::stream::iter(0..options.files)
            .map(|i| {
                let path = format!("{dir}/file-{i:05}");
                let verified = &verified;
                let progress = &progress;
                async move {
                    let layout = client.layout(&path).await?;
                    let largest = options.chunk_size.max(1);
                    let parallel = (client.config().read_ahead_bytes / largest).clamp(1, 64);
                    futures::stream::iter(layout.chunks.iter().enumerate())
                        .map(|(k, span)| {
                            let layout = &layout;
                            async move {
                                let t = Instant::now();
                                let data = client.spawn_fetch(&layout.path, span, k).await?;
                                verified.fetch_add(data.len(), Ordering::Relaxed);
                                if let Some(progress) = progress {
                                    progress(data.len());
                                }
                                Ok::<_, crate::ClientError>(t.elapsed())
                            }
                        })
                        .buffered(parallel as usize)
                        .try_collect::<Vec<_>>()
                        .await
                }
            })
            .buffer_unordered(options.streams.max(1))
            .try_collect()
            .await?;
        latencies.extend(round.into_iter().flatten());
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok((seconds, latencies, verified.load(Ordering::Relaxed)))
}

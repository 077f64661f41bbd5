//! A full restart of a cluster that holds thousands of files, while every
//! core is busy with other work: a leader must be elected and serving
//! within 10 s, and stay elected.
//!
//! The cluster also holds a file of 65,536 chunks. Its commit was one Raft
//! entry that, encoded as JSON, a follower could not take in within one
//! heartbeat interval (openraft's AppendEntries timeout); after a restart
//! the leader re-sent it forever and the group never served again. Raft
//! entries are now binary and batches bounded in bytes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use shardfs_client::{Client, ClientConfig, PutOptions};
use shardfs_tests::{Cluster, CpuLoad, data, hash};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const FILES: usize = 2_000;
const MANY_CHUNKS: usize = 65_536;

/// Puts a small file and reads it back, within `limit`.
async fn put_and_get(client: &Client, path: &str, limit: Duration) -> Result<(), String> {
    let bytes = data(3000, path);
    let attempt = async {
        client
            .put_bytes(bytes.clone().into(), path, &PutOptions::default())
            .await
            .map_err(|e| format!("put: {e}"))?;
        let back = shardfs_client::read_all(client, path)
            .await
            .map_err(|e| format!("get: {e}"))?;
        if hash(&back) != hash(&bytes) {
            return Err(format!("{path} read back different bytes"));
        }
        Ok(())
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_under_cpu_load_serves_within_10s_and_keeps_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3).await;
    let client = cluster.client(ClientConfig::default()).await;

    let phase = Instant::now();
    let files: BTreeMap<String, Vec<u8>> = (0..FILES)
        .map(|i| {
            let path = format!("/restart/d{}/f{i}", i % 20);
            let bytes = data(100 + i % 3000, &path);
            (path, bytes)
        })
        .collect();
    let puts = files.iter().map(|(path, bytes)| {
        let client = client.clone();
        async move {
            client
                .put_bytes(bytes.clone().into(), path, &PutOptions::default())
                .await
                .unwrap_or_else(|e| panic!("put {path}: {e}"));
        }
    });
    futures::stream::iter(puts)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    eprintln!("put {FILES} files in {:?}", phase.elapsed());
    // One file of many 1-byte chunks: a single large Raft entry.
    let many = vec![7u8; MANY_CHUNKS];
    client
        .put_bytes(
            many.clone().into(),
            "/restart/many-chunks",
            &PutOptions {
                chunk_size: Some(1),
                ..PutOptions::default()
            },
        )
        .await
        .unwrap();
    eprintln!(
        "put a file of {MANY_CHUNKS} chunks at {:?}",
        phase.elapsed()
    );
    drop(client);

    cluster.stop_all();
    eprintln!("stopped at {:?}", phase.elapsed());
    let load = CpuLoad::start(2, Duration::from_secs(120));
    let started = Instant::now();
    for id in 1..=3 {
        cluster.start_meta(id);
    }
    for id in 1..=3 {
        cluster.start_chunk(id);
    }
    // The first put and get that succeed after the restart.
    let mut probe = 0;
    let client = loop {
        probe += 1;
        let attempt = async {
            let client = Client::connect_with(
                &cluster.meta_addrs,
                cluster.secured(ClientConfig::default()),
            )
            .await
            .map_err(|e| format!("connect: {e}"))?;
            put_and_get(&client, &format!("/probe/{probe}"), Duration::from_secs(5)).await?;
            Ok::<_, String>(client)
        };
        match attempt.await {
            Ok(client) => break client,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "not serving 30 s after the restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let serving_after = started.elapsed();
    eprintln!("serving {serving_after:?} after the restart (under load)");
    assert!(
        serving_after < Duration::from_secs(10),
        "a put and a get succeeded only {serving_after:?} after the restart"
    );

    // And it stays so: the same leader and term through 10 s of calls.
    let status = client.cluster_status().await.unwrap();
    let (leader, term) = (status.leader_id, status.term);
    let until = Instant::now() + Duration::from_secs(10);
    let mut calls = 0;
    while Instant::now() < until {
        calls += 1;
        put_and_get(&client, &format!("/after/{calls}"), Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("call {calls} after the restart: {e}"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = client.cluster_status().await.unwrap();
    assert_eq!(
        (status.leader_id, status.term),
        (leader, term),
        "the leader changed while the cluster was serving ({calls} calls)"
    );
    drop(load);
    eprintln!("stable at {:?}", phase.elapsed());

    // Nothing acknowledged before the restart was lost.
    let reads = files.iter().map(|(path, bytes)| {
        let client = client.clone();
        async move {
            let back = shardfs_client::read_all(&client, path)
                .await
                .unwrap_or_else(|e| panic!("get {path}: {e}"));
            assert_eq!(hash(&back), hash(bytes), "{path}");
        }
    });
    futures::stream::iter(reads)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    eprintln!("read back at {:?}", phase.elapsed());
    // The many-chunk file: its chunk list is the one written (every chunk
    // is the hash of one byte 7), and its first and last bytes read back.
    // (Reading all of it would be 65,536 fetches.)
    let layout = client.layout("/restart/many-chunks").await.unwrap();
    assert_eq!(layout.chunks.len(), MANY_CHUNKS);
    let seven = shardfs_proto::ChunkId::of(&[7]);
    for (i, chunk) in layout.chunks.iter().enumerate() {
        assert_eq!((chunk.id, chunk.offset, chunk.length), (seven, i as u64, 1));
    }
    let mut reader = client.open("/restart/many-chunks").await.unwrap();
    reader.set_read_ahead(512);
    let mut head = vec![0u8; 512];
    reader.read_exact(&mut head).await.unwrap();
    reader.seek(std::io::SeekFrom::End(-512)).await.unwrap();
    let mut tail = vec![0u8; 512];
    reader.read_exact(&mut tail).await.unwrap();
    assert_eq!(hash(&head), hash(&many[..512]));
    assert_eq!(hash(&tail), hash(&many[MANY_CHUNKS - 512..]));
}

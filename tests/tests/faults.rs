//! The client under metaserver faults: a put survives the leader being
//! killed in the middle of it.

use std::time::{Duration, Instant};

use shardfs_client::{ClientConfig, PutOptions, read_all};
use shardfs_tests::{Cluster, data, hash};

const CHUNK: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_survives_the_leader_being_killed_mid_put() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3).await;
    let client = cluster
        .client(ClientConfig {
            chunk_size: CHUNK as u64,
            // Few chunks in flight: the put takes long enough to be hit.
            put_memory_bytes: 4 * CHUNK as u64,
            ..ClientConfig::default()
        })
        .await;
    let leader = client.cluster_status().await.unwrap().leader_id;
    let source = data(96 * CHUNK, "leader-dies");
    let put = {
        let client = client.clone();
        let source = source.clone();
        tokio::spawn(async move {
            let options = PutOptions {
                if_absent: true,
                ..PutOptions::default()
            };
            client
                .put_bytes(source.into(), "/survivor.bin", &options)
                .await
        })
    };
    // Kill the leader once chunks are flowing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.counters().bytes_sent == 0 {
        assert!(Instant::now() < deadline, "the put never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.kill_meta(leader);
    let stats = put
        .await
        .unwrap()
        .expect("the put survives the leader change");
    assert_eq!(stats.bytes, source.len() as u64);
    assert!(
        !put_finished_before_kill(&stats, source.len()),
        "the leader died after the put"
    );
    let status = client.cluster_status().await.unwrap();
    assert_ne!(status.leader_id, leader);
    assert_eq!(
        hash(&read_all(&client, "/survivor.bin").await.unwrap()),
        hash(&source)
    );
}

/// A put that sent every byte before the kill could not have been hit; it
/// sends 3 copies of each chunk, so at the kill at most part was sent.
fn put_finished_before_kill(stats: &shardfs_client::PutStats, len: usize) -> bool {
    stats.bytes_sent < 3 * len as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_finishes_the_repair_the_old_one_started() {
    let dir = tempfile::tempdir().unwrap();
    // Slow repair (1 MB/s per server): the old leader cannot finish it.
    let mut cluster = Cluster::start_with(dir.path(), 4, &["--repair-mb-per-s", "1"], &[]).await;
    let client = cluster
        .client(ClientConfig {
            chunk_size: CHUNK as u64,
            ..ClientConfig::default()
        })
        .await;
    let mut files = Vec::new();
    for i in 0..6 {
        let bytes = data(2 * CHUNK, &format!("continue-{i}"));
        let path = format!("/continue/{i}");
        client
            .put_bytes(bytes.clone().into(), &path, &PutOptions::default())
            .await
            .unwrap();
        files.push((path, bytes));
    }
    let victim_addr = cluster.chunks[&1].addr.clone();
    cluster.kill_chunk(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let status = client.cluster_status().await.unwrap();
        if status.repair_copies > 0 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "repair never started: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        first.under_replicated > 0,
        "repair finished too soon: {first:?}"
    );
    cluster.kill_meta(first.leader_id);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // (During its grace period a new leader counts every server alive:
        // wait until it too has declared the lost one dead.)
        if let Ok(status) = client.cluster_status().await
            && status.leader_id != first.leader_id
            && status.chunk_servers.iter().any(|c| c.id == 1 && !c.alive)
            && status.under_replicated == 0
        {
            assert!(
                status.repair_copies > 0,
                "the new leader copied nothing: {status:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new leader did not finish the repair"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (path, bytes) in &files {
        let (_, locations) = client.stat_with_locations(path).await.unwrap();
        for chunk in locations {
            assert_eq!(chunk.len(), 3);
            assert!(!chunk.contains(&victim_addr));
        }
        assert_eq!(hash(&read_all(&client, path).await.unwrap()), hash(bytes));
    }
}

//! Garbage collection against a real cluster: chunks no file references
//! are deleted from the chunk servers after the grace period, and never
//! before; chunks still referenced by another file stay.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shardfs_client::{ClientConfig, PutOptions, read_all};
use shardfs_proto::ChunkId;
use shardfs_proto::chunk_client::ChunkClient;
use shardfs_tests::{Cluster, data, hash};

const CHUNK: usize = 1 << 20;

/// How many chunk servers store each chunk.
async fn stored(cluster: &Cluster) -> BTreeMap<ChunkId, usize> {
    let mut stored = BTreeMap::new();
    for process in cluster.chunks.values() {
        let client = cluster.observer_chunk_client(&process.addr);
        for info in client.list_all().await.unwrap() {
            *stored
                .entry(ChunkId::from_slice(&info.id).unwrap())
                .or_default() += 1;
        }
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreferenced_chunks_are_collected_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start_with(dir.path(), 3, &["--gc-grace-secs", "4"], &[]).await;
    let client = cluster
        .client(ClientConfig {
            chunk_size: CHUNK as u64,
            ..ClientConfig::default()
        })
        .await;
    // /a and /b share their first chunk.
    let shared = data(CHUNK, "shared");
    let a = [shared.clone(), data(CHUNK + 5, "only-a")].concat();
    let b = [shared.clone(), data(700, "only-b")].concat();
    for (path, bytes) in [("/a", &a), ("/b", &b)] {
        client
            .put_bytes(bytes.clone().into(), path, &PutOptions::default())
            .await
            .unwrap();
    }
    let shared_id = ChunkId::of(&shared);
    let only_a: Vec<ChunkId> = a[CHUNK..].chunks(CHUNK).map(ChunkId::of).collect();

    // A write in flight: allocated and stored, not committed (yet).
    let pending = data(5000, "in-flight");
    let pending_id = ChunkId::of(&pending);
    let placement = client
        .meta()
        .allocate(&[(pending_id, pending.len() as u64)], 3, &[])
        .await
        .unwrap()
        .remove(0);
    for (target, capability) in placement.targets.iter().zip(&placement.target_capabilities) {
        ChunkClient::new(target, &cluster.tls.client())
            .unwrap()
            .put_with(pending_id, pending.clone().into(), capability.clone())
            .await
            .unwrap();
    }
    let written = Instant::now();

    client.remove("/a", false).await.unwrap();
    let removed = Instant::now();
    // Within the grace period nothing goes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = stored(&cluster).await;
    if removed.elapsed() < Duration::from_secs(4) {
        for id in &only_a {
            assert_eq!(now.get(id), Some(&3), "collected before the grace period");
        }
    }
    if written.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            now.get(&pending_id),
            Some(&3),
            "an in-flight write lost its chunk"
        );
    }

    // After it: /a's own chunks and the abandoned write are deleted from
    // every server; the chunk /b still uses stays on all three.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = stored(&cluster).await;
        if only_a.iter().all(|id| !now.contains_key(id)) && !now.contains_key(&pending_id) {
            assert_eq!(now.get(&shared_id), Some(&3));
            break;
        }
        assert!(Instant::now() < deadline, "garbage not collected: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(hash(&read_all(&client, "/b").await.unwrap()), hash(&b));
    let status = client.cluster_status().await.unwrap();
    assert!(status.gc_collected >= 9, "{status:?}");
    assert_eq!(status.under_replicated, 0);
}

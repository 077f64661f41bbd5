//! Repair against a real cluster: a chunk server dies and every chunk gets
//! back to its replication factor on the others; it comes back and the
//! extra copies are trimmed. The data reads back identical throughout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shardfs_client::{Client, PutOptions, read_all};
use shardfs_tests::{Cluster, chunked, data, hash, put_all};

const CHUNK: usize = 1 << 20;

/// Live locations of every chunk of `paths`.
async fn locations(client: &Client, paths: &[String]) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for path in paths {
        all.extend(client.stat_with_locations(path).await.unwrap().1);
    }
    all
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_replicas_are_copied_back_and_extra_ones_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 4).await;
    let client = cluster.client(chunked(CHUNK)).await;
    let files = put_all(
        &client,
        (0..4).map(|i| {
            let bytes = data(3 * CHUNK + i * 1000, &format!("repair-{i}"));
            (format!("/repair/file-{i}"), bytes)
        }),
    )
    .await;
    let paths: Vec<String> = files.keys().cloned().collect();

    // Repair looks only at chunks that may have changed: once the new
    // files' chunks were looked at, an idle cluster's rounds look at none.
    wait_for(
        "the new leader's first round",
        Duration::from_secs(20),
        async || client.cluster_status().await.unwrap().repair_full_rounds > 0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = client.cluster_status().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = client.cluster_status().await.unwrap();
    assert!(idle.repair_examined > 0, "{idle:?}");
    assert_eq!(idle.repair_examined, before.repair_examined, "{idle:?}");
    let full_rounds = idle.repair_full_rounds;
    assert_eq!(full_rounds, 1, "only the leader's first round looks at all");

    // Kill the server holding the most replicas.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for chunk in locations(&client, &paths).await {
        assert_eq!(chunk.len(), 3);
        for addr in chunk {
            *counts.entry(addr).or_default() += 1;
        }
    }
    let (victim_addr, lost) = counts.into_iter().max_by_key(|(_, n)| *n).unwrap();
    let victim = cluster.chunk_id_at(&victim_addr);
    cluster.kill_chunk(victim);

    // Declared dead (3 s), counted, then repaired on the other three. (A
    // dozen small chunks can be repaired between two polls: then the
    // counters show the copies instead.)
    wait_for(
        "the lost replicas counted",
        Duration::from_secs(20),
        async || {
            let status = client.cluster_status().await.unwrap();
            status.under_replicated > 0 || status.repair_copies >= lost as u64
        },
    )
    .await;
    wait_for(
        "full replication restored",
        Duration::from_secs(30),
        async || client.cluster_status().await.unwrap().under_replicated == 0,
    )
    .await;
    for chunk in locations(&client, &paths).await {
        assert_eq!(chunk.len(), 3, "{chunk:?}");
        assert!(!chunk.contains(&victim_addr));
    }
    let status = client.cluster_status().await.unwrap();
    assert!(status.repair_copies >= lost as u64, "{status:?}");
    assert!(status.repair_bytes >= status.repair_copies, "{status:?}");
    for (path, bytes) in &files {
        assert_eq!(hash(&read_all(&client, path).await.unwrap()), hash(bytes));
    }

    // It comes back with its chunks: they count again, and the extra
    // replicas are trimmed back to three.
    cluster.start_chunk_at(victim, &victim_addr);
    wait_for(
        "the returning copies counted",
        Duration::from_secs(20),
        async || {
            locations(&client, &paths).await.iter().any(|c| c.len() > 3)
                || client.cluster_status().await.unwrap().repair_trimmed > 0
        },
    )
    .await;
    wait_for(
        "extra replicas trimmed",
        Duration::from_secs(30),
        async || {
            locations(&client, &paths)
                .await
                .iter()
                .all(|c| c.len() == 3)
        },
    )
    .await;
    let status = client.cluster_status().await.unwrap();
    assert!(status.repair_trimmed > 0, "{status:?}");
    assert_eq!(status.under_replicated, 0);
    assert_eq!(
        status.repair_full_rounds, full_rounds,
        "the death and the return were found from what changed"
    );
    // Trimmed copies are gone from the servers' disks too: each chunk is
    // stored exactly three times in all.
    let mut stored: BTreeMap<shardfs_proto::ChunkId, usize> = BTreeMap::new();
    for process in cluster.chunks.values() {
        let chunk_client = cluster.observer_chunk_client(&process.addr);
        for info in chunk_client.list_all().await.unwrap() {
            *stored
                .entry(shardfs_proto::ChunkId::from_slice(&info.id).unwrap())
                .or_default() += 1;
        }
    }
    for path in &paths {
        let layout = client.layout(path).await.unwrap();
        for span in &layout.chunks {
            assert_eq!(stored[&span.id], 3, "chunk {} of {path}", span.id);
        }
    }
    for (path, bytes) in &files {
        assert_eq!(hash(&read_all(&client, path).await.unwrap()), hash(bytes));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_finds_a_flipped_byte_and_repair_restores_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start_with(dir.path(), 3, &[], &["--scrub-mb-per-s", "500"]).await;
    let client = cluster.client(chunked(CHUNK)).await;
    let source = data(4 * CHUNK, "scrub");
    client
        .put_bytes(source.clone().into(), "/scrub.bin", &PutOptions::default())
        .await
        .unwrap();
    let id = shardfs_proto::ChunkId::of(&source[CHUNK..2 * CHUNK]);
    let (_, locations) = client.stat_with_locations("/scrub.bin").await.unwrap();
    let server = cluster.chunk_id_at(&locations[1][0]);
    let file = cluster.chunk_file(server, &id);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[777] ^= 0x08;
    std::fs::write(&file, &bytes).unwrap();

    // No reader touches it: the scrubber finds it, quarantines it, and
    // repair copies a good replica back.
    wait_for(
        "scrub to find the bad copy and repair to restore it",
        Duration::from_secs(45),
        async || {
            let status = client.cluster_status().await.unwrap();
            let found = status
                .chunk_servers
                .iter()
                .any(|c| c.id == server && c.scrub_corrupt >= 1);
            found && status.repair_copies >= 1 && status.under_replicated == 0
        },
    )
    .await;
    let (_, locations) = client.stat_with_locations("/scrub.bin").await.unwrap();
    assert_eq!(locations[1].len(), 3);
    let restored = std::fs::read(&file).unwrap();
    assert_eq!(
        shardfs_proto::ChunkId::of(&restored),
        id,
        "the copy back in place is good"
    );
    let quarantined = std::fs::read_dir(cluster.chunk_dir(server).join("quarantine"))
        .unwrap()
        .count();
    assert_eq!(quarantined, 1);
    assert_eq!(client.counters().bad_replicas_seen, 0);
    assert_eq!(
        hash(&read_all(&client, "/scrub.bin").await.unwrap()),
        hash(&source)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_chunk_server_can_be_removed_without_losing_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 4).await;
    let client = cluster.client(chunked(CHUNK)).await;
    let mut files = put_all(
        &client,
        (0..4).map(|i| {
            let bytes = data(2 * CHUNK + i * 333, &format!("drain-{i}"));
            (format!("/drain/file-{i}"), bytes)
        }),
    )
    .await;
    let paths: Vec<String> = files.keys().cloned().collect();
    let status = client.cluster_status().await.unwrap();
    let busiest = status
        .chunk_servers
        .iter()
        .max_by_key(|c| c.chunks)
        .unwrap();
    let (id, addr) = (busiest.id, busiest.addr.clone());
    assert!(busiest.chunks > 0);

    let unknown = cluster.cli(&["cluster", "drain", "99"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no chunk server 99"));
    let refused = cluster.cli(&["cluster", "remove", &id.to_string()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("drain it first"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let drain = cluster.cli(&["cluster", "drain", &id.to_string()]);
    assert!(
        drain.status.success(),
        "{}",
        String::from_utf8_lossy(&drain.stderr)
    );

    wait_for("the server drained", Duration::from_secs(40), async || {
        let out = cluster.cli(&["cluster", "status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        status["chunk_servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id && c["drain"] == "drained")
    })
    .await;
    for chunk in locations(&client, &paths).await {
        assert_eq!(chunk.len(), 3, "{chunk:?}");
        assert!(!chunk.contains(&addr));
    }
    // Its disk holds none of the files' chunks any more.
    let left = cluster
        .observer_chunk_client(&addr)
        .list_all()
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "{} chunks left on the drained server",
        left.len()
    );
    // New data goes elsewhere.
    let fresh = data(2 * CHUNK, "after-drain");
    client
        .put_bytes(fresh.clone().into(), "/drain/fresh", &PutOptions::default())
        .await
        .unwrap();
    for chunk in locations(&client, &["/drain/fresh".to_string()]).await {
        assert!(!chunk.contains(&addr));
    }
    files.insert("/drain/fresh".into(), fresh);

    // Removing it now loses nothing.
    cluster.kill_chunk(id);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = client.cluster_status().await.unwrap();
    assert!(status.chunk_servers.iter().any(|c| c.id == id && !c.alive));
    assert_eq!(status.under_replicated, 0);
    let removed = cluster.cli(&["cluster", "remove", &id.to_string()]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let status = client.cluster_status().await.unwrap();
    assert!(status.chunk_servers.iter().all(|c| c.id != id));
    assert_eq!(status.chunk_servers.len(), 3);
    assert_eq!(status.under_replicated, 0);
    for (path, bytes) in &files {
        assert_eq!(hash(&read_all(&client, path).await.unwrap()), hash(bytes));
    }
}

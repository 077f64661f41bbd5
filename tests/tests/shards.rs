//! Shard streams against a real cluster: ranks cover every shard once,
//! resuming yields exactly the rest (also with another world size), and a
//! chunk server dying mid-stream costs nothing.

use std::collections::{BTreeMap, BTreeSet};

use shardfs_client::{Cursor, PutOptions};
use shardfs_tests::{Cluster, chunked, data, hash};

const CHUNK: usize = 1 << 20;

async fn drain(
    builder: shardfs_client::shards::ShardsBuilder,
    take: Option<usize>,
) -> (Vec<String>, Cursor, BTreeMap<String, String>) {
    let mut stream = builder.stream().await.unwrap();
    let mut paths = Vec::new();
    let mut hashes = BTreeMap::new();
    while take.is_none_or(|n| paths.len() < n) {
        let Some(item) = stream.next().await else {
            break;
        };
        let (path, bytes) = item.unwrap();
        hashes.insert(path.clone(), hash(&bytes));
        paths.push(path);
    }
    (paths, stream.state(), hashes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranks_resume_and_survive_a_dead_chunk_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 4).await;
    let client = cluster.client(chunked(CHUNK)).await;
    let mut source = BTreeMap::new();
    for i in 0..10 {
        let bytes = data(i * CHUNK / 3 + 100, &format!("shard-{i}"));
        let path = format!("/ds/part-{i:03}.tar");
        client
            .put_bytes(bytes.clone().into(), &path, &PutOptions::default())
            .await
            .unwrap();
        source.insert(path, hash(&bytes));
    }

    // World 2, epoch 0: every shard exactly once, bytes verified.
    let mut seen = Vec::new();
    let mut full = Vec::new();
    for rank in 0..2 {
        let builder = client.shards("/ds").rank(rank).world(2).epoch(0).seed(11);
        let (paths, _, hashes) = drain(builder, None).await;
        assert_eq!(paths.len(), 5);
        for (path, h) in &hashes {
            assert_eq!(&source[path], h);
        }
        full.push(paths.clone());
        seen.extend(paths);
    }
    seen.sort();
    assert_eq!(seen, source.keys().cloned().collect::<Vec<_>>());
    // The same shards as async readers, in the same order.
    let mut readers = client
        .shards("/ds")
        .rank(0)
        .world(2)
        .epoch(0)
        .seed(11)
        .stream()
        .await
        .unwrap();
    let mut order = Vec::new();
    while let Some(item) = readers.next_reader().await {
        let (path, mut reader) = item.unwrap();
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes)
            .await
            .unwrap();
        assert_eq!(source[&path], hash(&bytes));
        order.push(path);
    }
    assert_eq!(order, full[0]);
    // Another epoch, another order.
    let builder = client.shards("/ds").rank(0).world(2).epoch(1).seed(11);
    let (epoch1, _, _) = drain(builder, None).await;
    assert_ne!(epoch1, full[0]);

    // Resume mid-epoch from a JSON cursor: exactly the rest.
    let builder = client.shards("/ds").rank(0).world(2).epoch(0).seed(11);
    let (first, cursor, _) = drain(builder, Some(2)).await;
    assert_eq!(first, full[0][..2]);
    let cursor: Cursor = serde_json::from_str(&serde_json::to_string(&cursor).unwrap()).unwrap();
    let builder = client.shards("/ds").rank(0).world(2).resume(cursor.clone());
    let (rest, _, _) = drain(builder, None).await;
    assert_eq!(rest, full[0][2..]);

    // Both ranks stopped after 2 shards; 3 ranks take over the other 6.
    let consumed: BTreeSet<String> = full[0][..2].iter().chain(&full[1][..2]).cloned().collect();
    let mut taken = Vec::new();
    for rank in 0..3 {
        let builder = client
            .shards("/ds")
            .rank(rank)
            .world(3)
            .resume(cursor.clone());
        let (paths, _, _) = drain(builder, None).await;
        assert_eq!(paths.len(), 2);
        taken.extend(paths);
    }
    let taken_set: BTreeSet<String> = taken.iter().cloned().collect();
    assert_eq!(taken.len(), 6);
    assert!(taken_set.is_disjoint(&consumed));
    assert_eq!(taken_set.len() + consumed.len(), source.len());

    // The two ranks stopped at different shards (3 and 1): with every old
    // rank's cursor, 3 new ranks take exactly the 6 neither had yielded,
    // each verified; the shards they read are the ones not yet read.
    let mut cursors = Vec::new();
    let mut yielded = BTreeSet::new();
    for (rank, stop) in [(1u64, 1usize), (0, 3)] {
        let builder = client.shards("/ds").rank(rank).world(2).epoch(0).seed(11);
        let (paths, cursor, hashes) = drain(builder, Some(stop)).await;
        assert!(hashes.iter().all(|(p, h)| source[p] == *h));
        yielded.extend(paths);
        cursors.push(cursor);
    }
    let mut taken = Vec::new();
    let mut later = Vec::new();
    for rank in 0..3 {
        let builder = client
            .shards("/ds")
            .rank(rank)
            .world(3)
            .resume_all(cursors.clone());
        let (paths, cursor, hashes) = drain(builder, None).await;
        assert!(hashes.iter().all(|(p, h)| source[p] == *h));
        assert_eq!(paths.len(), 2);
        taken.extend(paths);
        later.push(cursor);
    }
    let taken_set: BTreeSet<String> = taken.iter().cloned().collect();
    assert_eq!(taken_set.len(), 6);
    assert!(taken_set.is_disjoint(&yielded));
    assert_eq!(taken_set.len() + yielded.len(), source.len());
    // Those cursors are at the end of the epoch: resuming yields nothing.
    let builder = client.shards("/ds").rank(0).world(1).resume_all(later);
    assert!(drain(builder, None).await.0.is_empty());
    // A rank's cursor given twice (instead of every rank's) is refused.
    let err = client
        .shards("/ds")
        .world(3)
        .resume_all(vec![cursors[0].clone(), cursors[0].clone()])
        .stream()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("two cursors of rank 1"), "{err}");
    // One cursor is not every rank's.
    let err = client
        .shards("/ds")
        .world(3)
        .resume_all(vec![cursors[0].clone()])
        .stream()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("rank 0 of 2 is missing"), "{err}");
    // So is a set with an old rank missing, saying which.
    let mut partial = Vec::new();
    for rank in [0, 2] {
        let builder = client.shards("/ds").rank(rank).world(3).epoch(0).seed(11);
        partial.push(drain(builder, Some(1)).await.1);
    }
    let err = client
        .shards("/ds")
        .world(2)
        .resume_all(partial)
        .stream()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("rank 1 of 3 is missing"), "{err}");

    // A chunk server dies just as an epoch starts: every shard still comes,
    // verified.
    let builder = client.shards("/ds").rank(0).world(1).epoch(2).seed(11);
    let mut stream = builder.stream().await.unwrap();
    cluster.kill_chunk(2);
    let mut count = 0;
    while let Some(item) = stream.next().await {
        let (path, bytes) = item.unwrap();
        assert_eq!(source[&path], hash(&bytes));
        count += 1;
    }
    assert_eq!(count, 10);

    // A cursor does not resume a changed dataset.
    client
        .put_bytes(
            data(10, "new").into(),
            "/ds/part-999.tar",
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let err = client
        .shards("/ds")
        .world(2)
        .resume(cursor)
        .stream()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("another dataset"), "{err}");
}

/// `shardfs stream` as a job would run it: two ranks stop early, keeping
/// their cursors in files; one rank resumes from both and writes exactly
/// the shards neither read, each matching the source by hash. JSON output
/// carries the cursor; a file that is not a cursor is refused plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_command_keeps_cursors_and_resumes_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let client = cluster.client(chunked(CHUNK)).await;
    let mut source = BTreeMap::new();
    for i in 0..6 {
        let bytes = data(i * CHUNK / 2 + 10, &format!("cli-shard-{i}"));
        let name = format!("part-{i}.tar");
        client
            .put_bytes(
                bytes.clone().into(),
                &format!("/cli/{name}"),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        source.insert(name, hash(&bytes));
    }
    let shard_names = |stdout: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|v| v["path"].as_str().map(str::to_string))
            .map(|p| p.rsplit('/').next().unwrap().to_string())
            .collect()
    };
    let mut read = BTreeSet::new();
    let mut cursor_files = Vec::new();
    for (rank, limit) in [(0, "1"), (1, "2")] {
        let cursor = dir.path().join(format!("rank-{rank}.json"));
        let out = cluster.cli(&[
            "stream",
            "/cli",
            "--world",
            "2",
            "--rank",
            &rank.to_string(),
            "--seed",
            "5",
            "--limit",
            limit,
            "--cursor",
            cursor.to_str().unwrap(),
            "--json",
        ]);
        assert!(out.status.success(), "{out:?}");
        let names = shard_names(&out.stdout);
        assert_eq!(names.len(), limit.parse::<usize>().unwrap());
        let summary: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
                .unwrap();
        let saved: Cursor =
            serde_json::from_str(&std::fs::read_to_string(&cursor).unwrap()).unwrap();
        assert_eq!(summary["cursor"], serde_json::to_value(&saved).unwrap());
        assert_eq!(saved.position, limit.parse::<u64>().unwrap());
        read.extend(names);
        cursor_files.push(cursor);
    }
    let out_dir = dir.path().join("rest");
    let out = cluster.cli(&[
        "stream",
        "/cli",
        "--world",
        "1",
        "--resume",
        cursor_files[0].to_str().unwrap(),
        "--resume",
        cursor_files[1].to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let mut rest = BTreeSet::new();
    for entry in std::fs::read_dir(&out_dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert_eq!(source[&name], hash(&std::fs::read(entry.path()).unwrap()));
        rest.insert(name);
    }
    assert_eq!(rest.len(), 3);
    assert!(rest.is_disjoint(&read));
    assert_eq!(rest.len() + read.len(), source.len());

    let bogus = dir.path().join("bogus.json");
    std::fs::write(&bogus, "{\"epoch\": 1}").unwrap();
    let out = cluster.cli(&["stream", "/cli", "--resume", bogus.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a shard stream cursor"), "{stderr}");
}

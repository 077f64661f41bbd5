//! The client and the `shardfs` CLI against a real multi-process cluster:
//! three metaservers and three or four chunk servers on loopback.

use std::time::{Duration, Instant};

use shardfs_client::{ClientConfig, ClientError, PutOptions, read_all};
use shardfs_tests::{Cluster, cli_at, data, hash, ok, stderr, stdout, tree_hashes};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const CHUNK: usize = 1 << 20;

fn small_chunks() -> ClientConfig {
    ClientConfig {
        chunk_size: CHUNK as u64,
        read_ahead_bytes: 4 * CHUNK as u64,
        ..ClientConfig::default()
    }
}

/// Writes the edge-case tree: empty, 1 byte, exactly one chunk, one chunk
/// plus one byte, many chunks, nested directories and an empty directory.
fn make_tree(root: &std::path::Path) {
    let files: [(&str, usize); 7] = [
        ("empty", 0),
        ("one-byte", 1),
        ("exact-chunk", CHUNK),
        ("chunk-plus-one", CHUNK + 1),
        ("many/chunks.bin", 5 * CHUNK + 12_345),
        ("many/deeper/small.txt", 100),
        ("many/deeper/other.bin", 3 * CHUNK),
    ];
    for (name, len) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data(len, name)).unwrap();
    }
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_tree_round_trip_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let src = dir.path().join("src");
    make_tree(&src);

    let src_arg = src.to_str().unwrap();
    ok(cluster.cli(&[
        "put",
        "-r",
        "--chunk-size",
        "1MiB",
        src_arg,
        "/datasets/tree",
    ]));
    let out = dir.path().join("out");
    ok(cluster.cli(&["get", "-r", "/datasets/tree", out.to_str().unwrap()]));
    assert_eq!(tree_hashes(&src), tree_hashes(&out));

    // cat streams one file's exact bytes.
    let cat = ok(cluster.cli(&["cat", "/datasets/tree/many/chunks.bin"]));
    assert_eq!(
        hash(&cat.stdout),
        hash(&std::fs::read(src.join("many/chunks.bin")).unwrap())
    );

    // ls --json lists everything with sizes; -R walks down.
    let ls = ok(cluster.cli(&["ls", "-R", "--json", "/datasets/tree"]));
    let entries: serde_json::Value = serde_json::from_str(&stdout(&ls)).unwrap();
    let sizes: std::collections::BTreeMap<String, u64> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "file")
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sizes.len(), 7);
    assert_eq!(sizes["/datasets/tree/chunk-plus-one"], CHUNK as u64 + 1);
    assert_eq!(sizes["/datasets/tree/empty"], 0);

    // stat --json: every chunk with its id, length and three locations;
    // the ids are the hashes of the source's 1 MiB pieces.
    let stat = ok(cluster.cli(&["stat", "--json", "/datasets/tree/many/chunks.bin"]));
    let stat: serde_json::Value = serde_json::from_str(&stdout(&stat)).unwrap();
    let source = std::fs::read(src.join("many/chunks.bin")).unwrap();
    let chunks = stat["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 6);
    for (chunk, piece) in chunks.iter().zip(source.chunks(CHUNK)) {
        assert_eq!(chunk["id"].as_str().unwrap(), hash(piece));
        assert_eq!(chunk["length"].as_u64().unwrap(), piece.len() as u64);
        assert_eq!(chunk["locations"].as_array().unwrap().len(), 3);
    }

    // cluster status --json names the leader and every server.
    let status = ok(cluster.cli(&["cluster", "status", "--json"]));
    let status: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_ne!(status["leader"]["id"].as_u64().unwrap(), 0);
    assert_eq!(status["metaservers"].as_array().unwrap().len(), 3);
    let servers = status["chunk_servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3);
    assert!(servers.iter().all(|s| s["state"] == "alive"));
    assert_eq!(status["under_replicated"].as_u64(), Some(0));

    // mv, mkdir -p, rm -r, and a get of a single file into a directory.
    ok(cluster.cli(&["mkdir", "-p", "/a/b/c"]));
    ok(cluster.cli(&["mv", "/datasets/tree/one-byte", "/a/b/c/moved"]));
    let single = dir.path().join("single");
    std::fs::create_dir(&single).unwrap();
    ok(cluster.cli(&["get", "/a/b/c/moved", single.to_str().unwrap()]));
    assert_eq!(
        std::fs::read(single.join("moved")).unwrap(),
        data(1, "one-byte")
    );
    let rm = cluster.cli(&["rm", "/datasets/tree"]);
    assert_eq!(rm.status.code(), Some(1));
    assert!(stderr(&rm).contains("-r"), "{}", stderr(&rm));
    ok(cluster.cli(&["rm", "-r", "/datasets/tree"]));
    let gone = cluster.cli(&["stat", "/datasets/tree/empty"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("no such file or directory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reader_seeks_and_reads_match_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let client = cluster.client(small_chunks()).await;
    let source = data(7 * CHUNK + 777, "seek");
    client
        .put_bytes(source.clone().into(), "/seek.bin", &PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        hash(&read_all(&client, "/seek.bin").await.unwrap()),
        hash(&source)
    );

    let mut reader = client.open("/seek.bin").await.unwrap();
    let mut state = 0x9e3779b97f4a7c15u64;
    for _ in 0..64 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = state % source.len() as u64;
        let len = (state >> 32) as usize % (3 * CHUNK);
        reader.seek(std::io::SeekFrom::Start(offset)).await.unwrap();
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            let n = reader.read(&mut buf[filled..]).await.unwrap();
            if n == 0 {
                break;
            }
            filled += n;
        }
        let end = (offset as usize + len).min(source.len());
        assert_eq!(filled, end - offset as usize);
        assert_eq!(hash(&buf[..filled]), hash(&source[offset as usize..end]));
    }
    // Past the end reads nothing.
    reader.seek(std::io::SeekFrom::End(10)).await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(reader.read(&mut buf).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_file_reads_back_after_a_chunk_server_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3).await;
    let client = cluster.client(small_chunks()).await;
    let mut files = Vec::new();
    for i in 0..6 {
        let bytes = data(i * CHUNK / 2 + i * 1000, &format!("kill-{i}"));
        let path = format!("/kill/file-{i}");
        client
            .put_bytes(bytes.clone().into(), &path, &PutOptions::default())
            .await
            .unwrap();
        files.push((path, bytes));
    }
    cluster.kill_chunk(1);
    // At once (the metaserver still lists the dead server) and again once
    // it is declared dead: every get succeeds with the right bytes.
    for round in 0..2 {
        for (path, bytes) in &files {
            let got = read_all(&client, path).await.unwrap();
            assert_eq!(hash(&got), hash(bytes), "{path} in round {round}");
        }
        let out = dir.path().join(format!("out-{round}"));
        client.get_tree("/kill", &out, None).await.unwrap();
        for (path, bytes) in &files {
            let name = path.rsplit('/').next().unwrap();
            assert_eq!(hash(&std::fs::read(out.join(name)).unwrap()), hash(bytes));
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    let status = client.cluster_status().await.unwrap();
    assert!(status.under_replicated > 0, "the lost replicas are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_chunk_server_is_hedged_around() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    // A minute per request: without hedging, a read that starts at the
    // stalled server would wait that long before trying another.
    let client = cluster
        .client(ClientConfig {
            chunk_timeout: Duration::from_secs(60),
            ..small_chunks()
        })
        .await;
    let bytes = data(12 * CHUNK + 321, "hedge");
    client
        .put_bytes(bytes.clone().into(), "/hedge/file", &PutOptions::default())
        .await
        .unwrap();
    // Warm the client's fetch times, then freeze one server: it accepts
    // connections (the kernel does) but never answers.
    assert_eq!(
        hash(&read_all(&client, "/hedge/file").await.unwrap()),
        hash(&bytes)
    );
    let stalled = &cluster.chunks[&2];
    // SAFETY: signals a child process of this test.
    unsafe { libc::kill(stalled.child.id() as i32, libc::SIGSTOP) };
    let started = Instant::now();
    let got = read_all(&client, "/hedge/file").await;
    let took = started.elapsed();
    unsafe { libc::kill(stalled.child.id() as i32, libc::SIGCONT) };
    assert_eq!(hash(&got.unwrap()), hash(&bytes));
    let counters = client.counters();
    assert!(
        counters.hedges > 0,
        "slow requests were hedged: {counters:?}"
    );
    assert!(
        counters.hedge_wins > 0,
        "and the hedges answered: {counters:?}"
    );
    assert_eq!(counters.replica_failures, 0, "nothing waited for a timeout");
    assert!(took < Duration::from_secs(30), "the read took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_replica_is_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let client = cluster.client(small_chunks()).await;
    let source = data(3 * CHUNK, "corrupt");
    client
        .put_bytes(
            source.clone().into(),
            "/corrupt.bin",
            &PutOptions::default(),
        )
        .await
        .unwrap();
    // The reader tries chunk 0 at its first listed location first: flip a
    // byte in that very copy.
    let (_, locations) = client.stat_with_locations("/corrupt.bin").await.unwrap();
    let bad_addr = locations[0][0].clone();
    let bad_server = cluster.chunk_id_at(&bad_addr);
    let id = shardfs_proto::ChunkId::of(&source[..CHUNK]);
    let file = cluster.chunk_file(bad_server, &id);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[12_345] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();

    let got = read_all(&client, "/corrupt.bin").await.unwrap();
    assert_eq!(hash(&got), hash(&source));
    assert_eq!(client.counters().bad_replicas_seen, 1);

    // The leader had the server re-hash its copy: confirmed, quarantined,
    // and no longer listed as a location.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = client.cluster_status().await.unwrap();
        let (_, locations) = client.stat_with_locations("/corrupt.bin").await.unwrap();
        if status.bad_replicas_reported >= 1
            && status.bad_replicas_confirmed >= 1
            && !locations[0].contains(&bad_addr)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bad replica not reported: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!file.exists(), "the bad copy left the chunk directory");
    let quarantined: Vec<_> = std::fs::read_dir(cluster.chunk_dir(bad_server).join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        quarantined.iter().any(|n| n.starts_with(&id.to_hex())),
        "{quarantined:?}"
    );
    // And the file still reads right, now from the good copies only.
    let again = read_all(&client, "/corrupt.bin").await.unwrap();
    assert_eq!(hash(&again), hash(&source));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_put_of_the_same_data_sends_no_chunk_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let client = cluster.client(small_chunks()).await;
    let source = data(5 * CHUNK + 99, "dedup");
    let first = client
        .put_bytes(source.clone().into(), "/dedup/one", &PutOptions::default())
        .await
        .unwrap();
    assert_eq!(first.chunks, 6);
    assert_eq!(first.bytes_sent, 3 * source.len() as u64);
    let sent_before = client.counters().bytes_sent;
    let stored_before = stored_chunks(&cluster).await;

    let second = client
        .put_bytes(source.clone().into(), "/dedup/two", &PutOptions::default())
        .await
        .unwrap();
    assert_eq!(second.bytes_sent, 0);
    assert_eq!(second.chunks_deduplicated, 6);
    assert_eq!(client.counters().bytes_sent, sent_before);
    assert_eq!(stored_chunks(&cluster).await, stored_before);
    assert_eq!(
        hash(&read_all(&client, "/dedup/two").await.unwrap()),
        hash(&source)
    );
}

/// Chunks stored on each chunk server, as the servers themselves count.
async fn stored_chunks(cluster: &Cluster) -> Vec<u64> {
    let mut counts = Vec::new();
    for process in cluster.chunks.values() {
        let client = cluster.observer_chunk_client(&process.addr);
        counts.push(client.stats().await.unwrap().chunk_count);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_put_leaves_no_file_and_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let client = cluster.client(small_chunks()).await;

    // More replicas than chunk servers: refused, nothing visible.
    let options = PutOptions {
        replication: Some(4),
        ..PutOptions::default()
    };
    let started = Instant::now();
    let err = client
        .put_bytes(data(2 * CHUNK, "r4").into(), "/fail/r4", &options)
        .await
        .unwrap_err();
    // The real cause, at once, naming each server's state.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    for says in [
        "cannot place 4 replicas: 3 chunk server(s) can take them",
        "alive",
    ] {
        assert!(err.to_string().contains(says), "{err}");
    }
    assert!(!err.to_string().contains("leader"), "{err}");
    assert!(matches!(
        client.stat("/fail/r4").await,
        Err(ClientError::NotFound(_))
    ));

    // An input that breaks off half way: nothing visible either.
    let failing = FailingReader {
        inner: std::io::Cursor::new(data(3 * CHUNK, "partial")),
        fail_after: 2 * CHUNK,
        read: 0,
    };
    let err = client
        .put_reader(failing, "/fail/partial", &PutOptions::default(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("input broke"), "{err}");
    assert!(matches!(
        client.stat("/fail/partial").await,
        Err(ClientError::NotFound(_))
    ));

    // The CLI: usage errors exit 2, failures exit 1 with plain words.
    let usage = cluster.cli(&["put", "only-one-arg"]);
    assert_eq!(usage.status.code(), Some(2));
    let missing = cluster.cli(&["get", "/no/such/file", dir.path().to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("/no/such/file: no such file or directory"));
    let bad_size = cluster.cli(&["put", "--chunk-size", "lots", "/etc/hostname", "/x"]);
    assert_eq!(bad_size.status.code(), Some(2));
    // Out of range is a usage error too (exit 2), naming the range.
    let too_big = cluster.cli(&["put", "--chunk-size", "1GiB", "/etc/hostname", "/x"]);
    assert_eq!(too_big.status.code(), Some(2));
    assert!(
        stderr(&too_big).contains("chunk size"),
        "{}",
        stderr(&too_big)
    );
    let port = shardfs_proto::process::free_ports(1).unwrap()[0];
    let down = cli_at(&format!("127.0.0.1:{port}"), &["--insecure", "ls", "/"]);
    assert_eq!(down.status.code(), Some(1));
    let words = stderr(&down);
    assert!(
        words.contains(&format!(
            "no metaserver reachable at 127.0.0.1:{port} (connection refused)"
        )) && words.contains("deploy/local-cluster.sh status"),
        "{words}"
    );
    // Nothing of the failed puts is listed.
    let listing = client.list("/").await.unwrap();
    assert!(listing.iter().all(|e| e.name != "fail" || e.is_dir));
    if listing.iter().any(|e| e.name == "fail") {
        assert!(client.list("/fail").await.unwrap().is_empty());
    }
}

/// Yields the inner reader's bytes, then fails.
struct FailingReader<R> {
    inner: R,
    fail_after: usize,
    read: usize,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FailingReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.read >= self.fail_after {
            return std::task::Poll::Ready(Err(std::io::Error::other("input broke")));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read += buf.filled().len() - before;
        poll
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_retries_a_dead_chunk_server_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 4).await;
    let client = cluster.client(small_chunks()).await;
    let dead_addr = cluster.chunks[&2].addr.clone();
    cluster.kill_chunk(2);
    // Right away, before the metaserver notices: some replicas are placed
    // on the dead server, fail, and go to the fourth server instead.
    let source = data(12 * CHUNK, "retry");
    let stats = client
        .put_bytes(source.clone().into(), "/retry.bin", &PutOptions::default())
        .await
        .unwrap();
    assert_eq!(stats.chunks, 12);
    assert!(
        client.counters().replica_failures > 0,
        "no replica went to the dead server"
    );
    let (_, locations) = client.stat_with_locations("/retry.bin").await.unwrap();
    for chunk in &locations {
        assert_eq!(chunk.len(), 3, "{locations:?}");
        assert!(!chunk.contains(&dead_addr));
    }
    assert_eq!(
        hash(&read_all(&client, "/retry.bin").await.unwrap()),
        hash(&source)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_survive_a_chunk_server_restart_on_the_same_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3).await;
    let client = cluster.client(small_chunks()).await;
    // One replica only: the restarted server is the only place to read from.
    let options = PutOptions {
        replication: Some(1),
        ..PutOptions::default()
    };
    let source = data(6 * CHUNK, "restart");
    client
        .put_bytes(source.clone().into(), "/restart.bin", &options)
        .await
        .unwrap();
    assert_eq!(
        hash(&read_all(&client, "/restart.bin").await.unwrap()),
        hash(&source)
    );
    // Restart every chunk server at its address: the client's kept bulk
    // connections are now dead and must be replaced, not fail the read.
    let addrs: Vec<(u64, String)> = cluster
        .chunks
        .iter()
        .map(|(id, p)| (*id, p.addr.clone()))
        .collect();
    for (id, addr) in &addrs {
        cluster.kill_chunk(*id);
        cluster.start_chunk_at(*id, addr);
    }
    cluster.wait_healthy(Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, locations) = client.stat_with_locations("/restart.bin").await.unwrap();
        if locations.iter().all(|l| l.len() == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "locations not reported again: {locations:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = client.counters();
    assert_eq!(
        hash(&read_all(&client, "/restart.bin").await.unwrap()),
        hash(&source)
    );
    let after = client.counters();
    assert_eq!(after.replica_failures, before.replica_failures);
    assert_eq!(
        after.bulk_fallbacks, before.bulk_fallbacks,
        "stale connections were not replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_moves_into_directories_and_names_bad_local_paths() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let local = dir.path().join("one.bin");
    std::fs::write(&local, data(3000, "mv")).unwrap();
    let local_arg = local.to_str().unwrap();
    // put into an existing directory keeps the name; several go into one.
    ok(cluster.cli(&["mkdir", "/in"]));
    ok(cluster.cli(&["put", local_arg, "/in"]));
    ok(cluster.cli(&["put", local_arg, local_arg, "/many/"]));
    ok(cluster.cli(&["mkdir", "/into"]));
    ok(cluster.cli(&["mv", "/in/one.bin", "/into"]));
    let cat = ok(cluster.cli(&["cat", "/into/one.bin"]));
    assert_eq!(hash(&cat.stdout), hash(&data(3000, "mv")));
    let ls = ok(cluster.cli(&["ls", "/many"]));
    assert_eq!(stdout(&ls).trim(), "one.bin");

    let missing = cluster.cli(&["put", "/no/such/local/file", "/x"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        stderr(&missing).trim(),
        "shardfs: /no/such/local/file: no such file or directory"
    );
    let under_file = cluster.cli(&["put", local_arg, "/into/one.bin/child"]);
    assert_eq!(
        stderr(&under_file).trim(),
        "shardfs: /into/one.bin/child: not a directory"
    );
    let nowhere = cluster.cli(&["get", "/into/one.bin", "/no/such/dir/x"]);
    assert_eq!(
        stderr(&nowhere).trim(),
        "shardfs: /no/such/dir: no such local directory"
    );
    let without_r = cluster.cli(&["get", "/into", dir.path().to_str().unwrap()]);
    assert!(stderr(&without_r).contains("is a directory (use -r"));
}

//! Three real metaserver processes: elections, redirects, kill -9 of the
//! leader under load, full restarts, membership changes, snapshots, and
//! bad input.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardfs_tests::cluster::{listing, offline_listing};
use shardfs_tests::{Cluster, file_info};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reads_and_redirects() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::metaservers(dir.path(), 3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.with_chunk_servers(3).await;
    let client = cluster.running_meta();
    assert!(client.mkdir("/datasets/imagenet", true).await.unwrap());
    let file = file_info(1, 4);
    let committed = client
        .commit("/datasets/imagenet/shard-0.tar", file.clone(), false)
        .await
        .unwrap();
    assert!(!committed.replaced);
    let entry = client
        .lookup("/datasets/imagenet/shard-0.tar")
        .await
        .unwrap();
    let got = entry.file.unwrap();
    assert_eq!(got.chunks, file.chunks);
    assert_eq!(got.size, file.size);
    assert_eq!(got.content_id, committed.content_id);

    // A follower names the leader.
    let follower = *cluster.metas.keys().find(|id| **id != leader).unwrap();
    let mut direct = client.direct(cluster.meta_addr(follower)).unwrap();
    let status = direct
        .mkdir(shardfs_proto::meta::v1::MkdirRequest {
            path: "/x".into(),
            parents: false,
            request_id: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status
            .metadata()
            .get("shardfs-leader")
            .unwrap()
            .to_str()
            .unwrap(),
        cluster.meta_addr(leader)
    );
    assert!(
        status.message().contains(cluster.meta_addr(leader)),
        "{}",
        status.message()
    );
    cluster.stop_metas().await;
}

/// A call retried after the leader that applied it died gets the first
/// answer from the new leader, instead of being applied again (a rename
/// would fail "not found", a delete would report nothing deleted). The same
/// call with another request id is a new call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_call_gets_its_first_answer_from_a_new_leader() {
    use shardfs_proto::meta::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::metaservers(dir.path(), 3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.with_chunk_servers(3).await;
    let client = cluster.running_meta();
    let kept = client.commit("/r/a", file_info(1, 3), false).await.unwrap();
    client
        .commit("/r/doomed/x", file_info(2, 2), false)
        .await
        .unwrap();
    let rename = |request_id: &'static [u8]| {
        let client = client.clone();
        async move {
            let request = pb::RenameRequest {
                from: "/r/a".into(),
                to: "/r/b".into(),
                request_id: request_id.into(),
            };
            client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.rename(request).await }
                })
                .await
        }
    };
    let delete = |request_id: &'static [u8]| {
        let client = client.clone();
        async move {
            let request = pb::DeleteRequest {
                path: "/r/doomed".into(),
                recursive: true,
                request_id: request_id.into(),
            };
            client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.delete(request).await }
                })
                .await
                .map(|r| r.files_deleted)
        }
    };
    rename(b"rename-once").await.unwrap();
    assert_eq!(delete(b"delete-once").await.unwrap(), 1);

    cluster.kill_meta(leader);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    rename(b"rename-once")
        .await
        .expect("the retry gets the first answer");
    assert_eq!(delete(b"delete-once").await.unwrap(), 1);
    assert_eq!(
        rename(b"another-rename").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        delete(b"another-delete").await.unwrap_err().code(),
        Code::NotFound
    );
    let too_long: &'static [u8] = &[7u8; 65];
    let status = rename(too_long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("request id"),
        "{}",
        status.message()
    );

    // The namespace shows each call applied exactly once.
    let paths: Vec<(String, Vec<u8>)> = listing(&client)
        .await
        .into_iter()
        .map(|(path, entry)| {
            let content = entry
                .file
                .map(|f| f.content_id.to_vec())
                .unwrap_or_default();
            (path, content)
        })
        .collect();
    assert_eq!(
        paths,
        vec![
            ("/r".to_string(), Vec::new()),
            ("/r/b".to_string(), kept.content_id.to_vec()),
        ]
    );
    cluster.stop_metas().await;
}

/// An acknowledged commit: its path and content id.
type Acked = (String, Vec<u8>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_load_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::metaservers(dir.path(), 3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.with_chunk_servers(3).await;
    let client = cluster.running_meta();
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let client = client.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let path = format!("/load/w{w}/f{i}");
                if let Ok(response) = client
                    .commit(&path, file_info(w * 1_000_000 + i, 4), false)
                    .await
                {
                    acked
                        .lock()
                        .unwrap()
                        .push((path, response.content_id.to_vec()));
                }
                i += 1;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 50 {
        assert!(Instant::now() < deadline, "writers made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = Instant::now();
    cluster.kill_meta(leader);
    // A new leader within 10 s, the bound the project sets for a loaded
    // 2-core machine (with one core kept busy beside this suite's nine
    // clusters, one failover took over 5 s).
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let elected_after = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    let before = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < before + 50 {
        assert!(
            Instant::now() < deadline,
            "writes did not resume after the leader died"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} commits acknowledged; new leader after {elected_after:?}",
        acked.len()
    );

    // Bring the old leader back; every acknowledged commit is everywhere.
    cluster.start_meta(leader);
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    let client = cluster.running_meta();
    for (path, content_id) in &acked {
        let entry = client.lookup(path).await.unwrap();
        assert_eq!(
            &entry.file.unwrap().content_id.to_vec(),
            content_id,
            "{path}"
        );
    }
    let through_leader = listing(&client).await;
    // Let the restarted node catch up, then compare every node's own store.
    let target = cluster.status_of(new_leader).await.unwrap().last_applied;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut behind = false;
        for id in [1, 2, 3] {
            let applied = cluster
                .status_of(id)
                .await
                .map(|s| s.last_applied)
                .unwrap_or(0);
            behind |= applied < target;
        }
        if !behind {
            break;
        }
        assert!(Instant::now() < deadline, "a node did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop_metas().await;
    let files: BTreeSet<&str> = through_leader
        .iter()
        .filter(|(_, e)| !e.is_dir)
        .map(|(p, _)| p.as_str())
        .collect();
    for (path, _) in &acked {
        assert!(
            files.contains(path.as_str()),
            "{path} missing from the listing"
        );
    }
    let reference = offline_listing(&cluster.meta_dir(1));
    for id in [2, 3] {
        assert_eq!(
            offline_listing(&cluster.meta_dir(id)),
            reference,
            "node {id} differs"
        );
    }
    // Nothing half-committed: every file is whole (4 chunks, size matches).
    for (path, inode) in &reference {
        if let shardfs_meta::namespace::Inode::File(file) = inode {
            assert_eq!(file.chunks.len(), 4, "{path}");
            assert_eq!(file.size, file.chunks.iter().map(|c| c.length).sum::<u64>());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_identical_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::metaservers(dir.path(), 3, &[]);
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.with_chunk_servers(3).await;
    let client = cluster.running_meta();
    for i in 0..30u64 {
        client
            .commit(&format!("/r/d{}/f{i}", i % 3), file_info(i, 2), false)
            .await
            .unwrap();
    }
    client.rename("/r/d0", "/r/moved").await.unwrap();
    client.delete("/r/d1", true).await.unwrap();
    let before = listing(&client).await;
    assert_eq!(before.iter().filter(|(_, e)| !e.is_dir).count(), 20);
    cluster.stop_metas().await;
    for id in [1, 2, 3] {
        cluster.start_meta(id);
    }
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    let client = cluster.running_meta();
    assert_eq!(listing(&client).await, before);
    cluster.stop_metas().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_promote_and_remove_metaservers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::metaservers(dir.path(), 3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.with_chunk_servers(3).await;
    let client = cluster.running_meta();
    for i in 0..20u64 {
        client
            .commit(&format!("/m/f{i}"), file_info(i, 1), false)
            .await
            .unwrap();
    }
    cluster.start_extra_meta(4);
    let membership = client
        .add_metaserver(4, cluster.meta_addr(4), false)
        .await
        .unwrap();
    assert_eq!(membership.voters, vec![1, 2, 3, 4]);
    // Remove a follower; the group keeps serving.
    let removed = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();
    let membership = cluster
        .running_meta()
        .remove_metaserver(removed)
        .await
        .unwrap();
    assert!(!membership.voters.contains(&removed) && !membership.learners.contains(&removed));
    assert!(cluster.terminate_meta(removed).await);
    let client = cluster.running_meta();
    client
        .commit("/m/after", file_info(99, 1), false)
        .await
        .unwrap();
    let names: Vec<String> = client
        .list("/m")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names.len(), 21);
    // The new member holds everything.
    let status = cluster.status_of(4).await.unwrap();
    assert!(status.metaservers.iter().any(|m| m.id == 4 && m.voter));
    cluster.stop_metas().await;
    assert_eq!(
        offline_listing(&cluster.meta_dir(4)),
        offline_listing(&cluster.meta_dir(leader))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_far_behind_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::metaservers(dir.path(), 3, &["--snapshot-every", "50"]);
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.with_chunk_servers(3).await;
    let lagger = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();
    assert!(cluster.terminate_meta(lagger).await);
    let client = cluster.running_meta();
    for i in 0..300u64 {
        client
            .commit(&format!("/s/f{i:03}"), file_info(i, 1), false)
            .await
            .unwrap();
    }
    let target = cluster.status_of(leader).await.unwrap().last_applied;
    cluster.start_meta(lagger);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied = cluster
            .status_of(lagger)
            .await
            .map(|s| s.last_applied)
            .unwrap_or(0);
        if applied >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lagging follower stuck at {applied} < {target}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop_metas().await;
    let reference = offline_listing(&cluster.meta_dir(leader));
    assert_eq!(
        reference
            .iter()
            .filter(|(p, _)| p.starts_with("/s/f"))
            .count(),
        300
    );
    assert_eq!(offline_listing(&cluster.meta_dir(lagger)), reference);
    // It caught up through a snapshot: the log it missed was purged.
    let (mut log, _) = shardfs_meta::store::open(&cluster.meta_dir(lagger).join("raft")).unwrap();
    use openraft::storage::RaftLogStorage;
    let state = log.get_log_state().await.unwrap();
    assert!(
        state.last_purged_log_id.is_some(),
        "the lagging node never installed a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::metaservers(dir.path(), 3, &[]);
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.with_chunk_servers(3).await;
    let client = cluster.running_meta();
    client
        .commit("/ok/file", file_info(1, 2), false)
        .await
        .unwrap();
    let before = listing(&client).await;

    for bad in [
        "relative",
        "/a//b",
        "/a/../b",
        "/a/./b",
        "/trailing/",
        "/nul\0x",
        "/new\nline",
        "/esc\x1b[2J",
    ] {
        let status = client.mkdir(bad, true).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            status.message().contains("invalid path"),
            "{}",
            status.message()
        );
    }
    let long = format!("/{}", "n".repeat(300));
    let status = client
        .commit(&long, file_info(2, 1), false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("255"), "{}", status.message());

    let status = client
        .commit("/ok/file", file_info(3, 1), true)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("/ok/file"));

    let mut wrong_size = file_info(4, 2);
    wrong_size.size += 1;
    let status = client
        .commit("/ok/other", wrong_size, false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("sum of its chunk lengths"),
        "{}",
        status.message()
    );
    let mut bad_id = file_info(5, 1);
    bad_id.chunks[0].id = vec![1u8; 5].into();
    let status = client.commit("/ok/other", bad_id, false).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("32 bytes"),
        "{}",
        status.message()
    );
    let mut zero_r = file_info(6, 1);
    zero_r.replication = 0;
    assert_eq!(
        client
            .commit("/ok/other", zero_r, false)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // Oversized: a request over the 16 MiB limit, and a file with more
    // chunks than a file may have.
    let status = client
        .commit("/ok/huge", file_info(7, 500_000), false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let status = client
        .commit("/ok/huge", file_info(8, 300_000), false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("65536"), "{}", status.message());
    // A commit naming real chunks with wrong lengths: one no committed file
    // uses yet (the chunk servers say how long it is), one a committed file
    // uses (the namespace knows).
    for (seed, says) in [(10, "holds"), (1, "committed files use it as")] {
        let mut lying = file_info(seed, 2);
        let real = lying.chunks[0].length;
        lying.chunks[0].length = real - 1;
        lying.size -= 1;
        let status = client.commit("/ok/lying", lying, false).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        for part in [
            format!("the file says {} bytes", real - 1),
            format!("{says} {real} bytes"),
        ] {
            assert!(status.message().contains(&part), "{}", status.message());
        }
    }
    let mut twice = file_info(11, 2);
    twice.chunks[1] = twice.chunks[0].clone();
    twice.chunks[1].length -= 1;
    twice.size = twice.chunks.iter().map(|c| c.length).sum();
    let status = client.commit("/ok/lying", twice, false).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("two lengths"),
        "{}",
        status.message()
    );

    // A commit naming chunks no chunk server holds.
    let mut unknown = file_info(9, 2);
    unknown.chunks[1].id = blake3::hash(b"never stored").as_bytes().to_vec().into();
    let status = client
        .commit("/ok/unknown", unknown, false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let missing = blake3::hash(b"never stored").to_hex().to_string();
    assert!(status.message().contains(&missing), "{}", status.message());
    assert!(
        status.message().contains("1 chunk(s)"),
        "{}",
        status.message()
    );

    assert_eq!(
        client.lookup("/missing").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        client.delete("/ok", false).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        client.rename("/ok", "/ok/inside").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(listing(&client).await, before, "state harmed by bad input");

    // The largest file allowed commits, and the leader stays in office
    // (as JSON its Raft entry outlasted openraft's AppendEntries timeout:
    // every try deposed the leader).
    let term = client.cluster_status().await.unwrap().term;
    let started = Instant::now();
    // A debug build takes 2-3 s for it, and over 10 s (the most an attempt
    // gets by default) on a machine busy with two compilers: an attempt
    // given up is started again from scratch, so give one all the time.
    client
        .with_deadline(Duration::from_secs(240))
        .with_attempt_timeout(Duration::from_secs(200))
        .commit("/ok/largest", file_info(12, 65_536), false)
        .await
        .unwrap_or_else(|e| panic!("commit of 65,536 chunks: {e:?}"));
    eprintln!("a commit of 65,536 chunks took {:?}", started.elapsed());
    let entry = client.lookup("/ok/largest").await.unwrap();
    assert_eq!(
        entry.file.map(|f| f.chunks.len()),
        Some(65_536),
        "the whole chunk list"
    );
    assert_eq!(client.cluster_status().await.unwrap().term, term);
    cluster.stop_metas().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_servers_placement_dedup_and_death() {
    use shardfs_proto::meta::v1::{AllocateChunksRequest, ChunkToPlace};
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::metaservers(dir.path(), 3, &["--dead-after-secs", "2"]);
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.with_chunk_servers(4).await;
    let client = cluster.running_meta();
    let allocate = |chunks: Vec<ChunkToPlace>| {
        let client = client.clone();
        let request = AllocateChunksRequest {
            chunks,
            replication: 3,
            exclude: Vec::new(),
        };
        async move {
            client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.allocate_chunks(request).await }
                })
                .await
        }
    };

    // New chunks go to R distinct servers.
    let new_chunks: Vec<ChunkToPlace> = (0..8u8)
        .map(|i| ChunkToPlace {
            id: blake3::hash(&[i; 9]).as_bytes().to_vec().into(),
            length: 1 << 20,
        })
        .collect();
    let placements = allocate(new_chunks).await.unwrap().placements;
    assert_eq!(placements.len(), 8);
    for p in &placements {
        assert!(p.stored_at.is_empty());
        let distinct: BTreeSet<&String> = p.targets.iter().collect();
        assert_eq!(distinct.len(), 3, "{p:?}");
    }
    // Chunks already stored are reported where they are (dedup).
    let (pool_id, _) = shardfs_tests::pool_chunk(0);
    let pool_chunk = vec![ChunkToPlace {
        id: pool_id.to_vec().into(),
        length: 1000,
    }];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let placement = allocate(pool_chunk.clone())
            .await
            .unwrap()
            .placements
            .remove(0);
        // Heartbeats report the pool within a second or two.
        if placement.stored_at.len() == 4 {
            assert!(placement.targets.is_empty());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pool chunk never reported: {placement:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.commit("/d/f", file_info(3, 4), false).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client.cluster_status().await.unwrap();
        if status
            .chunk_servers
            .iter()
            // (repair may already have trimmed the fourth copy of the
            // file's 4 chunks)
            .all(|c| c.alive && c.chunks >= 60)
        {
            assert_eq!(status.under_replicated, 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inventories not reported: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A silent chunk server is declared dead; its replicas stop counting.
    // With one of four gone, repair brings every chunk back to R = 3 live
    // replicas on the other three.
    let wait_dead = |id: u64| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let status = client.cluster_status().await.unwrap();
                let server = status.chunk_servers.iter().find(|c| c.id == id).unwrap();
                if !server.alive {
                    return status;
                }
                assert!(
                    Instant::now() < deadline,
                    "dead chunk server {id} still alive"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    cluster.kill_chunk(1);
    let status = wait_dead(1).await;
    assert_eq!(status.chunk_servers.iter().filter(|c| c.alive).count(), 3);
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.cluster_status().await.unwrap().under_replicated > 0 {
        assert!(Instant::now() < deadline, "repair did not restore R = 3");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.commit("/d/g", file_info(4, 2), false).await.unwrap();

    // With two gone, the file's chunks are under-replicated and R = 3
    // cannot be placed.
    cluster.kill_chunk(2);
    let status = wait_dead(2).await;
    assert!(status.under_replicated > 0, "{status:?}");
    let status = allocate(pool_chunk.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    for says in [
        "cannot place 3 replicas: 2 chunk server(s) can take them",
        "1 at ",
        " dead",
        " alive",
    ] {
        assert!(status.message().contains(says), "{}", status.message());
    }
    // Commits that need min(R, 2) = 2 live replicas still succeed.
    client.commit("/d/h", file_info(5, 2), false).await.unwrap();
    cluster.stop_metas().await;
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_raft_messages_are_refused_without_echo() {
    use shardfs_proto::meta::v1::RaftMessage;
    use shardfs_proto::meta::v1::raft_service_client::RaftServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::metaservers(dir.path(), 3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.with_chunk_servers(3).await;
    let client = cluster.running_meta();
    client
        .commit("/kept/file", file_info(1, 2), false)
        .await
        .unwrap();
    let target = *cluster.metas.keys().find(|id| **id != leader).unwrap();
    let addr = cluster.meta_addr(target).to_string();
    let pid = cluster.metas[&target].child.id();
    let before = rss_mib(pid);
    // As a member would send them: a client's are refused before any is
    // read (see security.rs).
    let channel = cluster
        .tls
        .observer()
        .endpoint(&addr, shardfs_proto::security::ServerKind::Meta)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raft = RaftServiceClient::new(channel).max_encoding_message_size(usize::MAX);

    // 200 MiB of "snapshot": refused by size, in a short message.
    let huge = RaftMessage {
        body: bytes::Bytes::from(vec![b'x'; 200 << 20]),
    };
    let status = raft.install_snapshot(huge).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal
        ),
        "{status:?}"
    );
    assert!(
        status.message().len() < 300,
        "{} bytes",
        status.message().len()
    );
    // Garbage of a size it accepts: a clear error that quotes nothing.
    // (The binary tag, then a varint that never ends.)
    let mut binary = vec![0x01u8];
    binary.extend([0xffu8; 4095]);
    for body in [binary, b"{\"vote\": ".repeat(1000), Vec::new()] {
        let status = raft
            .append_entries(RaftMessage { body: body.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with("malformed raft message"),
            "{}",
            status.message()
        );
        assert!(status.message().len() < 100, "{}", status.message());
    }
    let after = rss_mib(pid);
    assert!(
        after < before + 150,
        "the metaserver grew from {before} MiB to {after} MiB"
    );
    // The group still serves, and kept what it had.
    client
        .commit("/kept/second", file_info(2, 2), false)
        .await
        .unwrap();
    assert!(client.lookup("/kept/file").await.is_ok());
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(15)).await,
        leader,
        "the leader changed"
    );
    cluster.stop_metas().await;
}

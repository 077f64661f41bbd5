//! The attacks of the security issue, replayed against a real TLS cluster
//! by a process on the same host: each is refused, and nothing written
//! before is lost.

use std::time::Duration;

use bytes::Bytes;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use shardfs_client::certs::Member;
use shardfs_client::{ClientConfig, PutOptions};
use shardfs_meta::types::{Command, TypeConfig};
use shardfs_proto::ChunkId;
use shardfs_proto::chunk::v1 as chunk_pb;
use shardfs_proto::chunk::v1::chunk_service_client::ChunkServiceClient;
use shardfs_proto::meta::v1 as pb;
use shardfs_proto::meta::v1::RaftMessage;
use shardfs_proto::meta::v1::meta_service_client::MetaServiceClient;
use shardfs_proto::meta::v1::raft_service_client::RaftServiceClient;
use shardfs_proto::security::{Security, ServerKind};
use shardfs_tests::cluster::TlsDir;
use shardfs_tests::{Cluster, chunked, data, hash, stderr};
use tonic::Code;
use tonic::transport::Channel;

const CHUNK: usize = 256 << 10;

async fn channel(security: &Security, addr: &str, kind: ServerKind) -> Channel {
    security
        .endpoint(addr, kind)
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// An AppendEntries from a made-up leader with a higher term, deleting
/// `path`: what a forger would send.
fn forged_delete(path: &str) -> RaftMessage {
    let leader = CommittedLeaderId::new(1_000, 1);
    let log_id = LogId::new(leader, 1_000_000);
    let request = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1_000, 1),
        prev_log_id: None,
        entries: vec![Entry {
            log_id,
            payload: EntryPayload::Normal(Command::Delete {
                path: path.into(),
                recursive: true,
            }),
        }],
        leader_commit: Some(log_id),
    };
    RaftMessage {
        body: shardfs_meta::codec::encode(&request).into(),
    }
}

fn forged_vote() -> RaftMessage {
    let request = VoteRequest::<u64> {
        vote: Vote::new(1_000, 7),
        last_log_id: Some(LogId::new(CommittedLeaderId::new(999, 7), 9_999_999)),
    };
    RaftMessage {
        body: shardfs_meta::codec::encode(&request).into(),
    }
}

/// The chunks of the file at `path`.
async fn chunks_of(cluster: &Cluster, path: &str) -> Vec<ChunkId> {
    let entry = cluster.meta().lookup(path).await.unwrap();
    entry
        .file
        .expect("a file")
        .chunks
        .iter()
        .map(|c| ChunkId::from_slice(&c.id).unwrap())
        .collect()
}

/// Puts a file of a few chunks and returns its hash.
async fn victim(cluster: &Cluster, path: &str) -> String {
    let client = cluster.client(chunked(CHUNK)).await;
    let bytes = data(5 * CHUNK + 123, "victim");
    client
        .put_bytes(Bytes::from(bytes.clone()), path, &PutOptions::default())
        .await
        .unwrap();
    hash(&bytes)
}

/// The file at `path` reads back with hash `want`, every chunk stored on
/// three chunk servers.
async fn intact(cluster: &Cluster, path: &str, want: String) {
    let client = cluster.client(chunked(CHUNK)).await;
    let back = shardfs_client::read_all(&client, path).await.unwrap();
    assert_eq!(hash(&back), want, "{path} changed");
    for id in chunks_of(cluster, path).await {
        assert_eq!(copies_of(cluster, id).await, 3, "chunk {id} of {path}");
    }
}

/// How many running chunk servers hold chunk `id`.
async fn copies_of(cluster: &Cluster, id: ChunkId) -> usize {
    let mut copies = 0;
    for server in cluster.chunks.values() {
        let present = cluster
            .observer_chunk_client(&server.addr)
            .has(&[id])
            .await
            .unwrap();
        copies += present.iter().filter(|p| **p).count();
    }
    copies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_protocols_refuse_whoever_is_not_the_member_they_are_for() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let want = victim(&cluster, "/victim/data.bin").await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let follower_addr = cluster.meta_addr(follower).to_string();
    let anonymous = cluster.tls.client();
    let chunk_two = cluster.tls.member(Member::Chunk(2));

    // Raft from a client, and from a chunk server: refused before a byte
    // of the message is looked at.
    for (who, security, code) in [
        ("a client", &anonymous, Code::Unauthenticated),
        ("chunk server 2", &chunk_two, Code::PermissionDenied),
    ] {
        let mut raft =
            RaftServiceClient::new(channel(security, &follower_addr, ServerKind::Meta).await);
        let refused = raft
            .append_entries(forged_delete("/victim"))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            code,
            "AppendEntries from {who}: {refused:?}"
        );
        assert!(
            refused.message().contains("cluster members only"),
            "{refused:?}"
        );
        let refused = raft.vote(forged_vote()).await.unwrap_err();
        assert_eq!(refused.code(), code, "Vote from {who}: {refused:?}");
    }

    // A fake chunk server claiming chunk server 1's id: without a
    // certificate, and with chunk server 2's.
    let leader_addr = cluster.meta_addr(leader).to_string();
    for (security, code) in [
        (&anonymous, Code::Unauthenticated),
        (&chunk_two, Code::PermissionDenied),
    ] {
        let mut meta =
            MetaServiceClient::new(channel(security, &leader_addr, ServerKind::Meta).await);
        let refused = meta
            .register_chunk_server(pb::RegisterChunkServerRequest {
                id: 1,
                addr: "127.0.0.1:1".into(),
                zone: "fake".into(),
                capacity_bytes: 1 << 40,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{refused:?}");
        let info = chunks_of(&cluster, "/victim/data.bin").await;
        let refused = meta
            .heartbeat(pb::HeartbeatRequest {
                id: 1,
                used_bytes: 0,
                free_bytes: 1 << 40,
                capacity_bytes: 1 << 40,
                added: Vec::new(),
                removed: info.iter().map(|id| Bytes::from(id.to_vec())).collect(),
                full_inventory: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{refused:?}");
    }

    // Orders only metaservers give, sent to a chunk server by a client and
    // by another chunk server.
    let info = chunks_of(&cluster, "/victim/data.bin").await;
    let ids: Vec<Bytes> = info.iter().map(|id| Bytes::from(id.to_vec())).collect();
    let target = cluster.chunks[&1].addr.clone();
    for (security, code) in [
        (&anonymous, Code::Unauthenticated),
        (&chunk_two, Code::PermissionDenied),
    ] {
        let mut chunk =
            ChunkServiceClient::new(channel(security, &target, ServerKind::Chunk).await);
        let refused = chunk
            .delete_chunks(chunk_pb::DeleteChunksRequest { ids: ids.clone() })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "DeleteChunks: {refused:?}");
        let refused = chunk
            .list_chunks(chunk_pb::ListChunksRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "ListChunks: {refused:?}");
        let refused = chunk
            .replicate_chunk(chunk_pb::ReplicateChunkRequest {
                id: ids[0].clone(),
                source: "127.0.0.1:1".into(),
                length: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "ReplicateChunk: {refused:?}");
        let refused = chunk
            .verify_chunks(chunk_pb::VerifyChunksRequest { ids: ids.clone() })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "VerifyChunks: {refused:?}");
    }

    // Give a forged entry time to be applied, were it accepted; then
    // everything is as written, and every chunk server is still the real one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    intact(&cluster, "/victim/data.bin", want).await;
    let status = cluster.meta().cluster_status().await.unwrap();
    assert!(
        status
            .chunk_servers
            .iter()
            .all(|c| c.alive && c.zone.starts_with("zone-"))
    );
    assert_eq!(
        status.term,
        cluster.meta().cluster_status().await.unwrap().term
    );
    assert!(
        status.term < 1_000,
        "the forged vote raised the term: {}",
        status.term
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plaintext_and_other_clusters_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let want = victim(&cluster, "/victim/data.bin").await;
    let meta_addr = cluster.meta_addr(1).to_string();
    let chunk_addr = cluster.chunks[&1].addr.clone();

    // Plaintext gRPC to a metaserver and a chunk server: no answer.
    let plain = Security::Insecure;
    let mut meta = MetaServiceClient::new(
        plain
            .endpoint(&meta_addr, ServerKind::Meta)
            .unwrap()
            .connect_lazy(),
    );
    let refused = meta.cluster_status(pb::ClusterStatusRequest {}).await;
    assert!(refused.is_err(), "a plaintext call was answered");

    // A plaintext bulk read of a chunk by id: the connection is closed
    // without a byte of data.
    let info = chunks_of(&cluster, "/victim/data.bin").await;
    let id = info[0];
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&chunk_addr).await.unwrap();
        let request = shardfs_proto::bulk::Request {
            id,
            offset: 0,
            length: None,
            capability: shardfs_proto::bulk::capability_field(&[]),
        };
        stream.write_all(&request.encode()).await.unwrap();
        let mut got = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "the server kept a plaintext bulk connection open"
        );
        assert!(
            got.is_empty(),
            "a plaintext bulk read got {} bytes",
            got.len()
        );
    }

    // Members of another cluster (their CA is not this one's) cannot even
    // finish a handshake, and a client trusting another CA refuses the
    // servers.
    let foreign = TlsDir::foreign(&dir.path().join("other"));
    let impostor = foreign.member(Member::Meta(1));
    let mut raft = RaftServiceClient::new(
        impostor
            .endpoint(&meta_addr, ServerKind::Meta)
            .unwrap()
            .connect_lazy(),
    );
    let refused = raft
        .append_entries(forged_delete("/victim"))
        .await
        .unwrap_err();
    assert_ne!(refused.code(), Code::Ok);
    let config = ClientConfig {
        security: Some(foreign.client()),
        ..chunked(CHUNK)
    };
    let wrong_ca = shardfs_client::Client::connect_with(&cluster.meta_addrs, config).await;
    let err = wrong_ca
        .err()
        .expect("a client trusting another CA connected");
    assert!(err.to_string().contains("certificate"), "{err}");

    // The command line: without a CA it says what to set; with the wrong
    // one, or plaintext, it fails cleanly.
    let out = shardfs_tests::cli_at(&cluster.meta_addrs.join(","), &["ls", "/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("SHARDFS_CA"), "{}", stderr(&out));
    let out = shardfs_tests::cli_at(&cluster.meta_addrs.join(","), &["--insecure", "ls", "/"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));

    intact(&cluster, "/victim/data.bin", want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_writes_are_encrypted_end_to_end_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let client = cluster.client(chunked(CHUNK)).await;
    let bytes = data(9 * CHUNK + 5, "tls");
    client
        .put_bytes(
            Bytes::from(bytes.clone()),
            "/tls/file.bin",
            &PutOptions::default(),
        )
        .await
        .unwrap();
    // Bulk reads over TLS: no fallback to gRPC was needed.
    let back = shardfs_client::read_all(&client, "/tls/file.bin")
        .await
        .unwrap();
    assert_eq!(hash(&back), hash(&bytes));
    let counters = client.counters();
    assert_eq!(counters.bulk_fallbacks, 0, "{counters:?}");
    assert!(counters.bytes_received >= bytes.len() as u64);
    // And over gRPC.
    let grpc = cluster
        .client(ClientConfig {
            bulk_reads: false,
            ..chunked(CHUNK)
        })
        .await;
    let back = shardfs_client::read_all(&grpc, "/tls/file.bin")
        .await
        .unwrap();
    assert_eq!(hash(&back), hash(&bytes));
    // What crosses the wire is ciphertext: a relay between a client and
    // a chunk server records what the server sends, for a gRPC read and a
    // bulk read, and no 64-byte window of the chunk appears in it.
    let info = chunks_of(&cluster, "/tls/file.bin").await;
    let id = info[0];
    let plain = &bytes[..CHUNK];
    let target = &cluster.chunks[&1].addr;
    let capability = capability_at(&cluster, id, "/tls/file.bin", target).await;
    let (relay, recorded) = relay_to(target).await;
    let security = cluster.tls.client();
    let via_grpc = shardfs_proto::chunk_client::ChunkClient::new(&relay, &security)
        .unwrap()
        .get_pieces_with(id, 0, None, false, capability.clone())
        .await
        .unwrap()
        .concat();
    assert_eq!(&via_grpc[..], plain);
    let buffers = shardfs_client::buffers::BufferPool::new(1 << 20);
    let via_bulk = shardfs_client::bulk::BulkPool::new(security)
        .read_chunk(&relay, id, CHUNK as u64, &capability, &buffers)
        .await
        .unwrap();
    assert_eq!(&via_bulk[..], plain);
    let wire = recorded.lock().unwrap().clone();
    assert!(wire.len() > 2 * CHUNK, "the relay saw {} bytes", wire.len());
    for window in plain.chunks(4096) {
        let probe = &window[..64];
        assert!(
            !wire.windows(64).any(|w| w == probe),
            "plaintext chunk bytes crossed the wire"
        );
    }
}

/// How long the capabilities of the capability test are valid.
const SHORT_TTL: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunk_servers_serve_and_store_only_against_capabilities_the_metaserver_made() {
    use shardfs_client::bulk::{BulkError, BulkPool};
    use shardfs_proto::chunk_client::ChunkClient;
    let dir = tempfile::tempdir().unwrap();
    let ttl = format!("{}s", SHORT_TTL.as_secs());
    let mut cluster = Cluster::start_with(dir.path(), 4, &["--capability-ttl", &ttl], &[]).await;
    let want = victim(&cluster, "/victim/data.bin").await;
    let id = chunks_of(&cluster, "/victim/data.bin").await[0];
    let buffers = shardfs_client::buffers::BufferPool::new(1 << 20);
    let security = cluster.tls.client();
    let bulk = BulkPool::new(security.clone());
    let located = cluster
        .meta()
        .locate(&[id], &["/victim/data.bin".to_string()])
        .await
        .unwrap();
    let [first, second, third] = located[0].as_slice() else {
        panic!("chunk {id} is not on three servers: {located:?}");
    };
    let (one, two) = (first.addr.clone(), second.addr.clone());
    let (one, two) = (one.as_str(), two.as_str());
    let at_one = ChunkClient::new(one, &security).unwrap();

    // A chunk id alone reads nothing, over gRPC or the bulk protocol.
    let refused = at_one.get_pieces(id, 0, None, false).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("no capability"), "{refused:?}");
    let refused = bulk
        .read_chunk(one, id, CHUNK as u64, &[], &buffers)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, BulkError::Answer(m) if m.contains("no capability")),
        "{refused:?}"
    );

    // The capability the metaserver made for this chunk on its first
    // server reads it there, by both protocols...
    let good = first.capability.clone();
    let got = at_one
        .get_pieces_with(id, 0, None, false, good.clone())
        .await
        .unwrap()
        .concat();
    assert_eq!(ChunkId::of(&got), id);
    let got = bulk
        .read_chunk(one, id, CHUNK as u64, &good, &buffers)
        .await
        .unwrap();
    assert_eq!(ChunkId::of(&got), id);
    // ... but not on another server, nor another chunk, nor once tampered
    // with (a later expiry), nor to write.
    let at_two = ChunkClient::new(two, &security).unwrap();
    let refused = at_two
        .get_pieces_with(id, 0, None, false, good.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("not valid"), "{refused:?}");
    let other = chunks_of(&cluster, "/victim/data.bin").await[1];
    let refused = at_one
        .get_pieces_with(other, 0, None, false, good.clone())
        .await
        .unwrap_err();
    assert!(refused.message().contains("not valid"), "{refused:?}");
    let mut later = good.to_vec();
    later[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
    let refused = bulk
        .read_chunk(one, id, CHUNK as u64, &later, &buffers)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, BulkError::Answer(m) if m.contains("not valid")),
        "{refused:?}"
    );
    let planted = Bytes::from(data(CHUNK, "planted"));
    let planted_id = ChunkId::of(&planted);
    for capability in [Bytes::new(), good.clone()] {
        let refused = at_one
            .put_with(planted_id, planted.clone(), capability)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    assert_eq!(
        cluster
            .observer_chunk_client(one)
            .has(&[planted_id])
            .await
            .unwrap(),
        vec![false],
        "a chunk was stored without a write capability"
    );

    // A reader holding a file open past the capabilities' expiry still
    // reads it (the client asks for fresh ones), while the old capability
    // is refused as expired.
    let client = cluster.client(chunked(CHUNK)).await;
    let mut reader = client.open("/victim/data.bin").await.unwrap();
    tokio::time::sleep(SHORT_TTL + Duration::from_secs(1)).await;
    let refused = at_one
        .get_pieces_with(id, 0, None, false, good.clone())
        .await
        .unwrap_err();
    assert!(refused.message().contains("expired"), "{refused:?}");
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut back)
        .await
        .unwrap();
    assert_eq!(hash(&back), want);
    assert_eq!(
        client.counters().replica_failures,
        0,
        "{:?}",
        client.counters()
    );

    // Repair still works: members copy among themselves without
    // capabilities. A server holding the chunk dies; its chunks are copied
    // to the fourth.
    let dead = cluster.chunk_id_at(&third.addr);
    cluster.kill_chunk(dead);
    intact_after_repair(&cluster, "/victim/data.bin", want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunk_files_are_encrypted_at_rest_under_a_local_key() {
    use shardfs_tests::bins::binary;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("at-rest.key");
    let keygen = || {
        Command::new(binary("shardfs-chunk"))
            .args(["keygen", "--out"])
            .arg(&key)
            .output()
            .unwrap()
    };
    let made = keygen();
    assert!(made.status.success(), "{}", stderr(&made));
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is {mode:o}");
    let again = keygen();
    assert_eq!(again.status.code(), Some(1), "a key file was overwritten");
    assert!(
        stderr(&again).contains("cannot create"),
        "{}",
        stderr(&again)
    );

    let key_arg = key.to_str().unwrap();
    let mut cluster =
        Cluster::start_with(dir.path(), 3, &[], &["--encryption-key-file", key_arg]).await;
    let client = cluster.client(chunked(CHUNK)).await;
    let bytes = data(6 * CHUNK + 17, "at rest");
    client
        .put_bytes(
            Bytes::from(bytes.clone()),
            "/secret/a.bin",
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let back = shardfs_client::read_all(&client, "/secret/a.bin")
        .await
        .unwrap();
    assert_eq!(hash(&back), hash(&bytes));
    assert_eq!(client.counters().bulk_fallbacks, 0);
    let grpc = cluster
        .client(ClientConfig {
            bulk_reads: false,
            ..chunked(CHUNK)
        })
        .await;
    let back = shardfs_client::read_all(&grpc, "/secret/a.bin")
        .await
        .unwrap();
    assert_eq!(hash(&back), hash(&bytes));

    // On every server, no 64-byte window of the plaintext (one per 4 KiB)
    // is anywhere in its chunk files.
    let windows: std::collections::HashSet<&[u8]> = bytes
        .chunks(4096)
        .filter(|w| w.len() >= 64)
        .map(|w| &w[..64])
        .collect();
    let ids = chunks_of(&cluster, "/secret/a.bin").await;
    for server in 1..=3 {
        for id in &ids {
            let on_disk = std::fs::read(cluster.chunk_file(server, id)).unwrap();
            assert!(
                !on_disk.windows(64).any(|w| windows.contains(w)),
                "plaintext of chunk {id} on chunk server {server}'s disk"
            );
        }
    }

    // Without its key a chunk server refuses to start, saying why, and
    // keeps its data: with the key it serves the chunks again, verified.
    cluster.kill_chunk(1);
    let mut keyless = Command::new(binary("shardfs-chunk"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(cluster.chunk_dir(1))
        .args(cluster.tls.server_args(Member::Chunk(1)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = keyless.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = keyless.kill();
            panic!("a chunk server without its key kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut refused = String::new();
    std::io::Read::read_to_string(keyless.stderr.as_mut().unwrap(), &mut refused).unwrap();
    assert_eq!(status.code(), Some(1), "{refused}");
    assert!(refused.contains("encrypted at rest"), "{refused}");
    cluster.start_chunk(1);
    let at_one = cluster.observer_chunk_client(&cluster.chunks[&1].addr);
    let mut whole = Vec::new();
    for id in &ids {
        let chunk = at_one.get(*id, 0, None, true).await.unwrap();
        assert_eq!(ChunkId::of(&chunk), *id);
        whole.extend_from_slice(&chunk);
    }
    assert_eq!(hash(&whole), hash(&bytes));
}

/// Waits (up to a minute) until every chunk of `path` is on three servers
/// again, then checks the file's bytes.
async fn intact_after_repair(cluster: &Cluster, path: &str, want: String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let ids = chunks_of(cluster, path).await;
    loop {
        let mut short = 0;
        for id in &ids {
            short += usize::from(copies_of(cluster, *id).await < 3);
        }
        if short == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{short} chunk(s) of {path} not repaired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    intact(cluster, path, want).await;
}

/// The read capability the metaserver hands out for chunk `id` of the
/// file at `path` on the chunk server at `addr`.
async fn capability_at(cluster: &Cluster, id: ChunkId, path: &str, addr: &str) -> Bytes {
    let located = cluster
        .meta()
        .locate(&[id], &[path.to_string()])
        .await
        .unwrap();
    located[0]
        .iter()
        .find(|r| r.addr == addr)
        .unwrap_or_else(|| panic!("chunk {id} is not located at {addr}: {located:?}"))
        .capability
        .clone()
}

/// A TCP relay to `target` on a fresh loopback port: its address, and
/// everything the target sent back through it.
async fn relay_to(target: &str) -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let recorded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let target = target.to_string();
    let record = recorded.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let (mut in_read, mut in_write) = inbound.into_split();
            let (mut out_read, mut out_write) = outbound.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut in_read, &mut out_write).await;
            });
            let record = record.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 << 10];
                while let Ok(n) = out_read.read(&mut buffer).await {
                    if n == 0 || in_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buffer[..n]);
                }
            });
        }
    });
    (addr, recorded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_grant_their_role_on_their_prefix_and_nothing_once_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let want = victim(&cluster, "/victim/data.bin").await;
    let admin = cluster.meta();
    let reader = admin
        .create_token("reader-x", "reader", "/datasets/x")
        .await
        .unwrap();
    let writer = admin
        .create_token("writer-x", "writer", "/datasets/x")
        .await
        .unwrap();
    let listed = admin.list_tokens().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["reader-x", "writer-x"]);
    assert!(listed.iter().all(|t| t.prefix == "/datasets/x"));
    // The same name twice is refused; so is a role that does not exist.
    let again = admin
        .create_token("reader-x", "reader", "/")
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let bad = admin
        .create_token("odd", "superuser", "/")
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    let as_token = |token: &str| {
        let mut config = chunked(CHUNK);
        config.token = Some(token.to_string());
        config
    };
    let bytes = data(3 * CHUNK + 1, "tokens");
    // The writer writes inside its prefix, and reads back what it wrote.
    let writing = cluster.client(as_token(&writer)).await;
    writing
        .put_bytes(
            Bytes::from(bytes.clone()),
            "/datasets/x/a.bin",
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let back = shardfs_client::read_all(&writing, "/datasets/x/a.bin")
        .await
        .unwrap();
    assert_eq!(hash(&back), hash(&bytes));
    // ... but not outside it, where it may not even look.
    let outside = writing
        .put_bytes(
            Bytes::from(bytes.clone()),
            "/victim/evil.bin",
            &PutOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(outside.contains("only under /datasets/x"), "{outside}");
    let err = shardfs_client::read_all(&writing, "/victim/data.bin")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only under /datasets/x"), "{err}");

    // The reader reads its prefix, and writes nothing, even there.
    let reading = cluster.client(as_token(&reader)).await;
    let back = shardfs_client::read_all(&reading, "/datasets/x/a.bin")
        .await
        .unwrap();
    assert_eq!(hash(&back), hash(&bytes));
    // Nor may it locate chunks of a file outside its prefix by their ids:
    // not naming their file, naming a file of its own, or naming theirs.
    let theirs = chunks_of(&cluster, "/victim/data.bin").await;
    for paths in [
        vec![],
        vec!["/datasets/x/a.bin".to_string()],
        vec!["/victim/data.bin".to_string()],
    ] {
        let refused = reading.meta().locate(&theirs, &paths).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{paths:?}: {refused:?}"
        );
    }
    let denied = reading
        .put_bytes(
            Bytes::from(bytes.clone()),
            "/datasets/x/b.bin",
            &PutOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(denied.contains("needs the writer role"), "{denied}");
    let denied = reading
        .remove("/datasets/x/a.bin", false)
        .await
        .unwrap_err()
        .to_string();
    assert!(denied.contains("needs the writer role"), "{denied}");

    // Cluster administration needs an admin: a writer cannot add a
    // metaserver, drain a chunk server or make tokens.
    let writer_meta = writing.meta();
    let refused = writer_meta
        .add_metaserver(9, "127.0.0.1:1", false)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("needs the admin role"),
        "{refused:?}"
    );
    let refused = writer_meta.drain_chunk_server(1, false).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = writer_meta
        .create_token("mine", "admin", "/")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Tokens are in the replicated state: they survive a restart of
    // every metaserver.
    let mut cluster = cluster;
    cluster.stop_metas().await;
    for id in 1..=3 {
        cluster.start_meta(id);
    }
    cluster.wait_healthy(Duration::from_secs(30)).await;
    let reading = cluster.client(as_token(&reader)).await;
    let back = shardfs_client::read_all(&reading, "/datasets/x/a.bin")
        .await
        .unwrap();
    assert_eq!(hash(&back), hash(&bytes));
    let admin = cluster.meta();
    let writer_meta = cluster.client(as_token(&writer)).await.meta().clone();

    // No token, a made-up one, and a revoked one: UNAUTHENTICATED.
    let nobody =
        shardfs_proto::meta_client::MetaClient::new(&cluster.meta_addrs, &cluster.tls.client())
            .unwrap()
            .with_deadline(Duration::from_secs(3));
    let refused = nobody.lookup("/victim/data.bin").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let made_up = format!("sfs1.writer-x.{}", "0".repeat(64));
    let refused = nobody
        .with_token(&made_up)
        .unwrap()
        .lookup("/datasets/x/a.bin")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    admin.revoke_token("writer-x").await.unwrap();
    let refused = writer_meta.lookup("/datasets/x/a.bin").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    let refused = admin.revoke_token("writer-x").await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");

    // Every refusal was logged with who asked; nothing was lost.
    let logs: String = (1..=3).map(|id| cluster.meta_log(id)).collect();
    assert!(logs.contains("shardfs::audit"), "no audit lines");
    assert!(
        logs.contains("refused: token writer-x is not valid here"),
        "revocation not audited"
    );
    intact(&cluster, "/victim/data.bin", want).await;
    let kept = shardfs_client::read_all(&cluster.client(chunked(CHUNK)).await, "/datasets/x/a.bin")
        .await
        .unwrap();
    assert_eq!(hash(&kept), hash(&bytes));
}

#[test]
fn the_command_line_makes_lists_and_revokes_tokens_and_guards_token_files() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cluster = runtime.block_on(Cluster::start(dir.path(), 1));
    let out = dir.path().join("reader.token");
    let made = cluster.cli(&[
        "admin",
        "token",
        "create",
        "--name",
        "cli-reader",
        "--role",
        "reader",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{}", stderr(&made));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let listed = cluster.cli(&["admin", "token", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows[0]["name"], "cli-reader");
    assert_eq!(rows[0]["role"], "reader");
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("sfs1."),
        "a secret was listed"
    );
    // The reader's file works; made readable by others, it is refused.
    // `ls /` with the token file only.
    let ls_with_file = || {
        cluster
            .shardfs()
            .env_remove("SHARDFS_TOKEN")
            .args(["--token-file", out.to_str().unwrap(), "ls", "/"])
            .output()
            .unwrap()
    };
    let ls = ls_with_file();
    assert!(ls.status.success(), "{}", stderr(&ls));
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let ls = ls_with_file();
    assert_eq!(ls.status.code(), Some(1));
    assert!(stderr(&ls).contains("chmod 600"), "{}", stderr(&ls));
    let revoked = cluster.cli(&["admin", "token", "revoke", "cli-reader"]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let ls = ls_with_file();
    assert_eq!(ls.status.code(), Some(1));
    assert!(stderr(&ls).contains("not valid here"), "{}", stderr(&ls));
    // A bootstrap token is made without a cluster, and never overwritten.
    let file = dir.path().join("boot.token");
    let boot = shardfs_tests::cli_at(
        "127.0.0.1:1",
        &[
            "admin",
            "token",
            "bootstrap",
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert!(boot.status.success(), "{}", stderr(&boot));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        shardfs_proto::token::parse_token(text.trim()).is_some(),
        "{text}"
    );
    let again = shardfs_tests::cli_at(
        "127.0.0.1:1",
        &[
            "admin",
            "token",
            "bootstrap",
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}

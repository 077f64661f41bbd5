//! The gRPC ChunkService on a real socket: round trips, and every kind of
//! bad request gets a clear error while the server keeps serving others.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    InProcessServer, chunk, chunk_files, files_in, put_data, put_header, raw_client, wait_until,
};
use shardfs_proto::ChunkId;
use shardfs_proto::chunk::v1::{GetChunkRequest, HasChunksRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// After a bad request the server must still store and serve a chunk.
async fn assert_still_serving(server: &InProcessServer, seed: u64) {
    let (id, bytes) = chunk(seed, 300_000);
    server.client.put(id, bytes).await.unwrap();
    let back = server.client.get(id, 0, None, true).await.unwrap();
    assert_eq!(ChunkId::of(&back), id);
}

#[tokio::test]
async fn round_trips_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path()).await;
    for (seed, size) in [0usize, 1, 64 << 10, (8 << 20) - 1, 8 << 20]
        .into_iter()
        .enumerate()
    {
        let (id, bytes) = chunk(seed as u64, size);
        assert!(!server.client.put(id, bytes.clone()).await.unwrap());
        for server_verifies in [true, false] {
            let back = server
                .client
                .get(id, 0, None, server_verifies)
                .await
                .unwrap();
            assert_eq!(ChunkId::of(&back), id, "size {size}");
        }
        // Ranges at message boundaries and at the end.
        if size > 2 {
            let last = server
                .client
                .get(id, size as u64 - 1, Some(1), true)
                .await
                .unwrap();
            assert_eq!(last[..], bytes[size - 1..]);
            let mid = (size / 2) as u64;
            let tail = server.client.get(id, mid, None, false).await.unwrap();
            assert_eq!(blake3::hash(&tail), blake3::hash(&bytes[mid as usize..]));
        }
        // A second put is a cheap no-op.
        assert!(server.client.put(id, bytes).await.unwrap());
    }
    let stats = server.client.stats().await.unwrap();
    assert_eq!(stats.chunk_count, 5);
    assert_eq!(
        stats.used_bytes,
        (1 + (64 << 10) + (8 << 20) - 1 + (8 << 20)) as u64
    );
    let listed = server.client.list_all().await.unwrap();
    assert_eq!(listed.len(), 5);
    server.stop().await;
}

#[tokio::test]
async fn hash_mismatch_is_invalid_argument_naming_both_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path()).await;
    let (id, _) = chunk(1, 2 << 20);
    let (other_id, other) = chunk(2, 2 << 20);
    let status = server.client.put(id, other).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains(&id.to_hex()),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains(&other_id.to_hex()),
        "{}",
        status.message()
    );
    assert_eq!(
        server.client.has(&[id, other_id]).await.unwrap(),
        vec![false, false]
    );
    assert!(chunk_files(dir.path()).is_empty());
    assert_still_serving(&server, 3).await;
    server.stop().await;
}

#[tokio::test]
async fn client_dropping_mid_chunk_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path()).await;
    let (id, bytes) = chunk(5, 4 << 20);
    let (tx, rx) = mpsc::channel(4);
    let mut raw = raw_client(&server.addr).await;
    let call = tokio::spawn(async move { raw.put_chunk(ReceiverStream::new(rx)).await });
    tx.send(put_header(id.as_bytes(), bytes.len() as u64))
        .await
        .unwrap();
    tx.send(put_data(bytes.slice(..1 << 20))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    call.abort(); // the client goes away with 3 MiB unsent
    drop(tx);
    let _ = call.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.client.has(&[id]).await.unwrap(), vec![false]);
    assert!(chunk_files(dir.path()).is_empty());
    assert!(files_in(&dir.path().join("tmp")).is_empty());
    assert_still_serving(&server, 6).await;
    // The same chunk can be stored afterwards.
    assert!(!server.client.put(id, bytes).await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn short_stream_and_extra_bytes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path()).await;
    let (id, bytes) = chunk(8, 100_000);
    let mut raw = raw_client(&server.addr).await;
    // Ends early.
    let stream = futures::stream::iter(vec![
        put_header(id.as_bytes(), bytes.len() as u64),
        put_data(bytes.slice(..50_000)),
    ]);
    let status = raw.put_chunk(stream).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("100000"), "{}", status.message());
    // Too long.
    let stream = futures::stream::iter(vec![
        put_header(id.as_bytes(), bytes.len() as u64),
        put_data(bytes.clone()),
        put_data(Bytes::from_static(b"extra")),
    ]);
    let status = raw.put_chunk(stream).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // Data before the header.
    let stream = futures::stream::iter(vec![put_data(bytes.clone())]);
    let status = raw.put_chunk(stream).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("header"), "{}", status.message());
    assert_eq!(server.client.has(&[id]).await.unwrap(), vec![false]);
    assert!(chunk_files(dir.path()).is_empty());
    assert_still_serving(&server, 9).await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_chunk_is_refused_before_any_data_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path()).await;
    let id = ChunkId::of(b"too big");
    let (tx, rx) = mpsc::channel(1);
    tx.send(put_header(id.as_bytes(), (64 << 20) + 1))
        .await
        .unwrap();
    let mut raw = raw_client(&server.addr).await;
    // The stream stays open and no data is ever sent: the answer can only
    // come from the header alone.
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        raw.put_chunk(ReceiverStream::new(rx)),
    )
    .await
    .expect("refused without waiting for data")
    .unwrap_err();
    drop(tx);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("67108865"),
        "{}",
        status.message()
    );
    assert!(status.message().contains("largest"), "{}", status.message());
    assert_still_serving(&server, 10).await;
    server.stop().await;
}

#[tokio::test]
async fn unknown_chunk_and_malformed_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path()).await;
    let unknown = ChunkId::of(b"never stored");
    let status = server.client.get(unknown, 0, None, true).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(&unknown.to_hex()));

    let mut raw = raw_client(&server.addr).await;
    let status = raw
        .get_chunk(GetChunkRequest {
            id: Bytes::from_static(&[1; 31]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("32 bytes, got 31"),
        "{}",
        status.message()
    );
    let status = raw
        .has_chunks(HasChunksRequest {
            ids: vec![Bytes::from_static(b"short")],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let stream = futures::stream::iter(vec![put_header(&[0; 33], 10)]);
    let status = raw.put_chunk(stream).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let (id, bytes) = chunk(12, 1000);
    server.client.put(id, bytes).await.unwrap();
    let status = server.client.get(id, 1001, None, false).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    let status = server
        .client
        .get(id, 500, Some(501), true)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert_still_serving(&server, 13).await;
    server.stop().await;
}

#[tokio::test]
async fn corrupt_chunk_is_data_loss_and_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path()).await;
    let (id, bytes) = chunk(14, 3 << 20);
    server.client.put(id, bytes).await.unwrap();
    let path = server.store.chunk_path(&id);
    let mut on_disk = std::fs::read(&path).unwrap();
    on_disk[2_000_000] ^= 0x80;
    std::fs::write(&path, &on_disk).unwrap();

    let status = server.client.get(id, 0, None, true).await.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss);
    assert!(
        status.message().contains("quarantined"),
        "{}",
        status.message()
    );
    assert!(!path.exists());
    let quarantined = files_in(&dir.path().join("quarantine"));
    assert_eq!(quarantined.len(), 1);
    assert!(
        quarantined[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&id.to_hex())
    );
    // Never served again, by any kind of read.
    for server_verifies in [true, false] {
        let status = server
            .client
            .get(id, 0, None, server_verifies)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    assert_eq!(server.client.has(&[id]).await.unwrap(), vec![false]);
    assert_still_serving(&server, 15).await;
    server.stop().await;
}

#[tokio::test]
async fn verify_rehashes_and_quarantines_only_bad_copies() {
    use shardfs_proto::chunk::v1::ChunkVerdict;
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path()).await;
    let (good, good_bytes) = chunk(16, 1 << 20);
    let (bad, bad_bytes) = chunk(17, 2 << 20);
    let (missing, _) = chunk(18, 1000);
    server.client.put(good, good_bytes.clone()).await.unwrap();
    server.client.put(bad, bad_bytes).await.unwrap();
    let path = server.store.chunk_path(&bad);
    let mut on_disk = std::fs::read(&path).unwrap();
    on_disk[1_500_000] ^= 0x01;
    std::fs::write(&path, &on_disk).unwrap();

    let verdicts = server.client.verify(&[good, bad, missing]).await.unwrap();
    assert_eq!(
        verdicts,
        vec![
            ChunkVerdict::Ok,
            ChunkVerdict::Corrupt,
            ChunkVerdict::Missing
        ]
    );
    assert!(!path.exists());
    assert_eq!(files_in(&dir.path().join("quarantine")).len(), 1);
    assert_eq!(
        server.client.has(&[good, bad]).await.unwrap(),
        vec![true, false]
    );
    let back = server.client.get(good, 0, None, false).await.unwrap();
    assert_eq!(ChunkId::of(&back), good);
    // The good copy's verification time is recorded.
    let listed = server.client.list_all().await.unwrap();
    assert!(listed.iter().all(|c| c.last_verified_unix_ms > 0));
    // Too many ids at once is refused in words.
    let many = vec![good; 1025];
    let status = server.client.verify(&many).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("at most 1024"));
    server.stop().await;
}

#[tokio::test]
async fn many_concurrent_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start(dir.path()).await;
    let mut tasks = Vec::new();
    for seed in 0..16u64 {
        let client = server.client.clone();
        tasks.push(tokio::spawn(async move {
            let (id, bytes) = chunk(100 + seed, (1 << 20) + seed as usize * 4097);
            client.put(id, bytes).await.unwrap();
            let back = client.get(id, 0, None, false).await.unwrap();
            assert_eq!(ChunkId::of(&back), id);
            id
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    assert_eq!(server.client.delete(&ids[..4]).await.unwrap(), 4);
    let present = server.client.has(&ids).await.unwrap();
    assert_eq!(present, (0..16).map(|i| i >= 4).collect::<Vec<_>>());
    assert!(
        wait_until(Duration::from_secs(1), || chunk_files(dir.path()).len()
            == 12)
        .await
    );
    server.stop().await;
}

/// The bulk read protocol on the same port as gRPC: whole chunks, ranges,
/// errors in words, and many requests on one connection.
#[tokio::test]
async fn bulk_reads_share_the_port_with_grpc() {
    bulk_reads(None).await;
}

/// The same from a store encrypted at rest: the server decrypts what it
/// sends (no `sendfile`).
#[tokio::test]
async fn bulk_reads_of_a_store_encrypted_at_rest() {
    bulk_reads(Some(shardfs_chunk::at_rest::AtRestKey::generate().unwrap())).await;
}

async fn bulk_reads(encryption: Option<shardfs_chunk::at_rest::AtRestKey>) {
    use shardfs_proto::bulk::{self, Request, ResponseHeader, Status};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::start_with(dir.path(), encryption).await;
    let (id, bytes) = chunk(19, (3 << 20) + 7);
    server.client.put(id, bytes.clone()).await.unwrap();

    let mut stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    async fn ask(
        stream: &mut tokio::net::TcpStream,
        request: Request,
    ) -> (ResponseHeader, Vec<u8>) {
        stream.write_all(&request.encode()).await.unwrap();
        let mut header = [0u8; bulk::RESPONSE_HEADER_BYTES];
        stream.read_exact(&mut header).await.unwrap();
        let header = ResponseHeader::decode(&header).unwrap();
        let mut body = vec![0u8; header.n as usize];
        stream.read_exact(&mut body).await.unwrap();
        (header, body)
    }
    let whole = Request {
        id,
        offset: 0,
        length: None,
        capability: shardfs_proto::bulk::capability_field(&[]),
    };
    let (header, body) = ask(&mut stream, whole).await;
    assert_eq!(header.status, Status::Ok);
    assert_eq!(header.chunk_length, bytes.len() as u64);
    assert_eq!(ChunkId::of(&body), id);

    let range = Request {
        id,
        offset: 1_000_000,
        length: Some(12_345),
        capability: shardfs_proto::bulk::capability_field(&[]),
    };
    let (header, body) = ask(&mut stream, range).await;
    assert_eq!(header.status, Status::Ok);
    assert_eq!(body, bytes[1_000_000..1_012_345]);

    let beyond = Request {
        id,
        offset: bytes.len() as u64,
        length: Some(1),
        capability: shardfs_proto::bulk::capability_field(&[]),
    };
    let (header, body) = ask(&mut stream, beyond).await;
    assert_eq!(header.status, Status::OutOfRange);
    assert!(String::from_utf8_lossy(&body).contains("outside"));

    let (unknown, _) = chunk(20, 10);
    let missing = Request {
        id: unknown,
        offset: 0,
        length: None,
        capability: shardfs_proto::bulk::capability_field(&[]),
    };
    let (header, body) = ask(&mut stream, missing).await;
    assert_eq!(header.status, Status::NotFound);
    assert!(String::from_utf8_lossy(&body).contains("not stored here"));

    // The same connection still serves, and gRPC on the port is unharmed.
    let (header, body) = ask(&mut stream, whole).await;
    assert_eq!(header.status, Status::Ok);
    assert_eq!(ChunkId::of(&body), id);
    assert_still_serving(&server, 21).await;
    // A stopped server closes its bulk connections too.
    server.stop().await;
    let _ = stream.write_all(&whole.encode()).await;
    let mut byte = [0u8; 1];
    let after_stop = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
    assert!(
        matches!(after_stop, Ok(Ok(0)) | Ok(Err(_))),
        "bulk connection still served after stop: {after_stop:?}"
    );
}

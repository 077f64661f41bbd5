//! A chunk server process against peers that break the protocol on
//! purpose: oversized messages, writers that stall after the header or in
//! the middle of the data, and a repair source that sends more than the
//! chunk it declared. Each is cut off with a clear error, costs a bounded
//! amount of memory and time, and the server goes on serving others.

mod common;

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ServerProcess, chunk, put_data, put_header, raw_client};
use shardfs_proto::ChunkId;
use shardfs_proto::chunk::v1::chunk_service_server::{ChunkService, ChunkServiceServer};
use shardfs_proto::chunk::v1::*;
use shardfs_proto::transport;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

const MIB: usize = 1 << 20;

/// A put stream whose messages the test sends by hand; the call runs in
/// the background.
struct RawPut {
    tx: mpsc::Sender<PutChunkRequest>,
    call: tokio::task::JoinHandle<Result<Response<PutChunkResponse>, Status>>,
}

async fn raw_put(addr: &str) -> RawPut {
    let mut raw = raw_client(addr).await;
    let (tx, rx) = mpsc::channel(4);
    let call = tokio::spawn(async move { raw.put_chunk(ReceiverStream::new(rx)).await });
    RawPut { tx, call }
}

/// A put of a 60 MiB chunk (from `seed`) that sends its header and first
/// 1 MiB, then stalls: it holds 60 MiB of put memory until dropped.
async fn stalled_writer(addr: &str, seed: u64) -> (RawPut, ChunkId) {
    let (big, big_bytes) = chunk(seed, 60 * MIB);
    let stalled = raw_put(addr).await;
    stalled
        .tx
        .send(put_header(big.as_bytes(), 60 << 20))
        .await
        .unwrap();
    stalled
        .tx
        .send(put_data(big_bytes.slice(0..MIB)))
        .await
        .unwrap();
    (stalled, big)
}

/// The server's resident memory in MiB.
fn rss_mib(server: &ServerProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// A normal writer and reader still get through, promptly.
async fn assert_serving(server: &ServerProcess, seed: u64, len: usize) {
    let client = server.client();
    let (id, bytes) = chunk(seed, len);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), client.put(id, bytes))
        .await
        .expect("a normal put got no answer in 15 s")
        .unwrap();
    let back = client.get(id, 0, None, true).await.unwrap();
    assert_eq!(ChunkId::of(&back), id);
    eprintln!("normal put of {len} bytes took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_message_over_1_mib_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let (id, bytes) = chunk(1, 4 * MIB);
    let put = raw_put(&server.addr).await;
    put.tx
        .send(put_header(id.as_bytes(), bytes.len() as u64))
        .await
        .unwrap();
    let _ = put.tx.send(put_data(bytes)).await;
    drop(put.tx);
    let status = put.call.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("at most 1048576"),
        "{}",
        status.message()
    );
    assert_eq!(server.client().has(&[id]).await.unwrap(), vec![false]);
    assert_serving(&server, 2, 3 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_put_streams_are_dropped_and_do_not_starve_other_writers() {
    let dir = tempfile::tempdir().unwrap();
    // The smallest put memory budget: one 64 MiB chunk.
    let server = ServerProcess::start_with(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--put-memory-bytes", "67108864"],
        &[],
    );
    // 20 writers announce 64 MiB chunks and then send nothing: together
    // they would claim 20 times the budget, but a header holds no memory.
    let mut idle = Vec::new();
    for seed in 0..20 {
        let put = raw_put(&server.addr).await;
        let (id, _) = chunk(100 + seed, 16);
        put.tx
            .send(put_header(id.as_bytes(), 64 << 20))
            .await
            .unwrap();
        idle.push(put);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    assert_serving(&server, 3, 8 * MIB).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a put behind header-only streams took {:?}",
        started.elapsed()
    );

    // One writer takes almost all of the budget with its first message,
    // then stalls. It is dropped once it has been silent for the idle
    // timeout, and the writer waiting behind it gets its turn.
    let (stalled, big) = stalled_writer(&server.addr, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    assert_serving(&server, 5, 8 * MIB).await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the writer behind a stalled stream waited {waited:?}"
    );
    let status = stalled.call.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("the stream was dropped"),
        "{}",
        status.message()
    );
    // The header-only writers were dropped too, and stored nothing.
    for put in idle {
        let status = put.call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }
    assert_eq!(server.client().has(&[big]).await.unwrap(), vec![false]);
}

/// A hostile repair source: whatever is asked, it claims the chunk is
/// 1.5 GiB long and streams 1 MiB messages, up to `MAX_BYTES` in all.
struct FloodingSource;

const MAX_BYTES: usize = 512 * MIB;

type GetStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<GetChunkResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ChunkService for FloodingSource {
    async fn put_chunk(
        &self,
        _: Request<Streaming<PutChunkRequest>>,
    ) -> Result<Response<PutChunkResponse>, Status> {
        Err(Status::unimplemented("flooding source"))
    }

    type GetChunkStream = GetStream;

    async fn get_chunk(&self, _: Request<GetChunkRequest>) -> Result<Response<GetStream>, Status> {
        let piece = Bytes::from(vec![0x5a; MIB]);
        let messages = (0..MAX_BYTES / MIB).map(move |_| {
            Ok(GetChunkResponse {
                data: piece.clone(),
                chunk_length: 3 << 29,
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn has_chunks(
        &self,
        _: Request<HasChunksRequest>,
    ) -> Result<Response<HasChunksResponse>, Status> {
        Err(Status::unimplemented("flooding source"))
    }

    async fn delete_chunks(
        &self,
        _: Request<DeleteChunksRequest>,
    ) -> Result<Response<DeleteChunksResponse>, Status> {
        Err(Status::unimplemented("flooding source"))
    }

    async fn list_chunks(
        &self,
        _: Request<ListChunksRequest>,
    ) -> Result<Response<ListChunksResponse>, Status> {
        Err(Status::unimplemented("flooding source"))
    }

    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        Err(Status::unimplemented("flooding source"))
    }

    async fn verify_chunks(
        &self,
        _: Request<VerifyChunksRequest>,
    ) -> Result<Response<VerifyChunksResponse>, Status> {
        Err(Status::unimplemented("flooding source"))
    }

    async fn replicate_chunk(
        &self,
        _: Request<ReplicateChunkRequest>,
    ) -> Result<Response<ReplicateChunkResponse>, Status> {
        Err(Status::unimplemented("flooding source"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_source_sending_more_than_the_chunk_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = transport::server().add_service(ChunkServiceServer::new(FloodingSource));
    let fake = tokio::spawn(transport::serve_with_grace(
        router,
        listener,
        transport::ConnectionLimits::default(),
        &shardfs_proto::security::Security::Insecure,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    let before = rss_mib(&server);
    let id = ChunkId::of(b"x");
    let mut raw = raw_client(&server.addr).await;
    let status = tokio::time::timeout(
        Duration::from_secs(20),
        raw.replicate_chunk(ReplicateChunkRequest {
            id: Bytes::copy_from_slice(id.as_bytes()),
            length: 1,
            source: source.clone(),
        }),
    )
    .await
    .expect("ReplicateChunk did not answer in 20 s")
    .unwrap_err();
    assert!(
        status.message().contains("sent more than the 1 bytes"),
        "{status:?}"
    );
    assert!(status.message().contains(&source), "{}", status.message());
    let after = rss_mib(&server);
    assert!(
        after < before + 64,
        "the server grew from {before} MiB to {after} MiB"
    );
    assert_eq!(server.client().has(&[id]).await.unwrap(), vec![false]);
    assert_serving(&server, 6, 2 * MIB).await;
    let _ = stop.send(());
    let _ = fake.await;
}

/// One bulk read on a fresh connection: the chunk's bytes, or why not.
fn bulk_read(addr: &str, id: ChunkId) -> Result<Vec<u8>, String> {
    use shardfs_proto::bulk::{RESPONSE_HEADER_BYTES, Request, ResponseHeader, Status};
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = Request {
        id,
        offset: 0,
        length: None,
        capability: shardfs_proto::bulk::capability_field(&[]),
    };
    stream
        .write_all(&request.encode())
        .map_err(|e| e.to_string())?;
    let mut header = [0u8; RESPONSE_HEADER_BYTES];
    stream.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header = ResponseHeader::decode(&header).ok_or("bad response header")?;
    let mut body = vec![0u8; header.n as usize];
    stream.read_exact(&mut body).map_err(|e| e.to_string())?;
    match header.status {
        Status::Ok => Ok(body),
        _ => Err(String::from_utf8_lossy(&body).into_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_silent_connections_cannot_lock_readers_out() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    // The per-peer bound is raised: this test is about the bulk slots
    // (all its connections come from one address).
    let server = ServerProcess::start_with(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--connections-per-peer", "5000"],
        &[],
    );
    let (id, bytes) = chunk(7, 3 * MIB);
    server.client().put(id, bytes.clone()).await.unwrap();

    // 1,100 bulk connections that send the protocol's magic and then
    // nothing: more than the 1,024 slots.
    let mut idle = Vec::new();
    for _ in 0..1100 {
        let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
        stream.write_all(&shardfs_proto::bulk::MAGIC).unwrap();
        idle.push(stream);
    }
    // 200 connections that never send a byte.
    let mut silent: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(&server.addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A reader still gets a bulk slot (an idle one gives way), and reads.
    let started = Instant::now();
    let back = tokio::task::spawn_blocking({
        let addr = server.addr.clone();
        move || bulk_read(&addr, id)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("bulk read refused behind idle connections: {e}"));
    assert_eq!(ChunkId::of(&back), id);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_serving(&server, 8, MIB).await;

    // The silent ones are closed by the server within a few seconds.
    let silent_closed = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut closed = 0;
        for stream in &mut silent {
            let left = deadline.saturating_duration_since(Instant::now());
            stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut byte = [0u8; 1];
            match stream.read(&mut byte) {
                Ok(0) => closed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
                _ => {}
            }
        }
        closed
    })
    .await
    .unwrap();
    assert_eq!(silent_closed, 200, "silent connections left open");
    drop(idle);
}

/// A TCP connection to `addr` from the local address `from` (another
/// loopback address stands for another host).
fn connect_from(from: &str, addr: &str) -> std::io::Result<std::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(
        &format!("{from}:0")
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )?;
    socket.connect(&addr.parse::<std::net::SocketAddr>().unwrap().into())?;
    Ok(socket.into())
}

/// Whether the server closed `stream` within `wait` (false: still open).
fn closed_within(stream: &mut std::net::TcpStream, wait: Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_take_every_connection() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--connections-per-peer", "40"],
        &[],
    );
    let (id, bytes) = chunk(11, MIB);
    server.client().put(id, bytes).await.unwrap();

    // "Another host" (127.0.0.2) opens 120 bulk connections and holds them.
    let addr = server.addr.clone();
    let (held, refused, mut streams) = tokio::task::spawn_blocking(move || {
        let mut streams = Vec::new();
        for _ in 0..120 {
            let mut stream = connect_from("127.0.0.2", &addr).unwrap();
            let _ = stream.write_all(&shardfs_proto::bulk::MAGIC);
            streams.push(stream);
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut open = Vec::new();
        let mut refused = 0;
        for mut stream in streams {
            if closed_within(&mut stream, Duration::from_millis(200)) {
                refused += 1;
            } else {
                open.push(stream);
            }
        }
        (open.len(), refused, open)
    })
    .await
    .unwrap();
    assert_eq!(held, 40, "one address holds exactly its bound");
    assert_eq!(refused, 80);

    // Everyone else is served, over gRPC and bulk, and writes too.
    assert_serving(&server, 12, MIB).await;
    let addr = server.addr.clone();
    let back = tokio::task::spawn_blocking(move || bulk_read(&addr, id))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("bulk read refused beside a greedy peer: {e}"));
    assert_eq!(ChunkId::of(&back), id);

    // Its closed connections give their places back.
    streams.truncate(10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = server.addr.clone();
    let again = tokio::task::spawn_blocking(move || {
        let mut kept = Vec::new();
        for _ in 0..30 {
            let mut stream = connect_from("127.0.0.2", &addr).unwrap();
            let _ = stream.write_all(&shardfs_proto::bulk::MAGIC);
            if !closed_within(&mut stream, Duration::from_millis(200)) {
                kept.push(stream);
            }
        }
        kept
    })
    .await
    .unwrap();
    assert_eq!(
        again.len(),
        30,
        "places freed by closed connections are given again"
    );
    drop((streams, again));
}

/// Puts waiting for put memory hold at most a small HTTP/2 window of data
/// each beyond the budget: 48 writers on 48 connections, each sending a
/// whole 9 MiB chunk while the budget is taken, grow the server by well
/// under the 432 MiB they send; then each is stored (or refused as busy)
/// and what is stored reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_waiting_for_put_memory_do_not_buffer_their_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--put-memory-bytes", "67108864"],
        &[],
    );
    assert_serving(&server, 20, MIB).await;
    // A writer takes 60 MiB of the 64 MiB budget and stalls (it is dropped
    // after the 5 s idle timeout).
    let (stalled, _) = stalled_writer(&server.addr, 21).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_mib(&server);

    let mut writers = Vec::new();
    for seed in 0..48u64 {
        let client = server.client();
        let (id, bytes) = chunk(300 + seed, 9 * MIB);
        writers.push((id, tokio::spawn(async move { client.put(id, bytes).await })));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Each holds its first 1 MiB message and at most a 2 MiB stream window
    // (plus decoding slack): about 220 MiB measured here; with the 8 MiB
    // windows used elsewhere it was about 490 MiB.
    let waiting = rss_mib(&server);
    assert!(
        waiting < before + 300,
        "48 waiting writers grew the server from {before} to {waiting} MiB"
    );

    let mut stored = 0;
    for (id, writer) in writers {
        match tokio::time::timeout(Duration::from_secs(60), writer)
            .await
            .expect("a writer got no answer")
            .unwrap()
        {
            Ok(_) => {
                let back = server.client().get(id, 0, None, true).await.unwrap();
                assert_eq!(ChunkId::of(&back), id);
                stored += 1;
            }
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status}"),
        }
    }
    assert!(
        stored > 0,
        "no writer got through once the stalled one was dropped"
    );
    drop(stalled);
    assert_serving(&server, 22, MIB).await;
}

//! Serving a [`ChunkStore`] over gRPC on a bound listener until a shutdown
//! future resolves (tests bind port 0 and stop the server cleanly).

use std::future::Future;
use std::time::Duration;

use shardfs_proto::bulk;
use shardfs_proto::chunk::v1::chunk_service_server::ChunkServiceServer;
use shardfs_proto::security::{self, Conn, Security};
use shardfs_proto::transport::{self, Admitted, PeerLimit};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::bulk::{BulkConn, Connections};
use crate::config::Limits;
use crate::error::ChunkError;
use crate::gate::Gate;
use crate::service::ChunkServiceImpl;
use crate::store::ChunkStore;

/// HTTP/2 receive window per put stream, and per connection: data a
/// client can make the server hold beyond the put memory budget is at most
/// this per connection (see the README's limits table).
pub const PUT_STREAM_WINDOW_BYTES: u32 = 2 << 20;
pub const PUT_CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// How long in-flight calls may run on after shutdown is asked for. Clients
/// that hold connections open must not keep the server alive forever.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `store` on `listener` until `shutdown` resolves, then lets
/// in-flight calls finish (up to [`SHUTDOWN_GRACE`]) and flushes the index.
/// Reads and writes need what `gate` asks for.
pub async fn run(
    listener: TcpListener,
    store: ChunkStore,
    limits: Limits,
    security: Security,
    gate: Gate,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ChunkError> {
    if security.is_tls() && security.acceptor().is_none() {
        return Err(ChunkError::Serving(
            "TLS without a certificate of this chunk server's own: give --tls-cert and --tls-key"
                .into(),
        ));
    }
    let service = ChunkServiceServer::new(ChunkServiceImpl::new(
        store.clone(),
        limits.put,
        security.clone(),
        gate.clone(),
    ))
    .max_decoding_message_size(transport::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(transport::MAX_MESSAGE_BYTES);
    // Smaller receive windows than the shared ones: HTTP/2 buffers up to a
    // window of a put's data before the handler reads it (and so before
    // the put memory budget counts it). Only puts and repair copies send
    // data this way; reads flow under the client's windows.
    let router = transport::server()
        .initial_stream_window_size(PUT_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(PUT_CONNECTION_WINDOW_BYTES)
        .add_service(service);
    let (grpc_tx, grpc_rx) = mpsc::channel::<std::io::Result<Conn>>(64);
    let bulk_connections = Connections::new(limits.bulk, gate);
    let accepting = tokio::spawn(sort_connections(
        listener,
        store.clone(),
        bulk_connections.clone(),
        limits,
        security.acceptor(),
        grpc_tx,
    ));
    let recovering = tokio::spawn(recover_index(store.clone()));
    let incoming = futures::stream::unfold(grpc_rx, |mut rx| async move {
        rx.recv().await.map(|stream| (stream, rx))
    });
    let served =
        transport::serve_incoming_with_grace(router, incoming, shutdown, SHUTDOWN_GRACE).await;
    accepting.abort();
    recovering.abort();
    bulk_connections.close_all();
    served.map_err(|e| ChunkError::Serving(e.to_string()))?;
    store.flush().await?;
    Ok(())
}

/// How often a failed chunk index is tried again.
pub const INDEX_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Reopens the index whenever it has failed (a full disk), once it can.
async fn recover_index(store: ChunkStore) {
    loop {
        tokio::time::sleep(INDEX_RETRY_INTERVAL).await;
        if let Err(e) = store.recover_index().await {
            tracing::warn!("reopening the chunk index: {e}");
        }
    }
}

/// What a new connection's first bytes say it is.
enum Opening {
    Bulk,
    Grpc,
    /// Nothing within the first-bytes timeout (a gRPC client sends its
    /// preface, a bulk reader its magic, at once), or closed.
    Silent,
}

/// Accepts connections (at most `limits.connections.per_peer` from one
/// address) and sorts them: bulk reads to their own threads, everything
/// else (HTTP/2) to gRPC. Plaintext connections are sorted by their first
/// bytes (`shardfs_proto::bulk::MAGIC`), TLS ones by the protocol their
/// handshake agreed on ([`security::BULK_ALPN`]).
async fn sort_connections(
    listener: TcpListener,
    store: ChunkStore,
    bulk_connections: Connections,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    grpc: mpsc::Sender<std::io::Result<Conn>>,
) {
    let peers = PeerLimit::new(limits.connections.per_peer);
    let timeout = limits.connections.first_bytes_timeout;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = grpc.closed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => match Admitted::admit(stream, &peers) {
                Some(admitted) => admitted,
                None => continue,
            },
            Err(e) => {
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let grpc = grpc.clone();
        let store = store.clone();
        let bulk_connections = bulk_connections.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match opening(stream.stream(), timeout).await {
                Opening::Silent => {
                    tracing::debug!("closing a connection that sent nothing");
                }
                Opening::Bulk if tls.is_some() => {
                    tracing::info!("refusing a plaintext bulk read: this server speaks TLS");
                }
                Opening::Bulk => {
                    let (stream, slot) = stream.into_parts();
                    match stream.into_std() {
                        Ok(stream) => bulk_connections.spawn(BulkConn::Plain(stream), slot, store),
                        Err(e) => tracing::warn!("bulk read connection unusable: {e}"),
                    }
                }
                Opening::Grpc => match tls {
                    None => {
                        let _ = grpc.send(Ok(Conn::plain(stream))).await;
                    }
                    Some(tls) => {
                        let Some(conn) = transport::handshake(&tls, stream, timeout).await else {
                            return;
                        };
                        if conn.alpn() == Some(security::BULK_ALPN) {
                            match conn.into_tls_parts() {
                                Some((stream, session, slot)) => match stream.into_std() {
                                    Ok(stream) => bulk_connections.spawn(
                                        BulkConn::tls(stream, session),
                                        slot,
                                        store,
                                    ),
                                    Err(e) => {
                                        tracing::warn!("bulk read connection unusable: {e}")
                                    }
                                },
                                None => tracing::warn!("a TLS connection without its session"),
                            }
                        } else {
                            let _ = grpc.send(Ok(conn)).await;
                        }
                    }
                },
            }
        });
    }
}

/// Bulk when the connection's first bytes are the bulk protocol's magic.
async fn opening(stream: &TcpStream, timeout: Duration) -> Opening {
    let mut first = [0u8; 4];
    let peek = async {
        loop {
            match stream.peek(&mut first).await {
                Ok(n) if n >= first.len() && first == bulk::MAGIC => return Opening::Bulk,
                Ok(n) if n >= first.len() => return Opening::Grpc,
                Ok(0) | Err(_) => return Opening::Silent,
                // Fewer bytes than the magic so far: wait for more.
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    };
    tokio::time::timeout(timeout, peek)
        .await
        .unwrap_or(Opening::Silent)
}

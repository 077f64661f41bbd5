//! Serving a [`ChunkStore`] over gRPC on a bound listener until a shutdown
//! future resolves (tests bind port 0 and stop the server cleanly).

use std::future::Future;
use std::time::Duration;

use shardfs_proto::chunk::v1::chunk_service_server::ChunkServiceServer;
use shardfs_proto::transport;
use tokio::net::TcpListener;

use crate::service::ChunkServiceImpl;
use crate::store::ChunkStore;

/// How long in-flight calls may run on after shutdown is asked for. Clients
/// that hold connections open must not keep the server alive forever.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `store` on `listener` until `shutdown` resolves, then lets
/// in-flight calls finish (up to [`SHUTDOWN_GRACE`]) and flushes the index.
pub async fn run(
    listener: TcpListener,
    store: ChunkStore,
    put_memory_bytes: u64,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let service = ChunkServiceServer::new(ChunkServiceImpl::new(store.clone(), put_memory_bytes))
        .max_decoding_message_size(transport::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(transport::MAX_MESSAGE_BYTES);
    let router = transport::server().add_service(service);
    transport::serve_with_grace(router, listener, shutdown, SHUTDOWN_GRACE).await?;
    store.flush().await?;
    Ok(())
}

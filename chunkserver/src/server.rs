//! Serving a [`ChunkStore`] over gRPC on a bound listener until a shutdown
//! future resolves (tests bind port 0 and stop the server cleanly).

use std::future::Future;

use shardfs_proto::chunk::v1::chunk_service_server::ChunkServiceServer;
use shardfs_proto::transport;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::service::ChunkServiceImpl;
use crate::store::ChunkStore;

/// Serves `store` on `listener` until `shutdown` resolves, then finishes
/// in-flight calls and flushes the index.
pub async fn run(
    listener: TcpListener,
    store: ChunkStore,
    put_memory_bytes: u64,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let service = ChunkServiceServer::new(ChunkServiceImpl::new(store.clone(), put_memory_bytes))
        .max_decoding_message_size(transport::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(transport::MAX_MESSAGE_BYTES);
    transport::server()
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    store.flush().await?;
    Ok(())
}

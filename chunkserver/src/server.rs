//! Serving a [`ChunkStore`] over gRPC on a bound listener until a shutdown
//! future resolves (tests bind port 0 and stop the server cleanly).

use std::future::Future;
use std::time::Duration;

use shardfs_proto::chunk::v1::chunk_service_server::ChunkServiceServer;
use shardfs_proto::transport;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::warn;

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
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let serve = transport::server()
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => result?,
        () = shutdown => {
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await {
                Ok(result) => result?,
                Err(_) => warn!("in-flight calls still running after {SHUTDOWN_GRACE:?}; stopping anyway"),
            }
        }
    }
    store.flush().await?;
    Ok(())
}

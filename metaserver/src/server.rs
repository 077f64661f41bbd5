//! [`run`]: serving a [`Metaserver`] (its API and the Raft transport on one
//! port) on a bound listener until a shutdown future resolves.

use std::future::Future;
use std::time::Duration;

use shardfs_proto::meta::v1::meta_service_server::MetaServiceServer;
use shardfs_proto::meta::v1::raft_service_server::RaftServiceServer;
use shardfs_proto::transport;
use tokio::net::TcpListener;

use crate::error::MetaError;
use crate::metaserver::Metaserver;
use crate::network::{MAX_RAFT_MESSAGE_BYTES, RaftServer};
use crate::service::MetaServiceImpl;

/// How long in-flight calls may run on after shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Largest client request accepted (a file of 262,144 chunks would be about
/// 11 MiB on the wire).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Serves `metaserver` on `listener` until `shutdown` resolves, then shuts
/// its Raft node down.
pub async fn run(
    listener: TcpListener,
    metaserver: Metaserver,
    limits: transport::ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), MetaError> {
    let node = metaserver.node.clone();
    if node.security.is_tls() && node.security.acceptor().is_none() {
        return Err(MetaError::Server(
            "TLS without a certificate of this metaserver's own: give --tls-cert and --tls-key"
                .into(),
        ));
    }
    let meta = MetaServiceServer::new(MetaServiceImpl::new(metaserver))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES);
    let raft = RaftServiceServer::new(RaftServer::new(node.raft.clone()))
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
    let router = transport::server().add_service(meta).add_service(raft);
    let security = node.security.clone();
    transport::serve_with_grace(
        router,
        listener,
        limits,
        &security,
        shutdown,
        SHUTDOWN_GRACE,
    )
    .await
    .map_err(|e| MetaError::Server(format!("serving: {e}")))?;
    node.shutdown().await;
    Ok(())
}

//! HTTP/2 settings for bulk data, shared by every server and client.
//!
//! With tonic's defaults (16 KiB frames, 64 KiB windows) 1 MiB messages
//! crawl through many small frames and window updates; measured on loopback
//! here, larger frames and windows took them from ~1.7 GB/s to ~2.7 GB/s.
//! Both ends must agree, so they are set in one place.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Router;
use tonic::transport::{Endpoint, Server};

use crate::security::{Conn, Security};

/// Largest HTTP/2 frame we advertise (the protocol allows up to 16 MiB - 1).
pub const MAX_FRAME_BYTES: u32 = 1 << 20;
/// Per-stream flow-control window: several data messages in flight.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
/// Per-connection window: room for many concurrent streams.
pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;
/// Largest single gRPC message accepted (data messages are 1 MiB; batches of
/// ids and listings stay well below this).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// How long dialing a peer may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A server pings a connection's peer after this much silence, and drops
/// it when no answer comes within [`KEEPALIVE_TIMEOUT`]: peers that died or
/// vanished behind a partition do not hold connections forever.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A new connection that sends nothing for this long is closed (an HTTP/2
/// client sends its preface at once).
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections one peer (IP address) may hold open to one server.
pub const CONNECTIONS_PER_PEER: usize = 512;

/// What a server lets one connection or one peer cost it before the
/// protocol starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection silent for this long after it opened is closed.
    pub first_bytes_timeout: Duration,
    /// Connections beyond this many from one IP address are closed at once.
    pub per_peer: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            first_bytes_timeout: FIRST_BYTES_TIMEOUT,
            per_peer: CONNECTIONS_PER_PEER,
        }
    }
}

/// Counts open connections per peer IP address and admits at most a bound
/// of them, so one host (or one misbehaving client) cannot take every
/// connection a server can hold. Peers behind one NAT share an address:
/// raise the bound for them.
#[derive(Debug, Clone)]
pub struct PeerLimit {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PeerLimit {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `peer`, held until it is
    /// dropped; None when `peer` already holds the most it may.
    pub fn admit(&self, peer: IpAddr) -> Option<PeerSlot> {
        let mut open = self.open.lock().expect("peer counts");
        let count = open.entry(peer).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            open: self.open.clone(),
            peer,
        })
    }

    /// Connections `peer` holds open now.
    pub fn open(&self, peer: IpAddr) -> usize {
        self.open
            .lock()
            .expect("peer counts")
            .get(&peer)
            .copied()
            .unwrap_or(0)
    }
}

/// One admitted connection's place in its peer's count.
#[derive(Debug)]
pub struct PeerSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    peer: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("peer counts");
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// A connection that holds its peer's slot for as long as it is open.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    slot: PeerSlot,
}

impl Admitted {
    /// `stream` with a slot of `limit`, or None (and the stream closed) when
    /// its peer holds the most connections it may.
    pub fn admit(stream: TcpStream, limit: &PeerLimit) -> Option<Self> {
        let peer = stream.peer_addr().ok()?.ip();
        match limit.admit(peer) {
            Some(slot) => Some(Self { stream, slot }),
            None => {
                tracing::debug!(
                    "closing a connection from {peer}: it holds {} already",
                    limit.max
                );
                None
            }
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The stream and its slot, for a connection served off the runtime.
    pub fn into_parts(self) -> (TcpStream, PeerSlot) {
        (self.stream, self.slot)
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Waits up to `timeout` for `stream`'s first byte: false when it stayed
/// silent or closed.
pub async fn spoke(stream: &TcpStream, timeout: Duration) -> bool {
    let mut first = [0u8; 1];
    tokio::time::timeout(timeout, stream.peek(&mut first))
        .await
        .is_ok_and(|peeked| peeked.is_ok_and(|n| n > 0))
}

/// A server builder tuned for bulk transfer.
pub fn server() -> Server {
    Server::builder()
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// in-flight calls finish for up to `grace`: clients holding connections
/// open must not keep a server alive forever.
pub async fn serve_with_grace(
    router: Router,
    listener: TcpListener,
    limits: ConnectionLimits,
    security: &Security,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<(), tonic::transport::Error> {
    let incoming = speaking(listener, limits, security.acceptor());
    serve_incoming_with_grace(router, incoming, shutdown, grace).await
}

/// The connections `listener` accepts within `limits`: at most
/// `per_peer` from one address (more are closed at once), and only those
/// that send something within `first_bytes_timeout` (silent ones are
/// closed) and, with `tls`, complete their handshake within it too. Each
/// is waited for on a task of its own, so a slow one never delays the
/// others.
pub fn speaking(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> impl tokio_stream::Stream<Item = std::io::Result<Conn>> + Send + 'static {
    let peers = PeerLimit::new(limits.per_peer);
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Conn>>(64);
    tokio::spawn(async move {
        let mut accepted = TcpListenerStream::new(listener);
        loop {
            let next = tokio::select! {
                next = tokio_stream::StreamExt::next(&mut accepted) => next,
                () = tx.closed() => return,
            };
            let stream = match next {
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                None => return,
            };
            let Some(stream) = Admitted::admit(stream, &peers) else {
                continue;
            };
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                if !spoke(stream.stream(), limits.first_bytes_timeout).await {
                    return;
                }
                let conn = match tls {
                    None => Conn::plain(stream),
                    Some(tls) => match handshake(&tls, stream, limits.first_bytes_timeout).await {
                        Some(conn) => conn,
                        None => return,
                    },
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The TLS handshake of a new connection, within `timeout`; None (and
/// the connection closed) when it fails or takes longer.
pub async fn handshake(
    tls: &tokio_rustls::TlsAcceptor,
    stream: Admitted,
    timeout: Duration,
) -> Option<Conn> {
    let peer = stream.stream().peer_addr().ok();
    match tokio::time::timeout(timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => Some(Conn::tls(stream)),
        Ok(Err(e)) => {
            tracing::info!("refusing a connection from {peer:?}: TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::info!("refusing a connection from {peer:?}: TLS handshake took too long");
            None
        }
    }
}

/// [`serve_with_grace`] over connections accepted elsewhere (a server that
/// sorts its connections by protocol first).
pub async fn serve_incoming_with_grace<S>(
    router: Router,
    incoming: S,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<(), tonic::transport::Error>
where
    S: tokio_stream::Stream<Item = std::io::Result<Conn>> + Send + 'static,
{
    // `Server::tcp_nodelay` only covers connections tonic accepts itself.
    // Without it, Nagle holds back the small trailers frame that ends each
    // response until the client's delayed ACK: 40 ms per unary call.
    let incoming = tokio_stream::StreamExt::map(incoming, |conn| {
        conn.inspect(|conn| {
            let _ = conn.tcp().set_nodelay(true);
        })
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    });
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => result,
        () = shutdown => {
            let _ = stop_tx.send(());
            match tokio::time::timeout(grace, &mut serve).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("in-flight calls still running after {grace:?}; stopping anyway");
                    Ok(())
                }
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM: the servers' shutdown future.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// An endpoint tuned for bulk transfer. `addr` is `host:port` or a URI.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)?
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;

    async fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> TcpStream {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&std::net::SocketAddr::from((from, 0)).into())
            .expect("bind");
        socket.connect(&addr.into()).expect("connect");
        let stream: std::net::TcpStream = socket.into();
        stream.set_nonblocking(true).unwrap();
        TcpStream::from_std(stream).unwrap()
    }

    #[tokio::test]
    async fn speaking_admits_a_bounded_number_per_peer_and_drops_silent_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            first_bytes_timeout: Duration::from_millis(300),
            per_peer: 3,
        };
        let mut admitted = Box::pin(speaking(listener, limits, None));

        // Five from one address that speak: three get through, two are closed.
        let mut greedy = Vec::new();
        for _ in 0..5 {
            let mut stream = connect_from([127, 0, 0, 2], addr).await;
            tokio::io::AsyncWriteExt::write_all(&mut stream, b"x")
                .await
                .unwrap();
            greedy.push(stream);
        }
        let mut through = Vec::new();
        for _ in 0..3 {
            let next = tokio::time::timeout(Duration::from_secs(2), admitted.next())
                .await
                .expect("an admitted connection")
                .unwrap()
                .unwrap();
            assert_eq!(
                next.tcp().peer_addr().unwrap().ip(),
                IpAddr::from([127, 0, 0, 2])
            );
            through.push(next);
        }
        let mut closed = 0;
        for stream in &mut greedy {
            let mut byte = [0u8; 1];
            // Closed: an end of stream, or a reset (its byte was unread).
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await
            {
                closed += 1;
            }
        }
        assert_eq!(closed, 2);

        // Another address still gets in; a silent one never comes through.
        let _silent = connect_from([127, 0, 0, 4], addr).await;
        let mut other = connect_from([127, 0, 0, 3], addr).await;
        tokio::io::AsyncWriteExt::write_all(&mut other, b"x")
            .await
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(2), admitted.next())
            .await
            .expect("another peer's connection")
            .unwrap()
            .unwrap();
        assert_eq!(
            next.tcp().peer_addr().unwrap().ip(),
            IpAddr::from([127, 0, 0, 3])
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(800), admitted.next())
                .await
                .is_err(),
            "a silent connection was passed on"
        );

        // A closed connection frees its place.
        drop(through.pop());
        let mut again = connect_from([127, 0, 0, 2], addr).await;
        tokio::io::AsyncWriteExt::write_all(&mut again, b"x")
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), admitted.next())
            .await
            .expect("a freed place is given again")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn peer_slots_are_counted_and_given_back() {
        let limit = PeerLimit::new(2);
        let peer = IpAddr::from([10, 0, 0, 1]);
        let a = limit.admit(peer).unwrap();
        let _b = limit.admit(peer).unwrap();
        assert!(limit.admit(peer).is_none());
        assert!(limit.admit(IpAddr::from([10, 0, 0, 2])).is_some());
        drop(a);
        assert_eq!(limit.open(peer), 1);
        assert!(limit.admit(peer).is_some());
    }
}

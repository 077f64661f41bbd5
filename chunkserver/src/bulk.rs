//! The chunk server's side of the bulk read protocol
//! (`shardfs_proto::bulk`): connections that start with the protocol's magic
//! (or, over TLS, agreed on its ALPN name) are served here, one thread
//! each. Plaintext data goes by `sendfile(2)` straight from the chunk file
//! to the socket; TLS data is read from the file and encrypted on the way.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardfs_proto::bulk::{self, Request, ResponseHeader, Status};
use shardfs_proto::transport::PeerSlot;
use tracing::{debug, warn};

use crate::config::BulkLimits;
use crate::error::ChunkError;
use crate::gate::{Gate, Refusal};
use crate::store::{ChunkStore, OpenRange};
use shardfs_proto::capability::Access;

/// A bulk read connection: plaintext or TLS, blocking.
pub enum BulkConn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

/// How much of a chunk file is read at once when it cannot be sent by
/// `sendfile` (TLS, or a file encrypted at rest).
const READ_THROUGH_BYTES: usize = 256 << 10;

impl BulkConn {
    /// A TLS connection after its handshake (`session` holds what it
    /// already received).
    pub fn tls(stream: TcpStream, session: rustls::ServerConnection) -> Self {
        Self::Tls(Box::new(rustls::StreamOwned::new(session, stream)))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => &s.sock,
        }
    }

    /// Sends the range of `range`'s file, decrypted when the store is
    /// encrypted. A file that ends early is an error: the connection must
    /// then be dropped, as the client was promised the whole range.
    fn send_range(&mut self, range: &mut OpenRange) -> io::Result<()> {
        let (offset, length) = (range.offset, range.length);
        if let (Self::Plain(stream), None) = (&*self, &range.cipher) {
            // Plaintext file to a plaintext socket: no copy at all.
            return send_file(stream, &range.file, offset, length);
        }
        // TLS encrypts, or the file must be decrypted: through a buffer.
        use std::os::unix::fs::FileExt;
        let mut buffer = vec![0u8; READ_THROUGH_BYTES.min(length as usize)];
        let mut done = 0u64;
        while done < length {
            let want = (length - done).min(buffer.len() as u64) as usize;
            let n = range.file.read_at(&mut buffer[..want], offset + done)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "chunk file ended before its indexed length",
                ));
            }
            if let Some(cipher) = &mut range.cipher {
                cipher.apply(&mut buffer[..n]);
            }
            self.write_all(&buffer[..n])?;
            done += n as u64;
        }
        self.flush()
    }
}

impl Read for BulkConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for BulkConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// One open connection: a handle to close it, and whether it is serving a
/// request or waiting for one (since when, in ms since `Connections::epoch`).
struct Slot {
    stream: TcpStream,
    activity: Arc<Activity>,
}

#[derive(Default)]
struct Activity {
    busy: std::sync::atomic::AtomicBool,
    idle_since_ms: AtomicU64,
}

/// The open bulk connections, so that shutdown can close them and a new
/// connection can push out an idle one.
#[derive(Clone)]
pub struct Connections {
    open: Arc<Mutex<HashMap<u64, Slot>>>,
    next: Arc<AtomicU64>,
    epoch: std::time::Instant,
    limits: BulkLimits,
    gate: Gate,
}

impl Connections {
    /// At most `limits.connections` connections at once (see
    /// [`crate::config::BULK_CONNECTIONS`] for the policy), each read let
    /// through by `gate`.
    pub fn new(limits: BulkLimits, gate: Gate) -> Self {
        Self {
            gate,
            open: Arc::default(),
            next: Arc::default(),
            epoch: std::time::Instant::now(),
            limits: BulkLimits {
                connections: limits.connections.max(1),
                ..limits
            },
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Serves `stream` on a thread of its own. When every slot is taken,
    /// the longest-idle connection is closed for it; when none is idle,
    /// `stream` is refused.
    pub fn spawn(&self, stream: BulkConn, slot: PeerSlot, store: ChunkStore) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::default());
        activity
            .idle_since_ms
            .store(self.now_ms(), Ordering::Relaxed);
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if open.len() >= self.limits.connections {
                let idlest = open
                    .iter()
                    .filter(|(_, slot)| !slot.activity.busy.load(Ordering::Relaxed))
                    .min_by_key(|(_, slot)| slot.activity.idle_since_ms.load(Ordering::Relaxed))
                    .map(|(id, _)| *id);
                match idlest.and_then(|id| open.remove(&id)) {
                    Some(slot) => {
                        debug!("all bulk read slots taken; closing the longest-idle connection");
                        let _ = slot.stream.shutdown(std::net::Shutdown::Both);
                    }
                    None => {
                        drop(open);
                        warn!(
                            "{} bulk read connections busy; refusing another",
                            self.limits.connections
                        );
                        refuse(
                            stream,
                            "too many bulk read connections busy on this chunk server",
                        );
                        return;
                    }
                }
            }
            match stream.tcp().try_clone() {
                Ok(handle) => open.insert(
                    id,
                    Slot {
                        stream: handle,
                        activity: activity.clone(),
                    },
                ),
                Err(e) => {
                    warn!("bulk read connection unusable: {e}");
                    return;
                }
            };
        }
        let registry = self.clone();
        let limits = self.limits;
        let gate = self.gate.clone();
        let spawned = std::thread::Builder::new()
            .name("bulk-read".into())
            .spawn(move || {
                let mark = |busy: bool| {
                    activity.busy.store(busy, Ordering::Relaxed);
                    if !busy {
                        activity
                            .idle_since_ms
                            .store(registry.now_ms(), Ordering::Relaxed);
                    }
                };
                if let Err(e) = serve(stream, &store, &gate, &limits, mark) {
                    debug!("bulk read connection ended: {e}");
                }
                registry.forget(id);
                drop(slot);
            });
        if let Err(e) = spawned {
            self.forget(id);
            warn!("could not start a bulk read thread: {e}");
        }
    }

    fn forget(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Closes every open connection (at shutdown): their threads end.
    pub fn close_all(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|p| p.into_inner()));
        for slot in open.values() {
            let _ = slot.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Answers a connection that cannot be served with an error response.
fn refuse(mut stream: BulkConn, why: &str) {
    let _ = stream.tcp().set_nonblocking(false);
    let _ = stream.tcp().set_write_timeout(Some(Duration::from_secs(1)));
    let header = ResponseHeader {
        status: Status::Error,
        chunk_length: 0,
        n: why.len() as u64,
    };
    let _ = stream.write_all(&header.encode());
    let _ = stream.write_all(why.as_bytes());
    let _ = stream.flush();
}

/// Answers requests on one connection until the client closes it; `mark`
/// hears when a request starts (true) and when its answer is sent (false).
fn serve(
    mut stream: BulkConn,
    store: &ChunkStore,
    gate: &Gate,
    limits: &BulkLimits,
    mark: impl Fn(bool),
) -> io::Result<()> {
    let tcp = stream.tcp();
    tcp.set_nonblocking(false)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(limits.idle_timeout))?;
    tcp.set_write_timeout(Some(limits.write_timeout))?;
    let mut request = [0u8; bulk::REQUEST_BYTES];
    loop {
        match stream.read_exact(&mut request) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(()); // idle too long
            }
            Err(e) => return Err(e),
        }
        mark(true);
        let Some(request) = Request::decode(&request) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bulk request without the protocol's magic",
            ));
        };
        let opened = gate
            .check(None, &request.capability, Access::Read, &request.id)
            .map_err(|refusal| match &refusal {
                Refusal::NoKey => (Status::Error, refusal.words(&request.id)),
                Refusal::Denied(_) => (Status::Denied, refusal.words(&request.id)),
            })
            .and_then(|()| {
                store
                    .open_range_blocking(request.id, request.offset, request.length)
                    .map_err(|e| {
                        let status = match &e {
                            ChunkError::NotFound { .. } => Status::NotFound,
                            ChunkError::OutOfRange { .. } => Status::OutOfRange,
                            _ => Status::Error,
                        };
                        (status, e.to_string())
                    })
            });
        match opened {
            Ok(mut range) => {
                let header = ResponseHeader {
                    status: Status::Ok,
                    chunk_length: range.chunk_length,
                    n: range.length,
                };
                stream.write_all(&header.encode())?;
                stream.send_range(&mut range)?;
            }
            Err((status, message)) => {
                let mut message = message.into_bytes();
                message.truncate(bulk::MAX_MESSAGE_BYTES as usize);
                let header = ResponseHeader {
                    status,
                    chunk_length: 0,
                    n: message.len() as u64,
                };
                stream.write_all(&header.encode())?;
                stream.write_all(&message)?;
                stream.flush()?;
            }
        }
        mark(false);
    }
}

/// Sends `length` bytes of `file` from `offset` with sendfile(2).
fn send_file(stream: &TcpStream, file: &std::fs::File, offset: u64, length: u64) -> io::Result<()> {
    let mut position = offset as libc::off_t;
    let mut remaining = length;
    while remaining > 0 {
        let count = remaining.min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the duration of the call and
        // `position` is a valid off_t the kernel advances.
        let sent =
            unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut position, count) };
        match sent {
            -1 => {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "chunk file ended before its indexed length",
                ));
            }
            n => remaining -= n as u64,
        }
    }
    Ok(())
}

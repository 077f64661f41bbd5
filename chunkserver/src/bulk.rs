//! The chunk server's side of the bulk read protocol
//! (`shardfs_proto::bulk`): connections that start with the protocol's magic
//! are served here, one thread each, with the data sent by `sendfile(2)`
//! straight from the chunk file to the socket.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardfs_proto::bulk::{self, Request, ResponseHeader, Status};
use tracing::{debug, warn};

use crate::error::ChunkError;
use crate::store::ChunkStore;

/// Bulk connections served at once; beyond that a new one is told so and
/// closed (the client then reads that replica over gRPC).
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection with no request for this long is closed (clients drop
/// their idle ones sooner).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that stops reading a response for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The open bulk connections, so that shutdown can close them.
#[derive(Clone, Default)]
pub struct Connections {
    open: Arc<Mutex<HashMap<u64, TcpStream>>>,
    next: Arc<AtomicU64>,
}

impl Connections {
    /// Serves `stream` on a thread of its own, unless too many are open.
    pub fn spawn(&self, stream: TcpStream, store: ChunkStore) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if open.len() >= MAX_CONNECTIONS {
                drop(open);
                warn!("{MAX_CONNECTIONS} bulk read connections open; refusing another");
                refuse(
                    stream,
                    "too many bulk read connections open on this chunk server",
                );
                return;
            }
            match stream.try_clone() {
                Ok(handle) => open.insert(id, handle),
                Err(e) => {
                    warn!("bulk read connection unusable: {e}");
                    return;
                }
            };
        }
        let registry = self.clone();
        let spawned = std::thread::Builder::new()
            .name("bulk-read".into())
            .spawn(move || {
                if let Err(e) = serve(stream, &store) {
                    debug!("bulk read connection ended: {e}");
                }
                registry.forget(id);
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
        for stream in open.values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Answers a connection that cannot be served with an error response.
fn refuse(mut stream: TcpStream, why: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let header = ResponseHeader {
        status: Status::Error,
        chunk_length: 0,
        n: why.len() as u64,
    };
    let _ = stream.write_all(&header.encode());
    let _ = stream.write_all(why.as_bytes());
}

/// Answers requests on one connection until the client closes it.
fn serve(mut stream: TcpStream, store: &ChunkStore) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
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
        let Some(request) = Request::decode(&request) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bulk request without the protocol's magic",
            ));
        };
        match store.open_range_blocking(request.id, request.offset, request.length) {
            Ok(range) => {
                let header = ResponseHeader {
                    status: Status::Ok,
                    chunk_length: range.chunk_length,
                    n: range.length,
                };
                stream.write_all(&header.encode())?;
                send_file(&stream, &range.file, range.offset, range.length)?;
            }
            Err(e) => {
                let status = match &e {
                    ChunkError::NotFound { .. } => Status::NotFound,
                    ChunkError::OutOfRange { .. } => Status::OutOfRange,
                    _ => Status::Error,
                };
                let mut message = e.to_string().into_bytes();
                message.truncate(bulk::MAX_MESSAGE_BYTES as usize);
                let header = ResponseHeader {
                    status,
                    chunk_length: 0,
                    n: message.len() as u64,
                };
                stream.write_all(&header.encode())?;
                stream.write_all(&message)?;
            }
        }
    }
}

/// Sends `length` bytes of `file` from `offset` with sendfile(2). A file
/// that ends early is an error: the connection must then be dropped, as
/// the client was promised `length` bytes.
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

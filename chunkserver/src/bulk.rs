//! The chunk server's side of the bulk read protocol
//! (`shardfs_proto::bulk`): connections that start with the protocol's magic
//! are served here, one thread each, with the data sent by `sendfile(2)`
//! straight from the chunk file to the socket.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shardfs_proto::bulk::{self, Request, ResponseHeader, Status};
use tracing::{debug, warn};

use crate::error::ChunkError;
use crate::store::ChunkStore;

/// Bulk connections served at once; more are closed at once (the client
/// then reads that replica over gRPC or from another server).
pub const MAX_CONNECTIONS: usize = 1024;

/// Counts live bulk connections.
#[derive(Clone, Default)]
pub struct Connections(Arc<AtomicUsize>);

impl Connections {
    /// Serves `stream` on a thread of its own, unless too many are open.
    pub fn spawn(&self, stream: TcpStream, store: ChunkStore) {
        if self.0.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            self.0.fetch_sub(1, Ordering::SeqCst);
            warn!("{MAX_CONNECTIONS} bulk read connections open; refusing another");
            return;
        }
        let count = self.0.clone();
        let spawned = std::thread::Builder::new()
            .name("bulk-read".into())
            .spawn(move || {
                if let Err(e) = serve(stream, &store) {
                    debug!("bulk read connection ended: {e}");
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.0.fetch_sub(1, Ordering::SeqCst);
            warn!("could not start a bulk read thread: {e}");
        }
    }
}

/// Answers requests on one connection until the client closes it.
fn serve(mut stream: TcpStream, store: &ChunkStore) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let mut request = [0u8; bulk::REQUEST_BYTES];
    loop {
        match stream.read_exact(&mut request) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
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

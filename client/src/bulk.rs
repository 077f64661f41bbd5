//! The client's side of the bulk read protocol (`shardfs_proto::bulk`): a
//! few idle connections kept per chunk server, one request at a time on
//! each, the data read straight into one pooled buffer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardfs_proto::ChunkId;
use shardfs_proto::bulk::{self, Request, ResponseHeader, Status};
use shardfs_proto::security::{BulkStream, Security};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::buffers::BufferPool;

/// Idle connections kept per chunk server.
const IDLE_PER_SERVER: usize = 16;
/// Idle connections older than this are closed rather than reused (the
/// server closes them after a minute).
const IDLE_FOR: Duration = Duration::from_secs(20);

/// Why a bulk read failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkError {
    /// The server answered: the chunk is not there, or not that long.
    Answer(String),
    /// The connection failed or the server could not serve the protocol
    /// (too busy, an old server): gRPC may still work.
    Transport(String),
}

pub struct BulkPool {
    security: Security,
    idle: Mutex<HashMap<String, Vec<(BulkStream, Instant)>>>,
}

impl BulkPool {
    /// An empty pool whose connections are opened with `security`.
    pub fn new(security: Security) -> Self {
        Self {
            security,
            idle: Mutex::default(),
        }
    }

    /// Reads the whole chunk `id` (expected to be `length` bytes) from the
    /// chunk server at `addr`. The bytes are not verified here.
    pub async fn read_chunk(
        &self,
        addr: &str,
        id: ChunkId,
        length: u64,
        capability: &[u8],
        buffers: &Arc<BufferPool>,
    ) -> Result<Bytes, BulkError> {
        let request = Request {
            id,
            offset: 0,
            length: None,
            capability: bulk::capability_field(capability),
        };
        // A kept connection may have been closed by a server that restarted
        // or found it idle: then try once more on a new one.
        if let Some(stream) = self.take(addr) {
            match self.request(stream, addr, &request, length, buffers).await {
                Err(Attempt::Stale(_)) => {}
                Err(Attempt::Failed(e) | Attempt::Refused(e)) => return Err(e),
                Ok(data) => return Ok(data),
            }
        }
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| BulkError::Transport(io_words(&e)))?;
        stream
            .set_nodelay(true)
            .map_err(|e| BulkError::Transport(io_words(&e)))?;
        let stream = self
            .security
            .bulk_stream(stream)
            .await
            .map_err(|e| BulkError::Transport(format!("TLS: {}", io_words(&e))))?;
        self.request(stream, addr, &request, length, buffers)
            .await
            .map_err(|e| match e {
                Attempt::Stale(e) | Attempt::Failed(e) | Attempt::Refused(e) => e,
            })
    }

    async fn request(
        &self,
        mut stream: BulkStream,
        addr: &str,
        request: &Request,
        length: u64,
        buffers: &Arc<BufferPool>,
    ) -> Result<Bytes, Attempt> {
        // Nothing came back at all: the connection was dead before we used it.
        let sent = async {
            stream.write_all(&request.encode()).await?;
            stream.flush().await
        };
        sent.await.map_err(|e| Attempt::Stale(transport(e)))?;
        match response(&mut stream, length, buffers).await {
            Ok(data) => {
                self.give_back(addr, stream);
                Ok(data)
            }
            Err(Attempt::Refused(e)) => {
                self.give_back(addr, stream);
                Err(Attempt::Failed(e))
            }
            Err(other) => Err(other),
        }
    }

    fn take(&self, addr: &str) -> Option<BulkStream> {
        let mut idle = self.idle.lock().expect("bulk pool");
        let streams = idle.get_mut(addr)?;
        while let Some((stream, since)) = streams.pop() {
            if since.elapsed() < IDLE_FOR {
                return Some(stream);
            }
        }
        None
    }

    fn give_back(&self, addr: &str, stream: BulkStream) {
        let mut idle = self.idle.lock().expect("bulk pool");
        let streams = idle.entry(addr.to_string()).or_default();
        streams.retain(|(_, since)| since.elapsed() < IDLE_FOR);
        if streams.len() < IDLE_PER_SERVER {
            streams.push((stream, Instant::now()));
        }
    }
}

/// One request on one connection: `Stale` when the connection turned out
/// dead before any answer (worth one retry on a new connection), `Refused`
/// when the server answered with a clean refusal (the connection stays in
/// step and may carry the next request).
enum Attempt {
    Stale(BulkError),
    Failed(BulkError),
    Refused(BulkError),
}

fn transport(e: std::io::Error) -> BulkError {
    BulkError::Transport(io_words(&e))
}

/// Reads the response to a request for a whole chunk of `length` bytes:
/// whatever the server sends, this reads at most the header, `length`
/// bytes of data or a bounded message, and never trusts a length it was
/// told beyond what it asked for.
async fn response<R: AsyncRead + Unpin>(
    stream: &mut R,
    length: u64,
    buffers: &Arc<BufferPool>,
) -> Result<Bytes, Attempt> {
    let mut header = [0u8; bulk::RESPONSE_HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| Attempt::Stale(transport(e)))?;
    let header = ResponseHeader::decode(&header).ok_or_else(|| {
        Attempt::Failed(BulkError::Transport(
            "the chunk server sent a malformed bulk response".into(),
        ))
    })?;
    if header.status != Status::Ok {
        if header.n > bulk::MAX_MESSAGE_BYTES {
            return Err(Attempt::Failed(BulkError::Transport(
                "the chunk server sent an oversized error".into(),
            )));
        }
        let mut message = vec![0u8; header.n as usize];
        stream
            .read_exact(&mut message)
            .await
            .map_err(|e| Attempt::Failed(transport(e)))?;
        let message = String::from_utf8_lossy(&message).to_string();
        return Err(match header.status {
            // A refused capability would be refused over gRPC too.
            Status::NotFound | Status::OutOfRange | Status::Denied => {
                Attempt::Refused(BulkError::Answer(message))
            }
            _ => Attempt::Failed(BulkError::Transport(message)),
        });
    }
    if header.n != length || header.chunk_length != length {
        return Err(Attempt::Failed(BulkError::Answer(format!(
            "the chunk server holds {} bytes; the file says the chunk has {length}",
            header.chunk_length
        ))));
    }
    let mut data = buffers.take(length as usize);
    let mut filled = 0;
    while filled < data.len() {
        let read = stream
            .read(&mut data.as_mut_slice()[filled..])
            .await
            .map_err(|e| Attempt::Failed(transport(e)))?;
        if read == 0 {
            return Err(Attempt::Failed(BulkError::Transport(format!(
                "connection closed after {filled} of {length} bytes"
            ))));
        }
        filled += read;
    }
    Ok(data.freeze())
}

/// [`response`] for the fuzzer: the bytes a (possibly lying) chunk server
/// sent in answer to a request for `length` bytes.
#[doc(hidden)]
pub async fn decode_response<R: AsyncRead + Unpin>(
    stream: &mut R,
    length: u64,
    buffers: &Arc<BufferPool>,
) -> Result<Bytes, BulkError> {
    response(stream, length, buffers)
        .await
        .map_err(|e| match e {
            Attempt::Stale(e) | Attempt::Failed(e) | Attempt::Refused(e) => e,
        })
}

fn io_words(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        std::io::ErrorKind::UnexpectedEof => "connection closed mid-response".into(),
        _ => err.to_string(),
    }
}

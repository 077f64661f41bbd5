//! The client's side of the bulk read protocol (`shardfs_proto::bulk`): a
//! few idle connections kept per chunk server, one request at a time on
//! each, the data read straight into one buffer.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use shardfs_proto::ChunkId;
use shardfs_proto::bulk::{self, Request, ResponseHeader, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections kept per chunk server.
const IDLE_PER_SERVER: usize = 64;

#[derive(Default)]
pub struct BulkPool {
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
}

impl BulkPool {
    /// Reads the whole chunk `id` (expected to be `length` bytes) from the
    /// chunk server at `addr`. The bytes are not verified here.
    pub async fn read_chunk(&self, addr: &str, id: ChunkId, length: u64) -> Result<Bytes, String> {
        let mut stream = match self.take(addr) {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(addr).await.map_err(|e| io_words(&e))?;
                stream.set_nodelay(true).map_err(|e| io_words(&e))?;
                stream
            }
        };
        let request = Request {
            id,
            offset: 0,
            length: None,
        };
        stream
            .write_all(&request.encode())
            .await
            .map_err(|e| io_words(&e))?;
        let mut header = [0u8; bulk::RESPONSE_HEADER_BYTES];
        stream
            .read_exact(&mut header)
            .await
            .map_err(|e| io_words(&e))?;
        let header = ResponseHeader::decode(&header)
            .ok_or_else(|| "the chunk server sent a malformed bulk response".to_string())?;
        if header.status != Status::Ok {
            if header.n > bulk::MAX_MESSAGE_BYTES {
                return Err("the chunk server sent an oversized error".into());
            }
            let mut message = vec![0u8; header.n as usize];
            stream
                .read_exact(&mut message)
                .await
                .map_err(|e| io_words(&e))?;
            self.give_back(addr, stream);
            return Err(String::from_utf8_lossy(&message).to_string());
        }
        if header.n != length || header.chunk_length != length {
            return Err(format!(
                "the chunk server holds {} bytes; the file says the chunk has {length}",
                header.chunk_length
            ));
        }
        let mut data = BytesMut::with_capacity(length as usize);
        while (data.len() as u64) < length {
            let read = stream.read_buf(&mut data).await.map_err(|e| io_words(&e))?;
            if read == 0 {
                return Err(format!(
                    "connection closed after {} of {length} bytes",
                    data.len()
                ));
            }
        }
        self.give_back(addr, stream);
        Ok(data.freeze())
    }

    fn take(&self, addr: &str) -> Option<TcpStream> {
        self.idle.lock().expect("bulk pool").get_mut(addr)?.pop()
    }

    fn give_back(&self, addr: &str, stream: TcpStream) {
        let mut idle = self.idle.lock().expect("bulk pool");
        let streams = idle.entry(addr.to_string()).or_default();
        if streams.len() < IDLE_PER_SERVER {
            streams.push(stream);
        }
    }
}

fn io_words(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        std::io::ErrorKind::UnexpectedEof => "connection closed mid-response".into(),
        _ => err.to_string(),
    }
}

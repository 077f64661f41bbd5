//! The bulk read protocol: chunk reads without gRPC, on the chunk server's
//! own port.
//!
//! A gRPC read copies every byte five times (page cache to the server,
//! into tonic's encode buffer, into the socket, out of it, into tonic's
//! decode buffer). For reads whose bytes the client verifies anyway, the
//! chunk server also speaks this small protocol on the same port: it
//! recognizes a connection by its first four bytes ([`MAGIC`]; HTTP/2
//! starts with "PRI "), and answers each request with a header and then the
//! bytes straight from the chunk file with `sendfile(2)`: two copies in all.
//!
//! A connection carries one request at a time, any number in turn:
//!
//! ```text
//! request  (94 bytes): "SFBR" | chunk id (32) | offset u64 BE | length u64 BE (u64::MAX: to the end)
//!                      | read capability (42; zeros: none, see `crate::capability`)
//! response (17 bytes): status u8 | chunk length u64 BE | n u64 BE
//!          then n bytes: the data when status is OK, else a UTF-8 message
//! ```
//!
//! A server that cannot deliver the n bytes it announced (a file truncated
//! behind its back) closes the connection. The server never verifies these
//! reads: only callers that hash what they receive may use the protocol.
//! A server that speaks TLS serves a read only with a valid capability.

use crate::ChunkId;
use crate::capability::CAPABILITY_BYTES;

/// The first bytes of every bulk connection and every request.
pub const MAGIC: [u8; 4] = *b"SFBR";
pub const REQUEST_BYTES: usize = 52 + CAPABILITY_BYTES;
pub const RESPONSE_HEADER_BYTES: usize = 17;
/// The longest error message a server sends.
pub const MAX_MESSAGE_BYTES: u64 = 64 << 10;

/// How a bulk request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    OutOfRange = 2,
    Error = 3,
    /// No valid capability for the chunk.
    Denied = 4,
}

impl Status {
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Ok),
            1 => Some(Self::NotFound),
            2 => Some(Self::OutOfRange),
            3 => Some(Self::Error),
            4 => Some(Self::Denied),
            _ => None,
        }
    }
}

/// A read of `length` bytes (None: to the end) of chunk `id` from
/// `offset`, with a read capability (all zeros: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub id: ChunkId,
    pub offset: u64,
    pub length: Option<u64>,
    pub capability: [u8; CAPABILITY_BYTES],
}

/// A capability as the request field holds it: zeros unless `capability`
/// has exactly the field's length.
pub fn capability_field(capability: &[u8]) -> [u8; CAPABILITY_BYTES] {
    capability.try_into().unwrap_or([0; CAPABILITY_BYTES])
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_BYTES] {
        let mut out = [0u8; REQUEST_BYTES];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..36].copy_from_slice(self.id.as_bytes());
        out[36..44].copy_from_slice(&self.offset.to_be_bytes());
        out[44..52].copy_from_slice(&self.length.unwrap_or(u64::MAX).to_be_bytes());
        out[52..].copy_from_slice(&self.capability);
        out
    }

    /// None when the bytes do not start with [`MAGIC`].
    pub fn decode(bytes: &[u8; REQUEST_BYTES]) -> Option<Self> {
        if bytes[0..4] != MAGIC {
            return None;
        }
        let id = ChunkId::from_slice(&bytes[4..36]).ok()?;
        let offset = u64::from_be_bytes(bytes[36..44].try_into().ok()?);
        let length = u64::from_be_bytes(bytes[44..52].try_into().ok()?);
        Some(Self {
            id,
            offset,
            length: (length != u64::MAX).then_some(length),
            capability: bytes[52..].try_into().ok()?,
        })
    }
}

/// The fixed part of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    pub status: Status,
    pub chunk_length: u64,
    /// Bytes that follow: data, or the message of a failure.
    pub n: u64,
}

impl ResponseHeader {
    pub fn encode(&self) -> [u8; RESPONSE_HEADER_BYTES] {
        let mut out = [0u8; RESPONSE_HEADER_BYTES];
        out[0] = self.status as u8;
        out[1..9].copy_from_slice(&self.chunk_length.to_be_bytes());
        out[9..17].copy_from_slice(&self.n.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8; RESPONSE_HEADER_BYTES]) -> Option<Self> {
        Some(Self {
            status: Status::from_byte(bytes[0])?,
            chunk_length: u64::from_be_bytes(bytes[1..9].try_into().ok()?),
            n: u64::from_be_bytes(bytes[9..17].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = ChunkId::of(b"bulk");
        for length in [None, Some(0), Some(8 << 20)] {
            let request = Request {
                id,
                offset: 12,
                length,
                capability: [length.map_or(0, |l| l as u8 | 1); CAPABILITY_BYTES],
            };
            assert_eq!(Request::decode(&request.encode()), Some(request));
        }
        let mut bad = Request {
            id,
            offset: 0,
            length: None,
            capability: capability_field(&[]),
        }
        .encode();
        bad[0] = b'P';
        assert_eq!(Request::decode(&bad), None);
        let header = ResponseHeader {
            status: Status::OutOfRange,
            chunk_length: 99,
            n: 7,
        };
        assert_eq!(ResponseHeader::decode(&header.encode()), Some(header));
    }
}

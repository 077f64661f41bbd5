//! Chunk ids: the BLAKE3-256 hash of a chunk's bytes.
//!
//! The id is also the checksum, so anyone holding a chunk and its id can
//! verify it. On the wire an id is 32 raw bytes; in text, logs, file names
//! and error messages it is 64 lowercase hex characters.

use std::fmt;
use std::str::FromStr;

/// Why a byte string or text is not a chunk id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("chunk id must be 32 bytes, got {0}")]
    WrongLength(usize),
    #[error("chunk id must be 64 lowercase hex characters, got {0:?}")]
    BadHex(String),
}

/// A chunk's name: the BLAKE3-256 hash of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId([u8; 32]);

impl ChunkId {
    pub const LEN: usize = 32;

    /// Hashes `data`. Runs at several GB/s on one core: call it from a
    /// blocking thread for anything bigger than a few KiB.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    pub fn from_array(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses the wire form (32 raw bytes).
    /// Ids as they travel in a repeated `bytes` field.
    pub fn many_from_slices(ids: &[bytes::Bytes]) -> Result<Vec<Self>, IdError> {
        ids.iter().map(|id| Self::from_slice(id)).collect()
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IdError::WrongLength(bytes.len()))?;
        Ok(Self(array))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_vec(&self) -> Vec<u8> {
        self.0.to_vec()
    }

    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The first 8 hex characters: enough to tell chunks apart in a log line.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.short())
    }
}

impl FromStr for ChunkId {
    type Err = IdError;

    /// Accepts only the canonical form: 64 lowercase hex characters. Chunk
    /// file names are ids, so anything else on disk is not a chunk.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdError::BadHex(s.chars().take(80).collect());
        if s.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]).ok_or_else(bad)?;
            let lo = hex_digit(pair[1]).ok_or_else(bad)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// In text formats (JSON: status dumps, old stores) ids are 64-character hex
/// strings, the same form as in file names and logs; in binary formats
/// (Raft entries, snapshots) they are their 32 raw bytes.
impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_hex())
        } else {
            serializer.serialize_bytes(self.as_bytes())
        }
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            deserializer.deserialize_bytes(RawIdVisitor)
        }
    }
}

struct RawIdVisitor;

impl serde::de::Visitor<'_> for RawIdVisitor {
    type Value = ChunkId;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a 32-byte chunk id")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<ChunkId, E> {
        ChunkId::from_slice(bytes).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"hello");
        let text = id.to_hex();
        assert_eq!(text, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(text.parse::<ChunkId>().unwrap(), id);
    }

    #[test]
    fn rejects_non_canonical_text() {
        let id = ChunkId::of(b"x").to_hex();
        assert!(id.to_uppercase().parse::<ChunkId>().is_err());
        assert!(id[..63].parse::<ChunkId>().is_err());
        assert!(format!("{id}0").parse::<ChunkId>().is_err());
        assert!("zz".repeat(32).parse::<ChunkId>().is_err());
    }

    #[test]
    fn wire_form_must_be_32_bytes() {
        assert_eq!(ChunkId::from_slice(&[0; 31]), Err(IdError::WrongLength(31)));
        assert!(ChunkId::from_slice(&[7; 32]).is_ok());
    }
}

//! How Raft entries, Raft messages, snapshots and the state machine's rows
//! are encoded: postcard (compact binary) behind a one-byte format tag.
//!
//! JSON was the first encoding. A commit of 65,536 chunks took 1 s to
//! encode and 0.5 s to decode as JSON in a debug build (19 MB); openraft
//! gives an AppendEntries one heartbeat interval (250 ms), so such an
//! entry could never reach a follower again: every restart re-sent it,
//! timed out, and the group lost its leader over and over. As postcard
//! the same entry is 8.7 MB and takes about 20 ms each way.
//!
//! Everything written starts with [`POSTCARD_TAG`]. A value that does not
//! (a store written before the change: JSON always starts with `{`, `[`,
//! `"`, a digit or a letter) is read as JSON, so old stores still open.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of every value this module writes.
pub const POSTCARD_TAG: u8 = 0x01;

/// Why a stored or received value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty value")]
    Empty,
    #[error("malformed binary value: {0}")]
    Binary(#[from] postcard::Error),
    #[error("malformed JSON value: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The tagged binary form of `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // postcard fails only on types serde cannot describe to it (sequences
    // of unknown length); ours are all plain data.
    postcard::to_extend(value, vec![POSTCARD_TAG]).expect("metaserver types encode as postcard")
}

/// Reads a value written by [`encode`] (or, from an old store, as JSON).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&POSTCARD_TAG, rest)) => {
            let (value, left) = postcard::take_from_bytes(rest)?;
            if !left.is_empty() {
                return Err(DecodeError::Invalid(format!(
                    "{} bytes after the end of the value",
                    left.len()
                )));
            }
            Ok(value)
        }
        Some(_) => Ok(serde_json::from_slice(bytes)?),
    }
}

/// The size of `value` once encoded, without building it.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    1 + postcard::experimental::serialized_size(value).unwrap_or(usize::MAX - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::{ChunkRef, FileMeta};
    use shardfs_proto::ChunkId;

    fn file(n: usize) -> FileMeta {
        let chunks: Vec<ChunkRef> = (0..n)
            .map(|i| ChunkRef {
                id: ChunkId::of(&i.to_le_bytes()),
                length: 1 + i as u64,
            })
            .collect();
        FileMeta {
            content_id: FileMeta::content_id_of(&chunks),
            size: chunks.iter().map(|c| c.length).sum(),
            chunks,
            replication: 3,
            mtime_ms: 7,
        }
    }

    #[test]
    fn values_round_trip_and_ids_are_raw_bytes() {
        let meta = file(100);
        let bytes = encode(&meta);
        assert_eq!(bytes[0], POSTCARD_TAG);
        assert_eq!(decode::<FileMeta>(&bytes).unwrap(), meta);
        // 32 id bytes + a length prefix + a varint length per chunk: far
        // below the 90-odd bytes per chunk of JSON.
        assert!(bytes.len() < 100 * 40, "{} bytes", bytes.len());
        assert_eq!(encoded_len(&meta), bytes.len());
    }

    #[test]
    fn old_json_values_still_read() {
        let meta = file(3);
        let json = serde_json::to_vec(&meta).unwrap();
        assert_eq!(decode::<FileMeta>(&json).unwrap(), meta);
    }

    #[test]
    fn a_once_inside_a_once_is_refused_however_deep() {
        use crate::types::Command;
        let inner = Command::Delete {
            path: "/a".into(),
            recursive: false,
        };
        let once = Command::once(b"id", 1, inner);
        assert_eq!(decode::<Command>(&encode(&once)).unwrap(), once);
        let twice = Command::Once {
            request_id: b"outer".to_vec(),
            at_ms: 1,
            command: Box::new(once.clone()),
        };
        assert!(decode::<Command>(&encode(&twice)).is_err());
        let json = serde_json::to_vec(&twice).unwrap();
        let err = decode::<Command>(&json).unwrap_err().to_string();
        assert!(err.contains("Once"), "{err}");
        // A million nestings, written by hand (variant index, empty id, at_ms
        // 0, ...): refused at the second level, not by overflowing the stack.
        let once_variant = 9u8;
        let probe = encode(&Command::Once {
            request_id: Vec::new(),
            at_ms: 0,
            command: Box::new(Command::RemoveChunkServer { id: 1 }),
        });
        assert_eq!(
            probe[1], once_variant,
            "Once is no longer variant {once_variant}"
        );
        let mut deep = vec![POSTCARD_TAG];
        for _ in 0..1_000_000 {
            deep.extend_from_slice(&[once_variant, 0, 0]);
        }
        assert!(decode::<Command>(&deep).is_err());
        // The flag is reset after a refusal: the next decode works.
        assert_eq!(decode::<Command>(&encode(&once)).unwrap(), once);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(decode::<FileMeta>(&[]), Err(DecodeError::Empty)));
        assert!(decode::<FileMeta>(&[POSTCARD_TAG, 0xff, 0xff]).is_err());
        assert!(decode::<FileMeta>(b"{\"chunks\": 12").is_err());
        let mut truncated = encode(&file(10));
        truncated.truncate(truncated.len() / 2);
        assert!(decode::<FileMeta>(&truncated).is_err());
        let mut trailing = encode(&file(10));
        trailing.push(0);
        assert!(matches!(
            decode::<FileMeta>(&trailing),
            Err(DecodeError::Invalid(_))
        ));
    }
}

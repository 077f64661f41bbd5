//! Chunk capabilities: what a chunk server asks of a client before it
//! serves or stores a chunk on a secured cluster.
//!
//! A capability grants one access ([`Access::Read`] or [`Access::Write`])
//! to one chunk on one chunk server until an expiry time. The metaserver
//! mints it when it tells an authorized client where a chunk is
//! (`LocateChunks`) or where to write it (`AllocateChunks`); the chunk
//! server checks it. Neither asks the other: both hold the same key.
//!
//! Keys: the replicated state holds one cluster key (256 random bits, made
//! by the first leader that needs it). Each chunk server gets only its own
//! key, derived from the cluster key and its id ([`ServerKey::derive`]),
//! when it registers or heartbeats over mutual TLS. A chunk server that
//! falls to an attacker can so mint capabilities for itself only, not for
//! its peers.
//!
//! On the wire a capability is [`CAPABILITY_BYTES`] bytes:
//!
//! ```text
//! version u8 (1) | access u8 | expires u64 BE (ms since the Unix epoch) | MAC (32)
//! MAC = BLAKE3 keyed with the server key over "shardfs capability v1" | access | chunk id | expires
//! ```
//!
//! An empty capability (or 42 zero bytes in the bulk protocol) is none.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::ChunkId;

pub const CAPABILITY_BYTES: usize = 42;
const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"shardfs capability v1";
const DERIVE_DOMAIN: &[u8] = b"shardfs chunk server key v1";

/// What a capability allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Access {
    Read = 1,
    Write = 2,
}

impl Access {
    fn verb(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// The cluster key: 256 bits in the replicated state.
pub type ClusterKey = [u8; 32];

/// One chunk server's key.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerKey([u8; 32]);

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey(..)")
    }
}

/// Why a chunk server refused a capability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error(
        "no capability: a chunk server serves a chunk only to a client the metaserver handed a capability for it (ask LocateChunks or AllocateChunks; a chunk id alone grants nothing)"
    )]
    Missing,
    #[error("the capability is malformed ({0})")]
    Malformed(String),
    #[error("the capability grants {granted} access, not {wanted}")]
    WrongAccess {
        granted: &'static str,
        wanted: &'static str,
    },
    #[error("the capability expired {0} ms ago: ask the metaserver for a fresh one")]
    Expired(u64),
    #[error(
        "the capability is not valid for this chunk on this chunk server (tampered with, or made for another chunk or server)"
    )]
    Forged,
}

impl ServerKey {
    /// The key of chunk server `server` under `cluster`.
    pub fn derive(cluster: &ClusterKey, server: u64) -> Self {
        let mut hasher = blake3::Hasher::new_keyed(cluster);
        hasher.update(DERIVE_DOMAIN);
        hasher.update(&server.to_be_bytes());
        Self(*hasher.finalize().as_bytes())
    }

    /// A key as the metaserver sent it; None unless it is 32 bytes.
    pub fn from_wire(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    pub fn to_wire(&self) -> Bytes {
        Bytes::copy_from_slice(&self.0)
    }

    fn mac(&self, access: Access, id: &ChunkId, expires_ms: u64) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(DOMAIN);
        hasher.update(&[access as u8]);
        hasher.update(id.as_bytes());
        hasher.update(&expires_ms.to_be_bytes());
        hasher.finalize()
    }

    /// A capability for `access` to chunk `id` on this key's server until
    /// `expires_ms`.
    pub fn mint(&self, access: Access, id: &ChunkId, expires_ms: u64) -> Bytes {
        let mut out = [0u8; CAPABILITY_BYTES];
        out[0] = VERSION;
        out[1] = access as u8;
        out[2..10].copy_from_slice(&expires_ms.to_be_bytes());
        out[10..].copy_from_slice(self.mac(access, id, expires_ms).as_bytes());
        Bytes::copy_from_slice(&out)
    }

    /// Whether `capability` grants `access` to chunk `id` at `now_ms`.
    pub fn check(
        &self,
        capability: &[u8],
        access: Access,
        id: &ChunkId,
        now_ms: u64,
    ) -> Result<(), CapabilityError> {
        if is_none(capability) {
            return Err(CapabilityError::Missing);
        }
        let Ok(bytes) = <&[u8; CAPABILITY_BYTES]>::try_from(capability) else {
            return Err(CapabilityError::Malformed(format!(
                "{} bytes, not {CAPABILITY_BYTES}",
                capability.len()
            )));
        };
        if bytes[0] != VERSION {
            return Err(CapabilityError::Malformed(format!(
                "version {}, not {VERSION}",
                bytes[0]
            )));
        }
        let granted = match bytes[1] {
            1 => Access::Read,
            2 => Access::Write,
            other => return Err(CapabilityError::Malformed(format!("access {other}"))),
        };
        let expires_ms = u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"));
        let presented = blake3::Hash::from_bytes(bytes[10..].try_into().expect("32 bytes"));
        // blake3::Hash compares in constant time.
        if presented != self.mac(granted, id, expires_ms) {
            return Err(CapabilityError::Forged);
        }
        if granted != access {
            return Err(CapabilityError::WrongAccess {
                granted: granted.verb(),
                wanted: access.verb(),
            });
        }
        if now_ms > expires_ms {
            return Err(CapabilityError::Expired(now_ms - expires_ms));
        }
        Ok(())
    }
}

/// True for an absent capability: empty, or all zeros (the bulk
/// protocol's fixed field when there is none).
pub fn is_none(capability: &[u8]) -> bool {
    capability.iter().all(|b| *b == 0)
}

/// When `capability` expires (ms since the epoch), as it says; None when
/// it is absent or malformed. Clients use it to ask for fresh ones before
/// a chunk server refuses.
pub fn expires_ms(capability: &[u8]) -> Option<u64> {
    let bytes = <&[u8; CAPABILITY_BYTES]>::try_from(capability).ok()?;
    (bytes[0] == VERSION).then(|| u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")))
}

/// A new cluster key from the system's random number generator.
pub fn new_cluster_key() -> Result<ClusterKey, String> {
    let mut key = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut key)
        .map_err(|_| "the system's random number generator failed".to_string())?;
    Ok(key)
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capability_grants_its_access_to_its_chunk_on_its_server_until_it_expires() {
        let cluster = [7u8; 32];
        let key = ServerKey::derive(&cluster, 3);
        let id = ChunkId::of(b"chunk");
        let cap = key.mint(Access::Read, &id, 1_000);
        assert_eq!(cap.len(), CAPABILITY_BYTES);
        assert_eq!(expires_ms(&cap), Some(1_000));
        assert_eq!(key.check(&cap, Access::Read, &id, 1_000), Ok(()));
        assert_eq!(
            key.check(&cap, Access::Read, &id, 1_250),
            Err(CapabilityError::Expired(250))
        );
        assert!(matches!(
            key.check(&cap, Access::Write, &id, 0),
            Err(CapabilityError::WrongAccess { .. })
        ));
        let other_chunk = ChunkId::of(b"other");
        assert_eq!(
            key.check(&cap, Access::Read, &other_chunk, 0),
            Err(CapabilityError::Forged)
        );
        let other_server = ServerKey::derive(&cluster, 4);
        assert_eq!(
            other_server.check(&cap, Access::Read, &id, 0),
            Err(CapabilityError::Forged)
        );
        let other_cluster = ServerKey::derive(&[8u8; 32], 3);
        assert_eq!(
            other_cluster.check(&cap, Access::Read, &id, 0),
            Err(CapabilityError::Forged)
        );
    }

    #[test]
    fn tampering_with_any_byte_is_caught() {
        let key = ServerKey::derive(&[1u8; 32], 1);
        let id = ChunkId::of(b"x");
        let cap = key.mint(Access::Read, &id, u64::MAX / 2);
        for i in 0..CAPABILITY_BYTES {
            let mut bad = cap.to_vec();
            bad[i] ^= 0x01;
            assert!(key.check(&bad, Access::Read, &id, 0).is_err(), "byte {i}");
        }
        // Pushing the expiry out is tampering too.
        let mut later = cap.to_vec();
        later[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            key.check(&later, Access::Read, &id, 0),
            Err(CapabilityError::Forged)
        );
    }

    #[test]
    fn absent_and_malformed_capabilities_say_so() {
        let key = ServerKey::derive(&[1u8; 32], 1);
        let id = ChunkId::of(b"x");
        assert_eq!(
            key.check(&[], Access::Read, &id, 0),
            Err(CapabilityError::Missing)
        );
        assert_eq!(
            key.check(&[0u8; CAPABILITY_BYTES], Access::Read, &id, 0),
            Err(CapabilityError::Missing)
        );
        assert!(matches!(
            key.check(&[1u8; 5], Access::Read, &id, 0),
            Err(CapabilityError::Malformed(_))
        ));
        assert_eq!(ServerKey::from_wire(&[0u8; 31]), None);
        assert!(ServerKey::from_wire(&[0u8; 32]).is_some());
    }
}

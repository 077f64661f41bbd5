//! [`Gate`]: the capability check in front of every chunk read and write.
//!
//! A chunk server that speaks TLS serves and stores a chunk only for a
//! request carrying a capability the metaserver made for that chunk on
//! this server (`shardfs_proto::capability`), or for a cluster member
//! (a peer certified as a metaserver or chunk server: repair copies and
//! probes). The key comes from the metaservers with the answer to each
//! registration and heartbeat, and is kept in the data directory
//! ([`KEY_FILE`], 0600) so that a restarted server checks capabilities at
//! once, before it has registered again. A server that never had a key
//! refuses reads with UNAVAILABLE so clients try another replica. A
//! plaintext (`--insecure`) server checks nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use shardfs_proto::ChunkId;
use shardfs_proto::capability::{self, Access, ServerKey};
use shardfs_proto::security::{CHUNK_NAME, META_NAME, Peer, PeerIdentity};
use tonic::Status;

/// Whether a request may touch a chunk. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Gate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    enforce: bool,
    key: RwLock<Option<ServerKey>>,
    /// Where the key is kept across restarts.
    file: Option<PathBuf>,
}

/// The file in the data directory that keeps this server's key.
pub const KEY_FILE: &str = "capability.key";

/// Why the gate stayed shut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No key from the metaservers yet.
    NoKey,
    /// The capability is missing or not good.
    Denied(String),
}

impl Refusal {
    pub fn to_status(&self, id: &ChunkId) -> Status {
        match self {
            Self::NoKey => Status::unavailable(format!(
                "chunk {id}: this chunk server has no capability key from the metaservers yet (starting, or cut off from them); try another replica"
            )),
            Self::Denied(why) => Status::permission_denied(format!("chunk {id}: {why}")),
        }
    }

    /// The message as the bulk protocol sends it.
    pub fn words(&self, id: &ChunkId) -> String {
        self.to_status(id).message().to_string()
    }
}

impl Gate {
    /// A gate that checks capabilities (`enforce`) or lets all through.
    pub fn new(enforce: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                enforce,
                key: RwLock::new(None),
                file: None,
            }),
        }
    }

    /// An enforcing gate (or not) that keeps its key in `data_dir`, and
    /// starts with the key kept there by an earlier run, if any.
    pub fn kept_in(enforce: bool, data_dir: &Path) -> Self {
        let file = data_dir.join(KEY_FILE);
        let key = match std::fs::read(&file) {
            Ok(bytes) => {
                let key = ServerKey::from_wire(&bytes);
                if key.is_none() {
                    tracing::warn!("{} is not a capability key; ignoring it", file.display());
                }
                key
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", file.display());
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                enforce,
                key: RwLock::new(key),
                file: Some(file),
            }),
        }
    }

    /// Lets every request through (a plaintext server).
    pub fn open() -> Self {
        Self::new(false)
    }

    pub fn enforces(&self) -> bool {
        self.inner.enforce
    }

    pub fn has_key(&self) -> bool {
        self.inner.key.read().is_ok_and(|k| k.is_some())
    }

    /// The key the metaservers sent (empty: they have none yet; ignored).
    pub fn set_key(&self, wire: &[u8]) {
        if wire.is_empty() {
            return;
        }
        let Some(key) = ServerKey::from_wire(wire) else {
            tracing::warn!(
                "the metaservers sent a capability key of {} bytes; ignoring it",
                wire.len()
            );
            return;
        };
        let mut held = self.inner.key.write().unwrap_or_else(|p| p.into_inner());
        if held.as_ref() != Some(&key) {
            if held.is_none() {
                tracing::info!("capability key received from the metaservers");
            }
            if let Some(file) = &self.inner.file
                && let Err(e) = keep(file, wire)
            {
                tracing::warn!("cannot keep the capability key in {}: {e}", file.display());
            }
            *held = Some(key);
        }
    }

    /// Whether `capability` lets a request from `peer` (None: unknown)
    /// have `access` to chunk `id`.
    pub fn check(
        &self,
        peer: Option<&Peer>,
        capability: &[u8],
        access: Access,
        id: &ChunkId,
    ) -> Result<(), Refusal> {
        if !self.inner.enforce || peer.is_some_and(is_member) {
            return Ok(());
        }
        let held = self.inner.key.read().unwrap_or_else(|p| p.into_inner());
        let Some(key) = held.as_ref() else {
            return Err(Refusal::NoKey);
        };
        key.check(capability, access, id, capability::now_ms())
            .map_err(|e| Refusal::Denied(e.to_string()))
    }
}

/// Writes `key` to `file` (mode 0600) by a rename, so a crash leaves the
/// old key or the new one.
fn keep(file: &Path, key: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = file.with_extension("tmp");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    out.write_all(key)?;
    out.sync_all()?;
    std::fs::rename(&temp, file)
}

/// A peer certified as a metaserver or a chunk server.
fn is_member(peer: &Peer) -> bool {
    matches!(peer.identity, PeerIdentity::Certified(_))
        && (peer.is(META_NAME) || peer.is(CHUNK_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enforcing_gate_wants_a_key_and_a_capability_made_with_it() {
        let id = ChunkId::of(b"g");
        let gate = Gate::new(true);
        let anonymous = Peer {
            addr: None,
            identity: PeerIdentity::Anonymous,
        };
        assert_eq!(
            gate.check(Some(&anonymous), &[], Access::Read, &id),
            Err(Refusal::NoKey)
        );
        let key = ServerKey::derive(&[3; 32], 1);
        gate.set_key(&key.to_wire());
        assert!(gate.has_key());
        assert!(matches!(
            gate.check(Some(&anonymous), &[], Access::Read, &id),
            Err(Refusal::Denied(_))
        ));
        let cap = key.mint(Access::Read, &id, capability::now_ms() + 10_000);
        assert_eq!(
            gate.check(Some(&anonymous), &cap, Access::Read, &id),
            Ok(())
        );
        assert!(gate.check(None, &cap, Access::Write, &id).is_err());
        // A short key is ignored, not installed.
        gate.set_key(&[1, 2, 3]);
        assert_eq!(gate.check(None, &cap, Access::Read, &id), Ok(()));
        assert_eq!(Gate::open().check(None, &[], Access::Write, &id), Ok(()));
    }

    /// A restarted server checks capabilities with the key it kept.
    #[test]
    fn the_key_is_kept_across_restarts_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let id = ChunkId::of(b"kept");
        let first = Gate::kept_in(true, dir.path());
        assert!(!first.has_key());
        let key = ServerKey::derive(&[4; 32], 2);
        first.set_key(&key.to_wire());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Gate::kept_in(true, dir.path());
        let cap = key.mint(Access::Read, &id, capability::now_ms() + 10_000);
        assert_eq!(again.check(None, &cap, Access::Read, &id), Ok(()));
    }
}

//! The chunk index: chunk id -> length, stored-at, last-verified, state.
//!
//! It sits behind the small [`ChunkIndex`] trait so the engine (sled today)
//! can change without touching the store. The index is never the only copy
//! of anything: chunk files are named by their ids, so the store rebuilds
//! and reconciles the index from a scan of the files at every start-up
//! (DESIGN.md invariant 5). That is also why a put need not flush the index
//! before it is acknowledged: the fsynced, renamed chunk file is the record.

use std::path::Path;

use shardfs_proto::ChunkId;

use crate::error::IndexError;

/// What the index knows about one stored chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub length: u64,
    pub stored_at_unix_ms: u64,
    /// 0 until the chunk is re-hashed after it was stored.
    pub last_verified_unix_ms: u64,
    pub state: ChunkState,
}

/// Lifecycle state of a stored chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Stored and servable.
    Stored = 0,
    /// A reader reported a mismatch; still served (the reader verifies) until
    /// the server re-hashes it and either clears or quarantines it.
    Suspect = 1,
}

impl IndexEntry {
    const ENCODED_LEN: usize = 25;

    fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0..8].copy_from_slice(&self.length.to_be_bytes());
        out[8..16].copy_from_slice(&self.stored_at_unix_ms.to_be_bytes());
        out[16..24].copy_from_slice(&self.last_verified_unix_ms.to_be_bytes());
        out[24] = self.state as u8;
        out
    }

    fn decode(id: &[u8], bytes: &[u8]) -> Result<Self, IndexError> {
        if bytes.len() != Self::ENCODED_LEN {
            return Err(IndexError::BadEntry {
                id: hex_of(id),
                len: bytes.len(),
                expected: Self::ENCODED_LEN,
            });
        }
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
        Ok(Self {
            length: u64_at(0),
            stored_at_unix_ms: u64_at(8),
            last_verified_unix_ms: u64_at(16),
            state: if bytes[24] == 1 {
                ChunkState::Suspect
            } else {
                ChunkState::Stored
            },
        })
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The operations the store needs from an index engine. Calls are
/// synchronous and may touch the disk: call them from blocking threads when
/// they are on a hot path.
pub trait ChunkIndex: Send + Sync + 'static {
    fn get(&self, id: &ChunkId) -> Result<Option<IndexEntry>, IndexError>;
    fn insert(&self, id: &ChunkId, entry: &IndexEntry) -> Result<(), IndexError>;
    fn remove(&self, id: &ChunkId) -> Result<Option<IndexEntry>, IndexError>;
    /// Up to `limit` entries in id order, starting after `after`.
    fn page(
        &self,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<(ChunkId, IndexEntry)>, IndexError>;
    /// Every entry, in id order. Entries that cannot be decoded are returned
    /// as errors the caller may drop (the files are the truth).
    fn all(&self) -> Result<Vec<(ChunkId, IndexEntry)>, IndexError>;
    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), IndexError>;
}

/// The sled engine.
pub struct SledIndex {
    db: sled::Db,
    chunks: sled::Tree,
}

impl SledIndex {
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(1000))
            .open()?;
        let chunks = db.open_tree("chunks")?;
        Ok(Self { db, chunks })
    }
}

impl ChunkIndex for SledIndex {
    fn get(&self, id: &ChunkId) -> Result<Option<IndexEntry>, IndexError> {
        match self.chunks.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(IndexEntry::decode(id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    fn insert(&self, id: &ChunkId, entry: &IndexEntry) -> Result<(), IndexError> {
        self.chunks.insert(id.as_bytes(), &entry.encode())?;
        Ok(())
    }

    fn remove(&self, id: &ChunkId) -> Result<Option<IndexEntry>, IndexError> {
        match self.chunks.remove(id.as_bytes())? {
            Some(bytes) => Ok(Some(IndexEntry::decode(id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    fn page(
        &self,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<(ChunkId, IndexEntry)>, IndexError> {
        let iter = match after {
            Some(after) => self.chunks.range::<&[u8], _>((
                std::ops::Bound::Excluded(&after.as_bytes()[..]),
                std::ops::Bound::Unbounded,
            )),
            None => self.chunks.iter(),
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item?;
            let Ok(id) = ChunkId::from_slice(&key) else {
                continue;
            };
            out.push((id, IndexEntry::decode(&key, &value)?));
        }
        Ok(out)
    }

    fn all(&self) -> Result<Vec<(ChunkId, IndexEntry)>, IndexError> {
        let mut out = Vec::new();
        for item in self.chunks.iter() {
            let (key, value) = item?;
            let Ok(id) = ChunkId::from_slice(&key) else {
                continue;
            };
            // An undecodable entry is dropped: reconciliation re-adds the
            // chunk from its file.
            if let Ok(entry) = IndexEntry::decode(&key, &value) {
                out.push((id, entry));
            }
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), IndexError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip() {
        let entry = IndexEntry {
            length: 8 << 20,
            stored_at_unix_ms: 1_700_000_000_000,
            last_verified_unix_ms: 42,
            state: ChunkState::Suspect,
        };
        let id = ChunkId::of(b"x");
        assert_eq!(
            IndexEntry::decode(id.as_bytes(), &entry.encode()).unwrap(),
            entry
        );
        assert!(IndexEntry::decode(id.as_bytes(), &[0; 3]).is_err());
    }

    #[test]
    fn sled_index_pages_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let index = SledIndex::open(&dir.path().join("index")).unwrap();
        let mut ids: Vec<ChunkId> = (0..25u32).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
        for (i, id) in ids.iter().enumerate() {
            let entry = IndexEntry {
                length: i as u64,
                stored_at_unix_ms: 1,
                last_verified_unix_ms: 0,
                state: ChunkState::Stored,
            };
            index.insert(id, &entry).unwrap();
        }
        ids.sort();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = index.page(after.as_ref(), 10).unwrap();
            if page.is_empty() {
                break;
            }
            after = Some(page.last().unwrap().0);
            seen.extend(page.into_iter().map(|(id, _)| id));
        }
        assert_eq!(seen, ids);
        assert!(index.remove(&ids[0]).unwrap().is_some());
        assert!(index.get(&ids[0]).unwrap().is_none());
        assert_eq!(index.all().unwrap().len(), 24);
    }
}

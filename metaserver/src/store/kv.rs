//! The small key-value interface the Raft stores are written against, and
//! its sled implementation. Keeping sled behind it means the engine can be
//! swapped without touching the Raft code (sled 0.34 has known
//! crash-corruption reports; it is never the only copy of anything: a
//! metaserver that loses its store rejoins from its peers).

use std::path::Path;

/// The separate key spaces. A batch is atomic within one space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Raft log entries, keyed by big-endian index.
    Log,
    /// Vote, committed and last purged log ids.
    Raft,
    /// The state machine's data and its applied log id.
    State,
    /// The current snapshot (metadata and bytes).
    Snapshot,
}

impl Space {
    fn tree_name(self) -> &'static str {
        match self {
            Space::Log => "log",
            Space::Raft => "raft",
            Space::State => "state",
            Space::Snapshot => "snapshot",
        }
    }
}

/// A stored key and its value.
pub type Row = (Vec<u8>, Vec<u8>);

/// Puts (Some) and deletes (None) applied atomically.
pub type Batch = Vec<(Vec<u8>, Option<Vec<u8>>)>;

pub trait Kv: Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> std::io::Result<Option<Vec<u8>>>;
    /// Keys in `[start, end)` (end None: to the last key), in order.
    fn range(&self, space: Space, start: &[u8], end: Option<&[u8]>) -> std::io::Result<Vec<Row>>;
    fn last(&self, space: Space) -> std::io::Result<Option<Row>>;
    /// Applies every change of `batch` atomically (not yet durable).
    fn write(&self, space: Space, batch: Batch) -> std::io::Result<()>;
    /// Removes every key of a space (not atomic with other writes).
    fn clear(&self, space: Space) -> std::io::Result<()>;
    /// Makes every earlier write durable. Blocking.
    fn flush(&self) -> std::io::Result<()>;
}

pub struct SledKv {
    db: sled::Db,
    trees: [sled::Tree; 4],
}

impl SledKv {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(1000))
            .open()?;
        let trees = [Space::Log, Space::Raft, Space::State, Space::Snapshot]
            .map(|space| db.open_tree(space.tree_name()));
        let [a, b, c, d] = trees;
        Ok(Self {
            trees: [a?, b?, c?, d?],
            db,
        })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        &self.trees[space as usize]
    }
}

impl Kv for SledKv {
    fn get(&self, space: Space, key: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.tree(space).get(key)?.map(|v| v.to_vec()))
    }

    fn range(&self, space: Space, start: &[u8], end: Option<&[u8]>) -> std::io::Result<Vec<Row>> {
        let tree = self.tree(space);
        let iter = match end {
            Some(end) => tree.range(start..end),
            None => tree.range(start..),
        };
        iter.map(|item| {
            let (k, v) = item?;
            Ok((k.to_vec(), v.to_vec()))
        })
        .collect()
    }

    fn last(&self, space: Space) -> std::io::Result<Option<Row>> {
        Ok(self
            .tree(space)
            .last()?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn write(&self, space: Space, batch: Batch) -> std::io::Result<()> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        self.tree(space).apply_batch(sled_batch)?;
        Ok(())
    }

    fn clear(&self, space: Space) -> std::io::Result<()> {
        self.tree(space).clear()?;
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

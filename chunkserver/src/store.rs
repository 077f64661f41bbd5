//! The chunk store: immutable chunks named by their BLAKE3 hash, bytes in
//! files on local disk, an index in sled.
//!
//! Layout under the data directory:
//!
//! ```text
//! chunks/<hex[0..2]>/<hex[2..4]>/<hex>   one file per chunk (operators and
//!                                         repair tools rely on this layout)
//! tmp/                                    writes in progress; emptied at start-up
//! quarantine/<hex>.<unix-ms>              copies whose bytes no longer match
//! index/                                  the sled index (rebuildable)
//! ```
//!
//! A put hashes the bytes, writes a temp file, fsyncs it, renames it into
//! place and fsyncs the directory, and only then returns: an acknowledged
//! chunk survives a crash, and a crash mid-write leaves only a temp file
//! that the next start-up deletes. The files are the record; the index is
//! reconciled with them at every start-up.
//!
//! Every method that touches the disk or hashes runs on tokio's blocking
//! pool. Writers of different chunks proceed in parallel: only the final
//! rename and index update of one chunk hold a lock, striped by id.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use shardfs_proto::now_ms;
use shardfs_proto::{ChunkId, MAX_CHUNK_BYTES};
use tracing::{info, warn};

use crate::at_rest::{self, AtRestKey, ChunkCipher};
use crate::error::{ChunkError, IndexError, Result};
use crate::index::{ChunkIndex, ChunkState, IndexEntry, SledIndex};

/// Chunks at least this big are hashed on a second thread while the first
/// writes them; smaller ones are not worth a thread.
const PARALLEL_HASH_MIN_BYTES: u64 = 1 << 20;

/// Number of lock stripes; a chunk's stripe is chosen by its first id byte.
const LOCK_STRIPES: usize = 256;

/// Where the store lives and how big it may grow.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// Bytes this store may use; None means the whole file system.
    pub capacity_bytes: Option<u64>,
    /// The key chunk files are encrypted with (None: plaintext files).
    pub encryption: Option<AtRestKey>,
}

/// What start-up found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub chunks: u64,
    pub bytes: u64,
    /// Chunk files that the index did not know (index lost or behind).
    pub added_to_index: u64,
    /// Index entries whose file is gone.
    pub dropped_from_index: u64,
    /// Leftovers of interrupted writes, deleted.
    pub temp_files_removed: u64,
    /// True when the index was missing or unreadable and was rebuilt.
    pub index_rebuilt: bool,
}

/// Result of a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// The chunk was already stored; nothing was written.
    AlreadyStored,
}

/// What re-hashing one chunk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// The bytes did not match; the copy is quarantined.
    Corrupt,
    Missing,
}

/// Usage figures for stats and heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub chunk_count: u64,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
}

/// The bytes a get returns: either already read and verified, or a reader
/// that streams the range from the file piece by piece.
pub enum ChunkRead {
    Verified {
        chunk_length: u64,
        data: Bytes,
    },
    Stream {
        chunk_length: u64,
        reader: RangeReader,
    },
}

/// A chunk file opened for the bulk read path.
pub struct OpenRange {
    pub file: File,
    pub chunk_length: u64,
    pub offset: u64,
    pub length: u64,
    /// The file holds ciphertext: this decrypts it from `offset`.
    pub cipher: Option<ChunkCipher>,
}

/// Bytes read from disk per call of [`RangeReader::next_piece`]; the service
/// slices each piece into 1 MiB messages without copying.
const READ_PIECE_BYTES: u64 = 8 << 20;

/// Reads a byte range of one chunk file in pieces of at most 8 MiB.
/// Blocking: drive it from a blocking thread.
pub struct RangeReader {
    id: ChunkId,
    /// Positioned at the next byte to read.
    file: File,
    remaining: u64,
    /// Decrypts from the next byte to read (an encrypted store).
    cipher: Option<ChunkCipher>,
}

impl RangeReader {
    /// The next piece, or None once the range is exhausted.
    pub fn next_piece(&mut self) -> Result<Option<Bytes>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let len = self.remaining.min(READ_PIECE_BYTES);
        // read_to_end fills spare capacity directly: no zeroing of the buffer.
        let mut buf = Vec::with_capacity(len as usize);
        (&mut self.file)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| ChunkError::io(None, format!("reading chunk {}", self.id), e))?;
        if (buf.len() as u64) < len {
            return Err(ChunkError::Truncated { id: self.id });
        }
        if let Some(cipher) = &mut self.cipher {
            cipher.apply(&mut buf);
        }
        self.remaining -= len;
        Ok(Some(Bytes::from(buf)))
    }
}

/// The content-addressed chunk store. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct ChunkStore {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    chunks_dir: PathBuf,
    tmp_dir: PathBuf,
    quarantine_dir: PathBuf,
    /// The index, behind a lock only so that a failed one can be swapped
    /// for a reopened one (see [`ChunkStore::recover_index`]).
    index: std::sync::RwLock<Arc<dyn ChunkIndex>>,
    index_path: PathBuf,
    /// Set when an index operation failed on I/O (sled stays failed after a
    /// disk-full until it is reopened): the server reports no free space,
    /// so placement skips it, until the index is back.
    index_failed: Arc<std::sync::atomic::AtomicBool>,
    /// Serializes the commit (rename + index update) and removal of chunks
    /// that share a stripe; everything else runs unlocked.
    stripes: Vec<Mutex<()>>,
    capacity_bytes: Option<u64>,
    /// Sum of the lengths of indexed chunks, kept in step with the index.
    used_bytes: AtomicU64,
    chunk_count: AtomicU64,
    /// Makes temp file names unique among concurrent writers of one chunk.
    tmp_seq: AtomicU64,
    /// Chunks stored (true) or removed (false) since the metaserver last
    /// heard of them; the heartbeat drains it. The last event per chunk wins.
    changes: Mutex<HashMap<ChunkId, bool>>,
    /// Chunk files are encrypted with this key (see [`crate::at_rest`]).
    encryption: Option<AtRestKey>,
}

impl ChunkStore {
    /// Opens (or creates) the store, deleting leftover temp files and
    /// reconciling the index with the chunk files on disk. A missing or
    /// unreadable index is rebuilt from the files. Blocking.
    pub fn open(config: &StoreConfig) -> Result<(Self, OpenReport)> {
        let data_dir = config.data_dir.clone();
        let chunks_dir = data_dir.join("chunks");
        let tmp_dir = data_dir.join("tmp");
        let quarantine_dir = data_dir.join("quarantine");
        for dir in [&data_dir, &chunks_dir, &tmp_dir, &quarantine_dir] {
            fs::create_dir_all(dir)
                .map_err(|e| ChunkError::io(None, format!("creating {}", dir.display()), e))?;
        }
        let mut report = OpenReport {
            temp_files_removed: clear_dir(&tmp_dir)?,
            ..OpenReport::default()
        };
        if report.temp_files_removed > 0 {
            info!(
                count = report.temp_files_removed,
                "removed temp files of interrupted writes"
            );
        }

        let index_path = data_dir.join("index");
        let (index, rebuilt) = open_index(&index_path)?;
        report.index_rebuilt = rebuilt;
        let index_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));

        let inner = Inner {
            data_dir,
            chunks_dir,
            tmp_dir,
            quarantine_dir,
            index: std::sync::RwLock::new(Arc::new(GuardedIndex {
                inner: index,
                failed: index_failed.clone(),
            })),
            index_path,
            index_failed,
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            capacity_bytes: config.capacity_bytes,
            used_bytes: AtomicU64::new(0),
            chunk_count: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
            changes: Mutex::new(HashMap::new()),
            encryption: config.encryption.clone(),
        };
        inner.reconcile(&mut report)?;
        at_rest::check_store(
            &inner.data_dir,
            inner.encryption.as_ref(),
            report.chunks > 0,
        )
        .map_err(ChunkError::AtRest)?;
        info!(
            chunks = report.chunks,
            bytes = report.bytes,
            added = report.added_to_index,
            dropped = report.dropped_from_index,
            "chunk store open at {}",
            inner.data_dir.display()
        );
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            report,
        ))
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// False while the index is failed (after an I/O error, such as a full
    /// disk) and not yet reopened.
    pub fn index_healthy(&self) -> bool {
        !self.inner.index_failed.load(Ordering::Relaxed)
    }

    /// Marks the index failed, as an I/O error in it would (for tests of
    /// the recovery: a full disk cannot be made to hit sled's own writes on
    /// cue).
    #[doc(hidden)]
    pub fn mark_index_failed(&self) {
        self.inner.index_failed.store(true, Ordering::Relaxed);
    }

    /// When the index has failed, reopens it (rebuilding it from the chunk
    /// files when it cannot be read) and reconciles it with the files, as
    /// at start-up. Returns true when it recovered; false when it was
    /// healthy or cannot be reopened yet (the disk is still full, say), in
    /// which case it stays failed and the next call tries again.
    pub async fn recover_index(&self) -> Result<bool> {
        if self.index_healthy() {
            return Ok(false);
        }
        let inner = self.inner.clone();
        blocking(move || inner.recover_index()).await
    }

    /// `<data-dir>/chunks/<hex[0..2]>/<hex[2..4]>/<hex>`.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.inner.chunk_path(id)
    }

    /// True when the chunk is indexed and its file exists.
    pub async fn contains(&self, id: ChunkId) -> Result<bool> {
        let inner = self.inner.clone();
        blocking(move || inner.contains(&id)).await
    }

    /// Verifies that `pieces` hash to `id` and stores them durably. Nothing
    /// is stored on a mismatch. Idempotent.
    pub async fn put(&self, id: ChunkId, pieces: Vec<Bytes>) -> Result<PutOutcome> {
        let length: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        if length > MAX_CHUNK_BYTES {
            return Err(ChunkError::TooLarge {
                id,
                length,
                max: MAX_CHUNK_BYTES,
            });
        }
        let inner = self.inner.clone();
        blocking(move || inner.put(id, &pieces, length)).await
    }

    /// Reads `length` bytes (None: to the end) of a chunk from `offset`.
    /// With `verify`, the whole chunk is re-hashed before any byte is
    /// returned, and a chunk that fails is quarantined and reported as
    /// [`ChunkError::Corrupt`].
    pub async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        length: Option<u64>,
        verify: bool,
    ) -> Result<ChunkRead> {
        let inner = self.inner.clone();
        blocking(move || inner.read(id, offset, length, verify)).await
    }

    /// The open file of chunk `id` and the range to send from it, for the
    /// bulk read path (`crate::bulk`). Blocking; never verifies: the caller
    /// hashes what it receives.
    pub fn open_range_blocking(
        &self,
        id: ChunkId,
        offset: u64,
        length: Option<u64>,
    ) -> Result<OpenRange> {
        match self.inner.read(id, offset, length, false)? {
            ChunkRead::Stream {
                chunk_length,
                reader,
            } => Ok(OpenRange {
                file: reader.file,
                chunk_length,
                offset,
                length: reader.remaining,
                cipher: reader.cipher,
            }),
            ChunkRead::Verified { .. } => unreachable!("unverified reads stream from the file"),
        }
    }

    /// Re-hashes each chunk from disk. A copy that no longer matches its id
    /// is quarantined (its removal reaches the metaserver with the next
    /// heartbeat); a good one has its verification time recorded.
    pub async fn verify(&self, ids: Vec<ChunkId>) -> Result<Vec<Verdict>> {
        let inner = self.inner.clone();
        blocking(move || ids.iter().map(|id| inner.verify(*id)).collect()).await
    }

    /// Deletes chunks; returns how many were stored.
    pub async fn delete(&self, ids: Vec<ChunkId>) -> Result<u64> {
        let inner = self.inner.clone();
        blocking(move || inner.delete(&ids)).await
    }

    /// Which of `ids` are stored (by the index).
    pub async fn has(&self, ids: Vec<ChunkId>) -> Result<Vec<bool>> {
        Ok(self
            .lengths(ids)
            .await?
            .into_iter()
            .map(|l| l.is_some())
            .collect())
    }

    /// The stored length of each of `ids` (None: not stored here).
    pub async fn lengths(&self, ids: Vec<ChunkId>) -> Result<Vec<Option<u64>>> {
        let inner = self.inner.clone();
        blocking(move || {
            ids.iter()
                .map(|id| Ok(inner.index().get(id)?.map(|entry| entry.length)))
                .collect()
        })
        .await
    }

    /// Up to `limit` chunks after `after`, in id order, and whether more follow.
    pub async fn list(
        &self,
        after: Option<ChunkId>,
        limit: usize,
    ) -> Result<(Vec<(ChunkId, IndexEntry)>, bool)> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut page = inner.index().page(after.as_ref(), limit + 1)?;
            let more = page.len() > limit;
            page.truncate(limit);
            Ok((page, more))
        })
        .await
    }

    pub async fn stats(&self) -> Result<StoreStats> {
        let inner = self.inner.clone();
        blocking(move || inner.stats()).await
    }

    /// Chunks stored and removed since the last call, for the heartbeat.
    pub fn take_changes(&self) -> (Vec<ChunkId>, Vec<ChunkId>) {
        let changes =
            std::mem::take(&mut *self.inner.changes.lock().unwrap_or_else(|p| p.into_inner()));
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for (id, present) in changes {
            if present {
                added.push(id);
            } else {
                removed.push(id);
            }
        }
        (added, removed)
    }

    /// Puts back changes a heartbeat failed to deliver (newer events win).
    pub fn requeue_changes(&self, added: &[ChunkId], removed: &[ChunkId]) {
        let mut changes = self.inner.changes.lock().unwrap_or_else(|p| p.into_inner());
        for (ids, present) in [(added, true), (removed, false)] {
            for id in ids {
                changes.entry(*id).or_insert(present);
            }
        }
    }

    /// Makes the index durable (at shutdown; chunk files are already).
    pub async fn flush(&self) -> Result<()> {
        let inner = self.inner.clone();
        blocking(move || Ok(inner.index().flush()?)).await
    }
}

/// Runs blocking store work off the async worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(ChunkError::Io {
            context: "chunk store task failed".into(),
            source: io::Error::other(join.to_string()),
        }),
    }
}

impl Inner {
    fn index(&self) -> Arc<dyn ChunkIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn chunk_dir(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks_dir.join(&hex[0..2]).join(&hex[2..4])
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.chunk_dir(id).join(id.to_hex())
    }

    fn stripe(&self, id: &ChunkId) -> std::sync::MutexGuard<'_, ()> {
        let lock = &self.stripes[id.as_bytes()[0] as usize % LOCK_STRIPES];
        lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn contains(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.index().get(id)?.is_some() && self.chunk_path(id).exists())
    }

    fn put(&self, id: ChunkId, pieces: &[Bytes], length: u64) -> Result<PutOutcome> {
        if self.contains(&id)? {
            return Ok(PutOutcome::AlreadyStored);
        }
        // Hash and write+fsync the temp file at the same time (the hash is
        // off the critical path of a big chunk), without holding any lock.
        // The temp file is invisible, and deleted on a mismatch.
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let temp = TempFile(Some(self.tmp_dir.join(format!("{id}.{seq}"))));
        let temp_path = temp.path();
        let write_temp = || -> Result<()> {
            let mut file = File::create(temp_path)
                .map_err(|e| ChunkError::io(Some(id), "creating temp file", e))?;
            let mut cipher = self.encryption.as_ref().map(|key| key.cipher(&id, 0));
            let mut sealed = Vec::new();
            for piece in pieces {
                let bytes: &[u8] = match &mut cipher {
                    None => piece,
                    Some(cipher) => {
                        sealed.clear();
                        sealed.extend_from_slice(piece);
                        cipher.apply(&mut sealed);
                        &sealed
                    }
                };
                file.write_all(bytes)
                    .map_err(|e| ChunkError::io(Some(id), "writing temp file", e))?;
            }
            file.sync_all()
                .map_err(|e| ChunkError::io(Some(id), "fsyncing temp file", e))
        };
        let (actual, written) = if length >= PARALLEL_HASH_MIN_BYTES {
            std::thread::scope(|scope| {
                let hashing = scope.spawn(|| hash_pieces(pieces));
                let written = write_temp();
                (hashing.join().expect("hash thread"), written)
            })
        } else {
            let actual = hash_pieces(pieces);
            let written = if actual == id { write_temp() } else { Ok(()) };
            (actual, written)
        };
        if actual != id {
            return Err(ChunkError::HashMismatch {
                expected: id,
                actual,
            });
        }
        written?;

        // Commit: rename into place, fsync the directory, index it.
        let _guard = self.stripe(&id);
        let final_path = self.chunk_path(&id);
        if self.index().get(&id)?.is_some() && final_path.exists() {
            return Ok(PutOutcome::AlreadyStored); // a concurrent put won
        }
        let dir = self.ensure_chunk_dir(&id)?;
        fs::rename(temp_path, &final_path)
            .map_err(|e| ChunkError::io(Some(id), "renaming chunk into place", e))?;
        temp.disarm();
        fsync_dir(&dir)?;
        let entry = IndexEntry {
            length,
            stored_at_unix_ms: now_ms(),
            last_verified_unix_ms: 0,
            state: ChunkState::Stored,
        };
        if let Err(e) = self.index_insert(&id, &entry) {
            // Not acknowledged, so not kept: the files and the index agree.
            if fs::remove_file(&final_path).is_ok() {
                let _ = fsync_dir(&dir);
            }
            return Err(e);
        }
        Ok(PutOutcome::Stored)
    }

    /// Creates `chunks/ab/cd` if needed, fsyncing each parent whose entries
    /// changed so the new directories survive a crash.
    fn ensure_chunk_dir(&self, id: &ChunkId) -> Result<PathBuf> {
        let leaf = self.chunk_dir(id);
        if leaf.is_dir() {
            return Ok(leaf);
        }
        let mid = leaf.parent().expect("chunk dir has a parent").to_path_buf();
        for (dir, parent) in [(&mid, &self.chunks_dir), (&leaf, &mid)] {
            match fs::create_dir(dir) {
                Ok(()) => fsync_dir(parent)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(ChunkError::io(
                        Some(*id),
                        format!("creating {}", dir.display()),
                        e,
                    ));
                }
            }
        }
        Ok(leaf)
    }

    fn read(
        &self,
        id: ChunkId,
        offset: u64,
        length: Option<u64>,
        verify: bool,
    ) -> Result<ChunkRead> {
        let Some(entry) = self.index().get(&id)? else {
            return Err(ChunkError::NotFound { id });
        };
        let chunk_length = entry.length;
        let length = match length {
            Some(len) => len,
            None => chunk_length.saturating_sub(offset),
        };
        if offset > chunk_length || length > chunk_length - offset {
            return Err(ChunkError::OutOfRange {
                id,
                offset,
                length,
                chunk_length,
            });
        }
        let path = self.chunk_path(&id);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let _guard = self.stripe(&id);
                // A put may have stored the chunk again in the meantime.
                if !path.exists() {
                    warn!(chunk = %id, "indexed chunk has no file; dropping it from the index");
                    self.index_remove(&id)?;
                }
                return Err(ChunkError::NotFound { id });
            }
            Err(e) => return Err(ChunkError::io(None, format!("opening chunk {id}"), e)),
        };
        if !verify {
            file.seek(io::SeekFrom::Start(offset))
                .map_err(|e| ChunkError::io(None, format!("seeking in chunk {id}"), e))?;
            return Ok(ChunkRead::Stream {
                chunk_length,
                reader: RangeReader {
                    id,
                    file,
                    remaining: length,
                    cipher: self.encryption.as_ref().map(|key| key.cipher(&id, offset)),
                },
            });
        }
        // Verified read: the whole chunk is hashed before a byte leaves.
        let mut data = Vec::with_capacity(chunk_length as usize);
        (&mut file)
            .take(MAX_CHUNK_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| ChunkError::io(None, format!("reading chunk {id}"), e))?;
        if let Some(key) = &self.encryption {
            key.cipher(&id, 0).apply(&mut data);
        }
        let actual = ChunkId::of(&data);
        if actual != id {
            self.quarantine(&id, &actual, &file)?;
            return Err(ChunkError::Corrupt { id, actual });
        }
        let data = Bytes::from(data);
        Ok(ChunkRead::Verified {
            chunk_length,
            data: data.slice(offset as usize..(offset + length) as usize),
        })
    }

    fn verify(&self, id: ChunkId) -> Result<Verdict> {
        match self.read(id, 0, None, true) {
            Ok(_) => {
                let _guard = self.stripe(&id);
                if let Some(entry) = self.index().get(&id)? {
                    let entry = IndexEntry {
                        last_verified_unix_ms: now_ms(),
                        ..entry
                    };
                    self.index().insert(&id, &entry)?;
                }
                Ok(Verdict::Ok)
            }
            Err(ChunkError::Corrupt { .. }) => Ok(Verdict::Corrupt),
            Err(ChunkError::NotFound { .. }) => Ok(Verdict::Missing),
            Err(e) => Err(e),
        }
    }

    /// Moves a chunk whose bytes hash to `actual` out of service, keeping the
    /// bytes under `quarantine/` for inspection.
    /// `read` is the handle the bad bytes came from: only that very file is
    /// quarantined, never a good copy stored at the same path since.
    fn quarantine(&self, id: &ChunkId, actual: &ChunkId, read: &File) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let _guard = self.stripe(id);
        let from = self.chunk_path(id);
        let same_file = match (read.metadata(), fs::metadata(&from)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !same_file {
            return Ok(()); // already quarantined (and perhaps stored again)
        }
        let to = self.quarantine_dir.join(format!("{id}.{}", now_ms()));
        match fs::rename(&from, &to) {
            Ok(()) => {
                fsync_dir(&self.quarantine_dir)?;
                fsync_dir(&self.chunk_dir(id))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ChunkError::io(None, format!("quarantining chunk {id}"), e)),
        }
        self.index_remove(id)?;
        warn!(chunk = %id, actual = %actual, quarantined = %to.display(),
            "chunk bytes do not match their id; copy quarantined");
        Ok(())
    }

    fn delete(&self, ids: &[ChunkId]) -> Result<u64> {
        let mut deleted = 0;
        let mut dirs = Vec::new();
        for id in ids {
            let _guard = self.stripe(id);
            let removed_file = match fs::remove_file(self.chunk_path(id)) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(ChunkError::io(None, format!("deleting chunk {id}"), e)),
            };
            let was_indexed = self.index_remove(id)?;
            if removed_file {
                dirs.push(self.chunk_dir(id));
            }
            if removed_file || was_indexed {
                deleted += 1;
            }
        }
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            fsync_dir(&dir)?;
        }
        Ok(deleted)
    }

    fn stats(&self) -> Result<StoreStats> {
        let (fs_total, fs_free) = fs_space(&self.data_dir)?;
        let used_bytes = self.used_bytes.load(Ordering::Relaxed);
        let capacity_bytes = self.capacity_bytes.unwrap_or(fs_total);
        let free_bytes = if self.index_failed.load(Ordering::Relaxed) {
            0 // cannot store anything until the index is back
        } else {
            fs_free.min(capacity_bytes.saturating_sub(used_bytes))
        };
        Ok(StoreStats {
            chunk_count: self.chunk_count.load(Ordering::Relaxed),
            used_bytes,
            capacity_bytes,
            free_bytes,
        })
    }

    fn index_insert(&self, id: &ChunkId, entry: &IndexEntry) -> Result<()> {
        let previous = self.index().get(id)?;
        self.index().insert(id, entry)?;
        self.record_change(id, true);
        match previous {
            Some(old) => {
                self.used_bytes.fetch_sub(old.length, Ordering::Relaxed);
            }
            None => {
                self.chunk_count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.used_bytes.fetch_add(entry.length, Ordering::Relaxed);
        Ok(())
    }

    /// Returns true when the chunk was indexed.
    fn index_remove(&self, id: &ChunkId) -> Result<bool> {
        match self.index().remove(id)? {
            Some(old) => {
                self.record_change(id, false);
                self.used_bytes.fetch_sub(old.length, Ordering::Relaxed);
                self.chunk_count.fetch_sub(1, Ordering::Relaxed);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn record_change(&self, id: &ChunkId, present: bool) {
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*id, present);
    }

    fn recover_index(&self) -> Result<bool> {
        // Take the failed index out of service, wait for calls still using
        // it, and drop it so that its files can be opened again.
        let old = std::mem::replace(
            &mut *self.index.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(ClosedIndex),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(old);
        let reopened = (|| -> Result<GuardedIndex> {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let (index, _) = loop {
                match open_index(&self.index_path) {
                    Ok(opened) => break opened,
                    // The old engine's files stay locked for a moment.
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(e) => return Err(e),
                }
            };
            let mut report = OpenReport::default();
            self.reconcile_with(&index, &mut report, true)?;
            if report.added_to_index + report.dropped_from_index > 0 {
                info!(
                    added = report.added_to_index,
                    dropped = report.dropped_from_index,
                    "chunk index reconciled with the chunk files"
                );
            }
            Ok(GuardedIndex {
                inner: index,
                failed: self.index_failed.clone(),
            })
        })();
        match reopened {
            Ok(index) => {
                *self.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
                self.index_failed.store(false, Ordering::Relaxed);
                info!("chunk index reopened; storing chunks again");
                Ok(true)
            }
            Err(e) => {
                warn!("chunk index still unusable: {e}");
                Ok(false)
            }
        }
    }

    /// Brings the index in line with the chunk files: files are the truth.
    fn reconcile(&self, report: &mut OpenReport) -> Result<()> {
        self.reconcile_with(&*self.index(), report, false)
    }

    /// [`Inner::reconcile`] against `index`; with `report_changes`, chunks
    /// added or dropped are also queued for the metaserver (after a
    /// recovery; at start-up the full inventory tells it everything).
    fn reconcile_with(
        &self,
        index: &dyn ChunkIndex,
        report: &mut OpenReport,
        report_changes: bool,
    ) -> Result<()> {
        let on_disk = scan_chunk_files(&self.chunks_dir)?;
        let mut indexed: HashMap<ChunkId, IndexEntry> = index.all()?.into_iter().collect();
        for (id, entry) in &indexed {
            if !on_disk.contains_key(id) {
                index.remove(id)?;
                if report_changes {
                    self.record_change(id, false);
                }
                report.dropped_from_index += 1;
                warn!(chunk = %id, "index entry without a chunk file; dropped");
            } else if on_disk[id].length != entry.length {
                let fixed = IndexEntry {
                    length: on_disk[id].length,
                    ..*entry
                };
                index.insert(id, &fixed)?;
            }
        }
        indexed.retain(|id, _| on_disk.contains_key(id));
        for (id, file) in &on_disk {
            if !indexed.contains_key(id) {
                let entry = IndexEntry {
                    length: file.length,
                    stored_at_unix_ms: file.modified_unix_ms,
                    last_verified_unix_ms: 0,
                    state: ChunkState::Stored,
                };
                index.insert(id, &entry)?;
                if report_changes {
                    self.record_change(id, true);
                }
                report.added_to_index += 1;
            }
        }
        index.flush()?;
        report.chunks = on_disk.len() as u64;
        report.bytes = on_disk.values().map(|f| f.length).sum();
        self.chunk_count.store(report.chunks, Ordering::Relaxed);
        self.used_bytes.store(report.bytes, Ordering::Relaxed);
        Ok(())
    }
}

/// The index in service: every call goes to `inner`, and an I/O failure
/// marks the index failed.
struct GuardedIndex {
    inner: SledIndex,
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl GuardedIndex {
    fn watch<T>(&self, result: Result<T, IndexError>) -> Result<T, IndexError> {
        if let Err(IndexError::Sled(e)) = &result
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            warn!("chunk index failed ({e}); refusing writes until it is reopened");
        }
        result
    }
}

impl ChunkIndex for GuardedIndex {
    fn get(&self, id: &ChunkId) -> Result<Option<IndexEntry>, IndexError> {
        self.watch(self.inner.get(id))
    }
    fn insert(&self, id: &ChunkId, entry: &IndexEntry) -> Result<(), IndexError> {
        self.watch(self.inner.insert(id, entry))
    }
    fn remove(&self, id: &ChunkId) -> Result<Option<IndexEntry>, IndexError> {
        self.watch(self.inner.remove(id))
    }
    fn page(
        &self,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<(ChunkId, IndexEntry)>, IndexError> {
        self.watch(self.inner.page(after, limit))
    }
    fn all(&self) -> Result<Vec<(ChunkId, IndexEntry)>, IndexError> {
        self.watch(self.inner.all())
    }
    fn flush(&self) -> Result<(), IndexError> {
        self.watch(self.inner.flush())
    }
}

/// Stands in while a failed index is reopened: every call fails.
struct ClosedIndex;

impl ClosedIndex {
    fn closed<T>() -> Result<T, IndexError> {
        Err(IndexError::Reopening)
    }
}

impl ChunkIndex for ClosedIndex {
    fn get(&self, _: &ChunkId) -> Result<Option<IndexEntry>, IndexError> {
        Self::closed()
    }
    fn insert(&self, _: &ChunkId, _: &IndexEntry) -> Result<(), IndexError> {
        Self::closed()
    }
    fn remove(&self, _: &ChunkId) -> Result<Option<IndexEntry>, IndexError> {
        Self::closed()
    }
    fn page(
        &self,
        _: Option<&ChunkId>,
        _: usize,
    ) -> Result<Vec<(ChunkId, IndexEntry)>, IndexError> {
        Self::closed()
    }
    fn all(&self) -> Result<Vec<(ChunkId, IndexEntry)>, IndexError> {
        Self::closed()
    }
    fn flush(&self) -> Result<(), IndexError> {
        Self::closed()
    }
}

fn hash_pieces(pieces: &[Bytes]) -> ChunkId {
    let mut hasher = blake3::Hasher::new();
    for piece in pieces {
        hasher.update(piece);
    }
    ChunkId::from_array(*hasher.finalize().as_bytes())
}

/// Opens the sled index, rebuilding it when it is missing or unreadable.
/// Returns the index and whether it starts out empty for a rebuild.
fn open_index(path: &Path) -> Result<(SledIndex, bool)> {
    let existed = path.exists();
    if !existed {
        info!(
            "no chunk index at {}; building it from the chunk files",
            path.display()
        );
    }
    match SledIndex::open(path) {
        Ok(index) => Ok((index, !existed)),
        Err(e) => {
            let aside = path.with_file_name(format!("index.broken-{}", now_ms()));
            warn!(
                "chunk index at {} is unreadable ({e}); moved to {} and rebuilding it from the chunk files",
                path.display(),
                aside.display()
            );
            fs::rename(path, &aside)
                .map_err(|e| ChunkError::io(None, format!("moving aside {}", path.display()), e))?;
            Ok((SledIndex::open(path)?, true))
        }
    }
}

struct ScannedFile {
    length: u64,
    modified_unix_ms: u64,
}

/// Finds every chunk file under `chunks/`. Files whose name is not an id in
/// its right place are left alone and logged.
fn scan_chunk_files(chunks_dir: &Path) -> Result<HashMap<ChunkId, ScannedFile>> {
    let mut found = HashMap::new();
    let read_dir = |dir: &Path| {
        fs::read_dir(dir)
            .map_err(|e| ChunkError::io(None, format!("scanning {}", dir.display()), e))
    };
    for level1 in read_dir(chunks_dir)? {
        let level1 = level1.map_err(|e| ChunkError::io(None, "scanning chunks", e))?;
        if !level1.path().is_dir() {
            continue;
        }
        for level2 in read_dir(&level1.path())? {
            let level2 = level2.map_err(|e| ChunkError::io(None, "scanning chunks", e))?;
            if !level2.path().is_dir() {
                continue;
            }
            let prefix = format!(
                "{}{}",
                level1.file_name().to_string_lossy(),
                level2.file_name().to_string_lossy()
            );
            for file in read_dir(&level2.path())? {
                let file = file.map_err(|e| ChunkError::io(None, "scanning chunks", e))?;
                let name = file.file_name().to_string_lossy().into_owned();
                let id = match name.parse::<ChunkId>() {
                    Ok(id) if name.starts_with(&prefix) => id,
                    _ => {
                        warn!(path = %file.path().display(), "not a chunk file; ignored");
                        continue;
                    }
                };
                let meta = file.metadata().map_err(|e| {
                    ChunkError::io(None, format!("stat {}", file.path().display()), e)
                })?;
                let modified_unix_ms = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                found.insert(
                    id,
                    ScannedFile {
                        length: meta.len(),
                        modified_unix_ms,
                    },
                );
            }
        }
    }
    Ok(found)
}

/// Deletes every file in `dir`; returns how many.
fn clear_dir(dir: &Path) -> Result<u64> {
    let mut removed = 0;
    let entries = fs::read_dir(dir)
        .map_err(|e| ChunkError::io(None, format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| ChunkError::io(None, format!("reading {}", dir.display()), e))?;
        let path = entry.path();
        let result = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        result.map_err(|e| ChunkError::io(None, format!("removing {}", path.display()), e))?;
        removed += 1;
    }
    if removed > 0 {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ChunkError::io(None, format!("fsyncing directory {}", dir.display()), e))
}

/// (total, available to us) bytes of the file system holding `path`.
fn fs_space(path: &Path) -> Result<(u64, u64)> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| ChunkError::io(None, "data dir path", io::Error::other(e)))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(ChunkError::io(
            None,
            format!("statvfs {}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    let frsize = stat.f_frsize as u64;
    Ok((stat.f_blocks as u64 * frsize, stat.f_bavail as u64 * frsize))
}

/// Deletes its temp file when dropped, unless the file was renamed into
/// place: a failed write leaves nothing behind.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("temp file path")
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

//! The namespace: directories and committed files, as an inode tree.
//!
//! Directories and files are inodes; a directory's entries are kept in one
//! ordered map keyed by (parent inode, name), so a listing is a range scan
//! in name order and a rename of a whole directory moves one entry. The
//! namespace is a plain, deterministic struct: the Raft state machine
//! applies commands to it on every metaserver in the same order, and every
//! mutation is also recorded in a [`Journal`] so the state machine can write
//! exactly the changed keys to its store.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use shardfs_proto::{ChunkId, DfsPath};

/// The root directory's inode number.
pub const ROOT_INODE: u64 = 1;
/// Highest inode number a checked namespace may have reached (2^62: never,
/// at a million files a second, in 100,000 years).
pub const MAX_INODE: u64 = 1 << 62;

/// One chunk of a file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub length: u64,
}

/// A committed file: immutable once committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub chunks: Vec<ChunkRef>,
    pub size: u64,
    pub replication: u32,
    /// BLAKE3 over the chunk ids and lengths: equal content, equal id.
    pub content_id: ChunkId,
    pub mtime_ms: u64,
}

impl FileMeta {
    /// The content id of a chunk list: BLAKE3 over each id and its length
    /// (little-endian u64), in order.
    pub fn content_id_of(chunks: &[ChunkRef]) -> ChunkId {
        let mut hasher = blake3::Hasher::new();
        for chunk in chunks {
            hasher.update(chunk.id.as_bytes());
            hasher.update(&chunk.length.to_le_bytes());
        }
        ChunkId::from_array(*hasher.finalize().as_bytes())
    }

    /// The file's shape: every chunk 1..=MAX_CHUNK_BYTES long, at most
    /// MAX_CHUNKS_PER_FILE of them, adding up to the size; replication
    /// 1..=MAX_REPLICATION. (The leader checks what clients send; this
    /// checks again what arrives in a log entry or a snapshot.)
    pub fn check_shape(&self) -> Result<(), String> {
        use shardfs_proto::{MAX_CHUNKS_PER_FILE, MAX_REPLICATION};
        if self.chunks.len() > MAX_CHUNKS_PER_FILE {
            return Err(format!(
                "{} chunks; at most {MAX_CHUNKS_PER_FILE}",
                self.chunks.len()
            ));
        }
        if let Some(chunk) = self
            .chunks
            .iter()
            .find(|c| c.length == 0 || c.length > shardfs_proto::MAX_CHUNK_BYTES)
        {
            return Err(format!("chunk {} has length {}", chunk.id, chunk.length));
        }
        let total = self.chunks.iter().map(|c| c.length).sum::<u64>();
        if total != self.size {
            return Err(format!(
                "size {} is not the sum of its chunk lengths ({total})",
                self.size
            ));
        }
        if self.replication == 0 || self.replication > MAX_REPLICATION {
            return Err(format!(
                "replication {} is outside 1..={MAX_REPLICATION}",
                self.replication
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Inode {
    Dir { mtime_ms: u64 },
    File(FileMeta),
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        matches!(self, Inode::Dir { .. })
    }
}

/// Namespace failures; each names the path concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NsError {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: is a directory")]
    IsADirectory(String),
    #[error("{0}: directory not empty (delete it recursively to remove its contents)")]
    DirectoryNotEmpty(String),
    #[error("{0}")]
    Invalid(String),
    /// A commit whose chunks are not yet stored on enough chunk servers.
    #[error("{0}")]
    Unreplicated(String),
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub inode: Inode,
}

/// A change to persist: the key of an inode or a directory entry, and its
/// new value (None: deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Inode(u64, Option<Inode>),
    Entry(u64, String, Option<u64>),
    NextInode(u64),
}

/// What the files referencing a chunk ask of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkNeed {
    pub length: u64,
    /// The highest replication factor of the files that use it.
    pub replication: usize,
}

/// How the files use one chunk: its length and, per replication factor
/// (ascending), how many references files with that R make to it. Kept up
/// to date by every change to a file, so repair, garbage collection and
/// status never scan the files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChunkUse {
    length: u64,
    by_replication: Vec<(u32, u32)>,
}

impl ChunkUse {
    fn need(&self) -> ChunkNeed {
        ChunkNeed {
            length: self.length,
            replication: self.by_replication.last().map_or(0, |(r, _)| *r as usize),
        }
    }
}

/// The namespace's part of a [`crate::state::Journal`]: its changes, and
/// the chunks whose need changed, since it was last drained.
#[derive(Debug, Default)]
pub struct Journal {
    pub changes: Vec<Change>,
    /// Chunks whose need changed (a file using them came or went).
    pub touched: Vec<ChunkId>,
}

/// A namespace as plain rows, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceParts {
    pub inodes: Vec<(u64, Inode)>,
    pub entries: Vec<(u64, String, u64)>,
    pub next_inode: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    inodes: HashMap<u64, Inode>,
    entries: BTreeMap<(u64, String), u64>,
    next_inode: u64,
    /// Derived from the files (never stored): every referenced chunk.
    uses: HashMap<ChunkId, ChunkUse>,
}

impl Default for Namespace {
    fn default() -> Self {
        Self::new()
    }
}

impl Namespace {
    /// An empty namespace: only the root directory.
    pub fn new() -> Self {
        let mut inodes = HashMap::new();
        inodes.insert(ROOT_INODE, Inode::Dir { mtime_ms: 0 });
        Self {
            inodes,
            entries: BTreeMap::new(),
            next_inode: ROOT_INODE + 1,
            uses: HashMap::new(),
        }
    }

    /// Rebuilds a namespace from stored parts (the state machine's store).
    pub fn from_parts(
        inodes: HashMap<u64, Inode>,
        entries: BTreeMap<(u64, String), u64>,
        next_inode: u64,
    ) -> Self {
        let mut ns = Self {
            inodes,
            entries,
            next_inode: next_inode.max(ROOT_INODE + 1),
            uses: HashMap::new(),
        };
        ns.inodes
            .entry(ROOT_INODE)
            .or_insert(Inode::Dir { mtime_ms: 0 });
        let inodes = std::mem::take(&mut ns.inodes);
        for inode in inodes.values() {
            if let Inode::File(file) = inode {
                ns.count_uses(file, true);
            }
        }
        ns.inodes = inodes;
        ns
    }

    /// The namespace as plain rows: inodes, directory entries
    /// (parent, name, child) and the next inode number.
    pub fn to_parts(&self) -> NamespaceParts {
        let mut inodes: Vec<(u64, Inode)> =
            self.inodes.iter().map(|(n, i)| (*n, i.clone())).collect();
        inodes.sort_by_key(|(n, _)| *n);
        NamespaceParts {
            inodes,
            entries: self
                .entries
                .iter()
                .map(|((parent, name), child)| (*parent, name.clone(), *child))
                .collect(),
            next_inode: self.next_inode,
        }
    }

    /// Rebuilds a namespace from a snapshot's rows, refusing rows that do
    /// not form one tree under the root (see [`Namespace::check`]).
    pub fn from_rows(parts: NamespaceParts) -> Result<Self, String> {
        let ns = Self::from_parts(
            parts.inodes.into_iter().collect(),
            parts
                .entries
                .into_iter()
                .map(|(parent, name, child)| ((parent, name), child))
                .collect(),
            parts.next_inode,
        );
        ns.check()?;
        Ok(ns)
    }

    /// Checks that the inodes and entries form one tree: the root is a
    /// directory; every entry sits in an existing directory, has a plain
    /// name and names an existing inode other than the root; every other
    /// inode is named by exactly one entry and reached from the root; inode
    /// numbers stay below `next_inode`; files are well formed. Stored and
    /// received namespaces are checked before use, so a corrupt or forged
    /// one is refused instead of failing later, mid-lookup.
    pub fn check(&self) -> Result<(), String> {
        if !self.inodes.get(&ROOT_INODE).is_some_and(Inode::is_dir) {
            return Err("the root is not a directory".into());
        }
        // Inode numbers are handed out one by one; one this large is forged.
        if self.next_inode > MAX_INODE {
            return Err(format!(
                "next inode number {} is out of range",
                self.next_inode
            ));
        }
        let mut parents: HashMap<u64, u64> = HashMap::new();
        for ((parent, name), child) in &self.entries {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(format!(
                    "entry {name:?} in inode {parent} is not a plain name"
                ));
            }
            if !self.inodes.get(parent).is_some_and(Inode::is_dir) {
                return Err(format!(
                    "entry {name:?} sits in inode {parent}, not a directory"
                ));
            }
            if *child == ROOT_INODE || !self.inodes.contains_key(child) {
                return Err(format!(
                    "entry {name:?} names inode {child}, which it may not"
                ));
            }
            if parents.insert(*child, *parent).is_some() {
                return Err(format!("inode {child} is named by more than one entry"));
            }
        }
        for (number, inode) in &self.inodes {
            if *number >= self.next_inode {
                return Err(format!("inode {number} is not below the next inode number"));
            }
            if *number != ROOT_INODE && !parents.contains_key(number) {
                return Err(format!("inode {number} is in no directory"));
            }
            if let Inode::File(file) = inode {
                file.check_shape()
                    .map_err(|why| format!("file inode {number}: {why}"))?;
            }
        }
        // Every inode has one parent; walking up from each must reach the
        // root within as many steps as there are inodes (no cycles).
        for start in parents.keys() {
            let mut at = *start;
            let mut steps = 0usize;
            while at != ROOT_INODE {
                at = parents[&at];
                steps += 1;
                if steps > parents.len() {
                    return Err(format!("inode {start} is in a directory cycle"));
                }
            }
        }
        Ok(())
    }

    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    fn resolve(&self, path: &DfsPath) -> Result<u64, NsError> {
        let mut inode = ROOT_INODE;
        for name in path.components() {
            if !self.inodes[&inode].is_dir() {
                return Err(NsError::NotADirectory(path.to_string()));
            }
            inode = *self
                .entries
                .get(&(inode, name.to_string()))
                .ok_or_else(|| NsError::NotFound(path.to_string()))?;
        }
        Ok(inode)
    }

    pub fn lookup(&self, path: &DfsPath) -> Result<&Inode, NsError> {
        Ok(&self.inodes[&self.resolve(path)?])
    }

    /// Up to `limit` entries of a directory in name order, after `after`;
    /// and whether more follow. Listing a file lists that file alone.
    pub fn list(
        &self,
        path: &DfsPath,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<DirEntry>, bool), NsError> {
        let dir = self.resolve(path)?;
        if let inode @ Inode::File(_) = &self.inodes[&dir] {
            let name = path.name().unwrap_or("").to_string();
            let entry = DirEntry {
                name,
                inode: inode.clone(),
            };
            return Ok((vec![entry], false));
        }
        let start = (dir, after.unwrap_or("").to_string());
        let mut out = Vec::new();
        let mut more = false;
        for ((parent, name), child) in self.entries.range(start..) {
            if *parent != dir {
                break;
            }
            if after == Some(name.as_str()) {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(DirEntry {
                name: name.clone(),
                inode: self.inodes[child].clone(),
            });
        }
        Ok((out, more))
    }

    /// Creates a directory (and with `parents` its missing ancestors).
    /// Returns false when `parents` is set and the directory already exists.
    pub fn mkdir(
        &mut self,
        path: &DfsPath,
        parents: bool,
        mtime_ms: u64,
        journal: &mut Journal,
    ) -> Result<bool, NsError> {
        match self.resolve(path) {
            Ok(inode) if self.inodes[&inode].is_dir() => {
                return if parents {
                    Ok(false)
                } else {
                    Err(NsError::AlreadyExists(path.to_string()))
                };
            }
            Ok(_) => return Err(NsError::AlreadyExists(path.to_string())),
            Err(NsError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let parent = path.parent().expect("root always exists");
        let parent_inode = if parents {
            self.ensure_dir(&parent, mtime_ms, journal)?
        } else {
            self.existing_dir(&parent)?
        };
        let name = path.name().expect("not root").to_string();
        self.create(parent_inode, name, Inode::Dir { mtime_ms }, journal);
        Ok(true)
    }

    /// Commits `file` at `path`, creating missing parent directories. An
    /// existing file is replaced (and returned, so its chunks can be
    /// collected) unless `if_absent` is set.
    pub fn commit(
        &mut self,
        path: &DfsPath,
        file: FileMeta,
        if_absent: bool,
        journal: &mut Journal,
    ) -> Result<Option<FileMeta>, NsError> {
        if path.is_root() {
            return Err(NsError::IsADirectory(path.to_string()));
        }
        let mtime_ms = file.mtime_ms;
        let parent = self.ensure_dir(&path.parent().expect("not root"), mtime_ms, journal)?;
        let name = path.name().expect("not root").to_string();
        match self.entries.get(&(parent, name.clone())).copied() {
            Some(existing) => match &self.inodes[&existing] {
                Inode::Dir { .. } => Err(NsError::IsADirectory(path.to_string())),
                // A retried commit (its first answer lost with a leader)
                // finds its own file: done, nothing changes.
                Inode::File(old) if if_absent && same_content(old, &file) => Ok(None),
                Inode::File(_) if if_absent => Err(NsError::AlreadyExists(path.to_string())),
                Inode::File(old) => {
                    let old = old.clone();
                    self.count_uses(&old, false);
                    self.count_uses(&file, true);
                    journal.touched.extend(old.chunks.iter().map(|c| c.id));
                    journal.touched.extend(file.chunks.iter().map(|c| c.id));
                    let inode = Inode::File(file);
                    journal
                        .changes
                        .push(Change::Inode(existing, Some(inode.clone())));
                    self.inodes.insert(existing, inode);
                    Ok(Some(old))
                }
            },
            None => {
                self.create(parent, name, Inode::File(file), journal);
                Ok(None)
            }
        }
    }

    /// Moves a file or a whole directory. The destination must not exist
    /// and its parent must; a directory cannot move into itself.
    pub fn rename(
        &mut self,
        from: &DfsPath,
        to: &DfsPath,
        journal: &mut Journal,
    ) -> Result<(), NsError> {
        if from.is_root() || to.is_root() {
            return Err(NsError::Invalid("cannot rename the root directory".into()));
        }
        let inode = self.resolve(from)?;
        if to.starts_with(from) {
            return Err(NsError::Invalid(format!(
                "cannot move {from} into itself ({to})"
            )));
        }
        match self.resolve(to) {
            Ok(_) => return Err(NsError::AlreadyExists(to.to_string())),
            Err(NsError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let to_parent = self.existing_dir(&to.parent().expect("not root"))?;
        let from_parent = self.resolve(&from.parent().expect("not root"))?;
        let from_name = from.name().expect("not root").to_string();
        let to_name = to.name().expect("not root").to_string();
        self.entries.remove(&(from_parent, from_name.clone()));
        journal
            .changes
            .push(Change::Entry(from_parent, from_name, None));
        self.entries.insert((to_parent, to_name.clone()), inode);
        journal
            .changes
            .push(Change::Entry(to_parent, to_name, Some(inode)));
        Ok(())
    }

    /// Deletes a file, or a directory (non-empty ones only with
    /// `recursive`). Returns the files removed, for garbage collection.
    pub fn delete(
        &mut self,
        path: &DfsPath,
        recursive: bool,
        journal: &mut Journal,
    ) -> Result<Vec<FileMeta>, NsError> {
        if path.is_root() {
            return Err(NsError::Invalid("cannot delete the root directory".into()));
        }
        let inode = self.resolve(path)?;
        if self.inodes[&inode].is_dir() && !recursive && self.has_children(inode) {
            return Err(NsError::DirectoryNotEmpty(path.to_string()));
        }
        let parent = self.resolve(&path.parent().expect("not root"))?;
        let name = path.name().expect("not root").to_string();
        self.entries.remove(&(parent, name.clone()));
        journal.changes.push(Change::Entry(parent, name, None));
        let mut removed = Vec::new();
        let mut stack = vec![inode];
        while let Some(inode) = stack.pop() {
            let children: Vec<((u64, String), u64)> = self
                .entries
                .range((inode, String::new())..)
                .take_while(|((parent, _), _)| *parent == inode)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            for ((parent, name), child) in children {
                self.entries.remove(&(parent, name.clone()));
                journal.changes.push(Change::Entry(parent, name, None));
                stack.push(child);
            }
            if let Some(Inode::File(file)) = self.inodes.remove(&inode) {
                self.count_uses(&file, false);
                journal.touched.extend(file.chunks.iter().map(|c| c.id));
                removed.push(file);
            }
            journal.changes.push(Change::Inode(inode, None));
        }
        Ok(removed)
    }

    /// Every path below the root with its inode, sorted by path.
    pub fn walk(&self) -> Vec<(String, Inode)> {
        let mut out = Vec::new();
        let mut stack = vec![DfsPath::root()];
        while let Some(dir) = stack.pop() {
            let Ok(inode) = self.resolve(&dir) else {
                continue;
            };
            let children = self
                .entries
                .range((inode, String::new())..)
                .take_while(|((parent, _), _)| *parent == inode);
            for ((_, name), child) in children {
                let Ok(path) = dir.join(name) else { continue };
                let child = &self.inodes[child];
                if child.is_dir() {
                    stack.push(path.clone());
                }
                out.push((path.to_string(), child.clone()));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every chunk a file references, with its length and the highest
    /// replication factor among the files that use it: what repair,
    /// garbage collection and status measure the cluster against.
    pub fn chunk_needs(&self) -> impl Iterator<Item = (ChunkId, ChunkNeed)> + '_ {
        self.uses.iter().map(|(id, uses)| (*id, uses.need()))
    }

    /// What the files ask of chunk `id`; None when no file references it.
    pub fn chunk_need(&self, id: &ChunkId) -> Option<ChunkNeed> {
        self.uses.get(id).map(ChunkUse::need)
    }

    /// Whether some file references chunk `id`.
    pub fn is_referenced(&self, id: &ChunkId) -> bool {
        self.uses.contains_key(id)
    }

    /// Every file in the namespace (for reference counting chunks).
    pub fn files(&self) -> impl Iterator<Item = &FileMeta> {
        self.inodes.values().filter_map(|inode| match inode {
            Inode::File(file) => Some(file),
            Inode::Dir { .. } => None,
        })
    }

    fn has_children(&self, inode: u64) -> bool {
        self.entries
            .range((inode, String::new())..)
            .next()
            .is_some_and(|((parent, _), _)| *parent == inode)
    }

    fn existing_dir(&self, path: &DfsPath) -> Result<u64, NsError> {
        let inode = self.resolve(path)?;
        if !self.inodes[&inode].is_dir() {
            return Err(NsError::NotADirectory(path.to_string()));
        }
        Ok(inode)
    }

    /// Resolves `path` as a directory, creating it and its missing ancestors.
    fn ensure_dir(
        &mut self,
        path: &DfsPath,
        mtime_ms: u64,
        journal: &mut Journal,
    ) -> Result<u64, NsError> {
        let mut inode = ROOT_INODE;
        let mut walked = DfsPath::root();
        for name in path.components() {
            walked = walked
                .join(name)
                .map_err(|e| NsError::Invalid(e.to_string()))?;
            inode = match self.entries.get(&(inode, name.to_string())) {
                Some(child) if self.inodes[child].is_dir() => *child,
                Some(_) => return Err(NsError::NotADirectory(walked.to_string())),
                None => self.create(inode, name.to_string(), Inode::Dir { mtime_ms }, journal),
            };
        }
        Ok(inode)
    }

    fn create(&mut self, parent: u64, name: String, inode: Inode, journal: &mut Journal) -> u64 {
        let number = self.next_inode;
        self.next_inode += 1;
        journal.changes.push(Change::NextInode(self.next_inode));
        journal
            .changes
            .push(Change::Inode(number, Some(inode.clone())));
        journal
            .changes
            .push(Change::Entry(parent, name.clone(), Some(number)));
        if let Inode::File(file) = &inode {
            self.count_uses(file, true);
            journal.touched.extend(file.chunks.iter().map(|c| c.id));
        }
        self.inodes.insert(number, inode);
        self.entries.insert((parent, name), number);
        number
    }

    /// Counts the references `file` makes to its chunks in (`add`) or out.
    fn count_uses(&mut self, file: &FileMeta, add: bool) {
        let r = file.replication;
        for chunk in &file.chunks {
            let uses = self.uses.entry(chunk.id).or_insert_with(|| ChunkUse {
                length: chunk.length,
                by_replication: Vec::new(),
            });
            let at = uses.by_replication.partition_point(|(x, _)| *x < r);
            match uses.by_replication.get_mut(at) {
                Some((x, count)) if *x == r => {
                    if add {
                        *count += 1;
                    } else {
                        *count -= 1;
                        if *count == 0 {
                            uses.by_replication.remove(at);
                        }
                    }
                }
                _ => {
                    // Every file's chunks are counted when the file comes.
                    debug_assert!(add, "chunk {} was never counted", chunk.id);
                    if add {
                        uses.by_replication.insert(at, (r, 1));
                    }
                }
            }
            if uses.by_replication.is_empty() {
                self.uses.remove(&chunk.id);
            }
        }
    }
}

/// Two commits of the same content (chunks, size and replication).
fn same_content(a: &FileMeta, b: &FileMeta) -> bool {
    a.content_id == b.content_id && a.size == b.size && a.replication == b.replication
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(path: &str) -> DfsPath {
        DfsPath::parse(path).unwrap()
    }

    fn file(seed: u8, mtime_ms: u64) -> FileMeta {
        let chunks = vec![ChunkRef {
            id: ChunkId::of(&[seed]),
            length: 1,
        }];
        FileMeta {
            content_id: FileMeta::content_id_of(&chunks),
            chunks,
            size: 1,
            replication: 3,
            mtime_ms,
        }
    }

    fn names(ns: &Namespace, path: &str) -> Vec<String> {
        let (entries, _) = ns.list(&p(path), None, usize::MAX).unwrap();
        entries.into_iter().map(|e| e.name).collect()
    }

    /// What the files ask of each chunk, computed from scratch.
    fn needs_by_scan(ns: &Namespace) -> BTreeMap<ChunkId, ChunkNeed> {
        let mut needs: BTreeMap<ChunkId, ChunkNeed> = BTreeMap::new();
        for file in ns.files() {
            for chunk in &file.chunks {
                let need = needs.entry(chunk.id).or_insert(ChunkNeed {
                    length: chunk.length,
                    replication: 0,
                });
                need.replication = need.replication.max(file.replication as usize);
            }
        }
        needs
    }

    /// The chunk index kept by commits, replacements, renames and deletes
    /// always equals a scan of the files, including chunks shared by files
    /// of different R and chunks repeated within a file.
    #[test]
    fn check_refuses_rows_that_are_not_one_tree() {
        let dir = || Inode::Dir { mtime_ms: 0 };
        let rows = |inodes: Vec<(u64, Inode)>, entries: Vec<(u64, &str, u64)>| NamespaceParts {
            inodes,
            entries: entries
                .into_iter()
                .map(|(p, n, c)| (p, n.to_string(), c))
                .collect(),
            next_inode: 10,
        };
        let good = rows(
            vec![(1, dir()), (2, dir()), (3, dir())],
            vec![(1, "a", 2), (2, "b", 3)],
        );
        Namespace::from_rows(good).unwrap();
        for (why, parts) in [
            ("dangling", rows(vec![(1, dir())], vec![(1, "a", 7)])),
            ("orphan", rows(vec![(1, dir()), (2, dir())], vec![])),
            (
                "cycle",
                rows(
                    vec![(1, dir()), (2, dir()), (3, dir())],
                    vec![(2, "x", 3), (3, "y", 2)],
                ),
            ),
            (
                "two parents",
                rows(vec![(1, dir()), (2, dir())], vec![(1, "a", 2), (1, "b", 2)]),
            ),
            ("root as child", rows(vec![(1, dir())], vec![(1, "a", 1)])),
            (
                "slash",
                rows(vec![(1, dir()), (2, dir())], vec![(1, "a/b", 2)]),
            ),
            (
                "beyond next",
                NamespaceParts {
                    next_inode: 2,
                    ..rows(vec![(1, dir()), (5, dir())], vec![(1, "a", 5)])
                },
            ),
            (
                "huge counter",
                NamespaceParts {
                    next_inode: u64::MAX,
                    ..rows(vec![(1, dir())], vec![])
                },
            ),
        ] {
            assert!(Namespace::from_rows(parts).is_err(), "{why} accepted");
        }
    }

    #[test]
    fn chunk_needs_follow_every_change() {
        let chunk = |n: u8| ChunkRef {
            id: ChunkId::of(&[n]),
            length: 10 + n as u64,
        };
        let made = |chunks: &[u8], replication: u32| {
            let chunks: Vec<ChunkRef> = chunks.iter().map(|n| chunk(*n)).collect();
            FileMeta {
                content_id: FileMeta::content_id_of(&chunks),
                size: chunks.iter().map(|c| c.length).sum(),
                chunks,
                replication,
                mtime_ms: 1,
            }
        };
        let mut ns = Namespace::new();
        let mut j = Journal::default();
        let check = |ns: &Namespace| {
            let indexed: BTreeMap<ChunkId, ChunkNeed> = ns.chunk_needs().collect();
            assert_eq!(indexed, needs_by_scan(ns));
        };
        ns.commit(&p("/d/a"), made(&[1, 2, 2], 3), false, &mut j)
            .unwrap();
        ns.commit(&p("/d/b"), made(&[2, 3], 5), false, &mut j)
            .unwrap();
        check(&ns);
        assert_eq!(ns.chunk_need(&chunk(2).id).unwrap().replication, 5);
        ns.commit(&p("/d/b"), made(&[3, 4], 2), false, &mut j)
            .unwrap();
        check(&ns);
        assert_eq!(ns.chunk_need(&chunk(2).id).unwrap().replication, 3);
        ns.rename(&p("/d"), &p("/e"), &mut j).unwrap();
        ns.commit(&p("/f"), made(&[1], 1), false, &mut j).unwrap();
        check(&ns);
        ns.delete(&p("/e/a"), false, &mut j).unwrap();
        check(&ns);
        assert!(!ns.is_referenced(&chunk(2).id));
        assert_eq!(ns.chunk_need(&chunk(1).id).unwrap().replication, 1);
        ns.delete(&p("/e"), true, &mut j).unwrap();
        check(&ns);
        assert_eq!(ns.chunk_needs().count(), 1);
        ns.delete(&p("/f"), false, &mut j).unwrap();
        assert_eq!(ns.chunk_needs().count(), 0);
    }

    #[test]
    fn mkdir_commit_lookup_list() {
        let mut ns = Namespace::new();
        let mut j = Journal::default();
        assert!(ns.mkdir(&p("/a/b"), true, 1, &mut j).unwrap());
        assert!(!ns.mkdir(&p("/a/b"), true, 1, &mut j).unwrap());
        assert_eq!(
            ns.mkdir(&p("/a/b"), false, 1, &mut j),
            Err(NsError::AlreadyExists("/a/b".into()))
        );
        assert_eq!(
            ns.mkdir(&p("/x/y"), false, 1, &mut j),
            Err(NsError::NotFound("/x".into()))
        );
        assert_eq!(
            ns.commit(&p("/a/b/f2"), file(2, 5), false, &mut j),
            Ok(None)
        );
        assert_eq!(
            ns.commit(&p("/a/b/f1"), file(1, 5), false, &mut j),
            Ok(None)
        );
        // Parents are created by a commit.
        ns.commit(&p("/d/e/f"), file(3, 5), false, &mut j).unwrap();
        assert!(ns.lookup(&p("/d/e")).unwrap().is_dir());
        assert_eq!(names(&ns, "/a/b"), ["f1", "f2"]);
        assert_eq!(names(&ns, "/"), ["a", "d"]);
        assert_eq!(ns.lookup(&p("/a/b/f1")).unwrap(), &Inode::File(file(1, 5)));
        assert_eq!(
            ns.lookup(&p("/a/b/f1/x")),
            Err(NsError::NotADirectory("/a/b/f1/x".into()))
        );
        // A file under a file, a directory over a file.
        assert_eq!(
            ns.commit(&p("/a/b/f1/x"), file(4, 5), false, &mut j),
            Err(NsError::NotADirectory("/a/b/f1".into()))
        );
        assert_eq!(
            ns.commit(&p("/a/b"), file(4, 5), false, &mut j),
            Err(NsError::IsADirectory("/a/b".into()))
        );
    }

    #[test]
    fn overwrite_and_create_if_absent() {
        let mut ns = Namespace::new();
        let mut j = Journal::default();
        ns.commit(&p("/f"), file(1, 1), false, &mut j).unwrap();
        assert_eq!(
            ns.commit(&p("/f"), file(2, 2), true, &mut j),
            Err(NsError::AlreadyExists("/f".into()))
        );
        assert_eq!(ns.lookup(&p("/f")).unwrap(), &Inode::File(file(1, 1)));
        assert_eq!(
            ns.commit(&p("/f"), file(2, 2), false, &mut j),
            Ok(Some(file(1, 1)))
        );
        assert_eq!(ns.lookup(&p("/f")).unwrap(), &Inode::File(file(2, 2)));
        // A retried create-if-absent of the same content succeeds and
        // changes nothing (not even the time).
        assert_eq!(ns.commit(&p("/f"), file(2, 9), true, &mut j), Ok(None));
        assert_eq!(ns.lookup(&p("/f")).unwrap(), &Inode::File(file(2, 2)));
    }

    #[test]
    fn paged_listing() {
        let mut ns = Namespace::new();
        let mut j = Journal::default();
        for i in 0..25 {
            ns.commit(&p(&format!("/d/f{i:02}")), file(i, 1), false, &mut j)
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = ns.list(&p("/d"), after.as_deref(), 10).unwrap();
            after = page.last().map(|e| e.name.clone());
            seen.extend(page.into_iter().map(|e| e.name));
            if !more {
                break;
            }
        }
        assert_eq!(
            seen,
            (0..25).map(|i| format!("f{i:02}")).collect::<Vec<_>>()
        );
    }

    #[test]
    fn rename_files_and_directories() {
        let mut ns = Namespace::new();
        let mut j = Journal::default();
        ns.commit(&p("/a/b/f"), file(1, 1), false, &mut j).unwrap();
        ns.mkdir(&p("/z"), false, 1, &mut j).unwrap();
        ns.rename(&p("/a/b"), &p("/z/c"), &mut j).unwrap();
        assert_eq!(ns.lookup(&p("/z/c/f")).unwrap(), &Inode::File(file(1, 1)));
        assert_eq!(ns.lookup(&p("/a/b")), Err(NsError::NotFound("/a/b".into())));
        assert!(matches!(
            ns.rename(&p("/z"), &p("/z/c/inside"), &mut j),
            Err(NsError::Invalid(_))
        ));
        ns.commit(&p("/g"), file(2, 1), false, &mut j).unwrap();
        assert_eq!(
            ns.rename(&p("/g"), &p("/z/c/f"), &mut j),
            Err(NsError::AlreadyExists("/z/c/f".into()))
        );
        assert_eq!(
            ns.rename(&p("/g"), &p("/nope/g"), &mut j),
            Err(NsError::NotFound("/nope".into()))
        );
        assert_eq!(
            ns.rename(&p("/missing"), &p("/m2"), &mut j),
            Err(NsError::NotFound("/missing".into()))
        );
        ns.rename(&p("/g"), &p("/z/g2"), &mut j).unwrap();
        assert_eq!(names(&ns, "/z"), ["c", "g2"]);
        let paths: Vec<String> = ns.walk().into_iter().map(|(path, _)| path).collect();
        assert_eq!(paths, ["/a", "/z", "/z/c", "/z/c/f", "/z/g2"]);
    }

    #[test]
    fn delete_files_and_trees() {
        let mut ns = Namespace::new();
        let mut j = Journal::default();
        ns.commit(&p("/t/a/1"), file(1, 1), false, &mut j).unwrap();
        ns.commit(&p("/t/a/2"), file(2, 1), false, &mut j).unwrap();
        ns.commit(&p("/t/3"), file(3, 1), false, &mut j).unwrap();
        assert_eq!(
            ns.delete(&p("/t"), false, &mut j),
            Err(NsError::DirectoryNotEmpty("/t".into()))
        );
        assert!(matches!(
            ns.delete(&p("/"), true, &mut j),
            Err(NsError::Invalid(_))
        ));
        let removed = ns.delete(&p("/t/3"), false, &mut j).unwrap();
        assert_eq!(removed, vec![file(3, 1)]);
        let mut removed = ns.delete(&p("/t"), true, &mut j).unwrap();
        removed.sort_by_key(|f| f.chunks[0].id);
        let mut want = vec![file(1, 1), file(2, 1)];
        want.sort_by_key(|f| f.chunks[0].id);
        assert_eq!(removed, want);
        assert_eq!(ns.inode_count(), 1, "only the root is left");
        assert!(names(&ns, "/").is_empty());
        assert_eq!(ns.files().count(), 0);
    }

    #[test]
    fn journal_replays_to_the_same_namespace() {
        let mut ns = Namespace::new();
        let mut j = Journal::default();
        ns.commit(&p("/a/b/f"), file(1, 1), false, &mut j).unwrap();
        ns.mkdir(&p("/c"), false, 2, &mut j).unwrap();
        ns.rename(&p("/a/b"), &p("/c/b"), &mut j).unwrap();
        ns.commit(&p("/c/b/f"), file(2, 3), false, &mut j).unwrap();
        ns.delete(&p("/a"), true, &mut j).unwrap();
        let mut inodes = HashMap::new();
        let mut entries = BTreeMap::new();
        let mut next = 0;
        inodes.insert(ROOT_INODE, Inode::Dir { mtime_ms: 0 });
        for change in j.changes {
            match change {
                Change::Inode(n, Some(inode)) => {
                    inodes.insert(n, inode);
                }
                Change::Inode(n, None) => {
                    inodes.remove(&n);
                }
                Change::Entry(parent, name, Some(child)) => {
                    entries.insert((parent, name), child);
                }
                Change::Entry(parent, name, None) => {
                    entries.remove(&(parent, name));
                }
                Change::NextInode(n) => next = n,
            }
        }
        assert_eq!(Namespace::from_parts(inodes, entries, next), ns);
    }
}

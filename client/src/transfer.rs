//! Whole-file and whole-tree transfers between the local disk and the
//! cluster. A get writes `<name>.shardfs-part` and renames it into place
//! only once every byte arrived verified; tree transfers move many files at
//! once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use shardfs_proto::meta::v1 as pb;
use shardfs_proto::{ChunkId, DfsPath};

use crate::client::{Client, parse};
use crate::error::{ClientError, Result};
use crate::put::{Progress, PutOptions, PutStats, check_file_size};
use crate::read::{ChunkData, FileLayout};

/// What a get did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GetStats {
    pub files: u64,
    pub bytes: u64,
}

/// A file found under a remote directory.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    pub path: DfsPath,
    /// The path below the walked directory ("a/b.bin").
    pub relative: String,
    pub size: u64,
    /// Its chunks, as listed.
    pub info: pb::FileInfo,
}

impl Client {
    /// Fetches the chunks of `layout` in order, `parallel` at a time, and
    /// hands each verified chunk to `sink` in file order.
    pub async fn for_each_chunk<F, Fut>(
        &self,
        layout: &FileLayout,
        parallel: usize,
        mut sink: F,
    ) -> Result<()>
    where
        F: FnMut(ChunkData) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let fetches = futures::stream::iter(layout.chunks.iter().enumerate())
            .map(|(i, span)| self.spawn_fetch(&layout.path, span, i))
            .buffered(parallel.max(1));
        futures::pin_mut!(fetches);
        while let Some(data) = fetches.try_next().await? {
            sink(data).await?;
        }
        Ok(())
    }

    /// Chunks fetched at once by a get of one file: the read-ahead budget.
    fn parallel_chunks(&self, layout: &FileLayout) -> usize {
        let largest = layout
            .chunks
            .iter()
            .map(|c| c.length)
            .max()
            .unwrap_or(1)
            .max(1);
        (self.config().read_ahead_bytes / largest).clamp(1, 64) as usize
    }

    /// Downloads the file at `remote` to `local`.
    pub async fn get_file(
        &self,
        remote: &str,
        local: &Path,
        progress: Option<Progress>,
    ) -> Result<GetStats> {
        let layout = self.layout(remote).await?;
        let mut part = PartFile {
            path: part_path(local),
            done: false,
        };
        // Created here, before anything can cancel the get, so the guard
        // always finds (and removes) it.
        let mut file =
            std::fs::File::create(&part.path).map_err(|e| ClientError::local(&part.path, e))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ChunkData>(2);
        let writer = {
            let part = part.path.clone();
            tokio::task::spawn_blocking(move || -> Result<()> {
                use std::io::Write;
                while let Some(data) = rx.blocking_recv() {
                    for piece in &data.pieces {
                        file.write_all(piece)
                            .map_err(|e| ClientError::local(&part, e))?;
                    }
                }
                file.sync_all().map_err(|e| ClientError::local(&part, e))
            })
        };
        let parallel = self.parallel_chunks(&layout);
        let fetched = self
            .for_each_chunk(&layout, parallel, |data| {
                if let Some(progress) = &progress {
                    progress(data.len());
                }
                let tx = tx.clone();
                let part = part.path.clone();
                async move {
                    tx.send(data).await.map_err(|_| {
                        ClientError::local(part, std::io::Error::other("the file writer stopped"))
                    })
                }
            })
            .await;
        drop(tx);
        let written = writer.await.expect("writer task");
        // A local write error explains a stopped writer: report it first.
        written.and(fetched)?;
        std::fs::rename(&part.path, local).map_err(|e| ClientError::local(local, e))?;
        part.done = true;
        Ok(GetStats {
            files: 1,
            bytes: layout.size,
        })
    }

    /// Every file under the remote directory `root`, depth first, and every
    /// directory (relative paths, parents first). A file is its own only
    /// file.
    pub async fn walk(&self, root: &str) -> Result<(Vec<String>, Vec<RemoteFile>)> {
        let root = parse(root)?;
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        // A file walks as itself.
        let top = self.stat(root.as_str()).await?;
        if let Some(info) = top.file.filter(|_| !top.is_dir) {
            files.push(RemoteFile {
                relative: root.name().unwrap_or_default().to_string(),
                path: root,
                size: info.size,
                info,
            });
            return Ok((dirs, files));
        }
        let mut stack = vec![(root.clone(), String::new())];
        while let Some((dir, relative)) = stack.pop() {
            for entry in self.list(dir.as_str()).await? {
                let path = dir
                    .join(&entry.name)
                    .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
                let rel = if relative.is_empty() {
                    entry.name.clone()
                } else {
                    format!("{relative}/{}", entry.name)
                };
                if entry.is_dir {
                    dirs.push(rel.clone());
                    stack.push((path, rel));
                } else {
                    let info = entry.file.unwrap_or_default();
                    files.push(RemoteFile {
                        path,
                        relative: rel,
                        size: info.size,
                        info,
                    });
                }
            }
        }
        dirs.sort();
        Ok((dirs, files))
    }

    /// Downloads the remote directory `remote` into the local directory
    /// `local` (created), many files at once.
    pub async fn get_tree(
        &self,
        remote: &str,
        local: &Path,
        progress: Option<Progress>,
    ) -> Result<GetStats> {
        let (dirs, files) = self.walk(remote).await?;
        std::fs::create_dir_all(local).map_err(|e| ClientError::local(local, e))?;
        for dir in &dirs {
            let path = local.join(dir);
            std::fs::create_dir_all(&path).map_err(|e| ClientError::local(&path, e))?;
        }
        let mut stats = GetStats::default();
        let gets = futures::stream::iter(files)
            .map(|file| {
                let progress = progress.clone();
                let target = local.join(&file.relative);
                async move { self.get_file(file.path.as_str(), &target, progress).await }
            })
            .buffer_unordered(self.config().parallel_files.max(1));
        futures::pin_mut!(gets);
        while let Some(got) = gets.try_next().await? {
            stats.files += got.files;
            stats.bytes += got.bytes;
        }
        Ok(stats)
    }

    /// Uploads the local directory `local` as the remote directory `remote`
    /// (created with its parents), many files at once.
    pub async fn put_tree(
        &self,
        local: &Path,
        remote: &str,
        options: &PutOptions,
        progress: Option<Progress>,
    ) -> Result<PutStats> {
        let tree = local_tree(local)?;
        let counts = TreeCounts::default();
        self.put_local_tree(&tree, remote, options, progress, &counts)
            .await
    }

    /// Uploads a listed local tree as the remote directory `remote`, many
    /// files at once; `counts` says how far it got (also when the put is
    /// cancelled). Every file's size is checked against the chunk limit
    /// before a byte is sent. Files already stored at their target with the
    /// same content and replication are skipped when
    /// `options.skip_unchanged`; with `options.if_absent` every existing
    /// file is kept.
    pub async fn put_local_tree(
        &self,
        tree: &LocalTree,
        remote: &str,
        options: &PutOptions,
        progress: Option<Progress>,
        counts: &TreeCounts,
    ) -> Result<PutStats> {
        let root = parse(remote)?;
        tree.check_sizes(options.chunk_size.unwrap_or(self.config().chunk_size))?;
        let existing: HashMap<String, pb::FileInfo> = if options.skip_unchanged || options.if_absent
        {
            match self.walk(root.as_str()).await {
                Ok((_, files)) => files.into_iter().map(|f| (f.relative, f.info)).collect(),
                Err(ClientError::NotFound(_)) => HashMap::new(),
                Err(e) => return Err(e),
            }
        } else {
            HashMap::new()
        };
        self.mkdir(root.as_str(), true).await?;
        for dir in &tree.dirs {
            let path = join_relative(&root, dir)?;
            self.mkdir(path.as_str(), true).await?;
        }
        let replication = options.replication.unwrap_or(self.config().replication);
        let options = Arc::new(PutOptions { ..options.clone() });
        let existing = &existing;
        let puts = futures::stream::iter(tree.files.iter().cloned())
            .map(|(relative, path, size)| {
                let progress = progress.clone();
                let options = options.clone();
                let root = root.clone();
                async move {
                    let target = join_relative(&root, &relative)?;
                    if let Some(info) = existing.get(&relative) {
                        let keep = options.if_absent
                            || (info.replication == replication
                                && same_content(&path, info).await?);
                        if keep {
                            if let Some(progress) = &progress {
                                progress(size);
                            }
                            return Ok((PutStats::default(), Some(size)));
                        }
                    }
                    let put = self
                        .put_file(&path, target.as_str(), &options, progress)
                        .await?;
                    Ok((put, None))
                }
            })
            .buffer_unordered(self.config().parallel_files.max(1));
        futures::pin_mut!(puts);
        let mut stats = PutStats::default();
        while let Some((put, kept)) = puts.try_next().await? {
            match kept {
                Some(size) => {
                    counts.skipped.fetch_add(1, Ordering::Relaxed);
                    counts.skipped_bytes.fetch_add(size, Ordering::Relaxed);
                }
                None => {
                    counts.put.fetch_add(1, Ordering::Relaxed);
                    counts.put_bytes.fetch_add(put.bytes, Ordering::Relaxed);
                    if put.replaced {
                        counts.replaced.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            stats.add(&put);
        }
        Ok(stats)
    }
}

/// How far a tree put got.
#[derive(Debug, Default)]
pub struct TreeCounts {
    /// Files written (committed).
    pub put: AtomicU64,
    pub put_bytes: AtomicU64,
    /// Files left as they were (already stored with the same content, or
    /// existing when existing files are kept).
    pub skipped: AtomicU64,
    pub skipped_bytes: AtomicU64,
    /// Written files that replaced a different one.
    pub replaced: AtomicU64,
}

/// True when the local file at `path` holds exactly the chunks of `info`
/// (read and hashed off the async runtime, with the remote file's chunk
/// boundaries, so the chunk size of the earlier put does not matter).
pub async fn same_content(path: &Path, info: &pb::FileInfo) -> Result<bool> {
    let path = path.to_path_buf();
    let chunks: Vec<(Vec<u8>, u64)> = info
        .chunks
        .iter()
        .map(|c| (c.id.to_vec(), c.length))
        .collect();
    let size = info.size;
    tokio::task::spawn_blocking(move || -> Result<bool> {
        use std::io::Read;
        let mut file = std::fs::File::open(&path).map_err(|e| ClientError::local(&path, e))?;
        let len = file
            .metadata()
            .map_err(|e| ClientError::local(&path, e))?
            .len();
        if len != size {
            return Ok(false);
        }
        let mut buf = Vec::new();
        for (id, length) in chunks {
            buf.clear();
            (&mut file)
                .take(length)
                .read_to_end(&mut buf)
                .map_err(|e| ClientError::local(&path, e))?;
            if buf.len() as u64 != length || ChunkId::of(&buf).as_bytes()[..] != id[..] {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
    .map_err(|e| {
        ClientError::InvalidArgument(format!("comparing with the stored file failed: {e}"))
    })?
}

/// A download in progress, deleted unless it was renamed into place (also
/// when the get is cancelled or another file of a tree failed).
struct PartFile {
    path: PathBuf,
    done: bool,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `<local>.shardfs-part`, beside the target.
fn part_path(local: &Path) -> PathBuf {
    let mut name = local
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".shardfs-part");
    local.with_file_name(name)
}

fn join_relative(root: &DfsPath, relative: &str) -> Result<DfsPath> {
    let mut path = root.clone();
    for part in relative.split('/') {
        path = path
            .join(part)
            .map_err(|e| ClientError::InvalidArgument(format!("{relative:?}: {e}")))?;
    }
    Ok(path)
}

/// A local tree to upload.
#[derive(Debug, Default, Clone)]
pub struct LocalTree {
    /// Relative directory paths (with `/`), sorted.
    pub dirs: Vec<String>,
    /// (relative path, full path, size) of every file, sorted.
    pub files: Vec<(String, PathBuf, u64)>,
    /// Entries left out, and why (dangling symbolic links).
    pub skipped: Vec<(PathBuf, String)>,
}

impl LocalTree {
    /// Bytes in all its files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, _, size)| size).sum()
    }

    /// Refuses the tree when one of its files would need more chunks of
    /// `chunk_size` than a file may have (naming the file).
    pub fn check_sizes(&self, chunk_size: u64) -> Result<()> {
        for (_, path, size) in &self.files {
            check_file_size(*size, chunk_size)
                .map_err(|e| ClientError::InvalidArgument(format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }
}

/// Directories and files under `root` (relative paths with `/`), sorted.
/// Symbolic links are followed; a dangling one is left out (listed in
/// `skipped`); other special files are refused.
pub fn local_tree(root: &Path) -> Result<LocalTree> {
    let mut tree = LocalTree::default();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, relative)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| ClientError::local(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ClientError::local(&dir, e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                return Err(ClientError::InvalidArgument(format!(
                    "{}: the name is not valid UTF-8",
                    path.display()
                )));
            };
            let rel = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink()) =>
                {
                    let target = std::fs::read_link(&path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    tree.skipped.push((
                        path,
                        format!("a symbolic link to {target}, which does not exist"),
                    ));
                    continue;
                }
                Err(e) => return Err(ClientError::local(&path, e)),
            };
            if meta.is_dir() {
                tree.dirs.push(rel.clone());
                stack.push((path, rel));
            } else if meta.is_file() {
                tree.files.push((rel, path, meta.len()));
            } else {
                return Err(ClientError::InvalidArgument(format!(
                    "{}: not a regular file or directory",
                    path.display()
                )));
            }
        }
    }
    tree.dirs.sort();
    tree.files.sort();
    Ok(tree)
}

/// Size and mtime of a file entry, for listings.
pub fn entry_size(entry: &pb::Entry) -> u64 {
    entry.file.as_ref().map(|f| f.size).unwrap_or(0)
}

//! Whole-file and whole-tree transfers between the local disk and the
//! cluster. A get writes `<name>.shardfs-part` and renames it into place
//! only once every byte arrived verified; tree transfers move many files at
//! once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use shardfs_proto::DfsPath;
use shardfs_proto::meta::v1 as pb;

use crate::client::{Client, parse};
use crate::error::{ClientError, Result};
use crate::put::{Progress, PutOptions, PutStats};
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
    /// directory (relative paths, parents first).
    pub async fn walk(&self, root: &str) -> Result<(Vec<String>, Vec<RemoteFile>)> {
        let root = parse(root)?;
        let mut dirs = Vec::new();
        let mut files = Vec::new();
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
        let root = parse(remote)?;
        let (dirs, files) = local_tree(local)?;
        self.mkdir(root.as_str(), true).await?;
        for dir in &dirs {
            let path = join_relative(&root, dir)?;
            self.mkdir(path.as_str(), true).await?;
        }
        let options = Arc::new(PutOptions {
            no_parents: true,
            ..options.clone()
        });
        let puts = futures::stream::iter(files)
            .map(|(relative, path)| {
                let progress = progress.clone();
                let options = options.clone();
                let root = root.clone();
                async move {
                    let target = join_relative(&root, &relative)?;
                    self.put_file(&path, target.as_str(), &options, progress)
                        .await
                }
            })
            .buffer_unordered(self.config().parallel_files.max(1));
        futures::pin_mut!(puts);
        let mut stats = PutStats::default();
        while let Some(put) = puts.try_next().await? {
            stats.add(&put);
        }
        Ok(stats)
    }
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

/// A local tree: relative directory paths, and (relative path, full path)
/// of every file.
pub type LocalTree = (Vec<String>, Vec<(String, PathBuf)>);

/// Directories and files under `root` (relative paths with `/`), sorted.
/// Symbolic links are followed for files; other special files are refused.
pub fn local_tree(root: &Path) -> Result<LocalTree> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
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
            let meta = std::fs::metadata(&path).map_err(|e| ClientError::local(&path, e))?;
            if meta.is_dir() {
                dirs.push(rel.clone());
                stack.push((path, rel));
            } else if meta.is_file() {
                files.push((rel, path));
            } else {
                return Err(ClientError::InvalidArgument(format!(
                    "{}: not a regular file or directory",
                    path.display()
                )));
            }
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

/// Size and mtime of a file entry, for listings.
pub fn entry_size(entry: &pb::Entry) -> u64 {
    entry.file.as_ref().map(|f| f.size).unwrap_or(0)
}

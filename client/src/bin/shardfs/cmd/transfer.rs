//! Moving bytes between local files and the cluster: `put`, `get`, `cat`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use shardfs_client::put::check_file_size;
use shardfs_client::read::unwrap_io;
use shardfs_client::transfer::{LocalTree, TreeCounts, entry_size, local_tree};
use shardfs_client::{Client, ClientError, PutOptions, Result};
use shardfs_proto::errln;

use crate::args::{PutArgs, trim_slashes};
use crate::output::{finish, human, progress_bar};

/// Remote path `dir/name`.
pub fn remote_join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

pub async fn is_remote_dir(client: &Client, path: &str) -> Result<bool> {
    match client.stat(path).await {
        Ok(entry) => Ok(entry.is_dir),
        Err(ClientError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn local_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            ClientError::InvalidArgument(format!("{}: cannot tell the file name", path.display()))
        })
}

/// One local source of a put, checked before anything is sent.
pub enum LocalSource {
    Stdin,
    File { path: PathBuf, size: u64 },
    Tree { path: PathBuf, tree: LocalTree },
}

/// Checks every local source of a put: it exists, a directory comes with
/// -r, standard input is given once, and no file needs more chunks than a
/// file may have.
pub fn plan_local(args: &PutArgs, chunk_size: u64) -> Result<Vec<LocalSource>> {
    let into_dir = args.remote.ends_with('/') || args.sources.len() > 1;
    let mut plan = Vec::new();
    for source in &args.sources {
        if source == "-" {
            if into_dir {
                return Err(ClientError::InvalidArgument(
                    "standard input (-) needs a remote file name, not a directory".into(),
                ));
            }
            plan.push(LocalSource::Stdin);
            continue;
        }
        let path = PathBuf::from(source);
        let meta = std::fs::metadata(&path).map_err(|e| ClientError::local(&path, e))?;
        if meta.is_dir() {
            if !args.recursive {
                return Err(ClientError::InvalidArgument(format!(
                    "{source}: is a directory (use -r to upload a directory)"
                )));
            }
            let tree = local_tree(&path)?;
            tree.check_sizes(chunk_size)?;
            plan.push(LocalSource::Tree { path, tree });
        } else {
            check_file_size(meta.len(), chunk_size)
                .map_err(|e| ClientError::InvalidArgument(format!("{source}: {e}")))?;
            plan.push(LocalSource::File {
                path,
                size: meta.len(),
            });
        }
    }
    Ok(plan)
}

/// `shardfs put`. A single directory source becomes the tree `REMOTE`
/// (created, or continued when it exists: files already stored with the
/// same content are skipped), so running the same put again is safe;
/// `REMOTE/` or several sources put each one inside `REMOTE`.
pub async fn put(client: &Client, args: PutArgs, sources: Vec<LocalSource>) -> Result<()> {
    let slash = args.remote.ends_with('/');
    let dest = trim_slashes(&args.remote);
    let dest_entry = match client.stat(&dest).await {
        Ok(entry) => Some(entry),
        Err(ClientError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let dest_is_dir = dest_entry.as_ref().is_some_and(|e| e.is_dir);
    let into_dir = slash || sources.len() > 1;
    let options = PutOptions {
        if_absent: args.no_clobber,
        skip_unchanged: true,
        ..PutOptions::default()
    };
    // Where each source goes.
    let mut jobs = Vec::new();
    for source in sources {
        let target = match &source {
            LocalSource::Stdin if dest_is_dir => {
                return Err(ClientError::InvalidArgument(format!(
                    "{dest} is a directory: name a file for standard input"
                )));
            }
            LocalSource::Stdin => dest.clone(),
            LocalSource::File { path, .. } | LocalSource::Tree { path, .. }
                if into_dir || (dest_is_dir && matches!(source, LocalSource::File { .. })) =>
            {
                remote_join(&dest, &local_name(path)?)
            }
            LocalSource::Tree { .. } if dest_entry.as_ref().is_some_and(|e| !e.is_dir) => {
                return Err(ClientError::InvalidArgument(format!(
                    "{dest} is a file: a directory cannot be put over it"
                )));
            }
            _ => dest.clone(),
        };
        if let LocalSource::Tree { tree, .. } = &source {
            for (path, why) in &tree.skipped {
                errln!("shardfs: skipping {}: {why}", path.display());
            }
        }
        jobs.push((source, target));
    }
    if into_dir && !dest_is_dir {
        client.mkdir(&dest, true).await?;
    }
    let (files_total, bytes_total) = jobs.iter().fold((0u64, 0u64), |(f, b), (s, _)| match s {
        LocalSource::Stdin => (f + 1, b),
        LocalSource::File { size, .. } => (f + 1, b + size),
        LocalSource::Tree { tree, .. } => (f + tree.files.len() as u64, b + tree.bytes()),
    });
    let started = Instant::now();
    let (bar, progress) = progress_bar(bytes_total, "put");
    let counts = TreeCounts::default();
    let work = async {
        let mut stats = shardfs_client::PutStats::default();
        for (source, target) in &jobs {
            let put = match source {
                LocalSource::Stdin => {
                    let put = client
                        .put_reader(tokio::io::stdin(), target, &options, progress.clone())
                        .await
                        .map_err(|e| no_clobber_words(e, args.no_clobber))?;
                    count_single(&counts, &put);
                    put
                }
                LocalSource::File { path, .. } => {
                    if args.no_clobber && client.stat(target).await.is_ok() {
                        return Err(no_clobber_words(
                            ClientError::AlreadyExists(target.clone()),
                            true,
                        ));
                    }
                    let put = client
                        .put_file(path, target, &options, progress.clone())
                        .await
                        .map_err(|e| no_clobber_words(e, args.no_clobber))?;
                    count_single(&counts, &put);
                    put
                }
                LocalSource::Tree { tree, .. } => {
                    client
                        .put_local_tree(tree, target, &options, progress.clone(), &counts)
                        .await?
                }
            };
            stats.add(&put);
        }
        Ok::<_, ClientError>(stats)
    };
    let outcome = tokio::select! {
        done = work => Some(done),
        _ = tokio::signal::ctrl_c() => None,
    };
    finish(bar);
    let put_files = counts.put.load(Ordering::Relaxed);
    let put_bytes = counts.put_bytes.load(Ordering::Relaxed);
    let skipped = counts.skipped.load(Ordering::Relaxed);
    let skipped_bytes = counts.skipped_bytes.load(Ordering::Relaxed);
    let replaced = counts.replaced.load(Ordering::Relaxed);
    let stats = match outcome {
        Some(Ok(stats)) => stats,
        Some(Err(e)) if put_files + skipped > 0 => {
            return Err(ClientError::InvalidArgument(format!(
                "{e} ({put_files} of {files_total} file(s) were put and {skipped} already stored \
                 before it failed: run the same command again to put the rest)"
            )));
        }
        Some(Err(e)) => return Err(e),
        None => {
            errln!(
                "shardfs: interrupted: {put_files} of {files_total} file(s) put ({} of {}), {skipped} \
                 already stored; the files put are complete: run the same command again to put the rest",
                human(put_bytes + skipped_bytes),
                human(bytes_total)
            );
            std::process::exit(130);
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let mut summary = format!(
        "put {put_files} file(s), {} in {secs:.2} s ({}/s); {} chunk(s), {} already stored",
        human(stats.bytes),
        human((stats.bytes as f64 / secs.max(1e-6)) as u64),
        stats.chunks,
        stats.chunks_deduplicated
    );
    if skipped > 0 {
        let why = if args.no_clobber {
            "they exist (--no-clobber)"
        } else {
            "already stored with the same content"
        };
        summary.push_str(&format!(
            "; skipped {skipped} file(s) ({}): {why}",
            human(skipped_bytes)
        ));
    }
    if replaced > 0 {
        match jobs.as_slice() {
            [(LocalSource::Stdin | LocalSource::File { .. }, target)] => {
                summary.push_str(&format!("; replaced the existing {target}"))
            }
            _ => summary.push_str(&format!("; replaced {replaced} existing file(s)")),
        }
    }
    errln!("{summary}");
    Ok(())
}

/// Counts a single-file put in the tree counts, for one summary.
pub fn count_single(counts: &TreeCounts, put: &shardfs_client::PutStats) {
    counts.put.fetch_add(1, Ordering::Relaxed);
    counts.put_bytes.fetch_add(put.bytes, Ordering::Relaxed);
    if put.replaced {
        counts.replaced.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn no_clobber_words(e: ClientError, no_clobber: bool) -> ClientError {
    match e {
        ClientError::AlreadyExists(path) if no_clobber => {
            ClientError::InvalidArgument(format!("{path}: already exists (--no-clobber keeps it)"))
        }
        e => e,
    }
}

pub async fn get(client: &Client, remote: &str, local: &Path, recursive: bool) -> Result<()> {
    let entry = client.stat(remote).await?;
    if local == Path::new("-") {
        if entry.is_dir {
            return Err(ClientError::InvalidArgument(format!(
                "{remote}: is a directory; only a file can be written to standard output (-)"
            )));
        }
        return cat(client, &[remote.to_string()]).await;
    }
    let started = Instant::now();
    let name = shardfs_client::client::parse(remote)?
        .name()
        .unwrap_or("root")
        .to_string();
    let target = if local.is_dir() {
        local.join(&name)
    } else {
        local.to_path_buf()
    };
    if let Some(parent) = target.parent()
        && !parent.as_os_str().is_empty()
        && !parent.is_dir()
    {
        return Err(ClientError::InvalidArgument(format!(
            "{}: no such local directory",
            parent.display()
        )));
    }
    let stats = if entry.is_dir {
        if !recursive {
            return Err(ClientError::InvalidArgument(format!(
                "{remote}: is a directory (use -r to download a directory)"
            )));
        }
        let (_, files) = client.walk(remote).await?;
        let total = files.iter().map(|f| f.size).sum();
        let (bar, progress) = progress_bar(total, "get");
        let result = client.get_tree(remote, &target, progress).await;
        finish(bar);
        result?
    } else {
        let (bar, progress) = progress_bar(entry_size(&entry), "get");
        let result = client.get_file(remote, &target, progress).await;
        finish(bar);
        result?
    };
    let secs = started.elapsed().as_secs_f64();
    errln!(
        "got {} file(s), {} in {secs:.2} s ({}/s)",
        stats.files,
        human(stats.bytes),
        human((stats.bytes as f64 / secs.max(1e-6)) as u64)
    );
    Ok(())
}

pub async fn cat(client: &Client, paths: &[String]) -> Result<()> {
    let mut stdout = tokio::io::stdout();
    for path in paths {
        let mut reader = client.open(path).await?;
        match tokio::io::copy(&mut reader, &mut stdout).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(unwrap_io(path, e)),
        }
    }
    use tokio::io::AsyncWriteExt;
    let _ = stdout.flush().await;
    Ok(())
}

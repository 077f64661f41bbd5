//! `shardfs stream`: a dataset's shards as one rank of a training job
//! reads them, with cursors to resume from.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use shardfs_client::{Client, ClientError, Result};
use shardfs_proto::{errln, outln};

use crate::args::StreamArgs;
use crate::output::{finish, human, progress_bar};

pub async fn stream(client: &Client, args: StreamArgs) -> Result<()> {
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(|e| ClientError::local(out, e))?;
    }
    let mut cursors = Vec::new();
    for file in &args.resume {
        let text = std::fs::read_to_string(file).map_err(|e| ClientError::local(file, e))?;
        let cursor: shardfs_client::shards::Cursor = serde_json::from_str(&text).map_err(|e| {
            ClientError::InvalidArgument(format!(
                "{}: not a shard stream cursor: {e}",
                file.display()
            ))
        })?;
        cursors.push(cursor);
    }
    let started = Instant::now();
    let mut builder = client
        .shards(&args.prefix)
        .rank(args.rank)
        .world(args.world)
        .epoch(args.epoch)
        .seed(args.seed)
        .drop_remainder(args.drop_remainder)
        .prefetch_bytes(args.prefetch);
    builder = match cursors.len() {
        0 => builder,
        1 => builder.resume(cursors.pop().expect("one cursor")),
        _ => builder.resume_all(cursors),
    };
    let mut stream = builder.stream().await?;
    let listed = started.elapsed();
    let (planned_shards, planned_bytes) = stream.planned();
    // A bar only when the shard lines go elsewhere (a file or a pipe).
    let (bar, progress) = if std::io::stdout().is_terminal() {
        (None, None)
    } else {
        let total = match args.limit {
            Some(limit) if limit < planned_shards => planned_bytes / planned_shards.max(1) * limit,
            _ => planned_bytes,
        };
        progress_bar(total, "stream")
    };
    let (mut shards, mut bytes) = (0u64, 0u64);
    let mut waiting = std::time::Duration::ZERO;
    if let Some(file) = &args.cursor {
        save_cursor(file.clone(), stream.state()).await?;
    }
    while args.limit.is_none_or(|limit| shards < limit) {
        let asked = Instant::now();
        let Some(item) = stream.next().await else {
            break;
        };
        waiting += asked.elapsed();
        let (path, data) = item?;
        if let Some(out) = &args.out {
            let name = path.rsplit('/').next().unwrap_or("shard");
            let (target, data) = (out.join(name), data.clone());
            // Off the async workers: they keep fetching the next shards.
            tokio::task::spawn_blocking(move || {
                std::fs::write(&target, &data).map_err(|e| ClientError::local(&target, e))
            })
            .await
            .expect("shard write task")?;
        }
        if let Some(file) = &args.cursor {
            save_cursor(file.clone(), stream.state()).await?;
        }
        shards += 1;
        bytes += data.len() as u64;
        if let Some(progress) = &progress {
            progress(data.len() as u64);
        }
        if args.json {
            outln!(
                "{}",
                json!({ "path": path, "bytes": data.len(), "verified": true })
            );
        } else {
            outln!("{path}\t{} bytes\tverified", data.len());
        }
    }
    finish(bar);
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    let counters = client.counters();
    let cursor = stream.state();
    if args.json {
        let summary = json!({
            "rank": cursor.rank,
            "world": cursor.world,
            "epoch": cursor.epoch,
            "shards": shards,
            "bytes": bytes,
            "seconds": secs,
            "mb_per_s": bytes as f64 / 1e6 / secs,
            "shards_per_s": shards as f64 / secs,
            "waiting_s": waiting.as_secs_f64(),
            "listing_s": listed.as_secs_f64(),
            "hedges": counters.hedges,
            "hedge_wins": counters.hedge_wins,
            "replica_failures": counters.replica_failures,
            "cursor": cursor,
        });
        outln!("{summary}");
        return Ok(());
    }
    errln!(
        "rank {} of {}, epoch {}: {shards} shard(s), {} in {secs:.2} s: {:.1} MB/s, {:.1} shards/s; \
         {:.2} s waiting for data (listing and chunk maps: {:.2} s); \
         {} hedged chunk request(s), {} answered first; {} failed replica request(s)",
        cursor.rank,
        cursor.world,
        cursor.epoch,
        human(bytes),
        bytes as f64 / 1e6 / secs,
        shards as f64 / secs,
        waiting.as_secs_f64(),
        listed.as_secs_f64(),
        counters.hedges,
        counters.hedge_wins,
        counters.replica_failures
    );
    Ok(())
}

/// Writes a stream cursor to `file` atomically (a temporary file, synced,
/// renamed over it), so an interruption leaves the old or the new cursor.
pub async fn save_cursor(file: PathBuf, cursor: shardfs_client::shards::Cursor) -> Result<()> {
    tokio::task::spawn_blocking(move || write_cursor(&file, &cursor))
        .await
        .expect("cursor write task")
}

pub fn write_cursor(file: &Path, cursor: &shardfs_client::shards::Cursor) -> Result<()> {
    let text = serde_json::to_string(cursor).expect("cursor serializes");
    let mut temporary = file.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let written = std::fs::File::create(&temporary).and_then(|mut f| {
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()
    });
    written.map_err(|e| ClientError::local(&temporary, e))?;
    std::fs::rename(&temporary, file).map_err(|e| ClientError::local(file, e))
}

//! The namespace: `ls`, `stat`, `rm`, `mv`, `mkdir`.

use serde_json::json;
use shardfs_client::transfer::entry_size;
use shardfs_client::{Client, ClientError, Result};
use shardfs_proto::meta::v1 as pb;
use shardfs_proto::outln;

use crate::cmd::transfer::{is_remote_dir, remote_join};
use crate::output::{format_ms, hex, human};

pub fn entry_json(path: &str, entry: &pb::Entry) -> serde_json::Value {
    let file = entry.file.as_ref();
    json!({
        "path": path,
        "name": entry.name,
        "type": if entry.is_dir { "dir" } else { "file" },
        "size": entry_size(entry),
        "mtime_ms": entry.mtime_ms,
        "replication": file.map(|f| f.replication),
        "chunks": file.map(|f| f.chunks.len()),
    })
}

pub fn long_line(entry: &pb::Entry, name: &str) -> String {
    let file = entry.file.as_ref();
    format!(
        "{} {:>3} {:>12} {} {}",
        if entry.is_dir { 'd' } else { '-' },
        file.map(|f| f.replication.to_string())
            .unwrap_or_else(|| "-".into()),
        entry_size(entry),
        format_ms(entry.mtime_ms),
        name
    )
}

pub async fn ls(
    client: &Client,
    path: &str,
    long: bool,
    recursive: bool,
    json: bool,
) -> Result<()> {
    let root = client.stat(path).await?;
    let mut out = Vec::new();
    if !root.is_dir {
        out.push((path.to_string(), root));
    } else {
        let mut stack = vec![path.to_string()];
        while let Some(dir) = stack.pop() {
            let entries = client.list(&dir).await?;
            if recursive {
                for entry in entries.iter().rev().filter(|e| e.is_dir) {
                    stack.push(remote_join(&dir, &entry.name));
                }
            }
            for entry in entries {
                out.push((remote_join(&dir, &entry.name), entry));
            }
        }
    }
    if json {
        let list: Vec<_> = out.iter().map(|(p, e)| entry_json(p, e)).collect();
        outln!("{}", serde_json::to_string_pretty(&list).expect("json"));
        return Ok(());
    }
    for (full, entry) in &out {
        let shown = if recursive {
            full.clone()
        } else {
            entry.name.clone()
        };
        let shown = if entry.is_dir {
            format!("{shown}/")
        } else {
            shown
        };
        if long {
            outln!("{}", long_line(entry, &shown));
        } else {
            outln!("{shown}");
        }
    }
    Ok(())
}

pub async fn stat(client: &Client, path: &str, json: bool) -> Result<()> {
    let (entry, locations) = client.stat_with_locations(path).await?;
    let file = entry.file.clone().unwrap_or_default();
    let mut offset = 0u64;
    let chunks: Vec<serde_json::Value> = file
        .chunks
        .iter()
        .zip(&locations)
        .enumerate()
        .map(|(i, (c, locs))| {
            let value = json!({
                "index": i,
                "id": hex(&c.id),
                "offset": offset,
                "length": c.length,
                "locations": locs,
            });
            offset += c.length;
            value
        })
        .collect();
    if json {
        let mut value = entry_json(path, &entry);
        if !entry.is_dir {
            value["content_id"] = json!(hex(&file.content_id));
            value["chunks"] = json!(chunks);
        }
        outln!("{}", serde_json::to_string_pretty(&value).expect("json"));
        return Ok(());
    }
    outln!("path:        {path}");
    outln!(
        "type:        {}",
        if entry.is_dir { "directory" } else { "file" }
    );
    outln!("modified:    {}", format_ms(entry.mtime_ms));
    if !entry.is_dir {
        outln!("size:        {} ({} bytes)", human(file.size), file.size);
        outln!("replication: {}", file.replication);
        outln!("content id:  {}", hex(&file.content_id));
        outln!("chunks:      {}", file.chunks.len());
        for c in &chunks {
            let locs: Vec<&str> = c["locations"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            outln!(
                "  {:>5}  {}  {:>10}  {}",
                c["index"],
                c["id"].as_str().unwrap_or(""),
                c["length"],
                if locs.is_empty() {
                    "(no live replica)".to_string()
                } else {
                    locs.join(" ")
                }
            );
        }
    }
    Ok(())
}

/// `shardfs rm`: each path in turn (directories with `recursive`).
pub async fn rm(client: &Client, paths: Vec<String>, recursive: bool) -> Result<()> {
    for path in paths {
        client.remove(&path, recursive).await.map_err(|e| match e {
            // The CLI's own words for the metaserver's hint.
            ClientError::InvalidArgument(m) if !recursive && m.contains("not empty") => {
                ClientError::InvalidArgument(format!(
                    "{path}: directory not empty (use -r to delete it and everything under it)"
                ))
            }
            e => e,
        })?;
    }
    Ok(())
}

/// `shardfs mv`: like mv(1), into an existing directory under the same
/// name.
pub async fn mv(client: &Client, from: &str, to: String) -> Result<()> {
    let to = match is_remote_dir(client, &to).await? {
        true => {
            let name = shardfs_client::client::parse(from)?
                .name()
                .unwrap_or_default()
                .to_string();
            remote_join(&to, &name)
        }
        false => to,
    };
    client.rename(from, &to).await
}

/// `shardfs mkdir [-p]`.
pub async fn mkdir(client: &Client, paths: Vec<String>, parents: bool) -> Result<()> {
    for path in paths {
        client.mkdir(&path, parents).await?;
    }
    Ok(())
}

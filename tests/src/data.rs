//! Deterministic test data and the hashes tests compare it by.

use std::collections::BTreeMap;
use std::path::Path;

use shardfs_client::{Client, ClientConfig, PutOptions};
use shardfs_proto::ChunkId;
use shardfs_proto::meta::v1 as pb;

/// `len` deterministic incompressible bytes, distinct per seed.
pub fn data(len: usize, seed: &str) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(seed.as_bytes());
    hasher.finalize_xof().fill(&mut out);
    out
}

/// The BLAKE3 hash of `bytes`, in hex.
pub fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Relative path -> BLAKE3 of every file under `root` (directories as
/// `name/` with an empty hash).
pub fn tree_hashes(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if path.is_dir() {
                out.insert(format!("{rel}/"), String::new());
                stack.push(path);
            } else {
                out.insert(rel, hash(&std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// A client configuration writing chunks of `chunk` bytes.
pub fn chunked(chunk: usize) -> ClientConfig {
    ClientConfig {
        chunk_size: chunk as u64,
        ..ClientConfig::default()
    }
}

/// Puts each (path, bytes) with the default options; returns them by path.
pub async fn put_all(
    client: &Client,
    files: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> BTreeMap<String, Vec<u8>> {
    let mut put = BTreeMap::new();
    for (path, bytes) in files {
        client
            .put_bytes(bytes.clone().into(), &path, &PutOptions::default())
            .await
            .unwrap();
        put.insert(path, bytes);
    }
    put
}

/// Chunks [`crate::Cluster::with_chunk_pool`] stores on every chunk
/// server; metaserver-level tests commit files made of them.
pub const POOL_SIZE: usize = 64;

/// Pool chunk `i`: its id and bytes.
pub fn pool_chunk(i: usize) -> (ChunkId, bytes::Bytes) {
    let mut data = vec![0u8; 1000 + i];
    let mut hasher = blake3::Hasher::new();
    hasher.update(format!("pool-{i}").as_bytes());
    hasher.finalize_xof().fill(&mut data);
    (ChunkId::of(&data), data.into())
}

/// A file description for a commit: `chunks` chunks of the pool, chosen
/// by `seed`.
pub fn file_info(seed: u64, chunks: usize) -> pb::FileInfo {
    shardfs_meta::bench::file_info_of((0..chunks).map(|j| {
        let i = (seed as usize).wrapping_mul(7).wrapping_add(j * 13) % POOL_SIZE;
        let (id, data) = pool_chunk(i);
        (id, data.len() as u64)
    }))
}

//! The chunk store on a real disk, without the network: round trips,
//! ranges, verification, quarantine, and start-up reconciliation.

mod common;

use bytes::Bytes;
use common::{chunk, chunk_files, files_in};
use shardfs_chunk::at_rest::AtRestKey;
use shardfs_chunk::error::ChunkError;
use shardfs_chunk::store::{ChunkRead, OpenReport, PutOutcome};
use shardfs_chunk::{ChunkStore, StoreConfig};
use shardfs_proto::ChunkId;

fn open(dir: &std::path::Path) -> ChunkStore {
    open_with_report(dir).0
}

/// Opens the store and returns what start-up found and repaired.
fn open_with_report(dir: &std::path::Path) -> (ChunkStore, OpenReport) {
    open_encrypted(dir, None).unwrap()
}

/// Opens the store with chunk files encrypted under `key` (or not).
fn open_encrypted(
    dir: &std::path::Path,
    key: Option<&AtRestKey>,
) -> Result<(ChunkStore, OpenReport), ChunkError> {
    ChunkStore::open(&StoreConfig {
        data_dir: dir.to_path_buf(),
        capacity_bytes: None,
        encryption: key.cloned(),
    })
}

/// Reads a range through the store, verified or streamed, as one buffer.
async fn read(
    store: &ChunkStore,
    id: ChunkId,
    offset: u64,
    length: Option<u64>,
    verify: bool,
) -> Result<Vec<u8>, ChunkError> {
    match store.read(id, offset, length, verify).await? {
        ChunkRead::Verified { data, .. } => Ok(data.to_vec()),
        ChunkRead::Stream { mut reader, .. } => {
            let mut out = Vec::new();
            while let Some(piece) = reader.next_piece()? {
                out.extend_from_slice(&piece);
            }
            Ok(out)
        }
    }
}

const SIZES: [usize; 5] = [0, 1, 64 << 10, (8 << 20) - 1, 8 << 20];

#[tokio::test]
async fn round_trips_every_size_verified_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for (seed, size) in SIZES.iter().enumerate() {
        let (id, bytes) = chunk(seed as u64, *size);
        let outcome = store.put(id, vec![bytes.clone()]).await.unwrap();
        assert_eq!(outcome, PutOutcome::Stored);
        for verify in [true, false] {
            let back = read(&store, id, 0, None, verify).await.unwrap();
            assert_eq!(ChunkId::of(&back), id, "size {size} verify {verify}");
        }
        let hex = id.to_hex();
        let path = dir
            .path()
            .join("chunks")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(&hex);
        assert_eq!(store.chunk_path(&id), path);
        assert_eq!(ChunkId::of(&std::fs::read(&path).unwrap()), id);
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.chunk_count, SIZES.len() as u64);
    assert_eq!(stats.used_bytes, SIZES.iter().sum::<usize>() as u64);
    assert!(stats.free_bytes > 0 && stats.capacity_bytes >= stats.free_bytes);
    assert!(files_in(&dir.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn put_from_many_pieces_and_twice_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (id, bytes) = chunk(7, 3 << 20);
    let pieces: Vec<Bytes> = (0..bytes.len())
        .step_by(1 << 20)
        .map(|s| bytes.slice(s..(s + (1 << 20)).min(bytes.len())))
        .collect();
    assert_eq!(store.put(id, pieces).await.unwrap(), PutOutcome::Stored);
    assert_eq!(
        store.put(id, vec![bytes.clone()]).await.unwrap(),
        PutOutcome::AlreadyStored
    );
    assert_eq!(store.stats().await.unwrap().chunk_count, 1);
    assert_eq!(
        ChunkId::of(&read(&store, id, 0, None, true).await.unwrap()),
        id
    );
}

#[tokio::test]
async fn ranges_at_the_edges_and_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let len = (8 << 20) + 3;
    let (id, bytes) = chunk(11, len);
    store.put(id, vec![bytes.clone()]).await.unwrap();
    let len = len as u64;
    let cases: [(u64, Option<u64>); 7] = [
        (0, Some(0)),
        (0, Some(1)),
        (len - 1, Some(1)),
        (len, Some(0)),
        (len, None),
        ((1 << 20) - 1, Some((1 << 20) + 2)),
        (12345, None),
    ];
    for (offset, length) in cases {
        let end = length.map(|l| offset + l).unwrap_or(len);
        let want = &bytes[offset as usize..end as usize];
        for verify in [true, false] {
            let got = read(&store, id, offset, length, verify).await.unwrap();
            assert_eq!(
                blake3::hash(&got),
                blake3::hash(want),
                "offset {offset} length {length:?} verify {verify}"
            );
        }
    }
    for (offset, length) in [
        (len + 1, None),
        (len, Some(1)),
        (0, Some(len + 1)),
        (1, Some(len)),
        (u64::MAX, Some(2)),
    ] {
        let err = read(&store, id, offset, length, false).await.unwrap_err();
        assert!(
            matches!(err, ChunkError::OutOfRange { .. }),
            "offset {offset} length {length:?}: {err}"
        );
    }
}

#[tokio::test]
async fn hash_mismatch_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (id, _) = chunk(1, 1000);
    let (_, other) = chunk(2, 1000);
    let err = store.put(id, vec![other.clone()]).await.unwrap_err();
    match &err {
        ChunkError::HashMismatch { expected, actual } => {
            assert_eq!(*expected, id);
            assert_eq!(*actual, ChunkId::of(&other));
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains(&id.to_hex()) && text.contains(&ChunkId::of(&other).to_hex()));
    assert!(chunk_files(dir.path()).is_empty());
    assert!(files_in(&dir.path().join("tmp")).is_empty());
    assert!(!store.contains(id).await.unwrap());
    assert!(matches!(
        read(&store, id, 0, None, true).await,
        Err(ChunkError::NotFound { .. })
    ));
}

#[tokio::test]
async fn oversized_chunk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let big = Bytes::from(vec![0u8; (64 << 20) + 1]);
    let id = ChunkId::of(&big);
    let err = store.put(id, vec![big]).await.unwrap_err();
    assert!(matches!(err, ChunkError::TooLarge { .. }), "{err}");
    assert!(chunk_files(dir.path()).is_empty());
}

#[tokio::test]
async fn flipped_byte_is_quarantined_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (id, bytes) = chunk(3, 100_000);
    let (good_id, good) = chunk(4, 100_000);
    store.put(id, vec![bytes]).await.unwrap();
    store.put(good_id, vec![good]).await.unwrap();
    let path = store.chunk_path(&id);
    let mut on_disk = std::fs::read(&path).unwrap();
    on_disk[54_321] ^= 0x01;
    std::fs::write(&path, &on_disk).unwrap();

    let err = read(&store, id, 0, None, true).await.unwrap_err();
    match &err {
        ChunkError::Corrupt { id: bad, actual } => {
            assert_eq!(*bad, id);
            assert_eq!(*actual, ChunkId::of(&on_disk));
        }
        other => panic!("expected corruption, got {other}"),
    }
    assert!(!path.exists(), "corrupt copy left in place");
    let quarantined = files_in(&dir.path().join("quarantine"));
    assert_eq!(quarantined.len(), 1);
    assert_eq!(std::fs::read(&quarantined[0]).unwrap(), on_disk);
    for verify in [true, false] {
        assert!(matches!(
            read(&store, id, 0, None, verify).await,
            Err(ChunkError::NotFound { .. })
        ));
    }
    assert_eq!(
        store.has(vec![id, good_id]).await.unwrap(),
        vec![false, true]
    );
    assert_eq!(
        ChunkId::of(&read(&store, good_id, 0, None, true).await.unwrap()),
        good_id
    );
    // A good copy can be stored again.
    let (_, bytes) = chunk(3, 100_000);
    assert_eq!(
        store.put(id, vec![bytes]).await.unwrap(),
        PutOutcome::Stored
    );
}

#[tokio::test]
async fn delete_has_and_paged_listing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ids = Vec::new();
    for seed in 0..25 {
        let (id, bytes) = chunk(seed, 10 + seed as usize);
        store.put(id, vec![bytes]).await.unwrap();
        ids.push(id);
    }
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let (page, more) = store.list(after, 7).await.unwrap();
        assert!(page.len() <= 7);
        after = page.last().map(|(id, _)| *id);
        listed.extend(page.into_iter().map(|(id, _)| id));
        if !more {
            break;
        }
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(listed, sorted);

    let deleted = store.delete(ids[..10].to_vec()).await.unwrap();
    assert_eq!(deleted, 10);
    assert_eq!(store.delete(ids[..10].to_vec()).await.unwrap(), 0);
    let present = store.has(ids.clone()).await.unwrap();
    assert_eq!(present, (0..25).map(|i| i >= 10).collect::<Vec<_>>());
    assert_eq!(chunk_files(dir.path()).len(), 15);
    assert_eq!(store.stats().await.unwrap().chunk_count, 15);
}

#[tokio::test]
async fn start_up_reconciles_index_with_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        let store = open(dir.path());
        for seed in 0..20 {
            let (id, bytes) = chunk(seed, 5000);
            store.put(id, vec![bytes]).await.unwrap();
            ids.push(id);
        }
        store.flush().await.unwrap();
    }
    // Leftovers of an interrupted write, a chunk file removed behind the
    // index's back, and a stray file that is not a chunk.
    std::fs::write(dir.path().join("tmp").join("partial.0"), b"half a chunk").unwrap();
    let gone = ids.pop().unwrap();
    let hex = gone.to_hex();
    let gone_path = dir
        .path()
        .join("chunks")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(&hex);
    std::fs::remove_file(gone_path).unwrap();
    let stray = dir.path().join("chunks").join("README");
    std::fs::write(&stray, b"not a chunk").unwrap();

    let (store, report) = open_with_report(dir.path());
    assert_eq!(report.temp_files_removed, 1);
    assert_eq!(report.dropped_from_index, 1);
    assert_eq!(report.chunks, 19);
    assert!(!report.index_rebuilt);
    assert!(files_in(&dir.path().join("tmp")).is_empty());
    assert!(stray.exists(), "a file that is not ours must be left alone");
    assert!(!store.has(vec![gone]).await.unwrap()[0]);
    for id in &ids {
        let back = read(&store, *id, 0, None, true).await.unwrap();
        assert_eq!(ChunkId::of(&back), *id);
    }
}

#[tokio::test]
async fn lost_or_unreadable_index_is_rebuilt_from_chunk_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        let store = open(dir.path());
        for seed in 0..30 {
            let (id, bytes) = chunk(seed, 1000 + seed as usize);
            store.put(id, vec![bytes]).await.unwrap();
            ids.push(id);
        }
        store.flush().await.unwrap();
    }
    // Lost entirely.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    {
        let (store, report) = open_with_report(dir.path());
        assert!(report.index_rebuilt);
        assert_eq!(report.added_to_index, 30);
        assert_eq!(store.has(ids.clone()).await.unwrap(), vec![true; 30]);
        store.flush().await.unwrap();
    }
    // Replaced by garbage.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    std::fs::write(dir.path().join("index"), b"this is not a sled database").unwrap();
    let (store, report) = open_with_report(dir.path());
    assert!(report.index_rebuilt);
    assert_eq!(report.added_to_index, 30);
    for id in &ids {
        let back = read(&store, *id, 0, None, true).await.unwrap();
        assert_eq!(ChunkId::of(&back), *id);
    }
}

#[tokio::test]
async fn concurrent_puts_of_the_same_and_different_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let (id, bytes) = chunk(i % 8, 256 << 10);
            store.put(id, vec![bytes]).await.unwrap()
        }));
    }
    let mut stored = 0;
    for task in tasks {
        if task.await.unwrap() == PutOutcome::Stored {
            stored += 1;
        }
    }
    assert_eq!(stored, 8, "each distinct chunk is stored exactly once");
    assert_eq!(store.stats().await.unwrap().chunk_count, 8);
    for (path, name) in chunk_files(dir.path()) {
        assert_eq!(ChunkId::of(&std::fs::read(path).unwrap()).to_hex(), name);
    }
    assert!(files_in(&dir.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn a_failed_index_is_reopened_and_reconciled_with_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut stored = Vec::new();
    for seed in 0..5 {
        let (id, bytes) = chunk(seed, 10_000 + seed as usize);
        store.put(id, vec![bytes]).await.unwrap();
        stored.push(id);
    }
    // A chunk file the index does not know (renamed into place just as the
    // index failed), and an index entry whose file is gone.
    let (extra, extra_bytes) = chunk(50, 7_000);
    let hex = extra.to_hex();
    let extra_dir = dir.path().join("chunks").join(&hex[0..2]).join(&hex[2..4]);
    std::fs::create_dir_all(&extra_dir).unwrap();
    std::fs::write(extra_dir.join(&hex), &extra_bytes).unwrap();
    std::fs::remove_file(store.chunk_path(&stored[4])).unwrap();

    store.mark_index_failed();
    assert!(!store.index_healthy());
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.free_bytes, 0, "a failed index reports no free space");

    assert!(
        store.recover_index().await.unwrap(),
        "the index was reopened"
    );
    assert!(store.index_healthy());
    assert!(!store.recover_index().await.unwrap(), "nothing left to do");
    assert!(store.stats().await.unwrap().free_bytes > 0);
    // Files and index agree again: the extra file is indexed, the lost one
    // is not, and the counts follow.
    let present = store
        .has(vec![stored[0], stored[3], stored[4], extra])
        .await
        .unwrap();
    assert_eq!(present, vec![true, true, false, true]);
    assert_eq!(store.stats().await.unwrap().chunk_count, 5);
    assert_eq!(
        ChunkId::of(&read(&store, extra, 0, None, true).await.unwrap()),
        extra
    );
    // The metaserver hears of both changes with the next heartbeat.
    let (added, removed) = store.take_changes();
    assert!(added.contains(&extra), "{added:?}");
    assert!(removed.contains(&stored[4]), "{removed:?}");
    // And it stores again.
    let (id, bytes) = chunk(60, 3_000);
    store.put(id, vec![bytes]).await.unwrap();
    assert_eq!(
        ChunkId::of(&read(&store, id, 0, None, true).await.unwrap()),
        id
    );
}

/// Chunk files of an encrypted store hold no plaintext, yet every read
/// (verified, streamed, ranged) returns it; a flipped ciphertext bit is
/// caught by the hash of the plaintext; the store refuses to open without
/// its key or with another, and a plaintext store refuses a key.
#[tokio::test]
async fn an_encrypted_store_keeps_no_plaintext_on_disk_and_refuses_other_keys() {
    let dir = tempfile::tempdir().unwrap();
    let key = AtRestKey::generate().unwrap();
    let (store, _) = open_encrypted(dir.path(), Some(&key)).unwrap();
    let mut stored = Vec::new();
    for (seed, size) in SIZES.iter().enumerate() {
        let (id, bytes) = chunk(100 + seed as u64, *size);
        // Several pieces, as a put stream brings them.
        let pieces: Vec<Bytes> = bytes.chunks(300_001).map(Bytes::copy_from_slice).collect();
        assert_eq!(store.put(id, pieces).await.unwrap(), PutOutcome::Stored);
        for verify in [true, false] {
            let back = read(&store, id, 0, None, verify).await.unwrap();
            assert_eq!(ChunkId::of(&back), id, "size {size} verify {verify}");
        }
        if *size > 10_000 {
            let back = read(&store, id, 4_097, Some(5_000), false).await.unwrap();
            assert_eq!(back, bytes[4_097..9_097], "a range from the middle");
        }
        stored.push((id, bytes));
    }
    for (path, name) in chunk_files(dir.path()) {
        let (id, bytes) = stored.iter().find(|(id, _)| id.to_hex() == name).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), bytes.len(), "chunk {id}: the length is kept");
        // No 64-byte window of the plaintext (one every 4 KiB) appears
        // anywhere in the file.
        let windows: std::collections::HashSet<&[u8]> = bytes
            .chunks(4096)
            .filter(|w| w.len() >= 64)
            .map(|w| &w[..64])
            .collect();
        assert!(
            !on_disk.windows(64).any(|w| windows.contains(w)),
            "chunk {id}: plaintext on disk"
        );
    }
    // A flipped bit in a file: the verified read refuses and quarantines.
    let (victim, _) = &stored[2];
    let path = store.chunk_path(victim);
    let mut sealed = std::fs::read(&path).unwrap();
    sealed[1_000] ^= 0x10;
    std::fs::write(&path, &sealed).unwrap();
    let err = read(&store, *victim, 0, None, true).await.unwrap_err();
    assert!(matches!(err, ChunkError::Corrupt { .. }), "{err}");
    drop(store);

    let err = open_encrypted(dir.path(), None)
        .err()
        .expect("opened without its key");
    assert!(err.to_string().contains("encrypted at rest"), "{err}");
    let other = AtRestKey::generate().unwrap();
    let err = open_encrypted(dir.path(), Some(&other))
        .err()
        .expect("opened with another key");
    assert!(err.to_string().contains("another key"), "{err}");
    let (store, report) = open_encrypted(dir.path(), Some(&key)).unwrap();
    assert_eq!(
        report.chunks,
        SIZES.len() as u64 - 1,
        "the quarantined one is gone"
    );
    let (id, _) = &stored[3];
    assert_eq!(
        ChunkId::of(&read(&store, *id, 0, None, true).await.unwrap()),
        *id
    );

    let plain = tempfile::tempdir().unwrap();
    let (store, _) = open_encrypted(plain.path(), None).unwrap();
    let (id, bytes) = chunk(7, 1000);
    store.put(id, vec![bytes]).await.unwrap();
    drop(store);
    let err = open_encrypted(plain.path(), Some(&key))
        .err()
        .expect("a plaintext store took a key");
    assert!(err.to_string().contains("unencrypted chunks"), "{err}");
}

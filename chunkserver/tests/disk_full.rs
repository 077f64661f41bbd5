//! A chunk server process whose disk fills up while writers keep putting
//! chunks: while full it refuses puts in words and reports no free space
//! (so placement skips it); once space returns it stores again by itself
//! (reopening its index if the full disk broke it), every acknowledged
//! chunk reads back, and the chunk files and the index agree.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ServerProcess, chunk, chunk_files};
use shardfs_proto::ChunkId;

const MIB: usize = 1 << 20;

/// A tmpfs of `mib` MiB at `path`, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, mib: u64) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system holding `dir` to the last byte with a file
/// `dir/filler` (or adds to it); returns the file.
fn fill(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("filler");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let block = vec![0xa5u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_puts_in_words_and_the_server_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("disk"), 48) else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data_dir = tmpfs.0.join("data");
    let server = ServerProcess::start_with(
        &data_dir,
        &["--listen", "127.0.0.1:0", "--scrub-mb-per-s", "0"],
        &[],
    );
    let client = server.client();
    let mut acked: Vec<ChunkId> = Vec::new();
    for seed in 0..4 {
        let (id, bytes) = chunk(seed, MIB);
        client.put(id, bytes).await.unwrap();
        acked.push(id);
    }

    // The disk fills up. Then, again and again, a little space comes back
    // and a writer's chunk takes it, so that the index's own writes (sled
    // flushes its log every second) meet a full disk too.
    let filler = fill(&tmpfs.0);
    let mut refusals = Vec::new();
    for seed in 100..108 {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(300 << 10)).unwrap();
        drop(file);
        let (id, bytes) = chunk(seed, 280 << 10);
        match client.put(id, bytes).await {
            Ok(_) => acked.push(id),
            Err(status) => refusals.push(status),
        }
        let _ = fill(&tmpfs.0.join("more"));
        for _ in 0..5 {
            let (id, bytes) = chunk(seed * 10, 64 << 10);
            match client.put(id, bytes).await {
                Ok(_) => acked.push(id),
                Err(status) => refusals.push(status),
            }
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(!refusals.is_empty(), "no put was refused on a full disk");
    for status in &refusals {
        let message = status.message().to_lowercase();
        assert!(
            message.contains("disk full")
                || message.contains("no space")
                || message.contains("index"),
            "{status:?}"
        );
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.free_bytes, 0, "a full server reports free space");

    // Space comes back: the server stores chunks again by itself.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_dir_all(tmpfs.0.join("more")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (id, bytes) = chunk(999, MIB);
    loop {
        match client.put(id, bytes.clone()).await {
            Ok(_) => break,
            Err(status) => {
                assert!(
                    Instant::now() < deadline,
                    "still refusing puts 20 s after space returned: {status:?}\n{}",
                    server.log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    acked.push(id);
    assert!(client.stats().await.unwrap().free_bytes > 0);

    // Nothing acknowledged was lost, and files and index agree.
    for id in &acked {
        let back = client.get(*id, 0, None, true).await.unwrap();
        assert_eq!(ChunkId::of(&back), *id);
    }
    let listed: Vec<ChunkId> = client
        .list_all()
        .await
        .unwrap()
        .iter()
        .map(|c| ChunkId::from_slice(&c.id).unwrap())
        .collect();
    let mut on_disk: Vec<String> = chunk_files(&data_dir)
        .into_iter()
        .map(|(_, hex)| hex)
        .collect();
    on_disk.sort();
    let mut indexed: Vec<String> = listed.iter().map(|id| id.to_hex()).collect();
    indexed.sort();
    assert_eq!(indexed, on_disk, "the index and the chunk files disagree");
    let recovered = server.log().contains("chunk index reopened");
    eprintln!(
        "{} put(s) refused while full; the index {}",
        refusals.len(),
        if recovered {
            "failed and was reopened"
        } else {
            "held"
        }
    );
    drop(server);
    drop(tmpfs);
}

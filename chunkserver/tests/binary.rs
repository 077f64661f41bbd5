//! The real `shardfs-chunk` binary as a child process: kill -9 mid-stream,
//! losing the index, configuration precedence, graceful shutdown.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ServerProcess, chunk, chunk_files, files_in};
use shardfs_proto::ChunkId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_acknowledged_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("chunk");
    let server = ServerProcess::start(&data_dir);
    let acked: Arc<Mutex<Vec<ChunkId>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..6u64 {
        let client = server.client();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            // Sizes vary so that kills land mid-stream, mid-write and mid-fsync.
            for i in 0..10_000u64 {
                let seed = writer * 1_000_000 + i;
                let (id, bytes) = chunk(seed, 1 + (seed as usize * 7919) % (3 << 20));
                match client.put(id, bytes).await {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(_) => return, // the server died under us
                }
            }
        }));
    }
    // Let the writers get going, then pull the plug.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 40,
        "only {} chunks acknowledged",
        acked.len()
    );

    let server = ServerProcess::start(&data_dir);
    assert!(
        files_in(&data_dir.join("tmp")).is_empty(),
        "temp files survived start-up"
    );
    // Every file under chunks/ is a whole chunk: its bytes hash to its name.
    for (path, name) in chunk_files(&data_dir) {
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            ChunkId::of(&bytes).to_hex(),
            name,
            "partial chunk visible at {}",
            path.display()
        );
    }
    // Every acknowledged chunk is there and verifies, end to end.
    let client = server.client();
    let present = client.has(&acked).await.unwrap();
    assert!(
        present.iter().all(|p| *p),
        "acknowledged chunks missing after restart"
    );
    for id in &acked {
        let back = client.get(*id, 0, None, true).await.unwrap();
        assert_eq!(ChunkId::of(&back), *id);
    }
    let listed: HashSet<Vec<u8>> = client
        .list_all()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id.to_vec())
        .collect();
    assert!(acked.iter().all(|id| listed.contains(&id.to_vec())));
    assert!(server.terminate().await);
}

#[tokio::test]
async fn deleted_index_is_rebuilt_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("chunk");
    let server = ServerProcess::start(&data_dir);
    let client = server.client();
    let mut ids = Vec::new();
    for seed in 0..40 {
        let (id, bytes) = chunk(seed, 10_000 + seed as usize * 1000);
        client.put(id, bytes).await.unwrap();
        ids.push(id);
    }
    let before = client.stats().await.unwrap();
    assert!(server.terminate().await, "graceful shutdown exits 0");

    std::fs::remove_dir_all(data_dir.join("index")).unwrap();
    let server = ServerProcess::start(&data_dir);
    let client = server.client();
    assert!(
        server.log().contains("building it from the chunk files"),
        "the rebuild is logged:\n{}",
        server.log()
    );
    assert_eq!(client.has(&ids).await.unwrap(), vec![true; 40]);
    for id in &ids {
        let back = client.get(*id, 0, None, true).await.unwrap();
        assert_eq!(ChunkId::of(&back), *id);
    }
    let after = client.stats().await.unwrap();
    assert_eq!(after.chunk_count, before.chunk_count);
    assert_eq!(after.used_bytes, before.used_bytes);
    assert!(server.terminate().await);
}

#[tokio::test]
async fn flags_win_over_environment_and_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("chunk");
    let config = dir.path().join("chunk.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\ncapacity_bytes = 5000000\n",
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    // The file's listen address is overridden by the environment, which is
    // overridden by the flag; capacity comes from the file.
    let server = ServerProcess::start_with(
        &data_dir,
        &["--config", config_arg, "--listen", "127.0.0.1:0"],
        &[("SHARDFS_CHUNK_LISTEN", "127.0.0.1:2")],
    );
    let client = server.client();
    let (id, bytes) = chunk(1, 1_000_000);
    client.put(id, bytes).await.unwrap();
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.capacity_bytes, 5_000_000);
    assert_eq!(stats.used_bytes, 1_000_000);
    assert_eq!(stats.free_bytes, 4_000_000);
    assert_eq!(
        ChunkId::of(&client.get(id, 0, None, true).await.unwrap()),
        id
    );
    assert!(server.terminate().await);

    // A config file with an unknown key is refused with a clear error.
    std::fs::write(&config, "colour = \"blue\"\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shardfs-chunk"))
        .args(["--config", config_arg, "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("colour") && stderr.contains("chunk.toml"),
        "{stderr}"
    );

    // No data directory anywhere.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shardfs-chunk"))
        .env_remove("SHARDFS_CHUNK_DATA_DIR")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--data-dir"));
}

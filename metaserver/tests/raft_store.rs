//! The sled-backed Raft stores: openraft's own storage test suite, plus
//! restarts that must bring back exactly the applied state.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use shardfs_meta::namespace::{ChunkRef, FileMeta, Inode};
use shardfs_meta::store::{self, log::LogStore, sm::StateMachine};
use shardfs_meta::types::{Command, Outcome, StorageError, TypeConfig};
use shardfs_proto::ChunkId;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = store::open(&dir.path().join("raft"))?;
        Ok((dir, log, sm))
    }
}

/// openraft's conformance suite against our log store and state machine.
#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}

fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

fn file(seed: u8) -> FileMeta {
    let data = vec![seed; 1000];
    let chunks = vec![ChunkRef {
        id: ChunkId::of(&data),
        length: 1000,
    }];
    FileMeta {
        content_id: FileMeta::content_id_of(&chunks),
        chunks,
        size: 1000,
        replication: 3,
        mtime_ms: seed as u64,
    }
}

fn commands() -> Vec<Command> {
    vec![
        Command::Mkdir {
            path: "/datasets/a".into(),
            parents: true,
            mtime_ms: 1,
        },
        Command::Commit {
            path: "/datasets/a/shard-0".into(),
            file: file(1),
            if_absent: false,
            confirmed: vec![],
            min_replicas: 0,
        },
        Command::Commit {
            path: "/datasets/a/shard-1".into(),
            file: file(2),
            if_absent: false,
            confirmed: vec![],
            min_replicas: 0,
        },
        Command::Rename {
            from: "/datasets/a".into(),
            to: "/datasets/b".into(),
        },
        Command::Delete {
            path: "/datasets/b/shard-0".into(),
            recursive: false,
        },
        // Fails (already exists) but is still applied: changes nothing.
        Command::Commit {
            path: "/datasets/b/shard-1".into(),
            file: file(3),
            if_absent: true,
            confirmed: vec![],
            min_replicas: 0,
        },
        Command::Mkdir {
            path: "bad//path".into(),
            parents: true,
            mtime_ms: 1,
        },
        renamed_once(),
        // The retry of a call already applied: answered, not applied again
        // (applied again, it would fail: the source is gone).
        renamed_once(),
    ]
}

fn renamed_once() -> Command {
    Command::once(
        b"rename-1",
        1_000,
        Command::Rename {
            from: "/datasets/b/shard-1".into(),
            to: "/datasets/b/shard-9".into(),
        },
    )
}

/// The retry cache's answer to the rename, as `sm` holds it.
fn rename_answer(sm: &StateMachine) -> Option<Outcome> {
    let state = sm.state();
    let state = state.read().unwrap();
    state.retries.get(b"rename-1").map(|r| r.0.clone().unwrap())
}

fn listing(sm: &StateMachine) -> Vec<(String, Inode)> {
    let state = sm.state();
    state.read().unwrap().namespace.walk()
}

#[tokio::test]
async fn applied_state_survives_restart_and_snapshot_restores() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    let expected;
    {
        let (_log, mut sm) = store::open(&path).unwrap();
        let entries: Vec<_> = commands()
            .into_iter()
            .enumerate()
            .map(|(i, c)| entry(i as u64 + 1, c))
            .collect();
        let results = sm.apply(entries).await.unwrap();
        assert_eq!(results.len(), 9);
        assert_eq!(results[1].0, Ok(Outcome::Replaced(false)));
        assert!(
            results[5].0.is_err(),
            "create-if-absent on an existing path fails"
        );
        assert!(results[6].0.is_err(), "an invalid path fails");
        assert_eq!(results[7].0, Ok(Outcome::Done));
        assert_eq!(
            results[8].0,
            Ok(Outcome::Done),
            "a retry gets the first answer"
        );
        expected = listing(&sm);
        assert_eq!(
            expected.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            ["/datasets", "/datasets/b", "/datasets/b/shard-9"]
        );
        assert_eq!(expected[2].1, Inode::File(file(2)));
    }
    // Reopen: the same state and applied id, without replaying anything.
    let (_log, mut sm) = reopen(&path);
    assert_eq!(listing(&sm), expected);
    assert_eq!(rename_answer(&sm), Some(Outcome::Done));
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 9);

    // A snapshot installed into a fresh store reproduces the state.
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let (other_log, mut other) = store::open(&other_dir.path().join("raft")).unwrap();
    other
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(listing(&other), expected);
    assert_eq!(rename_answer(&other), Some(Outcome::Done));
    assert_eq!(other.applied_state().await.unwrap().0, applied);
    drop((other, other_log)); // release the engine's directory lock
    let (_other_log, other) = reopen(&other_dir.path().join("raft"));
    assert_eq!(
        listing(&other),
        expected,
        "installed snapshot survives restart"
    );
    assert_eq!(rename_answer(&other), Some(Outcome::Done));
}

#[tokio::test]
async fn log_state_vote_and_purge_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    {
        let (mut log, _sm) = store::open(&path).unwrap();
        let mut entries = Vec::new();
        for i in 1..=10 {
            entries.push(entry(i, commands()[0].clone()));
        }
        log.blocking_append(entries).await.unwrap();
        log.save_vote(&openraft::Vote::new(3, 2)).await.unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 4))
            .await
            .unwrap();
    }
    let (mut log, _sm) = reopen(&path);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.unwrap().index, 4);
    assert_eq!(state.last_log_id.unwrap().index, 10);
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(openraft::Vote::new(3, 2))
    );
    let mut reader = log.get_log_reader().await;
    use openraft::RaftLogReader;
    let rest = reader.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(
        rest.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        (5..=10).collect::<Vec<_>>()
    );
}

/// Opens a store just closed by this process. sled's background flusher
/// may hold the directory lock for a moment after the last handle drops
/// (a restarted process never meets this: its old one has exited).
fn reopen(
    path: &std::path::Path,
) -> (
    shardfs_meta::store::log::LogStore,
    shardfs_meta::store::sm::StateMachine,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match store::open(path) {
            Ok(stores) => return stores,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("reopening {}: {e}", path.display()),
        }
    }
}

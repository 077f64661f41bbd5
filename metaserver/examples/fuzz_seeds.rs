//! Writes the seed inputs of the metaserver's fuzz targets (`fuzz/`):
//! real Raft entries, snapshots and request sequences, so the fuzzer starts
//! from well-formed inputs instead of guessing their structure.
//!
//! `cargo run -p shardfs-meta --example fuzz_seeds -- fuzz/corpus`

use std::path::Path;

use openraft::{CommittedLeaderId, EntryPayload, LogId};
use prost::Message;
use shardfs_meta::cluster::ChunkServerInfo;
use shardfs_meta::codec;
use shardfs_meta::namespace::{ChunkRef, FileMeta};
use shardfs_meta::state::{Journal, State};
use shardfs_meta::store::sm::encode_snapshot;
use shardfs_meta::types::{Command, TypeConfig};
use shardfs_proto::ChunkId;
use shardfs_proto::meta::v1 as pb;

fn main() -> anyhow::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let root = Path::new(&root);
    let chunk = |text: &str| ChunkId::of(text.as_bytes());
    let chunks = vec![
        ChunkRef {
            id: chunk("a"),
            length: 4096,
        },
        ChunkRef {
            id: chunk("b"),
            length: 10,
        },
    ];
    let file = FileMeta {
        content_id: FileMeta::content_id_of(&chunks),
        chunks,
        size: 4106,
        replication: 3,
        mtime_ms: 7,
    };
    let commands = [
        Command::Mkdir {
            path: "/datasets/train".into(),
            parents: true,
            mtime_ms: 5,
        },
        Command::once(
            b"request-1",
            6,
            Command::Commit {
                path: "/datasets/train/shard-0000.tar".into(),
                file: file.clone(),
                if_absent: false,
                confirmed: vec![(1, vec![chunk("a"), chunk("b")])],
                min_replicas: 1,
            },
        ),
        Command::RegisterChunkServer {
            id: 1,
            info: ChunkServerInfo {
                addr: "127.0.0.1:7201".into(),
                zone: "a".into(),
                capacity_bytes: 1 << 30,
                draining: false,
            },
        },
        Command::ChunkReport {
            server: 1,
            added: vec![chunk("a"), chunk("b")],
            removed: vec![],
            replace: false,
        },
        Command::Rename {
            from: "/datasets/train".into(),
            to: "/datasets/val".into(),
        },
        Command::Delete {
            path: "/datasets".into(),
            recursive: true,
        },
        Command::Collect {
            chunks: vec![chunk("a")],
        },
    ];

    let entries = root.join("raft_entry");
    std::fs::create_dir_all(&entries)?;
    let mut state = State::default();
    let mut snapshots = vec![encode_snapshot(&state)];
    for (index, command) in commands.iter().enumerate() {
        let log_id = LogId::new(CommittedLeaderId::new(3, 1), index as u64 + 1);
        let entry = openraft::Entry::<TypeConfig> {
            log_id,
            payload: EntryPayload::Normal(command.clone()),
        };
        std::fs::write(
            entries.join(format!("entry-{index}")),
            codec::encode(&entry),
        )?;
        std::fs::write(
            entries.join(format!("command-{index}")),
            codec::encode(command),
        )?;
        let _ = state.apply(command, &mut Journal::default());
        if index == 3 {
            snapshots.push(encode_snapshot(&state));
        }
    }
    let blank = openraft::Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 0),
        payload: EntryPayload::Blank,
    };
    std::fs::write(entries.join("blank"), codec::encode(&blank))?;
    std::fs::write(entries.join("blank-json"), serde_json::to_vec(&blank)?)?;

    let snapshot_dir = root.join("snapshot");
    std::fs::create_dir_all(&snapshot_dir)?;
    for (n, data) in snapshots.iter().enumerate() {
        std::fs::write(snapshot_dir.join(format!("snapshot-{n}")), data)?;
    }

    let requests = root.join("requests");
    std::fs::create_dir_all(&requests)?;
    let frame = |kind: u8, message: Vec<u8>| {
        let mut out = vec![kind];
        out.extend_from_slice(&(message.len() as u16).to_be_bytes());
        out.extend(message);
        out
    };
    let wire_file = shardfs_meta::convert::file_to_wire(&file);
    let sequence = [
        frame(
            0,
            pb::MkdirRequest {
                path: "/a/b".into(),
                parents: true,
                request_id: b"m1".to_vec().into(),
            }
            .encode_to_vec(),
        ),
        frame(
            1,
            pb::CommitFileRequest {
                path: "/a/b/f".into(),
                file: Some(wire_file.clone()),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        frame(
            2,
            pb::RenameRequest {
                from: "/a/b".into(),
                to: "/a/c".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        frame(
            3,
            pb::DeleteRequest {
                path: "/a".into(),
                recursive: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        frame(
            4,
            pb::HeartbeatRequest {
                id: 1,
                added: vec![chunk("a").to_vec().into()],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        frame(
            5,
            pb::RegisterChunkServerRequest {
                id: 1,
                addr: "chunk-1.example:7201".into(),
                zone: "z1".into(),
                capacity_bytes: 1 << 30,
            }
            .encode_to_vec(),
        ),
        frame(
            6,
            pb::AllocateChunksRequest {
                chunks: wire_file
                    .chunks
                    .iter()
                    .map(|c| pb::ChunkToPlace {
                        id: c.id.clone(),
                        length: c.length,
                    })
                    .collect(),
                replication: 3,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        frame(
            7,
            pb::LocateChunksRequest {
                ids: vec![chunk("b").to_vec().into()],
                paths: vec!["/a".into()],
            }
            .encode_to_vec(),
        ),
    ];
    for (n, one) in sequence.iter().enumerate() {
        std::fs::write(requests.join(format!("one-{n}")), one)?;
    }
    std::fs::write(requests.join("all"), sequence.concat())?;
    println!("seeds written under {}", root.display());
    Ok(())
}

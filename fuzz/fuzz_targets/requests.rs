//! Client requests as the metaserver's handlers take them: a sequence of
//! protobuf messages (each a kind byte, a u16 length and the encoded
//! message) is checked by `shardfs_meta::requests` and what passes is
//! applied to one state machine. Nothing panics; the namespace stays a
//! tree; the state survives a snapshot round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use shardfs_meta::state::Journal;
use shardfs_meta::requests;
use shardfs_meta::state::State;
use shardfs_meta::store::sm::{decode_snapshot, encode_snapshot};
use shardfs_meta::types::Command;
use shardfs_proto::meta::v1 as pb;

fuzz_target!(|data: &[u8]| {
    let mut state = State::default();
    let mut rest = data;
    let mut now = 1_000u64;
    for _ in 0..64 {
        let Some((head, tail)) = rest.split_at_checked(3) else {
            break;
        };
        let len = (usize::from(head[1]) << 8 | usize::from(head[2])).min(tail.len());
        let (message, tail) = tail.split_at(len);
        rest = tail;
        now += 1;
        let Some(command) = command(head[0], message, now) else {
            continue;
        };
        let mut journal = Journal::default();
        let _ = state.apply(&command, &mut journal);
        state
            .namespace
            .check()
            .expect("a command keeps the namespace a tree");
    }
    let back = decode_snapshot(&encode_snapshot(&state)).expect("our own snapshot decodes");
    assert_eq!(back, state);
});

/// The command a handler would write for this message, if it passes.
fn command(kind: u8, message: &[u8], now: u64) -> Option<Command> {
    match kind % 8 {
        0 => requests::mkdir(&pb::MkdirRequest::decode(message).ok()?, now).ok(),
        1 => {
            let request = pb::CommitFileRequest::decode(message).ok()?;
            let commit = requests::commit(&request, now).ok()?;
            let command = Command::Commit {
                path: commit.path,
                file: commit.file,
                if_absent: commit.if_absent,
                confirmed: Vec::new(),
                min_replicas: 0,
            };
            Some(Command::once(commit.request_id, now, command))
        }
        2 => requests::rename(&pb::RenameRequest::decode(message).ok()?, now).ok(),
        3 => requests::delete(&pb::DeleteRequest::decode(message).ok()?, now).ok(),
        4 => {
            let beat = requests::beat(&pb::HeartbeatRequest::decode(message).ok()?).ok()?;
            Some(Command::ChunkReport {
                server: beat.server,
                added: beat.added,
                removed: beat.removed,
                replace: beat.full_inventory,
            })
        }
        5 => {
            let request = pb::RegisterChunkServerRequest::decode(message).ok()?;
            let info = requests::chunk_server(&request).ok()?;
            Some(Command::RegisterChunkServer {
                id: request.id,
                info,
            })
        }
        6 => {
            let request = pb::AllocateChunksRequest::decode(message).ok()?;
            let (chunks, replication) = requests::allocation(&request).ok()?;
            assert!((1..=16).contains(&replication));
            assert_eq!(chunks.len(), request.chunks.len());
            None
        }
        _ => {
            let request = pb::LocateChunksRequest::decode(message).ok()?;
            let ids = requests::locate(&request).ok()?;
            assert!(ids.len() <= requests::MAX_LOCATE);
            None
        }
    }
}

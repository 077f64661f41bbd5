//! Snapshots as `InstallSnapshot` delivers them: decoding any bytes never
//! panics; what decodes is a consistent state (a tree under the root) that
//! encodes back to the same state, and that can be walked and changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardfs_meta::namespace::{Inode, Namespace};
use shardfs_meta::state::Journal;
use shardfs_meta::store::sm::{decode_snapshot, encode_snapshot};
use shardfs_meta::types::Command;
use shardfs_proto::DfsPath;

fuzz_target!(|data: &[u8]| {
    let Ok(mut state) = decode_snapshot(data) else {
        return;
    };
    let back = decode_snapshot(&encode_snapshot(&state)).expect("our own snapshot decodes");
    assert_eq!(back, state);
    walk(&state.namespace, DfsPath::root(), &mut 0);
    let mut journal = Journal::default();
    for command in [
        Command::Mkdir {
            path: "/fuzz/dir".into(),
            parents: true,
            mtime_ms: 1,
        },
        Command::Delete {
            path: "/".into(),
            recursive: true,
        },
    ] {
        let _ = state.apply(&command, &mut journal);
        state
            .namespace
            .check()
            .expect("a command keeps the namespace a tree");
    }
});

/// Lists every directory reachable by valid names (at most 10,000 lists).
fn walk(namespace: &Namespace, dir: DfsPath, lists: &mut usize) {
    *lists += 1;
    if *lists > 10_000 {
        return;
    }
    let Ok((entries, _)) = namespace.list(&dir, None, 1000) else {
        return;
    };
    for entry in entries {
        let Ok(path) = dir.join(&entry.name) else {
            continue;
        };
        namespace
            .lookup(&path)
            .expect("a listed entry can be looked up");
        if matches!(entry.inode, Inode::Dir { .. }) {
            walk(namespace, path, lists);
        }
    }
}

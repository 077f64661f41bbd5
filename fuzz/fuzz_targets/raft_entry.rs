//! Raft log entries as they arrive in AppendEntries and sit in the log:
//! decoding any bytes never panics (nor overflows the stack); an entry
//! that decodes encodes back to bytes that decode to the same entry; its
//! command applies to a state machine without panicking and leaves the
//! namespace a tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardfs_meta::codec;
use shardfs_meta::state::{Journal, State};
use shardfs_meta::types::{Command, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = codec::decode::<Entry>(data) {
        let again: Entry = codec::decode(&codec::encode(&entry)).expect("our own encoding decodes");
        assert_eq!(format!("{again:?}"), format!("{entry:?}"));
        if let openraft::EntryPayload::Normal(command) = &entry.payload {
            apply(command);
        }
    }
    if let Ok(command) = codec::decode::<Command>(data) {
        let again: Command =
            codec::decode(&codec::encode(&command)).expect("our own encoding decodes");
        assert_eq!(again, command);
        apply(&command);
    }
});

fn apply(command: &Command) {
    let mut state = State::default();
    let mut journal = Journal::default();
    let _ = state.apply(command, &mut journal);
    let _ = state.apply(command, &mut journal);
    state
        .namespace
        .check()
        .expect("a command keeps the namespace a tree");
}

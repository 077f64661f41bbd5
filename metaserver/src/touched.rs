//! What applied log entries changed since repair last looked ([`Touched`]):
//! recorded by the state machine on every metaserver, drained by the
//! leader's repair ([`crate::repair`]) so a round looks only at chunks that
//! may have changed.

use std::collections::{BTreeSet, HashSet};

use shardfs_proto::ChunkId;

use crate::cluster::{ClusterChange, ServerId};

/// Most touched chunks kept; past it the next round looks at everything.
const TOUCHED_MAX: usize = 100_000;

/// What applied log entries changed since repair last looked: chunks whose
/// files or locations changed, and chunk servers whose registration did.
/// Every metaserver records it; the leader's repair drains it. Past a bound
/// (on a follower, say, which nobody drains) it becomes "everything".
#[derive(Debug, Default)]
pub struct Touched {
    pub chunks: HashSet<ChunkId>,
    pub servers: BTreeSet<ServerId>,
    pub everything: bool,
}

impl Touched {
    /// Records what one batch of applied entries changed.
    pub fn record(&mut self, chunks: &[ChunkId], cluster: &[ClusterChange]) {
        if self.everything {
            return;
        }
        self.chunks.extend(chunks.iter().copied());
        for change in cluster {
            match change {
                ClusterChange::Server(id, _) => {
                    self.servers.insert(*id);
                }
                ClusterChange::Locations(chunk, _) => {
                    self.chunks.insert(*chunk);
                }
            }
        }
        if self.chunks.len() > TOUCHED_MAX {
            self.everything();
        }
    }

    /// Everything may have changed (a snapshot replaced the state).
    pub fn everything(&mut self) {
        *self = Self {
            everything: true,
            ..Self::default()
        };
    }
}

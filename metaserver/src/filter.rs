//! Faults injected into the Raft transport: every message a metaserver
//! sends to a peer first asks the node's [`Filters`] whether to deliver it,
//! drop it, or deliver it late. A production node has no filters (one
//! uncontended lock per message); tests run several nodes in one process
//! with one shared `Filters` and cut, heal and slow the links between them
//! deterministically, with no network namespaces or root.
//!
//! A dropped message fails at once as `Unreachable`, as a refused
//! connection would; openraft then backs off and retries, as it does
//! across a real partition.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::types::NodeId;

/// The three Raft messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// What becomes of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    Drop,
    /// Delivered after this long.
    Delay(Duration),
}

/// A rule over the messages of the group.
pub trait Filter: Send + Sync {
    /// What becomes of a message of kind `rpc` from `from` to `to`.
    fn verdict(&self, from: NodeId, to: NodeId, rpc: RaftRpc) -> Verdict;
}

/// The filters in force, shared by clones. A message is dropped if any
/// filter drops it, else delayed by the longest delay any filter asks for.
#[derive(Clone, Default)]
pub struct Filters {
    filters: Arc<RwLock<Vec<Arc<dyn Filter>>>>,
}

impl Filters {
    /// Puts `filter` in force (beside those already in force).
    pub fn add(&self, filter: impl Filter + 'static) {
        self.filters
            .write()
            .expect("filters lock")
            .push(Arc::new(filter));
    }

    /// Heals everything: no filter is in force any more.
    pub fn clear(&self) {
        self.filters.write().expect("filters lock").clear();
    }

    pub fn verdict(&self, from: NodeId, to: NodeId, rpc: RaftRpc) -> Verdict {
        let filters = self.filters.read().expect("filters lock");
        let mut longest = Duration::ZERO;
        for filter in filters.iter() {
            match filter.verdict(from, to, rpc) {
                Verdict::Deliver => {}
                Verdict::Drop => return Verdict::Drop,
                Verdict::Delay(delay) => longest = longest.max(delay),
            }
        }
        if longest.is_zero() {
            Verdict::Deliver
        } else {
            Verdict::Delay(longest)
        }
    }
}

/// Cuts every link between two sides (both directions); links within a
/// side, and to nodes on neither side, stay up.
pub struct Partition {
    pub left: BTreeSet<NodeId>,
    pub right: BTreeSet<NodeId>,
}

impl Partition {
    pub fn new(
        left: impl IntoIterator<Item = NodeId>,
        right: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        Self {
            left: left.into_iter().collect(),
            right: right.into_iter().collect(),
        }
    }
}

impl Filter for Partition {
    fn verdict(&self, from: NodeId, to: NodeId, _: RaftRpc) -> Verdict {
        let across = (self.left.contains(&from) && self.right.contains(&to))
            || (self.right.contains(&from) && self.left.contains(&to));
        if across {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }
}

/// Cuts one node off from every other, both directions.
pub struct Isolate(pub NodeId);

impl Filter for Isolate {
    fn verdict(&self, from: NodeId, to: NodeId, _: RaftRpc) -> Verdict {
        if from == self.0 || to == self.0 {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }
}

/// Drops the messages from one node to another, one direction only.
pub struct OneWay {
    pub from: NodeId,
    pub to: NodeId,
}

impl Filter for OneWay {
    fn verdict(&self, from: NodeId, to: NodeId, _: RaftRpc) -> Verdict {
        if from == self.from && to == self.to {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }
}

/// Delays every message (of one kind, or all) by a fixed time.
pub struct Delay {
    pub delay: Duration,
    pub only: Option<RaftRpc>,
}

impl Filter for Delay {
    fn verdict(&self, _: NodeId, _: NodeId, rpc: RaftRpc) -> Verdict {
        match self.only {
            Some(kind) if kind != rpc => Verdict::Deliver,
            _ => Verdict::Delay(self.delay),
        }
    }
}

/// Drops a fixed share of all messages, chosen by a seeded hash of a
/// message counter: the same seed drops the same positions in the
/// sequence of messages.
pub struct DropRate {
    /// Dropped messages per 1,000.
    pub per_mille: u64,
    pub seed: u64,
    count: AtomicU64,
}

impl DropRate {
    pub fn new(per_mille: u64, seed: u64) -> Self {
        Self {
            per_mille: per_mille.min(1000),
            seed,
            count: AtomicU64::new(0),
        }
    }
}

impl Filter for DropRate {
    fn verdict(&self, _: NodeId, _: NodeId, _: RaftRpc) -> Verdict {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.seed.to_le_bytes());
        hasher.update(&n.to_le_bytes());
        let roll = u64::from_le_bytes(hasher.finalize().as_bytes()[..8].try_into().unwrap()) % 1000;
        if roll < self.per_mille {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: RaftRpc = RaftRpc::Vote;

    #[test]
    fn no_filter_delivers_everything() {
        let filters = Filters::default();
        assert_eq!(filters.verdict(1, 2, V), Verdict::Deliver);
    }

    #[test]
    fn a_partition_cuts_across_only_and_heals() {
        let filters = Filters::default();
        filters.add(Partition::new([1], [2, 3]));
        assert_eq!(filters.verdict(1, 2, V), Verdict::Drop);
        assert_eq!(filters.verdict(3, 1, V), Verdict::Drop);
        assert_eq!(filters.verdict(2, 3, V), Verdict::Deliver);
        assert_eq!(filters.verdict(1, 4, V), Verdict::Deliver);
        filters.clear();
        assert_eq!(filters.verdict(1, 2, V), Verdict::Deliver);
    }

    #[test]
    fn isolate_and_one_way() {
        let filters = Filters::default();
        filters.add(Isolate(2));
        assert_eq!(filters.verdict(2, 1, V), Verdict::Drop);
        assert_eq!(filters.verdict(3, 2, V), Verdict::Drop);
        assert_eq!(filters.verdict(1, 3, V), Verdict::Deliver);
        filters.clear();
        filters.add(OneWay { from: 1, to: 2 });
        assert_eq!(filters.verdict(1, 2, V), Verdict::Drop);
        assert_eq!(filters.verdict(2, 1, V), Verdict::Deliver);
    }

    #[test]
    fn the_longest_delay_wins_and_a_drop_beats_a_delay() {
        let filters = Filters::default();
        let ms = Duration::from_millis;
        filters.add(Delay {
            delay: ms(10),
            only: None,
        });
        filters.add(Delay {
            delay: ms(30),
            only: Some(RaftRpc::AppendEntries),
        });
        assert_eq!(filters.verdict(1, 2, V), Verdict::Delay(ms(10)));
        assert_eq!(
            filters.verdict(1, 2, RaftRpc::AppendEntries),
            Verdict::Delay(ms(30))
        );
        filters.add(OneWay { from: 1, to: 2 });
        assert_eq!(filters.verdict(1, 2, V), Verdict::Drop);
    }

    #[test]
    fn a_drop_rate_is_seeded_and_near_its_share() {
        let run = |seed| {
            let rate = DropRate::new(200, seed);
            (0..2000)
                .map(|_| rate.verdict(1, 2, V) == Verdict::Drop)
                .collect::<Vec<_>>()
        };
        let first = run(7);
        assert_eq!(first, run(7));
        assert_ne!(first, run(8));
        let dropped = first.iter().filter(|d| **d).count();
        assert!((300..500).contains(&dropped), "{dropped} of 2000 dropped");
    }
}

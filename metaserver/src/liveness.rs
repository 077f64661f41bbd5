//! Which chunk servers are alive: the leader's own soft state, from
//! heartbeats. Not replicated (DESIGN.md): a new leader gives every chunk
//! server one full dead-timeout before it declares anyone dead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cluster::ServerId;

/// Silence after which a chunk server counts as dead.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(10);

/// What the last heartbeat of a chunk server said.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub capacity_bytes: u64,
}

/// A chunk server's scrub figures, from its last heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub passes: u64,
    pub bytes: u64,
    pub corrupt: u64,
    pub pass_permille: u64,
}

pub struct Liveness {
    dead_after: Duration,
    inner: Mutex<Inner>,
    scrub: Mutex<HashMap<ServerId, ScrubReport>>,
}

struct Inner {
    /// The Raft term these observations belong to.
    term: u64,
    /// When this node started observing in this term (as leader).
    since: Instant,
    seen: HashMap<ServerId, (Instant, Usage)>,
}

impl Liveness {
    pub fn new(dead_after: Duration) -> Self {
        Self {
            dead_after,
            inner: Mutex::new(Inner {
                term: 0,
                since: Instant::now(),
                seen: HashMap::new(),
            }),
            scrub: Mutex::new(HashMap::new()),
        }
    }

    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// Starts a fresh grace period when the term changes (a new leader).
    pub fn observe_term(&self, term: u64) {
        let mut inner = self.inner.lock().expect("liveness lock");
        if inner.term != term {
            inner.term = term;
            inner.since = Instant::now();
        }
    }

    pub fn heartbeat(&self, server: ServerId, usage: Usage) {
        let mut inner = self.inner.lock().expect("liveness lock");
        inner.seen.insert(server, (Instant::now(), usage));
    }

    pub fn is_alive(&self, server: ServerId) -> bool {
        let inner = self.inner.lock().expect("liveness lock");
        let last = match inner.seen.get(&server) {
            Some((at, _)) => (*at).max(inner.since),
            None => inner.since,
        };
        last.elapsed() < self.dead_after
    }

    pub fn record_scrub(&self, server: ServerId, report: ScrubReport) {
        self.scrub
            .lock()
            .expect("scrub lock")
            .insert(server, report);
    }

    pub fn scrub(&self, server: ServerId) -> Option<ScrubReport> {
        self.scrub.lock().expect("scrub lock").get(&server).copied()
    }

    /// True while a new leader cannot yet tell dead servers from live ones.
    pub fn in_grace(&self) -> bool {
        let inner = self.inner.lock().expect("liveness lock");
        inner.since.elapsed() < self.dead_after
    }

    /// True when `server` sent a heartbeat within `within`.
    pub fn seen_within(&self, server: ServerId, within: Duration) -> bool {
        let inner = self.inner.lock().expect("liveness lock");
        inner
            .seen
            .get(&server)
            .is_some_and(|(at, _)| at.elapsed() < within)
    }

    pub fn usage(&self, server: ServerId) -> Option<Usage> {
        let inner = self.inner.lock().expect("liveness lock");
        inner.seen.get(&server).map(|(_, usage)| *usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_kills_and_a_new_term_gives_grace() {
        let liveness = Liveness::new(Duration::from_millis(50));
        liveness.observe_term(1);
        let usage = Usage {
            used_bytes: 1,
            free_bytes: 2,
            capacity_bytes: 3,
        };
        liveness.heartbeat(7, usage);
        assert!(liveness.is_alive(7));
        assert!(liveness.is_alive(8), "unknown servers get the grace period");
        std::thread::sleep(Duration::from_millis(80));
        assert!(!liveness.is_alive(7));
        assert!(!liveness.is_alive(8));
        liveness.observe_term(2);
        assert!(liveness.is_alive(7), "a new leader waits a full timeout");
        assert_eq!(liveness.usage(7).unwrap().free_bytes, 2);
    }
}

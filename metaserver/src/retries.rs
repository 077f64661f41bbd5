//! The retry cache: the first answer to every call that changes the
//! namespace, by the call's request id, so a call retried after its first
//! attempt was applied (the leader died before answering, say) is answered
//! again instead of applied again.
//!
//! It is part of the replicated state: entries are added and expired by
//! log entries (`Command::Once`, timed by the leader's stamp), so every
//! metaserver holds the same cache and a new leader answers the retries of
//! calls its predecessor applied.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::types::CommandResult;

/// How long a call's answer is kept. Clients give up retrying after 15 s.
pub const RETRY_TTL_MS: u64 = 10 * 60 * 1000;
/// Most answers kept; the oldest go first beyond it.
pub const RETRY_CAPACITY: usize = 100_000;
/// Longest request id accepted.
pub const MAX_REQUEST_ID: usize = 64;

/// A call's first answer and when it was applied (the leader's clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub at_ms: u64,
    pub result: CommandResult,
}

/// One change to the cache, for the state machine to write through.
pub type RetryChange = (Vec<u8>, Option<Answer>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryCache {
    answers: HashMap<Vec<u8>, Answer>,
    /// (applied at, request id), oldest first.
    by_age: BTreeSet<(u64, Vec<u8>)>,
}

impl RetryCache {
    pub fn from_parts(parts: Vec<(Vec<u8>, Answer)>) -> Self {
        // An id listed twice (a corrupt or forged snapshot) keeps its last
        // answer, and only that one is aged: the two maps stay in step.
        let mut cache = Self::default();
        for (id, answer) in parts {
            cache.by_age.insert((answer.at_ms, id.clone()));
            if let Some(old) = cache.answers.insert(id.clone(), answer) {
                let newest = cache.answers[&id].at_ms;
                if old.at_ms != newest {
                    cache.by_age.remove(&(old.at_ms, id));
                }
            }
        }
        cache
    }

    pub fn to_parts(&self) -> Vec<(Vec<u8>, Answer)> {
        self.by_age
            .iter()
            .map(|(_, id)| (id.clone(), self.answers[id].clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    pub fn get(&self, id: &[u8]) -> Option<&CommandResult> {
        self.answers.get(id).map(|a| &a.result)
    }

    /// Records the first answer to call `id`.
    pub fn insert(
        &mut self,
        id: Vec<u8>,
        at_ms: u64,
        result: CommandResult,
        changes: &mut Vec<RetryChange>,
    ) {
        let answer = Answer { at_ms, result };
        if let Some(old) = self.answers.insert(id.clone(), answer.clone()) {
            self.by_age.remove(&(old.at_ms, id.clone()));
        }
        self.by_age.insert((at_ms, id.clone()));
        changes.push((id, Some(answer)));
    }

    /// Forgets answers older than the TTL at `now_ms`, and the oldest beyond
    /// the capacity (leaving room for one more).
    pub fn expire(&mut self, now_ms: u64, changes: &mut Vec<RetryChange>) {
        let cutoff = now_ms.saturating_sub(RETRY_TTL_MS);
        while let Some((at_ms, _)) = self.by_age.first() {
            if *at_ms >= cutoff && self.answers.len() < RETRY_CAPACITY {
                break;
            }
            let (_, id) = self.by_age.pop_first().expect("not empty");
            self.answers.remove(&id);
            changes.push((id, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Outcome;

    fn done() -> CommandResult {
        CommandResult(Ok(Outcome::Done))
    }

    #[test]
    fn an_id_listed_twice_keeps_one_answer() {
        let answer = |at_ms| Answer {
            at_ms,
            result: done(),
        };
        let mut cache =
            RetryCache::from_parts(vec![(b"a".to_vec(), answer(5)), (b"a".to_vec(), answer(9))]);
        assert_eq!(cache.to_parts(), vec![(b"a".to_vec(), answer(9))]);
        cache.expire(9 + RETRY_TTL_MS + 1, &mut Vec::new());
        assert!(cache.is_empty() && cache.to_parts().is_empty());
    }

    #[test]
    fn answers_expire_after_the_ttl_oldest_first() {
        let mut cache = RetryCache::default();
        let mut changes = Vec::new();
        cache.insert(b"a".to_vec(), 1_000, done(), &mut changes);
        cache.insert(b"b".to_vec(), 2_000, done(), &mut changes);
        cache.expire(1_000 + RETRY_TTL_MS, &mut changes);
        assert!(cache.get(b"a").is_some() && cache.get(b"b").is_some());
        cache.expire(1_001 + RETRY_TTL_MS, &mut changes);
        assert!(cache.get(b"a").is_none() && cache.get(b"b").is_some());
        assert_eq!(changes.last(), Some(&(b"a".to_vec(), None)));
        let parts = cache.to_parts();
        assert_eq!(RetryCache::from_parts(parts), cache);
    }

    #[test]
    fn the_oldest_answers_go_beyond_the_capacity() {
        let mut cache = RetryCache::default();
        let mut changes = Vec::new();
        for n in 0..RETRY_CAPACITY as u64 {
            cache.insert(n.to_be_bytes().to_vec(), n, done(), &mut changes);
        }
        cache.expire(RETRY_CAPACITY as u64, &mut changes);
        assert_eq!(cache.len(), RETRY_CAPACITY - 1);
        assert!(cache.get(&0u64.to_be_bytes()).is_none());
        assert!(cache.get(&1u64.to_be_bytes()).is_some());
    }
}

//! The Raft log store. Entries live under their big-endian index, so the
//! engine's key order is log order; the vote, the committed id and the last
//! purged id live in their own space. The vote and appended entries are
//! flushed before Raft is told they are stored. Values are encoded by
//! [`crate::codec`].

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogState, RaftLogReader, Vote};

use super::kv::{Kv, Row, Space};
use super::{blocking, decode_error, io_error};
use crate::codec;
use crate::types::{LogId, NodeId, StorageError, TypeConfig};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    kv: Arc<dyn Kv>,
}

impl LogStore {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self { kv }
    }

    fn read_value<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        match self
            .kv
            .get(Space::Raft, key)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?
        {
            Some(bytes) => Ok(Some(
                codec::decode(&bytes).map_err(|e| decode_error(subject, e))?,
            )),
            None => Ok(None),
        }
    }

    fn write_value<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode(value);
        self.kv
            .write(Space::Raft, vec![(key.to_vec(), Some(bytes))])
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))
    }

    async fn flush(&self, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        let kv = self.kv.clone();
        blocking(move || kv.flush())
            .await
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))
    }

    /// The stored entries with index in `[start, end)` (end None: all).
    fn rows(&self, start: u64, end: Option<u64>) -> Result<Vec<Row>, StorageError> {
        let end_key = end.map(|e| e.to_be_bytes());
        self.kv
            .range(
                Space::Log,
                &start.to_be_bytes(),
                end_key.as_ref().map(|k| &k[..]),
            )
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    /// Deletes the entries with index in `[start, end)`.
    fn delete_range(&self, start: u64, end: Option<u64>) -> Result<(), StorageError> {
        let batch = self
            .rows(start, end)?
            .into_iter()
            .map(|(k, _)| (k, None))
            .collect();
        self.kv
            .write(Space::Log, batch)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, StorageError> {
    codec::decode(bytes).map_err(|e| decode_error(ErrorSubject::Logs, e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let rows = self.rows(start, end)?;
        rows.iter().map(|(_, v)| decode_entry(v)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> =
            self.read_value(LAST_PURGED_KEY, ErrorSubject::Logs)?;
        let last = self
            .kv
            .last(Space::Log)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last_log_id = match last {
            Some((_, bytes)) => Some(decode_entry(&bytes)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_value(VOTE_KEY, vote, ErrorSubject::Vote)?;
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_value(VOTE_KEY, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: after a crash Raft learns the commit index again.
        self.write_value(COMMITTED_KEY, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_value::<Option<LogId>>(COMMITTED_KEY, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let batch = entries
            .into_iter()
            .map(|entry| {
                let bytes = codec::encode(&entry);
                (entry.log_id.index.to_be_bytes().to_vec(), Some(bytes))
            })
            .collect();
        self.kv
            .write(Space::Log, batch)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // One flush covers every entry of the batch; Raft hears of them only
        // once they are durable.
        let kv = self.kv.clone();
        callback.log_io_completed(blocking(move || kv.flush()).await);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.delete_range(log_id.index, None)?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves entries
        // that are already covered, never a hole.
        self.write_value(LAST_PURGED_KEY, &log_id, ErrorSubject::Logs)?;
        self.flush(ErrorSubject::Logs).await?;
        self.delete_range(0, Some(log_id.index + 1))
    }
}

//! The Raft state machine: [`State`] in memory for fast reads, written
//! through to the key-value engine.
//!
//! Each `apply` call writes the changed keys of all its entries and the new
//! applied log id in one atomic batch, without flushing: the Raft log is the
//! durable record, and a restart replays exactly what the engine lost.
//! Values and snapshots are encoded by [`crate::codec`]. Snapshots are the
//! whole state serialized; the current one is persisted
//! (and flushed, with the state) before Raft may purge the log it covers.
//! At start-up a snapshot newer than the stored state wins.

use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, StorageIOError,
};
use serde::{Deserialize, Serialize};

use super::kv::{Batch, Kv, Space};
use super::{blocking, decode_error, io_error};
use shardfs_proto::ChunkId;
use shardfs_proto::capability::ClusterKey;

use crate::cluster::{ChunkServerInfo, Cluster, ClusterChange};
use crate::codec;
use crate::namespace::{Change, Inode, Namespace, NamespaceParts};
use crate::retries::{Answer, RetryCache, RetryChange};
use crate::state::{Journal, State};
use crate::tokens::{TokenChange, TokenRecord, Tokens};
use crate::touched::Touched;
use crate::types::{
    CommandResult, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const APPLIED_KEY: &[u8] = b"applied";
const MEMBERSHIP_KEY: &[u8] = b"membership";
const NEXT_INODE_KEY: &[u8] = b"next_inode";
const INODE_PREFIX: u8 = b'i';
const ENTRY_PREFIX: u8 = b'e';
const SERVER_PREFIX: u8 = b's';
const LOCATION_PREFIX: u8 = b'c';
const RETRY_PREFIX: u8 = b'r';
const TOKEN_PREFIX: u8 = b't';
// Keys of single values must not start with a row prefix byte below.
const CAPABILITY_KEY: &[u8] = b"key:capability";
const SNAPSHOT_META_KEY: &[u8] = b"meta";
const SNAPSHOT_DATA_KEY: &[u8] = b"data";

/// What a snapshot holds.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotPayload {
    namespace: NamespaceParts,
    #[serde(default)]
    servers: Vec<(u64, ChunkServerInfo)>,
    #[serde(default)]
    locations: Vec<(ChunkId, Vec<u64>)>,
    #[serde(default)]
    retries: Vec<(Vec<u8>, Answer)>,
    #[serde(default)]
    tokens: Vec<(String, TokenRecord)>,
    #[serde(default)]
    capability_key: Option<ClusterKey>,
}

/// A snapshot written before capability keys existed.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotPayloadBeforeCapabilities {
    namespace: NamespaceParts,
    servers: Vec<(u64, ChunkServerInfo)>,
    locations: Vec<(ChunkId, Vec<u64>)>,
    retries: Vec<(Vec<u8>, Answer)>,
    tokens: Vec<(String, TokenRecord)>,
}

impl From<SnapshotPayloadBeforeCapabilities> for SnapshotPayload {
    fn from(old: SnapshotPayloadBeforeCapabilities) -> Self {
        Self {
            namespace: old.namespace,
            servers: old.servers,
            locations: old.locations,
            retries: old.retries,
            tokens: old.tokens,
            capability_key: None,
        }
    }
}

/// A snapshot written before tokens existed: postcard decodes structs by
/// position, so a missing trailing field is not defaulted.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotPayloadBeforeTokens {
    namespace: NamespaceParts,
    servers: Vec<(u64, ChunkServerInfo)>,
    locations: Vec<(ChunkId, Vec<u64>)>,
    retries: Vec<(Vec<u8>, Answer)>,
}

impl From<SnapshotPayloadBeforeTokens> for SnapshotPayload {
    fn from(old: SnapshotPayloadBeforeTokens) -> Self {
        Self {
            namespace: old.namespace,
            servers: old.servers,
            locations: old.locations,
            retries: old.retries,
            tokens: Vec::new(),
            capability_key: None,
        }
    }
}

impl SnapshotPayload {
    fn of(state: &State) -> Self {
        let (servers, locations) = state.cluster.to_parts();
        Self {
            namespace: state.namespace.to_parts(),
            servers,
            locations,
            retries: state.retries.to_parts(),
            tokens: state.tokens.to_parts(),
            capability_key: state.capability_key,
        }
    }

    fn into_state(self) -> Result<State, String> {
        Ok(State {
            namespace: Namespace::from_rows(self.namespace)?,
            cluster: Cluster::from_parts(
                self.servers.into_iter().collect(),
                self.locations
                    .into_iter()
                    .map(|(c, s)| (c, s.into_iter().collect()))
                    .collect(),
            ),
            retries: RetryCache::from_parts(self.retries),
            tokens: Tokens::from_parts(self.tokens),
            capability_key: self.capability_key,
        })
    }
}

pub struct StateMachine {
    kv: Arc<dyn Kv>,
    /// Shared with the read path (lookups and listings).
    state: Arc<RwLock<State>>,
    /// What applied entries changed, for repair (shared with the node).
    touched: Arc<Mutex<Touched>>,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// Makes snapshot ids unique among snapshots of the same log id.
    snapshot_seq: u64,
}

fn inode_key(n: u64) -> Vec<u8> {
    let mut key = vec![INODE_PREFIX];
    key.extend_from_slice(&n.to_be_bytes());
    key
}

fn entry_key(parent: u64, name: &str) -> Vec<u8> {
    let mut key = vec![ENTRY_PREFIX];
    key.extend_from_slice(&parent.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode(value)
}

fn server_key(id: u64) -> Vec<u8> {
    let mut key = vec![SERVER_PREFIX];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn location_key(chunk: &ChunkId) -> Vec<u8> {
    let mut key = vec![LOCATION_PREFIX];
    key.extend_from_slice(chunk.as_bytes());
    key
}

fn cluster_row(change: ClusterChange) -> (Vec<u8>, Option<Vec<u8>>) {
    match change {
        ClusterChange::Server(id, info) => (server_key(id), info.map(|i| encode(&i))),
        ClusterChange::Locations(chunk, holders) => {
            (location_key(&chunk), holders.map(|h| encode(&h)))
        }
    }
}

fn retry_key(id: &[u8]) -> Vec<u8> {
    let mut key = vec![RETRY_PREFIX];
    key.extend_from_slice(id);
    key
}

fn retry_row((id, answer): RetryChange) -> (Vec<u8>, Option<Vec<u8>>) {
    (retry_key(&id), answer.map(|a| encode(&a)))
}

fn token_key(name: &str) -> Vec<u8> {
    let mut key = vec![TOKEN_PREFIX];
    key.extend_from_slice(name.as_bytes());
    key
}

fn token_row((name, record): TokenChange) -> (Vec<u8>, Option<Vec<u8>>) {
    (token_key(&name), record.map(|r| encode(&r)))
}

fn u64_at(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(array)
}

/// The engine rows that make up `state`, applied log id and membership.
fn full_batch(state: &State, applied: &Option<LogId>, membership: &StoredMembership) -> Batch {
    let parts = state.namespace.to_parts();
    let mut batch: Batch = Vec::with_capacity(parts.inodes.len() + parts.entries.len() + 3);
    for (n, inode) in &parts.inodes {
        batch.push((inode_key(*n), Some(encode(inode))));
    }
    for (parent, name, child) in &parts.entries {
        batch.push((entry_key(*parent, name), Some(child.to_be_bytes().to_vec())));
    }
    batch.push((
        NEXT_INODE_KEY.to_vec(),
        Some(parts.next_inode.to_be_bytes().to_vec()),
    ));
    let (servers, locations) = state.cluster.to_parts();
    for (id, info) in servers {
        batch.push(cluster_row(ClusterChange::Server(id, Some(info))));
    }
    for (chunk, holders) in locations {
        batch.push(cluster_row(ClusterChange::Locations(chunk, Some(holders))));
    }
    for (id, answer) in state.retries.to_parts() {
        batch.push(retry_row((id, Some(answer))));
    }
    for (name, record) in state.tokens.to_parts() {
        batch.push(token_row((name, Some(record))));
    }
    if let Some(key) = &state.capability_key {
        batch.push((CAPABILITY_KEY.to_vec(), Some(key.to_vec())));
    }
    batch.push((APPLIED_KEY.to_vec(), Some(encode(applied))));
    batch.push((MEMBERSHIP_KEY.to_vec(), Some(encode(membership))));
    batch
}

impl StateMachine {
    /// Loads the state from the engine (or from the persisted snapshot when
    /// that is newer).
    pub fn open(kv: Arc<dyn Kv>) -> Result<Self, StorageError> {
        let read = |key: &[u8]| {
            kv.get(Space::State, key)
                .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))
        };
        let applied: Option<LogId> = match read(APPLIED_KEY)? {
            Some(bytes) => {
                codec::decode(&bytes).map_err(|e| decode_error(ErrorSubject::StateMachine, e))?
            }
            None => None,
        };
        let membership: StoredMembership = match read(MEMBERSHIP_KEY)? {
            Some(bytes) => {
                codec::decode(&bytes).map_err(|e| decode_error(ErrorSubject::StateMachine, e))?
            }
            None => StoredMembership::default(),
        };
        let next_inode = read(NEXT_INODE_KEY)?.map(|b| u64_at(&b)).unwrap_or(0);
        let capability_key = match read(CAPABILITY_KEY)? {
            Some(bytes) => Some(<ClusterKey>::try_from(bytes.as_slice()).map_err(|_| {
                decode_error(
                    ErrorSubject::StateMachine,
                    codec::DecodeError::Invalid(format!(
                        "the capability key is {} bytes, not 32",
                        bytes.len()
                    )),
                )
            })?),
            None => None,
        };
        let rows = |prefix: u8| {
            kv.range(Space::State, &[prefix], Some(&[prefix + 1]))
                .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))
        };
        let mut inodes = std::collections::HashMap::new();
        for (key, value) in rows(INODE_PREFIX)? {
            let inode: Inode =
                codec::decode(&value).map_err(|e| decode_error(ErrorSubject::StateMachine, e))?;
            inodes.insert(u64_at(&key[1..]), inode);
        }
        let mut entries = std::collections::BTreeMap::new();
        for (key, value) in rows(ENTRY_PREFIX)? {
            let parent = u64_at(&key[1..9]);
            let name = String::from_utf8_lossy(&key[9..]).into_owned();
            entries.insert((parent, name), u64_at(&value));
        }
        let mut servers = std::collections::BTreeMap::new();
        for (key, value) in rows(SERVER_PREFIX)? {
            let info: ChunkServerInfo =
                codec::decode(&value).map_err(|e| decode_error(ErrorSubject::StateMachine, e))?;
            servers.insert(u64_at(&key[1..]), info);
        }
        let mut locations = std::collections::HashMap::new();
        for (key, value) in rows(LOCATION_PREFIX)? {
            let chunk = ChunkId::from_slice(&key[1..]).map_err(|e| {
                decode_error(
                    ErrorSubject::StateMachine,
                    codec::DecodeError::Invalid(e.to_string()),
                )
            })?;
            let holders: Vec<u64> =
                codec::decode(&value).map_err(|e| decode_error(ErrorSubject::StateMachine, e))?;
            locations.insert(chunk, holders.into_iter().collect());
        }
        let mut retries = Vec::new();
        for (key, value) in rows(RETRY_PREFIX)? {
            let answer: Answer =
                codec::decode(&value).map_err(|e| decode_error(ErrorSubject::StateMachine, e))?;
            retries.push((key[1..].to_vec(), answer));
        }
        let mut tokens = Vec::new();
        for (key, value) in rows(TOKEN_PREFIX)? {
            let record: TokenRecord =
                codec::decode(&value).map_err(|e| decode_error(ErrorSubject::StateMachine, e))?;
            tokens.push((String::from_utf8_lossy(&key[1..]).into_owned(), record));
        }
        let namespace = Namespace::from_parts(inodes, entries, next_inode);
        namespace.check().map_err(|why| {
            decode_error(
                ErrorSubject::StateMachine,
                codec::DecodeError::Invalid(format!("inconsistent namespace: {why}")),
            )
        })?;
        let mut sm = Self {
            kv,
            state: Arc::new(RwLock::new(State {
                namespace,
                cluster: Cluster::from_parts(servers, locations),
                retries: RetryCache::from_parts(retries),
                tokens: Tokens::from_parts(tokens),
                capability_key,
            })),
            applied,
            membership,
            snapshot_seq: 0,
            touched: Arc::default(),
        };
        if let Some((meta, data)) = sm.read_snapshot()?
            && meta.last_log_id > sm.applied
        {
            sm.restore(&meta, &data)?;
        }
        Ok(sm)
    }

    /// The state, shared with readers.
    pub fn state(&self) -> Arc<RwLock<State>> {
        self.state.clone()
    }

    /// What applied entries changed since repair last looked.
    pub fn touched(&self) -> Arc<Mutex<Touched>> {
        self.touched.clone()
    }

    fn read_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let read = |key: &[u8]| {
            self.kv
                .get(Space::Snapshot, key)
                .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))
        };
        let (Some(meta), Some(data)) = (read(SNAPSHOT_META_KEY)?, read(SNAPSHOT_DATA_KEY)?) else {
            return Ok(None);
        };
        let meta: SnapshotMeta =
            codec::decode(&meta).map_err(|e| decode_error(ErrorSubject::Snapshot(None), e))?;
        Ok(Some((meta, data)))
    }

    /// Replaces the state with a snapshot's and writes it through.
    fn restore(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let state = decode_snapshot(data)
            .map_err(|e| decode_error(ErrorSubject::Snapshot(Some(meta.signature())), e))?;
        let batch = full_batch(&state, &meta.last_log_id, &meta.last_membership);
        let write_err = |e| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e);
        self.kv.clear(Space::State).map_err(write_err)?;
        self.kv.write(Space::State, batch).map_err(write_err)?;
        *self.state.write().expect("state lock") = state;
        self.touched.lock().expect("touched").everything();
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }
}

/// The state a snapshot's data holds (what `InstallSnapshot` carries).
pub fn decode_snapshot(data: &[u8]) -> Result<State, codec::DecodeError> {
    let payload = match codec::decode::<SnapshotPayload>(data) {
        Ok(payload) => payload,
        Err(err) => match codec::decode::<SnapshotPayloadBeforeCapabilities>(data) {
            Ok(old) => old.into(),
            Err(_) => match codec::decode::<SnapshotPayloadBeforeTokens>(data) {
                Ok(old) => old.into(),
                Err(_) => return Err(err),
            },
        },
    };
    payload
        .into_state()
        .map_err(|why| codec::DecodeError::Invalid(format!("inconsistent namespace: {why}")))
}

/// A snapshot's data for `state`.
pub fn encode_snapshot(state: &State) -> Vec<u8> {
    codec::encode(&SnapshotPayload::of(state))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut journal = Journal::default();
        let mut results = Vec::new();
        let mut membership_changed = false;
        {
            let mut state = self.state.write().expect("state lock");
            for entry in entries {
                self.applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => results.push(CommandResult::default()),
                    EntryPayload::Normal(command) => {
                        results.push(state.apply(&command, &mut journal));
                    }
                    EntryPayload::Membership(membership) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), membership);
                        membership_changed = true;
                        results.push(CommandResult::default());
                    }
                }
            }
        }
        self.touched
            .lock()
            .expect("touched")
            .record(&journal.namespace.touched, &journal.cluster);
        let mut batch: Batch = journal
            .namespace
            .changes
            .into_iter()
            .map(|change| match change {
                Change::Inode(n, inode) => (inode_key(n), inode.map(|i| encode(&i))),
                Change::Entry(parent, name, child) => (
                    entry_key(parent, &name),
                    child.map(|c| c.to_be_bytes().to_vec()),
                ),
                Change::NextInode(n) => (NEXT_INODE_KEY.to_vec(), Some(n.to_be_bytes().to_vec())),
            })
            .collect();
        batch.extend(journal.cluster.into_iter().map(cluster_row));
        batch.extend(journal.retries.into_iter().map(retry_row));
        batch.extend(journal.tokens.into_iter().map(token_row));
        if let Some(key) = journal.capability_key {
            batch.push((CAPABILITY_KEY.to_vec(), Some(key.to_vec())));
        }
        batch.push((APPLIED_KEY.to_vec(), Some(encode(&self.applied))));
        if membership_changed {
            batch.push((MEMBERSHIP_KEY.to_vec(), Some(encode(&self.membership))));
        }
        self.kv.write(Space::State, batch).map_err(|e| {
            let subject = match self.applied {
                Some(log_id) => ErrorSubject::Apply(log_id),
                None => ErrorSubject::StateMachine,
            };
            io_error(subject, ErrorVerb::Write, e)
        })?;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Serialize now: the builder runs in another task while applies go on.
        let payload = SnapshotPayload::of(&self.state.read().expect("state lock"));
        self.snapshot_seq += 1;
        SnapshotBuilder {
            kv: self.kv.clone(),
            data: encode(&payload),
            last_log_id: self.applied,
            membership: self.membership.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        // Persist the snapshot first: if we crash while rewriting the state,
        // start-up restores from it.
        persist_snapshot(&self.kv, meta, &data).await?;
        self.restore(meta, &data)?;
        let kv = self.kv.clone();
        blocking(move || kv.flush())
            .await
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.read_snapshot()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Serializes writers of the current snapshot: a snapshot built in the
/// background must never replace a newer one installed meanwhile.
static SNAPSHOT_WRITE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes a snapshot as the current one and flushes it (with everything
/// else written before, including the state it was taken from), unless the
/// stored snapshot is already as new.
async fn persist_snapshot(
    kv: &Arc<dyn Kv>,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(), StorageError> {
    let _write = SNAPSHOT_WRITE.lock().await;
    let stored = kv
        .get(Space::Snapshot, SNAPSHOT_META_KEY)
        .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
    if let Some(stored) = stored
        && let Ok(stored) = codec::decode::<SnapshotMeta>(&stored)
        && stored.last_log_id > meta.last_log_id
        && stored.snapshot_id != meta.snapshot_id
    {
        return Ok(());
    }
    let batch = vec![
        (SNAPSHOT_META_KEY.to_vec(), Some(encode(meta))),
        (SNAPSHOT_DATA_KEY.to_vec(), Some(data.to_vec())),
    ];
    let signature = Some(meta.signature());
    kv.write(Space::Snapshot, batch)
        .map_err(|e| StorageError::from(StorageIOError::write_snapshot(signature.clone(), &e)))?;
    let kv = kv.clone();
    blocking(move || kv.flush())
        .await
        .map_err(|e| StorageIOError::write_snapshot(signature, &e).into())
}

/// Builds a snapshot from a copy of the state taken when it was created.
pub struct SnapshotBuilder {
    kv: Arc<dyn Kv>,
    data: Vec<u8>,
    last_log_id: Option<LogId>,
    membership: StoredMembership,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let snapshot_id = match &self.last_log_id {
            Some(id) => format!(
                "{}-{}-{}-{}",
                id.leader_id.term, id.leader_id.node_id, id.index, self.seq
            ),
            None => format!("empty-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_log_id,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        persist_snapshot(&self.kv, &meta, &self.data).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(self.data.clone())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::Role;

    fn with_token() -> State {
        let mut state = State::default();
        let record = TokenRecord {
            hash: [7; 32],
            role: Role::Writer,
            prefix: "/d".into(),
            created_ms: 3,
        };
        state
            .tokens
            .create("w", record, &mut Vec::new())
            .expect("a new token");
        state
    }

    /// Tokens travel in snapshots; a snapshot written before tokens
    /// existed still installs (with none).
    #[test]
    fn snapshots_keep_tokens_and_old_snapshots_still_decode() {
        let state = with_token();
        let back = decode_snapshot(&encode_snapshot(&state)).unwrap();
        assert_eq!(back.tokens, state.tokens);
        let new = SnapshotPayload::of(&state);
        let old = SnapshotPayloadBeforeTokens {
            namespace: new.namespace,
            servers: new.servers,
            locations: new.locations,
            retries: new.retries,
        };
        let back = decode_snapshot(&codec::encode(&old)).unwrap();
        assert_eq!(back.tokens, Tokens::default());
        assert_eq!(back.namespace, state.namespace);
    }

    /// A single value read back as a row of a part would fail the load.
    #[test]
    fn single_value_keys_stay_out_of_the_row_ranges() {
        let prefixes = [
            INODE_PREFIX,
            ENTRY_PREFIX,
            SERVER_PREFIX,
            LOCATION_PREFIX,
            RETRY_PREFIX,
            TOKEN_PREFIX,
        ];
        for key in [APPLIED_KEY, MEMBERSHIP_KEY, NEXT_INODE_KEY, CAPABILITY_KEY] {
            assert!(
                !prefixes.contains(&key[0]),
                "{} starts with a row prefix",
                String::from_utf8_lossy(key)
            );
        }
    }

    /// The capability key travels in snapshots; one written before keys
    /// existed still installs (without one, and with its tokens).
    #[test]
    fn snapshots_keep_the_capability_key_and_older_ones_still_decode() {
        let mut state = with_token();
        state.capability_key = Some([9; 32]);
        let back = decode_snapshot(&encode_snapshot(&state)).unwrap();
        assert_eq!(back.capability_key, Some([9; 32]));
        let new = SnapshotPayload::of(&state);
        let old = SnapshotPayloadBeforeCapabilities {
            namespace: new.namespace,
            servers: new.servers,
            locations: new.locations,
            retries: new.retries,
            tokens: new.tokens,
        };
        let back = decode_snapshot(&codec::encode(&old)).unwrap();
        assert_eq!(back.capability_key, None);
        assert_eq!(back.tokens, state.tokens);
    }
}

//! The replicated state: what every metaserver holds and the Raft log
//! changes, one command at a time.

use std::collections::BTreeMap;

use shardfs_proto::capability::ClusterKey;
use shardfs_proto::{ChunkId, DfsPath};

use crate::cluster::Cluster;
use crate::cluster::ClusterChange;
use crate::namespace::{self, FileMeta, Namespace, NsError};
use crate::retries::{RetryCache, RetryChange};
use crate::tokens::{TokenChange, Tokens};
use crate::types::{Command, CommandResult, Outcome};

/// Everything the state machine replicates.
/// What the commands applied since it was last drained changed, part by
/// part, for the state machine to write through (and repair to look at).
#[derive(Debug, Default)]
pub struct Journal {
    pub namespace: namespace::Journal,
    /// Changes to the chunk server registry and chunk locations.
    pub cluster: Vec<ClusterChange>,
    /// Changes to the retry cache.
    pub retries: Vec<RetryChange>,
    /// Tokens created and revoked.
    pub tokens: Vec<TokenChange>,
    /// The capability key, when it was set.
    pub capability_key: Option<ClusterKey>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub namespace: Namespace,
    pub cluster: Cluster,
    pub retries: RetryCache,
    pub tokens: Tokens,
    /// The key chunk capabilities are made with; None until the first
    /// leader that needs one has it committed.
    pub capability_key: Option<ClusterKey>,
}

fn path(text: &str) -> Result<DfsPath, NsError> {
    DfsPath::parse(text).map_err(|e| NsError::Invalid(e.to_string()))
}

impl State {
    /// Applies one command, recording what changed in `journal`.
    pub fn apply(&mut self, command: &Command, journal: &mut Journal) -> CommandResult {
        if let Command::Once {
            request_id,
            at_ms,
            command,
        } = command
        {
            self.retries.expire(*at_ms, &mut journal.retries);
            if let Some(first) = self.retries.get(request_id) {
                return first.clone();
            }
            let result = self.apply(command, journal);
            self.retries.insert(
                request_id.clone(),
                *at_ms,
                result.clone(),
                &mut journal.retries,
            );
            return result;
        }
        let ns = &mut self.namespace;
        let cluster = &mut self.cluster;
        CommandResult(match command {
            Command::Mkdir {
                path: p,
                parents,
                mtime_ms,
            } => path(p).and_then(|p| {
                ns.mkdir(&p, *parents, *mtime_ms, &mut journal.namespace)
                    .map(Outcome::Created)
            }),
            Command::Commit {
                path: p,
                file,
                if_absent,
                confirmed,
                min_replicas,
            } => path(p).and_then(|p| {
                for (server, chunks) in confirmed {
                    cluster.report(*server, chunks, &[], false, &mut journal.cluster);
                }
                file.check_shape().map_err(NsError::Invalid)?;
                if FileMeta::content_id_of(&file.chunks) != file.content_id {
                    return Err(NsError::Invalid(
                        "the file's content id is not that of its chunks".into(),
                    ));
                }
                check_replicas(cluster, file, *min_replicas)?;
                check_lengths(ns, file)?;
                ns.commit(&p, file.clone(), *if_absent, &mut journal.namespace)
                    .map(|replaced| Outcome::Replaced(replaced.is_some()))
            }),
            Command::Rename { from, to } => path(from)
                .and_then(|from| Ok((from, path(to)?)))
                .and_then(|(from, to)| {
                    ns.rename(&from, &to, &mut journal.namespace)
                        .map(|()| Outcome::Done)
                }),
            Command::Delete { path: p, recursive } => path(p).and_then(|p| {
                ns.delete(&p, *recursive, &mut journal.namespace)
                    .map(|files| Outcome::Deleted(files.len() as u64))
            }),
            Command::CreateToken { name, record } => self
                .tokens
                .create(name, record.clone(), &mut journal.tokens)
                .map(|()| Outcome::Done),
            Command::RevokeToken { name } => self
                .tokens
                .revoke(name, &mut journal.tokens)
                .map(|()| Outcome::Done),
            Command::SetCapabilityKey { key } => {
                if self.capability_key.is_none() {
                    self.capability_key = Some(*key);
                    journal.capability_key = Some(*key);
                }
                Ok(Outcome::Done)
            }
            Command::RegisterChunkServer { id, info } => {
                cluster.register(*id, info.clone(), &mut journal.cluster);
                Ok(Outcome::Done)
            }
            Command::ChunkReport {
                server,
                added,
                removed,
                replace,
            } => {
                cluster.report(*server, added, removed, *replace, &mut journal.cluster);
                Ok(Outcome::Done)
            }
            Command::SetDraining { id, draining } => {
                if cluster.set_draining(*id, *draining, &mut journal.cluster) {
                    Ok(Outcome::Done)
                } else {
                    Err(NsError::Invalid(format!(
                        "no chunk server {id} is registered"
                    )))
                }
            }
            Command::RemoveChunkServer { id } => {
                if cluster.remove_server(*id, &mut journal.cluster) {
                    Ok(Outcome::Done)
                } else {
                    Err(NsError::Invalid(format!(
                        "no chunk server {id} is registered"
                    )))
                }
            }
            Command::Collect { chunks } => {
                let mut collected = Vec::new();
                let mut by_server: BTreeMap<u64, Vec<ChunkId>> = BTreeMap::new();
                for id in chunks {
                    if ns.is_referenced(id) {
                        continue;
                    }
                    let holders: Vec<u64> = cluster.holders(id).collect();
                    if holders.is_empty() {
                        continue;
                    }
                    for holder in &holders {
                        by_server.entry(*holder).or_default().push(*id);
                    }
                    collected.push((*id, holders));
                }
                for (server, ids) in by_server {
                    cluster.report(server, &[], &ids, false, &mut journal.cluster);
                }
                Ok(Outcome::Collected(collected))
            }
            Command::Once { .. } => unreachable!("handled above"),
        })
    }
}

/// Every chunk of `file` must be held by at least `min` registered servers.
fn check_replicas(cluster: &Cluster, file: &FileMeta, min: u32) -> Result<(), NsError> {
    let missing: Vec<String> = file
        .chunks
        .iter()
        .filter(|c| (cluster.holders(&c.id).count() as u32) < min)
        .map(|c| c.id.to_hex())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(unreplicated(&missing, min))
}

/// The error for chunks held by fewer than `min` chunk servers (hex ids).
/// Every chunk a committed file already uses keeps its length: the leader
/// checked the others with the chunk servers before proposing.
fn check_lengths(ns: &Namespace, file: &FileMeta) -> Result<(), NsError> {
    for chunk in &file.chunks {
        if let Some(need) = ns.chunk_need(&chunk.id)
            && need.length != chunk.length
        {
            return Err(NsError::Invalid(format!(
                "chunk {}: the file says {} bytes, but committed files use it as {} bytes",
                chunk.id, chunk.length, need.length
            )));
        }
    }
    Ok(())
}

pub fn unreplicated(missing: &[String], min: u32) -> NsError {
    let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
    NsError::Unreplicated(format!(
        "{} chunk(s) are not stored on at least {min} live chunk servers: {}{}",
        missing.len(),
        shown.join(", "),
        if missing.len() > 5 { ", ..." } else { "" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ChunkServerInfo;
    use crate::namespace::ChunkRef;

    fn apply(state: &mut State, command: Command) -> Result<Outcome, NsError> {
        let mut journal = Journal::default();
        state.apply(&command, &mut journal).0
    }

    fn file_of(ids: &[ChunkId]) -> FileMeta {
        let chunks: Vec<ChunkRef> = ids
            .iter()
            .map(|id| ChunkRef { id: *id, length: 1 })
            .collect();
        FileMeta {
            content_id: FileMeta::content_id_of(&chunks),
            size: chunks.len() as u64,
            chunks,
            replication: 2,
            mtime_ms: 1,
        }
    }

    fn commit(path: &str, ids: &[ChunkId]) -> Command {
        Command::Commit {
            path: path.into(),
            file: file_of(ids),
            if_absent: false,
            confirmed: Vec::new(),
            min_replicas: 2,
        }
    }

    /// A call is applied once per request id: its retries get the first
    /// answer, even after other calls changed the namespace; another id is
    /// a new call. Answers expire with the leader's clock.
    #[test]
    fn calls_with_a_request_id_are_applied_once() {
        let mut state = State::default();
        let mkdir = |id: &[u8], at_ms| {
            Command::once(
                id,
                at_ms,
                Command::Mkdir {
                    path: "/d".into(),
                    parents: false,
                    mtime_ms: at_ms,
                },
            )
        };
        let delete = |id: &[u8], at_ms| {
            Command::once(
                id,
                at_ms,
                Command::Delete {
                    path: "/d".into(),
                    recursive: true,
                },
            )
        };
        assert_eq!(
            apply(&mut state, mkdir(b"m", 1)),
            Ok(Outcome::Created(true))
        );
        assert_eq!(
            apply(&mut state, mkdir(b"m", 2)),
            Ok(Outcome::Created(true))
        );
        let again = apply(&mut state, mkdir(b"other", 3));
        assert!(matches!(again, Err(NsError::AlreadyExists(_))), "{again:?}");

        assert_eq!(apply(&mut state, delete(b"d", 4)), Ok(Outcome::Deleted(0)));
        assert_eq!(apply(&mut state, delete(b"d", 5)), Ok(Outcome::Deleted(0)));
        let root = DfsPath::parse("/").unwrap();
        assert!(state.namespace.list(&root, None, 10).unwrap().0.is_empty());
        // The mkdir's retry still gets its answer, though /d is gone.
        assert_eq!(
            apply(&mut state, mkdir(b"m", 6)),
            Ok(Outcome::Created(true))
        );
        assert!(state.namespace.list(&root, None, 10).unwrap().0.is_empty());

        // Past the TTL the id is forgotten: the call is applied again.
        let late = 6 + crate::retries::RETRY_TTL_MS;
        assert_eq!(
            apply(&mut state, mkdir(b"m", late)),
            Ok(Outcome::Created(true))
        );
        assert_eq!(state.namespace.list(&root, None, 10).unwrap().0.len(), 1);
        assert_eq!(state.retries.len(), 1);
    }

    /// Collect gives up only chunks no file references when it is applied,
    /// and a commit applied after its chunks were collected fails.
    #[test]
    fn collect_spares_referenced_chunks_and_wins_or_loses_races_cleanly() {
        let mut state = State::default();
        let (kept, garbage, late) = (
            ChunkId::of(b"kept"),
            ChunkId::of(b"garbage"),
            ChunkId::of(b"late"),
        );
        for server in [1, 2] {
            let info = ChunkServerInfo {
                addr: format!("127.0.0.1:{server}"),
                zone: String::new(),
                capacity_bytes: 1 << 30,
                draining: false,
            };
            apply(
                &mut state,
                Command::RegisterChunkServer { id: server, info },
            )
            .unwrap();
            let report = Command::ChunkReport {
                server,
                added: vec![kept, garbage, late],
                removed: Vec::new(),
                replace: false,
            };
            apply(&mut state, report).unwrap();
        }
        apply(&mut state, commit("/f", &[kept])).unwrap();

        let outcome = apply(
            &mut state,
            Command::Collect {
                chunks: vec![kept, garbage, late],
            },
        )
        .unwrap();
        let Outcome::Collected(collected) = outcome else {
            panic!("unexpected outcome {outcome:?}");
        };
        let ids: Vec<ChunkId> = collected.iter().map(|(id, _)| *id).collect();
        assert!(ids.contains(&garbage) && ids.contains(&late) && !ids.contains(&kept));
        assert!(collected.iter().all(|(_, holders)| holders == &vec![1, 2]));
        assert_eq!(state.cluster.holders(&kept).count(), 2);
        assert_eq!(state.cluster.holders(&garbage).count(), 0);

        // The commit that lost the race to Collect fails; nothing changes.
        let err = apply(&mut state, commit("/g", &[late])).unwrap_err();
        assert!(matches!(err, NsError::Unreplicated(_)), "{err:?}");
        assert!(
            state
                .namespace
                .lookup(&DfsPath::parse("/g").unwrap())
                .is_err()
        );
    }
}

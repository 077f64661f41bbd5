//! The replicated state: what every metaserver holds and the Raft log
//! changes, one command at a time.

use shardfs_proto::DfsPath;

use crate::cluster::Cluster;
use crate::namespace::{FileMeta, Journal, Namespace, NsError};
use crate::types::{Command, CommandResult, Outcome};

/// Everything the state machine replicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub namespace: Namespace,
    pub cluster: Cluster,
}

fn path(text: &str) -> Result<DfsPath, NsError> {
    DfsPath::parse(text).map_err(|e| NsError::Invalid(e.to_string()))
}

impl State {
    /// Applies one command, recording what changed in `journal`.
    pub fn apply(&mut self, command: &Command, journal: &mut Journal) -> CommandResult {
        let ns = &mut self.namespace;
        let cluster = &mut self.cluster;
        CommandResult(match command {
            Command::Mkdir {
                path: p,
                parents,
                mtime_ms,
            } => path(p).and_then(|p| {
                ns.mkdir(&p, *parents, *mtime_ms, journal)
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
                check_replicas(cluster, file, *min_replicas)?;
                ns.commit(&p, file.clone(), *if_absent, journal)
                    .map(Outcome::Replaced)
            }),
            Command::Rename { from, to } => path(from)
                .and_then(|from| Ok((from, path(to)?)))
                .and_then(|(from, to)| ns.rename(&from, &to, journal).map(|()| Outcome::Done)),
            Command::Delete { path: p, recursive } => {
                path(p).and_then(|p| ns.delete(&p, *recursive, journal).map(Outcome::Deleted))
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
pub fn unreplicated(missing: &[String], min: u32) -> NsError {
    let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
    NsError::Unreplicated(format!(
        "{} chunk(s) are not stored on at least {min} live chunk servers: {}{}",
        missing.len(),
        shown.join(", "),
        if missing.len() > 5 { ", ..." } else { "" }
    ))
}

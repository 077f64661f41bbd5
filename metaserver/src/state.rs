//! The replicated state: what every metaserver holds and the Raft log
//! changes, one command at a time.

use shardfs_proto::DfsPath;

use crate::namespace::{Journal, Namespace, NsError};
use crate::types::{Command, CommandResult, Outcome};

/// Everything the state machine replicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub namespace: Namespace,
}

fn path(text: &str) -> Result<DfsPath, NsError> {
    DfsPath::parse(text).map_err(|e| NsError::Invalid(e.to_string()))
}

impl State {
    /// Applies one command, recording what changed in `journal`.
    pub fn apply(&mut self, command: &Command, journal: &mut Journal) -> CommandResult {
        let ns = &mut self.namespace;
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
            } => path(p).and_then(|p| {
                ns.commit(&p, file.clone(), *if_absent, journal)
                    .map(Outcome::Replaced)
            }),
            Command::Rename { from, to } => path(from)
                .and_then(|from| Ok((from, path(to)?)))
                .and_then(|(from, to)| ns.rename(&from, &to, journal).map(|()| Outcome::Done)),
            Command::Delete { path: p, recursive } => {
                path(p).and_then(|p| ns.delete(&p, *recursive, journal).map(Outcome::Deleted))
            }
        })
    }
}

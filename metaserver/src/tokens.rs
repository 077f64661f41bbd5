//! Client tokens, and what a call may do ([`Authority`]).
//!
//! A token reads `sfs1.NAME.SECRET`: NAME is how operators and the audit
//! log know it, SECRET 256 random bits in hex. The replicated state keeps
//! only the BLAKE3 hash of SECRET with the token's role and path prefix
//! ([`Tokens`]); the secret is made by whoever creates the token (the
//! client library sends only its hash) and shown once, to them.
//! Revoking removes the record, and every metaserver refuses the token
//! once it has applied the revocation.
//!
//! Roles nest: a reader reads (lookups, listings, chunk locations, cluster
//! status), a writer also writes (mkdir, commit, rename, delete, chunk
//! allocation), an admin also administers the cluster (membership, drain,
//! remove, tokens). Namespace calls must stay inside the token's prefix.
//!
//! One token is outside the state: the bootstrap admin token
//! (`--admin-token-file`), given to every metaserver, so a new cluster has
//! an admin before any token was created. Members (peers certified as
//! metaservers) and every peer of an `--insecure` server are trusted as
//! admins.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use shardfs_proto::security::{META_NAME, Peer, PeerIdentity};
use tonic::{Request, Status};

use crate::namespace::NsError;

pub use shardfs_proto::meta_client::AUTHORIZATION;
pub use shardfs_proto::token::{check_name, hash_secret, new_token, parse_token};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "reader" => Ok(Self::Reader),
            "writer" => Ok(Self::Writer),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "role {other:?} is not one of reader, writer, admin"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Writer => "writer",
            Self::Admin => "admin",
        }
    }
}

/// What the state keeps of one token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// BLAKE3 of the secret.
    pub hash: [u8; 32],
    pub role: Role,
    /// The namespace the token may touch ("/" for all of it).
    pub prefix: String,
    pub created_ms: u64,
}

/// A change to persist: a token's record, or None when it was revoked.
pub type TokenChange = (String, Option<TokenRecord>);

/// The tokens of the replicated state, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    by_name: BTreeMap<String, TokenRecord>,
}

impl Tokens {
    pub fn create(
        &mut self,
        name: &str,
        record: TokenRecord,
        journal: &mut Vec<TokenChange>,
    ) -> Result<(), NsError> {
        if let Some(existing) = self.by_name.get(name) {
            // The same record again is a retry of the same creation.
            let same = existing.hash == record.hash
                && existing.role == record.role
                && existing.prefix == record.prefix;
            if same {
                return Ok(());
            }
            return Err(NsError::AlreadyExists(format!("token {name}")));
        }
        self.by_name.insert(name.to_string(), record.clone());
        journal.push((name.to_string(), Some(record)));
        Ok(())
    }

    pub fn revoke(&mut self, name: &str, journal: &mut Vec<TokenChange>) -> Result<(), NsError> {
        if self.by_name.remove(name).is_none() {
            return Err(NsError::NotFound(format!("token {name}")));
        }
        journal.push((name.to_string(), None));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&TokenRecord> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &TokenRecord)> {
        self.by_name.iter()
    }

    pub fn to_parts(&self) -> Vec<(String, TokenRecord)> {
        self.by_name
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect()
    }

    pub fn from_parts(parts: impl IntoIterator<Item = (String, TokenRecord)>) -> Self {
        Self {
            by_name: parts.into_iter().collect(),
        }
    }
}

/// The bootstrap admin token in `path` (its first line): name and hash.
pub fn load_bootstrap(path: &Path) -> Result<(String, [u8; 32]), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the admin token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    let (name, secret) = parse_token(token).ok_or_else(|| {
        format!(
            "{} does not hold a token (sfs1.NAME.SECRET; `shardfs admin token bootstrap --out FILE` makes one)",
            path.display()
        )
    })?;
    Ok((name.to_string(), hash_secret(secret)))
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Read,
    Write,
    Admin,
}

impl Right {
    fn role(self) -> Role {
        match self {
            Self::Read => Role::Reader,
            Self::Write => Role::Writer,
            Self::Admin => Role::Admin,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "administer",
        }
    }
}

/// Who made a call, as established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A plaintext server trusts every peer.
    Insecure,
    /// A peer certified as a metaserver.
    Member,
    Token {
        name: String,
        role: Role,
        prefix: String,
    },
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Insecure => f.write_str("an insecure peer"),
            Self::Member => f.write_str("a metaserver"),
            Self::Token { name, role, .. } => write!(f, "token {name} ({})", role.name()),
        }
    }
}

/// Whether `path` lies in the namespace under `prefix`.
pub fn within(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Decides what each call may do.
#[derive(Debug, Clone, Default)]
pub struct Authority {
    /// The bootstrap admin token's name and hash.
    bootstrap: Option<(String, [u8; 32])>,
}

impl Authority {
    pub fn new(bootstrap: Option<(String, [u8; 32])>) -> Self {
        Self { bootstrap }
    }

    /// Who made `request`, if they may `right` on every one of `paths`;
    /// else UNAUTHENTICATED (no usable token) or PERMISSION_DENIED (naming
    /// the path and the right missing). `records` finds a token's record
    /// in the replicated state. `what` names the call in the audit log,
    /// which records every refusal and every change allowed.
    pub fn check<T>(
        &self,
        records: impl FnOnce(&str) -> Option<TokenRecord>,
        request: &Request<T>,
        right: Right,
        paths: &[&str],
        what: &str,
    ) -> Result<Caller, Status> {
        let peer = request.extensions().get::<Peer>();
        let from = peer.map_or_else(|| "an unknown peer".to_string(), Peer::describe);
        let caller = match peer.map(|p| &p.identity) {
            Some(PeerIdentity::Insecure) => Caller::Insecure,
            _ if peer.is_some_and(|p| p.is(META_NAME)) => Caller::Member,
            _ => match self.token_caller(records, request) {
                Ok(caller) => caller,
                Err(why) => {
                    tracing::warn!(target: "shardfs::audit", %from, what, "refused: {why}");
                    return Err(Status::unauthenticated(why));
                }
            },
        };
        if let Caller::Token { name, role, prefix } = &caller {
            let refusal = if *role < right.role() {
                Some(format!(
                    "token {name} is a {}; to {} ({what}) needs the {} role",
                    role.name(),
                    right.verb(),
                    right.role().name()
                ))
            } else {
                paths.iter().find(|p| !within(prefix, p)).map(|path| {
                    format!(
                        "token {name} may {} only under {prefix}, not {path}",
                        right.verb()
                    )
                })
            };
            if let Some(why) = refusal {
                tracing::warn!(target: "shardfs::audit", %from, caller = %caller, what, ?paths, "refused: {why}");
                return Err(Status::permission_denied(why));
            }
        }
        if right != Right::Read {
            tracing::info!(target: "shardfs::audit", %from, caller = %caller, what, ?paths, "allowed");
        }
        Ok(caller)
    }

    fn token_caller<T>(
        &self,
        records: impl FnOnce(&str) -> Option<TokenRecord>,
        request: &Request<T>,
    ) -> Result<Caller, String> {
        let Some(value) = request.metadata().get(AUTHORIZATION) else {
            return Err(
                "no token: set SHARDFS_TOKEN (`source cluster.env` sets it) or pass --token".into(),
            );
        };
        let text = value.to_str().unwrap_or("");
        let token = text.strip_prefix("Bearer ").unwrap_or(text).trim();
        let Some((name, secret)) = parse_token(token) else {
            return Err("the token is malformed (sfs1.NAME.SECRET)".into());
        };
        let presented = blake3::hash(secret.as_bytes());
        if let Some((bootstrap, hash)) = &self.bootstrap
            && bootstrap == name
            && presented == blake3::Hash::from_bytes(*hash)
        {
            return Ok(Caller::Token {
                name: name.to_string(),
                role: Role::Admin,
                prefix: "/".into(),
            });
        }
        match records(name) {
            // blake3::Hash compares in constant time.
            Some(record) if presented == blake3::Hash::from_bytes(record.hash) => {
                Ok(Caller::Token {
                    name: name.to_string(),
                    role: record.role,
                    prefix: record.prefix,
                })
            }
            _ => Err(format!(
                "token {name} is not valid here (revoked, mistyped, or another cluster's)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_hold_their_subtrees_only() {
        assert!(within("/", "/anything"));
        assert!(within("/datasets/x", "/datasets/x"));
        assert!(within("/datasets/x/", "/datasets/x/a/b"));
        assert!(!within("/datasets/x", "/datasets/xy"));
        assert!(!within("/datasets/x", "/datasets"));
        assert!(!within("/datasets/x", "/"));
    }

    #[test]
    fn create_and_revoke_are_journaled() {
        let mut tokens = Tokens::default();
        let mut journal = Vec::new();
        let record = TokenRecord {
            hash: [1; 32],
            role: Role::Reader,
            prefix: "/".into(),
            created_ms: 5,
        };
        tokens.create("a", record.clone(), &mut journal).unwrap();
        // The same record again (a retry) is accepted and changes nothing;
        // another one under the same name is not.
        tokens.create("a", record.clone(), &mut journal).unwrap();
        let other = TokenRecord {
            hash: [2; 32],
            ..record.clone()
        };
        assert!(tokens.create("a", other, &mut journal).is_err());
        assert_eq!(tokens.get("a"), Some(&record));
        tokens.revoke("a", &mut journal).unwrap();
        assert!(tokens.revoke("a", &mut journal).is_err());
        assert_eq!(
            journal,
            vec![("a".into(), Some(record)), ("a".into(), None)]
        );
        assert!(Role::Reader < Role::Writer && Role::Writer < Role::Admin);
    }
}

//! Metaserver configuration: a TOML file, `SHARDFS_META_*` environment
//! variables and flags, in rising order of precedence (flags win). Every
//! setting can be given all three ways: [`Overrides`] holds what flags and
//! the environment gave, [`FileConfig`] what the file gave, and
//! [`Config::resolve`] takes each from the first that has it, else the
//! default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shardfs_proto::config::{ConfigError, load_toml};
use shardfs_proto::security::{self, TlsFiles};
use shardfs_proto::span::Span;
use shardfs_proto::transport::ConnectionLimits;

use crate::gc::GcConfig;
use crate::metaserver::LeaderSettings;
use crate::node::RaftTuning;
use crate::repair::RepairConfig;
use crate::types::NodeId;

/// The TOML file's contents; every key is optional, and each is the flag's
/// name with `_` for `-`.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<NodeId>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// `"1=host:port,2=host:port,..."`
    pub peers: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    pub snapshot_every: Option<u64>,
    pub dead_after_secs: Option<u64>,
    pub repair_mb_per_s: Option<u64>,
    pub repair_full_scan_secs: Option<u64>,
    pub gc_grace_secs: Option<u64>,
    pub capability_ttl: Option<Span>,
    pub first_bytes_timeout: Option<Span>,
    pub connections_per_peer: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub insecure: Option<bool>,
    pub admin_token_file: Option<PathBuf>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_toml(path)
    }
}

/// Every setting as flags (or their environment variables) give it; None:
/// not given.
#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args)]
pub struct Overrides {
    /// This metaserver's id (1, 2, ...), unique in the group.
    #[arg(long, env = "SHARDFS_META_ID")]
    pub id: Option<NodeId>,
    /// Address to listen on (host:port); defaults to this id's entry in --peers.
    #[arg(long, env = "SHARDFS_META_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the Raft log and state.
    #[arg(long, env = "SHARDFS_META_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Voters of a new group: ID=HOST:PORT,... (this one included). Omit to
    /// start empty and be added to a running group with AddMetaserver.
    #[arg(long, env = "SHARDFS_META_PEERS")]
    pub peers: Option<String>,
    /// Raft heartbeat interval in milliseconds (default 250); also how long
    /// the leader waits for a follower to answer AppendEntries.
    #[arg(long, env = "SHARDFS_META_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Minimum election timeout in milliseconds (default 1000; max is twice).
    #[arg(long, env = "SHARDFS_META_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Snapshot after this many log entries (default 10000).
    #[arg(long, env = "SHARDFS_META_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Seconds without a heartbeat after which a chunk server is dead
    /// (default 10).
    #[arg(long, env = "SHARDFS_META_DEAD_AFTER_SECS")]
    pub dead_after_secs: Option<u64>,
    /// Repair traffic each chunk server may send, and receive, in MB/s
    /// (default 100).
    #[arg(long, env = "SHARDFS_META_REPAIR_MB_PER_S")]
    pub repair_mb_per_s: Option<u64>,
    /// Seconds between repair rounds that look at every chunk (the others
    /// look only at chunks that may have changed; default 30).
    #[arg(long, env = "SHARDFS_META_REPAIR_FULL_SCAN_SECS")]
    pub repair_full_scan_secs: Option<u64>,
    /// Seconds a chunk no file references is kept before it is deleted
    /// (default 3600).
    #[arg(long, env = "SHARDFS_META_GC_GRACE_SECS")]
    pub gc_grace_secs: Option<u64>,
    /// How long the chunk capabilities handed to clients are valid
    /// (default 1h); a reader holding an expired one asks again.
    #[arg(long, env = "SHARDFS_META_CAPABILITY_TTL")]
    pub capability_ttl: Option<Span>,
    /// A new connection silent for this long is closed (default 5s).
    #[arg(long, env = "SHARDFS_META_FIRST_BYTES_TIMEOUT")]
    pub first_bytes_timeout: Option<Span>,
    /// Connections one IP address may hold open (default 512).
    #[arg(long, env = "SHARDFS_META_CONNECTIONS_PER_PEER")]
    pub connections_per_peer: Option<usize>,
    /// This metaserver's certificate (PEM), issued by the cluster CA for
    /// metaserver --id (`shardfs cluster issue-cert --meta ID`).
    #[arg(long, env = "SHARDFS_META_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SHARDFS_META_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA's certificate (PEM): peers must present one it signed.
    #[arg(long, env = "SHARDFS_META_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Plaintext without TLS: any peer that reaches the port is trusted as
    /// a cluster member. For benchmarks and trusted test networks only.
    #[arg(long, env = "SHARDFS_META_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
    pub insecure: bool,
    /// A file holding the bootstrap admin token (sfs1.NAME.SECRET, made by
    /// `shardfs admin token bootstrap`): accepted as an admin token over
    /// the whole namespace, so a new cluster has an admin. Give every
    /// metaserver the same one.
    #[arg(long, env = "SHARDFS_META_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: NodeId,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Every voter of a new group, this one included; empty when this
    /// metaserver is to be added to an existing group by AddMetaserver.
    pub peers: BTreeMap<NodeId, String>,
    pub tuning: RaftTuning,
    pub leader: LeaderSettings,
    pub limits: ConnectionLimits,
    /// The TLS material (None: `--insecure`, plaintext).
    pub tls: Option<TlsFiles>,
    pub admin_token_file: Option<PathBuf>,
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let fail = |m: String| Err(ConfigError(m));
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((id, addr)) = item.split_once('=') else {
            return fail(format!("peer {item:?} is not ID=HOST:PORT"));
        };
        let Ok(id) = id.trim().parse::<NodeId>() else {
            return fail(format!("peer {item:?}: id {id:?} is not a number"));
        };
        if id == 0 {
            return fail(format!("peer {item:?}: ids start at 1"));
        }
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return fail(format!("peer id {id} appears twice in --peers"));
        }
    }
    Ok(peers)
}

impl Config {
    /// Each setting from `overrides`, else from `file`, else the default.
    pub fn resolve(overrides: Overrides, file: FileConfig) -> Result<Self, ConfigError> {
        let fail = |m: &str| Err(ConfigError::new(m));
        let Some(id) = overrides.id.or(file.id) else {
            return fail(
                "no metaserver id: pass --id N, set SHARDFS_META_ID, or set id in the config file",
            );
        };
        if id == 0 {
            return fail("metaserver ids start at 1");
        }
        let peers = parse_peers(&overrides.peers.or(file.peers).unwrap_or_default())?;
        let listen_text = match overrides.listen.or(file.listen) {
            Some(listen) => listen,
            None => match peers.get(&id) {
                Some(addr) => addr.clone(),
                None => {
                    return fail(
                        "no listen address: pass --listen HOST:PORT (or list this id in --peers)",
                    );
                }
            },
        };
        let listen = listen_text.parse().map_err(|e| {
            ConfigError(format!(
                "listen address {listen_text:?} is not host:port ({e})"
            ))
        })?;
        if !peers.is_empty() && !peers.contains_key(&id) {
            return Err(ConfigError(format!(
                "--peers must include this metaserver's own id {id}"
            )));
        }
        let Some(data_dir) = overrides.data_dir.or(file.data_dir) else {
            return fail(
                "no data directory: pass --data-dir DIR, set SHARDFS_META_DATA_DIR, or set data_dir in the config file",
            );
        };
        let mut tuning = RaftTuning::default();
        if let Some(ms) = overrides.heartbeat_ms.or(file.heartbeat_ms) {
            tuning.heartbeat = Duration::from_millis(ms);
        }
        if let Some(ms) = overrides.election_timeout_ms.or(file.election_timeout_ms) {
            tuning.election_timeout_min = Duration::from_millis(ms);
            tuning.election_timeout_max = Duration::from_millis(ms * 2);
        }
        if let Some(n) = overrides.snapshot_every.or(file.snapshot_every) {
            tuning.snapshot_every = n.max(1);
            tuning.keep_logs = (n / 10).max(1);
        }
        // Unset ones keep the defaults of `LeaderSettings`.
        let defaults = LeaderSettings::default();
        let secs = |flag: Option<u64>, key: Option<u64>, default: Duration| {
            flag.or(key).map_or(default, Duration::from_secs)
        };
        let leader = LeaderSettings {
            dead_after: secs(
                overrides.dead_after_secs,
                file.dead_after_secs,
                defaults.dead_after,
            ),
            repair: RepairConfig {
                mb_per_s: overrides
                    .repair_mb_per_s
                    .or(file.repair_mb_per_s)
                    .unwrap_or(defaults.repair.mb_per_s),
                full_scan_every: secs(
                    overrides.repair_full_scan_secs,
                    file.repair_full_scan_secs,
                    defaults.repair.full_scan_every,
                )
                .max(Duration::from_secs(1)),
                ..defaults.repair
            },
            gc: GcConfig::with_grace(secs(
                overrides.gc_grace_secs,
                file.gc_grace_secs,
                defaults.gc.grace,
            )),
            capability_ttl: overrides
                .capability_ttl
                .or(file.capability_ttl)
                .map_or(defaults.capability_ttl, |s| s.0)
                .max(Duration::from_secs(1)),
        };
        let defaults = ConnectionLimits::default();
        let limits = ConnectionLimits {
            first_bytes_timeout: overrides
                .first_bytes_timeout
                .or(file.first_bytes_timeout)
                .map_or(defaults.first_bytes_timeout, |s| s.0),
            per_peer: overrides
                .connections_per_peer
                .or(file.connections_per_peer)
                .unwrap_or(defaults.per_peer)
                .max(1),
        };
        let tls = security::server_files(
            overrides.tls_cert.or(file.tls_cert),
            overrides.tls_key.or(file.tls_key),
            overrides.tls_ca.or(file.tls_ca),
            overrides.insecure || file.insecure.unwrap_or(false),
        )
        .map_err(ConfigError)?;
        Ok(Self {
            id,
            listen,
            data_dir,
            peers,
            tuning,
            leader,
            limits,
            tls,
            admin_token_file: overrides.admin_token_file.or(file.admin_token_file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_with_clear_errors() {
        let peers = parse_peers("1=127.0.0.1:7101, 2=127.0.0.1:7102").unwrap();
        assert_eq!(peers[&2], "127.0.0.1:7102");
        for (text, says) in [
            ("1:7101", "ID=HOST:PORT"),
            ("x=a:1", "not a number"),
            ("0=a:1", "ids start at 1"),
            ("1=a:1,1=b:2", "twice"),
        ] {
            let err = parse_peers(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn flags_win_and_listen_defaults_to_own_peer_address() {
        let file: FileConfig =
            toml::from_str("id = 2\ndata_dir = \"/f\"\nheartbeat_ms = 50\ninsecure = true")
                .unwrap();
        let overrides = Overrides {
            data_dir: Some("/flag".into()),
            peers: Some("1=127.0.0.1:7101,2=127.0.0.1:7102".into()),
            ..Overrides::default()
        };
        let config = Config::resolve(overrides, file).unwrap();
        assert_eq!(config.id, 2);
        assert_eq!(config.listen, "127.0.0.1:7102".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/flag"));
        assert_eq!(config.tuning.heartbeat, Duration::from_millis(50));
        let overrides = Overrides {
            id: Some(3),
            data_dir: Some("/d".into()),
            insecure: true,
            peers: Some("1=127.0.0.1:7101".into()),
            ..Overrides::default()
        };
        let err = Config::resolve(overrides, FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
    }

    /// Repair, GC, liveness and connection settings, once flags only, come
    /// from the file too, flags still winning; unset ones take defaults.
    #[test]
    fn every_setting_can_come_from_the_file() {
        let file: FileConfig = toml::from_str(
            "id = 1\nlisten = \"127.0.0.1:7101\"\ndata_dir = \"/d\"\n\
             dead_after_secs = 4\nrepair_mb_per_s = 7\nrepair_full_scan_secs = 60\n\
             gc_grace_secs = 20\nfirst_bytes_timeout = \"2s\"\nconnections_per_peer = 9\n\
             tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\ntls_ca = \"/ca.pem\"",
        )
        .unwrap();
        let overrides = Overrides {
            repair_mb_per_s: Some(8),
            ..Overrides::default()
        };
        let config = Config::resolve(overrides, file).unwrap();
        assert_eq!(config.leader.dead_after, Duration::from_secs(4));
        assert_eq!(config.leader.repair.mb_per_s, 8, "the flag wins");
        assert_eq!(
            config.leader.repair.full_scan_every,
            Duration::from_secs(60)
        );
        assert_eq!(config.leader.gc.grace, Duration::from_secs(20));
        assert_eq!(config.limits.first_bytes_timeout, Duration::from_secs(2));
        assert_eq!(config.limits.per_peer, 9);
        assert_eq!(config.tls.unwrap().ca, PathBuf::from("/ca.pem"));

        let minimal: FileConfig =
            toml::from_str("id = 1\nlisten = \"127.0.0.1:7101\"\ndata_dir = \"/d\"").unwrap();
        let err = Config::resolve(Overrides::default(), minimal.clone()).unwrap_err();
        assert!(
            err.to_string().contains("--insecure"),
            "plaintext only when asked: {err}"
        );
        let insecure = Overrides {
            insecure: true,
            ..Overrides::default()
        };
        let config = Config::resolve(insecure, minimal).unwrap();
        assert!(config.tls.is_none());
        assert_eq!(config.leader.dead_after, Duration::from_secs(10));
        assert_eq!(config.leader.gc.grace, Duration::from_secs(3600));

        let err = toml::from_str::<FileConfig>("gc_grace = 1").unwrap_err();
        assert!(err.to_string().contains("gc_grace"), "{err}");
    }
}

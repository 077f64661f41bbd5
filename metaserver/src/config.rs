//! Metaserver configuration: a TOML file, `SHARDFS_META_*` environment
//! variables and flags, in rising order of precedence (flags win).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shardfs_proto::span::Span;
use shardfs_proto::transport::ConnectionLimits;

use crate::node::RaftTuning;
use crate::types::NodeId;

/// The TOML file's contents; every key is optional.
#[derive(Debug, Default, Clone, Deserialize)]
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
    pub first_bytes_timeout: Option<Span>,
    pub connections_per_peer: Option<usize>,
}

/// The connection limits from flags (or environment), else the file, else
/// the defaults.
pub fn connection_limits(
    first_bytes_timeout: Option<Span>,
    connections_per_peer: Option<usize>,
    file: &FileConfig,
) -> ConnectionLimits {
    let defaults = ConnectionLimits::default();
    ConnectionLimits {
        first_bytes_timeout: first_bytes_timeout
            .or(file.first_bytes_timeout)
            .map_or(defaults.first_bytes_timeout, |s| s.0),
        per_peer: connections_per_peer
            .or(file.connections_per_peer)
            .unwrap_or(defaults.per_peer)
            .max(1),
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config file {} is not valid: {e}", path.display()))
    }
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
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(text: &str) -> anyhow::Result<BTreeMap<NodeId, String>> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("peer {item:?} is not ID=HOST:PORT"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("peer {item:?}: id {id:?} is not a number"))?;
        if id == 0 {
            anyhow::bail!("peer {item:?}: ids start at 1");
        }
        if peers.insert(id, addr.trim().to_string()).is_some() {
            anyhow::bail!("peer id {id} appears twice in --peers");
        }
    }
    Ok(peers)
}

impl Config {
    #[allow(clippy::too_many_arguments)]
    pub fn resolve(
        id: Option<NodeId>,
        listen: Option<String>,
        data_dir: Option<PathBuf>,
        peers: Option<String>,
        heartbeat_ms: Option<u64>,
        election_timeout_ms: Option<u64>,
        snapshot_every: Option<u64>,
        file: FileConfig,
    ) -> anyhow::Result<Self> {
        let id = id.or(file.id).ok_or_else(|| {
            anyhow::anyhow!(
                "no metaserver id: pass --id N, set SHARDFS_META_ID, or set id in the config file"
            )
        })?;
        if id == 0 {
            anyhow::bail!("metaserver ids start at 1");
        }
        let peers = parse_peers(&peers.or(file.peers).unwrap_or_default())?;
        let listen_text = match listen.or(file.listen) {
            Some(listen) => listen,
            None => peers.get(&id).cloned().ok_or_else(|| {
                anyhow::anyhow!(
                    "no listen address: pass --listen HOST:PORT (or list this id in --peers)"
                )
            })?,
        };
        let listen = listen_text.parse().map_err(|e| {
            anyhow::anyhow!("listen address {listen_text:?} is not host:port ({e})")
        })?;
        if !peers.is_empty() && !peers.contains_key(&id) {
            anyhow::bail!("--peers must include this metaserver's own id {id}");
        }
        let data_dir = data_dir.or(file.data_dir).ok_or_else(|| {
            anyhow::anyhow!("no data directory: pass --data-dir DIR, set SHARDFS_META_DATA_DIR, or set data_dir in the config file")
        })?;
        let mut tuning = RaftTuning::default();
        if let Some(ms) = heartbeat_ms.or(file.heartbeat_ms) {
            tuning.heartbeat = Duration::from_millis(ms);
        }
        if let Some(ms) = election_timeout_ms.or(file.election_timeout_ms) {
            tuning.election_timeout_min = Duration::from_millis(ms);
            tuning.election_timeout_max = Duration::from_millis(ms * 2);
        }
        if let Some(n) = snapshot_every.or(file.snapshot_every) {
            tuning.snapshot_every = n.max(1);
            tuning.keep_logs = (n / 10).max(1);
        }
        Ok(Self {
            id,
            listen,
            data_dir,
            peers,
            tuning,
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
        assert!(
            parse_peers("1:7101")
                .unwrap_err()
                .to_string()
                .contains("ID=HOST:PORT")
        );
        assert!(
            parse_peers("x=a:1")
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
        assert!(
            parse_peers("1=a:1,1=b:2")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn flags_win_and_listen_defaults_to_own_peer_address() {
        let file: FileConfig =
            toml::from_str("id = 2\ndata_dir = \"/f\"\nheartbeat_ms = 50").unwrap();
        let config = Config::resolve(
            None,
            None,
            Some("/flag".into()),
            Some("1=127.0.0.1:7101,2=127.0.0.1:7102".into()),
            None,
            None,
            None,
            file,
        )
        .unwrap();
        assert_eq!(config.id, 2);
        assert_eq!(config.listen, "127.0.0.1:7102".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/flag"));
        assert_eq!(config.tuning.heartbeat, Duration::from_millis(50));
        let err = Config::resolve(
            Some(3),
            None,
            Some("/d".into()),
            Some("1=127.0.0.1:7101".into()),
            None,
            None,
            None,
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
    }
}

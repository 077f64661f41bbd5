//! Chunk server configuration: a TOML file, `SHARDFS_CHUNK_*` environment
//! variables and flags, in rising order of precedence (flags win).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shardfs_proto::config::{ConfigError, load_toml};
use shardfs_proto::security::{self, TlsFiles};
use shardfs_proto::span::Span;
use shardfs_proto::transport::{CONNECTIONS_PER_PEER, ConnectionLimits, FIRST_BYTES_TIMEOUT};

/// Listen address when none is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7201";
/// Put data buffered at once across all streams when none is configured.
pub const DEFAULT_PUT_MEMORY_BYTES: u64 = 1 << 30;

/// The TOML file's contents; every key is optional.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub capacity_bytes: Option<u64>,
    pub put_memory_bytes: Option<u64>,
    pub scrub_mb_per_s: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub insecure: Option<bool>,
    pub encryption_key_file: Option<PathBuf>,
    /// The `[limits]` table.
    #[serde(default)]
    pub limits: LimitSettings,
}

/// Longest wait for the next message of a put stream (the header, or the
/// next data message): a writer that stalls is dropped, and what it held
/// goes to others.
pub const PUT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Slowest a put's data may arrive on average once it started: its whole
/// body must come within the idle timeout plus its length at this rate, so
/// a trickle of bytes cannot hold its memory for long either.
pub const PUT_MIN_BYTES_PER_SEC: u64 = 1 << 20;
/// Longest a put waits for room in the put memory budget before it is
/// refused as busy (RESOURCE_EXHAUSTED: the writer tries another server).
pub const PUT_MEMORY_WAIT: Duration = Duration::from_secs(10);
/// Bulk connections served at once. When all are taken, the connection that
/// has waited longest for its next request is closed to make room (a
/// client reconnects when it needs it again); only when every one is in
/// the middle of a request is a new one told so and closed (the client
/// then reads that replica over gRPC). So idle or stalled connections,
/// however many a peer opens, never lock readers out.
pub const BULK_CONNECTIONS: usize = 1024;
/// A bulk connection with no request for this long is closed (clients drop
/// their idle ones sooner).
pub const BULK_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A bulk reader that stops reading a response for this long is dropped.
pub const BULK_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The bounds on what a peer can make this server hold, as flags,
/// environment variables or the config file's `[limits]` table set them
/// (None: the default).
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Longest wait for a put stream's next message (default 5s).
    #[arg(long, env = "SHARDFS_CHUNK_PUT_IDLE_TIMEOUT")]
    pub put_idle_timeout: Option<Span>,
    /// Slowest average rate of a put's data, bytes/s (default 1048576).
    #[arg(long, env = "SHARDFS_CHUNK_PUT_MIN_BYTES_PER_SEC")]
    pub put_min_bytes_per_sec: Option<u64>,
    /// Longest a put waits for put memory before it is refused as busy
    /// (default 10s).
    #[arg(long, env = "SHARDFS_CHUNK_PUT_MEMORY_WAIT")]
    pub put_memory_wait: Option<Span>,
    /// Bulk read connections served at once (default 1024).
    #[arg(long, env = "SHARDFS_CHUNK_BULK_CONNECTIONS")]
    pub bulk_connections: Option<usize>,
    /// A bulk connection with no request for this long is closed
    /// (default 60s).
    #[arg(long, env = "SHARDFS_CHUNK_BULK_IDLE_TIMEOUT")]
    pub bulk_idle_timeout: Option<Span>,
    /// A bulk reader that stops reading for this long is dropped
    /// (default 30s).
    #[arg(long, env = "SHARDFS_CHUNK_BULK_WRITE_TIMEOUT")]
    pub bulk_write_timeout: Option<Span>,
    /// A new connection silent for this long is closed (default 5s).
    #[arg(long, env = "SHARDFS_CHUNK_FIRST_BYTES_TIMEOUT")]
    pub first_bytes_timeout: Option<Span>,
    /// Connections one IP address may hold open (default 512).
    #[arg(long, env = "SHARDFS_CHUNK_CONNECTIONS_PER_PEER")]
    pub connections_per_peer: Option<usize>,
}

impl LimitSettings {
    /// Each setting from `self`, else from `other`.
    pub fn or(self, other: LimitSettings) -> LimitSettings {
        LimitSettings {
            put_idle_timeout: self.put_idle_timeout.or(other.put_idle_timeout),
            put_min_bytes_per_sec: self.put_min_bytes_per_sec.or(other.put_min_bytes_per_sec),
            put_memory_wait: self.put_memory_wait.or(other.put_memory_wait),
            bulk_connections: self.bulk_connections.or(other.bulk_connections),
            bulk_idle_timeout: self.bulk_idle_timeout.or(other.bulk_idle_timeout),
            bulk_write_timeout: self.bulk_write_timeout.or(other.bulk_write_timeout),
            first_bytes_timeout: self.first_bytes_timeout.or(other.first_bytes_timeout),
            connections_per_peer: self.connections_per_peer.or(other.connections_per_peer),
        }
    }
}

/// What a put may cost the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutLimits {
    /// Put data buffered at once across all streams.
    pub memory_bytes: u64,
    pub memory_wait: Duration,
    pub idle_timeout: Duration,
    pub min_bytes_per_sec: u64,
}

/// What bulk readers may cost the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkLimits {
    pub connections: usize,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

/// Every bound the server enforces on its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub put: PutLimits,
    pub bulk: BulkLimits,
    pub connections: ConnectionLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self::resolve(None, LimitSettings::default())
    }
}

impl Limits {
    fn resolve(put_memory_bytes: Option<u64>, settings: LimitSettings) -> Self {
        let span = |s: Option<Span>, default: Duration| s.map_or(default, |s| s.0);
        Self {
            put: PutLimits {
                memory_bytes: put_memory_bytes.unwrap_or(DEFAULT_PUT_MEMORY_BYTES),
                memory_wait: span(settings.put_memory_wait, PUT_MEMORY_WAIT),
                idle_timeout: span(settings.put_idle_timeout, PUT_IDLE_TIMEOUT),
                min_bytes_per_sec: settings
                    .put_min_bytes_per_sec
                    .unwrap_or(PUT_MIN_BYTES_PER_SEC)
                    .max(1),
            },
            bulk: BulkLimits {
                connections: settings.bulk_connections.unwrap_or(BULK_CONNECTIONS).max(1),
                idle_timeout: span(settings.bulk_idle_timeout, BULK_IDLE_TIMEOUT),
                write_timeout: span(settings.bulk_write_timeout, BULK_WRITE_TIMEOUT),
            },
            connections: ConnectionLimits {
                first_bytes_timeout: span(settings.first_bytes_timeout, FIRST_BYTES_TIMEOUT),
                per_peer: settings
                    .connections_per_peer
                    .unwrap_or(CONNECTIONS_PER_PEER)
                    .max(1),
            },
        }
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_toml(path)
    }
}

/// Settings from flags and environment (clap merges those two); None where
/// neither was given.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub capacity_bytes: Option<u64>,
    pub put_memory_bytes: Option<u64>,
    pub scrub_mb_per_s: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    /// Plaintext, no member checks (false: not asked for here).
    pub insecure: bool,
    pub encryption_key_file: Option<PathBuf>,
    pub limits: LimitSettings,
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub capacity_bytes: Option<u64>,
    pub limits: Limits,
    /// Re-hashing rate of the scrubber (0: no scrub).
    pub scrub_mb_per_s: u64,
    /// The TLS material (None: `--insecure`, plaintext).
    pub tls: Option<TlsFiles>,
    /// The key file chunk files are encrypted with (None: not encrypted).
    pub encryption_key_file: Option<PathBuf>,
}

impl Config {
    /// Flags and environment win over the file, the file over defaults.
    pub fn resolve(overrides: Overrides, file: FileConfig) -> Result<Self, ConfigError> {
        let listen_text = overrides
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_text.parse().map_err(|e| {
            ConfigError(format!(
                "listen address {listen_text:?} is not host:port ({e})"
            ))
        })?;
        let data_dir = overrides.data_dir.or(file.data_dir).ok_or_else(|| {
            ConfigError::new(
                "no data directory: pass --data-dir DIR, set SHARDFS_CHUNK_DATA_DIR, or set data_dir in the config file",
            )
        })?;
        let tls = security::server_files(
            overrides.tls_cert.or(file.tls_cert),
            overrides.tls_key.or(file.tls_key),
            overrides.tls_ca.or(file.tls_ca),
            overrides.insecure || file.insecure.unwrap_or(false),
        )
        .map_err(ConfigError)?;
        Ok(Self {
            listen,
            data_dir,
            tls,
            encryption_key_file: overrides.encryption_key_file.or(file.encryption_key_file),
            capacity_bytes: overrides.capacity_bytes.or(file.capacity_bytes),
            limits: Limits::resolve(
                overrides.put_memory_bytes.or(file.put_memory_bytes),
                overrides.limits.or(file.limits),
            ),
            scrub_mb_per_s: overrides
                .scrub_mb_per_s
                .or(file.scrub_mb_per_s)
                .unwrap_or(crate::scrub::DEFAULT_MB_PER_S),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file() {
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\ndata_dir = \"/file\"\ncapacity_bytes = 5")
                .unwrap();
        let overrides = Overrides {
            data_dir: Some("/flag".into()),
            insecure: true,
            ..Overrides::default()
        };
        let config = Config::resolve(overrides, file).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/flag"));
        assert_eq!(config.capacity_bytes, Some(5));
        assert_eq!(config.limits.put.memory_bytes, DEFAULT_PUT_MEMORY_BYTES);
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn limits_come_from_flags_then_the_file() {
        let file: FileConfig = toml::from_str(
            "data_dir = \"/d\"\ninsecure = true\n[limits]\nput_idle_timeout = \"2s\"\nbulk_connections = 10\nconnections_per_peer = 3\nfirst_bytes_timeout = 1",
        )
        .unwrap();
        let overrides = Overrides {
            limits: LimitSettings {
                bulk_connections: Some(20),
                ..LimitSettings::default()
            },
            ..Overrides::default()
        };
        let limits = Config::resolve(overrides, file).unwrap().limits;
        assert_eq!(limits.put.idle_timeout, Duration::from_secs(2));
        assert_eq!(limits.bulk.connections, 20);
        assert_eq!(limits.connections.per_peer, 3);
        assert_eq!(
            limits.connections.first_bytes_timeout,
            Duration::from_secs(1)
        );
        assert_eq!(limits.put.memory_wait, PUT_MEMORY_WAIT);
        let err =
            toml::from_str::<FileConfig>("[limits]\nput_idle_timeout = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
        assert!(toml::from_str::<FileConfig>("[limits]\ncolour = 1").is_err());
    }

    #[test]
    fn clear_errors() {
        let err = Config::resolve(Overrides::default(), FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("--data-dir"), "{err}");
        let overrides = Overrides {
            listen: Some("nonsense".into()),
            data_dir: Some("/d".into()),
            ..Overrides::default()
        };
        let err = Config::resolve(overrides, FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
        assert!(toml::from_str::<FileConfig>("colour = 1").is_err());
    }

    #[test]
    fn tls_is_asked_for_in_full_or_turned_off_explicitly() {
        let base = || Overrides {
            data_dir: Some("/d".into()),
            ..Overrides::default()
        };
        let err = Config::resolve(base(), FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("--insecure"), "{err}");
        let file: FileConfig =
            toml::from_str("tls_cert = \"/c.pem\"\ntls_ca = \"/ca.pem\"").unwrap();
        let err = Config::resolve(base(), file.clone()).unwrap_err();
        assert!(err.to_string().contains("missing: --tls-key"), "{err}");
        let overrides = Overrides {
            tls_key: Some("/k.pem".into()),
            ..base()
        };
        let tls = Config::resolve(overrides, file.clone())
            .unwrap()
            .tls
            .unwrap();
        assert_eq!(tls.ca, PathBuf::from("/ca.pem"));
        assert_eq!(
            tls.identity,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        let overrides = Overrides {
            insecure: true,
            ..base()
        };
        let err = Config::resolve(overrides, file).unwrap_err();
        assert!(err.to_string().contains("choose one"), "{err}");
    }
}

//! Chunk server configuration: a TOML file, `SHARDFS_CHUNK_*` environment
//! variables and flags, in rising order of precedence (flags win).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config file {} is not valid: {e}", path.display()))
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
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub capacity_bytes: Option<u64>,
    pub put_memory_bytes: u64,
    /// Re-hashing rate of the scrubber (0: no scrub).
    pub scrub_mb_per_s: u64,
}

impl Config {
    /// Flags and environment win over the file, the file over defaults.
    pub fn resolve(overrides: Overrides, file: FileConfig) -> anyhow::Result<Self> {
        let listen_text = overrides
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_text.parse().map_err(|e| {
            anyhow::anyhow!("listen address {listen_text:?} is not host:port ({e})")
        })?;
        let data_dir = overrides.data_dir.or(file.data_dir).ok_or_else(|| {
            anyhow::anyhow!(
                "no data directory: pass --data-dir DIR, set SHARDFS_CHUNK_DATA_DIR, or set data_dir in the config file"
            )
        })?;
        Ok(Self {
            listen,
            data_dir,
            capacity_bytes: overrides.capacity_bytes.or(file.capacity_bytes),
            put_memory_bytes: overrides
                .put_memory_bytes
                .or(file.put_memory_bytes)
                .unwrap_or(DEFAULT_PUT_MEMORY_BYTES),
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
            ..Overrides::default()
        };
        let config = Config::resolve(overrides, file).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/flag"));
        assert_eq!(config.capacity_bytes, Some(5));
        assert_eq!(config.put_memory_bytes, DEFAULT_PUT_MEMORY_BYTES);
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
}

//! What the servers' configuration code shares: reading the TOML file,
//! and [`ConfigError`], which says in words what is wrong.

use std::path::Path;

use serde::de::DeserializeOwned;

/// A configuration that cannot be used, in words (the file, the key or
/// flag, and what is wrong with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Reads and parses the TOML file at `path`.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text)
        .map_err(|e| ConfigError(format!("config file {} is not valid: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        listen: Option<String>,
    }

    #[test]
    fn files_parse_and_bad_ones_say_what_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "listen = \"127.0.0.1:1\"\n").unwrap();
        let sample: Sample = load_toml(&good).unwrap();
        assert_eq!(sample.listen.as_deref(), Some("127.0.0.1:1"));

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "lisen = 1\n").unwrap();
        let err = load_toml::<Sample>(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml is not valid") && err.contains("lisen"),
            "{err}"
        );

        let missing = dir.path().join("missing.toml");
        let err = load_toml::<Sample>(&missing).unwrap_err().to_string();
        assert!(err.contains("cannot read config file"), "{err}");
    }
}

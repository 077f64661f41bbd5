//! Paths in the shardfs namespace: absolute, UTF-8, `/`-separated.
//!
//! The rules are checked once, where a path enters the system, so that the
//! metaserver's state machine only ever sees canonical paths: no empty
//! components (so no `//` and no trailing `/` except the root itself), no
//! `.` or `..`, no NUL or other control character (a newline or an escape
//! in a name breaks `ls` output and every line-based tool), no name over [`MAX_NAME_BYTES`] and no path over
//! [`MAX_PATH_BYTES`].

use std::fmt;

/// Longest single name (as in most local file systems).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest whole path.
pub const MAX_PATH_BYTES: usize = 4096;

/// Why a path was refused; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path {path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: String,
}

/// A path for an error message: whole up to 200 characters, else its
/// first 197 and "..." (200 in all).
fn shorten(path: &str) -> String {
    const MOST: usize = 200;
    const MARK: &str = "...";
    if path.chars().nth(MOST).is_none() {
        return path.to_string();
    }
    let end = path
        .char_indices()
        .nth(MOST - MARK.len())
        .map_or(path.len(), |(i, _)| i);
    format!("{}{MARK}", &path[..end])
}

/// A validated, canonical absolute path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DfsPath(String);

impl DfsPath {
    pub fn root() -> Self {
        Self("/".to_string())
    }

    pub fn parse(path: &str) -> Result<Self, PathError> {
        let fail = |reason: String| PathError {
            path: shorten(path),
            reason,
        };
        if path.len() > MAX_PATH_BYTES {
            return Err(fail(format!(
                "{} bytes long; the limit is {MAX_PATH_BYTES}",
                path.len()
            )));
        }
        if !path.starts_with('/') {
            return Err(fail("must be absolute (start with /)".into()));
        }
        if path.contains('\0') {
            return Err(fail("contains a NUL byte".into()));
        }
        if let Some(c) = path.chars().find(|c| c.is_control()) {
            return Err(fail(format!(
                "contains the control character {:?} (U+{:04X}); names may not hold control characters",
                c, c as u32
            )));
        }
        if path == "/" {
            return Ok(Self::root());
        }
        for name in path[1..].split('/') {
            match name {
                "" => return Err(fail("has an empty component (// or a trailing /)".into())),
                "." | ".." => return Err(fail(format!("has a {name:?} component"))),
                _ if name.len() > MAX_NAME_BYTES => {
                    return Err(fail(format!(
                        "component of {} bytes; the limit is {MAX_NAME_BYTES}",
                        name.len()
                    )));
                }
                _ => {}
            }
        }
        Ok(Self(path.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The names from the root down; empty for the root.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0[1..].split('/').filter(|c| !c.is_empty())
    }

    /// The last component; None for the root.
    pub fn name(&self) -> Option<&str> {
        if self.is_root() {
            None
        } else {
            self.0.rsplit('/').next()
        }
    }

    /// The parent directory; None for the root.
    pub fn parent(&self) -> Option<DfsPath> {
        if self.is_root() {
            return None;
        }
        let cut = self.0.rfind('/').expect("absolute path");
        Some(if cut == 0 {
            Self::root()
        } else {
            Self(self.0[..cut].to_string())
        })
    }

    /// `self/name`; `name` must be a valid single component.
    pub fn join(&self, name: &str) -> Result<DfsPath, PathError> {
        if name.contains('/') {
            return Err(PathError {
                path: name.chars().take(200).collect(),
                reason: "a name may not contain /".into(),
            });
        }
        if self.is_root() {
            Self::parse(&format!("/{name}"))
        } else {
            Self::parse(&format!("{}/{name}", self.0))
        }
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &DfsPath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes()[other.0.len()] == b'/')
    }
}

impl fmt::Display for DfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_long_paths_shortened_to_200_characters() {
        let long = format!("/{}", "é".repeat(5000));
        let error = DfsPath::parse(&long).unwrap_err();
        assert_eq!(error.path.chars().count(), 200);
        assert!(
            error.path.ends_with("...") && long.starts_with(&error.path[..error.path.len() - 3])
        );
        let short = "/a\0b";
        assert_eq!(DfsPath::parse(short).unwrap_err().path, short);
    }

    #[test]
    fn accepts_canonical_paths() {
        for ok in [
            "/",
            "/a",
            "/a/b.tar",
            "/datasets/imagenet/train-000001.tar",
            "/ünï/ç",
        ] {
            assert_eq!(DfsPath::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_with_reasons() {
        let cases = [
            ("", "absolute"),
            ("a/b", "absolute"),
            ("/a//b", "empty component"),
            ("/a/", "empty component"),
            ("/a/./b", "\".\""),
            ("/a/../b", "\"..\""),
            ("/a\0b", "NUL"),
            ("/new\nline", "control character '\\n'"),
            ("/tab\there", "U+0009"),
            ("/esc\x1b[31m", "U+001B"),
            ("/del\x7f", "U+007F"),
            ("/next\u{85}line", "U+0085"),
        ];
        for (path, why) in cases {
            let err = DfsPath::parse(path).unwrap_err();
            assert!(err.to_string().contains(why), "{path:?}: {err}");
        }
        let long_name = format!("/{}", "x".repeat(256));
        assert!(
            DfsPath::parse(&long_name)
                .unwrap_err()
                .reason
                .contains("255")
        );
        let long_path = "/abc".repeat(1100);
        assert!(
            DfsPath::parse(&long_path)
                .unwrap_err()
                .reason
                .contains("4096")
        );
    }

    #[test]
    fn parents_names_and_prefixes() {
        let p = DfsPath::parse("/a/b/c").unwrap();
        assert_eq!(p.name(), Some("c"));
        assert_eq!(p.parent().unwrap().as_str(), "/a/b");
        assert_eq!(
            DfsPath::parse("/a").unwrap().parent().unwrap(),
            DfsPath::root()
        );
        assert_eq!(DfsPath::root().parent(), None);
        assert_eq!(p.components().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(p.starts_with(&DfsPath::parse("/a").unwrap()));
        assert!(
            !DfsPath::parse("/ab")
                .unwrap()
                .starts_with(&DfsPath::parse("/a").unwrap())
        );
        assert!(p.starts_with(&DfsPath::root()));
        assert_eq!(DfsPath::root().join("x").unwrap().as_str(), "/x");
        assert!(p.join("..").is_err());
    }
}

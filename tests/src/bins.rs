//! Where the shardfs binaries are.
//!
//! Cargo gives a test the path of its own package's binaries only, and
//! these suites run the binaries of three other packages. So on first use
//! the harness asks the `cargo` that runs the test to build the workspace's
//! binaries with the test's own profile (a no-op after `cargo test
//! --workspace`, which built them), and takes them from that profile's
//! directory. `SHARDFS_BIN_DIR` names a directory of ready binaries instead
//! (nothing is built then).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The binaries the suites start.
pub const BINARIES: [&str; 3] = ["shardfs-meta", "shardfs-chunk", "shardfs"];

/// The path of binary `name` (one of [`BINARIES`]), building them all on
/// first use. Panics with the reason when they cannot be had.
pub fn binary(name: &str) -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(locate) {
        Ok(dir) => dir.join(name),
        Err(reason) => panic!("{reason}"),
    }
}

fn locate() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("SHARDFS_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return check(&dir, "SHARDFS_BIN_DIR").map(|()| dir);
    }
    // A test runs as target/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().map_err(|e| format!("locating the test binary: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in target/<profile>/deps", exe.display()))?
        .to_path_buf();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(name) => name.to_string(),
        None => return Err(format!("no profile in {}", profile_dir.display())),
    };
    let target_dir = profile_dir.parent().ok_or("no target directory")?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args([
            "build",
            "--workspace",
            "--bins",
            "--offline",
            "--profile",
            &profile,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .output();
    match output {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            return Err(format!(
                "building the shardfs binaries failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        // Without cargo, binaries built earlier still do.
        Err(e) if check(&profile_dir, "").is_ok() => {
            eprintln!("cannot run {cargo:?} ({e}); using the binaries already built");
        }
        Err(e) => return Err(format!("cannot run {cargo:?} to build the binaries: {e}")),
    }
    check(&profile_dir, "cargo build").map(|()| profile_dir)
}

fn check(dir: &Path, source: &str) -> Result<(), String> {
    for name in BINARIES {
        if !dir.join(name).is_file() {
            return Err(format!(
                "{} is missing (from {source}): build with `cargo build --workspace --bins`",
                dir.join(name).display()
            ));
        }
    }
    Ok(())
}

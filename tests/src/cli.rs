//! The `shardfs` command line, run as a user would: no terminal, and
//! none of the test's own `SHARDFS_*` settings (metaservers, log, CA,
//! token) from the environment.

use std::process::{Command, Output, Stdio};

use crate::bins::binary;

/// A `shardfs` command with `--meta meta`, standard input closed and
/// `SHARDFS_META` removed; add arguments and run it.
pub fn shardfs(meta: &str) -> Command {
    let mut command = Command::new(binary("shardfs"));
    command
        .args(["--meta", meta])
        .env_remove("SHARDFS_META")
        .env_remove("SHARDFS_LOG")
        .env_remove("SHARDFS_CA")
        .env_remove("SHARDFS_INSECURE")
        .env_remove("SHARDFS_TOKEN")
        .env_remove("SHARDFS_TOKEN_FILE")
        .stdin(Stdio::null());
    command
}

/// Runs `shardfs --meta meta ARGS` and returns its output.
pub fn cli_at(meta: &str, args: &[&str]) -> Output {
    shardfs(meta).args(args).output().expect("run shardfs")
}

/// A command's standard output, as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// A command's standard error, as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// `output`, after asserting that its command succeeded.
pub fn ok(output: Output) -> Output {
    assert!(
        output.status.success(),
        "shardfs failed ({:?}): {}",
        output.status.code(),
        stderr(&output)
    );
    output
}

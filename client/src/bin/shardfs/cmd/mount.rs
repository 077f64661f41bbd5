//! `shardfs mount` (in the background, or in the foreground with
//! `--foreground`) and `shardfs umount`.

use std::path::Path;
use std::time::Instant;

use shardfs_client::{Client, ClientError, Result};
use shardfs_proto::{errln, outln};

use crate::args::MountArgs;

/// How long a mount waits for a metaserver leader before it answers from
/// its cache (or fails the call).
pub const MOUNT_META_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// Set in the environment of a mount started in the background: the child
/// prints `ready` on standard output once mounted, then detaches from it.
pub const MOUNT_READY_ENV: &str = "SHARDFS_MOUNT_NOTIFY";

/// Where a background mount writes its log (default: nowhere).
pub const MOUNT_LOG_ENV: &str = "SHARDFS_MOUNT_LOG";

/// `shardfs mount` without --foreground: starts `shardfs mount
/// --foreground` in a new session and returns once it has mounted (or says
/// why it could not).
/// The mount's own process gets the same metaservers, CA and token as
/// this one (a token given as a flag travels in the environment, out of
/// `ps`).
pub fn mount_in_background(cli: &crate::args::Cli, args: &MountArgs) -> Result<()> {
    use std::io::{BufRead, Read};
    // The mount runs elsewhere than the caller's directory.
    let absolute = |path: &Option<std::path::PathBuf>| match path {
        Some(p) => std::path::absolute(p)
            .map(Some)
            .map_err(|e| ClientError::local(p, e)),
        None => Ok(None),
    };
    let (meta, insecure) = (&cli.meta, cli.insecure);
    let (ca, token_file) = (absolute(&cli.ca)?, absolute(&cli.token_file)?);
    use std::os::unix::process::CommandExt;
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .map_err(|e| ClientError::local(&args.mountpoint, e))?;
    let exe = std::env::current_exe().map_err(|e| ClientError::local("shardfs", e))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("--meta")
        .arg(meta)
        .args(
            ca.iter()
                .flat_map(|ca| [std::ffi::OsStr::new("--ca"), ca.as_os_str()]),
        )
        .args(insecure.then_some("--insecure"))
        .args(
            token_file
                .iter()
                .flat_map(|f| [std::ffi::OsStr::new("--token-file"), f.as_os_str()]),
        )
        .arg("mount")
        .arg(&args.remote)
        .arg(&mountpoint)
        .arg("--foreground")
        .arg("--read-ahead")
        .arg(args.read_ahead.to_string());
    if args.allow_other {
        command.arg("--allow-other");
    }
    if let Some(log) = std::env::var_os(MOUNT_LOG_ENV) {
        let log = std::path::absolute(&log).map_err(|e| ClientError::local(&log, e))?;
        command.env(MOUNT_LOG_ENV, log);
    }
    if let Some(token) = &cli.token {
        command.env(shardfs_client::TOKEN_ENV, token);
    }
    command
        // Not the caller's directory: the mount would keep it busy.
        .current_dir("/")
        .env(MOUNT_READY_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setsid is async-signal-safe; it detaches the child from this
    // terminal so Ctrl-C here does not reach it.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| ClientError::local("shardfs mount", e))?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    let _ = std::io::BufReader::new(stdout).read_line(&mut line);
    if line.trim() == "ready" {
        outln!(
            "mounted {} at {} (process {}); `shardfs umount {}` unmounts",
            args.remote,
            mountpoint.display(),
            child.id(),
            mountpoint.display()
        );
        return Ok(());
    }
    let mut said = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut said);
    }
    let _ = child.wait();
    let said = said.trim();
    let said = said.strip_prefix("shardfs: ").unwrap_or(said);
    Err(ClientError::InvalidArgument(if said.is_empty() {
        "the mount process ended before mounting".to_string()
    } else {
        said.to_string()
    }))
}

/// `shardfs mount --foreground`: mounts and serves until unmounted.
pub async fn mount_here(client: Client, args: MountArgs) -> Result<()> {
    use shardfs_client::mount::{MountConfig, mount};
    use std::io::Write;
    let mounted = mount(
        client,
        MountConfig {
            remote: args.remote.clone(),
            mountpoint: args.mountpoint.clone(),
            allow_other: args.allow_other,
        },
    )
    .await?;
    if std::env::var_os(MOUNT_READY_ENV).is_some() {
        // (Whoever started us may be gone already: a failed write is fine.)
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "ready");
        let _ = stdout.flush();
        detach_output();
    } else {
        errln!(
            "mounted {} at {}; Ctrl-C or `shardfs umount {}` unmounts",
            args.remote,
            mounted.mountpoint.display(),
            mounted.mountpoint.display()
        );
    }
    mounted.serve_until_unmounted().await
}

/// Points standard output and error of a background mount at its log file
/// (or /dev/null): whoever started it has gone.
pub fn detach_output() {
    use std::os::fd::AsRawFd;
    let target = std::env::var_os(MOUNT_LOG_ENV).unwrap_or_else(|| "/dev/null".into());
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&target)
    else {
        return;
    };
    // SAFETY: dup2 onto the standard descriptors; `file` stays open until
    // both are replaced.
    unsafe {
        libc::dup2(file.as_raw_fd(), 1);
        libc::dup2(file.as_raw_fd(), 2);
    }
}

/// `shardfs umount`: unmounts, then waits for the mount's process to end.
pub async fn umount(mountpoint: &Path, lazy: bool) -> Result<()> {
    use shardfs_client::mount::{mount_processes, shardfs_mounts, unmount_path};
    // Canonicalize the parent only: looking at the mount point itself asks
    // the mount, which may be dead or waiting for its cluster.
    let canonical = match (mountpoint.parent(), mountpoint.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            parent
                .canonicalize()
                .map(|p| p.join(name))
                .unwrap_or_else(|_| mountpoint.to_path_buf())
        }
        _ => mountpoint.to_path_buf(),
    };
    if !shardfs_mounts().contains(&canonical) {
        return Err(ClientError::InvalidArgument(format!(
            "{} is not a shardfs mount",
            mountpoint.display()
        )));
    }
    // Lazily detached, the process serves open files until they close.
    let serving = if lazy {
        Vec::new()
    } else {
        mount_processes(&canonical)
    };
    unmount_path(&canonical, lazy)?;
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    // (A zombie has ended: its parent just has not reaped it.)
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    while serving.iter().any(alive) && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let left: Vec<u32> = serving.iter().copied().filter(|p| alive(p)).collect();
    if !left.is_empty() {
        return Err(ClientError::InvalidArgument(format!(
            "unmounted {}, but its process {left:?} is still running",
            mountpoint.display()
        )));
    }
    outln!("unmounted {}", canonical.display());
    Ok(())
}

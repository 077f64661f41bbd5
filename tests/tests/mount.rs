//! `shardfs mount` against a real cluster, through the kernel: listings,
//! `cat`, `sha256sum` and reads at random offsets match the source files;
//! writes fail with EROFS; pages stay cached; `shardfs umount` and Ctrl-C
//! unmount and leave no process behind.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardfs_tests::{Cluster, data, hash, ok, tree_hashes};

const MIB: usize = 1 << 20;

/// FUSE needs /dev/fuse; a machine without it cannot run these tests.
fn fuse_available() -> bool {
    let there = Path::new("/dev/fuse").exists();
    if !there {
        eprintln!("skipping: /dev/fuse is missing on this machine");
    }
    there
}

fn mounted(mountpoint: &Path) -> bool {
    let target = mountpoint.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(target))
}

/// Processes (other than this one) whose command line names `mountpoint`.
fn processes_serving(mountpoint: &Path) -> Vec<String> {
    pids_serving(mountpoint)
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

/// The pids and command lines of [`processes_serving`].
fn pids_serving(mountpoint: &Path) -> Vec<(u32, String)> {
    let target = mountpoint.to_str().unwrap().as_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let zombie = stat.rsplit(')').next()?.trim_start().starts_with('Z');
            let names_it = cmdline.split(|b| *b == 0).any(|a| a == target);
            (names_it && !zombie)
                .then(|| (pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// Leaves nothing behind however the test ends: on drop, a mount still at
/// `mountpoint` is detached and every process serving it is killed (a
/// failed assertion must not leave a live FUSE mount and its process, which
/// would hang later tests and cargo's clean-up).
struct MountGuard(std::path::PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if mounted(&self.0) {
            let path = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
            // SAFETY: a valid C string; detaching a mount has no memory effects.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        for (pid, _) in pids_serving(&self.0) {
            // SAFETY: signals a process of this test's making.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// A file's pages held in the kernel's page cache: mapped and locked, so
/// neither memory pressure nor inode eviction can drop them while this
/// lives. Only an open that does not keep the cache could.
struct PinnedPages {
    addr: *mut libc::c_void,
    len: usize,
    _file: std::fs::File,
}

impl PinnedPages {
    fn new(path: &Path) -> Self {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a read-only shared mapping of an open file, of its size.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap {}", path.display());
        // SAFETY: the range was just mapped; locking faults every page in.
        let locked = unsafe { libc::mlock(addr, len) };
        assert_eq!(locked, 0, "mlock: {}", std::io::Error::last_os_error());
        Self {
            addr,
            len,
            _file: file,
        }
    }
}

impl Drop for PinnedPages {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe {
            libc::munlock(self.addr, self.len);
            libc::munmap(self.addr, self.len);
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `dir/mnt`, created (canonical), and the guard that leaves nothing
/// mounted there however the test ends.
fn mount_point(dir: &Path) -> (PathBuf, MountGuard) {
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    (mnt.clone(), MountGuard(mnt))
}

/// Puts [`write_source`]'s tree as `/data` (1 MiB chunks) and mounts it
/// with `shardfs mount`: the source, the mount point, its guard and what
/// the mount command printed.
fn put_source_and_mount(
    cluster: &Cluster,
    dir: &Path,
) -> (PathBuf, PathBuf, MountGuard, std::process::Output) {
    let source = dir.join("source");
    write_source(&source);
    ok(cluster.cli(&[
        "put",
        "-r",
        "--chunk-size",
        "1MiB",
        source.to_str().unwrap(),
        "/data",
    ]));
    let (mnt, guard) = mount_point(dir);
    let out = ok(cluster.cli(&["mount", "/data", mnt.to_str().unwrap()]));
    (source, mnt, guard, out)
}

/// The size in bytes `df` shows for the file system holding `path`.
fn df_size(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=size", path.to_str().unwrap()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn write_source(root: &Path) {
    let files: [(&str, usize); 5] = [
        ("top.bin", 3 * MIB + 17),
        ("a/empty", 0),
        ("a/small.txt", 1000),
        ("a/b/multi.bin", 5 * MIB + MIB / 2),
        ("a/b/c/one-chunk.bin", MIB),
    ];
    for (name, len) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data(len, name)).unwrap();
    }
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
}

fn run(command: &mut Command) -> String {
    let out = command.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_reads_match_the_source_and_unmount_leaves_nothing() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3).await;
    let (source, mnt, _guard, out) = put_source_and_mount(&cluster, dir.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains("mounted /data at"));
    assert!(mounted(&mnt), "the mount is in /proc/self/mounts");
    assert_eq!(processes_serving(&mnt).len(), 1, "one process serves it");

    // Every file and directory, read through the kernel, by hash.
    assert_eq!(tree_hashes(&mnt), tree_hashes(&source));

    // ls -lR: every file with its size, read-only modes.
    let listing = run(Command::new("ls").arg("-lR").arg(&mnt));
    for (name, len) in [
        ("top.bin", 3 * MIB + 17),
        ("multi.bin", 5 * MIB + MIB / 2),
        ("small.txt", 1000),
        ("empty", 0),
    ] {
        assert!(
            listing.lines().any(|l| l.starts_with("-r--r--r--")
                && l.contains(&format!(" {len} "))
                && l.ends_with(&format!(" {name}"))),
            "ls -lR shows {name} with {len} bytes:\n{listing}"
        );
    }
    assert!(listing.contains("empty-dir"), "{listing}");
    let meta = std::fs::metadata(mnt.join("a/b/multi.bin")).unwrap();
    assert_eq!(meta.len(), (5 * MIB + MIB / 2) as u64);
    assert_eq!(meta.mode() & 0o777, 0o444);

    // cat and sha256sum through the mount equal the source's.
    let cat = Command::new("cat")
        .arg(mnt.join("a/b/multi.bin"))
        .output()
        .unwrap();
    assert!(cat.status.success());
    assert_eq!(
        hash(&cat.stdout),
        hash(&std::fs::read(source.join("a/b/multi.bin")).unwrap())
    );
    let files = [
        "top.bin",
        "a/small.txt",
        "a/empty",
        "a/b/multi.bin",
        "a/b/c/one-chunk.bin",
    ];
    let sums = |root: &Path| run(Command::new("sha256sum").args(files).current_dir(root));
    assert_eq!(sums(&mnt), sums(&source));

    // Reads at many random offsets and lengths, across chunk boundaries.
    let expected = std::fs::read(source.join("a/b/multi.bin")).unwrap();
    let file = std::fs::File::open(mnt.join("a/b/multi.bin")).unwrap();
    let mut seed: u64 = 0x5eed;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    for _ in 0..300 {
        let offset = next() as usize % expected.len();
        let len = (next() as usize % (3 * MIB)).min(expected.len() - offset);
        let mut got = vec![0u8; len];
        file.read_exact_at(&mut got, offset as u64).unwrap();
        assert!(
            got == expected[offset..offset + len],
            "bytes at {offset}+{len}"
        );
    }
    // Past the end: nothing.
    let mut tail = [0u8; 16];
    assert_eq!(file.read_at(&mut tail, expected.len() as u64).unwrap(), 0);
    drop(file);

    // Read-only: writes, new files and directories fail with EROFS.
    for result in [
        std::fs::write(mnt.join("new.txt"), b"x").map(|_| ()),
        std::fs::create_dir(mnt.join("new-dir")),
        std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("top.bin"))
            .map(|_| ()),
        std::fs::remove_file(mnt.join("top.bin")),
    ] {
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EROFS));
    }
    // Nothing was lost or changed by those attempts.
    assert_eq!(tree_hashes(&mnt), tree_hashes(&source));

    // A file written after mounting shows up; with a chunk server killed
    // it still reads back whole, from the other replicas.
    let late = data(4 * MIB + 3, "late");
    std::fs::write(dir.path().join("late.bin"), &late).unwrap();
    let out = cluster.cli(&[
        "put",
        "--chunk-size",
        "1MiB",
        dir.path().join("late.bin").to_str().unwrap(),
        "/data/late/late.bin",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.kill_chunk(1);
    assert_eq!(
        hash(&std::fs::read(mnt.join("late/late.bin")).unwrap()),
        hash(&late)
    );

    // Immutable files stay in the kernel's page cache: with every chunk
    // server gone, a file read before reads again, unchanged, through a
    // new open. (Its pages are pinned so that only the mount dropping the
    // cache on that open could make the read fail: the kernel may evict
    // unpinned pages whenever it likes, which once failed this test.)
    let pinned = PinnedPages::new(&mnt.join("a/b/multi.bin"));
    for id in [2, 3] {
        cluster.kill_chunk(id);
    }
    assert_eq!(
        hash(&std::fs::read(mnt.join("a/b/multi.bin")).unwrap()),
        hash(&expected)
    );
    drop(pinned);

    let out = cluster.cli(&["umount", mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!mounted(&mnt), "unmounted");
    assert!(
        processes_serving(&mnt).is_empty(),
        "no process left: {:?}",
        processes_serving(&mnt)
    );
    assert_eq!(
        std::fs::read_dir(&mnt).unwrap().count(),
        0,
        "the bare directory is back"
    );

    // Unmounting again says plainly that nothing is mounted there.
    let out = cluster.cli(&["umount", mnt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a shardfs mount"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_mount_unmounts_on_ctrl_c_and_bad_mounts_say_why() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3).await;
    let bytes = data(2 * MIB + 5, "fg");
    let local = dir.path().join("fg.bin");
    std::fs::write(&local, &bytes).unwrap();
    let out = cluster.cli(&["put", local.to_str().unwrap(), "/fg/file.bin"]);
    assert!(out.status.success());
    let (mnt, _guard) = mount_point(dir.path());

    // Bad input: a file, a missing directory, a missing remote path.
    for (args, says) in [
        (
            vec!["mount", "/fg/file.bin", mnt.to_str().unwrap()],
            "is a file",
        ),
        (vec!["mount", "/fg", "/nonexistent/mnt"], "/nonexistent/mnt"),
        (
            vec!["mount", "/no/such/dir", mnt.to_str().unwrap()],
            "/no/such/dir",
        ),
    ] {
        let out = cluster.cli(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!mounted(&mnt));
    }

    // Where /dev/fuse is missing (here: hidden by an empty /dev in a mount
    // namespace of its own), mounting says so plainly.
    let shardfs = shardfs_tests::bins::binary("shardfs");
    let shardfs = shardfs.display();
    let script = format!(
        "mount -t tmpfs tmpfs /dev && exec {shardfs} --meta {} --ca {} mount /fg {} --foreground",
        cluster.meta_addrs.join(","),
        cluster.tls.ca_path().display(),
        mnt.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("SHARDFS_TOKEN", cluster.tls.admin_token())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/dev/fuse is missing"), "{stderr}");
    assert!(!mounted(&mnt));

    let mut child = Command::new(shardfs_tests::bins::binary("shardfs"))
        .args(["--meta", &cluster.meta_addrs.join(",")])
        .arg("--ca")
        .arg(cluster.tls.ca_path())
        .env("SHARDFS_TOKEN", cluster.tls.admin_token())
        .args(["mount", "/fg", mnt.to_str().unwrap(), "--foreground"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the foreground mount", Duration::from_secs(20), || {
        mounted(&mnt)
    });
    assert_eq!(
        hash(&std::fs::read(mnt.join("file.bin")).unwrap()),
        hash(&bytes)
    );
    // A read that fails while no chunk server is up (EIO) is not
    // remembered: once they are back, the same open file reads whole.
    let second = data(3 * MIB + 11, "second");
    std::fs::write(dir.path().join("second.bin"), &second).unwrap();
    let out = cluster.cli(&[
        "put",
        dir.path().join("second.bin").to_str().unwrap(),
        "/fg/second.bin",
    ]);
    assert!(out.status.success());
    let file = std::fs::File::open(mnt.join("second.bin")).unwrap();
    for id in [1, 2, 3] {
        cluster.kill_chunk(id);
    }
    let mut buf = vec![0u8; 4096];
    let err = file.read_at(&mut buf, 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    for id in [1, 2, 3] {
        cluster.start_chunk(id);
    }
    cluster.wait_healthy(Duration::from_secs(30)).await;
    let mut got = vec![0u8; second.len()];
    file.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(hash(&got), hash(&second));
    drop(file);

    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the mount did not end on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit after Ctrl-C: {status:?}");
    assert!(!mounted(&mnt));
    assert!(processes_serving(&mnt).is_empty());
}

/// SIGSTOPs the metaservers while alive, SIGCONTs them when dropped.
struct Paused(Vec<u32>);

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: signals a process of this test's making.
            unsafe { libc::kill(*pid as i32, libc::SIGCONT) };
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_mount_is_refused_and_without_metaservers_the_cache_is_served() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let (source, mnt, _guard, _) = put_source_and_mount(&cluster, dir.path());

    // A second mount on the same place is refused, naming the first.
    let again = cluster.cli(&["mount", "/data", mnt.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&again.stderr).to_string();
    assert_eq!(again.status.code(), Some(1), "{said}");
    assert!(said.contains("already a shardfs mount"), "{said}");
    let (pid, _) = pids_serving(&mnt)[0].clone();
    assert!(said.contains(&pid.to_string()), "{said}");
    assert_eq!(processes_serving(&mnt).len(), 1, "still one process");

    // 8. df counts the one disk these local chunk servers share once.
    let (size, disk) = (df_size(&mnt), df_size(dir.path()));
    // (Rounded down to the mount's 1 MiB blocks.)
    assert!(size <= disk && size + (1 << 20) >= disk, "{size} vs {disk}");

    // Read once, so the mount has seen the tree.
    let expected = tree_hashes(&source);
    assert_eq!(tree_hashes(&mnt), expected);

    // With every metaserver stopped, what was seen is still served, and
    // within a few seconds, not after 15-30 s per call.
    let _paused = Paused(
        cluster
            .metas
            .values()
            .map(|p| {
                let pid = p.child.id();
                // SAFETY: signals a process of this test's making.
                unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
                pid
            })
            .collect(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    assert_eq!(tree_hashes(&mnt), expected);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // What it never saw fails fast.
    let started = Instant::now();
    let missing = std::fs::metadata(mnt.join("never-seen"));
    assert!(missing.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

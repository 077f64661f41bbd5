//! A read-only FUSE view of a remote directory (`shardfs mount`).
//!
//! Paths get inode numbers as the kernel meets them. Metadata calls go to
//! the metaserver (answers are cached for [`ATTR_TTL`]); reads go through
//! the same verified, parallel chunk fetches as [`crate::FileReader`], with
//! a read-ahead window per open file while it is read in order. Files are
//! immutable, so their pages stay in the kernel's page cache across opens
//! while their content id is unchanged.
//!
//! The kernel is told to send large reads (up to 1 MiB each, many at once)
//! and the mount's read-ahead is raised, so one sequential reader keeps
//! several chunk fetches in flight.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use shardfs_proto::meta::v1 as pb;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::read::{ChunkData, FileLayout};

/// How long the kernel may trust an entry or attributes before asking
/// again (a path can be replaced by a rename on another client).
const ATTR_TTL: Duration = Duration::from_secs(1);
/// How long a mount stops asking the metaservers after they did not answer.
const META_DOWN_PAUSE: Duration = Duration::from_secs(5);
/// Kernel read-ahead for the mount (it asks for this much after the
/// position of a sequential reader).
const KERNEL_READ_AHEAD_KIB: u64 = 32 << 10;
/// Kernel requests in flight at once.
const MAX_BACKGROUND: u16 = 64;
/// How far (in chunks) a read may land from the furthest one before it
/// and still count as part of a sequential pass.
const SEQUENTIAL_SLACK_CHUNKS: usize = 8;
/// Chunks a randomly read file keeps, besides its read-ahead window.
const RANDOM_CHUNKS_KEPT: u64 = 4;
/// How long an unmounted session may take to end.
const SESSION_END_WAIT: Duration = Duration::from_secs(10);
/// Threads reading kernel requests.
const FUSE_THREADS: usize = 2;

/// What `shardfs mount` needs.
pub struct MountConfig {
    /// The remote directory shown at the mount point.
    pub remote: String,
    pub mountpoint: PathBuf,
    /// Let other users than the one mounting read the files.
    pub allow_other: bool,
}

/// The processes serving the shardfs mount at `mountpoint` (canonical), by
/// their command line (`shardfs ... mount REMOTE MOUNTPOINT ...`).
pub fn mount_processes(mountpoint: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let target = mountpoint.as_os_str().as_encoded_bytes();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_shardfs = args.first().is_some_and(|exe| exe.ends_with(b"shardfs"));
            let mounting = args.iter().any(|a| *a == b"mount");
            is_shardfs && mounting && args.contains(&target)
        })
        .collect()
}

/// A mounted file system, running until it is unmounted.
pub struct Mounted {
    unmounter: fuser::SessionUnmounter,
    /// Resolves when the FUSE session ends (the file system was unmounted).
    done: tokio::sync::oneshot::Receiver<std::io::Result<()>>,
    pub mountpoint: PathBuf,
}

impl Mounted {
    /// Serves until the file system is unmounted (by `shardfs umount` or
    /// `umount`), or until SIGINT (Ctrl-C), SIGTERM or SIGHUP, which
    /// unmount it first.
    pub async fn serve_until_unmounted(mut self) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| ClientError::local("signal", e))?;
        let mut hangup =
            signal(SignalKind::hangup()).map_err(|e| ClientError::local("signal", e))?;
        tokio::select! {
            ended = &mut self.done => return session_result(ended),
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hangup.recv() => {}
        }
        self.unmount()?;
        match tokio::time::timeout(SESSION_END_WAIT, &mut self.done).await {
            Ok(ended) => session_result(ended),
            // Detached with files still open: they keep it alive; go anyway.
            Err(_) => Ok(()),
        }
    }

    /// Unmounts; when files are still open there, detaches it instead (it
    /// goes once they are closed).
    pub fn unmount(&mut self) -> Result<()> {
        match self.unmounter.unmount() {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                tracing::warn!("files are open under the mount point: detaching it lazily");
                unmount_path(&self.mountpoint, true)
            }
            Err(e) => Err(ClientError::local(&self.mountpoint, e)),
        }
    }
}

/// Mounts `config.remote` at `config.mountpoint` and serves it on
/// background threads (reads run on the current tokio runtime).
pub async fn mount(client: Client, config: MountConfig) -> Result<Mounted> {
    if !Path::new("/dev/fuse").exists() {
        return Err(ClientError::InvalidArgument(
            "cannot mount: /dev/fuse is missing (load the fuse module with `modprobe fuse`; \
             in a container, pass the device, e.g. `docker run --device /dev/fuse --cap-add SYS_ADMIN`)"
                .into(),
        ));
    }
    let mountpoint = config
        .mountpoint
        .canonicalize()
        .map_err(|e| ClientError::local(&config.mountpoint, e))?;
    if !mountpoint.is_dir() {
        return Err(ClientError::InvalidArgument(format!(
            "cannot mount on {}: not a directory",
            mountpoint.display()
        )));
    }
    if shardfs_mounts().contains(&mountpoint) {
        let processes = mount_processes(&mountpoint);
        return Err(ClientError::InvalidArgument(format!(
            "{} is already a shardfs mount{}: `shardfs umount {}` first",
            mountpoint.display(),
            match processes.as_slice() {
                [] => String::new(),
                pids => format!(
                    " (served by process {})",
                    pids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            mountpoint.display()
        )));
    }
    let remote = crate::client::parse(&config.remote)?.to_string();
    let root = client.stat(&remote).await?;
    if !root.is_dir {
        return Err(ClientError::InvalidArgument(format!(
            "cannot mount {remote}: it is a file; mount the directory that holds it"
        )));
    }
    let fs = ShardFs::new(client, tokio::runtime::Handle::current(), &remote, &root);
    let mut options = fuser::Config::default();
    options.mount_options = vec![
        MountOption::RO,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName(format!("shardfs:{remote}")),
        MountOption::Subtype("shardfs".into()),
    ];
    if config.allow_other {
        options.acl = fuser::SessionACL::All;
    }
    options.n_threads = Some(FUSE_THREADS);
    options.clone_fd = true;
    let target = mountpoint.clone();
    let mut session =
        tokio::task::spawn_blocking(move || fuser::Session::new(fs, &target, &options))
            .await
            .map_err(|e| ClientError::InvalidArgument(format!("mounting failed: {e}")))?
            .map_err(|e| mount_error(&mountpoint, e))?;
    let unmounter = session.unmount_callable();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let _ = done_tx.send(session.run());
        })
        .map_err(|e| ClientError::InvalidArgument(format!("cannot start the FUSE session: {e}")))?;
    // (Only now: finding the mount's device asks the file system itself.)
    raise_read_ahead(&mountpoint);
    Ok(Mounted {
        unmounter,
        done,
        mountpoint,
    })
}

fn session_result(
    ended: std::result::Result<std::io::Result<()>, tokio::sync::oneshot::error::RecvError>,
) -> Result<()> {
    match ended {
        Ok(Ok(())) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(ClientError::InvalidArgument(format!(
            "the FUSE session failed: {e}"
        ))),
    }
}

fn mount_error(mountpoint: &Path, e: std::io::Error) -> ClientError {
    let why = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "permission denied: mount as root, or install fusermount3 (the fuse3 package)"
                .to_string()
        }
        Some(libc::ENOENT) => "no such directory, or fusermount3 is not installed".to_string(),
        Some(libc::ENOTCONN) => {
            "a dead mount is still there: run `shardfs umount` on it first".to_string()
        }
        _ => e.to_string(),
    };
    ClientError::InvalidArgument(format!("cannot mount on {}: {why}", mountpoint.display()))
}

/// Raises the kernel's read-ahead for the mount (its default is 128 KiB,
/// too little to keep a remote file system busy). Best effort: needs root.
fn raise_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, KERNEL_READ_AHEAD_KIB.to_string()) {
        tracing::debug!("could not raise the read-ahead ({knob}): {e}");
    }
}

/// Unmounts the file system at `mountpoint` (`lazy`: detach it now, and
/// let it go once no file there is open).
pub fn unmount_path(mountpoint: &Path, lazy: bool) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| ClientError::InvalidArgument("the mount point has a NUL byte".into()))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: a valid NUL-terminated path; umount2 touches nothing else.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), flags) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) => Err(ClientError::InvalidArgument(format!(
            "cannot unmount {}: busy (a process has files open or its working directory there); \
             close them, or use --lazy",
            mountpoint.display()
        ))),
        Some(libc::EINVAL) => Err(ClientError::InvalidArgument(format!(
            "{} is not a mount point",
            mountpoint.display()
        ))),
        Some(libc::EPERM) => {
            // Not root: the setuid helper may unmount a user's own mount.
            let mut command = std::process::Command::new("fusermount3");
            command.arg("-u");
            if lazy {
                command.arg("-z");
            }
            let status = command.arg(mountpoint).status();
            match status {
                Ok(s) if s.success() => Ok(()),
                _ => Err(ClientError::InvalidArgument(format!(
                    "cannot unmount {}: permission denied (unmount as root, or as the user who mounted it with fusermount3 installed)",
                    mountpoint.display()
                ))),
            }
        }
        _ => Err(ClientError::local(mountpoint, err)),
    }
}

/// The mount points of shardfs file systems now (from /proc/self/mounts).
pub fn shardfs_mounts() -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            let ours =
                fstype == "fuse.shardfs" || (fstype == "fuse" && source.starts_with("shardfs:"));
            ours.then(|| PathBuf::from(unescape_mount_field(target)))
        })
        .collect()
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let n = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One path the kernel knows by inode number.
struct Node {
    path: String,
    parent: u64,
    attr: FileAttr,
    /// The content id whose pages the kernel may hold (the one last
    /// opened): an open keeps the page cache only while it is unchanged.
    cached_content: Option<Vec<u8>>,
    checked: Instant,
}

#[derive(Default)]
struct Nodes {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next_ino: u64,
}

/// A directory's entries: inode, type, name.
type Listing = Vec<(u64, FileType, String)>;

/// The FUSE file system.
struct ShardFs {
    client: Client,
    runtime: tokio::runtime::Handle,
    nodes: Mutex<Nodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Open directories: their listing when opened.
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    /// The last listing of each directory and layout of each file opened,
    /// by inode: served while the metaservers do not answer.
    last_listing: Mutex<HashMap<u64, Arc<Listing>>>,
    last_layout: Mutex<HashMap<u64, Arc<FileLayout>>>,
    /// Until when metaserver calls are not even tried: set when one found
    /// no leader, so a program listing a directory does not wait out the
    /// deadline once per entry.
    meta_down_until: Mutex<Option<Instant>>,
    next_handle: AtomicU64,
    uid: u32,
    gid: u32,
}

impl ShardFs {
    fn new(client: Client, runtime: tokio::runtime::Handle, root: &str, entry: &pb::Entry) -> Self {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let fs = Self {
            client,
            runtime,
            nodes: Mutex::new(Nodes {
                next_ino: 2,
                ..Default::default()
            }),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            last_listing: Mutex::new(HashMap::new()),
            last_layout: Mutex::new(HashMap::new()),
            meta_down_until: Mutex::new(None),
            next_handle: AtomicU64::new(1),
            uid,
            gid,
        };
        let attr = fs.attr_of(1, entry);
        let mut nodes = fs.nodes.lock().expect("nodes");
        nodes.by_path.insert(root.to_string(), 1);
        nodes.by_ino.insert(
            1,
            Node {
                path: root.to_string(),
                parent: 1,
                attr,
                cached_content: None,
                checked: Instant::now(),
            },
        );
        drop(nodes);
        fs
    }

    fn attr_of(&self, ino: u64, entry: &pb::Entry) -> FileAttr {
        let (kind, perm, nlink, size, mtime_ms) = match &entry.file {
            Some(file) if !entry.is_dir => (
                FileType::RegularFile,
                0o444,
                1,
                file.size,
                file.mtime_ms.max(entry.mtime_ms),
            ),
            _ => (FileType::Directory, 0o555, 2, 0, entry.mtime_ms),
        };
        let time = UNIX_EPOCH + Duration::from_millis(mtime_ms);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            // Tools size their reads by this (cp, cat): large reads suit us.
            blksize: 1 << 20,
            flags: 0,
        }
    }

    /// Records what the metaserver said of `path` (a child of `parent`);
    /// returns its inode's attributes.
    fn remember(&self, path: &str, parent: u64, entry: &pb::Entry) -> FileAttr {
        let mut nodes = self.nodes.lock().expect("nodes");
        let ino = match nodes.by_path.get(path) {
            Some(ino) => *ino,
            None => {
                let ino = nodes.next_ino;
                nodes.next_ino += 1;
                nodes.by_path.insert(path.to_string(), ino);
                ino
            }
        };
        let attr = self.attr_of(ino, entry);
        let node = nodes.by_ino.entry(ino).or_insert_with(|| Node {
            path: path.to_string(),
            parent,
            attr,
            cached_content: None,
            checked: Instant::now(),
        });
        node.attr = attr;
        node.parent = parent;
        node.checked = Instant::now();
        attr
    }

    fn path_of(&self, ino: INodeNo) -> Option<(String, u64)> {
        let nodes = self.nodes.lock().expect("nodes");
        nodes.by_ino.get(&ino.0).map(|n| (n.path.clone(), n.parent))
    }

    /// Fresh attributes of `ino`, from the cache or the metaserver.
    fn attr(&self, ino: INodeNo) -> std::result::Result<FileAttr, Errno> {
        let (path, parent) = {
            let nodes = self.nodes.lock().expect("nodes");
            let node = nodes.by_ino.get(&ino.0).ok_or(Errno::ENOENT)?;
            if node.checked.elapsed() < ATTR_TTL {
                return Ok(node.attr);
            }
            (node.path.clone(), node.parent)
        };
        match self.meta_call(self.client.stat(&path)) {
            Ok(entry) => Ok(self.remember(&path, parent, &entry)),
            Err(e) => self.known_attr(ino.0).ok_or_else(|| errno(e)),
        }
    }

    /// Runs a metaserver call from a FUSE thread. After a call found no
    /// metaserver, the next ones fail at once for [`META_DOWN_PAUSE`] (the
    /// callers then answer from what they have cached).
    fn meta_call<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        let down = *self.meta_down_until.lock().expect("meta down");
        if down.is_some_and(|until| Instant::now() < until) {
            return Err(ClientError::Remote {
                context: "metaservers".into(),
                code: tonic::Code::Unavailable,
                message: "no metaserver answered a moment ago".into(),
            });
        }
        let result = self.runtime.block_on(call);
        if let Err(ClientError::Remote { .. } | ClientError::NoMetaserver { .. }) = &result {
            *self.meta_down_until.lock().expect("meta down") =
                Some(Instant::now() + META_DOWN_PAUSE);
        }
        result
    }

    /// What is known of `ino`, however old: served when the metaservers
    /// do not answer (a missing file is still reported as missing).
    fn known_attr(&self, ino: u64) -> Option<FileAttr> {
        let nodes = self.nodes.lock().expect("nodes");
        nodes.by_ino.get(&ino).map(|node| node.attr)
    }
}

/// The errno for a client error.
fn errno(e: ClientError) -> Errno {
    match &e {
        ClientError::NotFound(_) => Errno::ENOENT,
        _ => {
            tracing::warn!("{e}");
            Errno::EIO
        }
    }
}

fn child_path(parent: &str, name: &OsStr) -> std::result::Result<String, Errno> {
    let name = name.to_str().ok_or(Errno::ENOENT)?;
    Ok(if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    })
}

impl Filesystem for ShardFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some((parent_path, _)) = self.path_of(parent) else {
            return reply.error(Errno::ENOENT);
        };
        let path = match child_path(&parent_path, name) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        // A listing just made may have told us already.
        {
            let nodes = self.nodes.lock().expect("nodes");
            if let Some(node) = nodes.by_path.get(&path).and_then(|i| nodes.by_ino.get(i))
                && node.checked.elapsed() < ATTR_TTL
            {
                return reply.entry(&ATTR_TTL, &node.attr, Generation(0));
            }
        }
        match self.meta_call(self.client.stat(&path)) {
            Ok(entry) => {
                let attr = self.remember(&path, parent.0, &entry);
                reply.entry(&ATTR_TTL, &attr, Generation(0));
            }
            Err(e @ ClientError::NotFound(_)) => reply.error(errno(e)),
            Err(e) => {
                let known = {
                    let nodes = self.nodes.lock().expect("nodes");
                    nodes.by_path.get(&path).copied()
                };
                match known.and_then(|ino| self.known_attr(ino)) {
                    Some(attr) => reply.entry(&ATTR_TTL, &attr, Generation(0)),
                    None => reply.error(errno(e)),
                }
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Ok(attr) => reply.attr(&ATTR_TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let Some((path, _)) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let layout = match self.meta_call(self.client.layout(&path)) {
            Ok(layout) => {
                let layout = Arc::new(layout);
                let mut last = self.last_layout.lock().expect("layouts");
                last.insert(ino.0, layout.clone());
                layout
            }
            Err(e @ ClientError::NotFound(_)) => return reply.error(errno(e)),
            Err(e) => {
                let last = self.last_layout.lock().expect("layouts");
                match last.get(&ino.0) {
                    Some(layout) => layout.clone(),
                    None => return reply.error(errno(e)),
                }
            }
        };
        let content = crate::shards::content_of(&layout).as_bytes().to_vec();
        // A handle still open on another version of the file can put its
        // pages in the cache: then the cache is not trusted either.
        let other_version_open = self
            .files
            .lock()
            .expect("files")
            .values()
            .any(|f| f.ino == ino.0 && f.content != content);
        let keep_cache = {
            let mut nodes = self.nodes.lock().expect("nodes");
            match nodes.by_ino.get_mut(&ino.0) {
                Some(node) => {
                    let keep =
                        node.cached_content.as_ref() == Some(&content) && !other_version_open;
                    node.cached_content = Some(content.clone());
                    node.attr.size = layout.size;
                    keep
                }
                None => false,
            }
        };
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let read_ahead = self.client.config().read_ahead_bytes;
        self.files.lock().expect("files").insert(
            handle,
            Arc::new(OpenFile::new(
                self.client.clone(),
                ino.0,
                content,
                layout,
                read_ahead,
            )),
        );
        let flags = if keep_cache {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(handle), flags);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.files.lock().expect("files").get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let end = (offset + size as u64).min(file.layout.size);
        tracing::trace!(path = %file.layout.path, offset, size, "read");
        if offset >= end {
            return reply.data(&[]);
        }
        // (Fetches are tokio tasks, started from this FUSE thread.)
        let _runtime = self.runtime.enter();
        let wanted = file.fetches_for(offset, end);
        self.runtime.spawn(async move {
            let mut chunks = Vec::with_capacity(wanted.len());
            for (index, fetch) in wanted {
                match fetch.await {
                    Ok(data) => chunks.push((index, data)),
                    Err(cause) => {
                        tracing::warn!("read of {} failed: {cause}", file.layout.path);
                        return reply.error(Errno::EIO);
                    }
                }
            }
            file.reply(&chunks, offset, end, reply);
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let released = self.files.lock().expect("files").remove(&fh.0);
        // Pages of an older version may be cached now: the next open
        // drops them.
        if let Some(file) = released {
            let mut nodes = self.nodes.lock().expect("nodes");
            if let Some(node) = nodes.by_ino.get_mut(&file.ino)
                && node.cached_content.as_ref() != Some(&file.content)
            {
                node.cached_content = None;
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some((path, parent)) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let listed = match self.meta_call(self.client.list(&path)) {
            Ok(listed) => listed,
            Err(e @ ClientError::NotFound(_)) => return reply.error(errno(e)),
            Err(e) => {
                let last = self.last_listing.lock().expect("listings");
                let Some(entries) = last.get(&ino.0).cloned() else {
                    return reply.error(errno(e));
                };
                drop(last);
                let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
                self.dirs.lock().expect("dirs").insert(handle, entries);
                return reply.opened(FileHandle(handle), FopenFlags::empty());
            }
        };
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".to_string()),
            (parent, FileType::Directory, "..".to_string()),
        ];
        for entry in &listed {
            let Ok(child) = child_path(&path, OsStr::new(&entry.name)) else {
                continue;
            };
            let attr = self.remember(&child, ino.0, entry);
            entries.push((attr.ino.0, attr.kind, entry.name.clone()));
        }
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let entries = Arc::new(entries);
        self.last_listing
            .lock()
            .expect("listings")
            .insert(ino.0, entries.clone());
        self.dirs.lock().expect("dirs").insert(handle, entries);
        reply.opened(FileHandle(handle), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.dirs.lock().expect("dirs").get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().expect("dirs").remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BLOCK: u64 = 1 << 20;
        let (capacity, free) = match self.meta_call(self.client.cluster_status()) {
            Ok(status) => disk_space(&status.chunk_servers),
            Err(_) => (0, 0),
        };
        let files = self.nodes.lock().expect("nodes").by_ino.len() as u64;
        reply.statfs(
            capacity / BLOCK,
            free / BLOCK,
            free / BLOCK,
            files,
            0,
            BLOCK as u32,
            255,
            BLOCK as u32,
        );
    }
}

/// Capacity and free bytes of the live chunk servers' disks, each disk
/// counted once: servers on one host whose disks have the same size share
/// it (several servers on one machine's file system, as in a local
/// cluster).
fn disk_space(servers: &[pb::ChunkServerStatus]) -> (u64, u64) {
    let mut disks: BTreeMap<(&str, u64), u64> = BTreeMap::new();
    for server in servers.iter().filter(|c| c.alive) {
        let host = server
            .addr
            .rsplit_once(':')
            .map_or(server.addr.as_str(), |(host, _)| host);
        let free = disks.entry((host, server.capacity_bytes)).or_default();
        // They see the same free space, give or take a write in between.
        *free = (*free).max(server.free_bytes);
    }
    disks.iter().fold((0, 0), |(c, f), ((_, capacity), free)| {
        (c + capacity, f + free)
    })
}

type Fetch = Shared<BoxFuture<'static, std::result::Result<ChunkData, String>>>;

/// An open file: its layout, and the chunk fetches under way or done.
struct OpenFile {
    client: Client,
    ino: u64,
    /// The content id of the version opened.
    content: Vec<u8>,
    layout: Arc<FileLayout>,
    read_ahead_bytes: u64,
    cache: Mutex<ChunkCache>,
}

#[derive(Default)]
struct ChunkCache {
    /// By chunk index: the fetch and when it was last wanted.
    chunks: BTreeMap<usize, (Fetch, u64)>,
    tick: u64,
    /// The last chunk a read reached, to tell a sequential reader.
    last: Option<usize>,
}

impl OpenFile {
    fn new(
        client: Client,
        ino: u64,
        content: Vec<u8>,
        layout: Arc<FileLayout>,
        read_ahead_bytes: u64,
    ) -> Self {
        Self {
            client,
            ino,
            content,
            layout,
            read_ahead_bytes,
            cache: Mutex::new(ChunkCache::default()),
        }
    }

    fn start(&self, index: usize) -> Fetch {
        let fetch = self
            .client
            .spawn_fetch(&self.layout.path, &self.layout.chunks[index], index);
        async move { fetch.await.map_err(|e| e.to_string()) }
            .boxed()
            .shared()
    }

    /// The fetches of the chunks holding bytes `offset..end`; starts them
    /// and, for a sequential reader, the read-ahead after them.
    fn fetches_for(&self, offset: u64, end: u64) -> Vec<(usize, Fetch)> {
        let chunks = &self.layout.chunks;
        let (first, last) = (self.layout.chunk_at(offset), self.layout.chunk_at(end - 1));
        let mut cache = self.cache.lock().expect("chunk cache");
        // The kernel's read-ahead sends many reads at once, not quite in
        // order: near the last one counts as sequential.
        let sequential = match cache.last {
            None => offset == 0,
            Some(l) => first.abs_diff(l) <= SEQUENTIAL_SLACK_CHUNKS,
        };
        cache.last = Some(match cache.last {
            Some(l) if sequential => l.max(last),
            _ => last,
        });
        cache.tick += 1;
        let tick = cache.tick;
        let mut wanted = Vec::with_capacity(last - first + 1);
        let mut index = first;
        let mut ahead = 0;
        while index < chunks.len()
            && (index <= last
                || (sequential && ahead + chunks[index].length <= self.read_ahead_bytes))
        {
            if index > last {
                ahead += chunks[index].length;
            }
            // A fetch that failed is not kept: the next read tries again.
            let failed = cache
                .chunks
                .get(&index)
                .is_some_and(|(fetch, _)| matches!(fetch.peek(), Some(Err(_))));
            if failed {
                cache.chunks.remove(&index);
            }
            let fetch = match cache.chunks.get_mut(&index) {
                Some((fetch, used)) => {
                    *used = tick;
                    fetch.clone()
                }
                None => {
                    let fetch = self.start(index);
                    cache.chunks.insert(index, (fetch.clone(), tick));
                    fetch
                }
            };
            if index <= last {
                wanted.push((index, fetch));
            }
            index += 1;
        }
        // Keep the window and a few recently used chunks; drop the rest,
        // least recently used first (a fetch nobody waits for is cancelled).
        let chunk_bytes = chunks.first().map(|c| c.length).unwrap_or(0);
        let budget =
            self.read_ahead_bytes + RANDOM_CHUNKS_KEPT.max((last - first + 1) as u64) * chunk_bytes;
        let window = first..index;
        let mut held: u64 = cache.chunks.keys().map(|i| chunks[*i].length).sum();
        while held > budget {
            let Some(oldest) = cache
                .chunks
                .iter()
                .filter(|(i, _)| !window.contains(*i))
                .min_by_key(|(_, (_, used))| *used)
                .map(|(i, _)| *i)
            else {
                break;
            };
            cache.chunks.remove(&oldest);
            held -= chunks[oldest].length;
        }
        wanted
    }

    /// Answers a read of `offset..end` from the fetched chunks (in order).
    fn reply(&self, chunks: &[(usize, ChunkData)], offset: u64, end: u64, reply: ReplyData) {
        let spans = &self.layout.chunks;
        // One chunk that arrived in one piece: no copy.
        if let [(index, data)] = chunks
            && let [piece] = data.pieces.as_slice()
        {
            let start = (offset - spans[*index].offset) as usize;
            let stop = (end - spans[*index].offset) as usize;
            return reply.data(&piece[start..stop]);
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (index, data) in chunks {
            let base = spans[*index].offset;
            let mut at = base;
            for piece in &data.pieces {
                let (lo, hi) = (at.max(offset), (at + piece.len() as u64).min(end));
                if lo < hi {
                    out.extend_from_slice(&piece[(lo - at) as usize..(hi - at) as usize]);
                }
                at += piece.len() as u64;
            }
        }
        reply.data(&out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_fields_unescape() {
        assert_eq!(unescape_mount_field(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_field("/mnt/plain"), "/mnt/plain");
        assert_eq!(unescape_mount_field(r"/x\134y"), r"/x\y");
    }
}

//! The `shardfs` command line as a new user meets it: exit codes, what it
//! prints on standard output and error, and what it leaves in the cluster
//! (issue 16). Every check runs the binary, as a user would.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use shardfs_tests::{Cluster, data, hash, ok, stderr, stdout, tree_hashes};

/// Runs `shardfs ARGS` with standard output a pipe whose reader has
/// already gone (as `| head` leaves it once head has read enough).
fn into_closed_pipe(cluster: &Cluster, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = cluster
        .shardfs()
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

fn write_tree(root: &Path, files: usize, len: usize) {
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for i in 0..files {
        let name = if i % 3 == 0 {
            format!("sub/part-{i:03}.bin")
        } else {
            format!("part-{i:03}.bin")
        };
        std::fs::write(root.join(&name), data(len + i, &name)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_output_help_and_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let local = dir.path().join("ds");
    write_tree(&local, 30, 1000);
    ok(cluster.cli(&["put", "-r", local.to_str().unwrap(), "/ds"]));

    // 1. A reader that has gone ends the command quietly, status 0.
    for args in [
        &["ls", "-R", "/"][..],
        &["ls", "-l", "/ds"],
        &["stat", "/ds/part-001.bin"],
        &["stat", "--json", "/ds/part-001.bin"],
        &["stream", "/ds"],
        &["cat", "/ds/part-001.bin"],
        &["get", "/ds/part-002.bin", "-"],
        &["cluster", "status"],
        &["completions", "bash"],
        &["--help"],
    ] {
        let out = into_closed_pipe(&cluster, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // 6. Out-of-range numbers are usage errors (exit 2) that say the range,
    // and a file over the chunk limit is refused before a byte is sent.
    let file = dir.path().join("one.bin");
    std::fs::write(&file, data(100_000, "one")).unwrap();
    let file = file.to_str().unwrap();
    for (flag, value, says) in [
        ("--replication", "-1", "from 1 to 16"),
        ("--replication", "17", "from 1 to 16"),
        ("--replication", "three", "from 1 to 16"),
        (
            "--chunk-size",
            "99999999999999999999",
            "from 1 byte to 64 MiB",
        ),
        ("--chunk-size", "1GiB", "from 1 byte to 64 MiB"),
        ("--chunk-size", "0", "from 1 byte to 64 MiB"),
        ("--chunk-size", "lots", "is not a size"),
    ] {
        let out = cluster.cli(&["put", flag, value, file, "/refused"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag} {value}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(says),
            "{flag} {value}: {}",
            stderr(&out)
        );
    }
    let started = Instant::now();
    let out = cluster.cli(&["put", "--chunk-size", "1", file, "/refused"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    for says in ["100000 chunks", "at most 65536 chunks", "--chunk-size 2"] {
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let out = cluster.cli(&["stat", "/refused"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));

    // 9. Help: every argument and flag says what it is; put's usage reads
    // right; --meta is not offered where it means nothing.
    let put_help = stdout(&ok(cluster.cli(&["put", "--help"])));
    assert!(put_help.contains("<LOCAL>... <REMOTE>"), "{put_help}");
    for command in [
        &["put"][..],
        &["get"],
        &["cat"],
        &["ls"],
        &["stat"],
        &["rm"],
        &["mv"],
        &["mkdir"],
        &["umount"],
        &["mount"],
        &["bench"],
        &["stream"],
        &["completions"],
        &["man"],
        &["cluster", "status"],
        &["cluster", "drain"],
        &["cluster", "remove"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = stdout(&ok(cluster.cli(&args)));
        let undocumented = items_without_help(&help);
        assert!(
            undocumented.is_empty(),
            "{command:?}: {undocumented:?} have no description:\n{help}"
        );
    }
    let ls_help = stdout(&ok(cluster.cli(&["ls", "--help"])));
    assert!(ls_help.contains("--long") && ls_help.contains("--recursive"));
    let umount_help = stdout(&ok(cluster.cli(&["umount", "--help"])));
    assert!(!umount_help.contains("--meta"), "{umount_help}");

    // Completions and man pages come from the same definitions.
    let bash = stdout(&ok(cluster.cli(&["completions", "bash"])));
    assert!(bash.contains("_shardfs") && bash.contains("--no-clobber"));
    for shell in ["zsh", "fish"] {
        let script = stdout(&ok(cluster.cli(&["completions", shell])));
        assert!(script.contains("no-clobber"), "{shell}");
    }
    let man = dir.path().join("man1");
    ok(cluster.cli(&["man", man.to_str().unwrap()]));
    let page = std::fs::read_to_string(man.join("shardfs-put.1")).unwrap();
    assert!(page.contains("no\\-clobber") || page.contains("no-clobber"));
    assert!(man.join("shardfs.1").exists() && man.join("shardfs-cluster-drain.1").exists());

    // 11. A chunk server's address is not a metaserver, and says so.
    let chunk_addr = cluster.chunks[&1].addr.clone();
    let out = shardfs_tests::cli::shardfs(&chunk_addr)
        .arg("--ca")
        .arg(cluster.tls.ca_path())
        .args(["ls", "/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a metaserver"),
        "{}",
        stderr(&out)
    );
    // A path over 4096 bytes is named once, shortened.
    let long = format!("/{}", "a/".repeat(2646));
    let out = cluster.cli(&["stat", long.trim_end_matches('/')]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).len() < 600, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the limit is 4096"),
        "{}",
        stderr(&out)
    );
    // The rm hint, once.
    let out = cluster.cli(&["rm", "/ds"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).matches("-r").count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
}

/// Option and argument lines of a clap help text that have no description
/// (on their line or, when clap wraps, indented on the next).
fn items_without_help(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut missing = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let item = line.trim_start();
        let indent = line.len() - item.len();
        let is_item = indent == 2 && (item.starts_with('-') || item.starts_with('<'));
        if !is_item {
            continue;
        }
        let described_here = item.contains("  ");
        let described_below = lines.get(i + 1).is_some_and(|next| {
            let rest = next.trim_start();
            !rest.is_empty() && next.len() - rest.len() > 2
        });
        if !described_here && !described_below {
            missing.push(item.to_string());
        }
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_put_and_get_as_users_retry_them() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3).await;
    let meta = cluster.meta_addrs.join(",");
    let local = dir.path().join("ds");
    write_tree(&local, 24, 300_000);
    // 11. A dangling symbolic link is skipped with a warning.
    std::os::unix::fs::symlink("/no/such/target", local.join("dangling")).unwrap();
    let src = local.to_str().unwrap();

    // 5. The same put -r twice: the same tree, the second sends nothing.
    let first = ok(cluster.cli(&["put", "-r", src, "/ml/ds"]));
    assert!(
        stderr(&first).contains("put 24 file(s)"),
        "{}",
        stderr(&first)
    );
    assert!(stderr(&first).contains("skipping") && stderr(&first).contains("dangling"));
    let again = ok(cluster.cli(&["put", "-r", src, "/ml/ds"]));
    assert!(
        stderr(&again).contains("put 0 file(s)")
            && stderr(&again).contains("skipped 24 file(s)")
            && stderr(&again).contains("already stored with the same content"),
        "{}",
        stderr(&again)
    );
    let listing = stdout(&ok(cluster.cli(&["ls", "-R", "/ml"])));
    assert!(!listing.contains("/ml/ds/ds"), "nested: {listing}");
    let back = dir.path().join("back");
    ok(cluster.cli(&["get", "-r", "/ml/ds", back.to_str().unwrap()]));
    std::fs::remove_file(local.join("dangling")).unwrap();
    assert_eq!(tree_hashes(&back), tree_hashes(&local));

    // A changed file is put again (and said to replace the old one).
    std::fs::write(local.join("part-001.bin"), data(5000, "changed")).unwrap();
    let changed = ok(cluster.cli(&["put", "-r", src, "/ml/ds"]));
    assert!(
        stderr(&changed).contains("put 1 file(s)")
            && stderr(&changed).contains("skipped 23 file(s)")
            && stderr(&changed).contains("replaced 1 existing file(s)"),
        "{}",
        stderr(&changed)
    );
    // A trailing slash puts the tree inside.
    ok(cluster.cli(&["put", "-r", src, "/ml/inside/"]));
    let inside = stdout(&ok(cluster.cli(&["ls", "/ml/inside"])));
    assert_eq!(inside.trim(), "ds/");

    // 11. Replacing a file says so; --no-clobber refuses.
    let one = dir.path().join("one.txt");
    std::fs::write(&one, b"first version\n").unwrap();
    ok(cluster.cli(&["put", one.to_str().unwrap(), "/ml/one.txt"]));
    std::fs::write(&one, b"second version\n").unwrap();
    let replaced = ok(cluster.cli(&["put", one.to_str().unwrap(), "/ml/one.txt"]));
    assert!(
        stderr(&replaced).contains("replaced the existing /ml/one.txt"),
        "{}",
        stderr(&replaced)
    );
    let refused = cluster.cli(&["put", "-n", "/etc/hostname", "/ml/one.txt"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("already exists"),
        "{}",
        stderr(&refused)
    );

    // 7. get REMOTE - writes standard output.
    let out = ok(cluster.cli(&["get", "/ml/one.txt", "-"]));
    assert_eq!(out.stdout, b"second version\n");
    assert!(!dir.path().join("-").exists() && !Path::new("-").exists());
    let out = cluster.cli(&["get", "/ml/ds", "-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is a directory"), "{}", stderr(&out));

    // 11. stream of one file names it once.
    let out = ok(cluster.cli(&["stream", "/ml/one.txt"]));
    assert_eq!(stdout(&out).trim(), "/ml/one.txt\t15 bytes\tverified");

    // 5. Ctrl-C in the middle of a put -r says how far it got; the same
    // command then finishes the job.
    let big = dir.path().join("big");
    write_tree(&big, 60, 2 << 20);
    let child = cluster
        .shardfs()
        .args(["put", "-r", big.to_str().unwrap(), "/ml/big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    if out.status.code() == Some(130) {
        let said = stderr(&out);
        assert!(
            said.contains("interrupted:") && said.contains("of 60 file(s) put"),
            "{said}"
        );
        assert!(said.contains("run the same command again"), "{said}");
    } else {
        // A fast machine finished first: nothing to resume.
        ok(out);
    }
    ok(cluster.cli(&["put", "-r", big.to_str().unwrap(), "/ml/big"]));
    let big_back = dir.path().join("big-back");
    ok(cluster.cli(&["get", "-r", "/ml/big", big_back.to_str().unwrap()]));
    assert_eq!(tree_hashes(&big_back), tree_hashes(&big));

    // 11. bench cleans up after itself, its directory too.
    ok(cluster.cli(&[
        "bench",
        "--files",
        "2",
        "--size-mib",
        "2",
        "--read-rounds",
        "1",
        "--json",
    ]));
    let root = stdout(&ok(cluster.cli(&["ls", "/"])));
    assert!(!root.contains(".bench"), "{root}");

    // 10. No progress bar when standard error is not a terminal; one on a
    // terminal (script(1) gives the command a pseudo-terminal).
    let out = ok(cluster.cli(&["stream", "/ml/big"]));
    assert!(!stderr(&out).contains("[="), "{}", stderr(&out));
    if Path::new("/usr/bin/script").exists() {
        let shardfs = shardfs_tests::bins::binary("shardfs");
        let shardfs = shardfs.display();
        let line = format!(
            "{shardfs} --meta {meta} stream /ml/big --prefetch 4MiB > /dev/null; \
             {shardfs} --meta {meta} bench --files 2 --size-mib 8 --read-rounds 1 > /dev/null"
        );
        let out = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("COLUMNS", "120")
            .env("SHARDFS_CA", cluster.tls.ca_path())
            .env("SHARDFS_TOKEN", cluster.tls.admin_token())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let shown = stdout(&out);
        assert!(out.status.success(), "{shown}");
        assert!(shown.contains("stream ["), "{shown}");
        assert!(shown.contains("bench ["), "{shown}");
    }
    // What was put reads back whole, by hash.
    let out = ok(cluster.cli(&["get", "/ml/ds/part-001.bin", "-"]));
    assert_eq!(hash(&out.stdout), hash(&data(5000, "changed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_errors_blame_the_real_cause_once_and_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3).await;
    let file = dir.path().join("data.bin");
    let bytes = data(3 << 20, "blame");
    std::fs::write(&file, &bytes).unwrap();
    let file = file.to_str().unwrap();
    ok(cluster.cli(&["put", "--chunk-size", "1MiB", file, "/b/data.bin"]));

    // 3. More replicas than servers: said at once, not blamed on a leader.
    let started = Instant::now();
    let out = cluster.cli(&["put", "--replication", "4", file, "/b/r4"]);
    assert_eq!(out.status.code(), Some(1));
    let said = stderr(&out);
    assert!(said.contains("cannot place 4 replicas"), "{said}");
    assert!(!said.contains("leader"), "{said}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // 4. Every replica of a chunk bad: one line naming each replica once,
    // no warnings unless asked for.
    let other = dir.path().join("other.bin");
    let other_bytes = data(2 << 20, "other");
    std::fs::write(&other, &other_bytes).unwrap();
    ok(cluster.cli(&["put", other.to_str().unwrap(), "/b/other.bin"]));
    let stat: serde_json::Value =
        serde_json::from_slice(&ok(cluster.cli(&["stat", "--json", "/b/data.bin"])).stdout)
            .unwrap();
    let chunk = |i: usize| {
        let c = &stat["chunks"][i];
        let id: shardfs_proto::ChunkId = c["id"].as_str().unwrap().parse().unwrap();
        let holders: Vec<String> = c["locations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(holders.len(), 3, "{stat}");
        (id, holders)
    };
    let corrupt = |id: &shardfs_proto::ChunkId, addr: &str| {
        let file = cluster.chunk_file(cluster.chunk_id_at(addr), id);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
    };
    // One bad replica, the one a reader of chunk 2 asks first: the file
    // reads back whole, and the warning shows when asked for.
    let (id, holders) = chunk(2);
    corrupt(&id, &holders[2]);
    let out = cluster
        .shardfs()
        .args(["get", "/b/data.bin", "-"])
        .env("SHARDFS_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(hash(&ok(out.clone()).stdout), hash(&bytes));
    assert!(stderr(&out).contains("WARN"), "{}", stderr(&out));
    // Every replica of chunk 0 bad: one line naming each replica once.
    let (id, holders) = chunk(0);
    for addr in &holders {
        corrupt(&id, addr);
    }
    let out = cluster.cli(&["get", "/b/data.bin", "-"]);
    assert_eq!(out.status.code(), Some(1));
    let said = stderr(&out);
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert!(!said.contains("WARN"), "{said}");
    for addr in &holders {
        assert_eq!(said.matches(addr.as_str()).count(), 1, "{addr}: {said}");
    }

    // Every chunk server down: still one line, no warnings, no replica
    // named twice (once the metaserver has seen them dead it names none).
    let addrs: Vec<String> = cluster.chunks.values().map(|p| p.addr.clone()).collect();
    for id in [1, 2, 3] {
        cluster.kill_chunk(id);
    }
    let out = cluster.cli(&["get", "/b/other.bin", "-"]);
    assert_eq!(out.status.code(), Some(1));
    let said = stderr(&out);
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert!(!said.contains("WARN"), "{said}");
    assert!(
        said.contains("could not be read from any replica"),
        "{said}"
    );
    for addr in &addrs {
        assert!(said.matches(addr.as_str()).count() <= 1, "{addr}: {said}");
    }

    // Back up: the file reads back whole.
    for id in [1, 2, 3] {
        cluster.start_chunk(id);
    }
    cluster.wait_healthy(Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cluster.cli(&["get", "/b/other.bin", "-"]);
        if out.status.success() {
            assert_eq!(hash(&out.stdout), hash(&other_bytes));
            break;
        }
        assert!(Instant::now() < deadline, "{}", stderr(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
}

//! The fault-injection suite: seeded, randomized rounds against a real
//! cluster (3 metaservers, 4 chunk servers, the fourth on a small tmpfs
//! that fills up). In each round two writers and a reader run while the
//! harness injects one fault: `kill -9` of a chunk server, of the
//! metaserver leader or of a follower (each restarted a few seconds later),
//! a flipped byte in a stored chunk file, the small disk filled to the
//! brim, or the metaserver leader cut off from everyone (each metaserver
//! runs in a network namespace of its own; the cut takes its link down).
//! After each round:
//!
//! - every acknowledged file reads back byte-identical (compared by hash);
//! - every file that is visible at all, acknowledged or not, reads back as
//!   exactly what its writer meant (nothing half-written);
//! - `under_replicated` returns to 0 within a bound.
//!
//! The quick version (5 rounds) runs with `cargo test`. The long one:
//! `SHARDFS_CHAOS_ROUNDS=40 cargo test -p shardfs-client --test chaos --
//! --nocapture`; `SHARDFS_CHAOS_SEED=N` replays a run (the seed is printed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use shardfs_client::{Client, ClientConfig, PutOptions, read_all};
use shardfs_tests::{Cluster, data, hash};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Files whose put was acknowledged, and files whose put failed: path ->
/// hash of the intended content.
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<String, String>,
    failed: BTreeMap<String, String>,
}

const KINDS: [&str; 6] = [
    "kill chunk server",
    "kill metaserver leader",
    "kill metaserver follower",
    "flip a byte on disk",
    "fill a disk",
    "partition the metaserver leader",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_faults_lose_nothing_acknowledged() {
    let seed = env_u64("SHARDFS_CHAOS_SEED").unwrap_or(0x5eed_5eed);
    let rounds = env_u64("SHARDFS_CHAOS_ROUNDS").unwrap_or(KINDS.len() as u64);
    println!("chaos: seed {seed}, {rounds} rounds (replay with SHARDFS_CHAOS_SEED={seed})");
    let mut rng = Rng(seed | 1);

    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os("SHARDFS_CHAOS_KEEP").is_some() {
        println!("chaos: logs and data kept in {}", dir.path().display());
    }
    let dir = Kept(dir);
    // Chunk server 4 stores on a 40 MiB tmpfs: it fills up during the run.
    let small_disk = dir.path().join("chunk-4");
    std::fs::create_dir_all(&small_disk).unwrap();
    let mount = Tmpfs::mount(&small_disk, 40);
    let tmpfs = mount.mounted;
    // Metaservers in network namespaces of their own when possible, so a
    // partition can cut one off.
    let net = Net::setup();
    let (meta_addrs, prefixes, chunk_host) = match &net {
        Some(net) => (
            (1..=3).map(|i| net.addr(i)).collect(),
            (1..=3).map(|i| (i as u64, net.prefix(i))).collect(),
            net.host_ip(),
        ),
        None => (
            shardfs_proto::process::free_ports(3)
                .unwrap()
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect(),
            BTreeMap::new(),
            "127.0.0.1".to_string(),
        ),
    };
    let mut cluster = Cluster::start_custom(
        dir.path(),
        4,
        meta_addrs,
        prefixes,
        &chunk_host,
        &["--repair-mb-per-s", "200"],
        &["--scrub-mb-per-s", "100"],
    )
    .await;
    let client = cluster
        .client(ClientConfig {
            chunk_size: 256 << 10,
            ..ClientConfig::default()
        })
        .await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut repair_times: Vec<Duration> = Vec::new();
    let mut verified = 0u64;
    let reads = Arc::new(AtomicU64::new(0));
    let read_failures = Arc::new(Mutex::new(Vec::<String>::new()));

    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for writer in 0..2 {
            workers.push(tokio::spawn(write_loop(
                client.clone(),
                ledger.clone(),
                stop.clone(),
                format!("/chaos/w{writer}/r{round}"),
                rng.next(),
            )));
        }
        workers.push(tokio::spawn(read_loop(
            client.clone(),
            ledger.clone(),
            stop.clone(),
            reads.clone(),
            read_failures.clone(),
            rng.next(),
        )));

        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Every kind once in the first rounds (from a seeded offset), then
        // at random.
        let pick = if round < KINDS.len() as u64 {
            (round + seed) % KINDS.len() as u64
        } else {
            rng.below(KINDS.len() as u64)
        };
        let mut kind = KINDS[pick as usize];
        if kind == "fill a disk" && !tmpfs {
            kind = "flip a byte on disk";
        }
        if kind.starts_with("partition") && net.is_none() {
            kind = "kill metaserver leader";
        }
        *faults.entry(kind).or_default() += 1;
        let mut lost_chunk_server = false;
        match kind {
            "kill chunk server" => {
                let id = 1 + rng.below(4);
                let addr = cluster.chunks[&id].addr.clone();
                cluster.kill_chunk(id);
                lost_chunk_server = true;
                // Long enough to be declared dead (3 s) and repaired around.
                tokio::time::sleep(Duration::from_millis(4000 + rng.below(2000))).await;
                cluster.start_chunk_at(id, &addr);
            }
            "kill metaserver leader" | "kill metaserver follower" => {
                let leader = client.cluster_status().await.unwrap().leader_id;
                let id = if kind.ends_with("leader") {
                    leader
                } else {
                    *cluster.metas.keys().find(|id| **id != leader).unwrap()
                };
                cluster.kill_meta(id);
                tokio::time::sleep(Duration::from_millis(1500 + rng.below(2000))).await;
                cluster.start_meta(id);
            }
            "flip a byte on disk" => {
                let id = 1 + rng.below(4);
                flip_a_byte(&cluster.chunk_dir(id), &mut rng);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            "partition the metaserver leader" => {
                let leader = client.cluster_status().await.unwrap().leader_id as u32;
                let net = net.as_ref().expect("network namespaces");
                net.cut(leader, true);
                tokio::time::sleep(Duration::from_millis(2500 + rng.below(2000))).await;
                net.cut(leader, false);
            }
            "fill a disk" => {
                let filler = small_disk.join("filler");
                fill(&filler);
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _ = std::fs::remove_file(&filler);
            }
            _ => unreachable!(),
        }
        let healed = Instant::now();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await.unwrap();
        }

        // Back to full health and full replication.
        cluster.wait_healthy(Duration::from_secs(30)).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(status) = client.cluster_status().await
                && status.chunk_servers.iter().all(|c| c.alive)
                && status.under_replicated == 0
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round} ({kind}): under-replicated chunks remain after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if lost_chunk_server {
            repair_times.push(healed.elapsed());
        }

        // Every acknowledged file, and whatever else is visible.
        let (acked, failed) = {
            let ledger = ledger.lock().unwrap();
            (ledger.acked.clone(), ledger.failed.clone())
        };
        // Read everything visible (in parallel): each file must be what
        // its writer meant, and every acknowledged file must be there.
        let (_, visible) = client.walk("/chaos").await.unwrap();
        let checks = futures::stream::iter(visible)
            .map(|file| {
                let client = client.clone();
                async move {
                    let path = file.path.to_string();
                    let bytes = read_all(&client, &path).await.map(|b| hash(&b));
                    (path, bytes)
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let mut seen = BTreeMap::new();
        for (path, got) in checks {
            let want = acked
                .get(&path)
                .or_else(|| failed.get(&path))
                .unwrap_or_else(|| panic!("{path} was never written"));
            match got {
                Ok(got) => assert_eq!(got, *want, "{path} is visible half-written"),
                Err(e) => panic!("round {round} ({kind}): {path} does not read: {e}"),
            }
            seen.insert(path, ());
        }
        let lost: Vec<&String> = acked.keys().filter(|p| !seen.contains_key(*p)).collect();
        assert!(
            lost.is_empty(),
            "round {round} ({kind}): data lost: {lost:?}"
        );
        verified += acked.len() as u64;
        println!(
            "chaos: round {round}: {kind}; {} acknowledged so far, all verified",
            acked.len()
        );
    }

    let ledger = ledger.lock().unwrap();
    let failures = read_failures.lock().unwrap();
    println!("chaos summary (seed {seed}, {rounds} rounds):");
    for (kind, n) in &faults {
        println!("  faults injected: {kind}: {n}");
    }
    println!(
        "  puts acknowledged: {}, failed cleanly: {}",
        ledger.acked.len(),
        ledger.failed.len()
    );
    println!(
        "  reads during faults: {}, failed: {}",
        reads.load(Ordering::Relaxed),
        failures.len()
    );
    println!("  files verified after rounds: {verified}");
    println!("  data lost: 0");
    for t in &repair_times {
        println!(
            "  full replication {:.1} s after a chunk server came back",
            t.as_secs_f64()
        );
    }
    assert!(
        failures.is_empty(),
        "reads failed during faults: {failures:?}"
    );
    assert!(!ledger.acked.is_empty());
}

/// Puts files of random sizes until told to stop.
async fn write_loop(
    client: Client,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    prefix: String,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    let options = PutOptions {
        if_absent: true,
        ..PutOptions::default()
    };
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let path = format!("{prefix}-{i}");
        i += 1;
        let bytes = data(rng.below(5 << 19) as usize, &path);
        let want = hash(&bytes);
        let put = client.put_bytes(bytes.into(), &path, &options).await;
        let mut ledger = ledger.lock().unwrap();
        match put {
            Ok(_) => ledger.acked.insert(path, want),
            Err(_) => ledger.failed.insert(path, want),
        };
    }
}

/// Reads acknowledged files and checks them until told to stop.
async fn read_loop(
    client: Client,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    while !stop.load(Ordering::Relaxed) {
        let pick = {
            let ledger = ledger.lock().unwrap();
            let n = ledger.acked.len() as u64;
            (n > 0).then(|| {
                let (p, h) = ledger.acked.iter().nth(rng.below(n) as usize).unwrap();
                (p.clone(), h.clone())
            })
        };
        let Some((path, want)) = pick else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        reads.fetch_add(1, Ordering::Relaxed);
        match read_all(&client, &path).await {
            Ok(bytes) if hash(&bytes) == want => {}
            Ok(_) => failures
                .lock()
                .unwrap()
                .push(format!("{path}: wrong bytes")),
            Err(e) => failures.lock().unwrap().push(format!("{path}: {e}")),
        }
    }
}

/// Flips one byte in one chunk file under `dir` (if it holds any).
fn flip_a_byte(dir: &std::path::Path, rng: &mut Rng) {
    let mut files = Vec::new();
    let mut stack = vec![dir.join("chunks")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return;
    }
    let file = &files[rng.below(files.len() as u64) as usize];
    let Ok(mut bytes) = std::fs::read(file) else {
        return;
    };
    if bytes.is_empty() {
        return;
    }
    let at = rng.below(bytes.len() as u64) as usize;
    bytes[at] ^= 0x20;
    let _ = std::fs::write(file, &bytes);
}

/// Writes zeros into `path` until the file system is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let Ok(mut file) = std::fs::File::create(path) else {
        return;
    };
    let block = vec![0u8; 1 << 20];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
}

/// The test's directory, kept (with every server's log) when
/// `SHARDFS_CHAOS_KEEP` is set.
struct Kept(tempfile::TempDir);

impl Kept {
    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if std::env::var_os("SHARDFS_CHAOS_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.0, tempfile::tempdir().unwrap());
            let _ = dir.keep();
        }
    }
}

/// A tmpfs mounted for the test, unmounted when dropped (after the
/// cluster, which is declared later).
struct Tmpfs {
    dir: std::path::PathBuf,
    mounted: bool,
}

impl Tmpfs {
    /// Mounts `mib` MiB at `dir`; not mounted (and the full-disk fault
    /// replaced) where that is not allowed.
    fn mount(dir: &std::path::Path, mib: u64) -> Self {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            println!(
                "chaos: cannot mount a tmpfs here; the full-disk fault is replaced by byte flips"
            );
        }
        Self {
            dir: dir.to_path_buf(),
            mounted,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
    }
}

/// Three network namespaces, one per metaserver, joined by a bridge in the
/// test's own namespace (where the chunk servers and clients run): taking a
/// metaserver's link down cuts it off from its peers and everyone else.
struct Net {
    tag: String,
    subnet: u32,
}

impl Net {
    const PORT: u16 = 7100;

    /// Sets the namespaces up; None (and no partitions) where not allowed.
    fn setup() -> Option<Self> {
        let pid = std::process::id();
        let net = Self {
            tag: format!("{:x}", pid % 0xfff),
            subnet: 100 + pid % 100,
        };
        let bridge = net.bridge();
        let mut steps: Vec<Vec<String>> = vec![
            vec![
                "ip".into(),
                "link".into(),
                "add".into(),
                bridge.clone(),
                "type".into(),
                "bridge".into(),
            ],
            cmd(&format!(
                "ip addr add 10.77.{}.1/24 dev {bridge}",
                net.subnet
            )),
            cmd(&format!("ip link set {bridge} up")),
            // Docker's FORWARD policy drops bridged traffic: let ours through.
            cmd(&format!(
                "iptables -I FORWARD -i {bridge} -o {bridge} -j ACCEPT"
            )),
        ];
        for i in 1..=3u32 {
            let (ns, host, guest) = (net.ns(i), net.host_link(i), net.guest_link(i));
            steps.push(cmd(&format!("ip netns add {ns}")));
            steps.push(cmd(&format!(
                "ip link add {host} type veth peer name {guest}"
            )));
            steps.push(cmd(&format!("ip link set {guest} netns {ns}")));
            steps.push(cmd(&format!("ip link set {host} master {bridge}")));
            steps.push(cmd(&format!("ip link set {host} up")));
            steps.push(cmd(&format!(
                "ip netns exec {ns} ip addr add 10.77.{}.{}/24 dev {guest}",
                net.subnet,
                10 + i
            )));
            steps.push(cmd(&format!("ip netns exec {ns} ip link set {guest} up")));
            steps.push(cmd(&format!("ip netns exec {ns} ip link set lo up")));
        }
        for step in steps {
            let ok = std::process::Command::new(&step[0])
                .args(&step[1..])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                println!(
                    "chaos: cannot set up network namespaces ({}); no partitions",
                    step.join(" ")
                );
                return None; // Drop cleans up what was made
            }
        }
        Some(net)
    }

    fn bridge(&self) -> String {
        format!("sfb{}", self.tag)
    }

    fn ns(&self, i: u32) -> String {
        format!("sf{}m{i}", self.tag)
    }

    fn host_link(&self, i: u32) -> String {
        format!("sf{}v{i}", self.tag)
    }

    fn guest_link(&self, i: u32) -> String {
        format!("sf{}p{i}", self.tag)
    }

    fn addr(&self, i: u32) -> String {
        format!("10.77.{}.{}:{}", self.subnet, 10 + i, Self::PORT)
    }

    /// The test's own address on the bridge (chunk servers listen there).
    fn host_ip(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    fn prefix(&self, i: u32) -> Vec<String> {
        cmd(&format!("ip netns exec {}", self.ns(i)))
    }

    /// Cuts metaserver `i` off (or heals it).
    fn cut(&self, i: u32, cut: bool) {
        let state = if cut { "down" } else { "up" };
        let _ = std::process::Command::new("ip")
            .args(["link", "set", &self.host_link(i), state])
            .status();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let bridge = self.bridge();
        let mut steps = vec![cmd(&format!(
            "iptables -D FORWARD -i {bridge} -o {bridge} -j ACCEPT"
        ))];
        for i in 1..=3 {
            steps.push(cmd(&format!("ip netns del {}", self.ns(i))));
            steps.push(cmd(&format!("ip link del {}", self.host_link(i))));
        }
        steps.push(cmd(&format!("ip link del {bridge}")));
        for step in steps {
            let _ = std::process::Command::new(&step[0])
                .args(&step[1..])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn cmd(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

#!/usr/bin/env bash
# Streaming benchmark: a dataset of shards streamed to one consumer
# (`shardfs stream --null`) and read through a FUSE mount (`cat`), on the
# running local cluster (deploy/local-cluster.sh up).
#
#   deploy/stream-bench.sh [--gib G] [--shard-mib M] [--rounds N] [--keep]
#
# Writes G GiB (default 4) of random shards of M MiB (default 64) under
# /bench/stream-<G>g-<M>m (reused when already there), then, N times
# (default 3): streams it all with verification, and reads every file through
# a fresh mount with one `cat` and with 4 `cat`s at once (a fresh mount
# each time, so nothing comes from the kernel's page cache). Prints MB/s of
# each, the best and median, and mount/stream as a ratio of the same run.
# --keep leaves the dataset in the cluster.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gib=4
shard_mib=64
rounds=3
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --gib) gib="${2:?}"; shift 2 ;;
        --shard-mib) shard_mib="${2:?}"; shift 2 ;;
        --rounds) rounds="${2:?}"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "stream-bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "${SHARDFS_META:-}" ] && [ -f "$repo/.shardfs-cluster/cluster.env" ]; then
    source "$repo/.shardfs-cluster/cluster.env"
fi
shardfs="$repo/target/release/shardfs"
[ -x "$shardfs" ] || { echo "stream-bench.sh: build first (deploy/local-cluster.sh up builds it)" >&2; exit 1; }
"$shardfs" cluster status >/dev/null || { echo "stream-bench.sh: no cluster: run deploy/local-cluster.sh up" >&2; exit 1; }

shards=$(( gib * 1024 / shard_mib ))
dataset="/bench/stream-${gib}g-${shard_mib}m"
bytes=$(( shards * shard_mib * 1048576 ))
mnt="$(mktemp -d /tmp/shardfs-stream-bench.XXXXXX)"
cleanup() {
    "$shardfs" umount "$mnt" >/dev/null 2>&1 || true
    rmdir "$mnt" 2>/dev/null || true
    [ "$keep" = 1 ] || "$shardfs" rm -r "$dataset" >/dev/null 2>&1 || true
}
trap cleanup EXIT

have=$("$shardfs" ls "$dataset" 2>/dev/null | wc -l || true)
if [ "$have" != "$shards" ]; then
    "$shardfs" rm -r "$dataset" >/dev/null 2>&1 || true
    echo "writing $shards shards of $shard_mib MiB to $dataset ..."
    local_dir="$(mktemp -d /tmp/shardfs-stream-data.XXXXXX)"
    for i in $(seq -w 0 $(( shards - 1 ))); do
        head -c "${shard_mib}M" /dev/urandom > "$local_dir/shard-$i.bin"
    done
    "$shardfs" put -r "$local_dir" "$dataset" | tail -1
    rm -rf "$local_dir"
fi

now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$bytes / 1e6 / ($2 - $1):.0f}')"; }
stream_runs=(); cat_runs=(); par_runs=()
for round in $(seq 1 "$rounds"); do
    line=$("$shardfs" stream "$dataset" --null 2>&1 >/dev/null | tail -1)
    stream_runs+=("$(echo "$line" | sed -E 's/.* ([0-9.]+) MB\/s.*/\1/' | cut -d. -f1)")

    "$shardfs" mount "$dataset" "$mnt" >/dev/null
    t0=$(now); cat "$mnt"/* > /dev/null; t1=$(now)
    cat_runs+=("$(mbps "$t0" "$t1")")
    "$shardfs" umount "$mnt" >/dev/null

    "$shardfs" mount "$dataset" "$mnt" >/dev/null
    t0=$(now); ls "$mnt"/* | xargs -P 4 -n $(( (shards + 3) / 4 )) cat > /dev/null; t1=$(now)
    par_runs+=("$(mbps "$t0" "$t1")")
    "$shardfs" umount "$mnt" >/dev/null
    echo "round $round: stream ${stream_runs[-1]} MB/s, mount (1 cat) ${cat_runs[-1]} MB/s, mount (4 cats) ${par_runs[-1]} MB/s"
done

python3 - "$gib" "$shard_mib" "${stream_runs[*]}" "${cat_runs[*]}" "${par_runs[*]}" <<'EOF'
import statistics, sys
gib, mib = sys.argv[1], sys.argv[2]
runs = [[int(x) for x in arg.split()] for arg in sys.argv[3:6]]
names = ["shardfs stream --null (1 consumer)", "mount, 1 cat", "mount, 4 cats at once"]
print(f"\n{gib} GiB in {mib} MiB shards, verified, from the running cluster:")
print(f"{'measure':36} {'best MB/s':>10} {'median':>8}")
for name, r in zip(names, runs):
    print(f"{name:36} {max(r):>10} {statistics.median(r):>8.0f}")
ratio = [c / s for c, s in zip(runs[1], runs[0])]
print(f"mount (1 cat) / stream, same round: {min(ratio):.2f}-{max(ratio):.2f}")
EOF

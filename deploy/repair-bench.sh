#!/usr/bin/env bash
# Repair benchmark: how fast a cluster restores full replication after
# losing one of 4 chunk servers.
#
#   deploy/repair-bench.sh [--data-gib G] [--repair-mb-per-s R] [--dead-after-secs D]
#
# Starts a private local cluster (3 metaservers, 4 chunk servers) under a
# temporary directory, writes about G GiB of files (default 1.4, which is
# about 4 GiB of replicas at R = 3), kills -9 the chunk server holding the
# most, and times: until the leader declares it dead (D s, default 5), and
# from then until no chunk is under-replicated. Repair MB/s = the bytes the
# dead server held / the repair time. Each chunk server sends and receives
# at most R MB/s of repair traffic (default 100, the metaserver's default).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data_gib=1.4
repair=100
dead_after=5
while [ $# -gt 0 ]; do
    case "$1" in
        --data-gib) data_gib="${2:?}"; shift 2 ;;
        --repair-mb-per-s) repair="${2:?}"; shift 2 ;;
        --dead-after-secs) dead_after="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "repair-bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
dir="$(mktemp -d /tmp/shardfs-repair-bench.XXXXXX)"
cleanup() { "$repo/deploy/local-cluster.sh" down --purge --dir "$dir" >/dev/null 2>&1 || true; }
trap cleanup EXIT

export SHARDFS_META_REPAIR_MB_PER_S="$repair" SHARDFS_META_DEAD_AFTER_SECS="$dead_after"
echo "starting 3 metaservers + 4 chunk servers in $dir ..."
"$repo/deploy/local-cluster.sh" up --meta 3 --chunk 4 --dir "$dir" >/dev/null
source "$dir/cluster.env"
shardfs="$repo/target/release/shardfs"
files=$(python3 -c "print(max(1, round($data_gib * 1024 / 64)))")
echo "writing $files files of 64 MiB (R = 3) ..."
"$shardfs" bench --keep --files "$files" --size-mib 64 --read-rounds 1 --json >/dev/null

status() { "$shardfs" cluster status --json; }
read -r victim victim_bytes total_bytes < <(status | python3 -c '
import json, sys
s = json.load(sys.stdin)
v = max(s["chunk_servers"], key=lambda c: c["used_bytes"])
print(v["id"], v["used_bytes"], sum(c["used_bytes"] for c in s["chunk_servers"]))')
echo "chunk servers hold $((total_bytes >> 20)) MiB in all; killing chunk server $victim ($((victim_bytes >> 20)) MiB)"
kill -9 "$(cat "$dir/chunk-$victim.pid")"
killed=$(date +%s.%N)

dead=""
while :; do
    line=$(status | python3 -c "
import json, sys
s = json.load(sys.stdin)
c = [c for c in s['chunk_servers'] if c['id'] == $victim][0]
print(c['state'], s['under_replicated'], s['repair']['copies'], s['repair']['bytes'])")
    read -r state under copies bytes <<<"$line"
    now=$(date +%s.%N)
    if [ -z "$dead" ] && [ "$state" = dead ]; then
        dead=$now
        echo "declared dead after $(python3 -c "print(f'{$dead - $killed:.1f}')") s; $under chunks under-replicated"
    fi
    if [ -n "$dead" ] && [ "$under" = 0 ]; then
        break
    fi
    sleep 0.2
done
python3 - "$killed" "$dead" "$now" "$victim_bytes" "$bytes" "$copies" "$repair" <<'PY'
import sys
killed, dead, done, lost, copied, copies, limit = map(float, sys.argv[1:])
secs = done - dead
print(f"full replication restored {secs:.1f} s after the death was declared "
      f"({done - killed:.1f} s after the kill)")
print(f"repair: {int(copies)} chunks, {copied / 2**20:.0f} MiB copied; "
      f"{lost / 1e6 / secs:.0f} MB/s (the dead server's {lost / 2**20:.0f} MiB / {secs:.1f} s; "
      f"limit {limit:.0f} MB/s per server)")
PY

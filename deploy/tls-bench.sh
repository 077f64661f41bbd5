#!/usr/bin/env bash
# What TLS costs: the same `shardfs bench` against a local cluster started
# with TLS (the default) and one started with --insecure, alternating in
# one run so both see the same machine.
#
#   deploy/tls-bench.sh [--rounds N] [--files F] [--size-mib S] [--json]
#
# Each round (default 3) starts the TLS cluster, runs `shardfs bench
# --files F --size-mib S` (default 16 files of 32 MiB, R = 3, bulk reads),
# stops it, then does the same with the plaintext cluster. Prints write and
# read MB/s per round, the medians, and TLS / plaintext as ratios. Both
# clusters live in a temporary directory, removed at the end; they use the
# local cluster's ports, so stop yours first (deploy/local-cluster.sh down).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds=3
files=16
size_mib=32
json=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="${2:?}"; shift 2 ;;
        --files) files="${2:?}"; shift 2 ;;
        --size-mib) size_mib="${2:?}"; shift 2 ;;
        --json) json=1; shift ;;
        -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "tls-bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
bin="${SHARDFS_BIN_DIR:-$repo/target/release}"
export SHARDFS_BIN_DIR="$bin"
[ -x "$bin/shardfs" ] || (cd "$repo" && cargo build --release --bins --quiet)
scratch=$(mktemp -d)
cleanup() {
    for mode in tls plain; do
        "$repo/deploy/local-cluster.sh" down --purge --dir "$scratch/$mode" >/dev/null 2>&1 || true
    done
    rm -rf "$scratch"
}
trap cleanup EXIT

results="$scratch/results.tsv"
: >"$results"
for round in $(seq 1 "$rounds"); do
    for mode in tls plain; do
        flags=()
        [ "$mode" = plain ] && flags=(--insecure)
        "$repo/deploy/local-cluster.sh" up --dir "$scratch/$mode" "${flags[@]}" >"$scratch/$mode-up.log" 2>&1 || {
            cat "$scratch/$mode-up.log" >&2
            exit 1
        }
        report=$(
            # shellcheck disable=SC1091
            source "$scratch/$mode/cluster.env"
            "$bin/shardfs" bench --json --files "$files" --size-mib "$size_mib"
        )
        "$repo/deploy/local-cluster.sh" down --dir "$scratch/$mode" >/dev/null
        printf '%s\t%s\t%s\n' "$round" "$mode" "$(printf '%s' "$report" | tr -d '\n')" >>"$results"
        [ "$json" = 1 ] || printf '%s\n' "$report" | python3 -c '
import json, sys
r = json.load(sys.stdin)
w, rd = r["write_mb_per_s"], r["read_mb_per_s"]
print(f"round {sys.argv[1]} {sys.argv[2]:>5}: write {w:7.1f} MB/s   read {rd:7.1f} MB/s")
' "$round" "$mode"
    done
done

python3 - "$results" "$json" <<'EOF'
import json, statistics, sys
rows = [line.rstrip("\n").split("\t", 2) for line in open(sys.argv[1])]
by = {"tls": [], "plain": []}
for _, mode, report in rows:
    by[mode].append(json.loads(report))
med = {
    mode: {k: statistics.median(r[k] for r in reports) for k in ("write_mb_per_s", "read_mb_per_s")}
    for mode, reports in by.items()
}
ratio = {k: med["tls"][k] / med["plain"][k] for k in ("write_mb_per_s", "read_mb_per_s")}
if sys.argv[2] == "1":
    print(json.dumps({"median": med, "tls_over_plain": ratio, "rounds": len(by["tls"])}, indent=2))
else:
    print(f"median  tls: write {med['tls']['write_mb_per_s']:7.1f} MB/s   read {med['tls']['read_mb_per_s']:7.1f} MB/s")
    print(f"median plain: write {med['plain']['write_mb_per_s']:7.1f} MB/s   read {med['plain']['read_mb_per_s']:7.1f} MB/s")
    print(f"TLS / plaintext: write {ratio['write_mb_per_s']:.2f}   read {ratio['read_mb_per_s']:.2f}")
EOF

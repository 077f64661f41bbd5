#!/usr/bin/env bash
# Runs the README's five-minute tour as written, in order, on a fresh local
# cluster, and fails on the first command that fails.
#
#   deploy/tour-test.sh              with the binaries in target/release
#   SHARDFS_BIN_DIR=DIR deploy/tour-test.sh
#
# The tour runs in a scratch copy of the repository's layout (deploy/ and
# target/ linked in), so its `.shardfs-cluster` is a fresh one and a
# cluster of yours in this checkout is left alone; it needs the local
# cluster's ports (7101-7103, 7201-7203) free. The cluster is stopped and
# its data deleted however the tour ends.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${SHARDFS_BIN_DIR:-$repo/target/release}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac

for port in 7101 7102 7103 7201 7202 7203; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "tour-test: port $port is in use (a local cluster running? deploy/local-cluster.sh down)" >&2
        exit 1
    fi
done

# The tour's block: the first ```sh fence after "## Five-minute tour".
tour=$(awk '
    /^## Five-minute tour/ { in_section = 1; next }
    in_section && /^## / { exit }
    in_section && /^```sh$/ && !done { in_block = 1; next }
    in_block && /^```$/ { in_block = 0; done = 1; next }
    in_block { print }
' "$repo/README.md")
if [ -z "$tour" ]; then
    echo "tour-test: no \`\`\`sh block under '## Five-minute tour' in README.md" >&2
    exit 1
fi

scratch=$(mktemp -d)
cleanup() {
    status=$?
    for m in $(awk -v s="$scratch" '$2 ~ "^"s { print $2 }' /proc/self/mounts); do
        umount -l "$m" 2>/dev/null || true
    done
    (cd "$scratch" && SHARDFS_BIN_DIR="$bin" deploy/local-cluster.sh down --purge >/dev/null 2>&1) || true
    rm -rf "$scratch"
    exit $status
}
trap cleanup EXIT
ln -s "$repo/deploy" "$scratch/deploy"
mkdir -p "$scratch/target"
ln -s "$bin" "$scratch/target/release"

cd "$scratch"
echo "tour-test: deploy/local-cluster.sh up"
SHARDFS_BIN_DIR="$bin" deploy/local-cluster.sh up > "$scratch/up.log" 2>&1 || {
    cat "$scratch/up.log" >&2
    exit 1
}
echo "tour-test: the tour, $(printf '%s\n' "$tour" | grep -cv '^\s*$') lines"
# Each line echoed before it runs (set -x), every failure fatal, pipes too.
printf 'set -euo pipefail -x\n%s\n' "$tour" > "$scratch/tour.sh"
bash "$scratch/tour.sh" </dev/null
echo "tour-test: every line of the tour ran"

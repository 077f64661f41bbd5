#!/usr/bin/env bash
# Every test: the Rust workspace (real processes, sockets, disks, FUSE),
# then a short run of every fuzz target over its kept corpus.
#
#   deploy/test.sh                  what CI runs
#   FUZZ_SECONDS=300 deploy/test.sh  fuzz longer (per target)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
echo "test: cargo test --workspace"
cargo test --workspace --locked

echo "test: fuzz targets, ${FUZZ_SECONDS:-10}s each"
fuzz/run.sh "${FUZZ_SECONDS:-10}"

echo "test: all passed in $((SECONDS - started))s"

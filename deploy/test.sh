#!/usr/bin/env bash
# Every test: the Rust workspace (real processes, sockets, disks, FUSE),
# the Python package against a real cluster it starts (torch, webdataset,
# pyarrow, pandas, fsspec), then a short run of every fuzz target over its
# kept corpus.
#
#   deploy/test.sh                   what CI runs
#   FUZZ_SECONDS=300 deploy/test.sh  fuzz longer (per target)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
echo "test: cargo test --workspace"
cargo test --workspace --locked

echo "test: the Python package (built with the dev profile, installed, pytest)"
rm -rf target/wheels
python3 -m maturin build --quiet --profile dev --manifest-path python/Cargo.toml --out target/wheels
python3 -m pip install --quiet --force-reinstall --no-deps target/wheels/shardfs-*.whl
# From the repository root, so python/shardfs (no native module) does not
# shadow the installed package; the cluster uses the binaries cargo built.
SHARDFS_BIN_DIR="$PWD/target/debug" python3 -m pytest -q -p no:cacheprovider python/tests

echo "test: fuzz targets, ${FUZZ_SECONDS:-10}s each"
fuzz/run.sh "${FUZZ_SECONDS:-10}"

echo "test: all passed in $((SECONDS - started))s"

#!/usr/bin/env bash
# Every test: the Rust workspace (real processes, sockets, disks, FUSE),
# the README tour on a fresh local cluster, the Python package against a
# real cluster it starts (torch, webdataset, pyarrow, pandas, fsspec), then
# a short run of every fuzz target over its kept corpus. First, that the
# metaserver's modules import no cycle (deploy/module-cycles.py).
#
# Everything is built once, with the release profile: the same build
# `deploy/local-cluster.sh up` makes, so after it the tests compile only
# themselves (and the other way round).
#
#   deploy/test.sh                   what CI runs
#   FUZZ_SECONDS=300 deploy/test.sh  fuzz longer (per target)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
echo "test: no import cycle among the metaserver's modules"
python3 deploy/module-cycles.py metaserver/src > /dev/null || python3 deploy/module-cycles.py metaserver/src

echo "test: cargo test --workspace --release"
cargo test --workspace --release --locked

echo "test: the README tour (deploy/tour-test.sh)"
SHARDFS_BIN_DIR="$PWD/target/release" deploy/tour-test.sh

echo "test: the Python package (built, installed, pytest)"
rm -rf target/wheels
python3 -m maturin build --quiet --release --manifest-path python/Cargo.toml --out target/wheels
python3 -m pip install --quiet --force-reinstall --no-deps target/wheels/shardfs-*.whl
# From the repository root, so python/shardfs (no native module) does not
# shadow the installed package; the cluster uses the binaries cargo built.
SHARDFS_BIN_DIR="$PWD/target/release" python3 -m pytest -q -p no:cacheprovider python/tests

echo "test: fuzz targets, ${FUZZ_SECONDS:-10}s each"
fuzz/run.sh "${FUZZ_SECONDS:-10}"

echo "test: all passed in $((SECONDS - started))s"

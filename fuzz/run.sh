#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation and runs
# each on its corpus for a while. Works on a stable toolchain without
# cargo-fuzz: these are the flags `cargo fuzz build --sanitizer none` passes
# (with cargo-fuzz and a nightly toolchain, `cargo fuzz run <target>` adds
# AddressSanitizer).
#
#   fuzz/run.sh                      every target, 20 s each (what CI runs)
#   fuzz/run.sh 3600 raft_entry      one target for an hour
#   FUZZ_MERGE=1 fuzz/run.sh 600     ...then merge new inputs into corpus/
#
# New inputs go to target/fuzz-corpus/<target> (the kept corpus in
# corpus/<target> is only read); a crash is saved under
# target/fuzz-artifacts/<target>/ and fails the run. Replay one with
#   fuzz/target/<triple>/release/<target> <file>
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(path bulk raft_entry snapshot requests)

host=$(rustc -vV | sed -n 's/^host: //p')
# Instrument only the targets (an explicit --target keeps these flags off
# build scripts and proc macros).
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
echo "fuzz: building ${targets[*]} (instrumented, release)"
cargo build --release --locked --target "$host" $(printf -- '--bin %s ' "${targets[@]}")

status=0
for target in "${targets[@]}"; do
    work=target/fuzz-corpus/$target
    artifacts=target/fuzz-artifacts/$target/
    mkdir -p "$work" "$artifacts" "corpus/$target"
    echo "fuzz: $target for ${seconds}s"
    if ! "target/$host/release/$target" "$work" "corpus/$target" \
        -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 \
        -max_len=65536 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$artifacts" 2>target/fuzz-$target.log; then
        echo "fuzz: $target FAILED; the input is under $artifacts; last lines:" >&2
        tail -n 40 "target/fuzz-$target.log" >&2
        status=1
        continue
    fi
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "target/fuzz-$target.log" \
        | sed "s/^/fuzz: $target /"
    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
        # A smallest set of inputs that covers what the kept corpus and the
        # new inputs cover together, plus every regression input.
        merged=target/fuzz-merged/$target
        rm -rf "$merged" && mkdir -p "$merged"
        "target/$host/release/$target" -set_cover_merge=1 "$merged" "corpus/$target" "$work" \
            2>>"target/fuzz-$target.log"
        cp corpus/"$target"/regression-* "$merged"/ 2>/dev/null || true
        rm -rf "corpus/$target" && mv "$merged" "corpus/$target"
        echo "fuzz: $target corpus now $(ls "corpus/$target" | wc -l) inputs"
    fi
done
exit $status
